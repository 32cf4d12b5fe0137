"""Everything both ends must compute identically: the session id, derived
keys, AEAD nonces and associated data, and signed payloads.  Byte layouts
here are normative (see the protocol spec)."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

from securefl.hazmat import aead
from securefl.hazmat.agreement import KeyPair
from securefl.hazmat.kdf import PairDerivation, derive_key
from securefl.hazmat.noise import noise_key
from securefl.protocol.config import PROTOCOL_VERSION
from securefl.protocol.messages import AdvertiseKeys

LABEL_PAIRWISE = b"pairwise-mask"
LABEL_SELF = b"self-mask"
LABEL_SHARE_ENCRYPTION = b"share-encryption"
LABEL_EXCESS = b"excess"
PREFIX = b"securefl/secagg/v1/"


def _ids(ids: Sequence[int]) -> bytes:
    return struct.pack(">I", len(ids)) + b"".join(struct.pack(">I", i) for i in ids)


def session_id(config_digest: bytes, entries: Sequence[AdvertiseKeys]) -> bytes:
    """SHA-256 over the configuration digest and every advertised key and
    seed commitment (and noise-seed commitments, when a plan has them), in
    ascending sender order (signatures excluded)."""
    h = hashlib.sha256(PREFIX + b"session-id")
    h.update(config_digest)
    h.update(struct.pack(">I", len(entries)))
    for e in sorted(entries, key=lambda e: e.sender):
        h.update(struct.pack(">I", e.sender) + e.encryption_key + e.masking_key
                 + e.seed_commitment + b"".join(e.noise_commitments))
    return h.digest()


SEED_COMMITMENT_BYTES = 32


def seed_commitment(config_digest: bytes, sender: int, seed: bytes) -> bytes:
    """The hash commitment to a self-mask seed b_u sent in R0 (SPEC [R0-10]):
    SHA-256(prefix || "seed-commitment" || config digest || sender || seed).

    Binding by collision resistance; hiding because b_u is 32 uniform bytes
    (in the random-oracle model the digest reveals nothing about it).  The
    configuration digest and the sender separate it from every other hash and
    from every other client's commitment."""
    return hashlib.sha256(PREFIX + b"seed-commitment" + config_digest
                          + struct.pack(">I", sender) + seed).digest()


def noise_seed_commitment(config_digest: bytes, sender: int, component: int,
                          seed: bytes) -> bytes:
    """The commitment to excess-noise seed ``component`` of ``sender`` (SPEC
    [NZ-2]): SHA-256(prefix || "noise-seed-commitment" || config digest ||
    sender || component || seed); binding and hiding as :func:`seed_commitment`."""
    return hashlib.sha256(PREFIX + b"noise-seed-commitment" + config_digest
                          + struct.pack(">II", sender, component) + seed).digest()


def advertise_payload(config_digest: bytes, sender: int, c_pk: bytes, s_pk: bytes,
                      commitment: bytes, noise_commitments: Sequence[bytes] = ()) -> bytes:
    """What a client signs in R0 (active mode): its keys and seed commitment
    (and, with a noise plan, its noise-seed commitments; none: unchanged)."""
    return (PREFIX + b"advertise" + config_digest + struct.pack(">I", sender) + c_pk + s_pk
            + commitment + b"".join(noise_commitments))


def consistency_payload(sid: bytes, survivors: Sequence[int]) -> bytes:
    """What a client signs in R3 (active mode): the session id and the sorted
    survivor list."""
    return PREFIX + b"consistency" + sid + _ids(sorted(survivors))


def pair(a: int, b: int) -> tuple[int, int]:
    """Two client ids in ascending order (KDF inputs are symmetric)."""
    return (a, b) if a < b else (b, a)


def pairwise_mask_key(shared_secret: bytes, sid: bytes, u: int, v: int) -> bytes:
    """The 32-byte PRG key of the pairwise mask between ``u`` and ``v``."""
    return derive_key(shared_secret, LABEL_PAIRWISE, version=PROTOCOL_VERSION,
                      session_id=sid, client_ids=pair(u, v))


def self_mask_key(seed: bytes, sid: bytes, u: int) -> bytes:
    """The 32-byte PRG key of ``u``'s self mask, from its 32-byte seed b_u."""
    return derive_key(seed, LABEL_SELF, version=PROTOCOL_VERSION, session_id=sid,
                      client_ids=(u,))


def masking_secret(key_pair: KeyPair, peer_public: bytes, sid: bytes, u: int, v: int) -> bytes:
    """X25519 then :func:`pairwise_mask_key`."""
    return pairwise_mask_key(key_pair.exchange(peer_public), sid, u, v)


def share_encryption_key(shared_secret: bytes, sid: bytes, u: int, v: int) -> bytes:
    """The AES-256-GCM key between ``u`` and ``v`` (both directions)."""
    return derive_key(shared_secret, LABEL_SHARE_ENCRYPTION, version=PROTOCOL_VERSION,
                      session_id=sid, client_ids=pair(u, v))


def share_nonce(sender: int, recipient: int) -> bytes:
    """12-byte nonce: 4 zero bytes, sender, recipient (big-endian).  A pair
    key encrypts exactly one message per direction, so nonces never repeat."""
    return b"\0\0\0\0" + struct.pack(">II", sender, recipient)


def share_associated_data(sid: bytes, sender: int, recipient: int) -> bytes:
    """AEAD associated data: label, version, session id, sender, recipient."""
    return (PREFIX + b"shares" + struct.pack(">I", PROTOCOL_VERSION) + sid
            + struct.pack(">II", sender, recipient))


def encrypt_shares(key: bytes, sid: bytes, sender: int, recipient: int,
                   key_share: bytes, seed_share: bytes,
                   noise_shares: Sequence[bytes] = ()) -> bytes:
    """Encrypt ``key_share || seed_share || noise_share_0 || ...`` (64 bytes
    each; no noise shares without a plan) for ``recipient``."""
    return aead.encrypt(key, share_nonce(sender, recipient),
                        key_share + seed_share + b"".join(noise_shares),
                        share_associated_data(sid, sender, recipient))


def decrypt_shares(key: bytes, sid: bytes, sender: int, recipient: int,
                   ciphertext: bytes) -> tuple[bytes, bytes]:
    """Inverse of :func:`encrypt_shares` without noise shares.

    Raises:
        securefl.errors.DecryptionError: authentication failed.
    """
    key_share, seed_share, _ = decrypt_share_bundle(key, sid, sender, recipient, ciphertext)
    return key_share, seed_share


def decrypt_share_bundle(key: bytes, sid: bytes, sender: int, recipient: int,
                         ciphertext: bytes) -> tuple[bytes, bytes, tuple[bytes, ...]]:
    """Inverse of :func:`encrypt_shares`: the key share, the seed share and
    the noise-seed shares (64 bytes each).

    Raises:
        securefl.errors.DecryptionError: authentication failed.
    """
    plain = aead.decrypt(key, share_nonce(sender, recipient), ciphertext,
                         share_associated_data(sid, sender, recipient))
    extra = tuple(plain[i:i + 64] for i in range(128, len(plain), 64))
    return plain[:64], plain[64:128], extra


_TWO_IDS = struct.Struct(">II")


class PeerDerivations:
    """One client's pairwise derivations in one session, with every part
    that does not depend on the peer (KDF info prefixes, the associated
    data's prefix) computed once.  Byte for byte the functions above:

    * :meth:`share_key` is :func:`share_encryption_key`,
    * :meth:`mask_key` is :func:`pairwise_mask_key`,
    * :meth:`open` is :func:`decrypt_share_bundle` to this client, before
      the plaintext is cut into shares.
    """

    __slots__ = ("_ad", "_mask", "_me", "_share")

    def __init__(self, sid: bytes, me: int) -> None:
        self._me = me
        self._share = PairDerivation(LABEL_SHARE_ENCRYPTION, version=PROTOCOL_VERSION,
                                     session_id=sid)
        self._mask = PairDerivation(LABEL_PAIRWISE, version=PROTOCOL_VERSION, session_id=sid)
        self._ad = PREFIX + b"shares" + struct.pack(">I", PROTOCOL_VERSION) + sid

    def share_key(self, shared_secret: bytes, peer: int) -> bytes:
        """:func:`share_encryption_key` of this client and ``peer``."""
        a, b = (self._me, peer) if self._me < peer else (peer, self._me)
        return self._share.key(shared_secret, a, b)

    def mask_key(self, shared_secret: bytes, peer: int) -> bytes:
        """:func:`pairwise_mask_key` of this client and ``peer``."""
        a, b = (self._me, peer) if self._me < peer else (peer, self._me)
        return self._mask.key(shared_secret, a, b)

    def open(self, key: bytes, sender: int, ciphertext: bytes) -> bytes:
        """The plaintext of :func:`decrypt_share_bundle` from ``sender`` to
        this client (``key_share || seed_share || noise shares``).

        Raises:
            securefl.errors.DecryptionError: authentication failed.
        """
        ids = _TWO_IDS.pack(sender, self._me)
        return aead.decrypt(key, b"\0\0\0\0" + ids, ciphertext, self._ad + ids)


def shares_ciphertext_bytes(noise_components: int = 0) -> int:
    """Length of one share ciphertext: 64 bytes per share plus the tag."""
    return 128 + 64 * noise_components + aead.TAG_BYTES


SHARES_CIPHERTEXT_BYTES = shares_ciphertext_bytes(0)


def excess_noise_key(seed: bytes, sid: bytes, u: int, component: int) -> bytes:
    """The AES key of ``u``'s excess-noise component ``component`` (SPEC
    [NZ-3]): :func:`securefl.hazmat.noise.noise_key` with label
    ``"excess"`` and context (session id, ``u``, ``component``)."""
    return noise_key(seed, LABEL_EXCESS, version=PROTOCOL_VERSION, session_id=sid,
                     client_ids=(u, component))
