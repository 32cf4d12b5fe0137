"""Sans-IO Bonawitz secure aggregation: sessions take messages and return
messages.  Nothing here imports torch or opens a socket."""

from securefl.protocol.client import ClientSession, ClientState
from securefl.protocol.config import (
    PROTOCOL_VERSION,
    ClientStatus,
    Round,
    SecAggConfig,
    SecurityMode,
    default_threshold,
)
from securefl.protocol.graphs import CompleteGraph, NeighbourGraph
from securefl.protocol.inmemory import secure_sum
from securefl.protocol.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShares,
    Envelope,
    KeyRoster,
    MaskedInput,
    ProvenEntry,
    ShareDelivery,
    SparseKeyRoster,
    UnmaskingRequest,
    UnmaskingResponse,
)
from securefl.protocol.noise import NoiseCalibration, NoiseLayout, NoisePlan
from securefl.protocol.server import AggregationResult, Blame, ServerSession, ServerState

__all__ = [
    "PROTOCOL_VERSION",
    "AdvertiseKeys",
    "AggregationResult",
    "Blame",
    "ClientSession",
    "ClientState",
    "ClientStatus",
    "CompleteGraph",
    "ConsistencyRequest",
    "ConsistencySignature",
    "EncryptedShares",
    "Envelope",
    "KeyRoster",
    "MaskedInput",
    "NeighbourGraph",
    "NoiseCalibration",
    "NoiseLayout",
    "NoisePlan",
    "ProvenEntry",
    "Round",
    "SecAggConfig",
    "SecurityMode",
    "ServerSession",
    "ServerState",
    "ShareDelivery",
    "SparseKeyRoster",
    "UnmaskingRequest",
    "UnmaskingResponse",
    "default_threshold",
    "secure_sum",
]
