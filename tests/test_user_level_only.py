"""``privacy="user-level"`` alone: the clients train with plain local SGD
(no per-example clipping, no noise), the ledger holds user-level rows only
(no record-level row, so no record-level epsilon is claimed anywhere), the
user-level layer protects the whole update, and the audit passes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from securefl.cli import main
from securefl.cli.audit import audit_run
from securefl.federation.local_client import LocalClient
from securefl.federation.simulation import SimulationConfig, run_simulation
from securefl.privacy.distributed import user_level_epsilon
from securefl.privacy.ledger import load_ledger

SMALL = dict(num_clients=6, rounds=3, dropout=0.2, privacy="user-level", bits=16,
             user_epsilon=40.0, seed=2, hidden=8, local_epochs=1)


def test_a_user_level_only_federation(tmp_path: Path) -> None:
    config = SimulationConfig(**SMALL)  # type: ignore[arg-type]
    result = run_simulation(config, tmp_path / "run")
    assert all(isinstance(c, LocalClient) for c in result.clients)
    lines = [json.loads(x) for x in (tmp_path / "run" / "ledger.jsonl").read_text().splitlines()]
    assert not [r for r in lines if r["type"] == "row"]  # no record-level row at all
    chain = load_ledger(tmp_path / "run" / "ledger.jsonl")
    assert chain.ok, chain.problems
    users = chain.effective_user_level()
    assert [u.round for u in users] == [r.round for r in result.rounds]
    charges = [u for u in chain.committed_user_level if u.in_flight]
    assert [u.round for u in charges] == [r.round for r in result.rounds]  # charged first
    last = [u for u in users if u.status == "released"][-1]
    assert last.epsilon == pytest.approx(user_level_epsilon(last.history, config.delta))
    # no record-level epsilon is reported anywhere
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["final"]["epsilon_max"] is None and metrics["final"]["clients"] == []
    assert all(r["epsilon_max"] is None for r in metrics["rounds"])
    report = audit_run(tmp_path / "run")
    assert report["exit_code"] == 0, report["violations"]
    assert report["clients"] == [] and report["rounds"] == []
    assert report["verdict"].startswith("OK") and "user-level" in report["verdict"]
    assert report["user_level"][-1]["epsilon"] == pytest.approx(users[-1].epsilon)
    jsonschema = pytest.importorskip("jsonschema")
    from securefl.schemas import load_schema

    ledger = jsonschema.Draft202012Validator(load_schema("ledger-record"))
    for record in lines:
        assert not list(ledger.iter_errors(record)), record
    assert not list(jsonschema.Draft202012Validator(load_schema("metrics")).iter_errors(metrics))


def test_plain_local_sgd_adds_no_noise() -> None:
    """One full-batch step is exactly ``-lr`` times the loss gradient at the
    global model, and repeating it gives the same update: no per-example
    clipping, no noise (DP-SGD's update would differ run to run)."""
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    x = np.random.default_rng(1).normal(size=(20, 4)).astype(np.float32) * 50
    y = np.arange(20) % 3
    client = LocalClient(1, model, x, y, batch_size=5, local_epochs=1, lr=0.1, max_steps=1)
    global_params = [p.detach().clone() for p in model.parameters()]
    first = client.train_round(global_params)
    second = client.train_round(global_params)
    loss = nn.CrossEntropyLoss()(model(torch.as_tensor(x)), torch.as_tensor(y))
    grads = torch.autograd.grad(loss, list(model.parameters()))
    for a, b, g in zip(first.update, second.update, grads, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, -0.1 * g.numpy(), rtol=1e-4, atol=1e-6)
    assert first.steps == 1 and first.noise_multiplier == 0.0 and client.history == []


def test_local_epochs_visit_every_example() -> None:
    model = nn.Linear(2, 2)
    client = LocalClient(1, model, np.ones((7, 2), np.float32), np.zeros(7, np.int64),
                         batch_size=3, local_epochs=2, lr=0.5)
    assert client.steps_per_round == 6
    assert client.train_round([p.detach().clone() for p in model.parameters()]).steps == 6


def test_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    code = main(["simulate", "--clients", "4", "--rounds", "2", "--local-epochs", "1",
                 "--privacy", "user-level", "--bits", "16", "--user-epsilon", "40",
                 "--dropout", "0", "--client-sample-rate", "0.9", "--no-progress",
                 "-o", str(out)])
    text = capsys.readouterr().out
    # exit 1 only if both rounds sampled fewer than 2 clients (p < 2e-5)
    assert code == 0, text
    assert "no DP-SGD" in text and "no record-level epsilon" in text
    assert "user-level epsilon at delta" in text and "q=0.9" in text
    assert main(["audit", str(out), "--no-plot"]) == 0
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    assert "user-level: user-level DP alone" in " ".join(capsys.readouterr().out.split())


def test_federate_user_level_only(tmp_path: Path) -> None:
    """``securefl.federate(..., privacy="user-level")``: your model, data and
    loss, plain local SGD, user-level rows only."""
    import securefl

    rng = np.random.default_rng(0)
    data = [(rng.normal(size=(20, 4)).astype(np.float32), rng.integers(0, 3, 20))
            for _ in range(4)]
    result = securefl.federate(nn.Linear(4, 3), data, nn.CrossEntropyLoss(), rounds=2,
                               privacy="user-level", bits=16, user_epsilon=40.0,
                               output_dir=tmp_path / "fed", progress=False)
    assert all(isinstance(c, LocalClient) for c in result.clients)
    assert np.isnan(result.epsilon)  # no record-level epsilon exists
    chain = load_ledger(tmp_path / "fed" / "ledger.jsonl")
    assert chain.ok and not chain.records and chain.effective_user_level()
    assert audit_run(tmp_path / "fed")["exit_code"] == 0
