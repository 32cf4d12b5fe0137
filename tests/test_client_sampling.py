"""Poisson client sampling (``client_sample_rate``) for user-level DP.

* the sampler: each client joins with probability exactly ``q``
  (statistically, and at the exact cut of the 64-bit comparison), clients
  independently, from ``os.urandom`` and from nothing a seed reaches (an
  adversary who seeds every generator the run seeds cannot predict it);
* the simulator: unsampled clients neither train nor spend (``not-sampled``
  rows, no steps), the session runs over the cohort with the threshold of
  its size, the user-level rows carry ``q`` and the audit passes; a cohort
  too small for a session skips the round before anyone trains (nothing
  charged); refused configurations.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import securefl.federation.cohort as cohort_module
import securefl.federation.simulation as simulation
from securefl.cli.audit import audit_run
from securefl.errors import ConfigurationError
from securefl.federation.cohort import (
    cohort_bound,
    cohort_secagg_config,
    cohort_threshold,
    poisson_cohort,
)
from securefl.federation.simulation import (
    SimulationConfig,
    preflight,
    run_simulation,
    user_level_min_cohort,
    user_level_plan,
)
from securefl.privacy.distributed import _as_rounds, user_level_epsilon, user_level_epsilons
from securefl.privacy.ledger import load_ledger
from securefl.protocol.config import SecurityMode, default_threshold


def test_the_sampling_rate_is_q() -> None:
    q, n, draws = 0.3, 500, 40
    counts = np.zeros(n)
    sizes = []
    for _ in range(draws):
        cohort = poisson_cohort(range(n), q)
        sizes.append(len(cohort))
        counts[list(cohort)] += 1
    total = sum(sizes)
    trials = n * draws
    sd = math.sqrt(trials * q * (1 - q))
    assert abs(total - trials * q) < 5 * sd
    # cohort sizes vary as a binomial's (Poisson sampling, not a fixed size)
    assert np.std(sizes) > 0.5 * math.sqrt(n * q * (1 - q))
    # clients are independent: neighbours' inclusions are uncorrelated
    draws_matrix = np.zeros((draws, n))
    for i in range(draws):
        draws_matrix[i, list(poisson_cohort(range(n), q))] = 1
    a, b = draws_matrix[:, :-1].ravel(), draws_matrix[:, 1:].ravel()
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / math.sqrt(a.size)
    # every client is sampled about q of the time
    assert abs(counts.mean() / draws - q) < 5 * math.sqrt(q * (1 - q) / trials)


def test_the_cut_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """q 2^64 is the cut: a draw just below joins, a draw at it does not."""
    cut = 2 ** 62  # q = 1/4
    draws = (cut - 1).to_bytes(8, "big") + cut.to_bytes(8, "big") + bytes(8)
    monkeypatch.setattr(cohort_module.os, "urandom", lambda size: draws[:size])
    assert poisson_cohort([7, 8, 9], 0.25) == (7, 9)


def test_the_cohort_does_not_come_from_a_seed() -> None:
    """Attack: seed every generator a run seeds (random, numpy, torch), draw
    a cohort, re-seed identically and predict the next: it must differ."""
    cohorts = []
    for _ in range(2):
        random.seed(0)
        np.random.seed(0)
        torch.manual_seed(0)
        cohorts.append(poisson_cohort(range(256), 0.5))
    assert cohorts[0] != cohorts[1]  # equal with probability 2^-256


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 10_000), q=st.floats(1e-4, 1.0))
def test_the_cohort_bound(n: int, q: float) -> None:
    bound = cohort_bound(n, q)
    assert min(n, math.ceil(n * q)) <= bound <= n
    assert cohort_bound(n, 1.0) == n
    assert len(poisson_cohort(range(n), 1.0)) == n


@pytest.mark.parametrize("q", [0.0, -0.1, 1.5, math.nan, True])
def test_bad_rates_are_refused(q: Any) -> None:
    with pytest.raises(ConfigurationError, match="sampling rate"):
        poisson_cohort([1, 2], q)


@pytest.mark.parametrize("mode", list(SecurityMode))
def test_the_session_config_is_the_cohort_s(mode: SecurityMode) -> None:
    config = cohort_secagg_config([3, 9, 4, 12, 20], vector_length=8, bits=16, mode=mode)
    assert sorted(config.client_ids) == [3, 4, 9, 12, 20] and config.num_clients == 5
    assert config.threshold == cohort_threshold(5, mode) == default_threshold(5, mode)
    with pytest.raises(ConfigurationError, match="too small"):
        cohort_secagg_config([3], vector_length=8, bits=16, mode=mode)


@pytest.mark.parametrize(("changes", "match"), [
    ({"client_sample_rate": 0.5}, "amplifies the user-level layer"),
    ({"client_sample_rate": 0.5, "privacy": "both", "threshold": 3}, "drop --threshold"),
    ({"client_sample_rate": 0.5, "privacy": "both", "graph": "harary", "graph_degree": 4},
     "drop --threshold and --graph harary"),
    ({"client_sample_rate": 0.0, "privacy": "both"}, "sampling rate must be in"),
    ({"client_sample_rate": 1.2, "privacy": "both"}, "sampling rate must be in"),
])
def test_bad_sampling_configurations_are_refused(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        SimulationConfig(num_clients=8, rounds=2, **changes)


def _spy_sessions(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    sessions: list[Any] = []
    real = simulation.secure_sum

    def spy(inputs, config, drops):  # type: ignore[no-untyped-def]
        sessions.append(config)
        return real(inputs, config, drops)

    monkeypatch.setattr(simulation, "secure_sum", spy)
    return sessions


def test_a_sampled_federation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = _spy_sessions(monkeypatch)
    config = SimulationConfig(num_clients=8, rounds=3, dropout=0.0, privacy="both", bits=16,
                              user_epsilon=50.0, target_epsilon=50.0, epsilon_budget=100.0,
                              seed=1, hidden=8, local_epochs=1, client_sample_rate=0.5)
    result = run_simulation(config, tmp_path / "run")
    chain = load_ledger(tmp_path / "run" / "ledger.jsonl")
    assert chain.ok, chain.problems
    for report in result.rounds:
        cohort = sorted(c.client_id for c in report.clients if c.status.value != "not-sampled")
        settled = [r for r in chain.committed if r.round == report.round and not r.in_flight]
        charged = sorted(r.client_id for r in chain.committed
                         if r.round == report.round and r.in_flight)
        for row in settled:
            if row.status == "not-sampled":
                # it did not train: no step, its history unchanged, no charge
                assert row.local_steps == 0 and not row.entered_sum
                assert row.client_id not in charged
        if not report.aborted:
            assert charged == cohort  # only the cohort was charged and trained
            session = next(s for s in sessions if sorted(s.client_ids) == cohort)
            assert session.threshold == default_threshold(len(cohort), config.security_mode)
            assert set(report.survivors) <= set(cohort)
    assert any(len(s.client_ids) < config.num_clients for s in sessions)
    users = chain.effective_user_level()
    assert users and all(u.sample_rate == 0.5 for u in users)
    last = users[-1]
    eps = user_level_epsilons(last.history, config.delta)
    assert last.epsilon == pytest.approx(eps["sampled"])
    # amplified by q = 0.5: the rounds whose sums were released cost less
    # sampled than against the server.  A skipped round (the cohort, drawn
    # from the OS CSPRNG, had fewer than skip_below clients: about 10% of
    # runs here) costs nothing against the server, which sees the cohort,
    # but is charged in the sampled epsilon (whether a round is skipped
    # depends on who was sampled), so with one the sampled epsilon of this
    # small federation may exceed the unsampled one; both are what the
    # accountant says (checked above and by the audit).
    rows = _as_rounds(last.history)
    released = [row for row in rows if row.released]
    assert released
    assert user_level_epsilon(released, config.delta) < last.epsilon_unsampled
    if len(released) == len(rows):
        assert last.epsilon < last.epsilon_unsampled
    report = audit_run(tmp_path / "run")
    assert report["exit_code"] == 0, report["violations"]
    # the published schemas take the new statuses and fields
    jsonschema = pytest.importorskip("jsonschema")
    from securefl.schemas import load_schema

    ledger = jsonschema.Draft202012Validator(load_schema("ledger-record"))
    lines = (tmp_path / "run" / "ledger.jsonl").read_text().splitlines()
    assert any('"not-sampled"' in line for line in lines)
    assert any('"user-level"' in line and '"in-flight"' in line for line in lines)
    for line in lines:
        assert not list(ledger.iter_errors(json.loads(line))), line
    metrics = jsonschema.Draft202012Validator(load_schema("metrics"))
    doc = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert not [e.message for e in metrics.iter_errors(doc)]


@pytest.mark.parametrize(("bits", "first"), [(16, (3,)), (24, (1, 2, 3))])
def test_a_cohort_too_small_skips_the_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            bits: int, first: tuple[int, ...]) -> None:
    """Round 1's cohort is below the smallest session that takes the noise
    (2 clients at 16 bits; at 24 bits a client's share of the larger noise
    needs 4, :func:`user_level_min_cohort`): the round is skipped before
    anyone trains (no in-flight block; its settled block charges the skip
    at user level), the model is unchanged; round 2 samples everyone and
    runs."""
    sessions = _spy_sessions(monkeypatch)
    cohorts = iter([first, (1, 2, 3, 4)])
    monkeypatch.setattr(simulation, "poisson_cohort", lambda ids, q: next(cohorts))
    config = SimulationConfig(num_clients=4, rounds=2, dropout=0.0, privacy="both", bits=bits,
                              user_epsilon=50.0, target_epsilon=50.0, epsilon_budget=100.0,
                              seed=1, hidden=8, local_epochs=1, client_sample_rate=0.5)
    model, _ = preflight(config)
    minimum = user_level_min_cohort(config, user_level_plan(config, model))
    assert len(first) < minimum
    result = run_simulation(config, tmp_path / "run")
    head = result.rounds[0]
    assert head.aborted
    assert head.abort_reason.startswith(f"skipped: {len(first)} client(s) sampled")
    chain = load_ledger(tmp_path / "run" / "ledger.jsonl")
    assert [(c.round, c.stage) for c in chain.commits] == [(1, "settled"), (2, "in-flight"),
                                                          (2, "settled")]
    round1 = {r.client_id: r for r in chain.committed if r.round == 1}
    for cid, row in round1.items():
        assert row.local_steps == 0
        assert row.status == ("round-aborted" if cid in first else "not-sampled")
    # the skip is charged (whether a round is skipped depends on who was
    # sampled): a settled `skipped` row, sampled epsilon only
    assert [(u.round, u.status) for u in chain.effective_user_level()] == [
        (1, "skipped"), (2, "released")]
    skip_row = chain.effective_user_level()[0]
    assert skip_row.epsilon > 0 and skip_row.epsilon_unsampled == 0.0
    assert [sorted(s.client_ids) for s in sessions] == [[1, 2, 3, 4]]
    assert audit_run(tmp_path / "run")["exit_code"] == 0
