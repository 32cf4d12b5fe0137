"""The public noise plan and its selection rule: the released variance is at
least the target and exceeds it by at most the documented bound for every
dropout pattern the protocol accepts."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.errors import ConfigurationError
from securefl.protocol.config import SecAggConfig
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
        SecAggConfig(10, 4, bits=14, threshold=6, noise=NoisePlan(1e6))
    SecAggConfig(10, 4, bits=15, threshold=6, noise=NoisePlan(1e6))
    # the threshold calibration's larger worst case (u = n: V n / f) is what is checked
    with pytest.raises(ConfigurationError, match=r"bits=15 is too few.*bits >= 17"):
        SecAggConfig(10, 4, bits=15, threshold=2, noise=NoisePlan.calibrate_to_threshold(1e6))
    with pytest.raises(ConfigurationError, match="noise must be a NoisePlan"):
        SecAggConfig(10, 4, noise=1e6)  # type: ignore[arg-type]


def test_the_plan_is_bound_into_the_configuration_digest() -> None:
    plain = SecAggConfig(10, 4)
    assert SecAggConfig(10, 4, noise=None).digest() == plain.digest()
    digests = {plain.digest(), SecAggConfig(10, 4, noise=NoisePlan(100.0)).digest(),
               SecAggConfig(10, 4, noise=NoisePlan(101.0)).digest(),
               SecAggConfig(10, 4, noise=NoisePlan(100.0, tolerance=1e-2)).digest(),
               SecAggConfig(10, 4, noise=NoisePlan(100.0, NoiseCalibration.THRESHOLD)).digest()}
    assert len(digests) == 5


@settings(max_examples=60, deadline=None)
@given(n=st.integers(3, 200), data=st.data())
def test_at_the_floor_component_zero_is_kept_whole_and_with_everyone_nothing(
        n: int, data: st.DataObject) -> None:
    f = data.draw(st.integers(1, n - 1))
    layout = NoisePlan(1e4).layout(n, f)
    assert layout.kept_counts(f) == (f, *([0] * (layout.components - 1)))
    assert layout.kept_counts(n) == (0,) * layout.components
    assert len(layout.removals(list(range(1, n + 1)))) == n * layout.components
