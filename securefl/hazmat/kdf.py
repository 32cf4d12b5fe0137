"""HKDF-SHA256 with explicit domain separation.

Every derived key is bound to a purpose label, the protocol version, the
session id and the client ids it concerns, so a key derived for one purpose,
session or pair of clients is useless for any other.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

LABEL_PREFIX = b"securefl/secagg/"
_SHA256 = hashes.SHA256()  # a stateless algorithm descriptor, shared by every derivation


def kdf_info(label: bytes, version: int, session_id: bytes, client_ids: Sequence[int]) -> bytes:
    """The HKDF ``info`` string: ``len|label || version || len|session_id ||
    count || ids`` with every integer big-endian and every variable-length
    field length-prefixed (so no two inputs encode alike)."""
    parts = [
        struct.pack(">H", len(label)), label,
        struct.pack(">I", version),
        struct.pack(">H", len(session_id)), session_id,
        struct.pack(">H", len(client_ids)),
    ]
    parts.extend(struct.pack(">I", cid) for cid in client_ids)
    return b"".join(parts)


def kdf_info_prefix(label: bytes, version: int, session_id: bytes) -> bytes:
    """The part of :func:`kdf_info` before the id count: ``kdf_info(label,
    version, session_id, ids)`` is this followed by the big-endian 16-bit count
    and the big-endian 32-bit ids (so a party deriving many keys in one
    session computes it once: :class:`PairDerivation`)."""
    return b"".join((struct.pack(">H", len(label)), label, struct.pack(">I", version),
                     struct.pack(">H", len(session_id)), session_id))


_PAIR_IDS = struct.Struct(">HII")


class PairDerivation:
    """:func:`derive_key` for one label, version and session id and many
    pairs of client ids, with the constant part of ``info`` computed once:
    :meth:`key` returns byte for byte ``derive_key(secret, label,
    version=version, session_id=session_id, client_ids=(a, b))``."""

    __slots__ = ("_prefix",)

    def __init__(self, label: bytes, *, version: int, session_id: bytes) -> None:
        self._prefix = kdf_info_prefix(LABEL_PREFIX + label, version, session_id)

    def key(self, secret: bytes, a: int, b: int) -> bytes:
        """The 32-byte key of the pair ``(a, b)``, in that order (callers
        sort, as for :func:`derive_key`).

        Raises:
            struct.error: an id outside 0..2^32-1 (as :func:`kdf_info`).
        """
        return HKDF(algorithm=_SHA256, length=32, salt=None,
                    info=self._prefix + _PAIR_IDS.pack(2, a, b)).derive(secret)


def derive_key(
    secret: bytes,
    label: bytes,
    *,
    version: int,
    session_id: bytes,
    client_ids: Sequence[int],
    length: int = 32,
) -> bytes:
    """Derive a ``length``-byte key from ``secret`` (an X25519 shared secret or
    a 32-byte seed) with HKDF-SHA256.

    The salt is fixed (empty); all context goes into ``info`` via
    :func:`kdf_info`.  ``client_ids`` are used in the order given: callers
    pass pairs sorted ascending so both ends derive the same key.
    """
    return hkdf_sha256(secret, None, kdf_info(LABEL_PREFIX + label, version, session_id,
                                              client_ids), length)


def hkdf_sha256(ikm: bytes, salt: bytes | None, info: bytes, length: int) -> bytes:
    """Plain RFC 5869 HKDF-SHA256 (``cryptography``'s implementation)."""
    return HKDF(algorithm=_SHA256, length=length, salt=salt, info=info).derive(ikm)
