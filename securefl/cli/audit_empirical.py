"""``securefl audit --empirical RUN_DIR``: a one-run canary audit of one
client's DP-SGD, beside the accountant's epsilon.

Reads the run's configuration (``checkpoint.pt``, else ``metrics.json``), the
client's ledger rows (noise multiplier, sample rate, steps, history) and the
model architecture and weights (``checkpoint.pt``); rebuilds the client's
data from the configured data set and split; trains the client once, as
recorded, with white-box gradient canaries (see
:mod:`securefl.privacy.empirical`); and reports the empirical epsilon lower
bound (95%) beside the claimed epsilon, with a plot.

Nothing is written into the run directory unless ``--plot`` or ``--output``
names a path there.  Exit status: 0 when no violation is found, 1 when the
lower bound exceeds the claimed epsilon (the claim is refuted at 95%), 2 when
the run cannot be audited.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from securefl.privacy.ledger import LEDGER_FILENAME, LedgerEntry, entries_by_client, read_ledger
from securefl.privacy.options import Adjacency

__all__ = ["add_arguments", "load_client_target", "run_empirical"]

DEFAULT_CANARIES = 1000


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be >= 2, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--empirical`` flags to the ``audit`` parser (``--plot FILE``
and ``--no-plot`` are the ``audit`` parser's own, shared by both audits)."""
    group = parser.add_argument_group(
        "empirical audit (--empirical)",
        "one-run canary audit of one client (Steinke, Nasr, Jagielski 2023): trains it once"
        " as recorded, with white-box gradient canaries, and reports a 95% lower bound on"
        " its epsilon beside the claimed epsilon; exit 1 if the bound exceeds the claim")
    group.add_argument("--empirical", action="store_true",
                       help="run the empirical audit instead of the ledger audit")
    group.add_argument("--client", type=int, default=None, metavar="ID",
                       help="client to audit (default: the one with the largest claimed epsilon)")
    group.add_argument("--canaries", type=_positive_int, default=DEFAULT_CANARIES, metavar="M",
                       help=f"number of canaries (default {DEFAULT_CANARIES}; at most the"
                            " model's parameter count)")
    group.add_argument("--output", type=Path, default=None, metavar="FILE",
                       help="also write the JSON report to FILE")
    group.add_argument("--audit-seed", type=int, default=None, metavar="N",
                       help="seed of the audit's canaries (default: fresh); never seeds DP noise")


@dataclasses.dataclass
class ClientTarget:
    """What the empirical audit needs to retrain one client as recorded."""

    client_id: int
    model: Any
    features: Any
    labels: Any
    dp_config: Any
    rounds: int
    history: list[list[float]]
    ledger_epsilon: dict[str, float]
    description: str


def _load_config(run_dir: Path) -> Any:
    from securefl.federation.checkpoint import CHECKPOINT_FILENAME, load_checkpoint
    from securefl.federation.simulation import METRICS_FILENAME, SimulationConfig
    from securefl.privacy.empirical import EmpiricalAuditError

    raw: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None
    if (run_dir / CHECKPOINT_FILENAME).exists():
        try:
            checkpoint = load_checkpoint(run_dir / CHECKPOINT_FILENAME)
        except Exception as exc:  # torch raises many kinds on a corrupt file
            raise EmpiricalAuditError(
                f"cannot read {run_dir / CHECKPOINT_FILENAME}: {exc}") from None
        raw = (checkpoint.get("extra") or {}).get("config")
    if raw is None and (run_dir / METRICS_FILENAME).exists():
        with open(run_dir / METRICS_FILENAME, encoding="utf-8") as handle:
            raw = json.load(handle).get("config")
    if not isinstance(raw, dict):
        raise EmpiricalAuditError(f"{run_dir} holds no run configuration (checkpoint.pt or"
                                  " metrics.json): the client's training cannot be reproduced")
    names = {f.name for f in dataclasses.fields(SimulationConfig)}
    try:
        config = SimulationConfig(**{k: v for k, v in raw.items() if k in names})
    except (TypeError, ValueError) as exc:
        raise EmpiricalAuditError(f"{run_dir}: unusable run configuration: {exc}") from None
    return config, checkpoint


def load_client_target(run_dir: Path, client_id: int | None) -> ClientTarget:
    """Rebuild one client's training from a run directory: its configuration,
    data shard, model (architecture and weights from the checkpoint) and its
    recorded DP-SGD parameters (ledger).

    Raises:
        EmpiricalAuditError: no ledger, no configuration, an unknown client, a
            client that never trained, or parameters that changed over rounds.
    """
    from securefl.federation.model import make_mlp
    from securefl.federation.simulation import load_data
    from securefl.privacy.client import make_private_compatible
    from securefl.privacy.empirical import EmpiricalAuditError

    ledger = run_dir / LEDGER_FILENAME
    if not run_dir.is_dir() or not ledger.exists():
        raise EmpiricalAuditError(f"{run_dir} is not a run directory holding {LEDGER_FILENAME}")
    by_client = entries_by_client(read_ledger(ledger))
    if not by_client:
        raise EmpiricalAuditError(f"{ledger} is empty: no client to audit")
    if client_id is None:
        client_id = max(by_client, key=lambda c: (by_client[c][-1].epsilon, -c))
    if client_id not in by_client:
        raise EmpiricalAuditError(f"client {client_id} is not in {ledger}"
                                  f" (clients {sorted(by_client)})")
    rows: list[LedgerEntry] = by_client[client_id]
    trained = [r for r in rows if r.local_steps > 0]
    rounds = len({r.round for r in trained})
    if not trained:
        raise EmpiricalAuditError(f"client {client_id} never trained: nothing to audit")
    parameters = {(r.noise_multiplier, r.sample_rate) for r in trained}
    if len(parameters) != 1:
        raise EmpiricalAuditError(f"client {client_id} trained with several (sigma, q) pairs"
                                  f" {sorted(parameters)}: not supported")
    (sigma, _), = parameters
    config, checkpoint = _load_config(run_dir)
    data = load_data(config)
    if not 1 <= client_id <= len(data.clients):
        raise EmpiricalAuditError(f"client {client_id} has no data shard in this run")
    features, labels = data.clients[client_id - 1]
    model = make_private_compatible(
        make_mlp(data.num_features, data.num_classes, config.hidden, seed=config.seed))
    if checkpoint is not None:
        try:
            model.load_state_dict(checkpoint["model"])
        except (KeyError, RuntimeError) as exc:
            raise EmpiricalAuditError(f"the checkpoint's model does not match the configured"
                                      f" architecture: {exc}") from None
    dp = dataclasses.replace(config.dp_config(), noise_multiplier=float(sigma),
                             target_epsilon=None, epsilon_budget=None,
                             planned_rounds=rounds)
    last = rows[-1]
    recorded = {"rdp": last.epsilon_rdp}
    if last.epsilon_prv is not None:
        recorded["prv"] = last.epsilon_prv
    if last.adjacency != Adjacency.ADD_REMOVE_ONE.value:
        # The canary game tests adding or removing one canary; a replace-one
        # row records replace-one epsilons, so the claim tested is the
        # add/remove-one epsilon of the same recorded history.
        from securefl.privacy.accounting import AccountantKind, epsilon

        recorded = {"rdp": epsilon(last.history, last.delta, AccountantKind.RDP)}
        prv = epsilon(last.history, last.delta, AccountantKind.PRV)
        if not math.isnan(prv):
            recorded["prv"] = prv
    return ClientTarget(
        client_id=client_id, model=model, features=features, labels=labels, dp_config=dp,
        rounds=rounds, history=[list(h) for h in last.history],
        ledger_epsilon=recorded,
        description=f"{data.name}, {config.num_clients} clients, seed {config.seed}",
    )


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _default_plot(run_dir: Path, client_id: int, output: Path | None) -> Path | None:
    if output is not None:
        return output.with_suffix(".png")
    path = Path.cwd() / f"empirical-audit-client{client_id}.png"
    if path.resolve().is_relative_to(run_dir.resolve()):
        return None  # never into the audited run directory unless asked
    return path


def run_empirical(args: argparse.Namespace) -> int:
    """Run the empirical audit; 0 if no violation is found, 1 if the empirical
    lower bound exceeds the claimed epsilon.

    Raises:
        SecureFLError: when the run cannot be audited (exit status 2).
    """
    from securefl.privacy.empirical import plot_empirical_audit, run_canary_audit

    run_dir: Path = args.run_dir
    target = load_client_target(run_dir, args.client)
    result = run_canary_audit(
        target.model, target.features, target.labels, target.dp_config,
        rounds=target.rounds, client_id=target.client_id, canaries=args.canaries,
        seed=args.audit_seed, expected_history=target.history,
    )
    report = {"run_dir": str(run_dir), **result.to_json(),
              "ledger_epsilon": {k: _finite(v) for k, v in target.ledger_epsilon.items()}}
    plot = None
    if not args.no_plot:
        plot = args.plot or _default_plot(run_dir, target.client_id, args.output)
        if plot is not None:
            plot.parent.mkdir(parents=True, exist_ok=True)
            plot_empirical_audit(result, plot, title=f"{run_dir}: {target.description}")
    report["plot"] = str(plot) if plot is not None else None
    text = json.dumps(report, indent=2, allow_nan=False)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n", encoding="utf-8")
    if args.json:
        print(text)
    else:
        _print(result, report, run_dir)
    return 1 if result.violation else 0


def _print(result: Any, report: dict[str, Any], run_dir: Path) -> None:
    claims = ", ".join(f"{v:.3f} (Opacus {k.upper()})"
                       for k, v in sorted(result.claimed_epsilon.items()))
    print(f"empirical privacy audit of client {result.client_id} in {run_dir}")
    print(f"  one training run as recorded: sigma {result.noise_multiplier:g}, sample rate"
          f" {result.sample_rate:.4g}, clip {result.max_grad_norm:g}, {result.rounds} rounds,"
          f" {result.steps} DP-SGD steps, delta {result.delta:g}")
    print(f"  {result.canaries} white-box gradient canaries, {result.included} included"
          f" (each with probability 1/2), in batches {result.canary_samples} times")
    print(f"  claimed epsilon: {claims}")
    print()
    print(f"  {'guesses':>7}  {'correct':>7}  {'lower bound':>11}  {'ceiling':>7}")
    for g in result.guesses:
        print(f"  {g.guesses:>7}  {g.correct:>7}  {g.epsilon_lower_bound:>11.3f}"
              f"  {g.epsilon_ceiling:>7.3f}")
    print(f"  (each rule at {result.guesses[0].confidence:.2%}, Bonferroni:"
          f" {result.confidence:.0%} overall)")
    print()
    print(f"  empirical epsilon lower bound ({result.confidence:.0%}):"
          f" {result.epsilon_lower_bound:.3f}; claimed {result.claimed:.3f};"
          f" this audit's ceiling {result.epsilon_ceiling:.3f}")
    if result.violation:
        print(f"VIOLATION: the training leaks more than claimed: epsilon >="
              f" {result.epsilon_lower_bound:.3f} > {result.claimed:.3f} at"
              f" {result.confidence:.0%} confidence")
    else:
        print("OK: no violation found (a lower bound below the claim does not prove the claim)")
        if result.claimed > result.epsilon_ceiling:
            print(f"  note: the claim exceeds what {result.canaries} canaries can ever refute"
                  f" ({result.epsilon_ceiling:.3f})")
    if report["plot"]:
        print(f"wrote {report['plot']}")
    print(f"audit time {result.seconds:.1f} s")
