"""Shamir reconstruction set-up (the Lagrange coefficients of one holder set).

Usage:
  python benchmarks/shamir_lagrange.py [--baseline DIR] [--rounds 7]

A server on a sparse graph reconstructs one holder set per client (about
450 at n=500 on the suite's Harary graph, k=58, t=20), so the cost of
``Reconstructor(holders, t)`` is paid hundreds of times per round.  For a few
(t, holders) shapes, with client ids 1..n as points, times it for this tree
and, with ``--baseline``, for the shamir.py of another checkout (e.g. main),
interleaved, best of ``--rounds``; checks that both give the same
coefficients and prints the ratio.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import sys
import time
from collections.abc import Callable
from types import ModuleType

import numpy as np

from securefl.hazmat import shamir


def _load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("shamir_baseline", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["shamir_baseline"] = module
    spec.loader.exec_module(module)
    return module


def _once(fn: Callable[[], object], number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", default=None)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    base = _load(os.path.join(args.baseline, "securefl/hazmat/shamir.py")) \
        if args.baseline else None
    rng = random.Random(1)
    print(f"load {os.getloadavg()[0]:.2f}")
    print(f"{'t':>4} {'holders':>7} {'this ms':>8}" + (f" {'base ms':>8} {'base/this':>9}"
                                                      if base else ""))
    for t, count, n in ((3, 5, 100), (20, 40, 500), (20, 58, 500), (251, 350, 500)):
        holders = rng.sample(range(1, n + 1), count)
        this = old = float("inf")
        for _ in range(args.rounds):  # interleaved
            this = min(this, _once(lambda h=holders, t=t: shamir.Reconstructor(h, t), 20))
            if base is not None:
                old = min(old, _once(lambda h=holders, t=t: base.Reconstructor(h, t), 20))
        line = f"{t:4d} {count:7d} {this * 1e3:8.3f}"
        if base is not None:
            a, b = shamir.Reconstructor(holders, t), base.Reconstructor(holders, t)
            assert np.array_equal(a._lam0, b._lam0)
            assert np.array_equal(a._lam_extra, b._lam_extra)
            line += f" {old * 1e3:8.3f} {old / this:9.2f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
