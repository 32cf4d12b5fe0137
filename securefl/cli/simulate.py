"""``securefl simulate``: a private federation on a real data set, in process.

Clients train with Opacus DP-SGD on a non-IID (Dirichlet) split of
scikit-learn's bundled digits, encode their updates in Z_2^k, and the server
learns only their sum through Bonawitz secure aggregation, while clients drop
out at random protocol rounds.  Writes metrics.json, ledger.jsonl,
checkpoint.pt and accuracy_per_round.png, exported from the run store
run.sqlite, which commits each round in one transaction; check the privacy
with ``securefl audit RUN_DIR``.

With ``--privacy user-level`` or ``both`` (user-level DP needs many clients),
--clients, --client-sample-rate, --bits and --rounds that are not given
default to 300 clients (about 5 digits each) sampled with probability 0.3
per round, in Z_2^16, over 20 rounds; one line says which were applied, and a
flag given wins (docs/user-level-dp.md).

``securefl simulate --resume RUN_DIR`` continues a run that was killed from
its last committed round, with its own configuration (a flag that differs
from it is refused): the global model, the server optimizer, every client's
accountant and budget, the dropout schedule and the ledger continue; a round
caught in flight is settled as aborted (its privacy charge kept) and re-run
under the next round number.

Exit status:
  0  the run completed at least one round, and no round was refused by
     every client
  1  no round completed, or every client refused some round (privacy
     budgets exhausted): the message says which and why
  2  usage or configuration error (nothing ran, or the resume was refused)
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

USER_LEVEL_DEFAULTS: dict[str, object] = {
    "clients": 300, "client_sample_rate": 0.3, "bits": 16, "rounds": 20}
"""Flag destination -> its default when user-level DP is on (``--privacy
user-level`` or ``both``) and the flag is not given; mirrors
:data:`securefl.federation.simulation.USER_LEVEL_DEFAULTS` (a test keeps the
two equal).  ``--client-sample-rate`` keeps its default 1 when
``--threshold``, ``--graph harary`` or ``--roster-delivery merkle`` is given
(sampled rounds take none of them)."""

if TYPE_CHECKING:
    from securefl.federation.simulation import RoundReport, SimulationConfig

SECURITY_MODES = ["semi-honest", "active"]
"""Mirrors :class:`securefl.protocol.SecurityMode` (a test keeps them equal)."""
GRAPHS = ["complete", "harary"]
"""Mirrors :class:`securefl.federation.simulation.GraphKind` (a test keeps them equal)."""
ROSTER_DELIVERIES = ["full", "merkle"]
"""Mirrors :data:`securefl.protocol.config.ROSTER_DELIVERIES` (a test keeps them equal)."""

EXIT_OK = 0
EXIT_INCOMPLETE = 1
"""No round completed, or every client refused some round."""

_DEFAULTS: dict[str, object] = {}
"""The defaults of the flags that configure the federation (their parser
default is None, so that a flag given on the command line can be told from
one left out: ``--resume`` refuses the first when it differs from the run)."""

_CONFIG_KEYS = {
    "clients": "num_clients", "rounds": "rounds", "dropout": "dropout",
    "noise_multiplier": "noise_multiplier", "target_epsilon": "target_epsilon",
    "delta": "delta", "epsilon_budget": "epsilon_budget", "accountant": "accountant",
    "max_grad_norm": "max_grad_norm", "sample_rate": "sample_rate",
    "batch_size": "batch_size", "local_epochs": "local_epochs", "lr": "lr",
    "weighting": "weighting", "server_optimizer": "server_optimizer", "server_lr": "server_lr",
    "server_momentum": "server_momentum", "bits": "bits", "frac_bits": "frac_bits",
    "clip_range": "clip_range", "no_secure_aggregation": "secure", "threshold": "threshold",
    "alpha": "alpha", "dataset": "dataset", "seed": "seed",
    "insecure_reproducible_noise": "insecure_reproducible_noise",
    "privacy": "privacy", "user_epsilon": "user_epsilon", "user_clip": "user_clip",
    "client_sample_rate": "client_sample_rate",
    "mode": "security_mode", "graph": "graph", "graph_degree": "graph_degree",
    "roster_delivery": "roster_delivery",
}
"""Flag destination -> the :class:`SimulationConfig` field it sets."""


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
    fed.add_argument("--clients", type=_positive_int, default=10,
                     help="clients (default 10; 300 with --privacy user-level or both)")
    fed.add_argument("--rounds", type=_positive_int, default=10,
                     help="rounds (default 10; 20 with --privacy user-level or both)")
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
                     help="minimum clients per protocol round, the Shamir threshold"
                          " (default: complete graph floor(n/2)+1 semi-honest,"
                          " floor(2n/3)+1 active; harary floor((k+1)/2)+1 with"
                          " --graph-degree K, else the parameter finder's t)")
    fed.add_argument("--no-secure-aggregation", action="store_true",
                     help="sum the updates in plain floats instead (for comparison)")
    sec = p.add_argument_group("secure aggregation")
    sec.add_argument("--mode", choices=SECURITY_MODES, default="semi-honest",
                     help="semi-honest (default): secure against a server that follows the"
                          " protocol; active: clients sign their keys and check a consistency"
                          " round, secure against a server that lies about who dropped"
                          " (each client gets a fresh Ed25519 identity per session)")
    sec.add_argument("--graph", choices=GRAPHS, default="complete",
                     help="who masks with whom: complete (default, Bonawitz et al.), or"
                          " harary (SecAgg+: each client masks with and shares its keys to"
                          " only K others, so work per client grows with log n, not n)")
    sec.add_argument("--graph-degree", type=_positive_int, default=None, metavar="K",
                     help="with --graph harary: the degree K (even, 2..n-2); default: chosen"
                          " with the threshold by find_graph_parameters for --clients and"
                          " --dropout (no corrupt clients; a semi-malicious server in active"
                          " mode)")
    sec.add_argument("--roster-delivery", choices=ROSTER_DELIVERIES, default="full",
                     help="how each client receives the key roster: full (default), the whole"
                          " roster (O(n) bytes per client); or merkle, with --graph harary only:"
                          " its own and its neighbours' entries with Merkle inclusion proofs"
                          " against a root the session id binds (O(K log n) bytes per client;"
                          " a session whose graph is not sparse for its roster uses full, and"
                          " each round's entry in metrics.json says which one it used)")
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
    dp.add_argument("--delta", type=_positive_float, default=1e-5,
                    help="delta, at most 1e-3 (default 1e-5)")
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
    user = p.add_argument_group("user-level DP (Skellam noise inside the secure sum;"
                                " docs/user-level-dp.md)")
    user.add_argument("--privacy", choices=["record-level", "user-level", "both"],
                      default="record-level",
                      help="record-level (default): DP-SGD only; both: also user-level DP, each"
                           " client's whole update clipped, rotated and rounded into Z_2^bits"
                           " and Skellam noise added by the sessions, both epsilons reported;"
                           " user-level: user-level DP alone, the clients train with plain"
                           " local SGD (no per-example clipping or noise) and the ledger has no"
                           " record-level rows (there is no record-level guarantee beyond what"
                           " user-level DP implies).  With user-level or both, the flags"
                           " --clients, --rounds, --client-sample-rate and --bits left out"
                           " default to a federation of 300 clients that the noise fits (one"
                           " line says which were applied)")
    user.add_argument("--user-epsilon", type=_positive_float, default=8.0,
                      help="user-level target epsilon over the run, at --delta (default 8)")
    user.add_argument("--user-clip", type=_positive_float, default=1.0,
                      help="L2 bound of a client's whole update (default 1.0)")
    user.add_argument("--client-sample-rate", type=_positive_float, default=1.0,
                      metavar="Q",
                      help="user-level only: each round each client takes part independently"
                           " with probability Q (Poisson sampling from the OS CSPRNG, never"
                           " --seed); the session runs over the sampled cohort, the user-level"
                           " epsilon is amplified by Q (against whoever does not see the"
                           " cohort; the ledger also records it without amplification, against"
                           " the server).  Default 1: every client in every round; 0.3 with"
                           " --privacy user-level or both (unless --threshold, --graph"
                           " harary or --roster-delivery merkle is given)")
    enc = p.add_argument_group("encoding")
    enc.add_argument("--bits", type=int, default=32,
                     help="ring Z_2^bits (default 32; 16 with --privacy user-level or both)")
    enc.add_argument("--frac-bits", type=int, default=None,
                     help="fractional bits (default: the most that cannot overflow, <= 24)")
    enc.add_argument("--clip-range", type=_positive_float, default=4.0,
                     help="update values are clipped to +/- this before encoding (default 4)")
    out = p.add_argument_group("output")
    out.add_argument("-o", "--output-dir", type=Path, default=None,
                     help="where to write the run (default runs/simulate-<time>)")
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    out.add_argument("--resume", type=Path, default=None, metavar="RUN_DIR",
                     help="continue the run in RUN_DIR (killed, or stopped) from its last"
                          " committed round, with its own configuration")
    for action in p._actions:  # tell a given flag from a default (see _DEFAULTS)
        if action.dest in _CONFIG_KEYS:
            _DEFAULTS[action.dest] = action.default
            action.default = None
    p.set_defaults(func=run)


def _arg(args: argparse.Namespace, dest: str) -> object:
    value = getattr(args, dest)
    return _DEFAULTS.get(dest) if value is None else value


def given_config(args: argparse.Namespace) -> dict[str, object]:
    """The configuration fields the command line sets explicitly, as JSON
    values (``--no-secure-aggregation`` sets ``secure`` to false)."""
    given: dict[str, object] = {}
    for dest, key in _CONFIG_KEYS.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        given[key] = (not value) if dest == "no_secure_aggregation" else value
    return given


def user_level_defaults(args: argparse.Namespace) -> dict[str, object]:
    """The :data:`USER_LEVEL_DEFAULTS` that apply to ``args`` (flag
    destination -> value): none unless ``--privacy`` is user-level or both,
    and never one whose flag is given (an explicit flag always wins)."""
    if getattr(args, "privacy", None) not in ("user-level", "both"):
        return {}
    sampling_refused = (getattr(args, "threshold", None) is not None
                        or getattr(args, "graph", None) not in (None, "complete")
                        or getattr(args, "roster_delivery", None) == "merkle")
    return {dest: value for dest, value in USER_LEVEL_DEFAULTS.items()
            if getattr(args, dest, None) is None
            and not (dest == "client_sample_rate" and sampling_refused)}


def describe_defaults(applied: dict[str, object]) -> str:
    """One line naming the user-level defaults applied, as flags."""
    flags = " ".join(f"--{dest.replace('_', '-')} {value:g}" if isinstance(value, float)
                     else f"--{dest.replace('_', '-')} {value}"
                     for dest, value in applied.items())
    return (f"securefl simulate: user-level default federation (flags not given): {flags};"
            " a flag given wins")


def config_from_args(args: argparse.Namespace) -> SimulationConfig:
    """Build the :class:`SimulationConfig` the flags describe: a flag left
    out takes its default, or with ``--privacy user-level`` or ``both`` its
    user-level default (:func:`user_level_defaults`).

    Raises:
        ConfigurationError: on inconsistent values.
    """
    from securefl.federation.simulation import SimulationConfig

    values = {key: _arg(args, dest) for dest, key in _CONFIG_KEYS.items()}
    for dest, value in user_level_defaults(args).items():
        values[_CONFIG_KEYS[dest]] = value
    values["secure"] = not values["secure"]  # the flag is --no-secure-aggregation
    values["insecure_reproducible_noise"] = bool(values["insecure_reproducible_noise"])
    return SimulationConfig(**values)  # type: ignore[arg-type]


def _resume_config(args: argparse.Namespace) -> SimulationConfig:
    """The configuration of the run ``--resume`` names, after checking that
    no flag given on the command line differs from it.

    Raises:
        ResumeMismatchError: naming the differing keys.
        RunStoreError: when the directory holds no run.
    """
    from securefl.federation.round import RoundRecorder
    from securefl.federation.runstore import ResumeMismatchError
    from securefl.federation.simulation import SimulationConfig

    run_dir = args.resume
    if args.output_dir is not None and Path(args.output_dir) != Path(run_dir):
        raise ResumeMismatchError(f"--resume {run_dir} writes to its own directory, not"
                                  f" -o {args.output_dir}", ["output_dir"])
    stored = SimulationConfig.from_json(RoundRecorder.stored_config(run_dir))
    # to_json leaves out roster_delivery "full"; an explicit flag compares to it
    recorded = {**stored.to_json(), "roster_delivery": stored.roster_delivery}
    differing = sorted(key for key, value in given_config(args).items()
                       if recorded.get(key) != value)
    if differing:
        detail = ", ".join(f"{k}: run {recorded.get(k)!r}, given {given_config(args)[k]!r}"
                           for k in differing)
        raise ResumeMismatchError(f"cannot resume {run_dir} with another configuration"
                                  f" ({detail}); leave the flags out to use the run's own",
                                  differing)
    return stored


def why_incomplete(reports: list[RoundReport], num_clients: int) -> str | None:
    """Why a run's exit status is :data:`EXIT_INCOMPLETE`, or None: no round
    completed (every round aborted: the reasons), or every client refused
    some round (their budgets exhausted)."""
    refused_all = [r.round for r in reports if len(r.refused) == num_clients]
    if not reports or all(r.aborted for r in reports):
        reasons = sorted({r.abort_reason for r in reports if r.abort_reason})
        detail = "; ".join(reasons[:3]) or "no round ran"
        if refused_all and len(refused_all) == len(reports):
            detail = ("every client refused every round: "
                      + next(iter(reports[0].refused.values())))
        return f"no round completed ({detail})"
    if refused_all:
        example = next(r for r in reports if r.round == refused_all[0])
        return (f"every client refused round(s) {', '.join(map(str, refused_all))}"
                f" ({next(iter(example.refused.values()))})")
    return None


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
        notes.append("ABORTED: model unchanged, privacy charges kept")
    sampled = sum(1 for c in report.clients if c.status is not Participation.NOT_SAMPLED)
    if sampled < len(report.clients):
        notes.append(f"sampled {sampled}/{num_clients}")
    survivors = f"{len(report.survivors)}/{num_clients}"
    eps = "-" if math.isnan(report.epsilon_max) else f"{report.epsilon_max:.2f}"
    return (f"{report.round:>5}  {report.accuracy:>8.3f}  {report.loss:>6.3f}  {survivors:>9}"
            f"  {eps:>7}  {report.seconds:>5.1f}s  {' '.join(notes) or '-'}")


def run(args: argparse.Namespace) -> int:
    """Run the federation, print the per-round table and the summary."""
    from securefl.federation.simulation import (
        METRICS_FILENAME,
        PLOT_FILENAME,
        preflight,
        resume_simulation,
        run_simulation,
    )

    config = _resume_config(args) if args.resume is not None else config_from_args(args)
    _, codec = preflight(config)  # refuse a bad configuration before printing anything
    applied = user_level_defaults(args) if args.resume is None else {}
    if applied:
        print(describe_defaults(applied))
    output = args.resume or args.output_dir or Path("runs") / time.strftime(
        "simulate-%Y%m%d-%H%M%S")
    privacy = (f"target epsilon {config.target_epsilon:g}" if config.target_epsilon is not None
               else f"noise multiplier {config.noise_multiplier:g}")
    print(f"securefl simulate: {config.num_clients} clients, {config.rounds} rounds,"
          f" {config.dataset.value} (non-IID, Dirichlet alpha {config.alpha:g}),"
          f" dropout {config.dropout:g}")
    aggregation = "PLAIN (no secure aggregation)"
    if config.secure:
        plan = config.secagg_plan()
        graph = "complete graph" if plan.degree is None else f"Harary graph k={plan.degree}"
        if plan.roster_delivery == "merkle":
            graph += ", Merkle rosters"
        threshold = (f"threshold {plan.threshold}" if config.client_sample_rate == 1.0
                     else "each round over its sampled cohort, threshold from its size")
        aggregation = f"secure ({config.security_mode.value}, {graph}, {threshold})"
    adjacency = config.adjacency.value
    if config.record_level:
        print(f"  DP-SGD: {privacy} at delta {config.delta:g} ({adjacency} adjacency, against a"
              f" server that knows the run config and every message), clip norm"
              f" {config.max_grad_norm:g}, sample rate {config.sample_rate:g}, weighting"
              f" {config.weighting.value}; server: {config.server_optimizer.value};"
              f" aggregation: {aggregation} in Z_2^{codec.bits}, {codec.frac_bits} fractional"
              f" bits, updates clipped to +/-{codec.clip:g}")
    else:
        print(f"  no DP-SGD (privacy user-level: plain local SGD, no record-level rows);"
              f" server: {config.server_optimizer.value}; aggregation: {aggregation}")
    if config.privacy.user_level:
        print(f"  user-level DP: target epsilon {config.user_epsilon:g} at delta"
              f" {config.delta:g} (zero-out one client), update clip {config.user_clip:g},"
              f" Z_2^{config.bits}, client sampling rate {config.client_sample_rate:g}")
    if config.insecure_reproducible_noise:
        print("  WARNING: --insecure-reproducible-noise: the DP noise, sampling and rounding"
              " are seeded from --seed; the server can regenerate and remove the noise, so"
              " there is NO differential privacy against it", file=sys.stderr)
    print(f"  output: {output}" + (" (resumed)" if args.resume is not None else ""))
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

    if args.resume is not None:
        result = resume_simulation(output, on_round=on_round, progress=progress)
    else:
        result = run_simulation(config, output, on_round=on_round, progress=progress)
    final = result.metrics["final"]
    prv = final["epsilon_max_prv"]
    print()
    print(f"final test accuracy {final['accuracy']:.3f} (loss {final['loss']:.3f})"
          f" after {final['rounds_completed']} completed and {final['rounds_aborted']}"
          " aborted rounds")
    pld = final.get("epsilon_max_pld")
    if not config.record_level:
        print("no record-level epsilon: the clients trained without DP-SGD (privacy"
              " user-level); the user-level epsilon below covers each client's whole update")
    elif config.adjacency.value == "replace-one":
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
    if config.privacy.value != "record-level":
        from securefl.privacy.ledger import load_ledger

        user_rows = load_ledger(Path(output) / LEDGER_FILENAME).effective_user_level()
        if user_rows:
            last = user_rows[-1]
            print(f"user-level epsilon at delta {last.delta:g} (skellam, zero-out one"
                  f" client, q={last.sample_rate:g}): {last.epsilon:.3f}"
                  f" ({last.epsilon_unsampled:.3f} without amplification, against the server)"
                  f" over {len(last.history)} charged rounds (ring Z_2^{last.bits}, gamma"
                  f" {last.gamma:.4g}, clip {last.clip:g})")
    print(f"wall time {final['wall_seconds']:.1f} s")
    print(f"wrote {output / METRICS_FILENAME}, {output / LEDGER_FILENAME},"
          f" {output / 'checkpoint.pt'}, {output / PLOT_FILENAME}")
    print(f"audit it: securefl audit {output}")
    incomplete = why_incomplete(result.rounds, config.num_clients)
    if incomplete is not None:
        print(f"securefl simulate: {incomplete}", file=sys.stderr)
        return EXIT_INCOMPLETE
    return EXIT_OK
