"""``securefl audit RUN_DIR``: check a run's privacy ledger.

Prints, per round, the largest and the median client epsilon, how many
clients were over their budget and how many updates entered the sum; then,
per client, its final epsilon as recorded (Opacus RDP and PRV), as recomputed
from its recorded history with Opacus, and as computed independently by
Google's dp-accounting.  Writes epsilon_per_round.png next to the ledger.

Exit status: 0 when every client stayed within its budget and every recorded
epsilon matches its history; 1 otherwise; 2 when the ledger cannot be read.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

from securefl.cli.audit_empirical import add_arguments as add_empirical_arguments
from securefl.cli.audit_empirical import run_empirical
from securefl.errors import LedgerError
from securefl.privacy.ledger import LEDGER_FILENAME, LedgerEntry, entries_by_client, read_ledger
from securefl.privacy.options import AccountantKind

PLOT_NAME = "epsilon_per_round.png"
RECOMPUTE_TOLERANCE = 1e-6
"""Relative difference allowed between a recorded epsilon and the epsilon
recomputed from the recorded history with the same accountant."""
CROSS_CHECK_TOLERANCE = 0.05
"""Relative difference between Opacus RDP and dp-accounting RDP beyond which
the audit warns (their RDP orders differ slightly; they agree to about 1%)."""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``audit`` sub-command."""
    p = sub.add_parser("audit", help="audit a run's privacy ledger", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                   help=f"a run directory holding {LEDGER_FILENAME} (or the ledger file)")
    p.add_argument("--json", action="store_true", help="print the audit as JSON")
    p.add_argument("--no-plot", action="store_true", help=f"do not write {PLOT_NAME}")
    add_empirical_arguments(p)
    p.set_defaults(func=run)


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.3f}"


def _json_number(value: float | None) -> float | str | None:
    if value is None or math.isnan(value):
        return None
    return value if math.isfinite(value) else "inf"


def audit_ledger(entries: list[LedgerEntry]) -> dict[str, Any]:
    """Audit ledger rows: per-round summary, per-client final epsilons with
    the Opacus recomputation and the dp-accounting cross-check.

    Returns:
        a JSON-ready dict with ``rounds``, ``clients``, ``over_budget`` (ids),
        ``inconsistent`` (ids whose recorded epsilon does not match their
        history) and ``ok``.

    Raises:
        SecureFLError: when there are no rows.
    """
    # imported here: Opacus and dp-accounting are heavy, the parser must not be
    from securefl.privacy.accounting import epsilon, epsilon_dp_accounting

    if not entries:
        raise LedgerError("the ledger is empty: no round has been recorded")
    rounds: dict[int, list[LedgerEntry]] = {}
    for entry in entries:
        rounds.setdefault(entry.round, []).append(entry)
    round_rows = []
    for number in sorted(rounds):
        rows = rounds[number]
        eps = [r.epsilon for r in rows]
        prv = [r.epsilon_prv for r in rows if r.epsilon_prv is not None]
        round_rows.append({
            "round": number,
            "epsilon_max": max(eps),
            "epsilon_median": statistics.median(eps),
            "epsilon_max_prv": max(prv) if prv else None,
            "clients_over_budget": sorted(r.client_id for r in rows if r.over_budget),
            "survivors": max(r.survivors for r in rows),
            "trained": sum(1 for r in rows if r.local_steps > 0),
            "entered_sum": sum(1 for r in rows if r.entered_sum),
            "aborted": any(r.status == "round-aborted" for r in rows),
            "refused": sum(1 for r in rows if r.status == "refused-budget"),
        })
    clients = []
    over_budget: list[int] = []
    inconsistent: list[int] = []
    warnings: list[str] = []
    for cid, rows in sorted(entries_by_client(entries).items()):
        last = rows[-1]
        history = [tuple(h) for h in last.history]
        steps_recorded = sum(r.local_steps for r in rows)
        steps_history = sum(int(h[2]) for h in history)
        recomputed_rdp = epsilon(history, last.delta, AccountantKind.RDP)
        recomputed_prv = epsilon(history, last.delta, AccountantKind.PRV)
        independent = epsilon_dp_accounting(history, last.delta)
        consistent = math.isclose(recomputed_rdp, last.epsilon_rdp,
                                  rel_tol=RECOMPUTE_TOLERANCE, abs_tol=1e-9)
        if last.epsilon_prv is not None and not math.isnan(recomputed_prv):
            consistent = consistent and math.isclose(recomputed_prv, last.epsilon_prv,
                                                     rel_tol=RECOMPUTE_TOLERANCE, abs_tol=1e-9)
        consistent = consistent and steps_recorded == steps_history
        if not consistent:
            inconsistent.append(cid)
        budget = last.epsilon_budget
        final_eps = recomputed_prv if last.accountant == "prv" else recomputed_rdp
        exceeded = any(r.over_budget for r in rows) or (
            budget is not None and not final_eps <= budget)
        if exceeded:
            over_budget.append(cid)
        if recomputed_rdp > 0 and abs(independent - recomputed_rdp) > (
                CROSS_CHECK_TOLERANCE * recomputed_rdp):
            warnings.append(f"client {cid}: Opacus RDP {recomputed_rdp:.3f} and dp-accounting"
                            f" {independent:.3f} differ by more than 5%")
        clients.append({
            "client_id": cid,
            "rounds_trained": sum(1 for r in rows if r.local_steps > 0),
            "rounds_in_sum": sum(1 for r in rows if r.entered_sum),
            "steps": steps_history,
            "delta": last.delta,
            "epsilon_rdp": _json_number(last.epsilon_rdp),
            "epsilon_prv": _json_number(last.epsilon_prv),
            "epsilon_rdp_recomputed": _json_number(recomputed_rdp),
            "epsilon_dp_accounting": _json_number(independent),
            "epsilon_budget": budget,
            "over_budget": exceeded,
            "consistent": consistent,
        })
    return {
        "ledger_rows": len(entries),
        "rounds": [{k: _json_number(v) if isinstance(v, float) else v for k, v in r.items()}
                   for r in round_rows],
        "clients": clients,
        "over_budget": over_budget,
        "inconsistent": inconsistent,
        "warnings": warnings,
        "ok": not over_budget and not inconsistent,
    }


def _print_report(report: dict[str, Any], ledger: Path) -> None:
    print(f"privacy audit of {ledger} ({report['ledger_rows']} rows)")
    print()
    print(f"{'round':>5}  {'max eps':>7}  {'median':>7}  {'max prv':>7}  {'over budget':>11}"
          f"  {'survivors':>9}  {'trained':>7}  note")
    for r in report["rounds"]:
        note = "aborted" if r["aborted"] else ""
        if r["refused"]:
            note += f" {r['refused']} refused (budget)"
        print(f"{r['round']:>5}  {_fmt(r['epsilon_max']):>7}  {_fmt(r['epsilon_median']):>7}"
              f"  {_fmt(r['epsilon_max_prv']):>7}  {len(r['clients_over_budget']):>11}"
              f"  {r['survivors']:>9}  {r['trained']:>7}  {note.strip()}")
    print()
    print(f"{'client':>6}  {'eps rdp':>8}  {'eps prv':>8}  {'dp-acct':>8}  {'budget':>7}"
          f"  {'in sum':>6}  {'steps':>5}  status")
    for c in report["clients"]:
        status = "OVER BUDGET" if c["over_budget"] else "ok"
        if not c["consistent"]:
            status += ", RECORDED EPSILON DOES NOT MATCH ITS HISTORY"
        budget = "-" if c["epsilon_budget"] is None else f"{c['epsilon_budget']:g}"
        in_sum = f"{c['rounds_in_sum']}/{c['rounds_trained']}"
        print(f"{c['client_id']:>6}  {_fmt(c['epsilon_rdp']):>8}  {_fmt(c['epsilon_prv']):>8}"
              f"  {_fmt(c['epsilon_dp_accounting']):>8}  {budget:>7}  {in_sum:>6}"
              f"  {c['steps']:>5}  {status}")
    print()
    delta = report["clients"][0]["delta"] if report["clients"] else float("nan")
    print(f"epsilons at delta {delta:g}; 'in sum' = rounds whose sum included the client /"
          " rounds it trained in (every trained round spends privacy)")
    for warning in report["warnings"]:
        print(f"warning: {warning}")
    if report["ok"]:
        print("OK: every client stayed within its budget; every recorded epsilon matches"
              " its history (Opacus) and dp-accounting agrees")
    else:
        if report["over_budget"]:
            print(f"FAIL: clients over budget: {report['over_budget']}")
        if report["inconsistent"]:
            print(f"FAIL: clients whose recorded epsilon does not match: {report['inconsistent']}")


def run(args: argparse.Namespace) -> int:
    """Audit the ledger; 0 if every client is within budget and consistent."""
    if args.empirical:
        return run_empirical(args)
    path: Path = args.run_dir
    ledger = path / LEDGER_FILENAME if path.is_dir() else path
    if not ledger.exists():
        raise LedgerError(f"no ledger at {ledger}")
    entries = read_ledger(ledger)
    report = audit_ledger(entries)
    if not args.no_plot:
        from securefl.federation.plots import plot_epsilon

        per_client: dict[int, list[tuple[int, float]]] = {}
        for entry in entries:
            per_client.setdefault(entry.client_id, []).append((entry.round, entry.epsilon))
        budgets = {e.epsilon_budget for e in entries if e.epsilon_budget is not None}
        plot_path = ledger.parent / PLOT_NAME
        plot_epsilon(plot_path, per_client, budget=min(budgets) if budgets else None,
                     title=f"epsilon per round (delta {entries[0].delta:g})")
        report["plot"] = str(plot_path)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_report(report, ledger)
        if "plot" in report:
            print(f"wrote {report['plot']}")
    return 0 if report["ok"] else 1
