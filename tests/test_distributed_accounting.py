"""User-level accounting of the Skellam mechanism, cross-checked against
dp-accounting (Gaussian RDP with Poisson sampling, and a PLD of the exact
1-D Skellam mechanism built from its probability mass functions)."""

from __future__ import annotations

import itertools
import math

import dp_accounting
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants.analysis import rdp as opacus_rdp
from scipy import stats

from securefl.errors import ConfigurationError
from securefl.privacy.distributed import (
    ACCOUNTANT,
    LEGACY_ACCOUNTANT,
    ORDERS,
    ROUNDING_INFLATION_LIMIT,
    SkellamRound,
    calibrate_variance,
    plan_user_level,
    poisson_subsampled_rdp,
    rdp_to_epsilon,
    skellam_rdp,
    user_level_epsilon,
    user_level_epsilons,
)

DELTA = 1e-5


def _gaussian_epsilon(sigma: float, q: float, rounds: int, *, pld: bool = False) -> float:
    if pld:
        accountant = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-3)
    else:
        accountant = dp_accounting.rdp.RdpAccountant(orders=[float(o) for o in ORDERS])
    event = dp_accounting.GaussianDpEvent(sigma)
    if q < 1:
        event = dp_accounting.PoissonSampledDpEvent(q, event)
    accountant.compose(event, rounds)
    return float(accountant.get_epsilon(DELTA))


@given(st.floats(1.0, 1e4), st.floats(0.3, 5.0), st.sampled_from([1.0, 0.2, 0.05, 0.01]),
       st.integers(1, 200))
@settings(max_examples=25, deadline=None)
def test_skellam_is_never_below_the_gaussian_of_the_same_variance(l2, z, q, rounds):
    """dp-accounting's (tight) RDP of the Poisson-sampled Gaussian with
    sigma = sqrt(mu) / Delta_2 is a lower bound of ours: the Skellam bound
    adds a non-negative term to the Gaussian's, and the general subsampling
    bound is never below the Gaussian's exact subsampled RDP."""
    l1 = min(l2 * l2, 64.0 * l2)
    mu = (z * l2) ** 2
    ours = user_level_epsilon([[mu, l1, l2, q, rounds]], DELTA)
    assert ours >= _gaussian_epsilon(z, q, rounds) * (1 - 1e-9)


@pytest.mark.parametrize("q", [1.0, 0.01])
def test_skellam_converges_to_the_gaussian_as_the_variance_grows(q):
    """At a fixed noise multiplier, the Skellam epsilon tends to the
    Gaussian's as the scale grows (its extra term vanishes like 1/mu)."""
    gaussian_bound = user_level_epsilon([[1e12, 0.0, 1e6 / 1.5, q, 50]], DELTA)
    ratios = []
    for scale in (1.0, 10.0, 100.0, 1000.0):
        l2 = 10.0 * scale
        ours = user_level_epsilon([[(1.5 * l2) ** 2, min(l2 * l2, 64 * l2), l2, q, 50]], DELTA)
        ratios.append(ours / gaussian_bound)
    assert all(a >= b - 1e-12 for a, b in itertools.pairwise(ratios))
    assert ratios[-1] - 1.0 < 1e-5 and ratios[0] > 1.0
    if q == 1.0:  # unsampled, the Gaussian part is exactly dp-accounting's Gaussian RDP
        assert math.isclose(gaussian_bound, _gaussian_epsilon(1.5, 1.0, 50), rel_tol=1e-6)


def test_the_general_subsampling_bound_is_within_a_modest_factor_of_the_tight_one():
    """Zhu-Wang's general bound (the legacy accountant) applied to the
    Gaussian's RDP against the Mironov et al. exact subsampled-Gaussian RDP
    (dp-accounting): never below, and within 35% at typical federated
    parameters (this is the price of a mechanism-agnostic bound)."""
    for q in (0.3, 0.1, 0.03):
        ours = user_level_epsilon([[1e12, 0.0, 1e6 / 1.2, q, 100]], DELTA,
                                  accountant=LEGACY_ACCOUNTANT)
        tight = _gaussian_epsilon(1.2, q, 100)
        assert tight <= ours <= 1.35 * tight


@pytest.mark.parametrize("q", [0.3, 0.1, 0.03, 0.001])
def test_the_symmetric_bound_on_the_gaussian_is_the_exact_sampled_gaussian_rdp(q):
    """The default accountant on the Gaussian's RDP (``Delta_1 = 0`` and a
    variance so large that the Skellam term vanishes) is Mironov, Talwar and
    Zhang's exact integer-order RDP of the Poisson-sampled Gaussian, as
    dp-accounting computes it independently at the same orders."""
    ours = user_level_epsilon([[1e12, 0.0, 1e6 / 1.2, q, 100]], DELTA)
    assert ours == pytest.approx(_gaussian_epsilon(1.2, q, 100), rel=1e-9)
    assert ACCOUNTANT == "symmetric-binomial"


@given(st.floats(1.0, 1e4), st.floats(0.3, 5.0), st.floats(1e-3, 1.0), st.integers(1, 200))
@settings(max_examples=25, deadline=None)
def test_the_symmetric_bound_is_never_above_the_general_one(l2, z, q, rounds):
    """The default accountant drops the factor 3 of the general bound, and
    nothing else: it is never above it (and equal at ``q = 1``)."""
    row = [[(z * l2) ** 2, min(l2 * l2, 64.0 * l2), l2, q, rounds]]
    ours = user_level_epsilon(row, DELTA)
    general = user_level_epsilon(row, DELTA, accountant=LEGACY_ACCOUNTANT)
    assert ours <= general * (1 + 1e-12)
    if q == 1.0:
        assert ours == general


def test_an_unknown_accountant_is_refused_naming_it():
    with pytest.raises(ConfigurationError, match="unknown user-level accountant 'pld'"):
        user_level_epsilon([[100.0, 10.0, 10.0, 0.5, 1]], DELTA, accountant="pld")
    with pytest.raises(ConfigurationError, match="unknown user-level accountant"):
        plan_user_level(num_values=100, clip=1.0, bits=16, cohort=10, q=0.5, rounds=5,
                        target_epsilon=2.0, delta=DELTA, accountant="pld")


def _skellam_log_pmf(mu: float, shift: int, support: np.ndarray) -> np.ndarray:
    return stats.skellam.logpmf(support - shift, mu / 2, mu / 2)


@pytest.mark.parametrize("accountant", [ACCOUNTANT, LEGACY_ACCOUNTANT])
@pytest.mark.parametrize(("mu", "delta_1d", "q", "rounds"),
                         [(25.0, 2, 1.0, 1), (60.0, 3, 1.0, 4), (40.0, 2, 0.2, 10),
                          (100.0, 5, 0.05, 20), (4.0, 1, 0.5, 5), (30.0, 4, 0.9, 3),
                          (400.0, 20, 0.3, 40)])
def test_rdp_bound_is_above_the_numeric_pld_of_the_one_dimensional_worst_case(
        mu, delta_1d, q, rounds, accountant):
    """In one dimension the Skellam mechanism with sensitivity Delta (L1 =
    L2 = Delta) and Poisson sampling is the pair Sk(mu) vs (1 - q) Sk(mu) +
    q (Delta + Sk(mu)).  dp-accounting's PLD of these exact probability mass
    functions, in both directions, composed over the rounds, is a (nearly)
    tight epsilon; both RDP bounds must be above it, and not absurdly so."""
    width = int(40 * math.sqrt(mu)) + delta_1d
    support = np.arange(-width, width + 1)
    base = _skellam_log_pmf(mu, 0, support)
    shifted = _skellam_log_pmf(mu, delta_1d, support)
    mixed = np.logaddexp(math.log1p(-q) + base, math.log(q) + shifted) if q < 1 else shifted
    epsilons = []
    for lower, upper in ((base, mixed), (mixed, base)):
        pld = dp_accounting.pld.privacy_loss_distribution.from_two_probability_mass_functions(
            dict(zip(support.tolist(), upper.tolist(), strict=True)),
            dict(zip(support.tolist(), lower.tolist(), strict=True)),
            value_discretization_interval=1e-3, symmetric=False)
        epsilons.append(pld.self_compose(rounds).get_epsilon_for_delta(DELTA))
    numeric = max(epsilons)
    ours = user_level_epsilon([[mu, float(delta_1d), float(delta_1d), q, rounds]], DELTA,
                              accountant=accountant)
    assert numeric <= ours <= 3.0 * numeric + 0.5


def test_rdp_to_epsilon_is_opacus_conversion():
    rdp = skellam_rdp(ORDERS, 40.0, 20.0, 9000.0) * 3
    ours = rdp_to_epsilon(ORDERS, rdp, DELTA)
    theirs, _ = opacus_rdp.get_privacy_spent(orders=list(ORDERS), rdp=rdp, delta=DELTA)
    assert math.isclose(ours, theirs, rel_tol=1e-12)


def test_skellam_rdp_is_the_published_formula():
    a, l1, l2, mu = 7, 30.0, 10.0, 400.0
    expected = a * l2**2 / (2 * mu) + min(((2 * a - 1) * l2**2 + 6 * l1) / (4 * mu**2),
                                          3 * l1 / (2 * mu))
    assert skellam_rdp([a], l1, l2, mu)[0] == pytest.approx(expected, rel=1e-15)
    with pytest.raises(ConfigurationError, match="integer orders"):
        skellam_rdp([1.5], l1, l2, mu)


def test_subsampling_at_rate_one_is_the_mechanism_itself_and_never_worse():
    base = np.zeros(ORDERS[-1] + 1)
    base[2:] = skellam_rdp(np.arange(2, ORDERS[-1] + 1), 30.0, 10.0, 100.0)
    assert np.array_equal(poisson_subsampled_rdp(ORDERS, 1.0, base), base[list(ORDERS)])
    sampled = poisson_subsampled_rdp(ORDERS, 0.1, base)
    assert np.all(sampled <= base[list(ORDERS)])


@pytest.mark.parametrize("q", [0.0, -0.1, 1.5, math.nan])
def test_a_sampling_rate_outside_0_1_is_refused_naming_it(q):
    with pytest.raises(ConfigurationError, match=r"q must be in \(0, 1\]"):
        user_level_epsilon([[100.0, 10.0, 10.0, q, 1]], DELTA)
    with pytest.raises(ConfigurationError, match=r"q must be in \(0, 1\]"):
        plan_user_level(num_values=100, clip=1.0, bits=16, cohort=10, q=q, rounds=5,
                        target_epsilon=2.0, delta=DELTA)


def test_composition_adds_rounds_and_both_epsilons_are_reported():
    row = SkellamRound(400.0, 100.0, 10.0, 0.1, 1)
    one = user_level_epsilon([row] * 20, DELTA)
    assert one == pytest.approx(user_level_epsilon([[400.0, 100.0, 10.0, 0.1, 20]], DELTA))
    both = user_level_epsilons([row] * 20, DELTA)
    assert both["sampled"] == pytest.approx(one) and both["unsampled"] > one
    assert user_level_epsilon([], DELTA) == 0.0
    assert user_level_epsilon([[0.0, 1.0, 1.0, 0.5, 1]], DELTA) == math.inf


@given(st.floats(0.5, 8.0), st.sampled_from([1.0, 0.1, 0.02]), st.integers(1, 100))
@settings(max_examples=15, deadline=None)
def test_calibrated_variance_is_the_smallest_within_the_target(target, q, rounds):
    l2, l1 = 50.0, 500.0
    mu = calibrate_variance(target, DELTA, l1, l2, q, rounds)
    assert user_level_epsilon([[mu, l1, l2, q, rounds]], DELTA) <= target
    assert user_level_epsilon([[mu * (1 - 1e-5), l1, l2, q, rounds]], DELTA) > target


def test_plan_fits_the_ring_and_spends_the_target():
    plan = plan_user_level(num_values=4810, clip=1.0, bits=16, cohort=30, q=0.1, rounds=30,
                           target_epsilon=4.0, delta=DELTA)
    codec = plan.codec
    assert codec.bits == 16 and codec.padded == 8192
    assert user_level_epsilon([plan.round_row] * 30, DELTA) <= 4.0
    assert plan.stddevs * plan.sum_stddev() <= 2**15 - 1
    assert 2 * 8 * (plan.variance * 1.001) ** 0.5 <= 2**15  # the protocol's noise check
    assert codec.l2_sensitivity <= ROUNDING_INFLATION_LIMIT * codec.gamma * codec.clip
    # gamma is as large as fits: doubling it no longer fits
    bigger = plan_user_level(num_values=4810, clip=1.0, bits=17, cohort=30, q=0.1, rounds=30,
                             target_epsilon=4.0, delta=DELTA)
    assert bigger.codec.gamma > 1.9 * codec.gamma


def test_too_few_bits_for_noise_cohort_and_clip_are_refused_naming_the_fix():
    kwargs = {"num_values": 4810, "clip": 1.0, "cohort": 300, "q": 0.5, "rounds": 30,
              "target_epsilon": 1.0, "delta": DELTA}
    with pytest.raises(ConfigurationError) as info:
        plan_user_level(bits=8, **kwargs)
    message = str(info.value)
    assert "bits=8 are too few" in message and "300 clients" in message
    need = int(message.split("use bits >= ")[1].split(",")[0])
    plan = plan_user_level(bits=need, **kwargs)  # the fix named works
    assert plan.codec.bits == need


@pytest.mark.parametrize("clip", [0.0, -2.0])
def test_a_norm_bound_that_is_not_positive_is_refused(clip):
    with pytest.raises(ConfigurationError, match=r"L2 norm bound \(clip\) must be > 0"):
        plan_user_level(num_values=10, clip=clip, bits=16, cohort=10, q=0.5, rounds=5,
                        target_epsilon=2.0, delta=DELTA)


@pytest.mark.parametrize("accountant", [ACCOUNTANT, LEGACY_ACCOUNTANT])
def test_subsampling_bound_is_the_stated_sum_term_by_term(accountant):
    """Each bound recomputed directly from its statement (module docstring)
    with scipy's exact binomials, at a few orders: Zhu-Wang's general bound with
    its factor 3 on the terms l >= 3 (legacy), the binomial expansion
    without it (default)."""
    from scipy.special import comb

    base = np.zeros(ORDERS[-1] + 1)
    base[2:] = skellam_rdp(np.arange(2, ORDERS[-1] + 1), 30.0, 10.0, 200.0)
    q = 0.05
    for alpha in (2, 3, 7, 40):
        total = (1 - q) ** (alpha - 1) * (alpha * q - q + 1)
        total += comb(alpha, 2, exact=True) * q**2 * (1 - q) ** (alpha - 2) * math.exp(base[2])
        factor = 3 if accountant == LEGACY_ACCOUNTANT else 1
        total += factor * sum(comb(alpha, j, exact=True) * q**j * (1 - q) ** (alpha - j)
                         * math.exp((j - 1) * base[j]) for j in range(3, alpha + 1))
        expected = min(math.log(total) / (alpha - 1), base[alpha])
        assert poisson_subsampled_rdp([alpha], q, base, accountant=accountant)[0] \
            == pytest.approx(expected, rel=1e-12)
