"""The benchmark suite behind ``securefl bench``.

For every setting (n clients, m entries, dropout rate, graph) it runs, in one
process and on identical inputs:

* securefl with the complete graph and with a sparse Harary graph,
* Flower's SecAgg+ (``flwr``, the optional ``bench`` extra) with its real
  ``SecAggPlusWorkflow`` and ``secaggplus_mod``, clients one after another,
* a plain numpy sum of the same inputs (the insecure baseline),

and once per run the mask PRG against OpenSSL's AES-256-CTR.  Settings whose
predicted time exceeds the budget are skipped, and the reason is recorded.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from securefl.bench.core import RoundTimings, prg_throughput, run_round
from securefl.errors import AbortError, ConfigurationError
from securefl.protocol import Round
from securefl.protocol.graphs import CompleteGraph, NeighbourGraph
from securefl.protocol.harary import HararyGraph
from securefl.protocol.params import ServerModel, find_graph_parameters
from securefl.strictjson import sanitize

# Flower's stage names for our dropout stages
FLOWER_STAGE = {
    Round.SHARE_KEYS: "share_keys",
    Round.MASKED_INPUT_COLLECTION: "collect_masked_vectors",
    Round.UNMASKING: "unmask",
}
BITS = 31  # Flower's quantisation is only the identity up to 31 bits


@dataclass(frozen=True)
class Setting:
    """One benchmark setting."""

    n: int
    m: int
    dropout: float
    graph: str  # "complete" or "harary"
    degree: int  # neighbours per client (n - 1 for the complete graph)
    threshold: int
    drop_stage: Round = Round.MASKED_INPUT_COLLECTION

    @property
    def label(self) -> str:
        """Human-readable name."""
        return (f"n={self.n} m={self.m:.0e} drop={self.dropout:.0%}@{self.drop_stage.name}"
                f" {self.graph}(k={self.degree}, t={self.threshold})")

    def securefl_graph(self) -> NeighbourGraph:
        """The securefl graph for this setting."""
        return CompleteGraph() if self.graph == "complete" else HararyGraph(self.degree)

    def work(self) -> float:
        """A cost proxy: mask expansions times length (for predictions)."""
        return float(self.n) * (self.degree + 1) * self.m


@dataclass
class Record:
    """What one setting measured."""

    setting: dict[str, Any]
    securefl: dict[str, Any] | None = None
    flower: dict[str, Any] | None = None
    plain_sum_seconds: float | None = None
    skipped: list[str] = field(default_factory=list)

    def ratio(self) -> float | None:
        """Flower's wall time over securefl's (higher: securefl faster)."""
        if self.securefl and self.flower:
            return self.flower["wall_seconds"] / self.securefl["wall_seconds"]
        return None


def grid(ns: Iterable[int], ms: Iterable[int], dropouts: Iterable[float],
         graphs: Iterable[str], drop_stage: Round = Round.MASKED_INPUT_COLLECTION,
         corrupt_rate: float = 0.05) -> list[Setting]:
    """Every combination, cheapest first.  The complete graph uses the
    Bonawitz threshold ``floor(n/2)+1``; the sparse graph uses the degree and
    threshold of the SecAgg+ parameter finder for that n and dropout rate (a
    setting is left out where the finder falls back to the complete graph)."""
    out = []
    for n in ns:
        for m in ms:
            for p in dropouts:
                for g in graphs:
                    if g == "complete":
                        out.append(Setting(n, m, p, g, n - 1, n // 2 + 1, drop_stage))
                        continue
                    params = sparse_parameters(n, p, corrupt_rate)
                    if params is not None:
                        out.append(Setting(n, m, p, g, params[0], params[1], drop_stage))
    return sorted(out, key=Setting.work)


def flower_shares(setting: Setting) -> tuple[int, int]:
    """Flower's ``num_shares`` (neighbours including itself) and threshold
    for the same graph: Flower wants an odd share count unless it is n."""
    shares = setting.degree + 1
    if shares != setting.n and shares % 2 == 0:
        shares += 1
    return min(shares, setting.n), setting.threshold


def run_suite(settings: list[Setting], *, with_flower: bool = True, budget_seconds: float = 180,
              progress: Callable[[str], None] = print) -> tuple[list[Record], dict[str, Any]]:
    """Run every setting (skipping predicted-too-slow ones); return the
    records and the machine-level PRG measurements."""
    flower = _load_flower(with_flower, progress)
    machine = _machine(progress)
    rates: dict[str, float] = {}  # seconds per unit of work, per implementation
    records = []
    for s in settings:
        rec = Record(setting={**asdict(s), "drop_stage": s.drop_stage.name, "label": s.label})
        inputs = _inputs(s)
        key = f"securefl-{s.graph}"
        predicted = rates.get(key, 0.0) * s.work()
        if predicted > budget_seconds:
            rec.skipped.append(f"securefl predicted {predicted:.0f} s > budget")
        else:
            try:
                t = run_round(s.n, s.m, dropout=s.dropout, drop_stage=s.drop_stage, bits=BITS,
                              graph=s.securefl_graph(), threshold=s.threshold, inputs=inputs)
            except AbortError as exc:
                rec.skipped.append(f"securefl aborted: {exc}")
            else:
                rates[key] = max(rates.get(key, 0.0), t.wall_seconds / s.work())
                rec.securefl = _securefl_dict(t)
                rec.plain_sum_seconds = t.plain_sum_seconds
        if flower is not None:
            fkey = f"flower-{s.graph}"
            predicted = rates.get(fkey, 0.0) * s.work()
            if predicted > budget_seconds:
                rec.skipped.append(f"Flower predicted {predicted:.0f} s > budget")
            else:
                try:
                    rec.flower = _run_flower(flower, s, inputs)
                except flower.FlowerBaselineError as exc:
                    rec.skipped.append(f"Flower failed: {exc}")
                else:
                    rates[fkey] = max(rates.get(fkey, 0.0),
                                      rec.flower["wall_seconds"] / s.work())
        records.append(rec)
        progress(_record_line(rec))
    return records, machine


def _load_flower(with_flower: bool, progress: Callable[[str], None]) -> Any:
    """The Flower baseline module, or None (and say why)."""
    if not with_flower:
        return None
    try:
        from securefl.bench import flower
    except ImportError as exc:
        progress(f"Flower's SecAgg+ not available ({exc}); install the 'bench' extra")
        return None
    return flower


def _machine(progress: Callable[[str], None]) -> dict[str, Any]:
    """Machine facts and the PRG-vs-OpenSSL measurement, printed once."""
    machine = {"python": platform.python_version(), "machine": platform.machine(),
               "prg": prg_throughput()}
    progress(_prg_line(machine["prg"]))
    return machine


def _inputs(s: Setting) -> dict[int, np.ndarray]:
    """Deterministic inputs for a setting, identical for every implementation."""
    gen = np.random.default_rng(s.n * 7919 + s.m)
    return {c: gen.integers(0, 1 << BITS, s.m, dtype=np.uint64) for c in range(1, s.n + 1)}


def _securefl_dict(t: RoundTimings) -> dict[str, Any]:
    return {
        "wall_seconds": t.wall_seconds,
        "server_seconds": t.server_total,
        "server_unmasking_seconds": t.server.get("UNMASKING", 0.0),
        "slowest_client_seconds": t.slowest_client_total,
        "all_clients_seconds": t.clients_sum,
        "transport_seconds": t.transport_seconds,
        "bytes_up_per_client": t.bytes_up_per_client,
        "bytes_down_per_client": t.bytes_down_per_client,
        "exact": t.exact,
        "survivors": t.survivors,
    }


def _run_flower(flower: Any, s: Setting, inputs: dict[int, np.ndarray]) -> dict[str, Any]:
    shares, threshold = flower_shares(s)
    dropped = list(range(s.n - round(s.dropout * s.n) + 1, s.n + 1)) if s.dropout else []
    stage = FLOWER_STAGE[s.drop_stage]
    run = flower.run_flower_secaggplus(inputs, modulus_bits=BITS, num_shares=shares,
                                       reconstruction_threshold=threshold,
                                       dropouts=dict.fromkeys(dropped, stage))
    expected = np.zeros(s.m, dtype=np.uint64)
    for c in run.included:
        expected += inputs[c]
    expected &= np.uint64((1 << BITS) - 1)
    n_clients = len(inputs)
    return {
        "wall_seconds": run.total_seconds,
        "server_seconds": sum(run.server_seconds.values()),
        "server_unmasking_seconds": run.server_seconds.get("unmask", 0.0),
        "slowest_client_seconds": max(run.client_total_seconds(c) for c in inputs),
        "all_clients_seconds": sum(run.client_total_seconds(c) for c in inputs),
        "transport_seconds": sum(run.transport_seconds.values()),
        "bytes_up_per_client": sum(run.total_bytes_up(c) for c in inputs) / n_clients,
        "bytes_down_per_client": sum(run.total_bytes_down(c) for c in inputs) / n_clients,
        "exact": bool(np.array_equal(np.asarray(run.aggregate).reshape(-1), expected)),
        "survivors": len(run.included),
        "num_shares": shares,
    }


def _prg_line(prg: dict[str, Any]) -> str:
    ossl = prg.get("openssl_gbps")
    ratio = f"{prg['prg_accumulate_all_cores_gbps'] / ossl:.2f}" if ossl else "n/a"
    return (f"mask PRG: expand {prg['prg_expand_gbps']:.2f} GB/s, accumulate"
            f" {prg['prg_accumulate_1_thread_gbps']:.2f} GB/s (1 thread),"
            f" {prg['prg_accumulate_all_cores_gbps']:.2f} GB/s (all cores); OpenSSL"
            f" {ossl or float('nan'):.2f} GB/s on one core; PRG/OpenSSL = {ratio}")


def _record_line(rec: Record) -> str:
    parts = [rec.setting["label"]]
    if rec.securefl:
        parts.append(f"securefl {rec.securefl['wall_seconds']:.3f} s"
                     f" (server {rec.securefl['server_seconds']:.3f} s)")
    if rec.flower:
        parts.append(f"Flower {rec.flower['wall_seconds']:.3f} s")
    if rec.ratio():
        parts.append(f"securefl {rec.ratio():.1f}x faster")
    parts.extend(rec.skipped)
    return " | ".join(parts)


def write_results(records: list[Record], machine: dict[str, Any], out: Path,
                  command: str) -> None:
    """Write ``results.jsonl``, ``results.md`` and ``time_vs_n.png`` to ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    with (out / "results.jsonl").open("w") as fh:
        fh.write(json.dumps(sanitize({"machine": machine, "command": command,
                                      "date": time.strftime("%Y-%m-%d")}),
                            allow_nan=False) + "\n")
        for rec in records:
            fh.write(json.dumps(sanitize({**asdict(rec), "flower_over_securefl": rec.ratio()}),
                                allow_nan=False) + "\n")
    (out / "results.md").write_text(markdown_table(records, machine, command))
    plot(records, out / "time_vs_n.png")


def markdown_table(records: list[Record], machine: dict[str, Any], command: str) -> str:
    """The headline table in Markdown."""
    prg = machine["prg"]
    lines = [
        f"Command: `{command}`", "",
        _prg_line(prg), "",
        "| n | m | dropout | graph (k, t) | securefl round s | server s | slowest client s"
        " | up/down KB per client | Flower round s | Flower server s | Flower/securefl"
        " | securefl/plain sum |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rec in records:
        s = rec.setting
        sf, fl = rec.securefl, rec.flower

        def f(d: dict[str, Any] | None, key: str, fmt: str = ".3f") -> str:
            return format(d[key], fmt) if d else "skipped"

        plain = (f"{sf['wall_seconds'] / rec.plain_sum_seconds:,.0f}x"
                 if sf and rec.plain_sum_seconds else "-")
        updown = (f"{sf['bytes_up_per_client'] / 1e3:,.0f} /"
                  f" {sf['bytes_down_per_client'] / 1e3:,.0f}" if sf else "-")
        lines.append(
            f"| {s['n']} | {s['m']:.0e} | {s['dropout']:.0%} | {s['graph']} ({s['degree']},"
            f" {s['threshold']}) | {f(sf, 'wall_seconds')} | {f(sf, 'server_seconds')} |"
            f" {f(sf, 'slowest_client_seconds')} | {updown} | {f(fl, 'wall_seconds')} |"
            f" {f(fl, 'server_seconds')} | {f'{rec.ratio():.1f}x' if rec.ratio() else '-'} |"
            f" {plain} |")
    skipped = [r for r in records if r.skipped]
    if skipped:
        lines += ["", "Skipped (predicted from the measured cost per unit of work):"]
        lines += [f"- {r.setting['label']}: {'; '.join(r.skipped)}" for r in skipped]
    return "\n".join(lines) + "\n"


def plot(records: list[Record], path: Path) -> None:
    """Round wall time against n: one panel per graph, securefl solid and
    Flower dashed, one colour per vector length, at a 10% dropout rate (or the
    first rate measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = sorted({r.setting["dropout"] for r in records})
    rate = 0.1 if 0.1 in rates else (rates[0] if rates else 0.0)
    graphs = sorted({r.setting["graph"] for r in records}) or ["complete"]
    fig, axes = plt.subplots(1, len(graphs), figsize=(6 * len(graphs), 4.5), squeeze=False)
    for ax, graph in zip(axes[0], graphs, strict=True):
        series: dict[tuple[str, int], list[tuple[int, float]]] = {}
        for rec in records:
            s = rec.setting
            if s["graph"] != graph or s["dropout"] != rate:
                continue
            for name, d in (("securefl", rec.securefl), ("Flower SecAgg+", rec.flower)):
                if d:
                    series.setdefault((name, s["m"]), []).append((s["n"], d["wall_seconds"]))
        lengths = sorted({m for _, m in series})
        for (name, m), points in sorted(series.items()):
            points.sort()
            ax.plot([p[0] for p in points], [p[1] for p in points],
                    "-" if name == "securefl" else "--", marker="o",
                    color=f"C{lengths.index(m)}", label=f"{name}, m={m:.0e}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("clients n")
        ax.set_ylabel("full round, every party in one process (s)")
        ax.set_title(f"{graph} graph, {rate:.0%} dropout")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sparse_parameters(n: int, dropout: float, corrupt_rate: float) -> tuple[int, int] | None:
    """``(degree, threshold)`` from the SecAgg+ parameter finder (semi-honest,
    2^-40 security, 2^-20 correctness), or None where it finds no sparse graph."""
    try:
        params = find_graph_parameters(n, max(dropout, 0.01), corrupt_rate,
                                       ServerModel.SEMI_HONEST)
    except ConfigurationError:
        return None
    if params.complete or params.degree >= n - 1:
        return None
    return int(params.degree), int(params.threshold)


@dataclass
class Target:
    """One headline target from the issue tracker, and what was measured."""

    name: str
    goal: str
    measured: str = "not run"
    met: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)


def run_targets(*, with_flower: bool = True,
                progress: Callable[[str], None] = print) -> tuple[list[Target], dict[str, Any]]:
    """The headline comparisons: each runs securefl (and Flower's SecAgg+
    where the target names it) on identical inputs in this process."""
    flower = _load_flower(with_flower, progress)
    machine = _machine(progress)
    prg = machine["prg"]
    targets: list[Target] = []

    ossl = prg.get("openssl_gbps")
    t = Target("mask PRG throughput", ">= 0.8 of OpenSSL AES-256-CTR")
    if ossl:
        best = max(prg["prg_expand_gbps"], prg["prg_accumulate_all_cores_gbps"])
        t.measured = (f"expand {prg['prg_expand_gbps'] / ossl:.2f}x, accumulate (all cores)"
                      f" {prg['prg_accumulate_all_cores_gbps'] / ossl:.2f}x,"
                      f" 1 thread {prg['prg_accumulate_1_thread_gbps'] / ossl:.2f}x of OpenSSL")
        t.met = best / ossl >= 0.8
    t.details = prg
    targets.append(t)
    progress(f"{t.name}: {t.measured}")

    def compare(name: str, goal: str, s: Setting, factor: float, repeat: int = 1) -> None:
        """Best of ``repeat`` runs of each implementation on the same inputs."""
        target = Target(name, goal)
        inputs = _inputs(s)
        ours = min((_securefl_dict(run_round(
            s.n, s.m, dropout=s.dropout, drop_stage=s.drop_stage, bits=BITS,
            graph=s.securefl_graph(), threshold=s.threshold, inputs=inputs))
            for _ in range(repeat)), key=lambda d: d["wall_seconds"])
        target.details = {"setting": s.label, "securefl": ours, "repeat": repeat}
        target.measured = f"securefl {ours['wall_seconds']:.2f} s"
        if repeat > 1:
            target.measured = f"best of {repeat}: " + target.measured
        if flower is not None:
            theirs = min((_run_flower(flower, s, inputs) for _ in range(repeat)),
                         key=lambda d: d["wall_seconds"])
            ratio = theirs["wall_seconds"] / ours["wall_seconds"]
            target.details["flower"] = theirs
            target.measured += f", Flower {theirs['wall_seconds']:.1f} s: {ratio:.0f}x faster"
            target.met = ratio >= factor and ours["exact"] and theirs["exact"]
        targets.append(target)
        progress(f"{name}: {target.measured}")

    compare("full round n=100 m=1e5, 10% drop after masked input, complete graph",
            ">= 50x faster than Flower's SecAgg+",
            Setting(100, 100_000, 0.1, "complete", 99, 51, Round.UNMASKING), 50)
    sparse = sparse_parameters(100, 0.1, 0.05) or (26, 6)
    compare("full round n=100 m=1e6, 10% drop, sparse graph (same degree)",
            ">= 10x faster than Flower's SecAgg+ with the same degree",
            Setting(100, 1_000_000, 0.1, "harary", sparse[0], sparse[1],
                    Round.MASKED_INPUT_COLLECTION), 10, repeat=3)

    for graph, goal, limit in (("complete", "< 3 s (Bonawitz et al. 2017: 143 s)", 3.0),
                               ("harary", "< 1 s", 1.0)):
        params = (499, 251) if graph == "complete" else (sparse_parameters(500, 0.3, 0.05)
                                                           or (40, 12))
        s = Setting(500, 100_000, 0.3, graph, params[0], params[1],
                    Round.MASKED_INPUT_COLLECTION)
        timings = run_round(s.n, s.m, dropout=s.dropout, drop_stage=s.drop_stage, bits=BITS,
                            graph=s.securefl_graph(), threshold=s.threshold,
                            unmask_processes=True)
        unmask = timings.server.get("UNMASKING", 0.0)
        target = Target(f"server unmasking n=500 m=1e5, 30% drop after sharing, {graph}", goal,
                        f"{unmask:.2f} s ({s.label}; whole server {timings.server_total:.2f} s)",
                        unmask < limit and timings.exact, {"securefl": _securefl_dict(timings)})
        targets.append(target)
        progress(f"{target.name}: {target.measured}")
        if graph == "complete":
            client = timings.median_client_total
            per_round = ", ".join(f"{k}={v:.3f}" for k, v in timings.median_client.items()
                                  if v >= 0.0005)
            target = Target("one client's total compute n=500 m=1e5, complete graph",
                            "< 0.1 s (Bonawitz et al. 2017: 0.85 s)",
                            f"median client {client:.3f} s ({per_round}); slowest of 500"
                            f" {timings.slowest_client_total:.3f} s",
                            client < 0.1, {"median_client": timings.median_client,
                                           "slowest_client": timings.slowest_client})
            targets.append(target)
            progress(f"{target.name}: {target.measured}")
    return targets, machine


def targets_markdown(targets: list[Target], command: str) -> str:
    """The targets as a Markdown table."""
    lines = [f"Command: `{command}`", "", "| target | goal | measured | met |",
             "|---|---|---|---|"]
    for t in targets:
        met = "-" if t.met is None else ("yes" if t.met else "**no**")
        lines.append(f"| {t.name} | {t.goal} | {t.measured} | {met} |")
    return "\n".join(lines) + "\n"
