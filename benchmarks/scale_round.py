"""Scaling of a full in-process round (Harary graph, v1 codec on every message).

Usage: python benchmarks/scale_round.py [n ...] [--m M] [--profile]

Prints one row per n: wall time, server time, transport time, exactness, and
the fitted exponent of wall time in n between consecutive sizes.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import math
import pstats

from securefl.bench.core import run_round
from securefl.bench.suite import sparse_parameters
from securefl.protocol.harary import HararyGraph


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("ns", nargs="*", type=int, default=[500, 1000, 2000])
    parser.add_argument("--m", type=int, default=10_000)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    rows = []
    for n in args.ns:
        params = sparse_parameters(n, max(args.dropout, 0.05), 0.05)
        assert params is not None, n
        k, t = params
        graph = HararyGraph(k)
        if args.profile:
            prof = cProfile.Profile()
            prof.enable()
        t_ = run_round(n, args.m, graph=graph, threshold=t, dropout=args.dropout, workers=1)
        if args.profile:
            prof.disable()
            pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
        assert t_.exact
        rows.append((n, k, t_))
        print(f"n={n:6d} k={k:3d} m={args.m} wall={t_.wall_seconds:8.2f}s "
              f"server={t_.server_total:7.2f}s transport={t_.transport_seconds:7.2f}s "
              f"clients={t_.clients_sum:7.2f}s down/client={t_.bytes_down_per_client:,.0f}B "
              f"exact={t_.exact}", flush=True)
    for (n0, _, a), (n1, _, b) in itertools.pairwise(rows):
        exp = math.log(b.wall_seconds / a.wall_seconds) / math.log(n1 / n0)
        print(f"exponent {n0}->{n1}: {exp:.2f}")


if __name__ == "__main__":
    main()
