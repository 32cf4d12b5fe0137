"""The server side of secure aggregation, sans-IO.

A :class:`ServerSession` is fed client messages with :meth:`receive` and told
when a round's deadline has passed with :meth:`close_round`, which returns
the messages to send next (or, after the last round, makes :attr:`result`
available).  Deadlines, sockets and threads are the caller's business; an
optional ``executor`` (anything with ``map``) lets the caller spread the
unmasking work over cores, and an optional ``unmask_pool`` of worker
processes takes the whole mask removal (key agreement, derivation and AES)
off the caller's thread (:mod:`securefl.protocol.unmasking`).

A message that breaks a rule raises :class:`RemoteProtocolError` and is
dropped: the session's state is exactly as before.  Fewer than ``threshold``
clients at any round raises :class:`AbortError`; a result is never wrong:
every reconstructed seed and key is checked against its owner's R0
commitment, bad shares are located and their holders blamed
(:attr:`AggregationResult.blame`), and when that is impossible the session
aborts with ``AbortError(rule=Rule.COMMITMENT_MISMATCH)``.

The rounds are one table of plain data, ``_ROUNDS`` (like the client's
``_TRANSITIONS``): per round the message expected, its handler, the closing
function, the status a client moves from and to, and the minimum count.  All
the server holds about a client is one record (``_Peer``); the session's
round and :attr:`ServerSession.state` are derived from those records.

The server adds each masked input into a running sum on receipt and keeps a
copy in a :class:`~securefl.protocol.storage.MaskedInputStore` until R2
closes, because a complaint received later in R2 may exclude a vector
already received: it is then read back and subtracted.  The default store
keeps the copies in memory (``n`` vectors); a
:class:`~securefl.protocol.storage.FileStore` on a file the caller opened
keeps the server's memory for the round at O(m).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from securefl.errors import (
    AbortError,
    ConfigurationError,
    InconsistentSharesError,
    InvalidKeyError,
    LocalProtocolError,
    RemoteProtocolError,
    Rule,
    SignatureError,
    WorkerError,
)
from securefl.hazmat import noise, shamir, signing
from securefl.hazmat.agreement import KeyPair, key_class, matches_public
from securefl.hazmat.prg import Executor, MaskExpander, ring_dtype
from securefl.hazmat.randomness import RandomSource, default_random
from securefl.protocol import derivation as d
from securefl.protocol import merkle, unmasking
from securefl.protocol.config import ClientStatus, Round, SecAggConfig, SecurityMode
from securefl.protocol.graphs import neighbour_map
from securefl.protocol.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShares,
    Envelope,
    KeyRoster,
    MaskedInput,
    ProvenEntry,
    ShareDelivery,
    SparseKeyRoster,
    UnmaskingRequest,
    UnmaskingResponse,
)
from securefl.protocol.roster import IdTuple
from securefl.protocol.storage import MaskedInputStore, MemoryStore
from securefl.protocol.validation import check_input_vector, check_message_fields


class ServerState(enum.Enum):
    """The round the server is collecting, or its end state."""

    COLLECTING_ADVERTISE_KEYS = "COLLECTING_ADVERTISE_KEYS"
    COLLECTING_SHARE_KEYS = "COLLECTING_SHARE_KEYS"
    COLLECTING_MASKED_INPUTS = "COLLECTING_MASKED_INPUTS"
    COLLECTING_CONSISTENCY_CHECKS = "COLLECTING_CONSISTENCY_CHECKS"
    COLLECTING_UNMASKING_RESPONSES = "COLLECTING_UNMASKING_RESPONSES"
    FINISHED = "FINISHED"
    ABORTED = "ABORTED"


@dataclass(frozen=True)
class Blame:
    """A client the server holds responsible for a refused contribution.

    Attributes:
        peer: the client.
        round: where the fault was seen.
        rule: the rule it broke.
        detail: what was refused (never secret material).
    """

    peer: int
    round: Round
    rule: Rule
    detail: str = ""


@dataclass(frozen=True)
class AggregationResult:
    """The outcome of a finished session.

    Attributes:
        total: uint64 array, the exact sum mod 2^bits of the inputs of
            ``survivors``.
        survivors: ids whose input entered ``total`` (their masked input was
            received), ascending.
        statuses: every invited client's final :class:`ClientStatus`.
        session_id: the session id (hex in logs; public).
        blame: in R2 the clients removed as the ends of matched share
            complaints (SPEC [R2-6]; the server cannot tell accuser from accused, so the
            detail lists both sides), in R4 the holders whose revealed shares
            are not on the polynomial of the committed secret (SPEC [R4-11]).
        excluded: clients whose masked input arrived but was discarded
            before unmasking (share complaints), with the reason; they are
            treated as dropped after sharing and are not in ``survivors``.
        noise_variance: with a noise plan, the variance per coordinate (ring
            units) of the Skellam noise left in ``total`` when every survivor
            followed the protocol: ``u B + sum_j c_j w_j`` (SPEC [NZ-6]);
            None without a plan.
        noise_removed: the ``(survivor, component)`` excess-noise seeds the
            server reconstructed and subtracted (the public rule's choice).
    """

    total: np.ndarray
    survivors: tuple[int, ...]
    statuses: Mapping[int, ClientStatus] = field(default_factory=dict)
    session_id: bytes = b""
    blame: tuple[Blame, ...] = ()
    excluded: Mapping[int, str] = field(default_factory=dict)
    noise_variance: float | None = None
    noise_removed: tuple[tuple[int, int], ...] = ()

    def dropped_at(self) -> dict[int, ClientStatus]:
        """The clients that did not finish, with where they stopped."""
        return {c: s for c, s in self.statuses.items()
                if s is not ClientStatus.UNMASKING_RESPONSE_RECEIVED}


_MAPPED_MESSAGES = (EncryptedShares, UnmaskingResponse)
"""Client messages with map fields (copied on receipt: :meth:`ServerSession.receive`)."""


class ServerSession:
    """The server's side of one secure aggregation session.

    Args:
        config: the session configuration.
        peer_identities: the pinned Ed25519 keys of every client; required
            in active mode, so that one client's unsigned or forged message is
            refused at once instead of making honest clients abort later.
        rng: randomness for the share-consistency checks (default OS CSPRNG).
        executor: optional executor (e.g. a ``ThreadPoolExecutor``) used to
            spread the unmasking work over ``workers`` cores.  The session
            never creates threads itself.
        unmask_pool: optional executor whose workers are separate processes
            (e.g. from :func:`securefl.protocol.unmasking.worker_pool`): the
            mask removal at the last round is cut into
            ``unmasking.TASKS_PER_WORKER * workers`` tasks that run there
            whole (X25519, key derivation and AES; ``cryptography`` holds the
            GIL for X25519, so threads cannot spread it).  The reconstructed
            seeds and masking keys reach the workers only through the pool's
            pipes.  The result is identical with or without it.  The caller
            creates and shuts down the pool; the session starts no process.
        workers: how many segments to split the work into (default: the
            number of CPUs when an executor or an unmask pool is given).
        store: where the masked inputs of the open R2 are kept until it
            closes (default a :class:`~securefl.protocol.storage.MemoryStore`;
            a :class:`~securefl.protocol.storage.FileStore` keeps the
            server's memory O(m)); the session clears it when R2 closes or
            the session aborts.
    """

    def __init__(
        self,
        config: SecAggConfig,
        *,
        peer_identities: Mapping[int, Ed25519PublicKey | bytes] | None = None,
        rng: RandomSource | None = None,
        executor: Executor | None = None,
        unmask_pool: Executor | None = None,
        workers: int | None = None,
        store: MaskedInputStore | None = None,
    ) -> None:
        self.config = config
        pooled = executor is not None or unmask_pool is not None
        self._workers = workers or (os.cpu_count() or 1 if pooled else 1)
        self._unmask_pool = unmask_pool
        self._rng = default_random(rng)
        self._executor = executor
        self._identities = ({c: signing.load_identity_public(k) for c, k in
                             peer_identities.items()} if peer_identities else {})
        if config.mode is SecurityMode.ACTIVE:
            missing = [c for c in config.ids if c not in self._identities]
            if missing:
                raise ConfigurationError(
                    "active mode: the server needs the pinned Ed25519 identity key of every"
                    f" client, to refuse unsigned or forged messages before they can abort the"
                    f" round (missing: {missing[:10]})")
        self._digest = config.digest()
        self._rounds = _ROUNDS[config.mode]
        self._peers = {c: _Peer() for c in config.ids}
        self.session_id: bytes | None = None
        self._keys_seen: dict[bytes, int] = {}
        self._contradicted: dict[int, list[int]] = {}
        self._dtype = ring_dtype(config.bits)
        self._sum: np.ndarray | None = None
        # R2: the sum of every masked input accepted so far (wrapping in the
        # ring's dtype), and their copies, to subtract those later excluded
        self._running: np.ndarray | None = None
        self._store: MaskedInputStore = MemoryStore() if store is None else store
        self._blame: list[Blame] = []
        # R2: the clients [R2-6] removed, and the masked inputs received before
        self._complaint_removed: tuple[int, ...] = ()
        self._masked_received = 0
        self._u3: tuple[int, ...] = ()
        self._u3_set: frozenset[int] = frozenset()
        self._dropped_set: frozenset[int] = frozenset()
        self._dropped: tuple[int, ...] = ()
        self._layout = config.noise_layout
        self._components = 0 if self._layout is None else self._layout.components
        self._removals: tuple[tuple[int, int], ...] = ()
        self._result: AggregationResult | None = None

    def __repr__(self) -> str:
        return f"ServerSession(state={self.state.name}, n={self.config.num_clients})"

    @property
    def statuses(self) -> dict[int, ClientStatus]:
        """Every invited client's :class:`ClientStatus` (a fresh dict)."""
        return {c: peer.status for c, peer in self._peers.items()}

    @property
    def round(self) -> Round | None:
        """The round being collected, or None once finished or aborted: the
        round open for the clients still taking part (every one of them has
        the same)."""
        row = self._row()
        return None if row is None else row.round

    @property
    def state(self) -> ServerState:
        """Where the session stands, derived from the clients' records."""
        row = self._row()
        if row is not None:
            return _STATE_OF_ROUND[row.round]
        return ServerState.FINISHED if self._result is not None else ServerState.ABORTED

    @property
    def finished(self) -> bool:
        """True once :attr:`result` is available."""
        return self._result is not None

    def _row(self) -> _RoundRow | None:
        """The row of the round open for the clients still taking part."""
        rnd = next((p.round for p in self._peers.values() if p.round is not None), None)
        return None if rnd is None else next(r for r in self._rounds if r.round is rnd)

    @property
    def result(self) -> AggregationResult:
        """The aggregation result.

        Raises:
            LocalProtocolError: the session has not finished (or aborted).
        """
        if self._result is None:
            raise LocalProtocolError(Rule.WRONG_ROUND, "no result: the session has not finished",
                                     peer="server", round=self.round)
        return self._result

    # -- receiving ----------------------------------------------------------

    def receive(self, message: Any) -> None:
        """Accept one client message for the current round.

        Raises:
            RemoteProtocolError: the message breaks a rule (late, early,
                duplicate, from an unknown or excluded client, malformed,
                wrong session, bad signature, a low-order, non-canonical or
                twist key, a seed commitment that is not 32 bytes, an
                ``excluded`` list naming peers never delivered); it is ignored
                and the session's state is unchanged.
            LocalProtocolError: the session is finished or aborted, or the
                object is not a client message.
        """
        row = self._row()
        if row is None:
            raise LocalProtocolError(Rule.SESSION_FINISHED, f"session is {self.state.name}",
                                     peer="server")
        rnd = row.round
        msg_round = _ROUND_OF_MESSAGE.get(type(message))
        if msg_round is None:
            raise LocalProtocolError(Rule.MALFORMED,
                                     f"not a client message: {type(message).__name__}",
                                     peer="server", round=rnd)
        sender = getattr(message, "sender", None)
        # exactly an int: an int subclass's own __hash__/__eq__ would run in the
        # lookup below (and could raise, or match another client's record)
        if type(sender) is not int or sender not in self._peers:
            raise RemoteProtocolError(Rule.UNKNOWN_PEER, "sender is not an invited client",
                                      peer=sender if type(sender) is int else None, round=rnd)
        if type(message) in _MAPPED_MESSAGES:
            # every map read once, through its items, into the message's own
            # sorted dict (its __post_init__): a caller's Mapping whose items,
            # values and [] disagree cannot show the checks one share and the
            # reconstruction another (an untyped crash, or an unblamed abort)
            try:
                message = replace(message)
            except Exception:
                raise RemoteProtocolError(Rule.MALFORMED, "a map field is not a mapping of"
                                          " client ids to bytes", peer=sender,
                                          round=rnd) from None
        check_message_fields(message, rnd)
        if msg_round is not rnd:
            when = "late" if msg_round < rnd else "early"
            raise RemoteProtocolError(Rule.WRONG_ROUND,
                                      f"{type(message).__name__} arrived {when}, server is"
                                      f" collecting {rnd.name}", peer=sender, round=rnd)
        if not isinstance(message, AdvertiseKeys) and message.session_id != self.session_id:
            raise RemoteProtocolError(Rule.WRONG_SESSION, "message belongs to another session",
                                      peer=sender, round=rnd)
        peer = self._peers[sender]
        self._expect_status(sender, peer.status, row.waiting, rnd)
        getattr(self, row.receive)(message, peer, rnd)
        peer.status = row.answered

    def _receive_advert(self, msg: AdvertiseKeys, peer: _Peer, rnd: Round) -> None:
        classes = []
        for key in (msg.encryption_key, msg.masking_key):
            try:
                classes.append(key_class(key))
            except InvalidKeyError:
                raise RemoteProtocolError(Rule.INVALID_PUBLIC_KEY, "advertised key is not a"
                                          " canonical 32-byte X25519 key of large order on the"
                                          " curve", peer=msg.sender, round=rnd) from None
        commitment = msg.seed_commitment
        if not isinstance(commitment, bytes) or len(commitment) != d.SEED_COMMITMENT_BYTES:
            raise RemoteProtocolError(Rule.MALFORMED, "the seed commitment is"
                                      f" {d.SEED_COMMITMENT_BYTES} bytes", peer=msg.sender,
                                      round=rnd)
        noise_commitments = msg.noise_commitments  # a tuple ([NZ-2]; checked on receipt)
        if len(noise_commitments) != self._components or any(
                not isinstance(c, bytes) or len(c) != d.SEED_COMMITMENT_BYTES
                for c in noise_commitments):
            raise RemoteProtocolError(Rule.MALFORMED, f"the noise plan needs exactly"
                                      f" {self._components} noise-seed commitments of"
                                      f" {d.SEED_COMMITMENT_BYTES} bytes ([NZ-2])",
                                      peer=msg.sender, round=rnd)
        # keys are compared up to sign and small-order components (SPEC [R0-2])
        if classes[0] == classes[1]:
            raise RemoteProtocolError(Rule.DUPLICATE_KEY, "the two advertised keys are equal",
                                      peer=msg.sender, round=rnd)
        for key in classes:
            if key in self._keys_seen:
                raise RemoteProtocolError(
                    Rule.DUPLICATE_KEY,
                    f"advertised a key already advertised by client {self._keys_seen[key]}",
                    peer=msg.sender, round=rnd)
        if self.config.mode is SecurityMode.ACTIVE:
            self._verify(msg.signature, d.advertise_payload(
                self._digest, msg.sender, msg.encryption_key, msg.masking_key,
                msg.seed_commitment, noise_commitments), msg.sender, rnd)
        peer.advert = msg
        self._keys_seen[classes[0]] = msg.sender
        self._keys_seen[classes[1]] = msg.sender

    def _receive_shares(self, msg: EncryptedShares, peer: _Peer, rnd: Round) -> None:
        expected = peer.neighbours
        if set(msg.ciphertexts) != expected:
            raise RemoteProtocolError(
                Rule.WRONG_RECIPIENTS,
                f"ciphertexts for {len(msg.ciphertexts)} clients, expected exactly its"
                f" {len(expected)} neighbours", peer=msg.sender, round=rnd)
        size = d.shares_ciphertext_bytes(self._components)
        values = msg.ciphertexts.values()
        if not (set(map(type, values)) <= {bytes} and set(map(len, values)) <= {size}):
            # not all plain bytes of the size: the check one by one
            for ct in values:
                if not isinstance(ct, bytes | bytearray) or len(ct) != size:
                    raise RemoteProtocolError(Rule.MALFORMED,
                                              f"a share ciphertext is {size} bytes",
                                              peer=msg.sender, round=rnd)
        peer.shares = msg

    def _receive_masked(self, msg: MaskedInput, peer: _Peer, rnd: Round) -> None:
        vector = msg.masked
        # the fast path only for a plain array: a subclass (a masked array's
        # max skips entries) goes through the full check
        if not (type(vector) is np.ndarray and vector.dtype == self._dtype):
            vector = check_input_vector(vector, self.config, msg.sender, local=False, rnd=rnd)
        elif vector.shape != (self.config.vector_length,):
            raise RemoteProtocolError(Rule.WRONG_LENGTH,
                                      f"masked input has shape {vector.shape}, expected"
                                      f" ({self.config.vector_length},)",
                                      peer=msg.sender, round=rnd)
        elif self.config.bits < 8 * self._dtype.itemsize and vector.size and \
                int(vector.max()) > self.config.modulus_mask:
            raise RemoteProtocolError(Rule.VALUE_OUT_OF_RANGE,
                                      f"masked entry not below 2^{self.config.bits}",
                                      peer=msg.sender, round=rnd)
        excluded = tuple(msg.excluded)
        if not all(type(u) is int for u in excluded) or list(excluded) != sorted(set(excluded)):
            raise RemoteProtocolError(Rule.MALFORMED, "excluded must be ascending client ids"
                                      " without repeats", peer=msg.sender, round=rnd)
        strays = [u for u in excluded if u not in peer.delivered]
        if strays:
            raise RemoteProtocolError(Rule.MALFORMED, f"excludes clients {strays[:10]} whose"
                                      " shares were never delivered to it", peer=msg.sender,
                                      round=rnd)
        if len(peer.delivered) - len(excluded) + 1 < self.config.t:
            raise RemoteProtocolError(Rule.BELOW_THRESHOLD, "keeps the shares of fewer than"
                                      " threshold - 1 peers", peer=msg.sender, round=rnd)
        # nothing below can fail: the vector is accepted.  Into the running
        # sum at once (the caller may reuse its buffer); a copy to the store,
        # in case a later complaint excludes this sender ([R2-6])
        vector = np.asarray(vector, dtype=self._dtype)
        if self._running is None:
            self._running = np.zeros(self.config.vector_length, dtype=self._dtype)
        try:
            self._store.put(msg.sender, vector)
        except Exception as exc:  # a full disk, a caller's store: refused, nothing added
            raise LocalProtocolError(Rule.STORE_FAILED, f"could not keep client {msg.sender}'s"
                                     f" masked input ({type(exc).__name__})", peer="server",
                                     round=rnd) from None
        np.add(self._running, vector, out=self._running)
        peer.complaints = frozenset(excluded)

    def _receive_signature(self, msg: ConsistencySignature, peer: _Peer, rnd: Round) -> None:
        assert self.session_id is not None
        self._verify(msg.signature, d.consistency_payload(self.session_id, self._u3),
                     msg.sender, rnd)
        peer.signature = msg.signature

    def _receive_unmasking(self, msg: UnmaskingResponse, peer: _Peer, rnd: Round) -> None:
        both = set(msg.self_mask_shares) & set(msg.key_shares)
        if both:
            raise RemoteProtocolError(Rule.BOTH_SHARES_REQUESTED,
                                      f"revealed both shares of clients {sorted(both)[:10]}",
                                      peer=msg.sender, round=rnd)
        holds = peer.neighbours
        # O(k) per response: the responder's neighbours against the lists' sets
        want_self = (holds | {msg.sender}) & self._u3_set
        want_keys = (holds & self._dropped_set) - peer.complaints
        want_noise = {(v, j) for v, j in self._removals if v in want_self}
        contradicted = sorted(set(msg.key_shares) & peer.complaints & self._dropped_set)
        if set(msg.self_mask_shares) != want_self or \
                set(msg.key_shares) - set(contradicted) != want_keys or \
                set(msg.noise_shares) != want_noise:
            raise RemoteProtocolError(Rule.MALFORMED,
                                      "response does not carry exactly the requested shares",
                                      peer=msg.sender, round=rnd)
        shares = [*msg.self_mask_shares.values(), *msg.key_shares.values(),
                  *msg.noise_shares.values()]
        if not set(map(type, shares)) <= {bytes} and \
                not all(isinstance(share, bytes) for share in shares):
            raise RemoteProtocolError(Rule.MALFORMED, "a share is not bytes", peer=msg.sender,
                                      round=rnd)
        try:
            shamir.check_shares(shares)
        except InconsistentSharesError:
            raise RemoteProtocolError(Rule.MALFORMED, "malformed share", peer=msg.sender,
                                      round=rnd) from None
        if contradicted:
            # SPEC [R4-12]: it holds shares of a peer it reported, so it masked
            # with that peer and its complaint was forged (or a lie); the
            # server never removed that mask, the sum would be wrong
            self._contradicted.setdefault(msg.sender, contradicted)
        peer.response = msg

    # -- closing rounds -----------------------------------------------------

    def close_round(self) -> list[Envelope]:
        """The current round's deadline passed: proceed with whoever answered.

        The clients still waiting on the round are marked dead, at least the
        round's minimum must have answered, and the round's closing function
        makes the next round's messages; the clients that answered are then
        open for the next round (none after the last).

        Returns:
            the messages to deliver for the next round (empty once finished).

        Raises:
            AbortError: fewer than the round's minimum answered (or were
                left after complaint resolution: ``COMPLAINTS_LEFT_TOO_FEW``
                when enough masked inputs arrived, with the complaint blame
                in its ``blame``), a secret cannot be reconstructed to its
                commitment
                (``COMMITMENT_MISMATCH``), or a complaint is contradicted by its
                sender (``COMPLAINT_CONTRADICTED``, SPEC [R4-12]), or (its
                subclass :class:`~securefl.errors.WorkerError`) a process of the
                ``unmask_pool`` failed; the session is then ABORTED and produces
                no result.
            LocalProtocolError: the session already finished or aborted.
        """
        row = self._row()
        if row is None:
            raise LocalProtocolError(Rule.SESSION_FINISHED, f"session is {self.state.name}",
                                     peer="server")
        try:
            self._mark_dead(row.waiting, row.dead)
            if row.settle is not None:
                getattr(self, row.settle)()
            answered = sum(p.status is row.answered for p in self._peers.values())
            for minimum in row.minimum:
                self._need(answered, row.round, row.counted, getattr(self.config, minimum))
            out: list[Envelope] = getattr(self, row.close)()
        except AbortError as exc:
            self._sum = None
            self._running = None
            for peer in self._peers.values():
                peer.round = None
            try:
                self._store.clear()
            except Exception as failure:  # the abort stays the error; the store's is noted
                exc.add_note(f"the masked-input store could not be cleared either"
                             f" ({type(failure).__name__})")
            raise
        following = self._rounds.index(row) + 1
        nxt = self._rounds[following].round if following < len(self._rounds) else None
        for peer in self._peers.values():
            peer.round = nxt if peer.status is row.answered else None
        return out

    def _close_advertise(self) -> list[Envelope]:
        adverts = {c: self._advert(c) for c in self._reached(ClientStatus.ADVERTISE_KEYS_RECEIVED)}
        entries = tuple(adverts.values())
        if self.config.roster_delivery == "merkle":
            return self._close_advertise_merkle(entries)
        self.session_id = d.session_id(self._digest, entries)
        for c, neighbours in neighbour_map(self.config.graph, tuple(adverts),
                                           self.session_id).items():
            self._peers[c].neighbours = frozenset(neighbours)
        roster = KeyRoster(self._digest, entries)
        return [Envelope(c, roster) for c in adverts]

    def _close_advertise_merkle(self, entries: tuple[AdvertiseKeys, ...]) -> list[Envelope]:
        """SPEC [MRK-2]: one Merkle tree over the roster (O(n) hashes), the
        session id of [MRK-3], and for every advertiser a
        :class:`SparseKeyRoster` with its own and its neighbours' entries and
        their inclusion proofs (O(k log n) each; every proof is computed
        once)."""
        ids = tuple(e.sender for e in entries)  # ascending (_reached sorts)
        tree = merkle.RosterTree([merkle.leaf_hash(e) for e in entries])
        bitmap = merkle.bitmap_of(self.config.id_array, np.array(ids, dtype=np.uint32))
        self.session_id = merkle.merkle_session_id(self._digest, bitmap, len(ids), tree.root)
        graph = neighbour_map(self.config.graph, ids, self.session_id)
        index = {c: i for i, c in enumerate(ids)}
        out = []
        for c in ids:
            self._peers[c].neighbours = frozenset(graph[c])
            proven = tuple(ProvenEntry(entries[index[u]], tree.proof(index[u]))
                           for u in sorted(graph[c] | {c}))
            out.append(Envelope(c, SparseKeyRoster(c, self._digest, bitmap, tree.root, proven)))
        return out

    def _close_share_keys(self) -> list[Envelope]:
        assert self.session_id is not None
        u2 = self._reached(ClientStatus.SHARE_KEYS_RECEIVED)
        u2_set = frozenset(u2)
        out = []
        # every ciphertext routed once, sender by sender (ascending): v gets
        # u's ciphertext for it iff both shared and each is the other's
        # neighbour (u's ciphertexts are exactly for its neighbours)
        neighbours = {c: p.neighbours for c, p in self._peers.items()}
        routes: dict[int, dict[int, bytes]] = {v: {} for v in u2}
        for u in u2:
            mine = neighbours[u]
            for v, ct in self._peers[u].shares.ciphertexts.items():  # type: ignore[union-attr]
                if v != u and v in u2_set and v in mine and u in neighbours[v]:
                    routes[v][u] = ct
        for v in u2:
            cts = routes[v]
            # a client that sees fewer than t-1 sharing neighbours would refuse
            # (sparse graphs only): it is not asked, and counts as dropped here
            if len(cts) + 1 >= self.config.t:
                out.append(Envelope(v, ShareDelivery(v, self.session_id, cts)))
                self._peers[v].delivered = frozenset(cts)
        for peer in self._peers.values():
            peer.shares = None
        return out

    def _close_masked(self) -> list[Envelope]:
        self._u3 = self._reached(ClientStatus.MASKED_INPUT_RESPONSE_RECEIVED)
        self._dropped = tuple(c for c, p in self._peers.items()
                              if _PROGRESS[p.status] == _PROGRESS[ClientStatus.SHARE_KEYS_RECEIVED])
        self._u3_set, self._dropped_set = frozenset(self._u3), frozenset(self._dropped)
        if self._layout is not None and len(self._u3) >= self.config.floor:
            self._removals = self._layout.removals(self._u3)  # SPEC [NZ-5]
        # the running sum already holds exactly U3's inputs: every accepted
        # one was added, every excluded one subtracted (_resolve_complaints)
        # the store first: if it cannot be cleared (a device error) the round
        # aborts here, before the running sum moves, so nothing can close it
        # again with a sum that lost it
        try:
            self._store.clear()
        except Exception as exc:
            raise AbortError(f"the masked-input store could not be cleared"
                             f" ({type(exc).__name__})", round=Round.MASKED_INPUT_COLLECTION,
                             rule=Rule.STORE_FAILED) from None
        self._sum = (np.zeros(self.config.vector_length, dtype=self._dtype)
                     if self._running is None else self._running)
        self._running = None
        # the lists every asked client checks, each with its array (IdTuple):
        # O(n) array work per client instead of a Python step per id
        self._u3, self._dropped = IdTuple(self._u3), IdTuple(self._dropped)
        assert self.session_id is not None
        u3 = set(self._u3)
        # sparse graphs: a survivor with fewer than t-1 surviving neighbours
        # would refuse to sign or unmask; its input still counts
        asked = [v for v in self._u3
                 if len(self._peers[v].neighbours & u3) + 1 >= self.config.t]
        if self.config.mode is SecurityMode.ACTIVE:
            return [Envelope(v, ConsistencyRequest(v, self.session_id, self._u3)) for v in asked]
        return [Envelope(v, UnmaskingRequest(v, self.session_id, self._u3, self._dropped,
                                             noise_removals=self._removals))
                for v in asked]

    def _close_consistency(self) -> list[Envelope]:
        assert self.session_id is not None
        sigs = {c: p.signature for c, p in self._peers.items() if p.signature is not None}
        return [Envelope(v, UnmaskingRequest(v, self.session_id, self._u3, self._dropped, sigs,
                                             self._removals))
                for v in sigs]

    def _close_unmasking(self) -> list[Envelope]:
        if self._contradicted:
            v, peers = min(self._contradicted.items())
            raise AbortError(
                f"client {v} revealed shares of clients {peers[:10]} that its masked input"
                " reported as excluded: the complaint was forged in transit (or the client"
                " lied) and its masks with them cannot be removed", round=Round.UNMASKING,
                rule=Rule.COMPLAINT_CONTRADICTED)
        total = self._unmask()
        assert self.session_id is not None
        self._result = AggregationResult(
            total.astype(np.uint64), self._u3, self.statuses, self.session_id,
            tuple(self._blame),
            {c: p.excluded for c, p in self._peers.items() if p.excluded is not None},
            None if self._layout is None else self._layout.released_variance(len(self._u3)),
            self._removals)
        for peer in self._peers.values():
            peer.response = None
        self._sum = None
        return []

    # -- share complaints (SPEC [R2-6]) ----------------------------------------

    def _includes(self, v: int, u: int) -> bool:
        """Did client ``v`` mask with ``u`` (and so hold ``u``'s shares)?"""
        peer = self._peers[v]
        return u in peer.delivered and u not in peer.complaints

    def _resolve_complaints(self) -> None:
        """Exclude both ends of a maximal matching of the complaint graph, then
        every survivor that holds shares of an excluded or reported dropped
        client that fewer than t survivors hold (SPEC [R2-6]).

        A complaint (v reports u) cannot be judged: u may have sent garbage,
        v may lie, or (without authenticated channels) the network may have
        broken or forged it.  Either end being dropped keeps the masks exact.
        With authenticated channels every complaint has a misbehaving end, the
        matched complaints are disjoint, and a maximal matching's ends cover
        every complaint: so the clients removed here number exactly twice the
        matching, at most half of them honest -- at most ``c`` honest clients
        for ``c`` misbehaving ones, however the ``c`` collude.  The matching
        takes the complaints in the order (accuser, accused), ascending.  The
        removals that follow (holders of fewer than t shares) are bounded
        separately (SPEC [R2-6]).
        """
        rnd = Round.MASKED_INPUT_COLLECTION
        masked_from = set(self._reached(ClientStatus.MASKED_INPUT_RESPONSE_RECEIVED))
        alive = set(masked_from)
        accusations = [(v, u) for v in sorted(alive) for u in sorted(self._peers[v].complaints)]
        matched: set[int] = set()
        for v, u in sorted(accusations):
            if u in alive and v not in matched and u not in matched:
                matched |= {v, u}
        removed = sorted(matched)
        for pick in removed:
            alive.discard(pick)
            by = sorted(v for v, u in accusations if u == pick and v in masked_from)
            of = sorted(u for v, u in accusations if v == pick and u in masked_from)
            self._blame.append(Blame(pick, rnd, Rule.SHARES_REFUSED,
                                     "removed as an end of a matched share complaint:"
                                     f" reported by clients {by[:10]}, reported clients"
                                     f" {of[:10]} (the server cannot tell which end is"
                                     " lying)"))
            self._peers[pick].excluded = "an end of a matched share complaint"
        t = self.config.t
        # also the reported clients that dropped on their own: their masks with
        # the survivors that did take their shares must be removable too;
        # to a fixpoint: a removal can take another removed client's holders
        # below t (the result does not depend on the order)
        gone = set(removed) | {u for _, u in accusations if u not in masked_from}
        changed = True
        while changed:
            changed = False
            for j in sorted(gone):
                holders = [v for v in sorted(self._peers[j].neighbours & alive)
                           if self._includes(v, j)]
                if 0 < len(holders) < t:
                    # their masks with `j` could never be removed: drop them too
                    for v in holders:
                        alive.discard(v)
                        gone.add(v)
                        self._peers[v].excluded = (f"holds shares of excluded client {j}"
                                                   f" that fewer than {t} survivors hold")
                    changed = True
                    break
        self._masked_received = len(masked_from)
        self._complaint_removed = tuple(sorted(masked_from - alive))
        for c, peer in self._peers.items():
            if peer.excluded is not None:
                if c in masked_from:
                    # accepted and added: take it back out of the running sum
                    assert self._running is not None
                    np.subtract(self._running, self._kept(c, rnd), out=self._running)
                peer.status = ClientStatus.DEAD_AFTER_SHARE_KEYS_RECEIVED

    def _kept(self, sender: int, rnd: Round) -> np.ndarray:
        """The masked input kept for ``sender``, exactly as accepted (length
        and dtype checked: a shorter array would broadcast silently).

        Raises:
            AbortError: the store failed or returned something else
                (``STORE_FAILED``): the sum cannot be corrected.
        """
        try:
            vector = self._store.get(sender)
        except Exception as exc:
            raise AbortError(f"the masked-input store could not return client {sender}'s"
                             f" input ({type(exc).__name__})", round=rnd,
                             rule=Rule.STORE_FAILED) from None
        if not isinstance(vector, np.ndarray) or vector.dtype != self._dtype \
                or vector.shape != (self.config.vector_length,):
            raise AbortError(f"the masked-input store returned a different vector for client"
                             f" {sender}", round=rnd, rule=Rule.STORE_FAILED)
        return vector

    # -- unmasking ----------------------------------------------------------

    def _unmask(self) -> np.ndarray:
        rnd = Round.UNMASKING
        t = self.config.t
        responders = {c for c, p in self._peers.items() if p.response is not None}
        u3 = set(self._u3)
        # group the secrets to reconstruct by their holder set (one group for the
        # complete graph), so Lagrange coefficients are computed once per group
        groups: dict[tuple[int, ...], list[tuple[str, int, int]]] = {}
        removals: dict[int, list[int]] = {}
        for v, j in self._removals:
            removals.setdefault(v, []).append(j)
        for u in self._u3:
            holders = tuple(sorted((self._peers[u].neighbours | {u}) & responders))
            groups.setdefault(holders, []).append(("self", u, 0))
            groups[holders].extend(("noise", u, j) for j in removals.get(u, ()))
        for u in self._dropped:
            if not any(self._includes(v, u) for v in self._peers[u].neighbours & u3):
                continue  # no survivor masked with u: nothing to remove
            holders = tuple(sorted(v for v in self._peers[u].neighbours & responders
                                   if self._includes(v, u)))
            groups.setdefault(holders, []).append(("key", u, 0))
        seeds: dict[int, bytes] = {}
        private_keys: dict[int, bytes] = {}
        noise_seeds: dict[tuple[int, int], bytes] = {}
        ordered = list(groups.items())
        # the groups before the first one with too few holders are
        # reconstructed (one of them may fail first), then that one aborts
        short = next((i for i, (holders, _) in enumerate(ordered) if len(holders) < t), None)
        found_all = self._reconstruct(ordered if short is None else ordered[:short], rnd)
        if short is not None:
            holders, secrets = ordered[short]
            raise AbortError(
                f"only {len(holders)} holders answered for the shares of client"
                f" {secrets[0][1]}, threshold is {t}", round=rnd, needed=t,
                available=len(holders))
        for (_, secrets), found in zip(ordered, found_all, strict=True):
            for i, bad in sorted(found.excluded.items()):
                kind, owner, j = secrets[i]
                what = _SECRET_NAMES[kind].format(j)
                for h in bad:
                    self._blame.append(Blame(
                        h, rnd, Rule.FORGED_SHARE,
                        f"its share of client {owner}'s {what} is not on the polynomial of the"
                        f" committed value (forged by client {h}, or dealt so by client"
                        f" {owner}); left out"))
            for (kind, owner, j), value in zip(secrets, found.secrets, strict=True):
                if kind == "noise":
                    noise_seeds[(owner, j)] = value
                else:
                    (seeds if kind == "self" else private_keys)[owner] = value
        assert self.session_id is not None and self._sum is not None
        sid = self.session_id
        if self._unmask_pool is not None:
            total = self._unmask_in_workers(seeds, private_keys, rnd)
            if noise_seeds:
                self._remove_noise(total, noise_seeds)
            return total
        jobs: list[tuple[bytes, bool]] = [
            (d.self_mask_key(seeds[u], sid, u), True) for u in self._u3]
        for u, raw_key in private_keys.items():
            pair = KeyPair.from_private_bytes(raw_key)
            for v in sorted(self._peers[u].neighbours & self._u3_set):
                if self._includes(v, u):
                    try:
                        key = d.masking_secret(pair, self._advert(v).masking_key, sid, u, v)
                    except InvalidKeyError as exc:
                        raise AbortError(f"client {v}'s masking key is invalid",
                                         round=rnd) from exc
                    # v added +PRG when v < u, -PRG when v > u: undo it
                    jobs.append((key, v < u))
        total = self._apply_masks(self._sum.copy(), jobs)
        if noise_seeds:
            self._remove_noise(total, noise_seeds)
        return total

    def _reconstruct(self, groups: list[tuple[tuple[int, ...], list[tuple[str, int, int]]]],
                     rnd: Round) -> list[shamir.VerifiedSecrets]:
        """Reconstruct every group's secrets from its holders' revealed shares
        and check each against its owner's R0 commitment
        (:func:`shamir.reconstruct_verified_groups`: the groups that pass are
        done in batches, any other one exactly as by its own
        ``Reconstructor``, which locates bad holders).

        Raises:
            AbortError: a secret that cannot be reconstructed to its
                commitment (``COMMITMENT_MISMATCH``), the first in group order.
        """
        t = self.config.t
        digest = self._digest

        def verify(g: int, i: int, value: bytes) -> bool:
            kind, owner, j = groups[g][1][i]
            advert = self._advert(owner)
            if kind == "self":
                return d.seed_commitment(digest, owner, value) == advert.seed_commitment
            if kind == "noise":
                return (d.noise_seed_commitment(digest, owner, j, value)
                        == advert.noise_commitments[j])
            return matches_public(value, advert.masking_key)

        fields = {c: self._share_maps(c) for c, p in self._peers.items()
                  if p.response is not None}
        pairs = [(holders, np.frombuffer(b"".join(self._revealed_shares(holders, secrets,
                                                                        fields)),
                                         dtype="<u4").reshape(len(holders), len(secrets),
                                                              shamir.LIMBS))
                 for holders, secrets in groups]
        try:
            return shamir.reconstruct_verified_groups(pairs, t, verify, self._rng, set())
        except shamir.UnverifiableSecretError as exc:
            holders, secrets = groups[exc.group]
            kind, owner, j = secrets[exc.index]
            what = _SECRET_NAMES[kind].format(j)
            raise AbortError(
                f"the {len(holders)} revealed shares of client {owner}'s {what} do not"
                f" reconstruct its committed value and the bad ones cannot be located"
                f" (rule '{Rule.COMMITMENT_MISMATCH.value}'): {exc}", round=rnd,
                rule=Rule.COMMITMENT_MISMATCH) from exc
        except InconsistentSharesError as exc:  # pragma: no cover - checked on receipt
            raise AbortError(f"inconsistent shares: {exc}", round=rnd,
                             rule=Rule.COMMITMENT_MISMATCH) from exc

    def _unmask_in_workers(self, seeds: dict[int, bytes], private_keys: dict[int, bytes],
                           rnd: Round) -> np.ndarray:
        """The masked sum with every self mask and every (dropped, survivor)
        pairwise mask removed, the work done by ``unmask_pool``'s processes
        (:mod:`securefl.protocol.unmasking`): the same masks, keys and signs as
        the single-thread path, so the same total.

        Raises:
            AbortError: X25519 refused a survivor's masking key.
            WorkerError: a worker or the pool failed (no secret in the message).
        """
        assert self.session_id is not None and self._sum is not None
        peers = {u: [v for v in sorted(self._peers[u].neighbours & self._u3_set)
                     if self._includes(v, u)] for u in private_keys}
        public = {v: self._advert(v).masking_key for v in self._u3}
        tasks = unmasking.plan(self.config.vector_length, self.config.bits, self.session_id,
                               seeds, private_keys, peers, public,
                               self._workers * unmasking.TASKS_PER_WORKER)
        total = self._sum.copy()
        pool = self._unmask_pool
        assert pool is not None
        failure: AbortError | None = None
        try:
            parts = 0
            for part in pool.map(unmasking.mask_sum, tasks):
                # exactly one vector of the ring per task: a short array would
                # broadcast, a lost or extra one would go unnoticed
                if not isinstance(part, np.ndarray) or part.dtype != total.dtype \
                        or part.shape != total.shape:
                    raise TypeError("a partial sum is not a vector of the ring")
                np.add(total, part, out=total)
                parts += 1
            if parts != len(tasks):
                raise LookupError(f"{parts} partial sums for {len(tasks)} tasks")
        except unmasking.PeerKeyRejectedError as exc:
            failure = AbortError(f"client {exc.peer}'s masking key is invalid", round=rnd)
        except Exception as exc:
            # only the kind of failure is named
            failure = WorkerError(f"an unmasking worker failed ({type(exc).__name__}); the"
                                  " masks were not removed", round=rnd)
        if failure is not None:
            # raised outside the handler: not even __context__ keeps the
            # worker's exception (and the traceback text it carries)
            raise failure from None
        if self.config.bits < 8 * total.dtype.itemsize:
            np.bitwise_and(total, total.dtype.type(self.config.modulus_mask), out=total)
        return total

    def _remove_noise(self, total: np.ndarray, noise_seeds: dict[tuple[int, int], bytes]) -> None:
        """SPEC [NZ-6]: regenerate every selected excess component from its
        reconstructed (commitment-checked) seed and subtract it, in the ring."""
        layout = self._layout
        sid = self.session_id
        assert layout is not None and sid is not None
        m = self.config.noise_length  # the leading coordinates only ([NZ-4])
        jobs = [(d.excess_noise_key(seed, sid, v, j), layout.excess[j])
                for (v, j), seed in sorted(noise_seeds.items())]

        def regenerate(group: list[tuple[bytes, float]]) -> np.ndarray:
            part = np.zeros(m, dtype=np.int64)
            for key, variance in group:
                part += noise.skellam(variance, m, key)
            return part

        if self._executor is not None and self._workers > 1 and len(jobs) > 1:
            # AES and numpy release the GIL: one accumulator per worker
            groups = [jobs[i::self._workers] for i in range(self._workers)]
            removed = sum(self._executor.map(regenerate, [g for g in groups if g]),
                          np.zeros(m, dtype=np.int64))
        else:
            removed = regenerate(jobs)
        np.subtract(total[:m], removed.astype(total.dtype), out=total[:m])
        if self.config.bits < 8 * total.dtype.itemsize:
            np.bitwise_and(total, total.dtype.type(self.config.modulus_mask), out=total)

    def _revealed_shares(self, holders: tuple[int, ...],
                         secrets: list[tuple[str, int, int]],
                         fields: dict[int, tuple[Mapping[Any, bytes], ...]] | None = None,
                         ) -> list[bytes]:
        """Every holder's revealed share of every secret, holder-major (one
        list of ``len(holders) * len(secrets)`` shares, built without a call
        per share: at n=500 there are 175,000).  ``fields``: each
        responder's three share maps (``self_mask_shares``, ``key_shares``,
        ``noise_shares``), when the caller looked them up once for every
        group."""
        lookups = [(_SHARE_FIELD[kind], (owner, j) if kind == "noise" else owner)
                   for kind, owner, j in secrets]
        if fields is None:
            fields = {h: self._share_maps(h) for h in holders}
        if len(lookups) == 1:
            f, key = lookups[0]
            return [fields[h][f][key] for h in holders]
        return [fields[h][f][key] for h in holders for f, key in lookups]

    def _share_maps(self, h: int) -> tuple[Mapping[Any, bytes], ...]:
        """Holder ``h``'s three maps of revealed shares, in ``_SHARE_FIELD`` order."""
        response = self._response(h)
        return (response.self_mask_shares, response.key_shares, response.noise_shares)

    def _apply_masks(self, total: np.ndarray, jobs: list[tuple[bytes, bool]]) -> np.ndarray:
        """Apply every ``(key, negate)`` mask job to ``total`` and reduce."""
        expander = MaskExpander(self.config.vector_length, self.config.bits)
        return expander.apply(jobs, total, executor=self._executor, workers=self._workers)

    # -- helpers ------------------------------------------------------------

    def _need(self, count: int, rnd: Round, what: str, needed: int | None = None) -> None:
        needed = self.config.t if needed is None else needed
        if count < needed:
            if needed == self.config.t:
                what_needed = "threshold"
            elif needed == self.config.floor:
                what_needed = "the minimum number of survivors"
            else:
                what_needed = "the active-mode signature quorum ([PARAM-7])"
            removed = self._complaint_removed if rnd is Round.MASKED_INPUT_COLLECTION else ()
            if removed:
                # SPEC [R2-6] removed clients whose masked inputs were accepted:
                # say so, with the complaint blame (not "only N sent masked inputs")
                ends = sorted({b.peer for b in self._blame if b.rule is Rule.SHARES_REFUSED})
                received = self._masked_received
                how = [f"clients {ends[:10]} as the ends of matched share complaints"] \
                    if ends else []
                if len(removed) > len(ends):
                    how.append(f"{len(removed) - len(ends)} holding shares of a removed or"
                               " reported client that fewer than t survivors hold")
                raise AbortError(
                    f"{received} masked inputs received, {len(removed)} removed by complaint"
                    f" resolution (SPEC [R2-6]: {', '.join(how)}): {count} left,"
                    f" {what_needed} is {needed}", round=rnd, needed=needed, available=count,
                    rule=Rule.COMPLAINTS_LEFT_TOO_FEW if received >= needed else None,
                    blame=tuple(self._blame))
            raise AbortError(f"only {count} {what}, {what_needed} is {needed}",
                             round=rnd, needed=needed, available=count)

    def _mark_dead(self, waiting: ClientStatus, dead: ClientStatus) -> None:
        for peer in self._peers.values():
            if peer.status is waiting:
                peer.status = dead

    def _reached(self, status: ClientStatus) -> tuple[int, ...]:
        """The clients (ascending) that got at least as far as ``status``,
        whether they went on or died after it."""
        return tuple(sorted(c for c, p in self._peers.items()
                            if _PROGRESS[p.status] >= _PROGRESS[status]))

    def _advert(self, c: int) -> AdvertiseKeys:
        advert = self._peers[c].advert
        assert advert is not None
        return advert

    def _response(self, c: int) -> UnmaskingResponse:
        response = self._peers[c].response
        assert response is not None
        return response

    @staticmethod
    def _expect_status(sender: int, current: ClientStatus, status: ClientStatus,
                       rnd: Round) -> None:
        if current is status:
            return
        if current not in _DEAD and _PROGRESS[current] > _PROGRESS[status]:
            raise RemoteProtocolError(Rule.DUPLICATE_MESSAGE, "already answered this round",
                                      peer=sender, round=rnd)
        raise RemoteProtocolError(Rule.UNKNOWN_PEER,
                                  f"client is {current.value}; it may not take part in"
                                  f" {rnd.name}", peer=sender, round=rnd)

    def _verify(self, signature: bytes | None, payload: bytes, signer: int, rnd: Round) -> None:
        if signature is None:
            raise RemoteProtocolError(Rule.MISSING_SIGNATURE, "no signature in active mode",
                                      peer=signer, round=rnd)
        identity = self._identities.get(signer)
        if identity is None:
            raise RemoteProtocolError(Rule.UNKNOWN_PEER, "no pinned identity key", peer=signer,
                                      round=rnd)
        try:
            signing.verify(identity, signature, payload)
        except SignatureError:
            raise RemoteProtocolError(Rule.INVALID_SIGNATURE, "signature does not verify",
                                      peer=signer, round=rnd) from None


_SHARE_FIELD = {"self": 0, "key": 1, "noise": 2}
"""Where a kind of secret's shares are in an :class:`UnmaskingResponse`:
``self_mask_shares``, ``key_shares``, ``noise_shares``."""
_SECRET_NAMES = {"self": "self-mask seed", "key": "masking key",
                 "noise": "excess-noise seed {}"}
_S = ClientStatus
_PROGRESS = {
    _S.READY_TO_START: 0, _S.DEAD_BEFORE_SENDING_ANYTHING: 0,
    _S.ADVERTISE_KEYS_RECEIVED: 1, _S.DEAD_AFTER_ADVERTISE_KEYS_RECEIVED: 1,
    _S.SHARE_KEYS_RECEIVED: 2, _S.DEAD_AFTER_SHARE_KEYS_RECEIVED: 2,
    _S.MASKED_INPUT_RESPONSE_RECEIVED: 3, _S.DEAD_AFTER_MASKED_INPUT_RESPONSE_RECEIVED: 3,
    _S.CONSISTENCY_CHECK_RECEIVED: 4, _S.DEAD_AFTER_CONSISTENCY_CHECK_RECEIVED: 4,
    _S.UNMASKING_RESPONSE_RECEIVED: 5,
}
"""How far a client got: how many of its messages the server accepted."""
_DEAD = frozenset({_S.DEAD_BEFORE_SENDING_ANYTHING, _S.DEAD_AFTER_ADVERTISE_KEYS_RECEIVED,
                   _S.DEAD_AFTER_SHARE_KEYS_RECEIVED, _S.DEAD_AFTER_MASKED_INPUT_RESPONSE_RECEIVED,
                   _S.DEAD_AFTER_CONSISTENCY_CHECK_RECEIVED})


@dataclass(frozen=True)
class _RoundRow:
    """One round of the server, as plain data.

    A client whose status is ``waiting`` may send one ``message``, checked
    and kept by the method ``receive``; it then moves to ``answered``.
    When the round closes, those still ``waiting`` move to ``dead``, the
    method ``settle`` (if any) may drop more, at least every ``minimum``
    (names of :class:`SecAggConfig` attributes) of ``answered`` clients must
    remain ("only N <counted>"), and the method ``close`` makes the next
    round's messages.
    """

    round: Round
    message: type
    receive: str
    close: str
    waiting: ClientStatus
    answered: ClientStatus
    dead: ClientStatus
    minimum: tuple[str, ...]
    counted: str
    settle: str | None = None


_ADVERTISE = _RoundRow(Round.ADVERTISE_KEYS, AdvertiseKeys, "_receive_advert", "_close_advertise",
                       _S.READY_TO_START, _S.ADVERTISE_KEYS_RECEIVED,
                       _S.DEAD_BEFORE_SENDING_ANYTHING, ("floor",), "clients advertised keys")
_SHARE = _RoundRow(Round.SHARE_KEYS, EncryptedShares, "_receive_shares", "_close_share_keys",
                   _S.ADVERTISE_KEYS_RECEIVED, _S.SHARE_KEYS_RECEIVED,
                   _S.DEAD_AFTER_ADVERTISE_KEYS_RECEIVED, ("floor",), "clients shared their keys")
_MASKED = _RoundRow(Round.MASKED_INPUT_COLLECTION, MaskedInput, "_receive_masked",
                    "_close_masked", _S.SHARE_KEYS_RECEIVED, _S.MASKED_INPUT_RESPONSE_RECEIVED,
                    _S.DEAD_AFTER_SHARE_KEYS_RECEIVED, ("floor",), "clients sent masked inputs",
                    settle="_resolve_complaints")
_CONSISTENCY = _RoundRow(Round.CONSISTENCY_CHECK, ConsistencySignature, "_receive_signature",
                         "_close_consistency", _S.MASKED_INPUT_RESPONSE_RECEIVED,
                         _S.CONSISTENCY_CHECK_RECEIVED,
                         _S.DEAD_AFTER_MASKED_INPUT_RESPONSE_RECEIVED, ("signature_quorum",),
                         "clients signed the survivor list")
_UNMASK = _RoundRow(Round.UNMASKING, UnmaskingResponse, "_receive_unmasking", "_close_unmasking",
                    _S.CONSISTENCY_CHECK_RECEIVED, _S.UNMASKING_RESPONSE_RECEIVED,
                    _S.DEAD_AFTER_CONSISTENCY_CHECK_RECEIVED, ("t",),
                    "clients answered the unmasking request")
_ROUNDS: dict[SecurityMode, tuple[_RoundRow, ...]] = {
    SecurityMode.ACTIVE: (
        _ADVERTISE, _SHARE, replace(_MASKED, minimum=("floor", "signature_quorum")),
        _CONSISTENCY, _UNMASK),
    SecurityMode.SEMI_HONEST: (
        _ADVERTISE, _SHARE, _MASKED,
        replace(_UNMASK, waiting=_S.MASKED_INPUT_RESPONSE_RECEIVED,
                dead=_S.DEAD_AFTER_MASKED_INPUT_RESPONSE_RECEIVED)),
}
"""The server's rounds in each mode, in order (the client's are in
``securefl.protocol.client._TRANSITIONS``)."""
_ROUND_OF_MESSAGE = {row.message: row.round for row in _ROUNDS[SecurityMode.ACTIVE]}
_STATE_OF_ROUND = {
    Round.ADVERTISE_KEYS: ServerState.COLLECTING_ADVERTISE_KEYS,
    Round.SHARE_KEYS: ServerState.COLLECTING_SHARE_KEYS,
    Round.MASKED_INPUT_COLLECTION: ServerState.COLLECTING_MASKED_INPUTS,
    Round.CONSISTENCY_CHECK: ServerState.COLLECTING_CONSISTENCY_CHECKS,
    Round.UNMASKING: ServerState.COLLECTING_UNMASKING_RESPONSES,
}


@dataclass
class _Peer:
    """What the server holds about one invited client.

    ``round`` is the round open for it (None once it is dead, or the
    session ended); the session's round is the one open for every client
    still taking part.  Messages are dropped once their round closed.
    """

    status: ClientStatus = _S.READY_TO_START
    round: Round | None = Round.ADVERTISE_KEYS
    advert: AdvertiseKeys | None = None
    neighbours: frozenset[int] = frozenset()
    shares: EncryptedShares | None = None
    delivered: frozenset[int] = frozenset()
    complaints: frozenset[int] = frozenset()
    excluded: str | None = None
    signature: bytes | None = None
    response: UnmaskingResponse | None = None
