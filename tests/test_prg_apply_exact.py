"""The mask PRG on the path a round uses (``MaskExpander.apply`` with many keys)
is exact: for every bit width, key count, sign pattern, vector length and
chunk size, the accumulator equals the start vector plus/minus each key's
AES-256-CTR keystream read as little-endian words, reduced mod 2^bits, computed
here independently with Python integers."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.hazmat.prg import MaskExpander, ring_dtype


def _reference(start: list[int], jobs: list[tuple[bytes, bool]], bits: int) -> list[int]:
    width = ring_dtype(bits).itemsize
    length = len(start)
    out = list(start)
    for key, negate in jobs:
        stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(
            bytes(length * width))
        for i in range(length):
            word = int.from_bytes(stream[i * width:(i + 1) * width], "little")
            out[i] = out[i] - word if negate else out[i] + word
    return [x % (1 << bits) for x in out]


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(1, 64), length=st.integers(1, 700),
       signs=st.lists(st.booleans(), min_size=1, max_size=12),
       chunk=st.sampled_from([16, 48, 256, 1000, 4096, 1 << 17]), data=st.data())
def test_apply_with_many_keys_is_the_keystream_sum(bits: int, length: int, signs: list[bool],
                                                   chunk: int, data: st.DataObject) -> None:
    jobs = [(os.urandom(32), negate) for negate in signs]
    start = data.draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=length,
                               max_size=length))
    expander = MaskExpander(length, bits, chunk_bytes=chunk)
    acc = np.array(start, dtype=ring_dtype(bits))
    result = expander.apply(jobs, acc)
    assert result is acc
    assert [int(x) for x in acc] == _reference(start, jobs, bits)


@settings(max_examples=15, deadline=None)
@given(bits=st.sampled_from([1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64]),
       keys=st.integers(1, 20), extra=st.integers(0, 40))
def test_apply_is_the_same_for_every_chunk_size(bits: int, keys: int, extra: int) -> None:
    width = ring_dtype(bits).itemsize
    # lengths straddling chunk boundaries: a few whole chunks plus a ragged tail
    length = 3 * (4096 // width) + extra
    jobs = [(os.urandom(32), i % 3 == 0) for i in range(keys)]
    results = []
    for chunk in (16, 4096, 4096 + 16, 1 << 17):
        acc = np.zeros(length, dtype=ring_dtype(bits))
        results.append(MaskExpander(length, bits, chunk_bytes=chunk).apply(jobs, acc))
    for other in results[1:]:
        assert np.array_equal(results[0], other)
    if bits < 8 * width:
        assert int(results[0].max()) < (1 << bits)


@settings(max_examples=30, deadline=None)
@given(length=st.integers(2, 3000), signs=st.lists(st.booleans(), min_size=1, max_size=9),
       chunk=st.sampled_from([16, 48, 1000, 4096, 1 << 17]), threads=st.booleans(),
       data=st.data())
def test_z2_by_encryption_equals_the_additive_path(length: int, signs: list[bool], chunk: int,
                                                   threads: bool, data: st.DataObject) -> None:
    """In Z_2 a contiguous accumulator is encrypted under each key instead of
    having the keystream added; a strided accumulator (same values) takes the
    additive path.  Both, and the integer reference, agree exactly, for every
    sign pattern (subtracting is adding mod 2), chunk size and thread split;
    start words with their upper bits set are reduced like the additive path's."""
    jobs = [(os.urandom(32), negate) for negate in signs]
    start = data.draw(st.lists(st.integers(0, 255), min_size=length, max_size=length))
    expander = MaskExpander(length, 1, chunk_bytes=chunk)
    contiguous = np.array(start, dtype=np.uint8)
    backing = np.zeros(2 * length, dtype=np.uint8)
    strided = backing[::2]
    strided[:] = start
    assert contiguous.flags.c_contiguous and not strided.flags.c_contiguous
    if threads:
        with ThreadPoolExecutor(2) as pool:
            expander.apply(jobs, contiguous, executor=pool, workers=2)
    else:
        expander.apply(jobs, contiguous)
    expander.apply(jobs, strided)
    assert np.array_equal(contiguous, strided)
    assert [int(x) for x in contiguous] == _reference([x % 2 for x in start], jobs, 1)
    # the expander's buffers are reused: a second call on a fresh vector is exact too
    again = np.zeros(length, dtype=np.uint8)
    expander.apply(jobs[::-1], again)
    assert [int(x) for x in again] == _reference([0] * length, jobs, 1)
