"""The protocol messages: frozen dataclasses, one per message kind.

Client -> server messages carry ``sender``; server -> client messages carry
``recipient``.  Every message after the key roster carries the session id, so
nothing from one session is accepted in another.  Binary fields are raw
bytes; vectors are numpy arrays in the ring's native dtype.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeAlias

import numpy as np


def _frozen_map(m: Mapping[int, bytes]) -> Mapping[int, bytes]:
    return MappingProxyType(dict(sorted(m.items())))


def _head(value: object) -> str:
    """The first 6 bytes of a public binary field in hex, for a ``repr``;
    the type name when it is not bytes (a malformed message a client
    refuses must still have a ``repr``, e.g. in a traceback or a log)."""
    if isinstance(value, bytes | bytearray):
        return f"{bytes(value[:6]).hex()}…"
    return f"<{type(value).__name__}>"


@dataclass(frozen=True)
class AdvertiseKeys:
    """R0, client -> server: fresh X25519 public keys, the hash commitment
    to the client's self-mask seed (SPEC [R0-10]), and, in active mode, an
    Ed25519 signature binding all three to the configuration and sender.

    The commitment lets the server check every reconstructed seed; the
    masking public key plays the same role for a reconstructed masking key.
    With a noise plan, ``noise_commitments`` holds one commitment per
    excess-noise seed (SPEC [NZ-2]); without one it is empty.
    """

    sender: int
    encryption_key: bytes
    masking_key: bytes
    signature: bytes | None = None
    seed_commitment: bytes = b""
    noise_commitments: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "noise_commitments", tuple(self.noise_commitments))

    def __repr__(self) -> str:
        return (f"AdvertiseKeys(sender={self.sender},"
                f" encryption_key={_head(self.encryption_key)},"
                f" masking_key={_head(self.masking_key)},"
                f" seed_commitment={_head(self.seed_commitment)},"
                + (f" noise_commitments={len(self.noise_commitments)},"
                   if self.noise_commitments else "") +
                f" signed={self.signature is not None})")


@dataclass(frozen=True)
class KeyRoster:
    """R0 -> R1, server -> every advertiser: every advertised key, sorted by
    sender.  The session id is derived from it."""

    config_digest: bytes
    entries: tuple[AdvertiseKeys, ...]


@dataclass(frozen=True)
class ProvenEntry:
    """One roster entry with its inclusion proof (RFC 9162 audit path,
    lowest level first, 32-byte hashes) against a :class:`SparseKeyRoster`'s
    root.  The leaf index is not sent: it is the sender's rank among the
    roster ids the bitmap names (SPEC [MRK-5])."""

    entry: AdvertiseKeys
    inclusion_path: tuple[bytes, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "inclusion_path", tuple(self.inclusion_path))


@dataclass(frozen=True)
class SparseKeyRoster:
    """R0 -> R1 with ``roster_delivery="merkle"``, server -> one client: the
    roster's id set (``id_bitmap`` over the configuration's ids), the Merkle
    root of every entry, and only the recipient's own and its neighbours'
    entries, ascending by sender, each with its inclusion proof (SPEC
    [MRK-1]..[MRK-9]).  The session id is derived from the digest, the id set
    and the root."""

    recipient: int
    config_digest: bytes
    id_bitmap: bytes
    root: bytes
    entries: tuple[ProvenEntry, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "entries", tuple(self.entries))

    def __repr__(self) -> str:
        senders = [getattr(getattr(e, "entry", None), "sender", "?") for e in self.entries[:10]]
        return (f"SparseKeyRoster(recipient={self.recipient}, entries for {senders},"
                f" root={_head(self.root)})")


@dataclass(frozen=True)
class EncryptedShares:
    """R1, client -> server: for every neighbour, an AEAD ciphertext of the
    sender's key share and self-mask share destined to that neighbour."""

    sender: int
    session_id: bytes
    ciphertexts: Mapping[int, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ciphertexts", _frozen_map(self.ciphertexts))


@dataclass(frozen=True)
class ShareDelivery:
    """R1 -> R2, server -> client: the ciphertexts addressed to ``recipient``,
    keyed by sender.  Its key set is the recipient's view of who shared."""

    recipient: int
    session_id: bytes
    ciphertexts: Mapping[int, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ciphertexts", _frozen_map(self.ciphertexts))


@dataclass(frozen=True, eq=False)
class MaskedInput:
    """R2, client -> server: the input plus self mask plus pairwise masks,
    in Z_{2^k} (native dtype of the ring).

    ``excluded`` (ascending) names the delivered peers whose share
    ciphertext did not decrypt or whose shares were malformed: the sender
    holds no shares of them and left them out of its pairwise masks
    (SPEC [R2-5]).  Empty in an honest round.
    """

    sender: int
    session_id: bytes
    masked: np.ndarray
    excluded: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "excluded", tuple(self.excluded))

    def __repr__(self) -> str:
        return (f"MaskedInput(sender={self.sender}, length={len(self.masked)},"
                f" dtype={self.masked.dtype}, excluded={list(self.excluded)[:10]})")


@dataclass(frozen=True)
class ConsistencyRequest:
    """R2 -> R3 (active mode), server -> client: the survivor list to sign."""

    recipient: int
    session_id: bytes
    survivors: tuple[int, ...]


@dataclass(frozen=True)
class ConsistencySignature:
    """R3 (active mode), client -> server: a signature over the survivor list."""

    sender: int
    session_id: bytes
    signature: bytes


@dataclass(frozen=True)
class UnmaskingRequest:
    """-> R4, server -> client: who survived (reveal their self-mask shares)
    and who dropped after sharing (reveal their key shares); in active mode
    with at least t signatures over ``survivors``.  With a noise plan,
    ``noise_removals`` lists (ascending) the ``(survivor, component)`` excess
    seeds to reveal: exactly what the public rule selects for ``survivors``
    (SPEC [NZ-5]); empty otherwise."""

    recipient: int
    session_id: bytes
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: Mapping[int, bytes] = field(default_factory=dict)
    noise_removals: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "signatures", _frozen_map(self.signatures))
        object.__setattr__(self, "noise_removals",
                           tuple(tuple(p) for p in self.noise_removals))


@dataclass(frozen=True)
class UnmaskingResponse:
    """R4, client -> server: shares held by the sender.  For every peer the
    sender reveals at most one kind of share, never both (noise-seed shares,
    keyed by ``(owner, component)``, only of survivors)."""

    sender: int
    session_id: bytes
    self_mask_shares: Mapping[int, bytes] = field(default_factory=dict)
    key_shares: Mapping[int, bytes] = field(default_factory=dict)
    noise_shares: Mapping[tuple[int, int], bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "self_mask_shares", _frozen_map(self.self_mask_shares))
        object.__setattr__(self, "key_shares", _frozen_map(self.key_shares))
        object.__setattr__(self, "noise_shares",
                           MappingProxyType(dict(sorted(self.noise_shares.items()))))

    def __repr__(self) -> str:
        return (f"UnmaskingResponse(sender={self.sender}, self_mask_shares_for="
                f"{sorted(self.self_mask_shares)}, key_shares_for={sorted(self.key_shares)}"
                + (f", noise_shares_for={sorted(self.noise_shares)[:10]}"
                   if self.noise_shares else "") + ")")


ClientMessage: TypeAlias = (
    AdvertiseKeys | EncryptedShares | MaskedInput | ConsistencySignature | UnmaskingResponse
)
ServerMessage: TypeAlias = (
    KeyRoster | SparseKeyRoster | ShareDelivery | ConsistencyRequest | UnmaskingRequest
)


@dataclass(frozen=True)
class Envelope:
    """A server message and the client it goes to."""

    recipient: int
    message: ServerMessage
