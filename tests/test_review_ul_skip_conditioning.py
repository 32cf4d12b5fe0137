"""Review (user-level DP): skipping small cohorts makes a released round's
participation more likely than ``q``, and the ledger still charges ``q``.

With Poisson client sampling the simulator skips a round whose cohort is
smaller than ``k = user_level_min_cohort`` (nothing charged, nothing
released) and charges a released round at the configured ``q``.  But a
round is released only when the cohort has at least ``k`` clients, an
event that depends on whether the target client was sampled: given a
release, the target took part with probability

    q' = q P[Bin(n - 1, q) >= k - 1] / P[Bin(n, q) >= k]  >  q,

(and, conditioned on the others' participation, with certainty when
exactly ``k - 1`` others were sampled).  Skipped rounds are charged
nothing, so the charge of a released round must bound the divergence of
the released sum *given* the release; with the other clients' updates zero
(a legitimate pair of neighbouring federations under zero-out adjacency)
that is exactly the Poisson-sampled mechanism at rate ``q'``.

The test takes small federations the simulator accepts (12 clients at
``q = 0.3``, 20 at ``q = 0.1``; their own ``k`` and noise multiplier), computes that divergence
exactly for one-dimensional Skellam noise at the plan's noise multiplier
(shift 20, so that the accountant's ``Delta_1 = Delta_2 = 20`` is attained)
and compares it with the ledger's per-round charge at the same orders.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import ive, logsumexp
from scipy.stats import binom

from securefl.federation.simulation import (
    SimulationConfig,
    preflight,
    user_level_min_cohort,
    user_level_plan,
)
from securefl.privacy.distributed import poisson_subsampled_rdp, skellam_rdp, user_level_entry

SHIFT = 20
ORDERS = (2, 3, 4, 6, 8)


def _exact_add(variance: float, q: float, alpha: int) -> float:
    """D_alpha((1 - q) P + q Q || P), P = Skellam(variance) on Z, Q = P + SHIFT."""
    width = int(16 * math.sqrt(variance)) + 4 * SHIFT
    axis = np.arange(-width, width + 1)
    log_p = np.log(ive(np.abs(axis), variance))
    log_q = np.log(ive(np.abs(axis - SHIFT), variance))
    assert np.all(np.isfinite(log_p)) and np.all(np.isfinite(log_q))
    log_m = np.logaddexp(math.log1p(-q) + log_p, math.log(q) + log_q)
    return float(logsumexp(alpha * log_m + (1 - alpha) * log_p)) / (alpha - 1)


@pytest.mark.xfail(strict=True, reason="review-ul finding 6: skipped rounds are charged nothing"
                   " and released rounds at q; being fixed on h/skipacct")
@pytest.mark.parametrize(("clients", "q", "rounds"), [(12, 0.3, 3), (20, 0.1, 20)])
def test_a_released_round_is_charged_for_its_conditional_participation(
        clients: int, q: float, rounds: int) -> None:
    """HOLE (fails against main): at low orders the exact divergence given
    the release exceeds what the ledger charges the release (for 20 clients
    at q = 0.1 over 20 rounds, k = 2: participation given a release is
    0.142, and the accountant at that rate gives 11.5 where the ledger
    states 8.0)."""
    config = SimulationConfig(num_clients=clients, rounds=rounds, privacy="user-level",
                              bits=16, user_epsilon=8.0, seed=2, hidden=8,
                              client_sample_rate=q)
    model, _ = preflight(config)
    plan = user_level_plan(config, model)
    assert plan is not None
    k = user_level_min_cohort(config, plan)
    n = config.num_clients
    row = user_level_entry(plan, round_number=1, released_variance=plan.variance, survivors=k)
    assert row.sample_rate == q  # what the ledger charges the release at
    multiplier = math.sqrt(plan.variance) / row.l2_sensitivity
    q_given_release = q * binom.sf(k - 2, n - 1, q) / binom.sf(k - 1, n, q)
    assert q_given_release > q
    variance = (multiplier * SHIFT) ** 2
    base = np.zeros(max(ORDERS) + 1)
    base[2:] = skellam_rdp(np.arange(2, max(ORDERS) + 1), SHIFT, SHIFT, variance)
    charged = [float(c) for c in poisson_subsampled_rdp(ORDERS, q, base,
                                                        accountant=row.accountant)]
    exact = [_exact_add(variance, q_given_release, a) for a in ORDERS]
    # the pair at the configured q is within the charge (the bound itself holds)
    assert all(_exact_add(variance, q, a) <= c for a, c in zip(ORDERS, charged, strict=True))
    over = [(a, e, c) for a, e, c in zip(ORDERS, exact, charged, strict=True) if e > c]
    assert not over, (
        f"k = {k}, q = {q}, participation given a release {q_given_release:.4f}: the exact"
        f" divergence given the release exceeds the ledger's charge at (order, exact,"
        f" charged) {[(a, round(e, 5), round(c, 5)) for a, e, c in over]}")


@pytest.mark.parametrize("k", [2, 3])
def test_the_conditional_rate_exceeds_q_whenever_a_small_cohort_is_skipped(k: int) -> None:
    """The conditioning is not an artefact of one configuration: for every
    skip threshold k >= 2 and q < 1 the rate given a release is above q."""
    for n in (6, 12, 30):
        for q in (0.1, 0.3, 0.6):
            assert q * binom.sf(k - 2, n - 1, q) / binom.sf(k - 1, n, q) > q
