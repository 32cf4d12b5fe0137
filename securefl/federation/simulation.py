"""An in-process federation: Opacus DP-SGD clients, fixed-point encoding,
secure aggregation (or plain summation), a server optimizer, the privacy
ledger, checkpoints, metrics and plots.

Every round:

1. each client checks its budget guard and refuses the round if it would
   exceed its budget; the others load the global weights and train with
   DP-SGD (their accountants record the steps; noise and sampling from
   ``os.urandom`` unless ``insecure_reproducible_noise``);
2. each client encodes its update (secure mode: rounding with its own secret
   randomness) or clips and scales it (plain mode); its weight is 1 unless
   ``weighting`` is ``examples``;
   an update the encoder refuses (NaN, shape...) does not take part;
3. the injected dropouts (each client drops with probability ``dropout`` at a
   protocol round drawn uniformly) are passed to secure aggregation, which
   returns the sum of the survivors' updates or aborts;
4. on success: the server applies the average with its optimizer.  On
   abort: the global model and the server optimizer are left exactly as they
   were.  Either way the round is then settled in the ledger at once (one
   row per client; ``entered_sum = false`` for the clients of an aborted
   round, who spent privacy all the same), and the checkpoint (model
   unchanged after an abort) and metrics are rewritten for that round.

Privacy spend is durable before training: before any client trains, the
ledger gets (fsynced) one ``in-flight`` row per client about to train,
charging the steps it is about to take; a SIGKILL at any later point leaves
that charge on disk (see :mod:`securefl.privacy.ledger`).
"""

from __future__ import annotations

import copy
import enum
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from securefl.crashpoints import crash_point
from securefl.encoding import EncodedUpdate, FixedPointCodec, PlainUpdate, max_frac_bits
from securefl.errors import (
    AbortError,
    ConfigurationError,
    EncodingError,
    PrivacyBudgetExceededError,
)
from securefl.federation.checkpoint import CHECKPOINT_FILENAME, save_checkpoint
from securefl.federation.data import (
    FederatedData,
    load_breast_cancer_federated,
    load_digits_federated,
)
from securefl.federation.model import evaluate, make_mlp
from securefl.federation.optimizers import ServerOptimizerConfig, ServerOptimizerKind
from securefl.federation.options import DEFAULT_TARGET_EPSILON, DatasetName
from securefl.federation.plots import plot_accuracy
from securefl.federation.reporting import (
    client_summary,
    final_metrics,
    finite_or_none,
    ledger_epsilons,
    write_json_atomic,
)
from securefl.federation.server import AggregationMode, Server
from securefl.privacy.accounting import AccountantKind, HistoryRow
from securefl.privacy.budget import compose
from securefl.privacy.client import (
    DEFAULT_SAMPLE_RATE,
    DPConfig,
    PrivateClient,
    Weighting,
    adjacency_for,
    make_private_compatible,
)
from securefl.privacy.ledger import LEDGER_FILENAME, LedgerEntry, Participation, PrivacyLedger
from securefl.privacy.options import Adjacency
from securefl.protocol import Round

__all__ = [
    "DEFAULT_TARGET_EPSILON",
    "METRICS_FILENAME",
    "PLOT_FILENAME",
    "ClientRoundReport",
    "DatasetName",
    "RoundReport",
    "SimulationConfig",
    "SimulationResult",
    "dropout_schedule",
    "load_data",
    "preflight",
    "run_simulation",
]

METRICS_FILENAME = "metrics.json"
PLOT_FILENAME = "accuracy_per_round.png"


@dataclass(frozen=True)
class SimulationConfig:
    """Everything a simulated federation needs.  At most one of
    ``noise_multiplier`` and ``target_epsilon`` is given; with neither, every
    client targets :data:`DEFAULT_TARGET_EPSILON`.  ``server_lr`` defaults to
    0.1 for FedAdam and 1.0 otherwise.

    Raises:
        ConfigurationError: on out-of-range or inconsistent values (checked
            when the simulation starts, before any training).
    """

    num_clients: int = 10
    rounds: int = 10
    dropout: float = 0.2
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    epsilon_budget: float | None = None
    accountant: AccountantKind = AccountantKind.RDP
    max_grad_norm: float = 1.0
    sample_rate: float = DEFAULT_SAMPLE_RATE
    batch_size: int = 36
    local_epochs: int = 2
    lr: float = 1.0
    weighting: Weighting = Weighting.UNIFORM
    server_optimizer: ServerOptimizerKind = ServerOptimizerKind.FEDAVGM
    server_lr: float | None = None
    server_momentum: float = 0.5
    bits: int = 32
    frac_bits: int | None = None
    clip_range: float = 4.0
    secure: bool = True
    threshold: int | None = None
    alpha: float = 0.5
    hidden: int = 64
    dataset: DatasetName = DatasetName.DIGITS
    seed: int = 0
    insecure_reproducible_noise: bool = False

    def __post_init__(self) -> None:
        for name, kind in (("accountant", AccountantKind), ("weighting", Weighting),
                           ("server_optimizer", ServerOptimizerKind), ("dataset", DatasetName)):
            try:
                object.__setattr__(self, name, kind(getattr(self, name)))
            except ValueError:
                choices = ", ".join(k.value for k in kind)
                raise ConfigurationError(
                    f"{name} must be one of {choices}, got {getattr(self, name)!r}"
                ) from None
        if self.server_lr is None:
            lr = 0.1 if self.server_optimizer is ServerOptimizerKind.FEDADAM else 1.0
            object.__setattr__(self, "server_lr", lr)
        if self.noise_multiplier is None and self.target_epsilon is None:
            object.__setattr__(self, "target_epsilon", DEFAULT_TARGET_EPSILON)
        if self.num_clients < 2:
            raise ConfigurationError(f"need at least 2 clients, got {self.num_clients}")
        if self.rounds < 1:
            raise ConfigurationError(f"need at least 1 round, got {self.rounds}")
        if not 0.0 <= self.dropout <= 1.0:
            raise ConfigurationError(f"dropout probability must be in [0, 1], got {self.dropout}")
        if not self.clip_range > 0:
            raise ConfigurationError(f"clip range must be > 0, got {self.clip_range}")

    def dp_config(self) -> DPConfig:
        """The clients' DP-SGD configuration (FedSGD: one step at lr 1)."""
        fedsgd = self.server_optimizer is ServerOptimizerKind.FEDSGD
        return DPConfig(
            max_grad_norm=self.max_grad_norm, noise_multiplier=self.noise_multiplier,
            target_epsilon=self.target_epsilon, delta=self.delta,
            planned_rounds=self.rounds, sample_rate=self.sample_rate,
            batch_size=self.batch_size, local_epochs=self.local_epochs,
            max_local_steps=1 if fedsgd else None, lr=1.0 if fedsgd else self.lr,
            accountant=self.accountant, epsilon_budget=self.epsilon_budget,
            insecure_reproducible_noise=self.insecure_reproducible_noise,
        )

    @property
    def adjacency(self) -> Adjacency:
        """The adjacency every epsilon of this federation is stated for."""
        return adjacency_for(self.weighting)

    def to_json(self) -> dict[str, Any]:
        """The configuration as JSON-ready values."""
        return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class ClientRoundReport:
    """One client's part in one round.

    ``status`` is a :class:`Participation`; ``detail`` explains a refusal or
    an encoding error; ``dropped_at`` is the injected dropout round, if any.
    Epsilons are stated for the federation's adjacency.  It holds nothing a
    client keeps to itself (no loss, record count or clip count): only what
    the server learns anyway.
    """

    client_id: int
    status: Participation
    entered_sum: bool
    dropped_at: Round | None
    epsilon_rdp: float
    epsilon_prv: float | None
    detail: str = ""


@dataclass(frozen=True)
class RoundReport:
    """What happened in one round (also one entry of ``metrics.json``)."""

    round: int
    aborted: bool
    accuracy: float
    loss: float
    survivors: tuple[int, ...]
    clients: tuple[ClientRoundReport, ...]
    epsilon_max: float
    epsilon_max_prv: float | None
    delta: float
    seconds: float
    abort_reason: str = ""

    @property
    def dropped(self) -> dict[int, str]:
        """Client id -> protocol round at which it dropped."""
        return {c.client_id: c.dropped_at.name for c in self.clients if c.dropped_at is not None}

    @property
    def refused(self) -> dict[int, str]:
        """Client id -> why it did not take part (budget guard or encoder)."""
        return {c.client_id: c.detail for c in self.clients
                if c.status in (Participation.REFUSED_BUDGET, Participation.ENCODING_ERROR)}

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values for ``metrics.json``."""
        return {
            "round": self.round,
            "aborted": self.aborted,
            "abort_reason": self.abort_reason,
            "accuracy": self.accuracy,
            "loss": self.loss,
            "epsilon_max": finite_or_none(self.epsilon_max),
            "epsilon_max_prv": finite_or_none(self.epsilon_max_prv),
            "delta": self.delta,
            "survivors": list(self.survivors),
            "num_survivors": len(self.survivors),
            "dropped": {str(k): v for k, v in self.dropped.items()},
            "refused": {str(k): v for k, v in self.refused.items()},
            "seconds": round(self.seconds, 3),
        }


@dataclass
class SimulationResult:
    """The outcome of :func:`run_simulation`.

    Attributes:
        metrics: the content of ``metrics.json``.
        rounds: one report per round.
        model: the final global model.
        output_dir: where the files were written.
        clients: the simulated clients themselves, with their data and
            accountants.  The caller of the simulator plays the whole world,
            not the server: ``metrics``, ``rounds`` and the files hold only
            what the server learns; ``clients`` is everything else.
    """

    metrics: dict[str, Any]
    rounds: list[RoundReport]
    model: torch.nn.Module
    output_dir: Path
    clients: list[PrivateClient] = field(repr=False, default_factory=list)

    @property
    def final_accuracy(self) -> float:
        """Test accuracy of the final global model."""
        return float(self.metrics["final"]["accuracy"])


def load_data(config: SimulationConfig) -> FederatedData:
    """The configured data set, split across the clients.

    Raises:
        ConfigurationError: see :func:`securefl.federation.data.dirichlet_split`.
    """
    if config.dataset is DatasetName.BREAST_CANCER:
        return load_breast_cancer_federated(config.num_clients, alpha=config.alpha,
                                            seed=config.seed)
    return load_digits_federated(config.num_clients, alpha=config.alpha, seed=config.seed)


def preflight(config: SimulationConfig, data: FederatedData | None = None,
              model: torch.nn.Module | None = None) -> tuple[torch.nn.Module, FixedPointCodec]:
    """Check everything that can be checked before training: the data split,
    the model (made Opacus-compatible: e.g. BatchNorm replaced by GroupNorm
    with ``ModuleValidator.fix``, or refused with Opacus's explanation) and
    the encoding's bit budget.

    Args:
        config: the federation.
        data: the federated data (default: ``config.dataset``).
        model: the initial global model (default: an MLP with
            ``config.hidden`` units, seeded with ``config.seed``); it is not
            modified (a fixed copy is returned when Opacus needs one).

    Returns:
        the initial global model and the codec the federation will use.

    Raises:
        ConfigurationError: on an invalid configuration, an impossible split,
            or a model Opacus cannot train.
        EncodingError: when the sum of the clients' updates could overflow.
    """
    data = data if data is not None else load_data(config)
    config.dp_config()
    if model is None:
        model = make_mlp(data.num_features, data.num_classes, config.hidden, seed=config.seed)
    model = make_private_compatible(model)
    max_weight = max(data.client_sizes) if config.weighting is Weighting.EXAMPLES else 1
    frac_bits = config.frac_bits
    if frac_bits is None:
        frac_bits = min(24, max_frac_bits(bits=config.bits, clip=config.clip_range,
                                          num_clients=config.num_clients))
    codec = FixedPointCodec(
        shapes=tuple(tuple(p.shape) for p in model.parameters()), bits=config.bits,
        frac_bits=frac_bits, clip=config.clip_range, num_clients=config.num_clients,
        max_weight=max_weight,
    )
    return model, codec


def dropout_schedule(config: SimulationConfig) -> list[dict[int, Round]]:
    """Per round, client id -> the protocol round it drops at.  Each client
    drops with probability ``config.dropout``, at a round drawn uniformly from
    :class:`Round`; drawn from a generator seeded with ``config.seed`` only,
    so a secure and a plain run see the same schedule."""
    rng = np.random.default_rng([config.seed, 11])
    rounds = list(Round)
    schedule = []
    for _ in range(config.rounds):
        drops: dict[int, Round] = {}
        for cid in range(1, config.num_clients + 1):
            u = rng.random()
            where = rounds[int(rng.integers(len(rounds)))]
            if u < config.dropout:
                drops[cid] = where
        schedule.append(drops)
    return schedule


def run_simulation(
    config: SimulationConfig,
    output_dir: str | os.PathLike[str],
    *,
    data: FederatedData | None = None,
    model: torch.nn.Module | None = None,
    on_round: Callable[[RoundReport], None] | None = None,
    progress: bool = False,
) -> SimulationResult:
    """Run a whole federation and write its artefacts to ``output_dir``:
    ``ledger.jsonl``, ``checkpoint.pt``, ``metrics.json`` and
    ``accuracy_per_round.png``.

    Sets ``torch.set_num_threads(1)`` (many tiny models train in turn; more
    threads only add contention).

    Args:
        config: the federation.
        output_dir: created if needed; must not hold a ledger already (a
            ledger is append-only and belongs to one federation).
        data: a ready-made federated data set (default: ``config.dataset``).
        model: the initial global model (default: an MLP, see :func:`preflight`);
            the federation trains an Opacus-compatible copy, returned in the
            result.
        on_round: called with every round's report as soon as it is settled.
        progress: show a tqdm progress bar over rounds.

    Raises:
        ConfigurationError: on an invalid configuration (before any training),
            or when ``output_dir`` already holds a ledger.
        EncodingError: when the bit budget cannot hold the sum (before any
            training).
    """
    torch.set_num_threads(1)
    started = time.perf_counter()
    out = Path(output_dir)
    ledger = PrivacyLedger(out / LEDGER_FILENAME)
    if ledger.path.exists():
        raise ConfigurationError(
            f"{ledger.path} already exists; a ledger is append-only and belongs to one"
            " federation: choose a fresh output directory"
        )
    data = data if data is not None else load_data(config)
    if len(data.clients) != config.num_clients:
        raise ConfigurationError(
            f"the data set has {len(data.clients)} client shards, the configuration"
            f" {config.num_clients} clients"
        )
    dp = config.dp_config()
    # the caller's model is never changed: the federation trains a copy
    model, codec = preflight(config, data, copy.deepcopy(model) if model is not None else None)
    out.mkdir(parents=True, exist_ok=True)
    ids = tuple(range(1, config.num_clients + 1))
    max_weight = codec.max_weight
    frac_bits = codec.frac_bits
    mode = AggregationMode.SECURE if config.secure else AggregationMode.PLAIN
    server = Server(
        model, codec,
        ServerOptimizerConfig(kind=config.server_optimizer, lr=config.server_lr,
                              momentum=config.server_momentum),
        ids, mode=mode, threshold=config.threshold, name=f"securefl simulate seed {config.seed}",
    )
    clients = [
        # The seed reaches a client's randomness only in the insecure
        # reproducible mode; otherwise it is ignored (os.urandom).
        PrivateClient(cid, model, x, y, dp, seed=config.seed,
                      weighting=config.weighting)
        for cid, (x, y) in zip(ids, data.clients, strict=True)
    ]
    schedule = dropout_schedule(config)
    x_test, y_test = data.test
    reports: list[RoundReport] = []
    last_eval = evaluate(model, x_test, y_test)
    completed = 0

    def checkpoint(round_number: int, survivors: tuple[int, ...]) -> None:
        save_checkpoint(out / CHECKPOINT_FILENAME, round=round_number,
                        model_state={k: v.clone() for k, v in model.state_dict().items()},
                        optimizer_state=server.optimizer.state_dict(),
                        extra={"config": config.to_json(), "survivors": list(survivors),
                               "ledger": ledger_anchor()})

    def ledger_anchor() -> dict[str, Any]:
        # the ledger's last settled round and chain head, which `securefl
        # audit` cross-checks against the ledger
        return {"round": ledger.settled_round, "head": ledger.settled_head}

    def ledger_row(client: PrivateClient, round_number: int, status: Participation,
                   steps: int, history: list[HistoryRow], *, entered_sum: bool = False,
                   survivors: int = 0, dropped_at: Round | None = None) -> LedgerEntry:
        # in-flight and settled rows alike carry the run's noise source,
        # adjacency and weighting, and the epsilons stated for that adjacency
        return LedgerEntry(
            round=round_number, client_id=client.client_id, status=status.value,
            entered_sum=entered_sum, noise_multiplier=client.noise_multiplier,
            sample_rate=client.sample_rate, local_steps=steps, delta=config.delta,
            **ledger_epsilons(history, config.delta, config.adjacency),
            accountant=config.accountant.value, epsilon_budget=dp.epsilon_budget,
            survivors=survivors, dropped_at=dropped_at.name if dropped_at is not None else None,
            history=[list(r) for r in history], secure_aggregation=config.secure,
            noise_source=client.noise_source.value, adjacency=config.adjacency.value,
            weighting=config.weighting.value,
        )

    ledger.create()
    checkpoint(0, ())  # the initial global model: round 0
    iterator: Any = range(1, config.rounds + 1)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(iterator, desc="rounds", unit="round", leave=False, dynamic_ncols=True)
        iterator = bar

    def metrics_doc(final: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "config": {**config.to_json(), "frac_bits_used": frac_bits,
                       "max_weight": max_weight, "threshold_used": server.threshold},
            "data": {"name": data.name, "test_size": len(y_test)},
            "rounds": [r.to_json() for r in reports],
            "ledger": ledger_anchor(),
            "final": final,
        }

    write_json_atomic(out / METRICS_FILENAME, metrics_doc(None))  # round 0
    for round_number in iterator:
        t0 = time.perf_counter()
        global_params = server.global_parameters()
        drops = schedule[round_number - 1]
        updates: dict[int, EncodedUpdate | PlainUpdate | None] = {}
        info: dict[int, dict[str, Any]] = {}
        training: list[PrivateClient] = []
        for client in clients:
            try:
                client.check_budget()
            except PrivacyBudgetExceededError as exc:
                updates[client.client_id] = None
                info[client.client_id] = {"status": Participation.REFUSED_BUDGET,
                                          "detail": str(exc), "steps": 0}
                continue
            training.append(client)
        # the spend is durable before any data is touched: in-flight rows,
        # charging the steps each client is about to take, fsynced
        if training:
            ledger.begin_round(round_number, [
                ledger_row(client, round_number, Participation.IN_FLIGHT,
                           client.steps_per_round,
                           compose(client.history, client.planned_round()))
                for client in training])
        crash_point("after-in-flight", round_number)
        for client in training:
            cid = client.client_id
            result = client.train_round(global_params)
            crash_point("mid-training", round_number)
            entry: dict[str, Any] = {"status": None, "detail": "", "steps": result.steps}
            try:
                # The client encodes its own update (rounding with its own
                # secret randomness); only the encoded vector leaves it.
                if mode is AggregationMode.SECURE:
                    encoded: EncodedUpdate | PlainUpdate = codec.encode(
                        result.update, client.rounding(round_number, codec.num_values),  # type: ignore[arg-type]
                        weight=result.weight)
                else:
                    encoded = codec.encode_plain(result.update, weight=result.weight)
                updates[cid] = encoded
            except EncodingError as exc:
                updates[cid] = None
                entry["status"] = Participation.ENCODING_ERROR
                entry["detail"] = f"encoding refused: {exc}"
            info[cid] = entry

        abort_reason = ""
        try:
            outcome = server.aggregate(round_number, updates, drops)
        except AbortError as exc:
            outcome = None
            abort_reason = str(exc)

        survivors = outcome.survivors if outcome is not None else ()
        client_reports = []
        rows = []
        for client in clients:
            cid = client.client_id
            entry = info[cid]
            status = entry["status"]
            if status is None:
                if outcome is None:
                    status = Participation.ROUND_ABORTED
                elif cid in survivors:
                    status = Participation.INCLUDED
                else:
                    status = Participation.DROPPED
            dropped_at = drops.get(cid) if updates.get(cid) is not None else None
            row = ledger_row(client, round_number, status, entry["steps"], client.history,
                             entered_sum=cid in survivors, survivors=len(survivors),
                             dropped_at=dropped_at)
            rows.append(row)
            client_reports.append(ClientRoundReport(
                client_id=cid, status=status, entered_sum=cid in survivors,
                dropped_at=dropped_at, epsilon_rdp=row.epsilon_rdp,
                epsilon_prv=row.epsilon_prv, detail=entry["detail"],
            ))

        if outcome is not None:
            server.apply(outcome)
            last_eval = evaluate(model, x_test, y_test)
            completed += 1
        # settled at once, aborted or not; then the checkpoint for this round
        ledger.settle_round(round_number, rows)
        crash_point("after-ledger", round_number)
        checkpoint(round_number, survivors)

        eps_values = [c.epsilon_rdp for c in client_reports]
        prv_values = [c.epsilon_prv for c in client_reports if c.epsilon_prv is not None]
        report = RoundReport(
            round=round_number, aborted=outcome is None, accuracy=last_eval.accuracy,
            loss=last_eval.loss, survivors=survivors, clients=tuple(client_reports),
            epsilon_max=max(eps_values), epsilon_max_prv=max(prv_values) if prv_values else None,
            delta=config.delta,
            seconds=time.perf_counter() - t0, abort_reason=abort_reason,
        )
        reports.append(report)
        write_json_atomic(out / METRICS_FILENAME, metrics_doc(None))
        if bar is not None:
            bar.set_postfix(acc=f"{report.accuracy:.3f}", eps=f"{report.epsilon_max:.2f}")
        if on_round is not None:
            on_round(report)

    if bar is not None:
        bar.close()

    client_summaries = [
        client_summary(client.client_id, client.history, config.delta,
                       adjacency=config.adjacency,
                       noise_multiplier=client.noise_multiplier,
                       sample_rate=client.sample_rate, steps_per_round=client.steps_per_round,
                       epsilon_budget=dp.epsilon_budget)
        for client in clients
    ]
    final = final_metrics(last_eval, client_summaries, reports, delta=config.delta,
                          accountant=config.accountant.value, planned_rounds=config.rounds,
                          completed=completed, secure=config.secure,
                          wall_seconds=time.perf_counter() - started,
                          adjacency=config.adjacency.value, weighting=config.weighting.value,
                          noise_source=dp.noise_source.value)
    metrics = metrics_doc(final)
    write_json_atomic(out / METRICS_FILENAME, metrics)
    plot_accuracy(out / PLOT_FILENAME, [r.round for r in reports],
                  [r.accuracy for r in reports], [r.epsilon_max for r in reports],
                  aborted=[r.round for r in reports if r.aborted],
                  title=f"{data.name}: {config.num_clients} clients, "
                        f"{'secure aggregation' if config.secure else 'plain summation'}")
    return SimulationResult(metrics=metrics, rounds=reports, model=model, output_dir=out,
                            clients=clients)
