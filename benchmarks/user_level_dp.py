"""User-level distributed DP (Skellam inside the secure sum): accuracy
against bits per coordinate and the client's DP cost against its masking.

    python benchmarks/user_level_dp.py --out benchmarks/results/user_level
    python benchmarks/user_level_dp.py --quick --out /tmp/ul   # seconds, for a smoke test

Writes ``user_level_dp.json`` (strict JSON), ``accuracy_vs_bits.png`` and
``user_level_dp.md`` into ``--out``.  See docs/user-level-dp.md.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from securefl.bench.user_level import UserLevelSetting, accuracy_sweep, client_cost
from securefl.strictjson import sanitize


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = results["accuracy"]
    ran = [r for r in sweep["skellam"] if "refused" not in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["bits"] for r in ran], [100 * r["accuracy_mean"] for r in ran], "o-",
            label="Skellam in the secure sum (distributed)")
    for key, label, style, color in (
            ("gaussian", "central Gaussian, same epsilon (every accountant)", "--", "tab:gray"),
            ("gaussian_generic", "central Gaussian, same epsilon (same accountant as Skellam)",
             ":", "tab:orange"),
            ("gaussian_pld", "central Gaussian, same epsilon (PLD alone)", "-.", "tab:green"),
            ("none", "no noise (clipping only)", "-", "black")):
        if key in sweep:
            ax.axhline(100 * sweep[key]["accuracy_mean"], linestyle=style, color=color,
                       label=label, linewidth=1)
    setting = sweep["setting"]
    ax.set_xlabel("bits per coordinate on the wire")
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title(f"digits, {setting['num_clients']} clients, q={setting['q']},"
                 f" {setting['rounds']} rounds, user-level eps={setting['epsilon']}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def replot(out: Path) -> None:
    """Redraw ``accuracy_vs_bits.png`` in ``out`` from its ``user_level_dp.json``."""
    _plot(json.loads((out / "user_level_dp.json").read_text()), out / "accuracy_vs_bits.png")


def _markdown(results: dict[str, Any], command: str) -> str:
    sweep = results["accuracy"]
    lines = [f"Command: `{command}`", "",
             f"Accuracy (mean of seeds {sweep['seeds']}):", "",
             "| bits | Skellam | gap to central Gaussian (pp) | gap to Gaussian, same"
             " accountant (pp) | noise multiplier | gamma |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in sweep["skellam"]:
        if "refused" in r:
            lines.append(f"| {r['bits']} | refused: {r['refused']} | | | | |")
            continue
        lines.append(f"| {r['bits']} | {100 * r['accuracy_mean']:.2f}% |"
                     f" {r['gap_to_gaussian_pp']:+.2f} | {r['gap_to_gaussian_generic_pp']:+.2f}"
                     f" | {r['noise_multiplier']:.3f} | {r['gamma']:.4g} |")
    lines += ["",
              f"central Gaussian (sigma {sweep['gaussian_sigma']:.3f}, within epsilon by every"
              " accountant, Opacus's and dp-accounting's RDP and PLD):"
              f" {100 * sweep['gaussian']['accuracy_mean']:.2f}%;"
              f" central Gaussian (sigma {sweep['gaussian_generic_sigma']:.3f}, the Skellam"
              f" mechanism's accountant, {sweep.get('accountant', 'zhu-wang-general')}):"
              f" {100 * sweep['gaussian_generic']['accuracy_mean']:.2f}%;"
              f" no noise: {100 * sweep['none']['accuracy_mean']:.2f}%", ""]
    if "gaussian_pld" in sweep:
        gaps = [r["gap_to_gaussian_pld_pp"] for r in sweep["skellam"] if "refused" not in r]
        lines += [f"central Gaussian (sigma {sweep['gaussian_pld_sigma']:.3f}, dp-accounting's"
                  f" PLD alone): {100 * sweep['gaussian_pld']['accuracy_mean']:.2f}%; gap to"
                  f" it {min(gaps):+.2f} to {max(gaps):+.2f} pp", ""]
    if "gaussian_legacy_sigma" in sweep:
        lines += [f"(the general zhu-wang-general bound would need sigma"
                  f" {sweep['gaussian_legacy_sigma']:.3f})", ""]
    cost = results.get("cost")
    if cost:
        s = cost["seconds"]
        lines += [f"Client cost at m = {cost['m']} (padded to {cost['padded']}), ring of"
                  f" {cost['bits']} bits, one core:", "",
                  "| clip | rotate | round | encode total | Skellam noise (base + excess) |"
                  f" DP total | masking with {cost['peers']} peers | ratio |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|",
                  f"| {s['clip']:.3f} s | {s['rotate']:.3f} s | {s['round']:.3f} s |"
                  f" {s['encode_total']:.3f} s | {s['noise']:.3f} s | {cost['dp_total']:.3f} s |"
                  f" {s['masking']:.3f} s | {cost['ratio_dp_to_masking']:.2f} |", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("securefl-bench-results/user_level"))
    parser.add_argument("--bits", default="10,11,12,13,14,15,16,17,18,19,20",
                        help="comma-separated bits per coordinate")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per setting (default 5)")
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--q", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--no-cost", action="store_true", help="skip the client cost")
    parser.add_argument("--quick", action="store_true",
                        help="2 bit widths, 1 seed, 10 rounds, m = 2^16: a smoke test")
    args = parser.parse_args(argv)
    bits = [int(b) for b in args.bits.split(",") if b]
    seeds = list(range(1, args.seeds + 1))
    setting = UserLevelSetting(num_clients=args.clients, q=args.q, rounds=args.rounds,
                               epsilon=args.epsilon)
    cost_m = 1_000_000
    if args.quick:
        bits, seeds, cost_m = [12, 16], [1], 1 << 16
        setting = UserLevelSetting(num_clients=args.clients, q=args.q, rounds=10,
                                   epsilon=args.epsilon)
    command = "python " + shlex.join(["benchmarks/user_level_dp.py", *sys.argv[1:]])
    start = time.time()
    results: dict[str, Any] = {"command": command}
    results["accuracy"] = accuracy_sweep(setting, bits, seeds,
                                         progress=lambda m: print(m, flush=True))
    if not args.no_cost:
        results["cost"] = client_cost(m=cost_m, repeat=2 if args.quick else 3)
        print(f"client DP cost / masking: {results['cost']['ratio_dp_to_masking']:.2f}")
    results["seconds"] = time.time() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "user_level_dp.json").write_text(
        json.dumps(sanitize(results), indent=1, allow_nan=False) + "\n")
    _plot(results, args.out / "accuracy_vs_bits.png")
    (args.out / "user_level_dp.md").write_text(_markdown(results, command) + "\n")
    print(_markdown(results, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
