"""Run Flower's real SecAgg+ in one process, as a baseline for securefl.

This drives the unmodified server-side ``SecAggPlusWorkflow``
(``flwr.server.workflow``) and the unmodified client-side ``secaggplus_mod``
(``flwr.client.mod``) of the ``flwr`` package, with no Ray, no SuperLink, no
SuperNode and no sockets.  An in-memory :class:`flwr.serverapp.grid.Grid`
(``_InProcessGrid``) takes the workflow's ``send_and_receive`` calls and
delivers every message, in turn, to one ``ClientApp`` per client, called in
this process.  Each message and each reply is serialised with Flower's
protobuf serde (``message_to_proto`` / ``message_from_proto``) on the way, so
that clients and server never share objects and the byte counts are those of
real serialised Flower messages.

How the integer sum is kept exact
---------------------------------
``SecAggPlusWorkflow`` only aggregates float model updates: the client mod
multiplies by a weight ratio, clips, quantises stochastically to
``[0, quantization_range]``, prepends the quantised weight, masks everything
modulo ``modulus_range``; the server unmasks, then dequantises.  We choose the
parameters so that Flower's own quantisation is the identity on our integers:

* ``modulus_range = M = 2**modulus_bits``, ``quantization_range = T = M - 1``,
  ``clipping_range = c = T / 2`` (a half-integer, exact in float64);
* each client sends the float array ``y = x - c`` (exact) and
  ``num_examples = max_weight``, so Flower's weight ratio is exactly 1.0;
* Flower then computes ``(clip(y, -c, c) + c) * T / (2c) = x`` exactly, and its
  stochastic rounding never fires because ``ceil(x) - x == 0``.

The exact unmasked vector in ``Z_M`` exists inside ``unmask_stage`` just before
dequantisation (``recon_parameters`` at ``secaggplus_workflow.py:639-640``),
where it is passed to the pure helper ``factor_extract``.  We observe it by
wrapping that helper in the workflow's module namespace for the duration of
the run (the wrapper calls the original and changes nothing).  Its first
entry is the masked sum of the clients' quantised weights, ``-k mod M`` for
``k`` contributing clients, which the driver checks.  Flower's float
dequantisation still runs (and is timed) but its output is not used.

Limits: Flower casts quantised values to ``int32``
(``quantization.py:24``), so the identity only holds for
``modulus_bits <= 31``.  Flower computes in ``int64`` whatever the modulus, so
the cost measured at 31 bits is the cost at any width Flower supports.

Dropouts
--------
``dropouts`` maps a client id to the Flower stage (``"setup"``,
``"share_keys"``, ``"collect_masked_vectors"``, ``"unmask"``) from which the
client stops answering.  The grid then returns no reply for it, as a real grid
does when ``send_and_receive`` times out; the workflow learns of dropouts only
by the missing (or error) replies (``secaggplus_workflow.py:382-384, 431-433,
503-505, 579-581``).  A client that raises returns an error reply, as a
SuperNode does.  A client that replies to ``collect_masked_vectors`` and then
drops at ``unmask`` is still in the sum; one that drops at
``collect_masked_vectors`` is not.

Flower limits this driver works around (flwr 1.41.0 and 1.42.0, same code)
--------------------------------------------------------------------------
* A dropout at ``setup`` or ``share_keys`` halts the workflow: neighbours are
  asked for an sk1 share that was never distributed (``secaggplus_mod.py:510``,
  ``KeyError``) and the server then lacks shares (``secaggplus_workflow.py:605-610``).
  The test suite pins this; benchmark dropouts use ``collect_masked_vectors``.
* An even ``num_shares`` below the number of clients fails: the server sends
  the even value to clients (``secaggplus_workflow.py:335``) and only then
  makes its own copy odd (``:344-346``), so clients index past their shares
  (``secaggplus_mod.py:387-396``, ``IndexError``).  The driver rejects it.
* The server combines every share it received, not ``threshold`` of them
  (``secaggplus_workflow.py:611``); pycryptodome's pure-Python Shamir makes
  this the dominant server cost at large ``num_shares``.

Timing
------
Clients run one after another, so each client's time is its own compute time;
the server's time per stage is the stage's wall time less client compute and
less the transport (serde) time, which is reported separately.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import (
    FitIns,
    FitRes,
    NDArrays,
    Parameters,
    Scalar,
)
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    Key,
    Stage,
)
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=E0611
from flwr.server.client_manager import ClientManager, SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.secure_aggregation import (
    secaggplus_workflow as _workflow_module,
)
from flwr.serverapp.grid import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

__all__ = [
    "MAX_MODULUS_BITS",
    "STAGES",
    "FlowerBaselineError",
    "FlowerRun",
    "run_flower_secaggplus",
]

#: Flower's SecAgg+ stages, in the order the workflow runs them.
STAGES: tuple[str, ...] = tuple(Stage.all())

#: Largest ring width for which Flower's quantisation can be made the identity.
MAX_MODULUS_BITS = 31

_RUN_ID = 1
_FIRST_NODE_ID = SUPERLINK_NODE_ID + 1
# The pure helper unmask_stage calls on the exact unmasked Z_M vector.
_HOOKED = "factor_extract"
_MAX_WEIGHT = 1000.0  # Flower's default; num_examples equals it, so ratio == 1.0


class FlowerBaselineError(RuntimeError):
    """Flower's SecAgg+ halted, or the driver was called with bad arguments."""


@dataclass
class FlowerRun:
    """What one in-process run of Flower's SecAgg+ produced and cost.

    Attributes:
        aggregate: the sum Flower recovered, as ``uint64`` in ``[0, 2**modulus_bits)``,
            with the inputs' shape.
        included: client ids whose inputs Flower's sum contains (those that
            uploaded a masked vector).
        modulus_bits: ring width.
        num_shares: Flower's ``num_shares``.
        reconstruction_threshold: Flower's threshold.
        dropouts: the dropout plan that was applied (client id -> stage).
        total_seconds: wall time of the whole workflow call.
        server_seconds: server compute per stage (stage wall time less client
            compute and transport).
        client_seconds: client id -> stage -> compute time of that client's
            ``ClientApp`` call (secaggplus_mod plus the trivial ``fit``).
        transport_seconds: stage -> time spent in protobuf serde and copying.
        bytes_down: client id -> stage -> size of the serialised message the
            server sent to that client (only messages actually delivered).
        bytes_up: client id -> stage -> size of the serialised reply.
        client_errors: client id -> error reason for ClientApps that raised.
        failures: reasons of the failures the workflow recorded.
    """

    aggregate: npt.NDArray[np.uint64]
    included: frozenset[int]
    modulus_bits: int
    num_shares: int
    reconstruction_threshold: int
    dropouts: dict[int, str]
    total_seconds: float
    server_seconds: dict[str, float]
    client_seconds: dict[int, dict[str, float]]
    transport_seconds: dict[str, float]
    bytes_down: dict[int, dict[str, int]]
    bytes_up: dict[int, dict[str, int]]
    client_errors: dict[int, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def client_total_seconds(self, cid: int) -> float:
        """Return one client's compute time summed over all stages."""
        return sum(self.client_seconds.get(cid, {}).values())

    def client_stage_max(self, stage: str) -> float:
        """Return the slowest client's compute time in ``stage`` (0 if none ran)."""
        return max((per.get(stage, 0.0) for per in self.client_seconds.values()), default=0.0)

    def client_stage_mean(self, stage: str) -> float:
        """Return the mean compute time in ``stage`` over clients that ran it."""
        vals = [per[stage] for per in self.client_seconds.values() if stage in per]
        return float(np.mean(vals)) if vals else 0.0

    def total_bytes_up(self, cid: int) -> int:
        """Return the bytes one client uploaded, all stages."""
        return sum(self.bytes_up.get(cid, {}).values())

    def total_bytes_down(self, cid: int) -> int:
        """Return the bytes one client downloaded, all stages."""
        return sum(self.bytes_down.get(cid, {}).values())


class _IdentityClient(NumPyClient):
    """A Flower client whose ``fit`` returns a fixed float update."""

    def __init__(self, update: npt.NDArray[np.float64]) -> None:
        self._update = update

    def fit(
        self, parameters: NDArrays, config: dict[str, Scalar]
    ) -> tuple[NDArrays, int, dict[str, Scalar]]:
        """Return the prepared update with ``num_examples == max_weight``."""
        del parameters, config
        return [self._update], int(_MAX_WEIGHT), {}


class _AllClientsStrategy(Strategy):
    """The smallest legacy strategy the workflow needs.

    ``configure_fit`` selects every registered client with empty global
    parameters (so stage 2 carries no model down: only SecAgg+ traffic is
    measured); ``aggregate_fit`` does no float work.
    """

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """Return no initial parameters."""
        del client_manager
        return None

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        """Select all clients."""
        del server_round
        return [(proxy, FitIns(parameters, {})) for proxy in client_manager.all().values()]

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Do nothing: the driver reads the exact integer sum instead."""
        del server_round, results, failures
        return None, {}

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, Any]]:
        """Evaluate nothing."""
        del server_round, parameters, client_manager
        return []

    def aggregate_evaluate(
        self, server_round: int, results: list[Any], failures: list[Any]
    ) -> tuple[float | None, dict[str, Scalar]]:
        """Evaluate nothing."""
        del server_round, results, failures
        return None, {}

    def evaluate(
        self, server_round: int, parameters: Parameters
    ) -> tuple[float, dict[str, Scalar]] | None:
        """Evaluate nothing."""
        del server_round, parameters
        return None


@dataclass
class _Ledger:
    """Per-run measurements filled in by the grid."""

    client_seconds: dict[int, dict[str, float]] = field(default_factory=dict)
    transport_seconds: dict[str, float] = field(default_factory=dict)
    bytes_down: dict[int, dict[str, int]] = field(default_factory=dict)
    bytes_up: dict[int, dict[str, int]] = field(default_factory=dict)
    client_errors: dict[int, str] = field(default_factory=dict)
    uploaded: set[int] = field(default_factory=set)

    def client_time_in(self, stage: str) -> float:
        return sum(per.get(stage, 0.0) for per in self.client_seconds.values())


class _InProcessGrid(Grid):
    """A Flower ``Grid`` that calls each node's ``ClientApp`` in this process.

    ``send_and_receive`` serialises each instruction with Flower's protobuf
    serde, delivers the parsed copy to the destination's ``ClientApp`` with
    that node's persistent ``Context``, and serialises the reply back.  Nodes
    scheduled to drop at the message's stage (or earlier) get nothing and
    return nothing.  A reply whose client took longer than ``timeout`` is
    discarded as late (clients are timed one by one, as if run in parallel).
    """

    def __init__(
        self,
        app: ClientApp,
        node_to_cid: dict[int, int],
        drop_stage_index: dict[int, int],
        ledger: _Ledger,
    ) -> None:
        self._run = Run.create_empty(_RUN_ID)
        self._app = app
        self._node_to_cid = node_to_cid
        self._drop_stage_index = drop_stage_index
        self._ledger = ledger
        self._contexts = {
            nid: Context(
                run_id=_RUN_ID,
                node_id=nid,
                node_config={},
                state=RecordDict(),
                run_config={},
            )
            for nid in node_to_cid
        }
        self._replies: dict[str, Message] = {}

    # --- Grid interface -------------------------------------------------
    def set_run(self, run: Run) -> None:
        """Set the run (kept only for the interface)."""
        self._run = run

    @property
    def run(self) -> Run:
        """Return the run."""
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        """Create an instruction message."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        """Return all node ids, dropped or not."""
        return list(self._node_to_cid)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Deliver each message at once; keep the replies for ``pull_messages``."""
        return [mid for msg in messages if (mid := self._deliver(msg, None)) is not None]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Return (and forget) the replies to the given message ids."""
        return [self._replies.pop(mid) for mid in list(message_ids) if mid in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Deliver every message and return the replies that came back in time."""
        ids = [mid for msg in messages if (mid := self._deliver(msg, timeout)) is not None]
        return self.pull_messages(ids)

    # --- delivery ---------------------------------------------------------
    def _deliver(self, msg: Message, timeout: float | None) -> str | None:
        t0 = time.perf_counter()
        stage = str(msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE])
        nid = msg.metadata.dst_node_id
        cid = self._node_to_cid[nid]
        msg.metadata.__dict__["_message_id"] = str(uuid4())
        mid = msg.metadata.message_id
        if STAGES.index(stage) >= self._drop_stage_index.get(nid, len(STAGES)):
            self._add_transport(stage, time.perf_counter() - t0)
            return None  # dropped: never receives, never answers
        wire = message_to_proto(msg).SerializeToString()
        self._ledger.bytes_down.setdefault(cid, {})[stage] = len(wire)
        proto = ProtoMessage()
        proto.ParseFromString(wire)
        delivered = message_from_proto(proto)
        t1 = time.perf_counter()
        self._add_transport(stage, t1 - t0)

        error: str | None = None
        try:
            reply = self._app(delivered, self._contexts[nid])
        except Exception as exc:  # a SuperNode turns any exception into an error reply
            error = f"{type(exc).__name__}: {exc}"
            reply = delivered.create_error_reply(
                Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=error)
            )
        t2 = time.perf_counter()
        self._ledger.client_seconds.setdefault(cid, {})[stage] = t2 - t1
        if error is not None:
            self._ledger.client_errors[cid] = error

        late = timeout is not None and (t2 - t1) > timeout
        if not late:
            wire = message_to_proto(reply).SerializeToString()
            self._ledger.bytes_up.setdefault(cid, {})[stage] = len(wire)
            proto = ProtoMessage()
            proto.ParseFromString(wire)
            self._replies[mid] = message_from_proto(proto)
            if stage == Stage.COLLECT_MASKED_VECTORS and error is None:
                self._ledger.uploaded.add(cid)
        self._add_transport(stage, time.perf_counter() - t2)
        return mid

    def _add_transport(self, stage: str, seconds: float) -> None:
        ts = self._ledger.transport_seconds
        ts[stage] = ts.get(stage, 0.0) + seconds


@contextlib.contextmanager
def _capture_unmasked_sum() -> Iterator[list[list[npt.NDArray[np.int64]]]]:
    """Record what ``unmask_stage`` passes to ``factor_extract`` (exact Z_M values)."""
    original: Callable[..., Any] = getattr(_workflow_module, _HOOKED)
    seen: list[list[npt.NDArray[np.int64]]] = []

    def recording(parameters: list[npt.NDArray[np.int64]]) -> Any:
        seen.append([np.array(a, copy=True) for a in parameters])
        return original(parameters)

    setattr(_workflow_module, _HOOKED, recording)
    try:
        yield seen
    finally:
        setattr(_workflow_module, _HOOKED, original)


@contextlib.contextmanager
def server_task_identity(run_id: int = _RUN_ID) -> Iterator[None]:
    """Set the process identity a ServerApp process has, the way
    ``flwr.server.compat.app`` does (lines 69-71); Message() needs it."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


@contextlib.contextmanager
def _quiet_flwr_logger(level: int = logging.ERROR) -> Iterator[None]:
    logger = logging.getLogger("flwr")
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


def _validate(
    inputs: dict[int, np.ndarray],
    modulus_bits: int,
    num_shares: int,
    reconstruction_threshold: int,
    dropouts: dict[int, str],
) -> tuple[int, ...]:
    if not 2 <= modulus_bits <= MAX_MODULUS_BITS:
        raise FlowerBaselineError(
            f"modulus_bits must be in [2, {MAX_MODULUS_BITS}]: Flower casts quantised "
            "values to int32, so wider rings cannot pass through it exactly"
        )
    if len(inputs) < 2:
        raise FlowerBaselineError("Flower's SecAgg+ needs at least 2 clients")
    shapes = {np.shape(v) for v in inputs.values()}
    if len(shapes) != 1:
        raise FlowerBaselineError(f"all inputs must have one shape, got {sorted(shapes)}")
    modulus = 1 << modulus_bits
    for cid, vec in inputs.items():
        arr = np.asarray(vec)
        if arr.dtype.kind not in "iu":
            raise FlowerBaselineError(f"input of client {cid} is not an integer array")
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= modulus):
            raise FlowerBaselineError(f"input of client {cid} is outside [0, 2**{modulus_bits})")
    n = len(inputs)
    if num_shares <= 2:
        raise FlowerBaselineError("Flower needs an integer num_shares > 2")
    if num_shares != n and num_shares % 2 == 0:
        # secaggplus_workflow.py:332-346 sends the even value to clients, then
        # bumps its own copy to odd: clients index past their share list.
        raise FlowerBaselineError(
            "num_shares must be odd or equal to the number of clients (Flower sends "
            "the even value to clients but uses num_shares + 1 neighbours)"
        )
    if not 2 <= reconstruction_threshold < num_shares:
        raise FlowerBaselineError("need 2 <= reconstruction_threshold < num_shares")
    for cid, stage in dropouts.items():
        if cid not in inputs:
            raise FlowerBaselineError(f"dropout for unknown client {cid}")
        if stage not in STAGES:
            raise FlowerBaselineError(f"unknown stage {stage!r}; Flower's are {STAGES}")
    return next(iter(shapes))


def run_flower_secaggplus(
    inputs: dict[int, np.ndarray],
    *,
    modulus_bits: int,
    num_shares: int,
    reconstruction_threshold: int,
    dropouts: dict[int, str] | None = None,
    timeout: float | None = None,
) -> FlowerRun:
    """Run Flower's ``SecAggPlusWorkflow`` + ``secaggplus_mod`` once, in process.

    Args:
        inputs: client id -> integer vector with entries in ``[0, 2**modulus_bits)``.
        modulus_bits: ring width; Flower's ``modulus_range`` is ``2**modulus_bits``
            (at most :data:`MAX_MODULUS_BITS`).
        num_shares: Flower's ``num_shares`` (an int: neighbours per client,
            itself included; odd unless equal to the number of clients).
        reconstruction_threshold: Flower's ``reconstruction_threshold`` (an int).
        dropouts: client id -> stage from which that client stops answering.
        timeout: passed to the workflow; a reply whose client computed longer
            than this is discarded as late.

    Returns:
        The recovered sum and the measurements.

    Raises:
        FlowerBaselineError: on bad arguments, or if Flower's workflow halted
            (for instance too few shares to unmask).
    """
    plan = dict(dropouts or {})
    shape = _validate(inputs, modulus_bits, num_shares, reconstruction_threshold, plan)
    modulus = 1 << modulus_bits
    quantization_range = modulus - 1
    clipping_range = quantization_range / 2.0  # exact half-integer

    cids = sorted(inputs)
    cid_to_node = {cid: _FIRST_NODE_ID + i for i, cid in enumerate(cids)}
    node_to_cid = {nid: cid for cid, nid in cid_to_node.items()}
    # Our adapter, not Flower's: shift so Flower's quantiser maps y back to x.
    updates = {
        cid_to_node[cid]: np.asarray(inputs[cid]).astype(np.float64) - clipping_range
        for cid in cids
    }

    def client_fn(context: Context) -> Any:
        return _IdentityClient(updates[context.node_id]).to_client()

    app = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
    ledger = _Ledger()
    drop_index = {cid_to_node[c]: STAGES.index(s) for c, s in plan.items()}
    grid = _InProcessGrid(app, node_to_cid, drop_index, ledger)

    client_manager = SimpleClientManager()
    for nid in node_to_cid:
        client_manager.register(GridClientProxy(nid, grid, _RUN_ID))
    base = Context(run_id=_RUN_ID, node_id=0, node_config={}, state=RecordDict(), run_config={})
    context = LegacyContext(base, strategy=_AllClientsStrategy(), client_manager=client_manager)
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: 1})
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()

    with _quiet_flwr_logger():
        workflow = SecAggPlusWorkflow(
            num_shares,
            reconstruction_threshold,
            max_weight=_MAX_WEIGHT,
            clipping_range=clipping_range,
            quantization_range=quantization_range,
            modulus_range=modulus,
            timeout=timeout,
        )
    # Time each stage by wrapping the bound methods on this instance;
    # SecAggPlusWorkflow.__call__ looks them up on self, in its own order.
    stage_wall: dict[str, float] = {}
    states: list[Any] = []
    for stage, attr in zip(
        STAGES,
        ("setup_stage", "share_keys_stage", "collect_masked_vectors_stage", "unmask_stage"),
        strict=True,
    ):
        setattr(workflow, attr, _timed(getattr(workflow, attr), stage, stage_wall, states))

    with _quiet_flwr_logger(), server_task_identity(), _capture_unmasked_sum() as seen:
        t0 = time.perf_counter()
        workflow(grid, context)
        total = time.perf_counter() - t0
    failures = [str(f) for f in states[-1].failures] if states else []

    if not seen:
        done = [s for s in STAGES if s in stage_wall]
        raise FlowerBaselineError(
            f"Flower's SecAgg+ halted in stage {done[-1] if done else 'none'!r}; "
            f"client errors: {ledger.client_errors}; failures: {failures}"
        )
    recon = seen[-1]
    factor = int(recon[0][0]) % modulus
    k = (-factor) % modulus  # each contributor adds T = -1 mod M
    aggregate = (np.asarray(recon[1]).astype(np.int64) & (modulus - 1)).astype(np.uint64)
    aggregate = aggregate.reshape(shape)
    included = frozenset(ledger.uploaded)
    if k != len(included):
        raise FlowerBaselineError(
            f"Flower's sum counts {k} contributors but {len(included)} uploaded"
        )

    server_seconds = {
        s: stage_wall[s] - ledger.client_time_in(s) - ledger.transport_seconds.get(s, 0.0)
        for s in stage_wall
    }
    return FlowerRun(
        aggregate=aggregate,
        included=included,
        modulus_bits=modulus_bits,
        num_shares=num_shares,
        reconstruction_threshold=reconstruction_threshold,
        dropouts=plan,
        total_seconds=total,
        server_seconds=server_seconds,
        client_seconds=ledger.client_seconds,
        transport_seconds=ledger.transport_seconds,
        bytes_down=ledger.bytes_down,
        bytes_up=ledger.bytes_up,
        client_errors=ledger.client_errors,
        failures=failures,
    )


def _timed(
    fn: Callable[[Grid, LegacyContext, Any], bool],
    stage: str,
    out: dict[str, float],
    states: list[Any],
) -> Callable[[Grid, LegacyContext, Any], bool]:
    """Wrap a workflow stage method to record its wall time and its state."""

    def wrapper(grid: Grid, context: LegacyContext, state: Any) -> bool:
        states[:] = [state]
        t0 = time.perf_counter()
        try:
            return fn(grid, context, state)
        finally:
            out[stage] = time.perf_counter() - t0

    return wrapper


def _plain_sum(inputs: dict[int, np.ndarray], cids: Iterable[int], bits: int) -> np.ndarray:
    """Return the sum of the given clients' inputs mod ``2**bits`` as uint64."""
    total = np.zeros(np.shape(next(iter(inputs.values()))), dtype=np.uint64)
    for cid in cids:
        total += np.asarray(inputs[cid]).astype(np.uint64)
    return total & np.uint64((1 << bits) - 1)


def _main() -> None:  # pragma: no cover - manual benchmark entry point
    """Print one table row (and one JSON line to --json) per (n, dropout) run."""
    import argparse
    import json

    from securefl.strictjson import sanitize

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--length", type=int, default=100_000)
    parser.add_argument("--bits", type=int, default=MAX_MODULUS_BITS)
    parser.add_argument("--dropout", type=float, nargs="+", default=[0.0, 0.1])
    parser.add_argument("--dropout-stage", default=Stage.COLLECT_MASKED_VECTORS, choices=STAGES)
    parser.add_argument(
        "--shares", default="full", help="'full' (num_shares = n) or an odd integer"
    )
    parser.add_argument(
        "--threshold-frac", type=float, default=2 / 3, help="threshold = floor(f*shares)+1"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="append one JSON object per run here")
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    cols = "".join(f" {s[:8]:>8}:srv {'cli_mean':>8} {'cli_max':>8}" for s in STAGES)
    print(
        f"{'n':>4} {'drop':>5} {'k':>4} {'t':>4} {'total_s':>8}{cols} {'serde_s':>7}"
        f" {'upKB':>7} {'downKB':>7} ok"
    )
    for n in args.clients:
        for frac in args.dropout:
            inputs = {
                cid: rng.integers(0, 1 << args.bits, args.length, dtype=np.uint64)
                for cid in range(n)
            }
            shares = n if args.shares == "full" else int(args.shares)
            threshold = min(shares - 1, int(args.threshold_frac * shares) + 1)
            dropped = {cid: args.dropout_stage for cid in range(round(frac * n))}
            run = run_flower_secaggplus(
                inputs,
                modulus_bits=args.bits,
                num_shares=shares,
                reconstruction_threshold=threshold,
                dropouts=dropped,
            )
            ok = bool(np.array_equal(run.aggregate, _plain_sum(inputs, run.included, args.bits)))
            up = float(np.mean([run.total_bytes_up(c) for c in range(n)])) / 1e3
            down = float(np.mean([run.total_bytes_down(c) for c in range(n)])) / 1e3
            cells = "".join(
                f" {run.server_seconds.get(s, 0.0):12.3f} {run.client_stage_mean(s):8.4f}"
                f" {run.client_stage_max(s):8.4f}"
                for s in STAGES
            )
            serde = sum(run.transport_seconds.values())
            print(
                f"{n:>4} {frac:>5.2f} {shares:>4} {threshold:>4} {run.total_seconds:8.2f}"
                f"{cells} {serde:7.2f} {up:7.1f} {down:7.1f} {ok}",
                flush=True,
            )
            if args.json:
                record = {
                    "n": n,
                    "m": args.length,
                    "bits": args.bits,
                    "dropout": frac,
                    "dropout_stage": args.dropout_stage,
                    "num_shares": shares,
                    "threshold": threshold,
                    "ok": ok,
                    "total_seconds": run.total_seconds,
                    "server_seconds": run.server_seconds,
                    "client_seconds_sum": {
                        s: sum(p.get(s, 0.0) for p in run.client_seconds.values()) for s in STAGES
                    },
                    "client_seconds_mean": {s: run.client_stage_mean(s) for s in STAGES},
                    "client_seconds_max": {s: run.client_stage_max(s) for s in STAGES},
                    "transport_seconds": run.transport_seconds,
                    "bytes_up_mean": up * 1e3,
                    "bytes_down_mean": down * 1e3,
                }
                with open(args.json, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(sanitize(record), allow_nan=False) + "\n")


if __name__ == "__main__":  # pragma: no cover
    _main()
