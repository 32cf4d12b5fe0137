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
from dataclasses import asdict, dataclass
from typing import Any

from securefl.encoding import FixedPointCodec
from securefl.errors import ConfigurationError
from securefl.protocol.config import Round, SecAggConfig, SecurityMode
from securefl.protocol.graphs import CompleteGraph

__all__ = [
    "DP_METRIC_PREFIX",
    "RECORD",
    "STATE_RECORD",
    "Key",
    "SessionSetup",
    "Stage",
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
leaves the node."""


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
    CLIPPED = "clipped"


@dataclass(frozen=True)
class SessionSetup:
    """One secure aggregation session as announced to the nodes.

    Attributes:
        fl_round: the federation round this session aggregates.
        num_clients, threshold, mode, client_ids, context: the
            :class:`SecAggConfig` fields (complete graph).
        shapes, bits, frac_bits, clip, max_weight, codec_clients: the
            :class:`FixedPointCodec` the node encodes its update with
            (``vector_length`` follows from the shapes).
        rounding_seed: None (stochastic rounding from the OS CSPRNG), or a
            public seed for reproducible runs: node ``c`` then rounds with the
            ``c``-th segment of ``numpy.random.default_rng([seed, 13,
            fl_round])``, exactly the numbers ``securefl simulate`` gives
            client ``c`` when every client encodes.
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
    rounding_seed: int | None = None

    @classmethod
    def create(cls, fl_round: int, config: SecAggConfig, codec: FixedPointCodec,
               rounding_seed: int | None = None) -> SessionSetup:
        """The setup announcing ``config`` and ``codec`` for ``fl_round``.

        Raises:
            ConfigurationError: a sparse graph (only the complete graph is
                carried over Flower for now) or a codec of another length.
        """
        if not isinstance(config.graph, CompleteGraph):
            raise ConfigurationError("securefl.flower supports the complete graph only")
        if config.vector_length != codec.vector_length or config.bits != codec.bits:
            raise ConfigurationError("the codec does not match the session configuration")
        return cls(fl_round=int(fl_round), num_clients=config.num_clients, threshold=config.t,
                   mode=config.mode.value, client_ids=tuple(config.ids), context=config.context,
                   shapes=tuple(tuple(s) for s in codec.shapes), bits=codec.bits,
                   frac_bits=codec.frac_bits, clip=float(codec.clip),
                   max_weight=codec.max_weight, codec_clients=codec.num_clients,
                   rounding_seed=rounding_seed)

    def secagg_config(self) -> SecAggConfig:
        """The session configuration (validated again on this side)."""
        return SecAggConfig(num_clients=self.num_clients, vector_length=self.codec().vector_length,
                            bits=self.bits, threshold=self.threshold,
                            mode=SecurityMode(self.mode), client_ids=self.client_ids,
                            context=self.context)

    def codec(self) -> FixedPointCodec:
        """The fixed-point codec (validated again on this side)."""
        return FixedPointCodec(shapes=self.shapes, bits=self.bits, frac_bits=self.frac_bits,
                               clip=self.clip, num_clients=self.codec_clients,
                               max_weight=self.max_weight)

    def to_bytes(self) -> bytes:
        """Canonical JSON bytes."""
        data: dict[str, Any] = asdict(self)
        data["context"] = self.context.hex()
        return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> SessionSetup:
        """Parse :meth:`to_bytes` output.

        Raises:
            ConfigurationError: malformed or inconsistent setup.
        """
        try:
            data = json.loads(bytes(raw).decode())
            data["context"] = bytes.fromhex(data["context"])
            data["client_ids"] = tuple(int(c) for c in data["client_ids"])
            data["shapes"] = tuple(tuple(int(d) for d in s) for s in data["shapes"])
            setup = cls(**data)
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"malformed securefl session setup: {exc}") from None
        setup.secagg_config()  # validates
        return setup
