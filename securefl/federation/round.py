"""One federation round, recorded once: the run directory, the privacy
ledger, the checkpoint, ``metrics.json``, the round reports and the plot,
for the in-process simulator
(:func:`securefl.federation.simulation.run_simulation`) and the Flower
ServerApp (:func:`securefl.flower.federation.run_federation`) alike.

A driver runs a round in three steps:

1. :meth:`RoundRecorder.begin`: the in-flight rows of the clients about to
   train (charging the steps each is about to take) are committed to the run
   store (:mod:`securefl.federation.runstore`) and appended to
   ``ledger.jsonl`` **before** any of them trains;
2. the driver trains, encodes and aggregates (:meth:`Server.aggregate
   <securefl.federation.server.Server.aggregate>` or, over a network,
   :meth:`Server.outcome_from_sum
   <securefl.federation.server.Server.outcome_from_sum>`);
3. :meth:`RoundRecorder.settle`: the outcome is applied to the global model
   (not at all when the round aborted), and the settled rows, the checkpoint
   (model, server optimizer state, every client's accountant history), the
   driver's state and the round report are committed in ONE store
   transaction; then ``ledger.jsonl``, ``checkpoint.pt`` and
   ``metrics.json`` are exported from the store (the ledger appended, the
   others replaced atomically).

The store is the one place that says which round is committed.  A SIGKILL at
any point leaves a run directory whose exports agree with the store or lag
behind it; :meth:`RoundRecorder.resume` first checks the store's state
(ledger head, committed and in-flight rounds, every client's history) and
the run configuration against the store's hash-chained ledger and refuses
any disagreement, then re-exports them, settles a round found in flight as
aborted (its charge kept) and tells the driver the next round number and the
restored state.  :meth:`RoundRecorder.finish` writes the
``final`` block of ``metrics.json`` and the accuracy plot.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from securefl.crashpoints import crash_point
from securefl.durable import atomic_write
from securefl.errors import ConfigurationError, SecureFLError
from securefl.federation.checkpoint import CHECKPOINT_FILENAME
from securefl.federation.model import evaluate
from securefl.federation.plots import plot_accuracy
from securefl.federation.reporting import (
    client_summary,
    final_metrics,
    finite_or_none,
    ledger_epsilons,
    write_json_atomic,
)
from securefl.federation.runstore import (
    STORE_FILENAME,
    ResumeMismatchError,
    RunStore,
    RunStoreError,
    StoreInconsistentError,
    StoreProblem,
    append_ledger_file,
    clean_temporaries,
    config_differences,
    store_problems,
    sync_ledger_file,
)
from securefl.federation.server import AggregateOutcome, Server
from securefl.privacy.accounting import HistoryRow
from securefl.privacy.ledger import (
    LEDGER_FILENAME,
    LedgerEntry,
    Participation,
    UserLevelEntry,
    encode_block,
    header_line,
    parse_ledger,
    record_digest,
)
from securefl.protocol import Round

if TYPE_CHECKING:
    from securefl.federation.simulation import SimulationConfig

__all__ = [
    "INTERRUPTED",
    "METRICS_FILENAME",
    "PLOT_FILENAME",
    "ClientOutcome",
    "ClientRoundReport",
    "RoundRecorder",
    "RoundReport",
    "ledger_expectations",
    "stored_run_problems",
]

Evaluator = Callable[[torch.nn.Module], Any]
"""Evaluates a global model: returns an object with ``accuracy`` and ``loss``
(:class:`~securefl.federation.model.Evaluation`)."""

METRICS_FILENAME = "metrics.json"
PLOT_FILENAME = "accuracy_per_round.png"
INTERRUPTED = ("interrupted: the process stopped while the round was in flight; settled as"
               " aborted on resume (the in-flight charge is kept)")
"""The abort reason of a round found in flight on resume."""


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

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values (kept in the run store)."""
        return {"client_id": self.client_id, "status": self.status.value,
                "entered_sum": self.entered_sum,
                "dropped_at": self.dropped_at.name if self.dropped_at is not None else None,
                "epsilon_rdp": finite_or_none(self.epsilon_rdp),
                "epsilon_prv": finite_or_none(self.epsilon_prv), "detail": self.detail}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ClientRoundReport:
        """The inverse of :meth:`to_json` (None epsilons read back as NaN)."""
        return cls(client_id=int(data["client_id"]), status=Participation(data["status"]),
                   entered_sum=bool(data["entered_sum"]),
                   dropped_at=Round[data["dropped_at"]] if data.get("dropped_at") else None,
                   epsilon_rdp=_number(data.get("epsilon_rdp")),
                   epsilon_prv=None if data.get("epsilon_prv") is None
                   else float(data["epsilon_prv"]), detail=str(data.get("detail", "")))


@dataclass(frozen=True)
class RoundReport:
    """What happened in one round (also one entry of ``metrics.json``).

    ``roster_delivery`` is the roster delivery (``"full"`` or ``"merkle"``)
    of the round's secure session, in a federation that asked for
    ``"merkle"`` (a session whose graph is not sparse for its roster falls
    back to ``"full"``); None (and left out of ``metrics.json``) when the
    federation uses full rosters throughout, or no session was built.
    """

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
    roster_delivery: str | None = None

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
        delivery = {} if self.roster_delivery is None else {
            "roster_delivery": self.roster_delivery}
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
            **delivery,
        }

    def to_record(self) -> dict[str, Any]:
        """:meth:`to_json` and every client's report (kept in the run store)."""
        return {**self.to_json(), "clients": [c.to_json() for c in self.clients]}

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> RoundReport:
        """The inverse of :meth:`to_record`."""
        return cls(round=int(data["round"]), aborted=bool(data["aborted"]),
                   accuracy=_number(data["accuracy"]), loss=_number(data["loss"]),
                   survivors=tuple(int(c) for c in data["survivors"]),
                   clients=tuple(ClientRoundReport.from_json(c) for c in data["clients"]),
                   epsilon_max=_number(data.get("epsilon_max")),
                   epsilon_max_prv=None if data.get("epsilon_max_prv") is None
                   else float(data["epsilon_max_prv"]),
                   delta=float(data["delta"]), seconds=float(data["seconds"]),
                   abort_reason=str(data.get("abort_reason", "")),
                   roster_delivery=None if data.get("roster_delivery") is None
                   else str(data["roster_delivery"]))


@dataclass(frozen=True)
class ClientOutcome:
    """What a driver knows of one client at the end of a round.

    Attributes:
        client_id: the client.
        spent: ``(sigma, q, steps)`` of this round (``steps`` 0 when it did
            not train).
        history: its full accountant history after this round.
        status: a status the driver decided (refused by the budget guard or
            the encoder, ...); None lets the recorder derive it: ``included``
            if in the sum, else ``round-aborted`` if the round aborted and the
            client was charged (in flight), else ``dropped``.
        dropped_at: the protocol round it dropped at, if it did.
        detail: why it did not take part (shown in reports).
    """

    client_id: int
    spent: HistoryRow
    history: Sequence[HistoryRow]
    status: Participation | None = None
    dropped_at: Round | None = None
    detail: str = ""


def ledger_expectations(config: SimulationConfig, secure: bool | None = None, *,
                        noise: bool = False) -> dict[str, Any]:
    """Ledger row field -> the value every row of a run of ``config``
    records (what :meth:`RoundRecorder.ledger_row` writes from the
    configuration): delta, accountant, budget, noise source, adjacency,
    weighting; ``secure_aggregation`` when ``secure`` is given; and, with
    ``noise`` (the in-process simulator, whose clients take the noise
    multiplier from ``config``), ``noise_multiplier`` when ``config`` fixes
    one."""
    dp = config.dp_config()
    expected: dict[str, Any] = {
        "delta": config.delta, "accountant": config.accountant.value,
        "epsilon_budget": dp.epsilon_budget, "noise_source": dp.noise_source.value,
        "adjacency": config.adjacency.value, "weighting": config.weighting.value}
    if secure is not None:
        expected["secure_aggregation"] = bool(secure)
    if noise and config.noise_multiplier is not None:
        expected["noise_multiplier"] = float(config.noise_multiplier)
    return expected


def stored_run_problems(store: RunStore) -> list[StoreProblem | str]:
    """Every disagreement between ``store``'s state or configuration and its
    ledger (:func:`~securefl.federation.runstore.store_problems`, the
    expectations taken from the store's own ``meta.config``); a
    configuration that cannot be read is a problem too (a string)."""
    from securefl.federation.simulation import SimulationConfig

    problems: list[StoreProblem | str] = []
    try:
        expected: dict[str, Any] | None = ledger_expectations(
            SimulationConfig.from_json(store.config))
    except (SecureFLError, TypeError, ValueError, KeyError) as exc:
        problems.append(f"the run configuration in {STORE_FILENAME} cannot be read:"
                        f" {type(exc).__name__}: {exc}")
        expected = None
    problems.extend(store_problems(store.committed(), store.ledger_bytes(), expected))
    return problems


def _checkpoint_bytes(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _load_checkpoint_bytes(data: bytes) -> dict[str, Any]:
    """A committed checkpoint, read with torch's ``weights_only`` unpickler
    (tensors, numpy arrays of the server optimizer state, plain containers):
    a run directory is input, and unpickling it must not run code."""
    core = getattr(np, "_core", None) or np.core
    allowed = [np.ndarray, np.dtype, core.multiarray._reconstruct]
    allowed += [type(np.dtype(t)) for t in ("float32", "float64", "int64")]
    with torch.serialization.safe_globals(allowed):
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _number(value: Any) -> float:
    """A float read back from strict JSON (null: NaN, ``"inf"``: infinity)."""
    return math.nan if value is None else float(value)


def _history_json(history: Sequence[Sequence[float]]) -> list[list[float]]:
    return [[float(r[0]), float(r[1]), int(r[2])] for r in history]


class RoundRecorder:
    """The one recorder of a federation's rounds (see the module docstring).

    Build it with :meth:`create` (a fresh run directory) or :meth:`resume`
    (a run directory holding a run store).

    Attributes:
        out: the run directory.
        config: the federation's configuration.
        server: the server whose global model and optimizer are recorded.
        reports: every settled round's report, in order.
        next_round: the number of the next round to run.
        client_states: client id -> its committed state (``{"history":
            [[sigma, q, steps], ...], ...}``); what a driver restores each
            client's accountant from.
        driver_state: the driver's committed state (as it passed it to
            :meth:`settle`).
    """

    def __init__(self, out: Path, store: RunStore, *, config: SimulationConfig, server: Server,
                 test: tuple[np.ndarray, np.ndarray], secure: bool,
                 round_json: Callable[[RoundReport], dict[str, Any]] | None,
                 plot_title: str | None, evaluator: Evaluator | None = None) -> None:
        self.out = out
        self.store = store
        self.config = config
        self.server = server
        self._x_test, self._y_test = test
        self.secure = secure
        self._round_json = round_json
        self._plot_title = plot_title
        self.reports: list[RoundReport] = [RoundReport.from_record(r) for r in store.reports()]
        committed = store.committed()
        self.next_round = committed.round + 1
        self.client_states = committed.clients
        self.driver_state = committed.driver
        self._wall_before = committed.wall
        self._started = time.perf_counter()
        self._head = store.ledger_head()
        self._settled_head = self._last_settled_head()
        self.in_flight: dict[int, LedgerEntry] = {}
        self.in_flight_user: UserLevelEntry | None = None
        self._evaluate: Evaluator = evaluator or (
            lambda model: evaluate(model, self._x_test, self._y_test))
        self.last_eval = self._evaluate(server.model)

    # -- construction ------------------------------------------------------------------

    @staticmethod
    def _paths(out: Path) -> tuple[Path, Path]:
        return out / LEDGER_FILENAME, out / STORE_FILENAME

    @classmethod
    def check_fresh(cls, output_dir: str | Path) -> None:
        """Refuse a run directory that holds a run already.

        Raises:
            ConfigurationError: ``output_dir`` holds a ledger or an
                initialised run store.
        """
        out = Path(output_dir)
        ledger_path, store_path = cls._paths(out)
        if RunStore.is_initialised(store_path):
            raise ConfigurationError(
                f"{out} already holds a run ({STORE_FILENAME}); resume it (securefl simulate"
                " --resume) or choose a fresh output directory")
        if ledger_path.exists():
            raise ConfigurationError(
                f"{ledger_path} already exists; a ledger is append-only and belongs to one"
                " federation: choose a fresh output directory")

    @classmethod
    def create(cls, output_dir: str | Path, *, config: SimulationConfig, server: Server,
               data_name: str, test: tuple[np.ndarray, np.ndarray], secure: bool,
               config_extra: Mapping[str, Any] | None = None,
               round_json: Callable[[RoundReport], dict[str, Any]] | None = None,
               plot_title: str | None = None,
               driver_state: Mapping[str, Any] | None = None,
               evaluator: Evaluator | None = None) -> RoundRecorder:
        """Start recording a new run in ``output_dir``: create the run store
        with round 0 (the initial model) committed, and export the ledger
        (its header), ``checkpoint.pt`` and ``metrics.json``.

        Args:
            output_dir: the run directory (created if needed).
            config: the federation.
            server: its server (the initial global model).
            data_name: the data set's name (in ``metrics.json``).
            test: the test set the global model is evaluated on each round.
            secure: whether sums are computed by secure aggregation.
            config_extra: more entries for ``metrics.json``'s config block.
            round_json: the ``metrics.json`` entry of a round (default
                :meth:`RoundReport.to_json`).
            plot_title: title of the accuracy plot :meth:`finish` writes
                (None: no plot).
            driver_state: the driver's initial state (JSON).
            evaluator: evaluates the global model at the start and after
                every applied round (default: accuracy and cross-entropy on
                ``test``).

        Raises:
            ConfigurationError: ``output_dir`` already holds a ledger or a run
                store (resume it instead).
        """
        out = Path(output_dir)
        cls.check_fresh(out)
        store_path = cls._paths(out)[1]
        out.mkdir(parents=True, exist_ok=True)
        clean_temporaries(out)
        metrics_header = {
            "config": {**config.to_json(), "frac_bits_used": server.codec.frac_bits,
                       "max_weight": server.codec.max_weight, "threshold_used": server.threshold,
                       **dict(config_extra or {})},
            "data": {"name": data_name, "test_size": len(test[1])},
        }
        header = header_line(os.urandom(16).hex())
        clients: dict[int, dict[str, Any]] = {cid: {"history": []} for cid in server.client_ids}
        checkpoint = _checkpoint_bytes(cls._checkpoint_state(
            config, server, 0, (), {"round": 0, "head": ""}, clients, dict(driver_state or {})))
        store = RunStore.create(store_path, config=config.to_json(),
                                metrics_header=metrics_header, ledger_header=header,
                                checkpoint=checkpoint, clients=clients,
                                driver=dict(driver_state or {}),
                                # a store whose creation never committed:
                                # nothing ran; replaced under the writer lock
                                replace_uninitialised=True)
        return cls._exported(out, store, config=config, server=server, test=test,
                             secure=secure, round_json=round_json, plot_title=plot_title,
                             evaluator=evaluator)

    @classmethod
    def resume(cls, output_dir: str | Path, *, config: SimulationConfig, server: Server,
               test: tuple[np.ndarray, np.ndarray], secure: bool,
               round_json: Callable[[RoundReport], dict[str, Any]] | None = None,
               plot_title: str | None = None,
               evaluator: Evaluator | None = None) -> RoundRecorder:
        """Reopen the run in ``output_dir``: check that ``config`` is the
        run's own, restore the server's global model and optimizer state from
        the committed checkpoint, delete stray temporaries and re-export the
        ledger, ``checkpoint.pt`` and ``metrics.json`` from the store.  A
        round found in flight is left for :meth:`settle_interrupted`.

        Raises:
            RunStoreError: no run store, a committed checkpoint that does not
                restore into ``server``, or ``ledger.jsonl`` is not a prefix
                of the store's ledger (edited).
            StoreInconsistentError: the store's ledger does not verify, or
                its state (head, round, round in flight, any client's
                history) or ``config`` disagrees with it (naming the client,
                the round and the rule); nothing is written.
            StoreLockedError: another process is writing the run.
            ResumeMismatchError: ``config`` differs from the run's, naming
                the keys.
        """
        out = Path(output_dir)
        store = RunStore.open(cls._paths(out)[1])
        try:
            differing = config_differences(store.config, config.to_json())
            if differing:
                stored = store.config
                detail = ", ".join(f"{k}: run {stored.get(k)!r}, given"
                                   f" {config.to_json().get(k)!r}" for k in differing)
                raise ResumeMismatchError(
                    f"{out}: cannot resume with another configuration ({detail})", differing)
            # the state a resume restores (every accountant, the round in
            # flight) and the configuration it runs under must be the ones
            # the hash-chained ledger records, before any client trains
            problems = store_problems(store.committed(), store.ledger_bytes(),
                                      ledger_expectations(config, secure, noise=True))
            if problems:
                raise StoreInconsistentError(store.path, problems)
            try:
                state = _load_checkpoint_bytes(store.committed().checkpoint)
                server.model.load_state_dict(state["model"])
                server.optimizer.load_state_dict(state["server_optimizer"])
            except (pickle.UnpicklingError, RuntimeError, KeyError, TypeError,
                    ValueError) as exc:
                raise RunStoreError(f"{out}: the committed checkpoint cannot be restored"
                                    f" ({type(exc).__name__}: {exc})") from None
        except BaseException:
            store.close()
            raise
        clean_temporaries(out)
        return cls._exported(out, store, config=config, server=server, test=test,
                             secure=secure, round_json=round_json, plot_title=plot_title,
                             evaluator=evaluator)

    @classmethod
    def _exported(cls, out: Path, store: RunStore, **kwargs: Any) -> RoundRecorder:
        """A recorder over ``store`` whose artefacts have been (re-)exported;
        the store is closed again if the export fails."""
        recorder = cls(out, store, **kwargs)
        try:
            recorder.export()
        except BaseException:
            recorder.close()
            raise
        return recorder

    @staticmethod
    def stored_config(output_dir: str | Path) -> dict[str, Any]:
        """The configuration (JSON) of the run in ``output_dir``.

        Raises:
            RunStoreError: when it holds no run store.
        """
        store = RunStore.open(Path(output_dir) / STORE_FILENAME)
        try:
            return store.config
        finally:
            store.close()

    def close(self) -> None:
        """Close the run store."""
        self.store.close()

    # -- the ledger --------------------------------------------------------------------

    def _last_settled_head(self) -> str:
        head = ""
        for line in self.store.ledger_lines():
            record = json.loads(line)
            if record.get("type") == "commit" and record.get("stage") == "settled":
                head = record_digest(line)
        return head

    @property
    def anchor(self) -> dict[str, Any]:
        """The ledger's last settled round and the digest of its commit, which
        ``checkpoint.pt`` and ``metrics.json`` record and ``securefl audit``
        cross-checks."""
        return {"round": self.next_round - 1, "head": self._settled_head}

    def ledger_row(self, client_id: int, round_number: int, status: Participation,
                   spent: HistoryRow, history: Sequence[HistoryRow], *, survivors: int = 0,
                   dropped_at: Round | None = None) -> LedgerEntry:
        """A ledger row of this federation: ``spent`` is this round's
        ``(sigma, q, steps)``, ``history`` the client's history after it; the
        row carries the run's noise source, adjacency and weighting, and the
        epsilons stated for that adjacency."""
        config = self.config
        dp = config.dp_config()
        return LedgerEntry(
            round=round_number, client_id=client_id, status=status.value,
            entered_sum=status is Participation.INCLUDED, noise_multiplier=float(spent[0]),
            sample_rate=float(spent[1]), local_steps=int(spent[2]), delta=config.delta,
            **ledger_epsilons(history, config.delta, config.adjacency),
            accountant=config.accountant.value, epsilon_budget=dp.epsilon_budget,
            survivors=survivors, dropped_at=dropped_at.name if dropped_at is not None else None,
            history=[list(r) for r in history], secure_aggregation=self.secure,
            noise_source=dp.noise_source.value, adjacency=config.adjacency.value,
            weighting=config.weighting.value)

    def _export_ledger(self) -> None:
        """Make ``ledger.jsonl`` the store's ledger (reads the file)."""
        sync_ledger_file(self.out / LEDGER_FILENAME, self.store.ledger_bytes())

    def _append_ledger(self, lines: Sequence[bytes], round_number: int = 0) -> None:
        """Append a block the store just committed to ``ledger.jsonl``, which
        holds the store's ledger before it (``ledger-torn`` crash point for
        ``round_number``'s settled block)."""
        block = b"".join(line + b"\n" for line in lines)
        append_ledger_file(self.out / LEDGER_FILENAME, block, round_number=round_number)

    # -- a round -----------------------------------------------------------------------

    def begin(self, round_number: int,
              charges: Mapping[int, tuple[HistoryRow, Sequence[HistoryRow]]],
              user_level: UserLevelEntry | None = None,
              in_flight_state: Mapping[str, Any] | None = None) -> None:
        """Durably charge the clients about to train in ``round_number``
        (client id -> (the ``(sigma, q, steps)`` it is about to take, its
        history including them)) before any of them trains: their in-flight
        rows, and ``user_level`` (the round's in-flight user-level charge at
        its target variance, when the round will release a distributed-DP
        sum), are committed to the store and appended to ``ledger.jsonl``.
        ``in_flight_state`` (JSON) is committed with them, as the driver
        state's ``in_flight`` entry: what a resume needs to know of the round
        (:attr:`in_flight_state`; e.g. who was sampled).  Nothing is written
        when there is no charge at all.

        Raises:
            ConfigurationError: ``round_number`` is not the next round, or
                ``user_level`` is not an in-flight charge of that round.
        """
        if round_number != self.next_round:
            raise ConfigurationError(f"round {round_number} is not the next round"
                                     f" ({self.next_round})")
        if user_level is not None and (not user_level.in_flight
                                       or user_level.round != round_number):
            raise ConfigurationError(f"round {round_number}: the user-level charge must be an"
                                     " in-flight row of that round")
        self.in_flight = {cid: self.ledger_row(cid, round_number, Participation.IN_FLIGHT,
                                               spent, history)
                          for cid, (spent, history) in sorted(charges.items())}
        self.in_flight_user = user_level
        if not self.in_flight and user_level is None:
            return
        users = [user_level] if user_level is not None else []
        lines = encode_block(self._head, round_number, "in-flight",
                             list(self.in_flight.values()), users)
        driver = None
        if in_flight_state is not None:
            driver = {**self.driver_state, "in_flight": dict(in_flight_state)}
        self.store.begin_round(round_number, lines, driver)
        if driver is not None:
            self.driver_state = driver
        self._head = record_digest(lines[-1])
        self._append_ledger(lines)

    def settle(self, round_number: int, outcome: AggregateOutcome | None,
               clients: Sequence[ClientOutcome], *, abort_reason: str = "",
               started: float | None = None,
               driver_state: Mapping[str, Any] | None = None,
               user_level: Sequence[UserLevelEntry] = (),
               roster_delivery: str | None = None) -> RoundReport:
        """Settle ``round_number``: apply ``outcome`` to the global model
        (None: the round aborted, the model and the optimizer are unchanged),
        then commit the settled rows (one per client of ``clients``), the
        checkpoint, every client's history, ``driver_state`` and the report
        in one store transaction, and export the artefacts.

        Args:
            round_number: the round (the next one).
            outcome: the aggregate, or None when the round aborted.
            clients: one :class:`ClientOutcome` per client of the federation.
            abort_reason: why the round aborted.
            started: :func:`time.perf_counter` at the start of the round.
            driver_state: the driver's state after this round (JSON).
            user_level: the round's settled user-level ledger row, when the
                sum carried distributed-DP noise and was released (written in
                the settled block), or the charge of a round skipped before
                anyone trained (status ``skipped``; nothing was charged in
                flight).  When it is empty and :meth:`begin`
                charged the round at user level, the charge is kept: the
                settled block repeats it with status ``round-aborted``.
            roster_delivery: the roster delivery of the round's session
                (:attr:`RoundReport.roster_delivery`).

        Returns:
            the round's report.

        Raises:
            ConfigurationError: ``round_number`` is not the next round, or
                ``user_level`` holds more than one row or a row that is not
                a release or a skip of that round (a skip after an in-flight
                user-level charge).
        """
        if round_number != self.next_round:
            raise ConfigurationError(f"round {round_number} is not the next round"
                                     f" ({self.next_round})")
        user_level = list(user_level)
        if len(user_level) > 1 or any(
                u.round != round_number or u.status not in ("released", "skipped")
                or (u.status == "skipped" and self.in_flight_user is not None)
                for u in user_level):
            raise ConfigurationError(f"round {round_number}: at most one user-level row, the"
                                     " round's release, or its skip when nothing was charged"
                                     " in flight")
        if not user_level and self.in_flight_user is not None:
            # nothing released, or nobody knows: the in-flight charge stays
            user_level = [dataclasses.replace(self.in_flight_user, status="round-aborted")]
        t0 = time.perf_counter() if started is None else started
        survivors = outcome.survivors if outcome is not None else ()
        rows: list[LedgerEntry] = []
        reports: list[ClientRoundReport] = []
        states: dict[int, dict[str, Any]] = {}
        # privacy user-level alone: no DP-SGD, so no record-level row, no
        # accountant and no record-level epsilon (NaN in the reports)
        record = self.config.record_level
        for client in clients:
            cid = client.client_id
            status = client.status
            if status is None:
                if cid in survivors:
                    status = Participation.INCLUDED
                elif outcome is None and (cid in self.in_flight
                                          or (not record and client.spent[2] > 0)):
                    status = Participation.ROUND_ABORTED
                else:
                    status = Participation.DROPPED
            eps_rdp, eps_prv = math.nan, None
            if record:
                row = self.ledger_row(cid, round_number, status, client.spent,
                                      client.history, survivors=len(survivors),
                                      dropped_at=client.dropped_at)
                rows.append(row)
                eps_rdp, eps_prv = row.epsilon_rdp, row.epsilon_prv
                states[cid] = {**self.client_states.get(cid, {}),
                               "history": _history_json(client.history)}
            reports.append(ClientRoundReport(
                client_id=cid, status=status, entered_sum=cid in survivors,
                dropped_at=client.dropped_at, epsilon_rdp=eps_rdp,
                epsilon_prv=eps_prv, detail=client.detail))
        if outcome is not None:
            self.server.apply(outcome)
            self.last_eval = self._evaluate(self.server.model)
        eps_values = [c.epsilon_rdp for c in reports]
        prv_values = [c.epsilon_prv for c in reports if c.epsilon_prv is not None]
        report = RoundReport(
            round=round_number, aborted=outcome is None, accuracy=self.last_eval.accuracy,
            loss=self.last_eval.loss, survivors=survivors, clients=tuple(reports),
            epsilon_max=max(eps_values, default=math.nan),
            epsilon_max_prv=max(prv_values) if prv_values else None,
            delta=self.config.delta, seconds=time.perf_counter() - t0,
            abort_reason=abort_reason, roster_delivery=roster_delivery)
        lines = encode_block(self._head, round_number, "settled", rows, user_level)
        head = record_digest(lines[-1])
        anchor = {"round": round_number, "head": head}
        driver = dict(driver_state if driver_state is not None else self.driver_state)
        driver.pop("in_flight", None)  # the round settles: nothing of it is in flight
        checkpoint = _checkpoint_bytes(self._checkpoint_state(
            self.config, self.server, round_number, survivors, anchor, states, driver))
        self.store.commit_round(round_number, lines, checkpoint=checkpoint, clients=states,
                                driver=driver, report=report.to_record(), wall=self.wall_seconds)
        crash_point("after-commit", round_number)
        self._head = self._settled_head = head
        self.next_round = round_number + 1
        self.client_states = states
        self.driver_state = driver
        self.in_flight = {}
        self.in_flight_user = None
        self.reports.append(report)
        self._append_ledger(lines, round_number)
        crash_point("after-ledger", round_number)
        self._export_checkpoint(checkpoint)
        crash_point("mid-export", round_number)
        self._export_metrics()
        return report

    @property
    def in_flight_state(self) -> dict[str, Any] | None:
        """What :meth:`begin` recorded of the round in flight
        (``in_flight_state``), or None."""
        state = self.driver_state.get("in_flight")
        return dict(state) if isinstance(state, Mapping) else None

    def settle_interrupted(self, others: Participation = Participation.DROPPED,
                           detail: str = "",
                           idle: Callable[[int], HistoryRow] | None = None,
                           status_of: Callable[[int], tuple[Participation, str] | None]
                           | None = None) -> RoundReport | None:
        """Settle a round the store holds in flight (the process stopped
        between :meth:`begin` and :meth:`settle`) as aborted: each in-flight
        client keeps its charge (status ``round-aborted``, the steps it was
        about to take), so does the round's user-level charge (its sum may
        have been released before the process stopped), every other client
        gets ``others`` and ``detail``, or the status and detail
        ``status_of(client_id)`` gives when it gives one, with no steps
        (``idle(client_id)``
        gives its ``(sigma, q, 0)``; default: the sigma and q of its last
        history row).
        The model is unchanged; the interrupted round keeps its number, and
        the driver re-runs its work as the next round.

        Returns:
            the report of the settled round, or None when no round was in
            flight.
        """
        committed = self.store.committed()
        if committed.in_flight is None:
            return None
        number = committed.in_flight
        chain = parse_ledger(self.store.ledger_bytes())
        flight = {r.client_id: r for r in chain.committed if r.round == number and r.in_flight}
        self.in_flight = flight
        self.in_flight_user = next((u for u in chain.committed_user_level
                                    if u.round == number and u.in_flight), None)
        outcomes = []
        for cid in self.server.client_ids:
            if cid in flight:
                row = flight[cid]
                outcomes.append(ClientOutcome(
                    cid, (row.noise_multiplier, row.sample_rate, row.local_steps),
                    [tuple(h) for h in row.history],  # type: ignore[misc]
                    status=Participation.ROUND_ABORTED))
            else:
                history = [tuple(h) for h in self.client_states.get(cid, {}).get("history", [])]
                if idle is not None:
                    spent = idle(cid)
                else:
                    spent = (*history[-1][:2], 0) if history else (0.0, 0.0, 0)
                status, why = (status_of(cid) if status_of is not None else None) \
                    or (others, detail)
                outcomes.append(ClientOutcome(cid, spent, history,  # type: ignore[arg-type]
                                              status=status, detail=why))
        return self.settle(number, None, outcomes, abort_reason=INTERRUPTED)

    # -- exports -----------------------------------------------------------------------

    @staticmethod
    def _checkpoint_state(config: SimulationConfig, server: Server, round_number: int,
                          survivors: tuple[int, ...], anchor: dict[str, Any],
                          clients: Mapping[int, Mapping[str, Any]],
                          driver: Mapping[str, Any]) -> dict[str, Any]:
        return {"round": int(round_number),
                "model": {k: v.detach().clone() for k, v in server.model.state_dict().items()},
                "server_optimizer": server.optimizer.state_dict(),
                "extra": {"config": config.to_json(), "survivors": list(survivors),
                          "ledger": anchor, "run_store": STORE_FILENAME,
                          "clients": {str(k): dict(v) for k, v in clients.items()},
                          "driver": dict(driver)}}

    @property
    def wall_seconds(self) -> float:
        """Wall-clock seconds of the run so far, over every process."""
        return self._wall_before + time.perf_counter() - self._started

    def metrics_document(self) -> dict[str, Any]:
        """``metrics.json`` as the store says it is now."""
        header = self.store.metrics_header
        entry = self._round_json or RoundReport.to_json
        return {**header, "run_store": STORE_FILENAME,
                "rounds": [entry(r) for r in self.reports], "ledger": self.anchor,
                "final": self.store.final}

    def _export_checkpoint(self, data: bytes) -> None:
        atomic_write(self.out / CHECKPOINT_FILENAME, lambda handle: handle.write(data))

    def _export_metrics(self) -> None:
        write_json_atomic(self.out / METRICS_FILENAME, self.metrics_document())

    def export(self) -> None:
        """Make ``ledger.jsonl``, ``checkpoint.pt`` and ``metrics.json`` agree
        with the store (the ledger completed by appending, or rewritten
        atomically over a torn last line; the others replaced atomically).

        Raises:
            RunStoreError: ``ledger.jsonl`` is not a prefix of the store's
                ledger.
        """
        self._export_ledger()
        self._export_checkpoint(self.store.committed().checkpoint)
        self._export_metrics()

    # -- the end -----------------------------------------------------------------------

    @property
    def completed(self) -> int:
        """How many rounds completed (aggregated and applied)."""
        return sum(1 for r in self.reports if not r.aborted)

    def finish(self, summaries: Mapping[int, Mapping[str, Any]],
               **extra: Any) -> dict[str, Any]:
        """Write the ``final`` block of ``metrics.json`` (committed to the
        store, then exported) and the accuracy plot (when the recorder has a
        plot title).

        Args:
            summaries: client id -> the public fields of its summary (noise
                multiplier, sample rate, budget...); its epsilons come from
                its committed history.
            extra: more entries of the final block.

        Returns:
            ``metrics.json`` as written.
        """
        config = self.config
        dp = config.dp_config()
        clients = [
            client_summary(cid, [tuple(r) for r in  # type: ignore[misc]
                                 self.client_states.get(cid, {}).get("history", [])],
                           config.delta, adjacency=config.adjacency, **dict(summaries[cid]))
            for cid in sorted(summaries)]
        final = final_metrics(
            self.last_eval, clients, self.reports, delta=config.delta,
            accountant=config.accountant.value, planned_rounds=len(self.reports),
            completed=self.completed, secure=self.secure, wall_seconds=self.wall_seconds,
            adjacency=config.adjacency.value, weighting=config.weighting.value,
            noise_source=dp.noise_source.value, **extra)
        self.store.finish(final)
        self._export_metrics()
        if self._plot_title is not None and self.reports:
            reports = self.reports
            plot_accuracy(self.out / PLOT_FILENAME, [r.round for r in reports],
                          [r.accuracy for r in reports], [r.epsilon_max for r in reports],
                          aborted=[r.round for r in reports if r.aborted],
                          title=self._plot_title)
        return self.metrics_document()
