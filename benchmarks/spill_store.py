"""What keeping a round's masked inputs costs the server, by store.

Usage: python benchmarks/spill_store.py [--n 9000] [--m 100000] [--repeat 2] [--dir DIR]

Puts ``n`` masked vectors of ``m`` uint32 words (400 KB at the default m,
3.6 GB in all: the survivors of a 10,000-client round) into each store that
:func:`securefl.protocol.inmemory.spill_store` can give, interleaved,
``--repeat`` times:

* ``direct``: ``spill_store()``, a ``DirectFileStore`` where the file system
  takes ``O_DIRECT`` (the line says so when it fell back);
* ``buffered``: ``spill_store(direct=False)``, a ``FileStore`` through the
  page cache.

For each it prints the process's user and system CPU time (``getrusage``)
and the wall time for the ``n`` puts, then reads back a few vectors and
checks them equal to what was put.  ``--dir`` chooses the directory (the
temporary directory by default).
"""

from __future__ import annotations

import argparse
import os
import resource
import time

import numpy as np

from securefl.protocol.inmemory import spill_store


def _run(kind: str, n: int, m: int, directory: str | None) -> None:
    gen = np.random.default_rng(1)
    # a few distinct vectors, reused: generating 3.6 GB would dominate the run
    vectors = [gen.integers(0, 2**32, m, dtype=np.uint32) for _ in range(8)]
    with spill_store(directory, direct=kind == "direct") as store:
        r0, w0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for sender in range(n):
            store.put(sender, vectors[sender % len(vectors)])
        r1, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - w0
        for sender in (0, n // 2, n - 1):
            assert np.array_equal(store.get(sender), vectors[sender % len(vectors)])
        print(f"{kind:>8} ({type(store).__name__}): {n} x {m * 4:,} B = {n * m * 4 / 1e9:.2f} GB;"
              f" user {r1.ru_utime - r0.ru_utime:.2f} s, system {r1.ru_stime - r0.ru_stime:.2f} s,"
              f" CPU {r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime:.2f} s,"
              f" wall {wall:.2f} s; load {os.getloadavg()[0]:.2f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=9000)
    parser.add_argument("--m", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    for _ in range(args.repeat):
        for kind in ("direct", "buffered"):
            _run(kind, args.n, args.m, args.dir)


if __name__ == "__main__":
    main()
