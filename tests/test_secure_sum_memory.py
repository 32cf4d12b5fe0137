"""``secure_sum`` holds no uint64 copy of every input: each client converts
its own input only while masking it, and masked inputs go to the server one
at a time (the server's ring-width copies are the protocol's own)."""

from __future__ import annotations

import tracemalloc

import numpy as np

from securefl.protocol import SecAggConfig
from securefl.protocol.inmemory import secure_sum


def test_secure_sum_holds_less_than_one_uint64_copy_of_all_inputs() -> None:
    n, m, bits = 8, 1 << 17, 16
    config = SecAggConfig(num_clients=n, vector_length=m, bits=bits)
    gen = np.random.default_rng(7)
    inputs = {c: gen.integers(0, 1 << bits, m, dtype=np.uint64) for c in config.ids}
    expected = np.zeros(m, dtype=np.uint64)
    for v in inputs.values():
        expected += v
    expected &= np.uint64((1 << bits) - 1)
    tracemalloc.start()
    try:
        result = secure_sum(inputs, config)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.array_equal(np.asarray(result.total, dtype=np.uint64), expected)
    # before: two uint64 copies of every input (2 * n * m * 8 bytes) besides the
    # server's and the clients' ring-width (2-byte) copies
    assert peak < n * m * 8
