"""AES-256-GCM share encryption with bound associated data."""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from securefl.errors import DecryptionError

NONCE_BYTES = 12
TAG_BYTES = 16


def encrypt(key: bytes, nonce: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """AES-256-GCM ``ciphertext || tag``.  The caller guarantees that a
    ``(key, nonce)`` pair is used for one message only."""
    return AESGCM(key).encrypt(nonce, plaintext, associated_data)


def decrypt(key: bytes, nonce: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
    """Authenticate and decrypt.

    Raises:
        DecryptionError: tampered ciphertext, wrong key, nonce or associated
            data (the message does not say which, by design).
    """
    try:
        return AESGCM(key).decrypt(nonce, bytes(ciphertext), associated_data)
    except (InvalidTag, ValueError) as exc:
        raise DecryptionError("share ciphertext failed authentication") from exc
