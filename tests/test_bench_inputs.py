"""The benchmark's seeded inputs are exactly ``numpy``'s bounded integers
(the fast path over the whole range must not change a single value)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.bench.core import SeededInputs


@settings(max_examples=30, deadline=None)
@given(bits=st.sampled_from([8, 12, 16, 20, 31, 32, 40, 63, 64]), m=st.integers(1, 300),
       seed=st.integers(0, 2**32 - 1), cid=st.integers(1, 10_000))
def test_seeded_inputs_are_numpy_integers(bits: int, m: int, seed: int, cid: int) -> None:
    inputs = SeededInputs([cid], m, bits, seed=seed)
    dtype = next(np.dtype(f"<u{w}") for w in (1, 2, 4, 8) if bits <= 8 * w)
    expected = np.random.default_rng((seed, cid)).integers(0, 1 << bits, m, dtype=dtype)
    got = inputs[cid]
    assert got.dtype == expected.dtype and got.shape == (m,)
    assert np.array_equal(got, expected)
    assert np.array_equal(inputs[cid], got)  # made afresh, the same
