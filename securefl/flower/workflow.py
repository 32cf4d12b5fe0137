"""The server side: drive securefl's :class:`ServerSession` over a Flower
``Grid``, one Flower message exchange per protocol round.

:class:`SecureAggregationWorkflow` is what replaces Flower's
``SecAggPlusWorkflow`` in a ServerApp.  Each protocol round sends one
``train`` message to each node the session expects an answer from and
collects the replies until the round timeout.  A node that does not reply in
time, or replies with an error (a killed SuperNode, a crashed ClientApp, a
protocol violation it detected) is simply absent from that round: the
server's ``close_round()`` then records it as a dropout at that round (e.g.
``DEAD_AFTER_SHARE_KEYS_RECEIVED``).  A reply that breaks the protocol is
refused by the session and counts as absent too, and so does a node whose
own policy refuses the session setup (its reply names the rule; see
:mod:`securefl.flower.policy`).  Fewer than ``threshold``
survivors raises :class:`~securefl.errors.AbortError`; the caller's model and
ledger are untouched and the next round starts afresh.

Node ids and client ids: a node tells the server its protocol client id in a
one-off ``register`` exchange (new nodes are registered at the start of any
round); in active mode the server accepts the registration only if the node
presents the identity key pinned for that id, and every later signature is
checked against the pinned keys anyway.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from securefl.encoding import DecodedSum, FixedPointCodec
from securefl.errors import (
    AbortError,
    ConfigurationError,
    RemoteProtocolError,
    Rule,
    SecureFLError,
)
from securefl.flower.setup import (
    DP_METRIC_PREFIX,
    DP_METRICS_RECORD,
    RECORD,
    Key,
    SessionSetup,
    Stage,
)
from securefl.hazmat import signing
from securefl.protocol.config import (
    ROSTER_DELIVERIES,
    ClientStatus,
    Round,
    SecAggConfig,
    SecurityMode,
    default_threshold,
    session_roster_delivery,
)
from securefl.protocol.graphs import CompleteGraph, NeighbourGraph
from securefl.protocol.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    EncryptedShares,
    MaskedInput,
    UnmaskingResponse,
)
from securefl.protocol.server import ServerSession
from securefl.wire import codec as wire

__all__ = [
    "FlowerRoundResult",
    "SecureAggregationSettings",
    "SecureAggregationWorkflow",
    "dropped_round",
    "exchange",
]

log = logging.getLogger("securefl.flower")

_REPLY_OF_ROUND: dict[Round, type] = {
    Round.ADVERTISE_KEYS: AdvertiseKeys,
    Round.SHARE_KEYS: EncryptedShares,
    Round.MASKED_INPUT_COLLECTION: MaskedInput,
    Round.CONSISTENCY_CHECK: ConsistencySignature,
    Round.UNMASKING: UnmaskingResponse,
}

_DEAD_AT: dict[ClientStatus, Round] = {
    ClientStatus.READY_TO_START: Round.ADVERTISE_KEYS,
    ClientStatus.DEAD_BEFORE_SENDING_ANYTHING: Round.ADVERTISE_KEYS,
    ClientStatus.DEAD_AFTER_ADVERTISE_KEYS_RECEIVED: Round.SHARE_KEYS,
    ClientStatus.DEAD_AFTER_SHARE_KEYS_RECEIVED: Round.MASKED_INPUT_COLLECTION,
    ClientStatus.DEAD_AFTER_CONSISTENCY_CHECK_RECEIVED: Round.UNMASKING,
}


def dropped_round(status: ClientStatus, mode: SecurityMode) -> Round | None:
    """The first protocol round a client with final ``status`` did not
    answer (the simulator's ``dropped_at``), or None if it answered all."""
    if status is ClientStatus.DEAD_AFTER_MASKED_INPUT_RESPONSE_RECEIVED:
        return Round.CONSISTENCY_CHECK if mode is SecurityMode.ACTIVE else Round.UNMASKING
    return _DEAD_AT.get(status)


@dataclass(frozen=True)
class SecureAggregationSettings:
    """How the server runs secure aggregation over Flower.

    Attributes:
        mode: semi-honest or active (see :class:`SecurityMode`); None (the
            default): active when ``pinned_keys`` are given, else semi-honest.
            Each node decides by its own policy what it accepts: a node with
            identity keys refuses semi-honest mode, and a node refuses
            semi-honest mode unless its operator says its channels are
            authenticated or opts in to running without.
        threshold: minimum survivors per protocol round (default: the
            protocol's default for the number of registered nodes on the
            complete graph, ``floor(h/2) + 1`` on a sparse graph whose
            clients' shares have ``h`` holders, i.e. ``floor((k+1)/2) + 1``
            for ``HararyGraph(k)``).
        min_survivors: the :class:`SecAggConfig` ``min_survivors`` of every
            session (None, the default: the threshold).  In active mode it
            raises the signature quorum ``q`` (SPEC.md [PARAM-7]); against
            ``c`` clients colluding with the server SPEC.md [SEC-1] needs
            ``q >= max(floor((n + c)/2) + 1, n - kappa + 1 + c)`` (``kappa =
            k`` on ``HararyGraph(k)``, ``n - 1`` on the complete graph), and
            a node whose policy assumes corrupt clients
            (``securefl-graph-corrupt-fraction``) refuses a setup without it.
            Each session uses ``min(min_survivors, n)`` for its ``n``
            registered nodes, and at least the threshold; it is announced in
            the session setup and bound into the configuration digest.
        graph: who masks with whom: ``CompleteGraph()`` (default) or
            ``HararyGraph(k)`` (SecAgg+: each node masks with and deals
            shares to its ``k`` neighbours only, on a ring permuted by the
            session id).  It is announced in every session setup and bound
            into the configuration digest; each node checks it against its
            own policy.
        timeout: seconds to wait for the replies of one protocol round.
        poll_interval: seconds between pulls for replies; None uses
            ``grid.send_and_receive`` itself (which polls every 3 s in flwr
            1.41/1.42), a number uses ``push_messages``/``pull_messages`` with
            the same semantics, only faster.
        pinned_keys: active mode: client id -> pinned Ed25519 public key.
        federation: a name bound into every session's context.
        authenticated_channels: the operator states that the SuperLink and
            every SuperNode use TLS with server authentication and SuperNode
            authentication; without it (or
            ``allow_unauthenticated_semi_honest``) semi-honest mode logs a
            warning (the nodes refuse it by their own policy anyway).
        allow_unauthenticated_semi_honest: the operator opts in, by name, to
            semi-honest mode over unauthenticated channels.
        roster_delivery: ``"full"`` (default): every node receives the whole
            key roster; ``"merkle"`` (a sparse ``graph`` only): each node
            receives its own :class:`~securefl.protocol.messages.SparseKeyRoster`
            (its own and its neighbours' entries with Merkle inclusion
            proofs, O(k log n) bytes instead of O(n)).  A session whose
            registered nodes are too few for the graph to be sparse (``k +
            1`` nodes on ``HararyGraph(k)``) uses ``"full"``; the round's
            result says which one it used.  Announced in the session setup
            and bound into the configuration digest.
    """

    mode: SecurityMode | None = None
    threshold: int | None = None
    timeout: float = 120.0
    poll_interval: float | None = 0.25
    pinned_keys: Mapping[int, Ed25519PublicKey | bytes] | None = None
    federation: str = "securefl"
    authenticated_channels: bool = False
    allow_unauthenticated_semi_honest: bool = False
    graph: NeighbourGraph = field(default_factory=CompleteGraph)
    roster_delivery: str = "full"
    min_survivors: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.graph, NeighbourGraph):
            raise ConfigurationError(f"graph must be a NeighbourGraph, got {self.graph!r}")
        survivors = self.min_survivors
        if survivors is not None and (isinstance(survivors, bool)
                                      or not isinstance(survivors, int) or survivors < 1):
            raise ConfigurationError(f"min_survivors must be an int >= 1 or None, got"
                                     f" {survivors!r}")
        if self.roster_delivery not in ROSTER_DELIVERIES:
            raise ConfigurationError(f"roster_delivery must be one of"
                                     f" {', '.join(ROSTER_DELIVERIES)}, got"
                                     f" {self.roster_delivery!r}")
        if self.roster_delivery == "merkle" and isinstance(self.graph, CompleteGraph):
            raise ConfigurationError("roster_delivery merkle needs a sparse graph (on the"
                                     " complete graph every node needs every roster entry):"
                                     " use HararyGraph(k), or roster_delivery full")
        if self.mode is None:
            object.__setattr__(self, "mode", SecurityMode.ACTIVE if self.pinned_keys
                               else SecurityMode.SEMI_HONEST)
        object.__setattr__(self, "mode", SecurityMode(self.mode))
        if not self.timeout > 0:
            raise ConfigurationError(f"timeout must be > 0, got {self.timeout}")
        if self.mode is SecurityMode.ACTIVE and not self.pinned_keys:
            raise ConfigurationError("active mode needs pinned_keys (see securefl.flower.keys)")
        if self.mode is SecurityMode.SEMI_HONEST and not (
                self.authenticated_channels or self.allow_unauthenticated_semi_honest):
            log.warning("semi-honest mode without authenticated channels: a deviating server or"
                        " anyone controlling the network can learn individual inputs; nodes"
                        " refuse it unless their operators opt in")


@dataclass(frozen=True)
class FlowerRoundResult:
    """One successful secure aggregation over Flower.

    Attributes:
        total: the exact sum mod 2^bits of the survivors' encoded updates.
        decoded: ``total`` decoded by the codec.
        survivors: client ids whose update is in the sum.
        statuses: every invited client's final status.
        invited: the client ids of the session.
        dp_metrics: client id -> the ``dp-*`` metrics it forwarded with its
            masked input (its DP accounting parameters).
        node_ids: client id -> Flower node id.
        refused: client id -> the node-policy rule (value of
            :class:`~securefl.flower.policy.PolicyRule`) under which the node
            refused the session setup.
        roster_delivery: the roster delivery the session used (``"full"``
            or ``"merkle"``).
    """

    total: np.ndarray
    decoded: DecodedSum
    survivors: tuple[int, ...]
    statuses: Mapping[int, ClientStatus]
    invited: tuple[int, ...]
    dp_metrics: Mapping[int, dict[str, Any]] = field(default_factory=dict)
    node_ids: Mapping[int, int] = field(default_factory=dict)
    refused: Mapping[int, str] = field(default_factory=dict)
    roster_delivery: str = "full"

    def dropped_at(self, mode: SecurityMode) -> dict[int, Round]:
        """Client id -> the protocol round it dropped at."""
        out = {}
        for cid, status in self.statuses.items():
            rnd = dropped_round(status, mode)
            if rnd is not None:
                out[cid] = rnd
        return out


def exchange(grid: Grid, messages: Sequence[Message], timeout: float,
             poll_interval: float | None) -> list[Message]:
    """Send ``messages`` and collect the replies that arrive within
    ``timeout`` seconds (``grid.send_and_receive`` semantics)."""
    if not messages:
        return []
    if poll_interval is None:
        return list(grid.send_and_receive(messages, timeout=timeout))
    pending = set(grid.push_messages(messages))
    deadline = time.monotonic() + timeout
    replies: list[Message] = []
    while pending:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(poll_interval)
    return replies


_DP_SCALARS = ("dp-noise-multiplier", "dp-sample-rate", "dp-steps")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _dp_metrics(reply: Message, cid: int, rnd: Round) -> dict[str, Any]:
    """The DP accounting metrics a masked-input reply carries (untrusted):
    ``dp-*`` names with finite numbers, ``dp-history`` a list of finite
    numbers whose length is a multiple of 3.

    Raises:
        RemoteProtocolError: anything else (the reply is refused).
    """
    record = reply.content.metric_records.get(DP_METRICS_RECORD)
    metrics = dict(record) if record is not None else {}
    for key, value in metrics.items():
        ok = (isinstance(value, list) and all(_finite(v) for v in value)
              and len(value) % 3 == 0) if key == "dp-history" else _finite(value)
        if not key.startswith(DP_METRIC_PREFIX) or not ok or (
                key in _DP_SCALARS and float(value) < 0):
            raise RemoteProtocolError(Rule.MALFORMED, f"DP metric {key[:40]!r} is malformed",
                                      peer=cid, round=rnd)
    return metrics


class SecureAggregationWorkflow:
    """Runs one secure aggregation per federation round over a Flower Grid.

    Args:
        settings: see :class:`SecureAggregationSettings`.
        codec: the fixed-point codec every node encodes its update with.
        on_event: optional callback ``(fl_round, stage, detail)`` called when
            a stage is sent (progress reporting, tests).
    """

    def __init__(self, settings: SecureAggregationSettings, codec: FixedPointCodec, *,
                 on_event: Callable[[int, str, dict[str, Any]], None] | None = None) -> None:
        self.settings = settings
        self.codec = codec
        self.clients: dict[int, int] = {}
        """Flower node id -> protocol client id (registered nodes)."""
        self._pinned = ({int(c): signing.load_identity_public(k)
                         for c, k in settings.pinned_keys.items()}
                        if settings.pinned_keys else None)
        self._on_event = on_event
        self.last_session: SecAggConfig | None = None
        """The configuration of the last session :meth:`run_round` started
        (None before any; it stays set when the round aborts)."""

    # -- registration -------------------------------------------------------------------

    def register(self, grid: Grid) -> dict[int, int]:
        """Register the online nodes not registered yet.

        Returns:
            node id -> client id of every registered node.
        """
        online = set(grid.get_node_ids())
        new = [n for n in online if n not in self.clients]
        messages = [self._message(grid, n, Stage.REGISTER, -1, {}) for n in new]
        for reply in exchange(grid, messages, self.settings.timeout,
                              self.settings.poll_interval):
            node = reply.metadata.src_node_id
            if reply.has_error():
                log.warning("node %s did not register: %s", node, reply.error.reason)
                continue
            try:
                cid = self._check_registration(node, reply, online)
            except SecureFLError as exc:
                log.warning("node %s refused: %s", node, exc)
                continue
            self.clients[node] = cid
        return dict(self.clients)

    def _check_registration(self, node: int, reply: Message, online: set[int]) -> int:
        record = reply.content.config_records.get(RECORD)
        if record is None or Key.CLIENT_ID not in record:
            raise RemoteProtocolError(Rule.MALFORMED, "registration without a client id",
                                      peer=f"node {node}")
        cid = record[Key.CLIENT_ID]
        if isinstance(cid, bool) or not isinstance(cid, int) or cid < 1:
            raise RemoteProtocolError(Rule.MALFORMED, "registration with a client id that is not"
                                      " a positive integer", peer=f"node {node}")
        holder = next((n for n, c in self.clients.items() if c == cid), None)
        if holder is not None and holder in online:
            raise RemoteProtocolError(Rule.DUPLICATE_MESSAGE,
                                      f"client id {cid} is already registered by online node"
                                      f" {holder}", peer=f"node {node}")
        if self._pinned is not None:
            pinned = self._pinned.get(cid)
            presented = record.get(Key.IDENTITY)
            if pinned is None or not isinstance(presented, bytes) or presented != \
                    signing.public_bytes(pinned):
                raise RemoteProtocolError(Rule.INVALID_SIGNATURE,
                                          f"identity key is not the one pinned for client {cid}",
                                          peer=f"node {node}")
        if holder is not None:  # the node came back under a new node id
            del self.clients[holder]
        return cid

    # -- one federation round -----------------------------------------------------------

    def run_round(self, grid: Grid, fl_round: int, arrays: ArrayRecord,
                  train_config: ConfigRecord | None = None) -> FlowerRoundResult:
        """Run one secure aggregation: every registered node is invited; the
        masked-input stage carries ``arrays`` (the global model) and
        ``train_config`` to the nodes' ``train`` function.

        Raises:
            AbortError: fewer than ``threshold`` clients at some protocol
                round (nothing was learned; retry next round).
            AbortError: a sparse graph of degree ``k`` and at most ``k``
                registered nodes (nothing sent; retry when more registered).
            ConfigurationError: fewer than 2 registered nodes, more than the
                codec's ``num_clients``, or a threshold the mode or the graph
                refuses.
        """
        self.last_session = None
        self.register(grid)
        node_of = {cid: node for node, cid in self.clients.items()}
        ids = tuple(sorted(node_of))
        if len(ids) < 2:
            raise ConfigurationError(f"secure aggregation needs 2 registered nodes, got {len(ids)}")
        if len(ids) > self.codec.num_clients:
            raise ConfigurationError(
                f"{len(ids)} nodes registered but the codec's bit budget covers"
                f" {self.codec.num_clients} clients: their sum could overflow")
        graph = self.settings.graph
        degree = getattr(graph, "degree", None)
        if degree is not None and len(ids) <= degree:
            raise AbortError(f"{len(ids)} registered nodes, too few for the"
                             f" {graph.describe()} graph (it needs more than k nodes)",
                             round=Round.ADVERTISE_KEYS, needed=degree + 1, available=len(ids))
        threshold = self.settings.threshold
        if threshold is None:
            threshold = (default_threshold(len(ids), self.settings.mode)  # type: ignore[arg-type]
                         if isinstance(graph, CompleteGraph)
                         else graph.share_holders(len(ids)) // 2 + 1)
        threshold = min(threshold, len(ids))
        min_survivors = None if self.settings.min_survivors is None else max(
            threshold, min(self.settings.min_survivors, len(ids)))
        config = SecAggConfig(
            num_clients=len(ids), vector_length=self.codec.vector_length, bits=self.codec.bits,
            threshold=threshold, mode=self.settings.mode, client_ids=ids, graph=graph,
            context=f"{self.settings.federation} run {grid.run.run_id} round {fl_round}".encode(),
            roster_delivery=session_roster_delivery(self.settings.roster_delivery, graph,
                                                    len(ids)),
            min_survivors=min_survivors,
        )
        if self._pinned is not None:
            missing = [c for c in ids if c not in self._pinned]
            if missing:
                raise ConfigurationError(f"no pinned identity key for clients {missing}")
        setup = SessionSetup.create(fl_round, config, self.codec)
        server = ServerSession(config, peer_identities=self._pinned)
        self.last_session = config
        online = set(grid.get_node_ids())
        dp_metrics: dict[int, dict[str, Any]] = {}
        refused: dict[int, str] = {}

        outgoing = {cid: b"" for cid in ids if node_of[cid] in online}
        rnd: Round | None = Round.ADVERTISE_KEYS
        while rnd is not None:
            stage = Stage.of_round(rnd)
            extra: dict[str, Any] = {Key.SETUP: setup.to_bytes()} if rnd is Round.ADVERTISE_KEYS \
                else {}
            messages = []
            for cid, payload in outgoing.items():
                content_extra = dict(extra)
                if payload:
                    content_extra[Key.PAYLOAD] = payload
                messages.append(self._message(
                    grid, node_of[cid], stage, fl_round, content_extra,
                    arrays if rnd is Round.MASKED_INPUT_COLLECTION else None,
                    train_config if rnd is Round.MASKED_INPUT_COLLECTION else None))
            self._event(fl_round, stage.value, {"to": sorted(outgoing)})
            replies = exchange(grid, messages, self.settings.timeout,
                               self.settings.poll_interval)
            cid_of = {node_of[c]: c for c in outgoing}
            for reply in replies:
                self._accept(server, config, rnd, reply, cid_of, dp_metrics, refused)
            try:
                envelopes = server.close_round()
            except AbortError:
                self._abort(grid, fl_round, [node_of[c] for c in ids if node_of[c] in online])
                raise  # nothing changed; the caller's model and ledger stay as they were
            rnd = server.round
            outgoing = {e.recipient: wire.encode(e.message, element_bytes=config.element_bytes)
                        for e in envelopes}
        result = server.result
        self._event(fl_round, "finished", {"survivors": list(result.survivors)})
        return FlowerRoundResult(
            total=result.total, decoded=self.codec.decode_sum(result.total),
            survivors=tuple(sorted(result.survivors)), statuses=dict(result.statuses),
            invited=ids, dp_metrics=dp_metrics, node_ids=node_of, refused=refused,
            roster_delivery=config.roster_delivery,
        )

    def _accept(self, server: ServerSession, config: SecAggConfig, rnd: Round, reply: Message,
                cid_of: Mapping[int, int], dp_metrics: dict[int, dict[str, Any]],
                refused: dict[int, str]) -> None:
        node = reply.metadata.src_node_id
        cid = cid_of.get(node)
        if cid is None:
            return
        if reply.has_error():
            log.info("client %s (node %s) dropped at %s: %s", cid, node, rnd.name,
                     reply.error.reason)
            return
        record = reply.content.config_records.get(RECORD)
        if record is not None and Key.REFUSED in record:
            refused[cid] = str(record[Key.REFUSED])[:100]
            log.warning("client %s (node %s) refused the session setup at %s by its policy:"
                        " %s: %s", cid, node, rnd.name, refused[cid],
                        str(record.get(Key.REASON, ""))[:300])
            return
        try:
            payload = record.get(Key.PAYLOAD) if record is not None else None
            if not isinstance(payload, bytes):
                raise RemoteProtocolError(Rule.MALFORMED, "reply without a securefl payload",
                                          peer=cid, round=rnd)
            message = wire.decode(payload, config=config, expect=_REPLY_OF_ROUND[rnd])
            sender = getattr(message, "sender", None)
            if sender != cid:
                raise RemoteProtocolError(Rule.UNKNOWN_PEER,
                                          f"node {node} is client {cid}, not {sender}",
                                          peer=cid, round=rnd)
            metrics = (_dp_metrics(reply, cid, rnd) if rnd is Round.MASKED_INPUT_COLLECTION
                       else None)
            server.receive(message)
        except RemoteProtocolError as exc:
            log.warning("refused the reply of client %s at %s: %s", cid, rnd.name, exc)
            return
        if metrics is not None:
            dp_metrics[cid] = metrics

    def _abort(self, grid: Grid, fl_round: int, nodes: Sequence[int]) -> None:
        """Tell the nodes to forget the aborted session's secrets now rather
        than at the next session (best effort: pushed, not awaited)."""
        self._event(fl_round, Stage.ABORT.value, {})
        try:
            grid.push_messages([self._message(grid, n, Stage.ABORT, fl_round, {})
                                for n in nodes])
        except Exception as exc:  # a notification must never hide the AbortError
            log.warning("could not notify the nodes of the abort: %s", exc)

    def _message(self, grid: Grid, node: int, stage: Stage, fl_round: int,
                 extra: Mapping[str, Any], arrays: ArrayRecord | None = None,
                 train_config: ConfigRecord | None = None) -> Message:
        content = RecordDict({RECORD: ConfigRecord({Key.STAGE: stage.value,
                                                    Key.FL_ROUND: int(fl_round), **extra})})
        if arrays is not None:
            content.array_records["arrays"] = arrays
        if train_config is not None:
            content.config_records["config"] = train_config
        return Message(content, dst_node_id=node, message_type=MessageType.TRAIN,
                       ttl=max(self.settings.timeout, 30.0), group_id=str(fl_round))

    def _event(self, fl_round: int, stage: str, detail: dict[str, Any]) -> None:
        if self._on_event is not None:
            self._on_event(fl_round, stage, detail)

