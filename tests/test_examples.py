"""The bring-your-own examples run end to end with a few rounds (their full
runs are what docs/tutorials/byo.md reports), and so do the simulator's own
examples (examples/simulate_digits.py, examples/breast_cancer.py; issue 13:
every example runs in CI), each with secure aggregation and a ledger that
the audit verifies."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from securefl.cli.audit import audit_run
from securefl.privacy.ledger import load_ledger

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

torch.set_num_threads(1)


def _example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"securefl_example_{name}",
                                                  EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_diabetes_regression_runs_and_reports_mse_and_r2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    example = _example("diabetes_regression")
    result = example.main(["--rounds", "2", "--output", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert "round  2: test MSE" in out and "final test MSE" in out
    assert set(result.final) == {"mse", "r2"} and math.isfinite(result.final["mse"])
    assert {r.secure_aggregation for r in load_ledger(tmp_path / "run" / "ledger.jsonl")
            .committed} == {True}
    clients, (x_test, y_test) = example.load()
    assert len(clients) == 5 and y_test.shape == (len(x_test), 1)
    assert sum(len(y) for _, y in clients) + len(y_test) == 442


def test_digits_cnn_runs_and_reports_accuracy(capsys: pytest.CaptureFixture[str]) -> None:
    example = _example("digits_cnn")
    result = example.main(["--rounds", "1", "--clients", "3"])
    out = capsys.readouterr().out
    assert "round  1: test accuracy" in out and "final test accuracy" in out
    assert 0.0 <= result.final["accuracy"] <= 1.0 and result.output_dir is None
    # one public sample rate: the ledger reveals no client's record count
    assert {c.sample_rate for c in result.clients} == {0.2}


def _secure_and_audited(out: Path) -> None:
    rows = load_ledger(out / "ledger.jsonl").committed
    assert rows and {r.secure_aggregation for r in rows} == {True}
    report = audit_run(out)
    assert report["ok"], report["violations"]


def test_simulate_digits_example_runs_and_audits(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = _example("simulate_digits").main(["--rounds", "1", str(tmp_path / "run")])
    out = capsys.readouterr().out
    assert "round  1: accuracy" in out and "final accuracy" in out
    assert result.output_dir == tmp_path / "run" and len(result.rounds) == 1
    _secure_and_audited(result.output_dir)


def test_breast_cancer_example_runs_and_audits(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    result = _example("breast_cancer").main(["--rounds", "2", str(tmp_path)])
    out = capsys.readouterr().out
    assert "round 1: accuracy" in out and "round 2: accuracy" in out and "final accuracy" in out
    assert result.output_dir == tmp_path / "secure"
    assert result.metrics["final"]["epsilon_max"] <= 3.0 + 1e-6  # the example's budget
    _secure_and_audited(result.output_dir)


def test_user_level_dp_example_runs_and_audits(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # the example's own loop, on fewer clients and rounds (its full run: 300
    # clients, 20 rounds, docs/user-level-dp.md)
    example = _example("user_level_dp")
    monkeypatch.setattr(example, "CLIENTS", 60)
    monkeypatch.setattr(example, "ROUNDS", 2)
    example.main(tmp_path)
    out = capsys.readouterr().out
    assert "round  1:" in out and "round  2:" in out and "round  3:" not in out
    report = audit_run(tmp_path / "ledger.jsonl")
    assert report["ok"], report["violations"]
    assert report["verdict"] in out
