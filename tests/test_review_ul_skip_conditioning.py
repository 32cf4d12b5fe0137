"""Review (user-level DP): skipping small cohorts makes a released round's
participation more likely than ``q``; fixed by charging EVERY round
(released, skipped or aborted) with the skip-aware bound.

With Poisson client sampling the simulator skips a round whose cohort is
smaller than ``k = user_level_min_cohort`` (nothing released).  Whether a
round is released depends on whether the target client was sampled: given
a release, the target took part with probability

    q' = q P[Bin(n - 1, q) >= k - 1] / P[Bin(n, q) >= k]  >  q,

so charging only released rounds, each at rate ``q``, under-charged (20
clients at q = 0.1 over 20 rounds: 11.5 true where the ledger stated 8.0).
The ledger now charges every round, non-adaptively, with

    1/(alpha-1) log[ P(B >= k) A_q(alpha) + P(B = k-1) (1 - q + q e^((alpha-1) eps(alpha)))
                     + P(B < k-1) ],   B ~ Bin(n - 1, q)

(docs/user-level-dp.md, "Accounting").  The tests compute the exact
divergence of ONE ROUND's outcome (skip or released sum) between the two
neighbouring federations (the target's update SHIFT or 0, every other
client's update 0, a legitimate pair under zero-out adjacency) for 1-D
Skellam noise, from the exact joint law of (target sampled, |S'|), in both
directions, and compare it with the ledger's per-round charge.  Then they
play the forger: a skipped round's row dropped, ``k`` lowered, ``n``
raised (every history and epsilon recomputed, the chain redone).
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import ive, logsumexp
from scipy.stats import binom

from securefl.cli.audit import audit_run
from securefl.federation.simulation import (
    SimulationConfig,
    preflight,
    run_simulation,
    user_level_min_cohort,
    user_level_plan,
)
from securefl.privacy.distributed import (
    ORDERS as ACCOUNTANT_ORDERS,
)
from securefl.privacy.distributed import (
    SkellamRound,
    _skip_round_rdp,
    colluder_epsilon,
    poisson_subsampled_rdp,
    skellam_rdp,
    user_level_entry,
    user_level_epsilon,
    user_level_epsilons,
)
from securefl.privacy.ledger import UserLevelEntry
from tests.ledger_tools import records, write_chained

SHIFT = 20
ORDERS = (2, 3, 4, 6, 8)
INDEX = [ACCOUNTANT_ORDERS.index(a) for a in ORDERS]


def _exact_round(variance: float, q: float, n: int, k: int, alpha: int) -> float:
    """max of both directions of D_alpha between one round's outcome laws:
    the outcome is "skip" when T + B < k (T ~ Bern(q) the target sampled,
    B ~ Bin(n - 1, q) the others), else Z + SHIFT T (world x) or Z (world
    0), Z ~ Skellam(variance) on Z."""
    width = int(16 * math.sqrt(variance)) + 4 * SHIFT
    axis = np.arange(-width, width + 1)
    log_p = np.log(ive(np.abs(axis), variance))
    log_q = np.log(ive(np.abs(axis - SHIFT), variance))
    assert np.all(np.isfinite(log_p)) and np.all(np.isfinite(log_q))
    a = (1 - q) * binom.sf(k - 1, n - 1, q)  # target out, released: P
    b = q * binom.sf(k - 2, n - 1, q)  # target in, released: Q in world x, P in world 0
    skip = 1.0 - a - b
    log_x = np.logaddexp((math.log(a) if a > 0 else -math.inf) + log_p, math.log(b) + log_q)
    log_0 = math.log(a + b) + log_p
    moments = []
    for top, bottom in ((log_x, log_0), (log_0, log_x)):
        released = float(logsumexp(alpha * top + (1 - alpha) * bottom))
        moments.append(math.log(skip + math.exp(released)) if skip > 0 else released)
    return max(moments) / (alpha - 1)


def _charged(variance: float, q: float, n: int, k: int) -> list[float]:
    """The ledger's per-round charge at ORDERS for the 1-D pair (the
    function every history row is composed with)."""
    rdp = _skip_round_rdp(variance, float(SHIFT), float(SHIFT), q, n, k, "symmetric-binomial")
    return [float(rdp[i]) for i in INDEX]


def _plan(clients: int, q: float, rounds: int):  # type: ignore[no-untyped-def]
    config = SimulationConfig(num_clients=clients, rounds=rounds, privacy="user-level",
                              bits=16, user_epsilon=8.0, seed=2, hidden=8,
                              client_sample_rate=q)
    model, _ = preflight(config)
    plan = user_level_plan(config, model)
    assert plan is not None
    return config, plan


@pytest.mark.parametrize(("clients", "q", "rounds"), [(12, 0.3, 3), (20, 0.1, 20)])
def test_a_round_is_charged_for_its_skip_and_its_conditional_participation(
        clients: int, q: float, rounds: int) -> None:
    """The exact divergence of a round's outcome (skip mass included) is
    never above what the ledger charges that round, for the federations the
    review found under-charged; the charge at the released rate ``q'``
    given a release, which the old ledger did not reach, is."""
    config, plan = _plan(clients, q, rounds)
    k = user_level_min_cohort(config, plan)
    n = config.num_clients
    assert (plan.pool, plan.skip_below) == (n, k) and k >= 2
    row = user_level_entry(plan, round_number=1, released_variance=plan.variance, survivors=k)
    assert (row.cohort_pool, row.skip_below) == (n, k)
    assert row.history[-1][5:] == [n, k, 1]
    multiplier = math.sqrt(plan.variance) / row.l2_sensitivity
    variance = (multiplier * SHIFT) ** 2
    charged = _charged(variance, q, n, k)
    exact = [_exact_round(variance, q, n, k, a) for a in ORDERS]
    over = [(a, e, c) for a, e, c in zip(ORDERS, exact, charged, strict=True)
            if e > c * (1 + 1e-9)]
    assert not over, f"exact round divergence above the charge at {over}"
    # the old charge (released rounds only, at q) is below the exact
    # divergence given a release: the hole the skip-aware charge closes
    base = np.zeros(max(ORDERS) + 1)
    base[2:] = skellam_rdp(np.arange(2, max(ORDERS) + 1), SHIFT, SHIFT, variance)
    old = poisson_subsampled_rdp(ORDERS, q, base, accountant=row.accountant)
    q_given_release = q * binom.sf(k - 2, n - 1, q) / binom.sf(k - 1, n, q)
    width = int(16 * math.sqrt(variance)) + 4 * SHIFT
    axis = np.arange(-width, width + 1)
    log_p = np.log(ive(np.abs(axis), variance))
    log_q = np.log(ive(np.abs(axis - SHIFT), variance))
    log_m = np.logaddexp(math.log1p(-q_given_release) + log_p,
                         math.log(q_given_release) + log_q)
    given_release = float(logsumexp(2 * log_m - log_p))
    assert given_release > float(old[0]) + 1e-6
    # and the charge never exceeds the unsampled bound
    assert all(c <= float(base[a]) + 1e-12 for a, c in zip(ORDERS, charged, strict=True))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 30), q=st.floats(0.02, 0.95), k=st.integers(1, 31),
       multiplier=st.floats(0.4, 3.0))
def test_the_charge_bounds_the_exact_round_divergence(n: int, q: float, k: int,
                                                      multiplier: float) -> None:
    """For any pool, rate, threshold (k = 1: an empty cohort is skipped;
    k > n: every round) and noise, the exact one-round divergence, both
    directions, skip mass included, is at most the ledger's per-round
    charge."""
    variance = (multiplier * SHIFT) ** 2
    charged = _charged(variance, q, n, k)
    for a, c in zip(ORDERS, charged, strict=True):
        if k > n:  # always skipped: nothing differs
            assert abs(c) <= 1e-12
            continue
        assert _exact_round(variance, q, n, k, a) <= c * (1 + 1e-9) + 1e-12


@pytest.mark.parametrize("k", [2, 3])
def test_the_conditional_rate_exceeds_q_whenever_a_small_cohort_is_skipped(k: int) -> None:
    """The conditioning is not an artefact of one configuration: for every
    skip threshold k >= 2 and q < 1 the rate given a release is above q."""
    for n in (6, 12, 30):
        for q in (0.1, 0.3, 0.6):
            assert q * binom.sf(k - 2, n - 1, q) / binom.sf(k - 1, n, q) > q


def test_rows_without_a_skip_threshold_are_charged_as_before() -> None:
    """Old 5-field history rows (and rows of a plan with k = 0, never
    skipped) get the Poisson-sampled bound, nothing more; an 8-field skipped row
    costs nothing unsampled (nothing reached the server) and the same as a
    released one sampled."""
    old = [[5e5, 3e4, 1.5e3, 0.2, 3]]
    same = [[5e5, 3e4, 1.5e3, 0.2, 3, 40, 0, 1]]
    assert user_level_epsilon(old, 1e-5) == user_level_epsilon(same, 1e-5)
    base = np.zeros(ACCOUNTANT_ORDERS[-1] + 1)
    base[2:] = skellam_rdp(np.arange(2, ACCOUNTANT_ORDERS[-1] + 1), 3e4, 1.5e3, 5e5)
    assert np.allclose(_skip_round_rdp(5e5, 3e4, 1.5e3, 0.2, 40, 0, "symmetric-binomial"),
                       poisson_subsampled_rdp(ACCOUNTANT_ORDERS, 0.2, base,
                                              accountant="symmetric-binomial"))
    released = [[5e5, 3e4, 1.5e3, 0.2, 1, 10, 3, 1]]
    skipped = [[5e5, 3e4, 1.5e3, 0.2, 1, 10, 3, 0]]
    assert user_level_epsilons(skipped, 1e-5)["unsampled"] == 0.0
    assert user_level_epsilons(skipped, 1e-5)["sampled"] \
        == user_level_epsilons(released, 1e-5)["sampled"] > 0
    # a legacy record (no cohort_pool / skip_below fields) still parses
    record = user_level_entry(_plan(12, 0.3, 3)[1], round_number=1,
                              released_variance=_plan(12, 0.3, 3)[1].variance,
                              survivors=3).to_record()
    for key in ("cohort_pool", "skip_below"):
        record.pop(key)
    record["history"] = [record["history"][0][:5]]
    legacy = UserLevelEntry.from_record(record)
    assert (legacy.cohort_pool, legacy.skip_below) == (0, 0)


# -- a run with skipped rounds, and forgeries of its charges -------------------------

CONFIG = dict(num_clients=6, rounds=5, dropout=0.0, privacy="user-level", bits=16,
              user_epsilon=8.0, seed=2, hidden=8, local_epochs=1, client_sample_rate=0.1)
"""Six clients at q = 0.1, k = 2: a round is skipped with probability 0.886
(all five released: 2e-5)."""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ulskip") / "run"
    run_simulation(SimulationConfig(**CONFIG), out)  # type: ignore[arg-type]
    return out


def _user_rows(run: Path) -> list[dict]:
    return [r for r in records(run) if r["type"] == "user-level"]


def test_a_skipped_round_writes_a_charged_row(run: Path) -> None:
    """Every round settles with a charged user-level row (skipped or
    released), the epsilons grow with each skipped round, stay within the
    budget the guard enforces, and the run audits."""
    report = audit_run(run)
    assert report["verified"], report["violations"]
    rows = [r for r in _user_rows(run) if r["status"] != "in-flight"]
    assert [r["round"] for r in rows] == list(range(1, CONFIG["rounds"] + 1))
    skipped = [r for r in rows if r["status"] == "skipped"]
    assert skipped
    metrics = json.loads((run / "metrics.json").read_text())
    said = {e["round"] for e in metrics["rounds"] if e["abort_reason"].startswith("skipped:")}
    assert said == {r["round"] for r in skipped}
    for row in skipped:
        assert row["survivors"] == 0 and row["released_variance"] == row["target_variance"]
        assert row["history"][-1][5:] == [6, 2, 0]
    epsilons = [r["epsilon"] for r in rows]
    assert all(b > a for a, b in itertools.pairwise(epsilons))
    assert epsilons[-1] <= CONFIG["user_epsilon"]
    # calibrated for every round charged: the whole budget is spent over the
    # rounds when each is charged at its target variance (a cohort of 3 or
    # more, whose semi-honest session is calibrated to a threshold below
    # it, releases more noise and spends less: random, about 8% of runs)
    if all(r["released_variance"] == r["target_variance"] for r in rows):
        assert epsilons[-1] == pytest.approx(CONFIG["user_epsilon"], rel=1e-4)


def test_the_budget_guard_counts_skipped_rounds(run: Path) -> None:
    """The guard's charge of the next round composes every earlier row,
    skipped ones included: one more round would exceed the budget."""
    rows = [r for r in _user_rows(run) if r["status"] != "in-flight"]
    history = [*rows[-1]["history"], [*rows[-1]["history"][-1][:7], 1]]
    assert user_level_epsilon(history, rows[-1]["delta"]) > CONFIG["user_epsilon"]


def _rechain(recs: list[dict], drop: int | None = None, **fields: int) -> list[dict]:
    """Set ``fields`` in every user-level row (or drop round ``drop``'s
    user-level rows) and recompute what the audit recomputes."""
    out = []
    previous: list[list[float]] = []
    previous_colluders: list[float] = []
    for rec in recs:
        if rec["type"] != "user-level":
            out.append(rec)
            continue
        if rec["round"] == drop:
            continue
        rec.update(fields)
        row = SkellamRound(rec["released_variance"], rec["l1_sensitivity"],
                           rec["l2_sensitivity"], rec["sample_rate"], 1, rec["cohort_pool"],
                           rec["skip_below"], 0 if rec["status"] == "skipped" else 1)
        history = [*previous, row.as_list()]
        rec["history"] = history
        eps = user_level_epsilons(history, rec["delta"], accountant=rec["accountant"])
        rec["epsilon"], rec["epsilon_unsampled"] = eps["sampled"], eps["unsampled"]
        rec["colluder_history"] = [*previous_colluders, 0.0]
        rec["epsilon_colluders"] = colluder_epsilon(history, rec["colluder_history"],
                                                    rec["delta"])
        if rec["status"] != "in-flight":
            previous, previous_colluders = history, rec["colluder_history"]
        out.append(rec)
    return out


def _forge(run: Path, dest: Path, drop: int | None = None, **fields: int) -> float:
    shutil.copytree(run, dest)
    recs = _rechain(records(dest), drop, **fields)
    write_chained(dest, recs)
    return [r for r in recs if r["type"] == "user-level"][-1]["epsilon"]


def test_a_dropped_skipped_round_is_caught(run: Path, tmp_path: Path) -> None:
    """ATTACK: a skipped round's row deleted (later histories recomputed):
    a smaller epsilon; metrics.json still reports the round skipped."""
    first = next(r["round"] for r in _user_rows(run) if r["status"] == "skipped")
    honest = _user_rows(run)[-1]["epsilon"]
    forged = tmp_path / "drop"
    assert _forge(run, forged, drop=first) < honest
    report = audit_run(forged)
    assert not report["verified"]
    assert any("skipped" in v for v in report["violations"])


@pytest.mark.parametrize(("fields", "needle"), [({"skip_below": 1}, "skip"),
                                                ({"cohort_pool": 600}, "cohort_pool")])
def test_a_forged_skip_threshold_or_pool_is_caught(run: Path, tmp_path: Path,
                                                   fields: dict, needle: str) -> None:
    """ATTACK: every row's k lowered to 1 (skipped rows would then be
    charged at today's bound) or n raised to 600 (the skip mass vanishes),
    histories and epsilons recomputed: the audit compares n and k with the
    run configuration."""
    honest = _user_rows(run)[-1]["epsilon"]
    forged = tmp_path / "forge"
    assert _forge(run, forged, **fields) != honest
    report = audit_run(forged)
    assert not report["verified"]
    assert any(needle in v for v in report["violations"]), report["violations"]


def test_the_budget_guard_refuses_after_skipped_rounds_spent_the_budget(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ATTACK on the guard: a plan calibrated for 2 rounds, in a run of 4
    whose first two cohorts are too small (skipped).  The skips spend the
    budget, so round 3, which samples everyone, must be refused (before,
    skips were free and round 3 released at a budget already spent)."""
    from dataclasses import replace

    from securefl.federation import simulation

    cohorts = iter([(1,), (2,), (1, 2, 3, 4), (1, 2, 3, 4)])
    monkeypatch.setattr(simulation, "poisson_cohort", lambda ids, q: next(cohorts))
    planner = simulation.user_level_plan
    monkeypatch.setattr(simulation, "user_level_plan",
                        lambda config, model: planner(replace(config, rounds=2), model))
    config = SimulationConfig(num_clients=4, rounds=4, dropout=0.0, privacy="user-level",
                              bits=16, user_epsilon=8.0, seed=1, hidden=8, local_epochs=1,
                              client_sample_rate=0.5)
    result = run_simulation(config, tmp_path / "run")
    assert [r.aborted for r in result.rounds] == [True] * 4
    assert result.rounds[0].abort_reason.startswith("skipped:")
    assert result.rounds[2].abort_reason.startswith("refused (user-level budget)")
    rows = [r for r in _user_rows(tmp_path / "run") if r["status"] != "in-flight"]
    assert [(r["round"], r["status"]) for r in rows] == [(1, "skipped"), (2, "skipped")]
    assert rows[-1]["epsilon"] == pytest.approx(8.0, rel=1e-4)
    assert audit_run(tmp_path / "run")["verified"]


def test_an_infinite_branch_of_zero_probability_is_not_a_nan() -> None:
    """A branch the binomial gives no mass (k beyond the pool) contributes
    nothing even where its divergence is infinite, and an infinite branch
    with mass gives an infinite RDP: never NaN (a NaN epsilon would be read
    as anything)."""
    from securefl.privacy.distributed import skip_mixture_rdp

    orders = np.arange(2, 9)
    inf = np.full(orders.shape, np.inf)
    finite = np.linspace(0.1, 0.7, orders.size)
    # k = n + 2: P(B >= k) = P(B = k - 1) = 0, everything skipped
    zero = skip_mixture_rdp(orders, inf, inf, 0.3, 4, 6)
    assert np.all(np.abs(zero) < 1e-12)
    # an infinite sampled bound with positive mass: infinite, not NaN
    assert np.all(np.isinf(skip_mixture_rdp(orders, inf, finite, 0.3, 10, 2)))
    assert not np.isnan(skip_mixture_rdp(orders, finite, inf, 0.3, 10, 2)).any()
