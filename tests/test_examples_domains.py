"""The finance and NLP examples run end to end in CI through
:func:`securefl.federate`, with tiny settings: secure aggregation on, every
artefact valid against the published schemas, the ledger verified by
``securefl audit``, and the figures the example prints are those of the
run (the AUC recomputed from the saved final model)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="the train extra runs the examples")
jsonschema = pytest.importorskip("jsonschema", reason="the dev extra brings jsonschema")

from torch import nn  # noqa: E402

from securefl.cli.audit import audit_run  # noqa: E402
from securefl.federation.checkpoint import load_checkpoint  # noqa: E402
from securefl.federation.finance import default_scores, load_credit_federated, roc_auc  # noqa: E402
from securefl.federation.text import TOPICS  # noqa: E402
from securefl.schemas import load_schema  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_run(out: Path, rounds: int) -> dict[str, Any]:
    metrics: dict[str, Any] = json.loads((out / "metrics.json").read_text())
    jsonschema.Draft202012Validator(load_schema("metrics")).validate(metrics)
    rows = jsonschema.Draft202012Validator(load_schema("ledger-record"))
    for line in (out / "ledger.jsonl").read_text().splitlines():
        rows.validate(json.loads(line))
    assert metrics["config"]["secure"] and metrics["final"]["secure_aggregation"]
    assert len(metrics["rounds"]) == rounds
    audit = audit_run(out)
    assert audit["verified"], audit["violations"]
    return metrics


def test_finance_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "credit"
    figures = _example("finance_credit").main(
        ["--banks", "3", "--rounds", "2", "--applicants", "900", "--output", str(out)])
    text = capsys.readouterr().out
    metrics = _check_run(out, 2)
    assert "test AUC" in text and f"{figures['auc']:.3f}" in text
    assert figures["epsilon"] == metrics["final"]["epsilon_max"] <= 7.5 + 1e-6
    # every round carries the example's own evaluation; the last is the final model's
    assert all({"auc", "accuracy"} <= set(r["metrics"]) for r in metrics["rounds"])
    assert metrics["rounds"][-1]["metrics"]["auc"] == pytest.approx(figures["auc"])
    # the reported AUC is the saved final model's, on the held-out applicants
    data = load_credit_federated(3, num_applicants=900, seed=0)
    model = nn.Sequential(nn.Linear(data.num_features, 16), nn.ReLU(), nn.Linear(16, 2))
    model.load_state_dict(load_checkpoint(out / "checkpoint.pt")["model"])
    assert roc_auc(default_scores(model, data.test[0]), data.test[1]) == pytest.approx(
        figures["auc"], abs=1e-9)
    assert figures["majority_accuracy"] == pytest.approx(1 - data.test[1].mean())


def test_nlp_example(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "topics"
    figures = _example("nlp_topics").main(
        ["--newsrooms", "3", "--rounds", "2", "--texts", "600", "--output", str(out)])
    text = capsys.readouterr().out
    metrics = _check_run(out, 2)
    assert figures["accuracy"] == pytest.approx(metrics["final"]["accuracy"])
    assert f"test accuracy {figures['accuracy']:.3f}" in text
    assert len(figures["predicted"]) == 4 and set(figures["predicted"]) <= set(TOPICS)


def test_examples_write_nothing_without_an_output_dir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    torch.set_num_threads(1)
    monkeypatch.chdir(tmp_path)
    figures = _example("nlp_topics").main(["--newsrooms", "2", "--rounds", "1", "--texts",
                                           "300"])
    assert figures["output_dir"] is None and not list(tmp_path.iterdir())
    assert "ledger:" not in capsys.readouterr().out
