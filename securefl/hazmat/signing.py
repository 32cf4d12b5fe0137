"""Ed25519 identity keys (RFC 8032), used in the active-adversary mode."""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from securefl.errors import InvalidKeyError, SignatureError
from securefl.hazmat.randomness import RandomSource

SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32


def generate_identity(rng: RandomSource) -> Ed25519PrivateKey:
    """A fresh Ed25519 identity key from 32 bytes of ``rng``."""
    return Ed25519PrivateKey.from_private_bytes(rng.token_bytes(32))


def public_bytes(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    """The raw 32-byte public key."""
    pub = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return pub.public_bytes(Encoding.Raw, PublicFormat.Raw)


def load_identity_public(raw: bytes | Ed25519PublicKey) -> Ed25519PublicKey:
    """Parse a raw 32-byte Ed25519 public key (or pass one through).

    Raises:
        InvalidKeyError: wrong length or not a valid point.
    """
    if isinstance(raw, Ed25519PublicKey):
        return raw
    if not isinstance(raw, bytes | bytearray) or len(raw) != PUBLIC_KEY_BYTES:
        raise InvalidKeyError("an Ed25519 public key is 32 bytes")
    try:
        return Ed25519PublicKey.from_public_bytes(bytes(raw))
    except ValueError as exc:
        raise InvalidKeyError("malformed Ed25519 public key") from exc


def sign(key: Ed25519PrivateKey, message: bytes) -> bytes:
    """A 64-byte Ed25519 signature over ``message``."""
    return key.sign(message)


def verify(public: Ed25519PublicKey, signature: bytes, message: bytes) -> None:
    """Verify ``signature`` over ``message``.

    Raises:
        SignatureError: the signature is missing, malformed or invalid.
    """
    if not isinstance(signature, bytes | bytearray) or len(signature) != SIGNATURE_BYTES:
        raise SignatureError("an Ed25519 signature is 64 bytes")
    try:
        public.verify(bytes(signature), message)
    except InvalidSignature as exc:
        raise SignatureError("Ed25519 signature does not verify") from exc
