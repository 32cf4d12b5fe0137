"""Peak memory of ``secure_sum`` beyond its inputs (tracemalloc; numpy
reports its buffers to it), and the exactness of the sum.

Usage: python benchmarks/secure_sum_memory.py [--n 20] [--m 1000000] [--bits 32]
       [--spill {auto,yes,no}]

Inputs are made in the ring's dtype (uint32 at 32 bits: 4 GB at n = 100,
m = 10^7).  Prints the peak beyond the inputs in MB, as a multiple of one
uint64 vector, and as a multiple of the server's ring-width copies
(n * m * w bytes, which the server holds by design until the masked-input
round closes; with ``--spill yes`` they go to a temporary file instead).
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from securefl.hazmat.prg import ring_dtype
from securefl.protocol import SecAggConfig
from securefl.protocol.inmemory import secure_sum


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--m", type=int, default=1_000_000)
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--spill", choices=["auto", "yes", "no"], default="auto",
                        help="secure_sum's spill: auto (None), yes (True), no (False)")
    args = parser.parse_args()
    config = SecAggConfig(num_clients=args.n, vector_length=args.m, bits=args.bits)
    gen = np.random.default_rng(1)
    dtype = ring_dtype(args.bits)
    inputs = {c: gen.integers(0, 1 << args.bits, args.m, dtype=dtype) for c in config.ids}
    expected = np.zeros(args.m, dtype=np.uint64)
    for v in inputs.values():
        np.add(expected, v, out=expected)
    expected &= np.uint64((1 << args.bits) - 1)
    tracemalloc.start()
    start = time.perf_counter()
    spill = {"auto": None, "yes": True, "no": False}[args.spill]
    result = secure_sum(inputs, config, spill=spill)
    seconds = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert np.array_equal(np.asarray(result.total, dtype=np.uint64), expected)
    vector = args.m * 8
    ring = args.n * args.m * config.wire_element_bytes
    print(f"n={args.n} m={args.m} bits={args.bits} spill={args.spill}: peak {peak / 1e6:.1f} MB ="
          f" {peak / vector:.1f} uint64 vectors = {peak / ring:.2f}x the server's ring copies;"
          f" {seconds:.1f}s; exact")


if __name__ == "__main__":
    main()
