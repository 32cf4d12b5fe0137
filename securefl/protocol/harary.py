"""The SecAgg+ neighbour graph: a k-regular Harary graph over a permuted ring.

Bell et al. (CCS 2020) replace the complete graph of Bonawitz et al. with a
sparse random graph: each client masks with, and deals Shamir shares to, only
its ``k`` neighbours (plus itself), so the per-client cost drops from O(n) to
O(k) with k = O(log n).  Google's production SecAgg (fcp
``secret_sharing_harary_graph.cc``) uses a Harary graph: the clients sit on a
ring in a pseudo-random order and each is joined to the ``k/2`` nearest
clients on either side.

Degree convention
-----------------
``HararyGraph(degree=k)`` has exactly ``k`` neighbours per client and no self
loop.  This ``k`` is the number that fcp's parameter finder calls
``number_of_neighbors`` (``HararyGraphParameters.degree``); fcp's server then
builds its graph with degree ``k + 1`` because its graph carries an explicit
self edge.  Here the self edge is implicit: every client deals a Shamir share
to itself as well, so the shares of one client have ``k + 1`` holders and the
threshold may be at most ``k + 1``.

``k`` must be even.  The classical Harary construction for odd ``k`` adds the
"diameter" edge ``i -- i + r/2``, which is only regular when the ring size
``r`` is even; the ring here is the roster (the clients that advertised keys),
whose size is known only once the session runs, so an odd ``k`` could produce
a non-regular graph on some rosters.  fcp only ever produces even ``k``.

Permutation
-----------
The ring order is a Fisher-Yates shuffle of the sorted roster driven by
AES-256-CTR under the key ``HKDF-SHA256(ikm=session_id, salt=None,
info=b"securefl/secagg/v1/graph-permutation", length=32)``, with a zero
16-byte initial counter block.  The keystream is read as big-endian uint32
words; for ``i = r-1, ..., 1`` the next word ``w`` is accepted when
``w < 2^32 - (2^32 mod (i+1))`` (rejection sampling, so ``j = w mod (i+1)`` is
exactly uniform) and positions ``i`` and ``j`` are swapped; a rejected word is
discarded and the next one drawn.  The permutation depends only on public
data, so every client and the server compute the same graph, and nobody can
choose it once the session id (a hash over every advertised key) is fixed.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securefl.errors import ConfigurationError
from securefl.protocol.graphs import NeighbourGraph

PERMUTATION_INFO = b"securefl/secagg/v1/graph-permutation"
"""HKDF ``info`` label of the ring-permutation key."""

_WORD = 2**32


def _permutation_keystream_key(session_id: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=PERMUTATION_INFO
    ).derive(session_id)


class _WordStream:
    """Big-endian uint32 words from an AES-256-CTR keystream."""

    def __init__(self, key: bytes) -> None:
        self._enc = Cipher(algorithms.AES(key), modes.CTR(b"\0" * 16)).encryptor()
        self._words = np.empty(0, dtype=np.uint64)

    def ensure(self, count: int) -> np.ndarray:
        """Return at least ``count`` words (the whole stream read so far)."""
        if self._words.size < count:
            extra = max(count - self._words.size, 64)
            fresh = np.frombuffer(self._enc.update(bytes(4 * extra)), dtype=">u4")
            self._words = np.concatenate([self._words, fresh.astype(np.uint64)])
        return self._words


def _check_roster(roster: Sequence[int]) -> np.ndarray:
    ids = np.asarray(roster, dtype=np.int64)
    if ids.ndim != 1:
        raise ConfigurationError("roster must be a flat sequence of client ids")
    if ids.size > 1 and not bool(np.all(np.diff(ids) > 0)):
        raise ConfigurationError("roster must be sorted ascending and without duplicates")
    return ids


def _check_session_id(session_id: bytes) -> bytes:
    if not isinstance(session_id, bytes | bytearray | memoryview):
        raise ConfigurationError(
            f"session_id must be bytes, got {type(session_id).__name__}"
        )
    return bytes(session_id)


def ring_order(roster: Sequence[int], session_id: bytes) -> tuple[int, ...]:
    """The roster in ring order: an unbiased Fisher-Yates shuffle of the sorted
    ``roster`` keyed only by ``session_id`` (see the module docstring for the
    exact derivation, which is part of the protocol).

    Deterministic in ``(roster, session_id)``; every permutation of the roster
    is equally likely for a uniformly random key.

    Raises:
        ConfigurationError: if ``roster`` is not sorted and distinct, or
            ``session_id`` is not bytes.
    """
    ids = _check_roster(roster)
    key = _permutation_keystream_key(_check_session_id(session_id))
    r = int(ids.size)
    if r < 2:
        return tuple(int(c) for c in ids)
    # Draw j_i uniform in [0, i] for i = r-1, ..., 1, consuming the word stream
    # strictly in order; vectorised between the (rare) rejected words.
    bounds = np.arange(r, 1, -1, dtype=np.uint64)  # bound = i + 1
    limits = np.uint64(_WORD) - (np.uint64(_WORD) % bounds)
    picks = np.empty(r - 1, dtype=np.int64)
    stream = _WordStream(key)
    pos = 0  # next position of `bounds` to fill
    skipped = 0  # rejected words so far
    while pos < r - 1:
        words = stream.ensure(r - 1 + skipped)[pos + skipped: r - 1 + skipped]
        bad = words >= limits[pos:]
        stop = int(np.argmax(bad)) if bool(bad.any()) else words.size
        picks[pos: pos + stop] = (words[:stop] % bounds[pos: pos + stop]).astype(np.int64)
        pos += stop
        if pos < r - 1:
            skipped += 1  # discard the rejected word and redraw for this position
    order = ids.tolist()
    for i, j in zip(range(r - 1, 0, -1), picks.tolist(), strict=True):
        order[i], order[j] = order[j], order[i]
    return tuple(order)


@functools.lru_cache(maxsize=8)
def _cached_ring_order(roster: tuple[int, ...], session_id: bytes) -> tuple[int, ...]:
    """:func:`ring_order`, cached (every party of a session computes the same
    public order)."""
    return ring_order(roster, session_id)


class HararyGraph(NeighbourGraph):
    """A k-regular Harary graph over the roster in a session-keyed ring order.

    Each client is joined to the ``degree // 2`` clients before it and the
    ``degree // 2`` clients after it on the ring given by :func:`ring_order`.
    When the roster has at most ``degree + 1`` clients this is the complete
    graph (and it is built as such).

    Args:
        degree: ``k``, the number of neighbours of every client (even, >= 2).
            This is fcp's ``number_of_neighbors``; fcp's server degree is
            ``k + 1`` because it counts a self edge.

    Raises:
        ConfigurationError: if ``degree`` is not an int, is below 1, or is odd.
    """

    __slots__ = ("_degree",)

    def __init__(self, degree: int) -> None:
        if isinstance(degree, bool) or not isinstance(degree, int | np.integer):
            raise ConfigurationError(
                f"HararyGraph degree must be an int, got {type(degree).__name__}"
            )
        degree = int(degree)
        if degree < 1:
            raise ConfigurationError(f"HararyGraph degree must be >= 1, got {degree}")
        if degree % 2:
            raise ConfigurationError(
                f"HararyGraph degree must be even (k/2 neighbours on each side of the ring),"
                f" got {degree}; use {degree + 1} (an odd-degree Harary graph is not regular"
                " on rosters of odd size)"
            )
        self._degree = degree

    @property
    def degree(self) -> int:
        """``k``: neighbours per client, self excluded."""
        return self._degree

    def neighbours(self, roster: Sequence[int], session_id: bytes) -> Mapping[int, frozenset[int]]:
        """For every id of ``roster`` (sorted, distinct) the frozenset of its
        ``k`` ring neighbours (``len(roster) - 1`` of them when the roster has
        at most ``k + 1`` clients).  Symmetric, never contains the client
        itself, deterministic in ``(roster, session_id)``; the keys follow the
        roster order.

        Raises:
            ConfigurationError: if ``roster`` is not sorted and distinct or
                ``session_id`` is not bytes.
        """
        ids = _check_roster(roster)
        session_id = _check_session_id(session_id)
        r = int(ids.size)
        if r <= self._degree + 1:
            everyone = frozenset(ids.tolist())
            return {cid: everyone - {cid} for cid in ids.tolist()}
        order = list(ring_order(ids.tolist(), session_id))
        half = self._degree // 2
        # The ring unrolled with `half` wrap-around ids on each end: the
        # neighbours of ring position p are ext[p : p+half] (before it) and
        # ext[p+half+1 : p+2*half+1] (after it).  List slices share the int
        # objects, which keeps n = 10^4, k = 100 at about 0.1 s.
        ext = order[-half:] + order + order[:half]
        by_id = {
            cid: frozenset(ext[p: p + half] + ext[p + half + 1: p + 2 * half + 1])
            for p, cid in enumerate(order)
        }
        return {cid: by_id[cid] for cid in ids.tolist()}

    def neighbours_of(self, roster: Sequence[int], session_id: bytes,
                      client: int) -> frozenset[int]:
        """``self.neighbours(roster, session_id)[client]`` without building
        every other client's neighbourhood: the ring order (cached per
        roster and session id, so many in-process clients share it) and then
        O(k) work.

        Raises:
            ConfigurationError: as :meth:`neighbours`.
            KeyError: ``client`` is not in ``roster``.
        """
        ids = tuple(int(c) for c in roster) if not isinstance(roster, tuple) else roster
        session_id = _check_session_id(session_id)
        order = _cached_ring_order(ids, session_id)
        r = len(order)
        try:
            p = order.index(client)
        except ValueError:
            raise KeyError(client) from None
        if r <= self._degree + 1:
            return frozenset(order) - {client}
        half = self._degree // 2
        return frozenset(order[(p + d) % r] for d in range(-half, half + 1) if d)

    def share_holders(self, num_clients: int) -> int:
        """A client's ``k`` neighbours and itself (fewer on a small roster)."""
        return min(num_clients, self._degree + 1)

    def connectivity(self, num_clients: int) -> int:
        """``min(k, n - 1)``, in the sense of
        :meth:`~securefl.protocol.graphs.NeighbourGraph.connectivity`: on
        every roster of ``r <= n`` clients, removing fewer than ``min(k, n -
        1)`` clients never disconnects the rest.  (This is the removal
        property, not the vertex connectivity of each roster's graph: on
        ``r <= k + 1`` clients the graph is the complete ``K_r``, of vertex
        connectivity ``r - 1``, which may be below ``k``, but removing any
        clients leaves a complete, hence connected, graph.)  On ``r >= k +
        2`` clients the Harary graph ``H(k, r)`` (k even) is k-connected
        (Harary 1962): separating it takes ``k/2`` consecutive clients removed
        at each of two places.  Checked by brute force in
        ``tests/test_split_list_attack.py``."""
        return min(self._degree, max(num_clients - 1, 0))

    def describe(self) -> str:
        """``"harary:k=<degree>"``, bound into the configuration digest."""
        return f"harary:k={self._degree}"

    def validate(self, num_clients: int, threshold: int) -> None:
        """Check that the graph can serve ``num_clients`` with Shamir threshold
        ``threshold``.

        A degree below 1 (or odd) is refused earlier, by the constructor.

        Raises:
            ConfigurationError: if ``degree >= num_clients`` (a ring with k/2
                neighbours a side would wrap onto itself: use
                :class:`~securefl.protocol.graphs.CompleteGraph`), or if
                ``threshold > degree + 1`` (a client's shares have only its
                ``k`` neighbours and itself as holders, so they could never
                be reconstructed).
        """
        if self._degree >= num_clients:
            raise ConfigurationError(
                f"HararyGraph degree k={self._degree} must be below the number of clients"
                f" n={num_clients}; with k >= n every client neighbours every other:"
                " use CompleteGraph()"
            )
        if threshold > self._degree + 1:
            raise ConfigurationError(
                f"threshold t={threshold} exceeds degree + 1 = {self._degree + 1}: each"
                f" client's Shamir shares go only to its k={self._degree} neighbours and"
                f" itself, so t <= {self._degree + 1} is required (see"
                " securefl.protocol.params.find_graph_parameters)"
            )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HararyGraph):
            return NotImplemented
        return self._degree == other._degree

    def __hash__(self) -> int:
        return hash(("harary", self._degree))

    def __repr__(self) -> str:
        return f"HararyGraph(degree={self._degree})"
