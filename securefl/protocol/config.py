"""Protocol vocabulary and the validated session configuration."""

from __future__ import annotations

import enum
import functools
import hashlib
import itertools
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from securefl.errors import ConfigurationError
from securefl.protocol.graphs import CompleteGraph, NeighbourGraph
from securefl.protocol.noise import NoiseLayout, NoisePlan

PROTOCOL_VERSION = 1
"""Wire/derivation version mixed into every KDF, AEAD and signature."""

MAX_CLIENT_ID = 2**31 - 2
"""Client ids are Shamir evaluation points in GF(2^31 - 1), so they must be
non-zero and below the prime."""


class SecurityMode(str, enum.Enum):
    """Which server the protocol defends against."""

    SEMI_HONEST = "semi-honest"
    """Honest-but-curious server: it follows the protocol but tries to learn."""
    ACTIVE = "active"
    """Malicious server: clients pin Ed25519 identity keys, sign their keys and
    the survivor list, and verify ``threshold`` signatures before unmasking."""


class Round(enum.IntEnum):
    """The protocol rounds, in order (names follow Bonawitz et al. / fcp)."""

    ADVERTISE_KEYS = 0
    SHARE_KEYS = 1
    MASKED_INPUT_COLLECTION = 2
    CONSISTENCY_CHECK = 3
    UNMASKING = 4


class ClientStatus(str, enum.Enum):
    """Where each client stands, as the server sees it (fcp's vocabulary)."""

    READY_TO_START = "READY_TO_START"
    DEAD_BEFORE_SENDING_ANYTHING = "DEAD_BEFORE_SENDING_ANYTHING"
    ADVERTISE_KEYS_RECEIVED = "ADVERTISE_KEYS_RECEIVED"
    DEAD_AFTER_ADVERTISE_KEYS_RECEIVED = "DEAD_AFTER_ADVERTISE_KEYS_RECEIVED"
    SHARE_KEYS_RECEIVED = "SHARE_KEYS_RECEIVED"
    DEAD_AFTER_SHARE_KEYS_RECEIVED = "DEAD_AFTER_SHARE_KEYS_RECEIVED"
    MASKED_INPUT_RESPONSE_RECEIVED = "MASKED_INPUT_RESPONSE_RECEIVED"
    DEAD_AFTER_MASKED_INPUT_RESPONSE_RECEIVED = "DEAD_AFTER_MASKED_INPUT_RESPONSE_RECEIVED"
    CONSISTENCY_CHECK_RECEIVED = "CONSISTENCY_CHECK_RECEIVED"
    DEAD_AFTER_CONSISTENCY_CHECK_RECEIVED = "DEAD_AFTER_CONSISTENCY_CHECK_RECEIVED"
    UNMASKING_RESPONSE_RECEIVED = "UNMASKING_RESPONSE_RECEIVED"

    @property
    def included_in_sum(self) -> bool:
        """True when this client's masked input entered the sum."""
        return self in _INCLUDED


_INCLUDED = frozenset(
    {
        ClientStatus.MASKED_INPUT_RESPONSE_RECEIVED,
        ClientStatus.DEAD_AFTER_MASKED_INPUT_RESPONSE_RECEIVED,
        ClientStatus.CONSISTENCY_CHECK_RECEIVED,
        ClientStatus.DEAD_AFTER_CONSISTENCY_CHECK_RECEIVED,
        ClientStatus.UNMASKING_RESPONSE_RECEIVED,
    }
)


ROSTER_DELIVERIES = ("full", "merkle")
"""The values of :attr:`SecAggConfig.roster_delivery`."""


def session_roster_delivery(requested: str, graph: NeighbourGraph, num_clients: int) -> str:
    """The roster delivery a session of ``num_clients`` clients over
    ``graph`` uses when a federation asks for ``requested``: ``"merkle"``
    when it is asked for and the graph is sparse for this roster (a client's
    shares have fewer than ``num_clients`` holders), ``"full"`` otherwise
    (e.g. ``HararyGraph(k)`` over ``k + 1`` clients is the complete graph:
    every client would get every entry, so a sparse roster saves nothing and
    :class:`SecAggConfig` refuses it).

    Raises:
        ConfigurationError: ``requested`` is not one of
            :data:`ROSTER_DELIVERIES`.
    """
    if requested not in ROSTER_DELIVERIES:
        raise ConfigurationError(f"roster_delivery must be one of {ROSTER_DELIVERIES},"
                                 f" got {requested!r}")
    if requested == "merkle" and graph.share_holders(num_clients) < num_clients:
        return "merkle"
    return "full"


def default_threshold(num_clients: int, mode: SecurityMode) -> int:
    """``floor(n/2)+1`` for semi-honest, ``floor(2n/3)+1`` for active mode,
    capped at ``n``."""
    if mode is SecurityMode.ACTIVE:
        return min(num_clients, (2 * num_clients) // 3 + 1)
    return min(num_clients, num_clients // 2 + 1)


def element_bytes(bits: int) -> int:
    """Bytes per ring element in memory and in the PRG stream: the smallest of
    1, 2, 4, 8 that holds ``bits`` bits."""
    for width in (1, 2, 4, 8):
        if bits <= 8 * width:
            return width
    raise ConfigurationError(f"bits must be in 1..64, got {bits}")


@dataclass(frozen=True)
class SecAggConfig:
    """A validated secure aggregation configuration, shared by the server and
    every client of one session.

    Args:
        num_clients: n, the number of clients invited (>= 2).
        vector_length: m, entries per input vector (> 0).
        bits: k, inputs and the sum live in Z_{2^k}; 1..64 (default 32).
        threshold: t, the minimum number of clients that must survive every
            round; also the Shamir threshold.  Default ``floor(n/2)+1``
            (semi-honest) or ``floor(2n/3)+1`` (active).  In active mode
            ``t`` must exceed half the holders of a client's shares (``n/2``
            for the complete graph, ``(k+1)/2`` for a degree-k sparse graph)
            so the server cannot isolate one client whose view it trimmed;
            against ``c`` corrupt clients SPEC.md [SEC-1] needs ``2t >
            holders + c`` (possible only for ``c < holders``; the
            semi-malicious parameter finder's ``t`` does not ensure it).
            What keeps the survivor list unique is :attr:`signature_quorum`.
        mode: :class:`SecurityMode`.
        client_ids: the invited clients (distinct ints in 1..2^31-2); default
            ``1..n``.
        graph: who masks with whom (default complete graph, i.e. Bonawitz).
            Active mode refuses a graph whose
            :meth:`~securefl.protocol.graphs.NeighbourGraph.connectivity` is
            not in ``1..n-1``.
        context: application bytes bound into the session (e.g. federation
            name and round number), so that signed keys cannot be replayed
            into another federation round.
        min_survivors: the fewest clients whose inputs may make up a sum
            (t..n, default t).  The server aborts, and clients refuse to
            unmask, below it.  With sparse graphs t is small (e.g. 17 of
            1000), so set this to what your privacy argument needs (e.g.
            ``ceil((1 - dropout) * n)`` as Google's production SecAgg does).
            In active mode clients also require consistency signatures from
            :attr:`signature_quorum` clients (at least ``min_survivors``,
            more than ``n/2``, and ``n - k + 1`` for a degree-k sparse graph).
        noise: optional :class:`~securefl.protocol.noise.NoisePlan`: every
            client adds distributed Skellam noise to its encoded input before
            masking, and the server removes the excess the public rule
            selects (SPEC.md section 16).  A removable plan needs active mode
            ([NZ-1b]); build the plan for a fixed-point codec with
            :func:`securefl.encoding.noise_plan_for`.  ``None`` (default): no
            noise, and every message and derivation is exactly as without
            this field.
        roster_delivery: ``"full"`` (default): every client receives the
            whole :class:`~securefl.protocol.messages.KeyRoster`.
            ``"merkle"`` (sparse graphs only): each client receives a
            :class:`~securefl.protocol.messages.SparseKeyRoster` with only
            its own and its neighbours' entries, each proven against a Merkle
            root that the session id binds (SPEC.md [MRK-1]..[MRK-9]), O(k
            log n) bytes instead of O(n).  Bound into the digest (only when
            ``"merkle"``: full-roster digests are unchanged).

    Raises:
        ConfigurationError: on any out-of-range or inconsistent value, and in
            active mode on ``2t <= holders`` or a graph connectivity outside
            ``1..n-1``; with a noise plan, ``bits`` too few for the released
            noise, a tolerance that needs too many components, a target the
            sampler cannot honour, a removable plan (``V > 0``, ``J >= 1``)
            in semi-honest mode, or ``noisy_length > vector_length``;
            ``roster_delivery`` other than ``"full"``/``"merkle"``, or
            ``"merkle"`` with a graph whose share holders are all ``n``
            clients (e.g. the complete graph: nothing to save).
    """

    num_clients: int
    vector_length: int
    bits: int = 32
    threshold: int | None = None
    mode: SecurityMode = SecurityMode.SEMI_HONEST
    client_ids: tuple[int, ...] | None = None
    graph: NeighbourGraph = field(default_factory=CompleteGraph)
    context: bytes = b""
    min_survivors: int | None = None
    noise: NoisePlan | None = None
    roster_delivery: str = "full"

    def __post_init__(self) -> None:
        _check_int("num_clients", self.num_clients, 2, MAX_CLIENT_ID)
        _check_int("vector_length", self.vector_length, 1, 2**40)
        _check_int("bits", self.bits, 1, 64)
        try:
            mode = SecurityMode(self.mode)
        except ValueError:
            raise ConfigurationError(
                f"mode must be one of {[m.value for m in SecurityMode]}, got {self.mode!r}"
            ) from None
        object.__setattr__(self, "mode", mode)
        if self.threshold is None:
            object.__setattr__(self, "threshold", default_threshold(self.num_clients, mode))
        _check_int("threshold", self.threshold, 1, self.num_clients)
        if self.client_ids is None:
            object.__setattr__(self, "client_ids", tuple(range(1, self.num_clients + 1)))
        ids = tuple(self.client_ids)  # type: ignore[arg-type]
        if len(ids) != self.num_clients:
            raise ConfigurationError(
                f"client_ids lists {len(ids)} ids but num_clients is {self.num_clients}"
            )
        for cid in ids:
            if isinstance(cid, bool) or not isinstance(cid, int) or not 1 <= cid <= MAX_CLIENT_ID:
                raise ConfigurationError(
                    f"client ids must be ints in 1..{MAX_CLIENT_ID}, got {cid!r}"
                )
        ids = tuple(sorted(ids))
        # neighbours in sorted order, not a set: a set of n ids costs ~40 bytes
        # an id, about 4x what a JSON configuration spends on it
        if any(a == b for a, b in itertools.pairwise(ids)):
            raise ConfigurationError("client_ids contains duplicates")
        object.__setattr__(self, "client_ids", ids)
        if not isinstance(self.context, bytes | bytearray) or len(self.context) > 1024:
            raise ConfigurationError("context must be bytes of at most 1024 bytes")
        object.__setattr__(self, "context", bytes(self.context))
        if not isinstance(self.graph, NeighbourGraph):
            raise ConfigurationError(f"graph must be a NeighbourGraph, got {self.graph!r}")
        self.graph.validate(self.num_clients, self.threshold)  # type: ignore[arg-type]
        if self.roster_delivery not in ROSTER_DELIVERIES:
            raise ConfigurationError(f"roster_delivery must be one of {ROSTER_DELIVERIES},"
                                     f" got {self.roster_delivery!r}")
        if self.roster_delivery == "merkle" and \
                self.graph.share_holders(self.num_clients) >= self.num_clients:
            raise ConfigurationError(
                "roster_delivery='merkle' needs a sparse graph (every client would get every"
                f" entry with {self.graph.describe()!r}): use HararyGraph(k) with k + 1 < n,"
                " or the default 'full' delivery")
        if self.min_survivors is None:
            object.__setattr__(self, "min_survivors", self.threshold)
        _check_int("min_survivors", self.min_survivors, self.t, self.num_clients)
        if self.noise is not None:
            if not isinstance(self.noise, NoisePlan):
                raise ConfigurationError(
                    f"noise must be a NoisePlan or None, got {type(self.noise).__name__}")
            layout = self.noise.layout(self.num_clients, self.floor, self.bits)
            _check_noise_mode(self.noise, layout, mode, self.vector_length)
        holders = self.graph.share_holders(self.num_clients)
        if mode is SecurityMode.ACTIVE and 2 * self.threshold <= holders:
            raise ConfigurationError(
                f"active mode needs threshold > {holders}/2, half the holders of a client's"
                f" shares (got t={self.threshold}); otherwise a malicious server can deliver"
                " one client the shares of only t-1 peers, report those peers dropped, and"
                " collect that client's self-mask from the other holders (SPEC.md [PARAM-2]);"
                f" use t >= {holders // 2 + 1}"
            )
        if mode is SecurityMode.ACTIVE:
            kappa = self.graph.connectivity(self.num_clients)
            if isinstance(kappa, bool) or not isinstance(kappa, int) or not (
                    1 <= kappa <= self.num_clients - 1):
                raise ConfigurationError(
                    f"active mode needs a graph whose connectivity() is a lower bound in"
                    f" 1..n-1 = 1..{self.num_clients - 1} on every roster of at most"
                    f" n={self.num_clients} clients (removing fewer than kappa clients never"
                    f" disconnects the rest); {self.graph.describe()!r} states"
                    f" kappa={kappa!r}: with kappa < 1 the graph may be disconnected even"
                    " when every client signs, and the server would learn one sum per"
                    " component (SPEC.md [PARAM-7], [SEC-1]); override"
                    " NeighbourGraph.connectivity() with a true bound >= 1, or use"
                    " CompleteGraph() or HararyGraph(k)"
                )

    @property
    def t(self) -> int:
        """The threshold as a plain int."""
        assert self.threshold is not None
        return self.threshold

    @property
    def floor(self) -> int:
        """The fewest clients that may remain at rounds R0..R2: ``max(t,
        min_survivors)``."""
        assert self.min_survivors is not None
        return max(self.t, self.min_survivors)

    @property
    def signature_quorum(self) -> int:
        """Active mode: the fewest distinct clients whose valid consistency
        signatures over one survivor list an unmasking request must carry
        (SPEC.md [PARAM-7]): ``q = max(f, floor(n/2) + 1, n - kappa + 1)`` with
        ``f`` = :attr:`floor`, ``n`` the configured clients and ``kappa`` the
        graph's :meth:`~securefl.protocol.graphs.NeighbourGraph.connectivity`
        (``n - 1`` for the complete graph, ``min(k, n - 1)`` for
        ``HararyGraph(k)``; active mode refuses a graph that states
        ``kappa < 1``, so ``q <= n``).

        ``q > n/2``: honest clients sign one list per session, so two different
        lists can never both gather ``q`` signatures (with ``c`` corrupt clients
        signing both, that needs ``2q > n + c``).  ``q >= n - kappa + 1``: the
        signers miss at most ``kappa - 1`` clients, so the graph stays connected
        on them.  With no corrupt client the server then learns at most one sum:
        over the clients on the list ``L`` it chose (at least ``q`` of them),
        never a sum over a strict subset of ``L``; it may leave clients that sent
        a masked input off ``L``.  Against ``c`` corrupt clients the same holds
        (over the honest clients on ``L``, at least ``q - c``) only when
        ``2t > h + c``, ``2q > n + c`` and ``q >= n - kappa + 1 + c`` (``h`` the
        share holders), i.e. for ``c <= min(2t - h - 1, q - n + kappa - 1)``,
        at most ``k - 1`` on ``HararyGraph(k)``: raise ``threshold`` and
        ``min_survivors`` for that (SPEC.md section 3.2a has the proof and the
        limits).  For the complete graph with the default ``min_survivors``
        ``q`` is ``t``; for a sparse graph it is ``n - k + 1``, so at most
        ``k - 1`` clients may be missing (dropped at any round, or not signing)
        by the time the survivors sign.
        """
        return signature_quorum(self.num_clients, self.floor, self.graph)

    @property
    def ids(self) -> tuple[int, ...]:
        """The invited client ids, sorted."""
        assert self.client_ids is not None
        return self.client_ids

    @property
    def modulus_mask(self) -> int:
        """``2^bits - 1``: reduce a ring element with ``& modulus_mask``."""
        return (1 << self.bits) - 1

    @property
    def element_bytes(self) -> int:
        """Bytes per ring element in memory and in the PRG stream (1, 2, 4 or 8);
        the wire packs tighter, see :attr:`wire_element_bytes`."""
        return element_bytes(self.bits)

    @property
    def wire_element_bytes(self) -> int:
        """Bytes per masked entry on the wire: ``ceil(bits / 8)`` (1..8)."""
        return (self.bits + 7) // 8

    @property
    def id_set(self) -> frozenset[int]:
        """The invited client ids as a frozenset (built once per configuration:
        O(1) membership instead of a scan of :attr:`ids`)."""
        return self._derived[0]

    @property
    def id_array(self) -> np.ndarray:
        """The invited client ids as a read-only ascending ``uint32`` array
        (built once per configuration), for bulk membership checks."""
        return self._derived[1]

    @functools.cached_property
    def _derived(self) -> tuple[frozenset[int], np.ndarray, bytes]:
        # the fields are frozen, so what is derived from them is computed once
        # (cached_property writes the instance __dict__, bypassing the frozen
        # __setattr__; dataclass equality and hashing look at the fields only)
        ids = np.asarray(self.ids, dtype=np.uint32)
        ids.setflags(write=False)
        return frozenset(self.ids), ids, self._compute_digest(ids)

    def digest(self) -> bytes:
        """SHA-256 over a canonical encoding of every field; bound into the
        session id and every signature.  Computed once per configuration
        object (its fields are frozen)."""
        return self._derived[2]

    def _compute_digest(self, ids: np.ndarray) -> bytes:
        h = hashlib.sha256()
        h.update(b"securefl/secagg/config")
        h.update(struct.pack(">IIIQB", PROTOCOL_VERSION, self.num_clients, self.t,
                             self.vector_length, self.bits))
        h.update(self.mode.value.encode().ljust(16, b"\0"))
        h.update(struct.pack(">I", len(self.ids)))
        # every id as a big-endian uint32, in one update (the same bytes as one
        # struct.pack(">I", cid) per id)
        h.update(ids.astype(">u4").tobytes())
        graph = self.graph.describe().encode()
        h.update(struct.pack(">I", len(graph)) + graph)
        h.update(struct.pack(">I", len(self.context)) + self.context)
        h.update(struct.pack(">I", self.floor))
        if self.noise is not None:  # absent: the digest is exactly as before plans existed
            plan = self.noise.encode()
            h.update(struct.pack(">I", len(plan)) + plan)
        if self.roster_delivery != "full":  # "full": the digest is exactly as before
            delivery = self.roster_delivery.encode()
            h.update(b"roster-delivery" + struct.pack(">I", len(delivery)) + delivery)
        return h.digest()

    @property
    def noise_layout(self) -> NoiseLayout | None:
        """The noise plan's component variances for this cohort (``n``
        clients, floor ``f``), or None without a plan."""
        if self.noise is None:
            return None
        return self.noise.layout(self.num_clients, self.floor)

    @property
    def noise_length(self) -> int:
        """How many leading coordinates of every input get noise: the plan's
        ``noisy_length``, or ``vector_length`` when it is unset (0 without a
        plan)."""
        if self.noise is None:
            return 0
        length = self.noise.noisy_length
        return self.vector_length if length is None else length

    @property
    def noise_components(self) -> int:
        """J, the removable noise seeds each client shares (0 without a plan)."""
        layout = self.noise_layout
        return 0 if layout is None else layout.components


def _check_noise_mode(plan: NoisePlan, layout: NoiseLayout, mode: SecurityMode,
                      vector_length: int) -> None:
    """SPEC.md [NZ-1b]: removable excess only in active mode, and
    ``noisy_length`` within the vector.

    In semi-honest mode nothing makes the server send every client the same
    survivor list, and a seed is reconstructable once ``t`` holders answered
    *any* list that selects it: a server telling three groups of survivors
    three different lists strips kept excess below ``V`` and still unmasks the
    sum, even with ``2t`` above the holders
    (``tests/test_review_noise_split.py``).  In active mode every honest client
    applies the rule to the one list signed by the quorum.
    """
    if (mode is SecurityMode.SEMI_HONEST and plan.has_removable_excess
            and layout.components > 0):
        raise ConfigurationError(
            "a removable noise plan needs mode=SecurityMode.ACTIVE: in semi-honest mode the"
            " server's survivor list is not signed, and a server sending different lists to"
            " groups of clients can collect the shares of excess-noise seeds the rule keeps"
            " and release a sum with noise variance below the target (SPEC.md [NZ-1b]); use"
            " active mode, or NoisePlan.calibrate_to_threshold(V), which has no removable"
            " excess and keeps variance >= V in either mode")
    if plan.noisy_length is not None and plan.noisy_length > vector_length:
        raise ConfigurationError(
            f"noisy_length {plan.noisy_length} exceeds vector_length {vector_length}")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be an int, got {type(value).__name__}")
    if not low <= value <= high:
        raise ConfigurationError(f"{name} must be in {low}..{high}, got {value}")


def sorted_ids(ids: Sequence[int]) -> tuple[int, ...]:
    """Helper: a sorted tuple of distinct ids."""
    return tuple(sorted(set(ids)))


def signature_quorum(num_clients: int, floor: int, graph: NeighbourGraph) -> int:
    """SPEC.md [PARAM-7]'s active-mode quorum ``q = min(n, max(f, floor(n/2) +
    1, n - kappa + 1))`` for ``n = num_clients``, ``f = floor`` (``max(t,
    min_survivors)``) and ``kappa`` the graph's connectivity (at least 1, at
    most ``n - 1``): the one formula behind
    :attr:`SecAggConfig.signature_quorum` and a Flower node's check of an
    announced setup."""
    n = num_clients
    kappa = min(max(graph.connectivity(n), 1), n - 1)
    return min(n, max(floor, n // 2 + 1, n - kappa + 1))
