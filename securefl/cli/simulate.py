"""``securefl simulate``: a private federation on a real data set, in process.

Clients train with Opacus DP-SGD on a non-IID (Dirichlet) split of
scikit-learn's bundled digits, encode their updates in Z_2^k, and the server
learns only their sum through Bonawitz secure aggregation, while clients drop
out at random protocol rounds.  Writes metrics.json, ledger.jsonl,
checkpoint.pt and accuracy_per_round.png; check the privacy with
``securefl audit RUN_DIR``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

# Only light modules at import time: building the `securefl` parser must not
# load torch or Opacus.  The federation itself is imported in `run`.
from securefl.cli import help_text
from securefl.federation.optimizers import ServerOptimizerKind
from securefl.federation.options import DEFAULT_TARGET_EPSILON, DatasetName
from securefl.privacy.ledger import LEDGER_FILENAME, Participation
from securefl.privacy.options import AccountantKind, Weighting

DEFAULT_SAMPLE_RATE = 0.5
"""Mirrors :data:`securefl.privacy.client.DEFAULT_SAMPLE_RATE` (that module
imports torch; a test keeps the two equal)."""

if TYPE_CHECKING:
    from securefl.federation.simulation import RoundReport, SimulationConfig


_SHORT_ROUND = {
    "ADVERTISE_KEYS": "R0-advertise",
    "SHARE_KEYS": "R1-share",
    "MASKED_INPUT_COLLECTION": "R2-masked-input",
    "CONSISTENCY_CHECK": "R3-consistency",
    "UNMASKING": "R4-unmask",
}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``simulate`` sub-command."""
    p = sub.add_parser("simulate", help="run a private federation in process",
                       description=help_text(__doc__),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    fed = p.add_argument_group("federation")
    fed.add_argument("--clients", type=_positive_int, default=10, help="clients (default 10)")
    fed.add_argument("--rounds", type=_positive_int, default=10, help="rounds (default 10)")
    fed.add_argument("--dropout", type=_probability, default=0.2,
                     help="probability that a client drops out of a round, at a protocol"
                          " round drawn uniformly (default 0.2)")
    fed.add_argument("--alpha", type=_positive_float, default=0.5,
                     help="Dirichlet concentration of the non-IID split (default 0.5;"
                          " smaller is more skewed)")
    fed.add_argument("--dataset", choices=[d.value for d in DatasetName], default="digits",
                     help="embedded data set (default digits)")
    fed.add_argument("--seed", type=int, default=0,
                     help="seed of what protects nothing: the data split, the simulated"
                          " dropouts and the model's initial weights (default 0); DP noise,"
                          " sampling and rounding come from os.urandom")
    fed.add_argument("--threshold", type=_positive_int, default=None,
                     help="minimum clients per protocol round (default floor(n/2)+1)")
    fed.add_argument("--no-secure-aggregation", action="store_true",
                     help="sum the updates in plain floats instead (for comparison)")
    dp = p.add_argument_group("differential privacy (Opacus DP-SGD)")
    noise = dp.add_mutually_exclusive_group()
    noise.add_argument("--noise-multiplier", type=float, default=None,
                       help="sigma of DP-SGD (instead of --target-epsilon)")
    noise.add_argument("--target-epsilon", type=_positive_float, default=None,
                       help="epsilon every client may spend over all rounds; turned into a"
                            f" noise multiplier up front (default {DEFAULT_TARGET_EPSILON})")
    dp.add_argument("--epsilon-budget", type=_positive_float, default=None,
                    help="a client refuses any round that would take it past this epsilon"
                         " (default: the target epsilon; none with --noise-multiplier)")
    dp.add_argument("--delta", type=_positive_float, default=1e-5, help="delta (default 1e-5)")
    dp.add_argument("--accountant", choices=[a.value for a in AccountantKind], default="rdp",
                    help="accountant of the budget guard (default rdp; the ledger records"
                         " both rdp and prv)")
    dp.add_argument("--max-grad-norm", type=_positive_float, default=1.0,
                    help="per-sample clipping norm (default 1.0)")
    dp.add_argument("--sample-rate", type=_rate, default=DEFAULT_SAMPLE_RATE,
                    help="Poisson sample rate, the same public constant for every client"
                         f" (default {DEFAULT_SAMPLE_RATE:g}: a local epoch is"
                         f" {round(1 / DEFAULT_SAMPLE_RATE)} steps)")
    dp.add_argument("--batch-size", type=_positive_int, default=36,
                    help="public divisor of each step's noisy gradient sum, the same for every"
                         " client; smaller means larger local steps (default 36)")
    dp.add_argument("--insecure-reproducible-noise", action="store_true",
                    help="INSECURE, for debugging only: seed the DP noise, sampling and"
                         " rounding from --seed, so that anyone who knows the seed (the server"
                         " does) can regenerate and remove the noise; the DP guarantee is"
                         " void against them and `securefl audit` fails the run")
    dp.add_argument("--local-epochs", type=_positive_int, default=2,
                    help="local epochs per round (default 2)")
    dp.add_argument("--lr", type=_positive_float, default=1.0,
                    help="local learning rate (default 1.0)")
    srv = p.add_argument_group("server")
    srv.add_argument("--server-optimizer", choices=[k.value for k in ServerOptimizerKind],
                     default="fedavgm", help="default fedavgm (server momentum)")
    srv.add_argument("--server-lr", type=_positive_float, default=None,
                     help="server learning rate (default 0.1 for fedadam, else 1.0)")
    srv.add_argument("--server-momentum", type=float, default=0.5,
                     help="FedAvgM momentum (default 0.5)")
    srv.add_argument("--weighting", choices=[w.value for w in Weighting], default="uniform",
                     help="uniform (default): every update counts the same and nothing"
                          " reveals a client's record count; examples: weight by record count,"
                          " which then leaves the client in the clear, so epsilons are stated"
                          " (and the noise calibrated) for replace-one adjacency")
    enc = p.add_argument_group("encoding")
    enc.add_argument("--bits", type=int, default=32, help="ring Z_2^bits (default 32)")
    enc.add_argument("--frac-bits", type=int, default=None,
                     help="fractional bits (default: the most that cannot overflow, <= 24)")
    enc.add_argument("--clip-range", type=_positive_float, default=4.0,
                     help="update values are clipped to +/- this before encoding (default 4)")
    out = p.add_argument_group("output")
    out.add_argument("-o", "--output-dir", type=Path, default=None,
                     help="where to write the run (default runs/simulate-<time>)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> SimulationConfig:
    """Build the :class:`SimulationConfig` the flags describe.

    Raises:
        ConfigurationError: on inconsistent values.
    """
    from securefl.federation.simulation import SimulationConfig

    return SimulationConfig(
        num_clients=args.clients, rounds=args.rounds, dropout=args.dropout,
        noise_multiplier=args.noise_multiplier, target_epsilon=args.target_epsilon,
        delta=args.delta,
        epsilon_budget=args.epsilon_budget, accountant=AccountantKind(args.accountant),
        max_grad_norm=args.max_grad_norm, sample_rate=args.sample_rate,
        batch_size=args.batch_size,
        local_epochs=args.local_epochs, lr=args.lr, weighting=Weighting(args.weighting),
        server_optimizer=ServerOptimizerKind(args.server_optimizer), server_lr=args.server_lr,
        server_momentum=args.server_momentum, bits=args.bits, frac_bits=args.frac_bits,
        clip_range=args.clip_range, secure=not args.no_secure_aggregation,
        threshold=args.threshold, alpha=args.alpha, dataset=DatasetName(args.dataset),
        seed=args.seed, insecure_reproducible_noise=args.insecure_reproducible_noise,
    )


HEADER = (f"{'round':>5}  {'accuracy':>8}  {'loss':>6}  {'survivors':>9}  {'max eps':>7}"
          f"  {'time':>6}  dropped (where) / notes")


def format_round(report: RoundReport, num_clients: int) -> str:
    """One line of the per-round table."""
    notes = [f"{cid}@{_SHORT_ROUND.get(where, where)}"
             for cid, where in sorted(report.dropped.items())]
    for client in report.clients:
        if client.status is Participation.REFUSED_BUDGET:
            notes.append(f"{client.client_id}:refused(budget)")
        elif client.status is Participation.ENCODING_ERROR:
            notes.append(f"{client.client_id}:refused(encoding)")
    if report.aborted:
        notes.append("ABORTED: model, ledger, checkpoint unchanged")
    survivors = f"{len(report.survivors)}/{num_clients}"
    return (f"{report.round:>5}  {report.accuracy:>8.3f}  {report.loss:>6.3f}  {survivors:>9}"
            f"  {report.epsilon_max:>7.2f}  {report.seconds:>5.1f}s  {' '.join(notes) or '-'}")


def run(args: argparse.Namespace) -> int:
    """Run the federation, print the per-round table and the summary."""
    from securefl.federation.simulation import (
        METRICS_FILENAME,
        PLOT_FILENAME,
        preflight,
        run_simulation,
    )

    config = config_from_args(args)
    _, codec = preflight(config)  # refuse a bad configuration before printing anything
    output = args.output_dir or Path("runs") / time.strftime("simulate-%Y%m%d-%H%M%S")
    privacy = (f"target epsilon {config.target_epsilon:g}" if config.target_epsilon is not None
               else f"noise multiplier {config.noise_multiplier:g}")
    print(f"securefl simulate: {config.num_clients} clients, {config.rounds} rounds,"
          f" {config.dataset.value} (non-IID, Dirichlet alpha {config.alpha:g}),"
          f" dropout {config.dropout:g}")
    aggregation = "secure (Bonawitz)" if config.secure else "PLAIN (no secure aggregation)"
    adjacency = config.adjacency.value
    print(f"  DP-SGD: {privacy} at delta {config.delta:g} ({adjacency} adjacency, against a"
          f" server that knows the run config and every message), clip norm"
          f" {config.max_grad_norm:g}, sample rate {config.sample_rate:g}, weighting"
          f" {config.weighting.value}; server: {config.server_optimizer.value};"
          f" aggregation: {aggregation} in Z_2^{codec.bits}, {codec.frac_bits} fractional bits,"
          f" updates clipped to +/-{codec.clip:g}")
    if config.insecure_reproducible_noise:
        print("  WARNING: --insecure-reproducible-noise: the DP noise, sampling and rounding"
              " are seeded from --seed; the server can regenerate and remove the noise, so"
              " there is NO differential privacy against it", file=sys.stderr)
    print(f"  output: {output}")
    progress = not args.no_progress and sys.stderr.isatty()
    lines: list[str] = []

    def emit(text: str) -> None:
        if progress:
            from tqdm import tqdm

            tqdm.write(text)
        else:
            print(text, flush=True)

    emit(HEADER)

    def on_round(report: RoundReport) -> None:
        line = format_round(report, config.num_clients)
        lines.append(line)
        emit(line)

    result = run_simulation(config, output, on_round=on_round, progress=progress)
    final = result.metrics["final"]
    prv = final["epsilon_max_prv"]
    print()
    print(f"final test accuracy {final['accuracy']:.3f} (loss {final['loss']:.3f})"
          f" after {final['rounds_completed']} completed and {final['rounds_aborted']}"
          " aborted rounds")
    pld = final.get("epsilon_max_pld")
    if config.adjacency.value == "replace-one":
        print(f"max client epsilon at delta {final['delta']:g}, replace-one:"
              f" {final['epsilon_max']:.3f} (bound from Opacus RDP),"
              f" {pld if pld is None else format(pld, '.3f')} (dp-accounting PLD)")
    else:
        dpa = final["epsilon_max_dp_accounting"]
        print(f"max client epsilon at delta {final['delta']:g}, add/remove-one:"
              f" {final['epsilon_max']:.3f} (Opacus RDP),"
              f" {prv if prv is None else format(prv, '.3f')} (Opacus PRV),"
              f" {dpa if dpa is None else format(dpa, '.3f')} (dp-accounting RDP),"
              f" {pld if pld is None else format(pld, '.3f')} (dp-accounting PLD)")
    survivors = final["survivors_per_round"]
    print(f"survivors per round: {survivors} (mean {sum(survivors) / len(survivors):.1f});"
          f" dropouts injected: {sum(final['dropped_per_round'])};"
          f" refusals: {sum(final['refused_per_round'])}")
    print(f"wall time {final['wall_seconds']:.1f} s")
    print(f"wrote {output / METRICS_FILENAME}, {output / LEDGER_FILENAME},"
          f" {output / 'checkpoint.pt'}, {output / PLOT_FILENAME}")
    print(f"audit it: securefl audit {output}")
    return 0
