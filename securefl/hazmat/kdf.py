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
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)
