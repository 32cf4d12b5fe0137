"""Scaling of a full in-process round (Harary graph, v1 codec on every message).

Usage:
  python benchmarks/scale_round.py [n ...] [--m M] [--dropout D] [--profile]
  python benchmarks/scale_round.py 500 1000 2000 --baseline /path/to/other/checkout

Prints one row per n: wall time, server / transport / client time, bytes down
per client, exactness (every round checks the sum exactly), and the fitted
exponent of wall time in n between consecutive sizes.  With ``--baseline``
every size is run in a subprocess for this tree and for the baseline tree,
interleaved (this, baseline, next size, ...), and the ratio baseline/this is
printed with the exponents of both.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import math
import os
import pstats
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent


def _one(n: int, m: int, dropout: float, profile: bool) -> float:
    from securefl.bench.core import run_round
    from securefl.bench.suite import sparse_parameters
    from securefl.protocol.harary import HararyGraph

    params = sparse_parameters(n, max(dropout, 0.05), 0.05)
    assert params is not None, n
    k, t = params
    prof = cProfile.Profile() if profile else None
    if prof is not None:
        prof.enable()
    r = run_round(n, m, graph=HararyGraph(k), threshold=t, dropout=dropout, workers=1)
    if prof is not None:
        prof.disable()
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    assert r.exact
    print(f"n={n:6d} k={k:3d} m={m} wall={r.wall_seconds:8.2f}s "
          f"server={r.server_total:7.2f}s transport={r.transport_seconds:7.2f}s "
          f"clients={r.clients_sum:7.2f}s down/client={r.bytes_down_per_client:,.0f}B "
          f"exact={r.exact}", flush=True)
    return r.wall_seconds


def _subprocess(tree: Path, n: int, m: int, dropout: float) -> float:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, str(tree / "benchmarks" / "scale_round.py"), str(n),
                          "--m", str(m), "--dropout", str(dropout)], env=env, cwd=tree,
                         capture_output=True, text=True, check=True).stdout
    match = re.search(r"wall=\s*([\d.]+)s", out)
    assert match is not None, out
    print(f"[{tree}] {out.strip()}", flush=True)
    return float(match.group(1))


def _exponents(label: str, rows: list[tuple[int, float]]) -> None:
    for (n0, a), (n1, b) in itertools.pairwise(rows):
        print(f"{label} exponent {n0}->{n1}: {math.log(b / a) / math.log(n1 / n0):.2f}")
    if len(rows) > 2:
        (n0, a), (n1, b) = rows[0], rows[-1]
        print(f"{label} exponent {n0}->{n1}: {math.log(b / a) / math.log(n1 / n0):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("ns", nargs="*", type=int, default=[500, 1000, 2000])
    parser.add_argument("--m", type=int, default=10_000)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--baseline", type=Path, default=None)
    args = parser.parse_args()
    if args.baseline is None:
        rows = [(n, _one(n, args.m, args.dropout, args.profile)) for n in args.ns]
        _exponents("this", rows)
        return
    this_rows, base_rows = [], []
    for n in args.ns:
        this_rows.append((n, _subprocess(HERE, n, args.m, args.dropout)))
        base_rows.append((n, _subprocess(args.baseline.resolve(), n, args.m, args.dropout)))
        print(f"n={n}: baseline / this = {base_rows[-1][1] / this_rows[-1][1]:.2f}x",
              flush=True)
    _exponents("this", this_rows)
    _exponents("baseline", base_rows)


if __name__ == "__main__":
    main()
