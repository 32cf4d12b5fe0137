"""X25519 key agreement (RFC 7748)."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from securefl.errors import InvalidKeyError
from securefl.hazmat.randomness import RandomSource

KEY_BYTES = 32


@dataclass(frozen=True, repr=False)
class KeyPair:
    """An X25519 key pair.  The private half never appears in ``repr``."""

    private: X25519PrivateKey
    public_bytes: bytes

    @classmethod
    def generate(cls, rng: RandomSource) -> KeyPair:
        """A fresh key pair from 32 bytes of ``rng``, stored clamped (RFC 7748
        section 5), so that :meth:`private_bytes` is the canonical scalar:
        distinct canonical scalars have distinct public keys (except with
        negligible probability), which lets a reconstructed key be checked
        against the advertised public key bit for bit."""
        return cls.from_private_bytes(clamp(rng.token_bytes(KEY_BYTES)))

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> KeyPair:
        """Rebuild a key pair from its 32-byte private scalar (clamped per RFC 7748)."""
        if len(raw) != KEY_BYTES:
            raise InvalidKeyError("an X25519 private key is 32 bytes")
        private = X25519PrivateKey.from_private_bytes(raw)
        public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        return cls(private, public)

    def private_bytes(self) -> bytes:
        """The raw 32-byte private key (to be secret-shared; handle with care)."""
        from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

        return self.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def exchange(self, peer_public: bytes) -> bytes:
        """The 32-byte X25519 shared secret with ``peer_public``.

        Raises:
            InvalidKeyError: the peer key is malformed or of low order (the
                shared secret would be all zeros).
        """
        return exchange(self.private, peer_public)

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public_bytes.hex()[:16]}…, private=<hidden>)"


def clamp(raw: bytes) -> bytes:
    """The RFC 7748 clamped form of a 32-byte X25519 scalar (X25519 with
    ``raw`` and with ``clamp(raw)`` is the same function)."""
    if len(raw) != KEY_BYTES:
        raise InvalidKeyError("an X25519 private key is 32 bytes")
    out = bytearray(raw)
    out[0] &= 248
    out[31] &= 127
    out[31] |= 64
    return bytes(out)


def is_clamped(raw: bytes) -> bool:
    """True iff ``raw`` is a 32-byte X25519 scalar in clamped form."""
    return len(raw) == KEY_BYTES and raw == clamp(raw)


def matches_public(raw_private: bytes, public: bytes) -> bool:
    """True iff ``raw_private`` is a clamped scalar whose public key is
    ``public``: the check of a reconstructed masking key (SPEC [R4-11])."""
    if not is_clamped(raw_private):
        return False
    return KeyPair.from_private_bytes(raw_private).public_bytes == bytes(public)


_PROBE = X25519PrivateKey.from_private_bytes(clamp(bytes(range(32))))


def validate_public(raw: bytes) -> X25519PublicKey:
    """Parse a 32-byte X25519 public key and refuse low-order points.

    Every clamped scalar is a multiple of the cofactor 8, so X25519 with any
    clamped scalar maps a point of small order (on the curve or its twist,
    including the non-canonical encodings of such points) to zero: one
    exchange with a fixed public probe scalar decides it (SPEC [R0-2]).

    Raises:
        InvalidKeyError: wrong length or a low-order point.
    """
    key = load_public(raw)
    try:
        _PROBE.exchange(key)
    except ValueError as exc:
        raise InvalidKeyError("X25519 public key of low order") from exc
    return key


def load_public(raw: bytes) -> X25519PublicKey:
    """Parse a 32-byte X25519 public key.

    Raises:
        InvalidKeyError: wrong length.
    """
    if not isinstance(raw, bytes | bytearray) or len(raw) != KEY_BYTES:
        raise InvalidKeyError("an X25519 public key is 32 bytes")
    try:
        return X25519PublicKey.from_public_bytes(bytes(raw))
    except (ValueError, UnsupportedAlgorithm) as exc:  # pragma: no cover - length checked
        raise InvalidKeyError("malformed X25519 public key") from exc


def exchange(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """X25519(private, peer_public); refuses low-order peer keys.

    Raises:
        InvalidKeyError: malformed or low-order peer key.
    """
    try:
        return private.exchange(load_public(peer_public))
    except ValueError as exc:
        # cryptography raises ValueError when the result is all-zero (low order).
        raise InvalidKeyError("X25519 exchange with a low-order public key") from exc
