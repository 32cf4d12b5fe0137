"""Record counts, losses and clip counts stay on the clients (issue 10,
items 2 and 5).

The server plays the attack from the issue: it observes the total weight of
every round's sum under different dropouts and solves the linear system
``survivors x n = weight totals`` for the clients' record counts.  With the
default uniform weighting every weight is 1 and the totals carry no count;
with the opt-in ``weighting="examples"`` the same attack recovers every count
exactly (so the test has power), which is why that mode states replace-one
epsilons.

Then everything the server side records (metrics.json, checkpoint.pt, the
ledger, the per-round reports) is searched for per-client counts, losses and
clip counts.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import securefl.federation.simulation as sim
from securefl.federation.checkpoint import load_checkpoint
from securefl.federation.reporting import client_summary
from securefl.federation.server import Server
from securefl.federation.simulation import (
    ClientRoundReport,
    RoundReport,
    SimulationConfig,
    SimulationResult,
    load_data,
    run_simulation,
)
from securefl.privacy.accounting import epsilon_replace_one_pld, epsilon_replace_one_rdp
from securefl.privacy.ledger import LEDGER_FILENAME, read_ledger
from securefl.protocol import Round

torch.set_num_threads(1)

CLIENTS = 4
# Round 1: everyone; round k > 1: client k - 1 drops before sending its masked
# input.  The survivor matrix then has full column rank: the weight totals
# determine every client's weight.
SCHEDULE = [{}] + [{k: Round.MASKED_INPUT_COLLECTION} for k in range(1, CLIENTS + 1)]


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **overrides: Any
         ) -> tuple[SimulationResult, list[tuple[tuple[int, ...], int]], list[RoundReport]]:
    seen: list[tuple[tuple[int, ...], int]] = []
    original = Server.aggregate

    def aggregate(self: Server, *args: Any, **kwargs: Any) -> Any:
        outcome = original(self, *args, **kwargs)
        seen.append((outcome.survivors, outcome.weight_total))  # what the server learns
        return outcome

    monkeypatch.setattr(Server, "aggregate", aggregate)
    monkeypatch.setattr(sim, "dropout_schedule", lambda _c: [dict(s) for s in SCHEDULE])
    reports: list[RoundReport] = []
    config = SimulationConfig(num_clients=CLIENTS, rounds=len(SCHEDULE), hidden=8, seed=2,
                              **overrides)
    result = run_simulation(config, tmp_path / "run", on_round=reports.append)
    return result, seen, reports


def _solve_counts(seen: list[tuple[tuple[int, ...], int]]) -> np.ndarray:
    """The server's attack: least squares on survivors x weights = totals."""
    a = np.array([[1.0 if cid in survivors else 0.0 for cid in range(1, CLIENTS + 1)]
                  for survivors, _ in seen])
    b = np.array([float(total) for _, total in seen])
    assert np.linalg.matrix_rank(a) == CLIENTS  # the attack is well posed
    solution, *_ = np.linalg.lstsq(a, b, rcond=None)
    return solution


def _sizes(config: SimulationConfig) -> list[int]:
    return load_data(config).client_sizes


def test_weight_sums_reveal_no_record_count_by_default(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result, seen, _ = _run(tmp_path, monkeypatch, noise_multiplier=1.0)
    sizes = _sizes(SimulationConfig(num_clients=CLIENTS, hidden=8, seed=2))
    assert min(sizes) > 1 and len(set(sizes)) > 1
    solved = _solve_counts(seen)
    # every weight the server can solve for is 1, whatever the client's count
    np.testing.assert_allclose(solved, 1.0, atol=1e-9)
    assert not any(abs(s - n) < 0.5 for s, n in zip(solved, sizes, strict=True))
    rows = read_ledger(result.output_dir / LEDGER_FILENAME)
    assert {(r.weighting, r.adjacency) for r in rows} == {("uniform", "add-remove-one")}


def test_the_attack_recovers_counts_under_weighting_by_examples(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result, seen, _ = _run(tmp_path, monkeypatch, noise_multiplier=1.0,
                           weighting="examples")
    sizes = _sizes(SimulationConfig(num_clients=CLIENTS, hidden=8, seed=2))
    np.testing.assert_allclose(_solve_counts(seen), sizes, atol=1e-6)
    # ... so that mode's epsilons are replace-one epsilons, and say so
    rows = read_ledger(result.output_dir / LEDGER_FILENAME)
    assert {(r.weighting, r.adjacency) for r in rows} == {("examples", "replace-one")}
    for row in rows:
        assert row.epsilon_rdp == pytest.approx(
            epsilon_replace_one_rdp(row.history, row.delta), rel=1e-12)
        assert row.epsilon_dpa_pld == pytest.approx(
            epsilon_replace_one_pld(row.history, row.delta), rel=1e-12)
        # the add/remove-only accountants are not recorded for replace-one
        assert row.epsilon_prv is None and row.epsilon_dpa_rdp is None
    final = result.metrics["final"]
    assert final["adjacency"] == "replace-one"
    for client in final["clients"]:
        history = next(c.history for c in result.clients if c.client_id == client["client_id"])
        assert client["epsilon_pld"] == pytest.approx(
            epsilon_replace_one_pld(history, 1e-5), rel=1e-9)
        assert client["epsilon_prv"] is None and client["epsilon_dp_accounting"] is None


def _walk(value: Any, path: str = "") -> list[tuple[str, Any]]:
    """Every (key path, leaf) of a JSON-like value."""
    if isinstance(value, dict):
        return [item for k, v in value.items() for item in _walk(v, f"{path}.{k}")]
    if isinstance(value, list | tuple):
        return [item for i, v in enumerate(value) for item in _walk(v, f"{path}[{i}]")]
    return [(path, value)]


PRIVATE_KEYS = ("num_examples", "client_sizes", "train_loss", "clipped", "num-examples",
                "train-loss", "sizes")


def test_server_side_artefacts_hold_no_per_client_count_loss_or_clip_count(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result, _, reports = _run(tmp_path, monkeypatch, target_epsilon=5.0)
    out = result.output_dir
    config = SimulationConfig(num_clients=CLIENTS, hidden=8, seed=2)
    sizes = _sizes(config)
    batch = config.batch_size
    metrics = json.loads((out / "metrics.json").read_text())
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    records = [json.loads(line) for line in (out / LEDGER_FILENAME).read_text().splitlines()]
    ledger = [r for r in records if r.get("type") == "row"]  # in-flight and settled
    report_docs = [dataclasses.asdict(r) for r in reports]
    artefacts = {"metrics": metrics, "checkpoint": checkpoint["extra"], "ledger": records,
                 "reports": report_docs}
    for name, doc in artefacts.items():
        for path, _leaf in _walk(doc):
            keys = path.lower()
            assert not any(k in keys for k in PRIVATE_KEYS), f"{name}{path}"
            # the only losses are the global model's, on the server's test set
            if "loss" in keys:
                assert path.endswith(".loss") and ".clients" not in path, f"{name}{path}"
    # Per-client rows: every DP parameter is the same public constant for every
    # client, so none of them can encode n_i or ceil(n_i / B).
    assert {row["sample_rate"] for row in ledger} == {config.sample_rate}
    assert {row["noise_multiplier"] for row in ledger} == {result.clients[0].noise_multiplier}
    assert {row["local_steps"] for row in ledger} == {
        config.local_epochs * round(1 / config.sample_rate)}
    old_rates = {1.0 / math.ceil(n / batch) for n in sizes}
    assert not old_rates & {row["sample_rate"] for row in ledger}
    for client in metrics["final"]["clients"]:
        numbers = {v for _, v in _walk(client) if isinstance(v, int | float)}
        assert sizes[client["client_id"] - 1] not in numbers
    assert {c["total_steps"] for c in metrics["final"]["clients"]} == {
        config.local_epochs * round(1 / config.sample_rate) * len(SCHEDULE)}
    # clients that took part alike have identical rows: nothing client-specific
    by_round: dict[int, list[dict[str, Any]]] = {}
    for row in ledger:
        by_round.setdefault(row["round"], []).append(row)
    for rows in by_round.values():
        # (``prev`` is the hash chain's link: different for every record)
        included = [{k: v for k, v in r.items() if k not in ("client_id", "prev")}
                    for r in rows if r["status"] == "included"]
        assert included and all(r == included[0] for r in included)
    # the in-process reports carry no client-kept value either
    names = {f.name for f in dataclasses.fields(ClientRoundReport)}
    assert names == {"client_id", "status", "entered_sum", "dropped_at", "epsilon_rdp",
                     "epsilon_prv", "detail"}


def test_client_summary_refuses_private_fields() -> None:
    from securefl.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="never leave a client"):
        client_summary(1, [(1.0, 0.2, 5)], 1e-5, num_examples=134)


@settings(max_examples=10, deadline=None)
@given(n1=st.integers(1, 300), n2=st.integers(1, 300), rate=st.sampled_from([0.1, 0.2, 0.5]),
       epochs=st.integers(1, 2), target=st.sampled_from([None, 3.0]))
def test_what_a_client_sends_is_the_same_whatever_its_record_count(
        n1: int, n2: int, rate: float, epochs: int, target: float | None) -> None:
    """Property: two clients with any record counts send the same weight and
    the same public DP parameters (noise multiplier, sample rate, steps,
    history); only the noised update differs."""
    from securefl.privacy.client import DPConfig, PrivateClient

    config = DPConfig(noise_multiplier=None if target else 1.0, target_epsilon=target,
                      sample_rate=rate, local_epochs=epochs, planned_rounds=3)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    start = [p.detach().clone() for p in model.parameters()]
    sent = []
    for n in (n1, n2):
        rng = np.random.default_rng(n)
        x = rng.normal(size=(n, 3)).astype(np.float32)
        client = PrivateClient(1, model, x, (x[:, 0] > 0).astype(np.int64), config)
        result = client.train_round(start)
        sent.append((result.weight, result.steps, result.noise_multiplier,
                     result.sample_rate, tuple(client.history)))
    assert sent[0] == sent[1]
    assert sent[0][0] == 1 and sent[0][1] == epochs * round(1 / rate)
