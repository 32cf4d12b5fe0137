"""The Merkle commitment to a key roster, for sparse roster delivery.

With ``roster_delivery="merkle"`` (SPEC.md [MRK-1]..[MRK-9]) a client
receives only its own and its neighbours' roster entries, each with an
inclusion proof against one root, plus the roster's id set as a bitmap over
the invited ids; the session id binds the id set and the root
(:func:`merkle_session_id`), so every key derived in the session binds every
entry, as with the full roster ([SID-1]).

The tree is RFC 9162's (section 2.1.1): for ``n > 1`` leaves the left
subtree holds the largest power of two below ``n`` leaves.  Leaves and inner
nodes are hashed under distinct labels (``roster-leaf``, ``roster-node``, of
equal length), so no inner node can be read as a leaf or the reverse.  An
inclusion proof is RFC 9162's audit path, verified exactly as its section
2.1.3.2 says (:func:`verify_inclusion`).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import numpy as np

from securefl.protocol.derivation import PREFIX
from securefl.protocol.messages import AdvertiseKeys

HASH_BYTES = 32
LEAF_LABEL = PREFIX + b"roster-leaf"
NODE_LABEL = PREFIX + b"roster-node"
SESSION_LABEL = PREFIX + b"session-id-merkle"


def leaf_hash(entry: AdvertiseKeys) -> bytes:
    """SHA-256(prefix || "roster-leaf" || u32(sender) || c_pk || s_pk ||
    seed_commitment || noise commitments), the signature excluded (as in the
    session id of the full roster).  Every field has a length fixed by the
    configuration, so the concatenation is unambiguous."""
    return hashlib.sha256(LEAF_LABEL + struct.pack(">I", entry.sender) + entry.encryption_key
                          + entry.masking_key + entry.seed_commitment
                          + b"".join(entry.noise_commitments)).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(prefix || "roster-node" || left || right)."""
    return hashlib.sha256(NODE_LABEL + left + right).digest()


class RosterTree:
    """The Merkle tree over a roster's leaf hashes (in ascending sender
    order).  Built bottom up, an unpaired last node promoted unchanged to the
    next level: this is exactly RFC 9162's tree (split at the largest power
    of two below the size), in ``n - 1`` node hashes.

    Raises:
        ValueError: no leaves, or a leaf that is not 32 bytes.
    """

    def __init__(self, leaves: Sequence[bytes]) -> None:
        if not leaves:
            raise ValueError("a roster tree needs at least one leaf")
        if any(len(leaf) != HASH_BYTES for leaf in leaves):
            raise ValueError("leaf hashes are 32 bytes")
        levels = [list(leaves)]
        while len(levels[-1]) > 1:
            below = levels[-1]
            above = [node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
            if len(below) % 2:
                above.append(below[-1])
            levels.append(above)
        self._levels = levels
        self._proofs: dict[int, tuple[bytes, ...]] = {}

    @property
    def size(self) -> int:
        """The number of leaves."""
        return len(self._levels[0])

    @property
    def root(self) -> bytes:
        """The root hash (the leaf itself for a single leaf)."""
        return self._levels[-1][0]

    def proof(self, index: int) -> tuple[bytes, ...]:
        """The audit path of leaf ``index`` (RFC 9162 ``PATH``), lowest level
        first; cached, so many clients' messages share one computation.

        Raises:
            IndexError: ``index`` is not in ``0 .. size - 1``.
        """
        if not 0 <= index < self.size:
            raise IndexError("leaf index out of range")
        cached = self._proofs.get(index)
        if cached is not None:
            return cached
        path = []
        i = index
        for level in self._levels[:-1]:
            sibling = i ^ 1
            if sibling < len(level):
                path.append(level[sibling])
            # else: i is the unpaired last node, promoted without a hash
            i >>= 1
        proof = tuple(path)
        self._proofs[index] = proof
        return proof


def verify_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes],
                     root: bytes) -> bool:
    """RFC 9162 section 2.1.3.2: does ``proof`` show ``leaf`` at ``index``
    of a tree of ``size`` leaves whose root is ``root``?

    Fails (False) when ``index >= size``, when the proof is longer than the
    path (``sn`` reaches 0 with hashes left) or shorter (``sn`` not 0 at the
    end), when a proof element is not 32 bytes, or when the recomputed root
    differs.  The leaf, every proof element and the root must be exactly
    ``bytes`` (a subclass could redefine ``==`` or ``+``).  Never raises."""
    if not (type(index) is int and type(size) is int and 0 <= index < size
            and type(leaf) is bytes and type(root) is bytes):
        return False
    fn, sn = index, size - 1
    r = leaf
    for p in proof:
        if type(p) is not bytes or len(p) != HASH_BYTES:
            return False
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root


def bitmap_of(invited: np.ndarray, roster_ids: np.ndarray) -> bytes:
    """The roster's id set as ``ceil(n / 8)`` bytes over the ``n`` invited
    ids (ascending): bit ``i`` (byte ``i // 8``, most significant bit first)
    is set iff ``invited[i]`` is in the roster; the padding bits are 0.

    Raises:
        ValueError: a roster id that is not invited."""
    present = np.isin(invited, roster_ids)
    if int(present.sum()) != len(roster_ids):
        raise ValueError("every roster id must be an invited id")
    return np.packbits(present).tobytes()


def ids_of_bitmap(invited: np.ndarray, bitmap: bytes) -> np.ndarray | None:
    """The ascending roster ids a bitmap names (the inverse of
    :func:`bitmap_of`), or None when it is not exactly ``bytes`` of length
    ``ceil(n / 8)`` or a padding bit (a position past the ``n`` invited ids) is set.  O(n) array
    work."""
    n = int(invited.size)
    if type(bitmap) is not bytes or len(bitmap) != (n + 7) // 8:
        return None
    bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8))
    if bool(np.any(bits[n:])):
        return None
    return np.asarray(invited[bits[:n].astype(bool)], dtype=np.uint32)


def merkle_session_id(config_digest: bytes, bitmap: bytes, size: int, root: bytes) -> bytes:
    """The session id of a Merkle-committed roster (SPEC [MRK-3]):
    SHA-256(prefix || "session-id-merkle" || digest || u32(size) || bitmap ||
    root), where ``size`` is the number of ids the bitmap names."""
    return hashlib.sha256(SESSION_LABEL + config_digest + struct.pack(">I", size) + bitmap
                          + root).digest()
