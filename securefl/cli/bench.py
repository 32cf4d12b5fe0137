"""``securefl bench``: securefl against Flower's SecAgg+, a plain sum and the
hardware's AES limit, in one process, on identical inputs."""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from pathlib import Path

from securefl.cli import help_text
from securefl.protocol import Round
from securefl.strictjson import sanitize

DEFAULT_OUT = Path("securefl-bench-results")
"""Where ``securefl bench`` writes without ``--out``: a directory of its own
under the current directory, never the committed ``benchmarks/results``."""


def _ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``bench`` sub-command."""
    p = sub.add_parser("bench", help="benchmark against Flower's SecAgg+ and the hardware",
                       description=help_text(__doc__))
    p.add_argument("--clients", type=_ints, default=[10, 50, 100, 500],
                   help="comma-separated client counts (default 10,50,100,500)")
    p.add_argument("--length", type=_ints, default=[100_000, 1_000_000],
                   help="comma-separated vector lengths (default 1e5,1e6)")
    p.add_argument("--dropout", type=_floats, default=[0.0, 0.1, 0.3],
                   help="comma-separated dropout rates (default 0,0.1,0.3)")
    p.add_argument("--drop-stage", choices=["share-keys", "masked-input", "unmasking"],
                   default="masked-input",
                   help="where dropped clients stop answering (default: masked-input, i.e."
                        " after sharing keys, the costliest case for the server)")
    p.add_argument("--graph", default="complete,harary",
                   help="comma-separated graphs: complete, harary (default both)")
    p.add_argument("--no-flower", action="store_true", help="skip Flower's SecAgg+")
    p.add_argument("--targets", action="store_true",
                   help="run only the headline targets (PRG vs OpenSSL, n=100 vs Flower,"
                        " n=500 server unmasking and client compute) and write targets.md")
    p.add_argument("--budget", type=float, default=180.0,
                   help="skip settings predicted to take longer than this (s, default 180)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"output directory, created if needed (default: ./{DEFAULT_OUT}, under"
                        " the current directory); the grid writes results.jsonl, results.md"
                        " and time_vs_n.png, --targets writes targets.md and targets.json,"
                        " replacing files of those names.  The committed figures are"
                        " regenerated only when asked: --out benchmarks/results")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the suite, print one line per setting, write the reports."""
    from securefl._extras import require

    # refused before any setting runs, not when the results are written:
    # matplotlib draws time_vs_n.png, flwr is the baseline (--no-flower skips it)
    require([*([] if args.targets else ["matplotlib"]), *([] if args.no_flower else ["flwr"])],
            "securefl bench")
    from securefl.bench import suite

    command = "securefl bench"
    if sys.argv[1:2] == ["bench"]:
        command += " " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    command = command.strip()
    if args.targets:
        targets, machine = suite.run_targets(with_flower=not args.no_flower,
                                             progress=lambda line: print(line, flush=True))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "targets.md").write_text(suite.targets_markdown(targets, command))
        with (args.out / "targets.json").open("w") as fh:
            json.dump(sanitize({"command": command, "machine": machine,
                                "targets": [dataclasses.asdict(t) for t in targets]}),
                      fh, indent=1, allow_nan=False)
        print("\n" + suite.targets_markdown(targets, command))
        print(f"wrote {args.out}/targets.md and targets.json")
        return 0
    stage = {"share-keys": Round.SHARE_KEYS, "masked-input": Round.MASKED_INPUT_COLLECTION,
             "unmasking": Round.UNMASKING}[args.drop_stage]
    graphs = [g.strip() for g in args.graph.split(",") if g.strip()]
    for g in graphs:
        if g not in ("complete", "harary"):
            print(f"securefl bench: unknown graph {g!r}", file=sys.stderr)
            return 2
    settings = suite.grid(args.clients, args.length, args.dropout, graphs, stage)
    print(f"securefl bench: {len(settings)} settings, budget {args.budget:.0f} s each")
    records, machine = suite.run_suite(settings, with_flower=not args.no_flower,
                                       budget_seconds=args.budget,
                                       progress=lambda line: print(line, flush=True))
    suite.write_results(records, machine, args.out, command)
    print(f"\nwrote {args.out}/results.jsonl, results.md, time_vs_n.png")
    bad = [r for r in records
           if (r.securefl and not r.securefl["exact"]) or (r.flower and not r.flower["exact"])]
    for r in bad:
        print(f"INEXACT SUM: {r.setting['label']}", file=sys.stderr)
    return 1 if bad else 0
