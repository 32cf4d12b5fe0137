"""What the server tells every node at the start of a secure aggregation
session, and the names used inside Flower messages.

Nothing here imports Flower: the session setup is plain data, serialised as
canonical JSON bytes so that a node can store it in its Flower ``Context``
and rebuild the same :class:`~securefl.protocol.SecAggConfig` in every
ClientApp process of the session.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

from securefl.encoding import FixedPointCodec
from securefl.errors import ConfigurationError, EncodingError
from securefl.protocol.config import ROSTER_DELIVERIES, Round, SecAggConfig, SecurityMode
from securefl.protocol.graphs import CompleteGraph, NeighbourGraph
from securefl.protocol.harary import HararyGraph

__all__ = [
    "DP_METRIC_PREFIX",
    "RECORD",
    "STATE_RECORD",
    "Key",
    "SessionSetup",
    "Stage",
    "parse_graph",
]

RECORD = "securefl"
"""Name of the ConfigRecord carrying securefl's protocol data in a message."""
STATE_RECORD = "securefl.session"
"""Name of the ConfigRecord a node keeps in its Context state (secret)."""
DP_METRICS_RECORD = "securefl.dp"
"""Name of the MetricRecord a node's masked-input reply carries (public DP
accounting data: noise multiplier, sample rate, steps, history)."""
DP_METRIC_PREFIX = "dp-"
"""Metrics of the ClientApp's train reply that start with this prefix are
forwarded, in clear, to the server for the privacy ledger; no other metric
leaves the node (no example count, loss or clipped-value count)."""
MAX_SETUP_BYTES = 1 << 20
"""The largest session setup a node parses."""

_HARARY = re.compile(r"harary:k=([1-9][0-9]{0,9})")


def parse_graph(text: str) -> NeighbourGraph:
    """The graph a session setup names by its canonical description
    (:meth:`~securefl.protocol.graphs.NeighbourGraph.describe`, the text the
    configuration digest binds): ``"complete"``
    (:class:`~securefl.protocol.graphs.CompleteGraph`) or ``"harary:k=<k>"``
    (:class:`~securefl.protocol.harary.HararyGraph` of degree ``k``, written
    in decimal without sign or leading zero).  The node builds the graph
    itself from this text, so its neighbours, share holders and
    connectivity come from the node's own code, never from the server; the
    ring permutation is keyed by the session id, which every party derives.

    Raises:
        ConfigurationError: any other text, or an odd degree.
    """
    if not isinstance(text, str) or len(text) > 64:
        raise ConfigurationError("graph must be a string of at most 64 characters")
    if text == "complete":
        return CompleteGraph()
    found = _HARARY.fullmatch(text)
    if found is None:
        raise ConfigurationError(f"unknown graph {text[:64]!r}: securefl.flower carries"
                                 " 'complete' and 'harary:k=<even k>'")
    return HararyGraph(int(found.group(1)))


class Stage(str, enum.Enum):
    """What a securefl Flower message asks of a node."""

    REGISTER = "register"
    """Tell the server which protocol client id this node is (and, in active
    mode, its identity public key)."""
    ADVERTISE_KEYS = "advertise-keys"
    SHARE_KEYS = "share-keys"
    MASKED_INPUT_COLLECTION = "masked-input-collection"
    CONSISTENCY_CHECK = "consistency-check"
    UNMASKING = "unmasking"
    ABORT = "abort"
    """The server aborted the session: forget it (best effort, not awaited)."""

    @classmethod
    def of_round(cls, rnd: Round) -> Stage:
        """The stage carrying protocol round ``rnd``."""
        return _STAGE_OF_ROUND[rnd]

    @property
    def round(self) -> Round:
        """The protocol round of this stage.

        Raises:
            ConfigurationError: for :attr:`REGISTER` and :attr:`ABORT`, which
                are no protocol rounds.
        """
        for rnd, stage in _STAGE_OF_ROUND.items():
            if stage is self:
                return rnd
        raise ConfigurationError(f"stage {self.value} is not a protocol round")


_STAGE_OF_ROUND = {
    Round.ADVERTISE_KEYS: Stage.ADVERTISE_KEYS,
    Round.SHARE_KEYS: Stage.SHARE_KEYS,
    Round.MASKED_INPUT_COLLECTION: Stage.MASKED_INPUT_COLLECTION,
    Round.CONSISTENCY_CHECK: Stage.CONSISTENCY_CHECK,
    Round.UNMASKING: Stage.UNMASKING,
}


class Key:
    """Field names inside the ``securefl`` ConfigRecord."""

    STAGE = "stage"
    SETUP = "setup"
    PAYLOAD = "payload"
    CLIENT_ID = "client-id"
    IDENTITY = "identity-public-key"
    FL_ROUND = "fl-round"
    REFUSED = "refused"
    """In a node's reply: the node's policy refused the setup; the value is the
    :class:`~securefl.flower.policy.PolicyRule` value."""
    REASON = "reason"
    """With :attr:`REFUSED`: what was announced and what the policy requires."""


@dataclass(frozen=True)
class SessionSetup:
    """One secure aggregation session as announced to the nodes.

    Attributes:
        fl_round: the federation round this session aggregates.
        num_clients, threshold, mode, client_ids, context: the
            :class:`SecAggConfig` fields.
        shapes, bits, frac_bits, clip, max_weight, codec_clients: the
            :class:`FixedPointCodec` the node encodes its update with
            (``vector_length`` follows from the shapes).
        graph: who masks with whom, as the canonical text the configuration
            digest binds (:func:`parse_graph`): ``"complete"`` or
            ``"harary:k=<k>"`` (SecAgg+).
        roster_delivery: ``"full"`` (the whole key roster) or ``"merkle"``
            (a sparse graph only: the node receives a
            :class:`~securefl.protocol.messages.SparseKeyRoster` of its own
            and its neighbours' entries, proven against a Merkle root the
            session id binds; SPEC.md section 10.1a).  Bound into the
            configuration digest when ``"merkle"``.  Written in the setup
            bytes only when ``"merkle"``, so a full-roster setup is byte for
            byte what it was before the field existed.
        min_survivors: the :class:`SecAggConfig` ``min_survivors`` when it
            exceeds ``threshold`` (it raises the active-mode
            :attr:`~securefl.protocol.SecAggConfig.signature_quorum`, which
            SPEC.md [SEC-1] needs against corrupt clients); None: the
            default, ``threshold``.  Bound into the configuration digest (as
            the floor ``max(t, min_survivors)``), so the node builds exactly
            the server's configuration.  Written in the setup bytes only
            when set, so a setup with the default is byte for byte what it
            was before the field existed (and a node that predates the field
            refuses a setup that carries it, instead of running with a
            smaller quorum).

    There is no rounding seed: a node rounds stochastically with randomness
    from its own OS CSPRNG, never with anything the server chose.
    """

    fl_round: int
    num_clients: int
    threshold: int
    mode: str
    client_ids: tuple[int, ...]
    context: bytes
    shapes: tuple[tuple[int, ...], ...]
    bits: int
    frac_bits: int
    clip: float
    max_weight: int
    codec_clients: int
    graph: str = "complete"
    roster_delivery: str = "full"
    min_survivors: int | None = None

    def __post_init__(self) -> None:
        # one spelling of the default: equal to the threshold is None
        if self.min_survivors is not None and self.min_survivors == self.threshold:
            object.__setattr__(self, "min_survivors", None)

    @classmethod
    def create(cls, fl_round: int, config: SecAggConfig,
               codec: FixedPointCodec) -> SessionSetup:
        """The setup announcing ``config`` and ``codec`` for ``fl_round``.

        Raises:
            ConfigurationError: a graph other than :class:`CompleteGraph`
                and :class:`HararyGraph` (one whose description
                :func:`parse_graph` does not turn back into it), or a codec
                of another length.
        """
        graph = config.graph.describe()
        try:
            carried = parse_graph(graph)
        except ConfigurationError:
            carried = None
        if carried != config.graph:
            raise ConfigurationError(f"securefl.flower carries CompleteGraph and HararyGraph,"
                                     f" not {config.graph!r}")
        if config.vector_length != codec.vector_length or config.bits != codec.bits:
            raise ConfigurationError("the codec does not match the session configuration")
        return cls(fl_round=int(fl_round), num_clients=config.num_clients, threshold=config.t,
                   mode=config.mode.value, client_ids=tuple(config.ids), context=config.context,
                   shapes=tuple(tuple(s) for s in codec.shapes), bits=codec.bits,
                   frac_bits=codec.frac_bits, clip=float(codec.clip),
                   max_weight=codec.max_weight, codec_clients=codec.num_clients, graph=graph,
                   roster_delivery=config.roster_delivery,
                   min_survivors=config.min_survivors)

    def secagg_config(self) -> SecAggConfig:
        """The session configuration (validated again on this side).

        Raises:
            ConfigurationError: an invalid configuration.
        """
        if self.mode not in {m.value for m in SecurityMode}:
            raise ConfigurationError(f"unknown security mode {self.mode!r}")
        return SecAggConfig(num_clients=self.num_clients, vector_length=self.codec().vector_length,
                            bits=self.bits, threshold=self.threshold,
                            mode=SecurityMode(self.mode), client_ids=self.client_ids,
                            graph=parse_graph(self.graph), context=self.context,
                            roster_delivery=self.roster_delivery,
                            min_survivors=self.min_survivors)

    def codec(self) -> FixedPointCodec:
        """The fixed-point codec (validated again on this side)."""
        return FixedPointCodec(shapes=self.shapes, bits=self.bits, frac_bits=self.frac_bits,
                               clip=self.clip, num_clients=self.codec_clients,
                               max_weight=self.max_weight)

    def to_bytes(self) -> bytes:
        """Canonical JSON bytes (``roster_delivery`` only when ``"merkle"``,
        ``min_survivors`` only when set)."""
        data: dict[str, Any] = asdict(self)
        data["context"] = self.context.hex()
        if self.roster_delivery == "full":
            del data["roster_delivery"]
        if self.min_survivors is None:
            del data["min_survivors"]
        return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> SessionSetup:
        """Parse :meth:`to_bytes` output (untrusted bytes from the server).

        Every field must be present with its JSON type (integers are not
        booleans, no other field is allowed), and the setup must build a
        valid :class:`SecAggConfig` and :class:`FixedPointCodec` whose bit
        budget covers every invited client; ``graph`` must name a graph
        :func:`parse_graph` builds, valid for the clients and threshold.
        ``roster_delivery`` is optional (absent: ``"full"``); when present it
        must be ``"merkle"`` (the one canonical spelling of a full-roster
        setup leaves it out), with a graph that is sparse for the clients.
        ``min_survivors`` is optional too (absent: the threshold); when
        present it must be an integer above ``threshold`` and at most
        ``num_clients`` (a setup with the default leaves it out).

        Raises:
            ConfigurationError: malformed, oversized or inconsistent setup
                (never another exception).
        """
        if not isinstance(raw, bytes | bytearray | memoryview):
            raise ConfigurationError("a securefl session setup is bytes")
        if len(raw) > MAX_SETUP_BYTES:
            raise ConfigurationError(f"session setup of {len(raw)} bytes exceeds"
                                     f" {MAX_SETUP_BYTES}")
        try:
            data = json.loads(bytes(raw).decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise ConfigurationError(f"malformed securefl session setup: {exc}") from None
        if not isinstance(data, dict) or set(data) - _OPTIONAL != _REQUIRED:
            raise ConfigurationError("malformed securefl session setup: expected exactly the"
                                     f" fields {sorted(_REQUIRED)} (and optionally"
                                     f" {', '.join(sorted(_OPTIONAL))})")
        delivery = data.get("roster_delivery", "full")
        if "roster_delivery" in data and (not isinstance(delivery, str)
                                          or delivery == "full"
                                          or delivery not in ROSTER_DELIVERIES):
            shown = repr(delivery[:32]) if isinstance(delivery, str) else type(delivery).__name__
            raise ConfigurationError(
                f"unknown roster_delivery {shown}: a session setup names"
                " 'merkle', or leaves the field out for 'full'")
        ints = {k: _int_field(data, k) for k in ("fl_round", "num_clients", "threshold", "bits",
                                                 "frac_bits", "max_weight", "codec_clients")}
        if ints["fl_round"] < 0:
            raise ConfigurationError("fl_round must be >= 0")
        min_survivors = None
        if "min_survivors" in data:
            min_survivors = _int_field(data, "min_survivors")
            if not ints["threshold"] < min_survivors <= ints["num_clients"]:
                raise ConfigurationError(
                    f"min_survivors {min_survivors} must exceed the threshold"
                    f" {ints['threshold']} and be at most num_clients {ints['num_clients']}"
                    " (a setup with the default leaves the field out)")
        context = data["context"]
        if not isinstance(context, str) or len(context) > 2048:
            raise ConfigurationError("context must be a hex string of at most 1024 bytes")
        try:
            context_bytes = bytes.fromhex(context)
        except ValueError:
            raise ConfigurationError("context is not hex") from None
        ids, shapes, clip = data["client_ids"], data["shapes"], data["clip"]
        if not isinstance(data["mode"], str):
            raise ConfigurationError("mode must be a string")
        parse_graph(data["graph"])  # a string naming a graph this node can build
        if not isinstance(ids, list) or not all(_is_int(c) for c in ids):
            raise ConfigurationError("client_ids must be a list of integers")
        if not isinstance(shapes, list) or not all(
                isinstance(s, list) and all(_is_int(d) for d in s) for s in shapes):
            raise ConfigurationError("shapes must be a list of lists of integers")
        if isinstance(clip, bool) or not isinstance(clip, int | float):
            raise ConfigurationError("clip must be a number")
        try:
            setup = cls(mode=data["mode"], graph=data["graph"], client_ids=tuple(ids),
                        roster_delivery=delivery, min_survivors=min_survivors,
                        context=context_bytes,
                        shapes=tuple(tuple(s) for s in shapes), clip=float(clip), **ints)
        except OverflowError:
            raise ConfigurationError("clip is out of range") from None
        try:
            codec = setup.codec()  # validates
        except EncodingError as exc:  # a bit budget that could overflow
            raise ConfigurationError(f"the session's codec is refused: {exc}") from None
        setup.secagg_config()  # validates
        if codec.num_clients < setup.num_clients:
            raise ConfigurationError(f"the codec's bit budget covers {codec.num_clients}"
                                     f" clients, the session invites {setup.num_clients}")
        return setup


_FIELDS = frozenset(f.name for f in fields(SessionSetup))
_OPTIONAL = frozenset({"roster_delivery", "min_survivors"})
_REQUIRED = _FIELDS - _OPTIONAL


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_field(data: dict[str, Any], key: str) -> int:
    value = data[key]
    if not _is_int(value):
        raise ConfigurationError(f"{key} must be an integer, got {type(value).__name__}")
    return int(value)
