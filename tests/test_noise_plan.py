"""The public noise plan and its selection rule: the released variance is at
least the target and exceeds it by at most the documented bound for every
dropout pattern the protocol accepts."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.errors import ConfigurationError
from securefl.hazmat import noise
from securefl.protocol.config import SecAggConfig, SecurityMode
from securefl.protocol.noise import NoiseCalibration, NoisePlan


@settings(max_examples=150, deadline=None)
@given(n=st.integers(2, 400), data=st.data(),
       v=st.floats(1e-3, 1e9), tol=st.sampled_from([1e-3, 1e-2, 1e-4]))
def test_released_variance_is_between_target_and_bound(n: int, data: st.DataObject, v: float,
                                                       tol: float) -> None:
    f = data.draw(st.integers(1, n))
    layout = NoisePlan(v, tolerance=tol).layout(n, f)
    assert layout.excess_bound <= Fraction(tol)
    u = data.draw(st.integers(f, n))
    ids = sorted(data.draw(st.lists(st.integers(1, 2**31 - 2), min_size=u, max_size=u,
                                    unique=True)))
    released = layout.released_variance_exact(u)
    target = Fraction(v)
    assert released >= target
    assert released <= target * (1 + layout.excess_bound) * (1 + Fraction(1, 2**40))
    # the removals are survivors' components only, each kept count is a digit <= f <= u
    removed = layout.removals(ids)
    assert set(removed) <= {(c, j) for c in ids for j in range(layout.components)}
    counts = layout.kept_counts(u)
    assert all(0 <= c <= f for c in counts)
    assert len(removed) == u * layout.components - sum(counts)
    # what is kept of each component is exactly c_j survivors' copy
    for j, c in enumerate(counts):
        assert sum(1 for x in ids if (x, j) not in removed) == c
    # released = survivors' base + the kept excess, recomputed from the pairs
    kept = sum((Fraction(layout.excess[j]) for x in ids for j in range(layout.components)
                if (x, j) not in removed), Fraction(0))
    assert released == u * Fraction(layout.base) + kept
    # the rule depends on the set only, not on the order
    assert layout.removals(ids[::-1]) == removed


@pytest.mark.parametrize(("n", "f", "expected"), [(100, 51, 2), (100, 10, 3), (1000, 500, 1),
                                                  (20, 11, 3), (10, 3, 5)])
def test_few_components_for_realistic_cohorts(n: int, f: int, expected: int) -> None:
    assert NoisePlan(1e4).layout(n, f).components == expected


@settings(max_examples=100, deadline=None)
@given(n=st.integers(2, 300), data=st.data(), v=st.floats(1e-3, 1e9))
def test_calibrate_to_threshold_has_no_excess(n: int, data: st.DataObject, v: float) -> None:
    f = data.draw(st.integers(1, n))
    u = data.draw(st.integers(f, n))
    layout = NoisePlan.calibrate_to_threshold(v).layout(n, f)
    assert layout.components == 0 and layout.removals(list(range(1, u + 1))) == ()
    released = layout.released_variance_exact(u)
    assert Fraction(v) <= released <= Fraction(v) * n / f * (1 + Fraction(1, 2**40))


def test_bad_plans_are_refused_naming_the_numbers_and_the_fix() -> None:
    for bad in (-1.0, float("nan"), float("inf"), True):
        with pytest.raises(ConfigurationError, match="target_variance"):
            NoisePlan(bad)
    with pytest.raises(ConfigurationError, match="tolerance"):
        NoisePlan(1.0, tolerance=1.5)
    with pytest.raises(ConfigurationError, match="calibration"):
        NoisePlan(1.0, calibration="central")
    with pytest.raises(ConfigurationError, match=r"excess components.*raise the tolerance"):
        NoisePlan(1.0, tolerance=1e-9).layout(1000, 1)
    # sigma = 1000: +-8 sigma = 16000 ring units need 15 bits (half the ring)
    with pytest.raises(ConfigurationError,
                       match=r"bits=14 is too few.*n=10 clients.*floor f=6.*bits >= 15"):
        SecAggConfig(10, 4, bits=14, threshold=6, mode=SecurityMode.ACTIVE,
                     noise=NoisePlan(1e6))
    SecAggConfig(10, 4, bits=15, threshold=6, mode=SecurityMode.ACTIVE, noise=NoisePlan(1e6))
    # the threshold calibration's larger worst case (u = n: V n / f) is what is checked
    with pytest.raises(ConfigurationError, match=r"bits=15 is too few.*bits >= 17"):
        SecAggConfig(10, 4, bits=15, threshold=2, noise=NoisePlan.calibrate_to_threshold(1e6))
    with pytest.raises(ConfigurationError, match="noise must be a NoisePlan"):
        SecAggConfig(10, 4, noise=1e6)  # type: ignore[arg-type]


def test_the_plan_is_bound_into_the_configuration_digest() -> None:
    active = SecurityMode.ACTIVE
    plain = SecAggConfig(10, 4, mode=active)
    assert SecAggConfig(10, 4, mode=active, noise=None).digest() == plain.digest()
    plans = (NoisePlan(100.0), NoisePlan(101.0), NoisePlan(100.0, tolerance=1e-2),
             NoisePlan(100.0, NoiseCalibration.THRESHOLD), NoisePlan(100.0, noisy_length=3),
             NoisePlan(100.0, noisy_length=4))
    digests = {plain.digest(), *(SecAggConfig(10, 4, mode=active, noise=p).digest()
                                 for p in plans)}
    assert len(digests) == 1 + len(plans)
    # without noisy_length a plan encodes exactly as before the field existed
    assert NoisePlan(100.0).encode() == NoisePlan(100.0, noisy_length=3).encode()[:-4]


def test_a_removable_plan_is_refused_in_semi_honest_mode_naming_the_fix() -> None:
    """[NZ-1b] (the fix for tests/test_review_noise_split.py): removable excess
    needs the signed survivor list of active mode."""
    with pytest.raises(ConfigurationError,
                       match=r"mode=SecurityMode.ACTIVE.*calibrate_to_threshold"):
        SecAggConfig(10, 4, threshold=6, noise=NoisePlan(100.0))
    SecAggConfig(10, 4, threshold=6, mode=SecurityMode.ACTIVE, noise=NoisePlan(100.0))
    # no removable excess: the threshold plan, V = 0 (nothing to strip), floor = n (J = 0)
    SecAggConfig(10, 4, threshold=6, noise=NoisePlan.calibrate_to_threshold(100.0))
    SecAggConfig(10, 4, threshold=6, noise=NoisePlan(0.0))
    assert SecAggConfig(10, 4, threshold=6, min_survivors=10,
                        noise=NoisePlan(100.0)).noise_components == 0


def test_noisy_length_must_fit_the_vector() -> None:
    for bad in (-1, True, 2.0, 2**32):
        with pytest.raises(ConfigurationError, match="noisy_length"):
            NoisePlan(1.0, noisy_length=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="noisy_length 5 exceeds vector_length 4"):
        SecAggConfig(10, 4, mode=SecurityMode.ACTIVE, noise=NoisePlan(1.0, noisy_length=5))
    assert SecAggConfig(10, 4, mode=SecurityMode.ACTIVE,
                        noise=NoisePlan(1.0, noisy_length=3)).noise_length == 3
    assert SecAggConfig(10, 4, mode=SecurityMode.ACTIVE, noise=NoisePlan(1.0)).noise_length == 4


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 300), data=st.data(),
       calibration=st.sampled_from(list(NoiseCalibration)))
def test_every_accepted_plan_is_sampleable_and_every_refusal_is_typed(
        n: int, data: st.DataObject, calibration: NoiseCalibration) -> None:
    """Findings 3, 5, 6 of the review: a plan is accepted only if every
    component is in the samplers' range ([2^-64, 2^36]: at most MAX_PARTS table
    draws a coordinate), and any target (subnormal, huge, float max) is either
    accepted or refused with a ConfigurationError naming the bound."""
    f = data.draw(st.integers(1, n))
    v = data.draw(st.one_of(st.floats(0, 1.7976931348623157e308, allow_nan=False,
                                      allow_infinity=False),
                            st.sampled_from([5e-324, 2.0**-70, 2.0**36 * n, 2.0**50])))
    plan = NoisePlan(v, calibration)
    try:
        layout = plan.layout(n, f, 64)
    except ConfigurationError as e:
        assert "target_variance" in str(e) or "bits=" in str(e) or "tolerance" in str(e)
        return
    for w in (layout.base, *layout.excess):
        assert w == 0 or noise.MIN_SAMPLE_VARIANCE <= w <= noise.MAX_SAMPLE_VARIANCE
        if w:
            lam, parts = noise._split_mean(w / 2)
            assert parts <= noise.MAX_PARTS and 2 * parts * Fraction(lam) == Fraction(w)


def test_refusals_name_the_largest_and_least_target() -> None:
    with pytest.raises(ConfigurationError, match=r"too large to sample.*largest target_variance"
                                                 r" allowed here is 3\.43597e\+11"):
        SecAggConfig(5, 100_000, bits=64, mode=SecurityMode.ACTIVE, min_survivors=5,
                     noise=NoisePlan(2.0**50))
    with pytest.raises(ConfigurationError, match=r"too small to sample.*at least"):
        SecAggConfig(3, 4, bits=32, threshold=2, noise=NoisePlan.calibrate_to_threshold(5e-324))
    for huge in (1e308, 1.7976931348623157e308):
        with pytest.raises(ConfigurationError, match="too large"):
            SecAggConfig(10, 4, bits=64, threshold=1,
                         noise=NoisePlan.calibrate_to_threshold(huge))
    # the edge: a threshold plan whose one component is exactly 2^36 is accepted
    layout = NoisePlan.calibrate_to_threshold(2.0**36 * 4).layout(10, 4, 64)
    assert layout.base == noise.MAX_SAMPLE_VARIANCE


@settings(max_examples=60, deadline=None)
@given(n=st.integers(3, 200), data=st.data())
def test_at_the_floor_component_zero_is_kept_whole_and_with_everyone_nothing(
        n: int, data: st.DataObject) -> None:
    f = data.draw(st.integers(1, n - 1))
    layout = NoisePlan(1e4).layout(n, f)
    assert layout.kept_counts(f) == (f, *([0] * (layout.components - 1)))
    assert layout.kept_counts(n) == (0,) * layout.components
    assert len(layout.removals(list(range(1, n + 1)))) == n * layout.components
