"""The samplers' speed-ups change no output bit.

:mod:`securefl.hazmat.noise` looks words up through a guide table (a binary
search only for words whose bucket holds a threshold) and draws the keystream
chunk by chunk, each Poisson stream from its own seeked AES-CTR encryptor.
The normative definition (SPEC.md section 16) is the plain one: value
``offset + k`` with ``k = searchsorted(thresholds, word, side="right")`` over
the words of :func:`~securefl.hazmat.noise.uniform_words` laid out stream after
stream.  These tests hold the fast path to that definition on the words where
a guide table could go wrong (every bucket edge, 0, 2^64 - 1, every threshold)
and on every stream layout (odd sizes start a stream mid AES block, chunk
boundaries, several table parts per coordinate).
"""

from __future__ import annotations

import hashlib
from unittest import mock

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.hazmat import noise

# random means stay small (a table of mean 10^4 builds in milliseconds); the large
# tables, up to the largest (2^31, about 750 000 entries), are fixed examples
_MEANS = st.floats(2.0**-65, 1e4) | st.sampled_from([2.0**-65, 0.5, 1.0, 500.0, 5e5])


def _plain_indices(table: noise.PoissonTable, words: np.ndarray) -> np.ndarray:
    return np.searchsorted(table.thresholds, words, side="right")


def _edge_words(table: noise.PoissonTable) -> np.ndarray:
    """0, 2^64 - 1, every guide-bucket start and its neighbours, and every
    threshold and its neighbours."""
    starts = np.arange(len(table.guide), dtype=np.uint64) << np.uint64(table.shift)
    one = np.uint64(1)
    c = table.thresholds
    edges = np.concatenate([
        np.array([0, 1, 2**64 - 2, 2**64 - 1], dtype=np.uint64),
        starts, starts - one, starts + one,  # 0 - 1 wraps to 2^64 - 1: still a valid word
        c, c - one, c + one])
    return np.unique(edges)


@settings(max_examples=20, deadline=None)
@given(mean=_MEANS, words=st.lists(st.integers(0, 2**64 - 1), max_size=64),
       spread=st.integers(0, 3))
def test_lookup_equals_the_plain_binary_search_at_every_edge(
        mean: float, words: list[int], spread: int) -> None:
    table = noise.poisson_table(mean)
    u = np.concatenate([np.array(words, dtype=np.uint64), _edge_words(table)])
    # shuffled (deterministically), so ambiguous and guided words interleave
    u = u[np.random.default_rng(spread).permutation(len(u))]
    _check_against_plain(table, u)


def test_lookup_equals_the_plain_binary_search_at_every_edge_of_the_largest_table() -> None:
    table = noise.poisson_table(2.0**31)
    assert len(table.guide) == 2**20  # the largest guide table
    _check_against_plain(table, _edge_words(table))


def _check_against_plain(table: noise.PoissonTable, u: np.ndarray) -> None:
    kept = u.copy()
    plain = _plain_indices(table, u)
    assert np.array_equal(table.indices(u), plain)
    assert np.array_equal(table.lookup(u), plain.astype(np.int64) + table.offset)
    # with caller buffers (the samplers' hot path): the same, and the words untouched
    out = np.full(len(u), 7, table.guide.dtype)
    scratch = np.full(len(u), 9, np.uint64)
    assert table.indices(u, out=out, scratch=scratch) is out
    assert np.array_equal(out, plain)
    assert np.array_equal(u, kept)


def _plain_sums(variance_or_mean: float, size: int, key: bytes, *, skellam: bool) -> np.ndarray:
    """The normative definition: the streams' words from one uniform_words
    call, looked up by binary search."""
    part, parts = noise._split_mean(variance_or_mean / 2 if skellam else variance_or_mean)
    table = noise.poisson_table(part)
    streams = 2 * parts if skellam else parts
    words = noise.uniform_words(key, streams * size).reshape(streams, size)
    values = _plain_indices(table, words).astype(np.int64) + table.offset
    if skellam:
        return values[:parts].sum(axis=0) - values[parts:].sum(axis=0)
    return values.sum(axis=0)


@settings(max_examples=25, deadline=None)
@given(variance=st.floats(2.0**-64, 2e4) | st.sampled_from(
           # 2^33 and 2^36: 2 and 16 table parts of mean 2^31 per Poisson coordinate
           [2.0**-64, 1.0, 1e3, 1e6, 2.0**32, 2.0**33, 2.0**36]),
       size=st.integers(1, 300), chunk=st.sampled_from([1, 2, 3, 16, 8192]),
       name=st.text(max_size=8))
def test_samplers_equal_the_plain_definition_on_every_stream_layout(
        variance: float, size: int, chunk: int, name: str) -> None:
    key = hashlib.sha256(name.encode()).digest()
    with mock.patch.object(noise, "_CHUNK_WORDS", chunk):
        got_skellam = noise.skellam(variance, size, key)
        got_poisson = noise.poisson(variance / 2, size, key)
    assert got_skellam.dtype == got_poisson.dtype == np.int64
    assert np.array_equal(got_skellam, _plain_sums(variance, size, key, skellam=True))
    assert np.array_equal(got_poisson, _plain_sums(variance / 2, size, key, skellam=False))


def test_a_long_vector_equals_the_plain_definition_across_many_chunks() -> None:
    """Sizes the default chunk does not divide, with odd sizes (the second
    half starts in the middle of an AES block)."""
    key = hashlib.sha256(b"long vector").digest()
    for variance, size in ((1.0, 3 * 8192 + 1), (1e6, 2 * 8192 - 1), (2.0**33, 8192 + 3)):
        assert np.array_equal(noise.skellam(variance, size, key),
                              _plain_sums(variance, size, key, skellam=True))
        assert np.array_equal(noise.poisson(variance / 2, size, key),
                              _plain_sums(variance / 2, size, key, skellam=False))
