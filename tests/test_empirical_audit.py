"""The one-run empirical audit: its bound (Steinke, Nasr, Jagielski 2023,
Theorem 5.2) against closed forms, an independent high-precision evaluation
and exact soundness under randomized response; and its power on a real run:
an honest run is not flagged, a run whose training silently adds a tenth of
the recorded noise is."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.special import expit, logit

import securefl.cli.audit_empirical as cli_empirical
from securefl.cli import main
from securefl.federation.simulation import SimulationConfig, load_data, preflight, run_simulation
from securefl.privacy import empirical
from securefl.privacy.client import DPConfig
from securefl.privacy.empirical import (
    EmpiricalAuditError,
    epsilon_ceiling,
    epsilon_lower_bound,
    p_value,
    run_canary_audit,
)
from tests.ledger_tools import records, write_chained

# -- the bound ----------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(r=st.integers(1, 3000), beta=st.sampled_from([0.01, 0.05, 0.1]))
def test_all_correct_without_delta_matches_the_closed_form(r: int, beta: float) -> None:
    # delta = 0 and v = r: p = q^r, so the bound is logit(beta^(1/r)) exactly
    # (0 when even a coin, q = 1/2, is not rejected: 2^-r >= beta)
    expected = max(0.0, float(logit(beta ** (1.0 / r))))
    got = epsilon_lower_bound(r, r, r, 0.0, confidence=1 - beta)
    assert got == pytest.approx(expected, abs=2e-6)
    if got > 0:
        assert p_value(r, r, r, got, 0.0) < beta  # the value returned is rejected


def test_known_values() -> None:
    # 1000 guesses, all right, 95%: the one-run audit cannot certify more than ~5.81
    assert epsilon_ceiling(1000, 1000, 0.0) == pytest.approx(5.8091, abs=1e-3)
    # delta = 1e-5 costs a little: 2 m delta = 0.02 added to the p-value's scale
    assert epsilon_ceiling(1000, 1000, 1e-5) == pytest.approx(5.7823, abs=1e-3)
    # at or below chance there is no evidence at all
    assert epsilon_lower_bound(1000, 1000, 500, 0.0) == 0.0
    assert epsilon_lower_bound(1000, 100, 40, 1e-5) == 0.0
    # a larger delta is a weaker claim, harder to refute
    assert (epsilon_lower_bound(1000, 1000, 1000, 1e-3) < epsilon_ceiling(1000, 1000, 1e-5)
            < epsilon_ceiling(1000, 1000, 0.0))


def test_the_ceilings_quoted_in_the_docs() -> None:
    # docs/privacy-ledger.md: five Bonferroni rules at delta 1e-5 ...
    def five_rules(m: int) -> float:
        return max(epsilon_ceiling(m, int(f * m) // 2 * 2, 1e-5, confidence=0.99)
                   for f in empirical.GUESS_FRACTIONS)

    assert five_rules(1000) == pytest.approx(5.3, abs=0.05)
    assert five_rules(4000) == pytest.approx(6.5, abs=0.05)
    # ... and one rule at 95% with every canary guessed right
    for m, ceiling in ((1000, 5.8), (4000, 7.1), (10000, 7.8)):
        assert epsilon_ceiling(m, m, 1e-5) == pytest.approx(ceiling, abs=0.05)


def _p_value_mpmath(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """Theorem 5.2 evaluated from its definition with 60-digit arithmetic."""
    mpmath.mp.dps = 60
    q = mpmath.e ** eps / (1 + mpmath.e ** eps)

    def mass(k: int) -> mpmath.mpf:
        return mpmath.binomial(r, k) * q ** k * (1 - q) ** (r - k)

    def tail(u: int) -> mpmath.mpf:
        return mpmath.fsum(mass(k) for k in range(max(u, 0), r + 1))

    alpha = max(((tail(v - i) - tail(v)) / i for i in range(1, v + 1)), default=0)
    return float(min(tail(v) + 2 * m * delta * alpha, 1))


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_p_value_matches_a_high_precision_evaluation(data: st.DataObject) -> None:
    r = data.draw(st.integers(1, 60))
    m = data.draw(st.integers(r, 200))
    v = data.draw(st.integers(0, r))
    eps = data.draw(st.floats(0.0, 8.0))
    delta = data.draw(st.sampled_from([0.0, 1e-5, 1e-3]))
    expected = _p_value_mpmath(m, r, v, eps, delta) if v > 0 else 1.0
    assert p_value(m, r, v, eps, delta) == pytest.approx(expected, rel=1e-9, abs=1e-300)


@pytest.mark.parametrize(("r", "eps"), [(60, 1.0), (200, 1.0), (200, 3.0)])
def test_the_bound_is_sound_and_tight_for_randomized_response(r: int, eps: float) -> None:
    # Randomized response that answers each canary right with probability
    # e^eps/(1+e^eps) is eps-DP; the exact probability that the audit claims
    # more than eps must be at most 5%, and it is close to 5% (the bound is
    # tight for this mechanism, so it is not vacuous).
    q = float(expit(eps))
    start = int(r * q)
    refuted = [v for v in range(start, r + 1) if epsilon_lower_bound(r, r, v, 0.0) > eps]
    probability = float(stats.binom.pmf(refuted, r, q).sum())
    assert probability <= 0.05
    assert probability > 0.01
    with_delta = [v for v in range(start, r + 1) if epsilon_lower_bound(r, r, v, 1e-5) > eps]
    assert set(with_delta) <= set(refuted)


@settings(max_examples=20, deadline=None)
@given(m=st.integers(10, 2000), data=st.data())
def test_more_correct_guesses_never_lower_the_bound(m: int, data: st.DataObject) -> None:
    r = data.draw(st.integers(1, m))
    v = data.draw(st.integers(0, r - 1))
    delta = data.draw(st.sampled_from([0.0, 1e-6, 1e-5]))
    assert epsilon_lower_bound(m, r, v + 1, delta) >= epsilon_lower_bound(m, r, v, delta) - 1e-5
    assert epsilon_lower_bound(m, r, v + 1, delta) <= epsilon_lower_bound(m, r, v + 1, 0.0)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(EmpiricalAuditError):
        p_value(10, 5, 6, 1.0, 0.0)
    with pytest.raises(EmpiricalAuditError):
        p_value(10, 11, 5, 1.0, 0.0)
    with pytest.raises(EmpiricalAuditError):
        p_value(10, 5, 3, -1.0, 0.0)
    with pytest.raises(EmpiricalAuditError):
        p_value(10, 5, 3, 1.0, 2.0)
    with pytest.raises(EmpiricalAuditError):
        epsilon_lower_bound(10, 5, 3, 0.0, confidence=1.0)


# -- the audit of a real run ------------------------------------------------------------

RUN = SimulationConfig(num_clients=3, rounds=2, dropout=0.0, noise_multiplier=3.0,
                       secure=False, seed=0, sample_rate=0.25, batch_size=128, local_epochs=3)
"""A tiny honest run: 2 rounds of 3 local epochs at sample rate 0.25 (24 steps), the
run docs/privacy-ledger.md quotes."""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("run")
    run_simulation(RUN, out)
    return out


def _audit(run: Path, tmp_path: Path, *extra: str) -> tuple[int, dict]:
    report = tmp_path / "report.json"
    status = main(["audit", "--empirical", str(run), "--client", "2", "--canaries", "1000",
                   "--output", str(report), "--no-plot", *extra])
    return status, json.loads(report.read_text())


def test_an_honest_run_is_not_flagged(run_dir: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    status, report = _audit(run_dir, tmp_path)
    assert status == 0 and report["violation"] is False
    # the audit retrained exactly what the ledger records, and claims what it claims
    ledger = [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()]
    last = [row for row in ledger if row.get("type") == "row" and row["client_id"] == 2
            and row["status"] != "in-flight"][-1]
    assert report["steps"] == sum(int(h[2]) for h in last["history"])
    assert report["claimed_epsilon"]["rdp"] == pytest.approx(last["epsilon_rdp"], rel=1e-9)
    assert report["ledger_epsilon"]["rdp"] == last["epsilon_rdp"]
    assert 0 <= report["epsilon_lower_bound"] < report["claimed_epsilon_min"]
    assert report["epsilon_lower_bound"] <= report["epsilon_ceiling"]
    assert "no violation found" in capsys.readouterr().out


def test_a_tenth_of_the_noise_is_flagged(run_dir: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    # The bug: training adds a tenth of the recorded noise; the accountant and
    # the ledger still say sigma 3.  The same command must now fail.
    sabotaged = functools.partial(run_canary_audit, _noise_factor=0.1)
    monkeypatch.setattr(empirical, "run_canary_audit", sabotaged)
    honest_claim = _audit(run_dir, tmp_path)[1]["claimed_epsilon_min"]
    status, report = _audit(run_dir, tmp_path / "sabotaged")
    assert status == 1 and report["violation"] is True
    assert report["claimed_epsilon_min"] == pytest.approx(honest_claim)  # silent
    assert report["epsilon_lower_bound"] > report["claimed_epsilon_min"]
    assert "VIOLATION" in capsys.readouterr().out


def test_the_plot_goes_where_asked_and_never_into_the_run(
        run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    before = sorted(p.name for p in run_dir.iterdir())
    plot = tmp_path / "figs" / "audit.png"
    assert main(["audit", "--empirical", str(run_dir), "--canaries", "200",
                 "--plot", str(plot), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["plot"] == str(plot) and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.chdir(run_dir)  # the default place would be the run itself: not written
    assert main(["audit", "--empirical", str(run_dir), "--canaries", "200", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["plot"] is None
    assert sorted(p.name for p in run_dir.iterdir()) == before


def test_canaries_are_clipped_and_noised_by_the_clients_opacus() -> None:
    # With (almost) no noise, a canary's score counts how often it was in a
    # batch, each time clipped by Opacus from norm 2C to C: the included
    # canaries' scores sum to the number of samplings, not twice it.  The
    # excluded ones score about 0: canaries sit where this client's data moves
    # the model least (blank pixels' weights: not at all; dead units: barely).
    config = SimulationConfig(num_clients=3, seed=0)
    data = load_data(config)
    model, _ = preflight(config, data)
    x, y = data.clients[1]
    dp = DPConfig(noise_multiplier=1.0, batch_size=64, max_grad_norm=0.5, lr=0.5)
    result = run_canary_audit(model, x, y, dp, rounds=2, canaries=200, seed=3,
                              _noise_factor=1e-9)
    member = result.membership
    assert result.canary_samples > 0
    assert result.scores[member].sum() == pytest.approx(result.canary_samples, rel=0.01)
    # (an included canary scores about 1 per sampling; excluded ones stay far below)
    assert np.abs(result.scores[~member]).max() < 0.5
    assert np.median(np.abs(result.scores[~member])) < 1e-3
    assert result.steps == 2 * dp.steps_per_round


def test_nothing_to_audit_is_refused() -> None:
    config = SimulationConfig(num_clients=3, seed=0)
    data = load_data(config)
    model, _ = preflight(config, data)
    x, y = data.clients[0]
    with pytest.raises(EmpiricalAuditError, match="no DP claim"):
        run_canary_audit(model, x, y, DPConfig(noise_multiplier=0.0), rounds=1)
    with pytest.raises(EmpiricalAuditError, match="canaries"):
        run_canary_audit(model, x, y, DPConfig(noise_multiplier=1.0), rounds=1,
                         canaries=10**6)
    with pytest.raises(EmpiricalAuditError, match="cannot be reproduced"):
        run_canary_audit(model, x, y, DPConfig(noise_multiplier=1.0), rounds=1, canaries=50,
                         expected_history=[[1.0, 0.5, 999]])


def test_a_run_without_noise_has_nothing_to_audit(run_dir: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("checkpoint.pt", "metrics.json"):
        (tmp_path / name).write_bytes((run_dir / name).read_bytes())
    recs = records(run_dir)
    for rec in recs:
        if rec.get("type") == "row":
            rec["noise_multiplier"] = 0.0
            rec["history"] = [[0.0, q, n] for _, q, n in rec["history"]]
    write_chained(tmp_path, recs, anchors=False)
    assert main(["audit", "--empirical", str(tmp_path), "--no-plot"]) == 2
    assert "no DP claim to audit" in capsys.readouterr().err


def test_a_directory_without_a_ledger_is_an_error(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "--empirical", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err


def test_cli_default_matches_the_module() -> None:
    assert cli_empirical.DEFAULT_CANARIES == empirical.DEFAULT_CANARIES
