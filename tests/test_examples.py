"""The bring-your-own examples run end to end with a few rounds (their full
runs are what docs/tutorials/byo.md reports)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

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
    assert (tmp_path / "run" / "ledger.jsonl").is_file()
    clients, (x_test, y_test) = example.load()
    assert len(clients) == 5 and y_test.shape == (len(x_test), 1)
    assert sum(len(y) for _, y in clients) + len(y_test) == 442


def test_digits_cnn_runs_and_reports_accuracy(capsys: pytest.CaptureFixture[str]) -> None:
    example = _example("digits_cnn")
    # 3 clients: each client's own sample rate costs a noise calibration
    result = example.main(["--rounds", "1", "--clients", "3"])
    out = capsys.readouterr().out
    assert "round  1: test accuracy" in out and "final test accuracy" in out
    assert 0.0 <= result.final["accuracy"] <= 1.0 and result.output_dir is None
    # the clients' sample rates come from their DataLoaders, as Opacus's
    loaders, _ = example.load(3)
    assert [c.sample_rate for c in result.clients] == [
        min(1.0, 32 / len(loader.dataset)) for loader in loaders]
