"""The scaling table: full in-process rounds over a grid of n and m.

Two sweeps share one machinery (:func:`securefl.bench.core.run_round`, the
round that ``benchmarks/scale_round.py`` times): n clients at a fixed vector
length, and vector length m at a fixed n.  Every cell runs in a fresh child
process (``python -m securefl.bench.scaling --cell ...``) so its peak memory
is its own: the child reports ``resource.getrusage(RUSAGE_SELF).ru_maxrss``
(the whole interpreter, inputs and numpy included).  Every cell checks the
sum exactly.

Each measured cell is compared with its *cryptographic floor*: the AES-256-CTR
keystream bytes that all parties together must generate, at the rate
``openssl speed -evp aes-256-ctr`` measures on one core (16 KiB blocks), plus
the X25519 key agreements they must perform, at ``openssl speed ecdhx25519``'s
rate on one core.  All parties run in this one process, so the floor is the
sum over parties, on one core (the round runs with ``workers=1`` by default).

A budget skips cells predicted (from the previous cell of the same sweep,
with wall time proportional to n * (k + 1) * m) to exceed it, and kills a
child that runs past ``--timeout`` (three times the budget unless given);
both are recorded as skipped,
with the reason.  The side-by-side Flower comparison is not repeated here:
it is ``securefl bench --targets`` and ``securefl bench``
(:mod:`securefl.bench.suite`), whose committed results are referenced in the
output (:data:`FLOWER_REFERENCE`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from securefl.strictjson import sanitize

FLOWER_REFERENCE = ("benchmarks/results/targets.md (n=100: securefl bench --targets) and"
                    " benchmarks/results/results.md (n=50: securefl bench)")
"""Where the side-by-side Flower comparison (n=50 and n=100, complete graph) lives:
made by :mod:`securefl.bench.suite`, on identical inputs in one process."""

SCHEMA = "securefl-scaling/1"


@dataclass(frozen=True)
class Cell:
    """One round of the grid."""

    sweep: str  # "n" or "m": which sweep the cell belongs to
    n: int
    m: int
    graph: str  # "harary" or "complete"
    degree: int  # neighbours of each client
    threshold: int
    dropout: float  # fraction of clients (highest ids) silent from the masked-input round
    bits: int

    @property
    def work(self) -> float:
        """Cost proxy: n * (k + 1) * m mask elements."""
        return float(self.n) * (self.degree + 1) * self.m

    @property
    def dropped(self) -> int:
        """Clients that stop before their masked input."""
        return round(self.dropout * self.n)


def graph_for(n: int, dropout: float) -> tuple[str, int, int]:
    """``(graph, degree, threshold)``: the SecAgg+ parameter finder's Harary
    graph for ``n`` (corruption rate 5%), else the complete graph with the
    Bonawitz threshold."""
    from securefl.bench.suite import sparse_parameters

    params = sparse_parameters(n, max(dropout, 0.05), 0.05)
    if params is None:
        return "complete", n - 1, n // 2 + 1
    return "harary", params[0], params[1]


def plan(ns: Sequence[int], ms: Sequence[int], *, fixed_m: int, fixed_n: int,
         dropout: float = 0.05, bits: int = 32) -> list[Cell]:
    """The n sweep (``ns`` at ``fixed_m``) then the m sweep (``ms`` at ``fixed_n``),
    each in increasing order."""
    cells = []
    for n in sorted(set(ns)):
        graph, k, t = graph_for(n, dropout)
        cells.append(Cell("n", n, fixed_m, graph, k, t, dropout, bits))
    graph, k, t = graph_for(fixed_n, dropout)
    for m in sorted(set(ms)):
        cells.append(Cell("m", fixed_n, m, graph, k, t, dropout, bits))
    return cells


def crypto_floor(cell: Cell, aes_bytes_per_s: float, x25519_per_s: float) -> dict[str, float]:
    """The round's cryptographic floor on one core (see the module docstring).

    Keystream: every survivor expands its self mask and one pairwise mask per
    neighbour; the server expands every survivor's self mask and, for every
    dropped client, the pairwise mask with each surviving neighbour (expected
    count over the graph's random labelling: ``k * survivors / (n - 1)``).
    Agreements: every client derives one share-encryption key per neighbour
    (R1), every survivor one masking key per neighbour (R2), the server one
    per (dropped, surviving neighbour) pair.
    """
    from securefl.hazmat.prg import ring_dtype

    width = ring_dtype(cell.bits).itemsize
    survivors, dropped, k = cell.n - cell.dropped, cell.dropped, cell.degree
    pairs = dropped * k * survivors / max(cell.n - 1, 1)
    masks = survivors * (1 + k) + survivors + pairs
    exchanges = cell.n * k + survivors * k + pairs
    keystream = masks * cell.m * width
    seconds = keystream / aes_bytes_per_s + exchanges / x25519_per_s
    return {"keystream_bytes": keystream, "x25519_exchanges": exchanges, "seconds": seconds}


def measure(cell: Cell, workers: int = 1) -> dict[str, Any]:
    """Run ``cell``'s round in this process and return its figures (the
    caller runs this in a fresh child; ``peak_rss_mb`` is this process's)."""
    from securefl.bench.core import SeededInputs, run_round
    from securefl.protocol.graphs import CompleteGraph
    from securefl.protocol.harary import HararyGraph

    graph = CompleteGraph() if cell.graph == "complete" else HararyGraph(cell.degree)
    inputs = SeededInputs(range(1, cell.n + 1), cell.m, cell.bits)
    cpu = time.process_time()
    r = run_round(cell.n, cell.m, dropout=cell.dropout, bits=cell.bits, graph=graph,
                  threshold=cell.threshold, workers=workers, inputs=inputs)
    # the round's CPU time: without making the inputs or the exactness check's sum
    cpu = time.process_time() - cpu - inputs.cpu_seconds - r.plain_sum_seconds
    return {
        "wall_seconds": r.wall_seconds,
        "cpu_seconds": cpu,
        "input_seconds": r.input_seconds,
        "server_seconds": r.server_total,
        "transport_seconds": r.transport_seconds,
        "clients_seconds": r.clients_sum,
        "plain_sum_seconds": r.plain_sum_seconds,
        # first touches of memory during the round (the inputs' left out)
        "minor_faults": r.minor_faults,
        "bytes_up_per_client": r.bytes_up_per_client,
        "bytes_down_per_client": r.bytes_down_per_client,
        "survivors": r.survivors,
        "exact": r.exact,
        # Linux reports kilobytes
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_cell(cell: Cell, *, timeout: float | None, workers: int = 1,
             hugepage_madvise: bool = True) -> dict[str, Any]:
    """Measure ``cell`` in a child process; ``{"skipped": reason}`` if it
    failed or ran past ``timeout`` seconds.  With ``hugepage_madvise`` false
    the child runs with ``NUMPY_MADVISE_HUGEPAGE=0`` (see :func:`main`)."""
    here = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (here, os.environ.get("PYTHONPATH")) if p))
    if not hugepage_madvise:
        env["NUMPY_MADVISE_HUGEPAGE"] = "0"
    argv = [sys.executable, "-m", "securefl.bench.scaling", "--cell",
            json.dumps(asdict(cell), allow_nan=False), "--workers", str(workers)]
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        return {"skipped": f"killed after {timeout:.0f} s (the timeout)"}
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"skipped": f"child failed: {tail}"}
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def fit_exponent(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Least-squares slope of log(y) on log(x); None with fewer than two points."""
    if len(xs) < 2:
        return None
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    var = sum((a - mx) ** 2 for a in lx)
    if var == 0:
        return None
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / var


def run_grid(cells: Sequence[Cell], *, budget: float, timeout: float, workers: int = 1,
             aes_bytes_per_s: float, x25519_per_s: float, hugepage_madvise: bool = True,
             progress: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Every cell (a cell measured in the n sweep is reused by the m sweep
    rather than run twice), skipping those predicted past ``budget`` s."""
    rows: list[dict[str, Any]] = []
    done: dict[tuple[int, int], dict[str, Any]] = {}
    last: dict[str, tuple[Cell, float]] = {}
    for cell in cells:
        row: dict[str, Any] = {"cell": asdict(cell),
                               "floor": crypto_floor(cell, aes_bytes_per_s, x25519_per_s)}
        key = (cell.n, cell.m)
        previous = last.get(cell.sweep)
        predicted = (previous[1] * cell.work / previous[0].work) if previous else None
        if key in done:
            result = dict(done[key], reused=True)
        elif predicted is not None and predicted > budget:
            result = {"skipped": f"predicted {predicted:.0f} s > budget {budget:.0f} s"}
        else:
            result = run_cell(cell, timeout=timeout, workers=workers,
                              hugepage_madvise=hugepage_madvise)
            if "skipped" not in result:
                done[key] = result
        row["result"] = result
        if "skipped" not in result:
            last[cell.sweep] = (cell, result["wall_seconds"])
            row["wall_over_floor"] = result["wall_seconds"] / row["floor"]["seconds"]
        rows.append(row)
        progress(_line(row))
    return rows


def exponents(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Fitted log-log exponents of wall time and peak memory, per sweep."""
    out: dict[str, dict[str, float | None]] = {}
    for sweep in ("n", "m"):
        ok = [r for r in rows if r["cell"]["sweep"] == sweep and "skipped" not in r["result"]]
        xs = [float(r["cell"][sweep]) for r in ok]
        out[sweep] = {
            "wall_seconds": fit_exponent(xs, [r["result"]["wall_seconds"] for r in ok]),
            "cpu_seconds": fit_exponent(xs, [r["result"]["cpu_seconds"] for r in ok]),
            "peak_rss_mb": fit_exponent(xs, [r["result"]["peak_rss_mb"] for r in ok]),
            "bytes_down_per_client": fit_exponent(
                xs, [r["result"]["bytes_down_per_client"] for r in ok]),
        }
    return out


def _line(row: dict[str, Any]) -> str:
    c, r = row["cell"], row["result"]
    head = f"[{c['sweep']}] n={c['n']} m={c['m']:.0e} {c['graph']}(k={c['degree']})"
    if "skipped" in r:
        return f"{head}: skipped ({r['skipped']})"
    return (f"{head}: {r['wall_seconds']:.2f} s ({row['wall_over_floor']:.1f}x floor),"
            f" peak {r['peak_rss_mb']:.0f} MB, up {r['bytes_up_per_client'] / 1e3:,.1f} KB,"
            f" down {r['bytes_down_per_client'] / 1e3:,.1f} KB per client,"
            f" {r.get('minor_faults', 0):,} page faults, exact={r['exact']}")


def _thp_settings() -> dict[str, str | None]:
    """The kernel's transparent-huge-page policy (the bracketed choices), if readable."""
    out: dict[str, str | None] = {}
    for name in ("enabled", "defrag"):
        try:
            text = Path(f"/sys/kernel/mm/transparent_hugepage/{name}").read_text()
        except OSError:
            out[name] = None
            continue
        match = re.search(r"\[(\w[\w+]*)\]", text)
        out[name] = match.group(1) if match else text.strip()
    return out


def markdown(report: dict[str, Any]) -> str:
    """The table, the exponents and the references, in Markdown."""
    lines = [f"Command: `{report['command']}`", "",
             f"Machine: {report['machine']['cpus']} CPUs, load average at start"
             f" {report['machine']['loadavg_start']}, at end {report['machine']['loadavg_end']};"
             f" OpenSSL AES-256-CTR {report['machine']['openssl_aes_gbps']:.2f} GB/s and"
             f" X25519 {report['machine']['openssl_x25519_per_s']:,.0f}/s on one core;"
             f" workers={report['workers']}; numpy hugepage madvise"
             f" {'on' if report['numpy_madvise_hugepage'] else 'off'} (kernel THP"
             f" {report['transparent_hugepage']}).", "",
             "| sweep | n | m | graph (k, t) | round s | CPU s | floor s | round/floor |"
             " CPU/floor | server s | transport s | peak RSS MB | up KB/client |"
             " down KB/client | exact |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        c, r = row["cell"], row["result"]
        prefix = (f"| {c['sweep']} | {c['n']} | {c['m']:.0e} | {c['graph']} ({c['degree']},"
                  f" {c['threshold']}) |")
        if "skipped" in r:
            lines.append(f"{prefix} skipped: {r['skipped']} | | | | | | | | | | |")
            continue
        lines.append(
            f"{prefix} {r['wall_seconds']:.2f} | {r['cpu_seconds']:.2f} |"
            f" {row['floor']['seconds']:.2f} | {row['wall_over_floor']:.1f}x |"
            f" {r['cpu_seconds'] / row['floor']['seconds']:.1f}x | {r['server_seconds']:.2f} |"
            f" {r['transport_seconds']:.2f} | {r['peak_rss_mb']:,.0f} |"
            f" {r['bytes_up_per_client'] / 1e3:,.1f} | {r['bytes_down_per_client'] / 1e3:,.1f} |"
            f" {r['exact']} |")
    lines += ["", "round s: wall time of the round (all parties in this process, making the"
              " inputs excluded); CPU s: this process's CPU time for it (fairer on a shared"
              " machine); floor s: the keystream at OpenSSL's AES-256-CTR rate plus the X25519"
              " agreements at OpenSSL's rate, one core, summed over all parties.", "",
              "Fitted log-log exponents (least squares over the measured cells):", ""]
    for sweep, fits in report["exponents"].items():
        parts = [f"{name} ~ {sweep}^{value:.2f}" for name, value in fits.items()
                 if value is not None]
        lines.append(f"- {sweep} sweep: " + (", ".join(parts) if parts else "fewer than 2 cells"))
    lines += ["", f"Side-by-side with Flower's SecAgg+ (n=50 and n=100, complete graph):"
              f" {FLOWER_REFERENCE}."]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """Log-log plot of round time against n and against m, with the fits."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, sweep in zip(axes, ("n", "m"), strict=True):
        ok = [r for r in report["rows"]
              if r["cell"]["sweep"] == sweep and "skipped" not in r["result"]]
        xs = [r["cell"][sweep] for r in ok]
        for key, label in (("wall_seconds", "round, wall"), ("cpu_seconds", "round, CPU"),
                           ("floor", "crypto floor")):
            ys = [r["result"][key] if key != "floor" else r["floor"]["seconds"] for r in ok]
            slope = fit_exponent([float(x) for x in xs], ys)
            ax.loglog(xs, ys, "o-", label=f"{label} (exponent {slope:.2f})"
                      if slope is not None else label)
        fixed = "m" if sweep == "n" else "n"
        value = ok[0]["cell"][fixed] if ok else "-"
        ax.set_xlabel(sweep)
        ax.set_ylabel("seconds")
        ax.set_title(f"{sweep} sweep ({fixed}={value})")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """``python benchmarks/scaling.py`` (see its docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cell", help=argparse.SUPPRESS)
    parser.add_argument("--ns", type=int, nargs="+", default=[100, 300, 1000, 3000, 10000])
    parser.add_argument("--ms", type=int, nargs="+",
                        default=[10_000, 100_000, 1_000_000, 10_000_000])
    parser.add_argument("--fixed-m", type=int, default=100_000)
    parser.add_argument("--fixed-n", type=int, default=100)
    parser.add_argument("--dropout", type=float, default=0.05)
    parser.add_argument("--bits", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--budget", type=float, default=300.0,
                        help="skip cells predicted to take longer (seconds)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="kill a cell's child after this many seconds (default 3x budget)")
    parser.add_argument("--no-hugepage-madvise", action="store_true",
                        help="run the cells with NUMPY_MADVISE_HUGEPAGE=0: numpy then does"
                             " not ask for transparent huge pages, whose first touch stalls"
                             " on direct compaction where the kernel's THP defrag is 'madvise'")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for scaling.json, scaling.md and scaling.png")
    parser.add_argument("--no-plot", action="store_true")
    args = parser.parse_args(argv)
    if args.cell is not None:
        cell = Cell(**json.loads(args.cell))
        print(json.dumps(sanitize(measure(cell, args.workers)), allow_nan=False))
        return 0
    from securefl.bench.core import openssl_aes_ctr_gbps, openssl_x25519_per_second

    load_start = os.getloadavg()
    aes = openssl_aes_ctr_gbps()
    x25519 = openssl_x25519_per_second()
    if aes is None or x25519 is None:
        print("openssl speed is needed for the cryptographic floor", file=sys.stderr)
        return 2
    cells = plan(args.ns, args.ms, fixed_m=args.fixed_m, fixed_n=args.fixed_n,
                 dropout=args.dropout, bits=args.bits)
    timeout = args.timeout if args.timeout is not None else 3 * args.budget
    rows = run_grid(cells, budget=args.budget, timeout=timeout, workers=args.workers,
                    aes_bytes_per_s=aes * 1e9, x25519_per_s=x25519,
                    hugepage_madvise=not args.no_hugepage_madvise)
    given = list(sys.argv[1:] if argv is None else argv)
    command = " ".join(["python benchmarks/scaling.py", *given])
    report = {
        "schema": SCHEMA,
        "command": command,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "workers": args.workers,
        "numpy_madvise_hugepage": not args.no_hugepage_madvise,
        "transparent_hugepage": _thp_settings(),
        "budget_seconds": args.budget,
        "timeout_seconds": timeout,
        "machine": {"cpus": os.cpu_count(), "loadavg_start": [round(x, 2) for x in load_start],
                    "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                    "openssl_aes_gbps": aes, "openssl_x25519_per_s": x25519},
        "rows": rows,
        "exponents": exponents(rows),
        "flower_comparison": FLOWER_REFERENCE,
    }
    text = json.dumps(sanitize(report), allow_nan=False, indent=1)
    table = markdown(report)
    print(table)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "scaling.json").write_text(text + "\n")
        (args.out / "scaling.md").write_text(table)
        if not args.no_plot:
            plot(report, args.out / "scaling.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
