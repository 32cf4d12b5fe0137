"""The Poisson / Skellam samplers of securefl.hazmat.noise against their exact laws.

Every statistical test uses a fixed AES key, so it is deterministic: it either
always passes or always fails (no flakiness), while the key was not chosen
after looking at the outcome (it is the SHA-256 of the test's name).
"""

from __future__ import annotations

import hashlib
import itertools
import math

import mpmath
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from securefl.errors import ConfigurationError, SecureFLError
from securefl.hazmat import noise
from securefl.hazmat.randomness import DeterministicRandom, SystemRandom


def _key(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


def _exact_poisson(lam: float, k: int) -> mpmath.mpf:
    with mpmath.workdps(60):
        lam_m = mpmath.mpf(lam)
        return mpmath.exp(-lam_m + k * mpmath.log(lam_m) - mpmath.loggamma(k + 1))


@pytest.mark.parametrize("lam", [0.25, 1.0, 7.5, 300.0, 3e4])
def test_table_is_within_its_distance_bound_of_the_exact_poisson(lam: float) -> None:
    table = noise.poisson_table(lam)
    c = [0, *(int(x) for x in table.thresholds), 2**64]
    weights = [b - a for a, b in itertools.pairwise(c)]
    with mpmath.workdps(60):
        exact = [_exact_poisson(lam, table.offset + i) for i in range(table.size)]
        inside = mpmath.fsum(exact)
        tv = (mpmath.fsum(abs(mpmath.mpf(w) / 2**64 - e) for w, e in zip(weights, exact,
                                                                          strict=True))
              + (1 - inside)) / 2
    assert float(tv) <= table.distance_bound
    assert table.distance_bound < 2.0**-40
    assert noise.poisson_table(1e6).distance_bound < 1e-15
    # every mass is a multiple of 2^-64 and they sum to exactly 1
    assert int(table.thresholds[-1]) < 2**64
    assert np.all(np.diff(table.thresholds.astype(object)) >= 0)


@pytest.mark.parametrize("mu", [0.5, 3.0, 100.0, 1e4, 1e6])
def test_skellam_matches_the_exact_pmf_chi_square(mu: float) -> None:
    m = 200_000
    x = noise.skellam(mu, m, _key(f"chi2-{mu}"))
    assert x.dtype == np.int64
    # bins: single values near the centre, pooled so every expected count >= 20
    sd = math.sqrt(mu)
    edges = np.unique(np.round(np.linspace(-4 * sd - 1, 4 * sd + 1, 60)).astype(np.int64))
    cdf = stats.skellam.cdf(edges, mu / 2, mu / 2)
    expected = np.diff(np.concatenate([[0.0], cdf, [1.0]])) * m
    observed = np.bincount(np.searchsorted(edges, x, side="left"), minlength=len(edges) + 1)
    keep = expected >= 20
    obs = np.append(observed[keep], observed[~keep].sum())
    exp = np.append(expected[keep], expected[~keep].sum())
    if exp[-1] < 1:
        obs, exp = obs[:-1], exp[:-1]
    exp *= obs.sum() / exp.sum()
    pvalue = stats.chisquare(obs, exp).pvalue
    assert pvalue > 1e-4
    # and the first two moments are those of Sk(mu)
    assert abs(x.mean()) < 5 * sd / math.sqrt(m)
    assert abs(x.var() / mu - 1) < 6 * math.sqrt(2 / m) + 0.01 / mu


@pytest.mark.parametrize("mu", [50.0, 1e6])
def test_skellam_ks_against_the_exact_cdf(mu: float) -> None:
    x = noise.skellam(mu, 100_000, _key(f"ks-{mu}"))
    values, counts = np.unique(x, return_counts=True)
    ecdf = np.cumsum(counts) / len(x)
    exact = stats.skellam.cdf(values, mu / 2, mu / 2)
    # the discrete KS statistic; 1.95/sqrt(m) is the 0.1% critical value
    assert np.max(np.abs(ecdf - exact)) < 1.95 / math.sqrt(len(x))


def test_poisson_matches_the_exact_pmf() -> None:
    lam = 4.0
    x = noise.poisson(lam, 100_000, _key("poisson"))
    observed = np.bincount(x, minlength=16)[:16].astype(float)
    expected = stats.poisson.pmf(np.arange(16), lam) * len(x)
    observed[-1] += (x >= 16).sum()
    expected[-1] += stats.poisson.sf(15, lam) * len(x)
    assert stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue > 1e-4


def test_means_beyond_one_table_are_exact_sums() -> None:
    mu = 2.0**34  # Poisson(2^33) is drawn as 4 table draws of mean 2^31
    assert noise._split_mean(mu / 2) == (2.0**31, 4)
    x = noise.skellam(mu, 4000, _key("huge"))
    assert abs(x.mean()) < 5 * math.sqrt(mu / 4000)
    assert abs(x.var() / mu - 1) < 6 * math.sqrt(2 / 4000)


def test_seeded_noise_is_reproducible_and_streams_are_independent() -> None:
    seed = _key("seed")
    ctx = dict(version=1, session_id=b"s" * 32, client_ids=(3, 0))
    a = noise.skellam_from_seed(seed, b"excess", 100.0, 50_000, **ctx)
    assert np.array_equal(a, noise.skellam_from_seed(seed, b"excess", 100.0, 50_000, **ctx))
    others = [
        noise.skellam_from_seed(_key("other seed"), b"excess", 100.0, 50_000, **ctx),
        noise.skellam_from_seed(seed, b"other", 100.0, 50_000, **ctx),
        noise.skellam_from_seed(seed, b"excess", 100.0, 50_000,
                                **{**ctx, "session_id": b"t" * 32}),
        noise.skellam_from_seed(seed, b"excess", 100.0, 50_000, **{**ctx, "client_ids": (3, 1)}),
    ]
    for b in others:
        assert not np.array_equal(a, b)
        # independent streams: sample correlation within 5 standard errors of 0
        assert abs(np.corrcoef(a, b)[0, 1]) < 5 / math.sqrt(len(a))
    # the two Poisson halves of one vector are independent too
    words = noise.uniform_words(_key("halves"), 2 * 50_000)
    assert abs(np.corrcoef(words[:50_000] >> 11, words[50_000:] >> 11)[0, 1]) < 5 / 224


def test_fresh_noise_comes_from_the_rng_and_differs_each_call() -> None:
    seed = _key("fresh")
    a = noise.skellam_fresh(10.0, 1000, DeterministicRandom(seed))
    assert np.array_equal(a, noise.skellam_fresh(10.0, 1000, DeterministicRandom(seed)))
    b, c = noise.skellam_fresh(10.0, 1000), noise.skellam_fresh(10.0, 1000, SystemRandom())
    assert not np.array_equal(b, c)


def test_zero_variance_is_zero_and_bad_parameters_are_refused() -> None:
    assert not noise.skellam(0.0, 10, _key("z")).any()
    assert not noise.skellam_fresh(0, 10).any()
    assert noise.statistical_distance_bound(0) == 0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigurationError, match="finite and >= 0"):
            noise.skellam(bad, 10, _key("z"))
    with pytest.raises(ConfigurationError, match="size"):
        noise.skellam(1.0, -1, _key("z"))
    with pytest.raises(SecureFLError, match="32-byte"):
        noise.skellam(1.0, 10, b"short")
    with pytest.raises(ConfigurationError, match="32 bytes"):
        noise.noise_key(b"short", b"x", version=1, session_id=b"", client_ids=())


@settings(max_examples=30, deadline=None)
@given(mean=st.floats(1e-6, 2.0**16) | st.just(2.0**31))
def test_every_table_is_a_distribution_within_its_bound(mean: float) -> None:
    table = noise.poisson_table(mean)
    w = np.diff(np.concatenate([[0], table.thresholds.astype(object), [2**64]]))
    assert all(int(v) >= 0 for v in w) and sum(int(v) for v in w) == 2**64
    assert table.offset <= mean <= table.offset + table.size
    assert table.distance_bound < 2.0**-43
    assert noise.statistical_distance_bound(2 * mean) == 2 * table.distance_bound


@settings(max_examples=30, deadline=None)
@given(mean=st.floats(1e-3, 1e6), words=st.lists(st.integers(0, 2**64 - 1), max_size=50))
def test_guide_table_lookup_equals_the_binary_search(mean: float, words: list[int]) -> None:
    table = noise.poisson_table(mean)
    # edge words: 0, 2^64-1, and every threshold and its predecessor
    edge = [0, 2**64 - 1, *(int(c) for c in table.thresholds[:20]),
            *(int(c) - 1 for c in table.thresholds[:20] if c)]
    u = np.array(words + edge, dtype=np.uint64)
    plain = np.searchsorted(table.thresholds, u, side="right").astype(np.int64) + table.offset
    assert np.array_equal(table.lookup(u), plain)


def test_the_samplers_refuse_what_they_cannot_honour_before_touching_the_keystream(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Review findings 3 and 5 at the sampler: a variance above 2^36 (more
    than MAX_PARTS table draws; 2^50 over 10^5 coordinates asked for 78 GiB)
    or a non-zero one below 2^-64 (a subnormal halves inexactly) raises a
    ConfigurationError before any keystream is expanded."""
    def no_keystream(key: bytes, count: int) -> np.ndarray:
        raise AssertionError("keystream expanded")

    monkeypatch.setattr(noise, "uniform_words", no_keystream)
    monkeypatch.setattr(noise, "_stream", no_keystream)  # the samplers' chunked keystream
    for mu in (2.0**50, math.nextafter(noise.MAX_SAMPLE_VARIANCE, math.inf), 5e-324, 2.0**-65):
        with pytest.raises(ConfigurationError, match="samplers' range"):
            noise.skellam(mu, 100_000, _key("range"))
        with pytest.raises(ConfigurationError, match="samplers' range"):
            noise.statistical_distance_bound(mu)
    for lam in (2.0**49, math.nextafter(noise.MAX_SAMPLE_VARIANCE / 2, math.inf), 2.0**-66):
        with pytest.raises(ConfigurationError, match="samplers' range"):
            noise.poisson(lam, 100_000, _key("range"))
    assert noise._split_mean(noise.MAX_SAMPLE_VARIANCE / 2) == (2.0**31, noise.MAX_PARTS)


def test_the_distance_bound_at_the_largest_variance() -> None:
    """2 p table bounds, p = 16 parts whose means sum to the mean exactly (no
    mean-shift term): still far below 2^-30 at 2^36."""
    bound = noise.statistical_distance_bound(noise.MAX_SAMPLE_VARIANCE)
    table = noise.poisson_table(2.0**31)
    assert bound == 2 * noise.MAX_PARTS * table.distance_bound < 2.0**-30
