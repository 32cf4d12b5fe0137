"""The client side of secure aggregation, sans-IO.

A :class:`ClientSession` is fed the server's messages and returns its own;
it never touches a socket, a thread or a clock.  Its state transitions are
the table ``_TRANSITIONS`` below.  Any protocol violation by the server
raises :class:`~securefl.errors.RemoteProtocolError` (naming the peer, the
round and the rule), reveals nothing, and moves the session to ``ABORTED``
for good: an aborted client never answers again.  The one exception is a
session that is ``DONE`` (it answered its unmasking request and wiped its
secrets): a different unmasking request is refused with
``RemoteProtocolError`` but the state stays ``DONE``, and the request it
answered is still answered again (SPEC [CLI-1], [CLI-2]).

Two things do not abort:

* an exact duplicate of a server message this client already answered (a
  retransmission) is answered again with the very same reply object, and
  changes nothing (SPEC [CLI-2]); a *different* message where one was already
  answered still aborts;
* a peer's share ciphertext that does not decrypt, or that holds malformed
  shares, is not the server's fault alone: the client leaves that peer out of
  its pairwise masks, holds none of its shares, and names it in
  ``MaskedInput.excluded`` (SPEC [R2-5]).
"""

from __future__ import annotations

import enum
import hashlib
import itertools
import operator
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from securefl.errors import (
    ConfigurationError,
    DecryptionError,
    InvalidKeyError,
    LocalProtocolError,
    RemoteProtocolError,
    Rule,
    SignatureError,
    clear_traceback_locals,
)
from securefl.hazmat import noise, shamir, signing
from securefl.hazmat.agreement import KeyPair, exchange, is_canonical_encoding
from securefl.hazmat.prg import Executor, MaskExpander, ring_dtype
from securefl.hazmat.randomness import RandomSource, default_random
from securefl.protocol import derivation as d
from securefl.protocol import merkle
from securefl.protocol.config import Round, SecAggConfig, SecurityMode
from securefl.protocol.graphs import neighbour_map, neighbours_of
from securefl.protocol.messages import (
    AdvertiseKeys,
    ClientMessage,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShares,
    KeyRoster,
    MaskedInput,
    ProvenEntry,
    ShareDelivery,
    SparseKeyRoster,
    UnmaskingRequest,
    UnmaskingResponse,
)
from securefl.protocol.roster import RosterEntries, session_id_of
from securefl.protocol.storage import SealableVector
from securefl.protocol.validation import is_client_id, validate_input_vector

SERVER = "server"


class ClientState(enum.Enum):
    """Where a client session stands."""

    IDLE = "IDLE"
    ADVERTISED = "ADVERTISED"
    SHARES_SENT = "SHARES_SENT"
    MASKED_INPUT_SENT = "MASKED_INPUT_SENT"
    CONSISTENCY_SIGNED = "CONSISTENCY_SIGNED"
    DONE = "DONE"
    ABORTED = "ABORTED"


# state -> (expected message type, handler name, protocol round, next state)
_TRANSITIONS: dict[ClientState, tuple[type, str, Round, ClientState]] = {
    ClientState.ADVERTISED: (KeyRoster, "_on_roster", Round.SHARE_KEYS, ClientState.SHARES_SENT),
    ClientState.SHARES_SENT: (ShareDelivery, "_on_delivery", Round.MASKED_INPUT_COLLECTION,
                              ClientState.MASKED_INPUT_SENT),
    ClientState.CONSISTENCY_SIGNED: (UnmaskingRequest, "_on_unmask", Round.UNMASKING,
                                     ClientState.DONE),
}
_ACTIVE_AFTER_MASKED = (ConsistencyRequest, "_on_consistency", Round.CONSISTENCY_CHECK,
                        ClientState.CONSISTENCY_SIGNED)
_SEMI_HONEST_AFTER_MASKED = (UnmaskingRequest, "_on_unmask", Round.UNMASKING, ClientState.DONE)
# with roster_delivery="merkle" the roster is a per-client SparseKeyRoster
_SPARSE_ROSTER = (SparseKeyRoster, "_on_sparse_roster", Round.SHARE_KEYS,
                  ClientState.SHARES_SENT)


class ClientSession:
    """One client's side of one secure aggregation session.

    :meth:`handle` answers an exact duplicate of a server message it already
    answered with the same reply object (SPEC [CLI-2]) instead of aborting; a
    peer whose share ciphertext does not decrypt is excluded and reported in
    ``MaskedInput.excluded`` (SPEC [R2-5]).

    Args:
        config: the session configuration (identical at every party).
        client_id: this client's id (must be in ``config.client_ids``).
        input: the vector to aggregate (1-D, ``vector_length`` unsigned ints
            below 2^bits); may instead be given later via :meth:`provide_input`.
        identity_key: active mode only: this client's Ed25519 identity key.
        peer_identities: active mode only: the pinned Ed25519 public keys of
            every client id in the configuration.
        rng: source of secret randomness (default: the OS CSPRNG).
        executor: optional executor (e.g. ``ThreadPoolExecutor``) to spread
            mask expansion over ``workers`` cores; the session never creates
            threads itself.
        workers: segments to split the mask work into (default: the number
            of CPUs when an executor is given).

    Raises:
        ConfigurationError: unknown id, or missing identity keys in active mode.
    """

    def __init__(
        self,
        config: SecAggConfig,
        client_id: int,
        *,
        input: np.ndarray | None = None,
        identity_key: Ed25519PrivateKey | None = None,
        peer_identities: Mapping[int, Ed25519PublicKey | bytes] | None = None,
        rng: RandomSource | None = None,
        executor: Executor | None = None,
        workers: int | None = None,
    ) -> None:
        if client_id not in config.id_set:
            raise ConfigurationError(f"client id {client_id} is not in the configuration")
        self.config = config
        self.client_id = client_id
        self._rng = default_random(rng)
        self._executor = executor
        self._workers = workers or (os.cpu_count() or 1 if executor is not None else 1)
        self._identities: dict[int, Ed25519PublicKey] = {}
        if config.mode is SecurityMode.ACTIVE:
            if identity_key is None or peer_identities is None:
                raise ConfigurationError(
                    "active mode needs identity_key and peer_identities (pinned Ed25519 keys)"
                )
            missing = [c for c in config.ids if c not in peer_identities]
            if missing:
                raise ConfigurationError(f"no pinned identity key for clients {missing[:10]}")
            self._identities = {c: signing.load_identity_public(peer_identities[c])
                                for c in config.ids}
            if signing.public_bytes(identity_key) != signing.public_bytes(
                    self._identities[client_id]):
                raise ConfigurationError("identity_key does not match the pinned key of this id")
        self._identity_key = identity_key
        self.state = ClientState.IDLE
        self._input: SealableVector | None = None
        if input is not None:
            self.provide_input(input)
        self._digest = config.digest()
        self.session_id: bytes | None = None
        self._roster: dict[int, AdvertiseKeys] = {}  # neighbours' entries (at least)
        self._roster_ids = np.zeros(0, dtype=np.uint32)  # ascending
        self._neighbours: frozenset[int] = frozenset()
        self._neighbour_array = np.zeros(0, dtype=np.int64)  # ascending
        self._u2_view: frozenset[int] = frozenset()
        self._held_key_shares: dict[int, bytes] = {}
        self._held_seed_shares: dict[int, bytes] = {}
        self._held_noise_shares: dict[tuple[int, int], bytes] = {}
        self._layout = config.noise_layout
        self._components = 0 if self._layout is None else self._layout.components
        self._signed_survivors: tuple[int, ...] | None = None
        self._revealed: dict[int, str] = {}
        self._excluded: frozenset[int] = frozenset()
        self._answered: dict[type, tuple[Any, ClientMessage]] = {}

    def __repr__(self) -> str:
        return f"ClientSession(client_id={self.client_id}, state={self.state.name})"

    # -- public API ---------------------------------------------------------

    def provide_input(self, vector: np.ndarray) -> None:
        """Set the vector to aggregate (before the masked-input round).

        Raises:
            LocalProtocolError: wrong shape, dtype or a value outside Z_{2^bits},
                or the masked input was already sent.
        """
        if self.state in (ClientState.MASKED_INPUT_SENT, ClientState.CONSISTENCY_SIGNED,
                          ClientState.DONE, ClientState.ABORTED):
            raise LocalProtocolError(Rule.SESSION_FINISHED, "the masked input was already sent",
                                     peer=self.client_id, round=Round.MASKED_INPUT_COLLECTION)
        # one private copy, already in the ring's dtype: it is masked in place,
        # then sealed into the immutable bytes sent, without another copy
        checked = validate_input_vector(vector, self.config, self.client_id, local=True)
        self._input = SealableVector(checked, ring_dtype(self.config.bits))

    def start(self) -> AdvertiseKeys:
        """R0: generate fresh keys and a self-mask seed; return the advertisement.

        Raises:
            LocalProtocolError: the session was already started.
        """
        if self.state is not ClientState.IDLE:
            raise LocalProtocolError(Rule.WRONG_ROUND, "start() called twice",
                                     peer=self.client_id, round=Round.ADVERTISE_KEYS)
        self._c = KeyPair.generate(self._rng)
        self._s = KeyPair.generate(self._rng)
        self._seed = self._rng.token_bytes(32)
        commitment = d.seed_commitment(self._digest, self.client_id, self._seed)
        # excess-noise seeds (SPEC [NZ-2]): fresh, committed now, shared in R1
        self._noise_seeds = [self._rng.token_bytes(32) for _ in range(self._components)]
        noise_commitments = tuple(d.noise_seed_commitment(self._digest, self.client_id, j, seed)
                                  for j, seed in enumerate(self._noise_seeds))
        signature = None
        if self.config.mode is SecurityMode.ACTIVE:
            assert self._identity_key is not None
            signature = signing.sign(self._identity_key, d.advertise_payload(
                self._digest, self.client_id, self._c.public_bytes, self._s.public_bytes,
                commitment, noise_commitments))
        self._advert = AdvertiseKeys(self.client_id, self._c.public_bytes, self._s.public_bytes,
                                     signature, commitment, noise_commitments)
        self.state = ClientState.ADVERTISED
        return self._advert

    def handle(self, message: Any) -> ClientMessage:
        """Feed one server message; return this client's reply.

        An exact duplicate (equal in every field) of a server message this
        session already answered returns the same reply again and changes
        nothing, in any state but ``ABORTED``; any other message that does not
        fit the state aborts as below.

        Raises:
            RemoteProtocolError: the server broke a rule; the session is
                aborted and nothing is revealed (in state ``DONE``: a second,
                different unmasking request; the state stays ``DONE``).
            LocalProtocolError: the session is finished/aborted, or no input
                was provided before the masked-input round (state unchanged;
                provide it and call again).
            Exception: whatever the session's executor (or an interrupt)
                raised while the input was being masked: the input is then
                partly masked in place, so the session is aborted (its
                working copy cleared and dropped) and sends nothing.

        Whatever it raises leaves with the local variables of the session's
        frames cleared (:func:`~securefl.errors.clear_traceback_locals`): they
        held secrets (this client's shares of its keys, pair keys, peers'
        shares) that a reporter recording locals would otherwise write out.
        """
        keep = sys.exc_info()[1]
        try:
            return self._handle(message)
        except BaseException as exc:
            clear_traceback_locals(exc, keep=keep)
            raise

    def _handle(self, message: Any) -> ClientMessage:
        """:meth:`handle`, without the clean-up of what it raises."""
        if self.state in (ClientState.ABORTED,):
            raise LocalProtocolError(Rule.SESSION_FINISHED, "this session was aborted",
                                     peer=self.client_id)
        answered = self._answered.get(type(message))
        if answered is not None and _is_duplicate(answered[0], message):
            if answered[1] is None:
                raise LocalProtocolError(Rule.SESSION_FINISHED, "the masked input sent was"
                                         " released (release_masked_input)",
                                         peer=self.client_id, round=Round.MASKED_INPUT_COLLECTION)
            return answered[1]
        if self.state is ClientState.DONE:
            self._refuse_after_done(message)
        if self.state is ClientState.IDLE:
            raise LocalProtocolError(Rule.WRONG_ROUND, "call start() first", peer=self.client_id)
        if self.state is ClientState.MASKED_INPUT_SENT:
            entry = (_ACTIVE_AFTER_MASKED if self.config.mode is SecurityMode.ACTIVE
                     else _SEMI_HONEST_AFTER_MASKED)
        elif self.state is ClientState.ADVERTISED and self.config.roster_delivery == "merkle":
            entry = _SPARSE_ROSTER
        else:
            entry = _TRANSITIONS[self.state]
        expected, handler, rnd, next_state = entry
        if not isinstance(message, expected):
            self._fail(Rule.WRONG_ROUND,
                       f"expected {expected.__name__} in state {self.state.name},"
                       f" got {type(message).__name__}", rnd)
        recipient = getattr(message, "recipient", self.client_id)
        # exactly an int (or numpy integer): an int subclass's own __eq__ would run
        if not is_client_id(recipient) or recipient != self.client_id:
            self._fail(Rule.MALFORMED, "message addressed to client"
                       f" {operator.index(recipient) if is_client_id(recipient) else '?'}", rnd)
        if handler not in ("_on_roster", "_on_sparse_roster") \
                and message.session_id != self.session_id:
            self._fail(Rule.WRONG_SESSION, "message belongs to another session", rnd)
        reply = getattr(self, handler)(message)
        self._answered[type(message)] = (_answer_key(message, self.session_id), reply)
        self.state = next_state
        if next_state is ClientState.DONE:
            self._wipe()
        return reply

    # -- rounds -------------------------------------------------------------

    def _on_roster(self, msg: KeyRoster) -> EncryptedShares:
        rnd = Round.SHARE_KEYS
        if msg.config_digest != self._digest:
            self._fail(Rule.WRONG_CONFIG, "roster was made for another configuration", rnd)
        entries = msg.entries
        # exactly the class: a subclass could show other keys than it hashes
        columns = entries if type(entries) is RosterEntries else None
        if columns is not None:
            columns = _own_columns(columns)
            if columns is None:
                self._fail(Rule.MALFORMED, "roster columns must be arrays of n senders and"
                           " n x 96 bytes", rnd)
            # O(n) array work, no Python step per entry
            senders = columns.senders
            if not isinstance(senders, np.ndarray) or senders.dtype.kind not in "ui":
                # (the decoder builds uint32; a float 3.5 passed the range check)
                self._fail(Rule.MALFORMED, "roster senders must be client ids", rnd)
            if senders.size > 1 and not bool(np.all(senders[1:] > senders[:-1])):
                self._fail(Rule.MALFORMED, "roster entries must be sorted by sender, without"
                           " repeats", rnd)
            clean = _columns_clean(columns, self.config.id_array, self._components)
        else:
            try:
                ids = [getattr(e, "sender", None) for e in entries]
            except TypeError:
                # not iterable (the decoder builds a tuple; an in-process
                # caller may pass anything)
                self._fail(Rule.MALFORMED, "roster entries must be a sequence of"
                           " advertisements", rnd)
            if not all(map(is_client_id, ids)):
                # an int subclass's own __hash__/__eq__ would run in the checks below
                self._fail(Rule.MALFORMED, "roster senders must be client ids", rnd)
            if ids != sorted(set(ids)):
                self._fail(Rule.MALFORMED, "roster entries must be sorted by sender, without"
                           " repeats", rnd)
            # the rules below, checked in bulk; on any violation the loops name it
            clean = _roster_clean(entries, ids, self.config.id_set, self._components)
        invited = self.config.id_set  # O(1) membership per entry (built once per config)
        for e in () if clean else msg.entries:
            if e.sender not in invited:
                self._fail(Rule.UNKNOWN_PEER, "roster lists a client outside the configuration",
                           rnd, peer=e.sender)
            if len(e.encryption_key) != 32 or len(e.masking_key) != 32:
                self._fail(Rule.INVALID_PUBLIC_KEY, "advertised keys must be 32 bytes", rnd,
                           peer=e.sender)
            if len(e.seed_commitment) != d.SEED_COMMITMENT_BYTES:
                self._fail(Rule.MALFORMED, "a seed commitment must be 32 bytes", rnd,
                           peer=e.sender)
            commitments = e.noise_commitments
            if not isinstance(commitments, tuple) or len(commitments) != self._components or any(
                    not isinstance(c, bytes) or len(c) != d.SEED_COMMITMENT_BYTES
                    for c in commitments):
                self._fail(Rule.MALFORMED, f"the noise plan needs exactly {self._components}"
                           " noise-seed commitments of 32 bytes ([NZ-2])", rnd, peer=e.sender)
        # a columnar roster builds only the entries looked at (own, neighbours)
        roster = {} if columns is not None else {e.sender: e for e in entries}
        own = columns.find(self.client_id) if columns is not None else roster.get(self.client_id)
        if own is None or (own.encryption_key, own.masking_key, own.seed_commitment,
                           own.noise_commitments) != (
                self._advert.encryption_key, self._advert.masking_key,
                self._advert.seed_commitment, self._advert.noise_commitments):
            self._fail(Rule.OWN_KEY_ALTERED, "the roster does not carry this client's own keys",
                       rnd)
        seen: dict[bytes, int] = {}
        for e in () if clean else msg.entries:
            if not (is_canonical_encoding(e.encryption_key)
                    and is_canonical_encoding(e.masking_key)):
                self._fail(Rule.INVALID_PUBLIC_KEY, "advertised keys must be canonically"
                           " encoded (top bit clear, u < p; SPEC [R0-5])", rnd,
                           peer=e.sender)
            self._note_keys(e, seen, rnd)
        if len(msg.entries) < self.config.floor:
            self._fail(Rule.BELOW_THRESHOLD,
                       f"roster has {len(msg.entries)} clients, at least {self.config.floor}"
                       " are required", rnd)
        if self.config.mode is SecurityMode.ACTIVE:
            for e in msg.entries:
                self._verify(e.signature, d.advertise_payload(
                    self._digest, e.sender, e.encryption_key, e.masking_key, e.seed_commitment,
                    e.noise_commitments), e.sender, rnd)
        sid = (session_id_of(self._digest, columns) if columns is not None
               else d.session_id(self._digest, entries))
        # every sender is now an invited id (1..2^31-2), ascending
        roster_ids = (columns.senders if columns is not None
                      else np.array(ids, dtype=np.uint32))
        neighbours = frozenset(neighbour_map(self.config.graph, tuple(roster_ids.tolist()),
                                             sid)[self.client_id])
        if len(neighbours) + 1 < self.config.t:
            self._fail(Rule.BELOW_THRESHOLD,
                       f"only {len(neighbours)} neighbours, threshold is {self.config.t}", rnd)
        holders = sorted(neighbours | {self.client_id})
        if columns is not None:
            roster = _entries_at(columns, holders)
        return self._deal_shares(sid, roster_ids, roster, neighbours, rnd)

    def _on_sparse_roster(self, msg: SparseKeyRoster) -> EncryptedShares:
        """R0 -> R1 with ``roster_delivery="merkle"``: accept the sparse
        roster (:meth:`_accept_sparse_roster`), then deal shares as
        :meth:`_on_roster` does."""
        sid, roster_ids, roster, neighbours = self._accept_sparse_roster(msg)
        return self._deal_shares(sid, roster_ids, roster, neighbours, Round.SHARE_KEYS)

    def _deal_shares(self, sid: bytes, roster_ids: np.ndarray, roster: dict[int, AdvertiseKeys],
                     neighbours: frozenset[int], rnd: Round) -> EncryptedShares:
        """R1 once the roster is accepted: Shamir-share the secrets to the
        neighbours and this client, encrypt each neighbour's shares under the
        pair key bound to ``sid`` ([R1-1])."""
        holders = sorted(neighbours | {self.client_id})
        shares = shamir.split([self._s.private_bytes(), self._seed, *self._noise_seeds],
                              holders, self.config.t, self._rng)
        ciphertexts: dict[int, bytes] = {}
        share_keys: dict[int, bytes] = {}
        # every share serialised at once (as shamir.share_to_bytes does one by
        # one), holder-major: a holder's key share, seed share and noise shares
        # (64 bytes each) are one contiguous bundle
        width = shamir.SHARE_BYTES
        blob = shamir.shares_to_bytes(shares)
        per_holder = (2 + self._components) * width
        pairs = d.PeerDerivations(sid, self.client_id)
        private = self._c.private
        me = self.client_id
        for row, holder in enumerate(holders):
            base = row * per_holder
            bundle = blob[base:base + per_holder]
            if holder == me:
                self._held_key_shares[holder] = bundle[:width]
                self._held_seed_shares[holder] = bundle[width:2 * width]
                for j in range(self._components):
                    self._held_noise_shares[(holder, j)] = bundle[(2 + j) * width:
                                                                  (3 + j) * width]
                continue
            try:
                secret = exchange(private, roster[holder].encryption_key)
            except InvalidKeyError:
                self._fail(Rule.INVALID_PUBLIC_KEY, "encryption key is of low order", rnd,
                           peer=holder)
            key = share_keys[holder] = pairs.share_key(secret, holder)
            # (noise shares only with a plan: the call is then exactly as without one)
            extra = ([bundle[(2 + j) * width:(3 + j) * width]
                      for j in range(self._components)],) if self._components else ()
            ciphertexts[holder] = d.encrypt_shares(key, sid, me, holder, bundle[:width],
                                                   bundle[width:2 * width], *extra)
        self.session_id = sid
        self._share_keys = share_keys  # pair keys, reused to decrypt in R2 then wiped
        self._roster = roster
        self._roster_ids = roster_ids
        self._neighbours = neighbours
        self._neighbour_array = np.array(sorted(neighbours), dtype=np.int64)
        return EncryptedShares(self.client_id, sid, ciphertexts)

    def _accept_sparse_roster(self, msg: SparseKeyRoster,
                              ) -> tuple[bytes, np.ndarray, dict[int, AdvertiseKeys],
                                         frozenset[int]]:
        """SPEC [MRK-4]..[MRK-8]: check a :class:`SparseKeyRoster` and return
        the session id, the roster ids (ascending ``uint32``), the received
        entries by sender (own and neighbours') and the neighbours.  O(n)
        array work (the bitmap, the graph) and O(k log n) Python steps.
        Every refusal aborts the session (:meth:`_fail`)."""
        rnd = Round.SHARE_KEYS
        if msg.config_digest != self._digest:
            self._fail(Rule.WRONG_CONFIG, "roster was made for another configuration", rnd)
        # exactly bytes: a subclass could redefine == (every proof would
        # "verify") or + (the session id would hash other bytes than it shows)
        if type(msg.root) is not bytes or len(msg.root) != merkle.HASH_BYTES:
            self._fail(Rule.MALFORMED, "the roster root must be 32 bytes", rnd)
        roster_ids = merkle.ids_of_bitmap(self.config.id_array, msg.id_bitmap)
        if roster_ids is None:
            self._fail(Rule.ROSTER_ID_SET_INVALID, "the roster's id bitmap must have one bit per"
                       f" invited id ({(self.config.num_clients + 7) // 8} bytes) and no bit"
                       " past them ([MRK-4])", rnd)
        size = int(roster_ids.size)
        if size < self.config.floor:
            self._fail(Rule.BELOW_THRESHOLD, f"roster has {size} clients, at least"
                       f" {self.config.floor} are required", rnd)
        if not bool(_in_sorted(roster_ids, np.array([self.client_id]))[0]):
            self._fail(Rule.OWN_KEY_ALTERED, "the roster's id set leaves out this client", rnd)
        sid = merkle.merkle_session_id(self._digest, msg.id_bitmap, size, msg.root)
        neighbours = neighbours_of(self.config.graph, tuple(roster_ids.tolist()), sid,
                                   self.client_id)
        if len(neighbours) + 1 < self.config.t:
            self._fail(Rule.BELOW_THRESHOLD,
                       f"only {len(neighbours)} neighbours, threshold is {self.config.t}", rnd)
        proven = msg.entries
        expected = neighbours | {self.client_id}
        if not isinstance(proven, tuple):
            self._fail(Rule.MALFORMED, "roster entries must be proven advertisements", rnd)
        # at most |expected| + 1 entries are looked at (O(k) steps even if the
        # server sent n): with more, one of the first |expected| + 1 is extra
        head = proven[:len(expected) + 1]
        if not all(isinstance(p, ProvenEntry) and isinstance(p.entry, AdvertiseKeys)
                   and type(p.entry.sender) is int for p in head):
            self._fail(Rule.MALFORMED, "roster entries must be proven advertisements", rnd)
        senders = [p.entry.sender for p in head]
        if any(a >= b for a, b in itertools.pairwise(senders)):
            self._fail(Rule.MALFORMED, "roster entries must be sorted by sender, without"
                       " repeats", rnd)
        extra = sorted(set(senders) - expected)
        if extra:
            self._fail(Rule.ROSTER_NOT_NEIGHBOURS, "the roster carries an entry of a client"
                       " that is not a neighbour of this client ([MRK-5])", rnd, peer=extra[0])
        missing = sorted(expected - set(senders))
        if missing:
            self._fail(Rule.ROSTER_NOT_NEIGHBOURS, "the roster leaves out the entry of a"
                       " neighbour (or this client's own) ([MRK-5])", rnd, peer=missing[0])
        ranks = np.searchsorted(roster_ids, np.array(senders, dtype=np.uint32)).tolist()
        seen: dict[bytes, int] = {}
        roster: dict[int, AdvertiseKeys] = {}
        for p, index in zip(proven, ranks, strict=True):
            e = p.entry
            self._check_entry(e, rnd)
            if not merkle.verify_inclusion(merkle.leaf_hash(e), index, size, p.inclusion_path,
                                           msg.root):
                self._fail(Rule.ROSTER_PROOF_INVALID, f"the entry does not verify at leaf"
                           f" {index} of {size} against the roster root ([MRK-6])", rnd,
                           peer=e.sender)
            self._note_keys(e, seen, rnd)
            roster[e.sender] = e
        own = roster[self.client_id]
        if (own.encryption_key, own.masking_key, own.seed_commitment,
                own.noise_commitments) != (
                self._advert.encryption_key, self._advert.masking_key,
                self._advert.seed_commitment, self._advert.noise_commitments):
            self._fail(Rule.OWN_KEY_ALTERED, "the roster does not carry this client's own keys",
                       rnd)
        if self.config.mode is SecurityMode.ACTIVE:
            for e in roster.values():
                self._verify(e.signature, d.advertise_payload(
                    self._digest, e.sender, e.encryption_key, e.masking_key, e.seed_commitment,
                    e.noise_commitments), e.sender, rnd)
        return sid, roster_ids, roster, neighbours

    def _note_keys(self, e: AdvertiseKeys, seen: dict[bytes, int], rnd: Round) -> None:
        """Record ``e``'s two public keys in ``seen`` (key -> sender),
        refusing ([R0-7], ``duplicate-advertised-key``, naming ``e``'s
        sender) a key already seen."""
        for key in (e.encryption_key, e.masking_key):
            if key in seen:
                self._fail(Rule.DUPLICATE_KEY,
                           f"advertises a key already advertised by client {seen[key]}",
                           rnd, peer=e.sender)
            seen[key] = e.sender

    def _check_entry(self, e: AdvertiseKeys, rnd: Round) -> None:
        """[R0-5] for one entry: 32-byte canonical keys, a 32-byte seed
        commitment, the plan's number of 32-byte noise commitments; every
        field exactly ``bytes`` (a subclass could hash as one value and be
        used as another)."""
        if not all(type(f) is bytes for f in (e.encryption_key, e.masking_key,
                                              e.seed_commitment)):
            self._fail(Rule.MALFORMED, "roster entry fields must be bytes", rnd, peer=e.sender)
        if len(e.encryption_key) != 32 or len(e.masking_key) != 32:
            self._fail(Rule.INVALID_PUBLIC_KEY, "advertised keys must be 32 bytes", rnd,
                       peer=e.sender)
        if len(e.seed_commitment) != d.SEED_COMMITMENT_BYTES:
            self._fail(Rule.MALFORMED, "a seed commitment must be 32 bytes", rnd, peer=e.sender)
        commitments = e.noise_commitments
        if not isinstance(commitments, tuple) or len(commitments) != self._components or any(
                type(c) is not bytes or len(c) != d.SEED_COMMITMENT_BYTES
                for c in commitments):
            self._fail(Rule.MALFORMED, f"the noise plan needs exactly {self._components}"
                       " noise-seed commitments of 32 bytes ([NZ-2])", rnd, peer=e.sender)
        if not (is_canonical_encoding(e.encryption_key)
                and is_canonical_encoding(e.masking_key)):
            self._fail(Rule.INVALID_PUBLIC_KEY, "advertised keys must be canonically"
                       " encoded (top bit clear, u < p; SPEC [R0-5])", rnd, peer=e.sender)

    def _on_delivery(self, msg: ShareDelivery) -> MaskedInput:
        rnd = Round.MASKED_INPUT_COLLECTION
        if self._input is None:
            raise LocalProtocolError(Rule.MISSING_INPUT,
                                     "provide_input() must be called before the masked input",
                                     peer=self.client_id, round=rnd)
        assert self.session_id is not None
        if not all(map(is_client_id, msg.ciphertexts)):
            self._fail(Rule.MALFORMED, "shares must be keyed by client ids", rnd)
        senders = set(msg.ciphertexts)
        for u in senders:
            if u not in self._neighbours:
                self._fail(Rule.UNKNOWN_PEER, "share delivered from a client that is not a"
                           " neighbour (or from this client itself)", rnd, peer=u)
        if len(senders) + 1 < self.config.t:
            self._fail(Rule.BELOW_THRESHOLD, f"shares from {len(senders)} peers, threshold is"
                       f" {self.config.t}", rnd)
        key_shares: dict[int, bytes] = {}
        seed_shares: dict[int, bytes] = {}
        noise_shares: dict[tuple[int, int], bytes] = {}
        excluded: set[int] = set()
        pairs = d.PeerDerivations(self.session_id, self.client_id)
        width = shamir.SHARE_BYTES
        # a bundle is the key share, the seed share and one share per noise
        # component (64 bytes each); any other length is unusable
        bundle_bytes = (2 + self._components) * width
        opened: dict[int, bytes] = {}
        for u in sorted(senders):
            ciphertext = msg.ciphertexts[u]
            try:
                if not isinstance(ciphertext, bytes | bytearray):
                    raise DecryptionError("a share ciphertext is bytes")
                opened[u] = pairs.open(self._share_keys[u], u, bytes(ciphertext))
            except DecryptionError:
                excluded.add(u)
        # the length and field-range checks of every bundle at once; only if
        # one fails is each sender's bundle checked on its own, to name it
        plains = list(opened.values())
        all_valid = all(len(p) == bundle_bytes for p in plains) and (
            not plains or _field_elements(b"".join(plains)))
        for u, plain in opened.items():
            if not all_valid and (len(plain) != bundle_bytes or not _field_elements(plain)):
                # u (or the server relaying it) sent shares this client cannot use:
                # hold none of u's shares, leave u out of the masks, report it
                excluded.add(u)
                continue
            key_shares[u] = plain[:width]
            seed_shares[u] = plain[width:2 * width]
            for j in range(self._components):
                noise_shares[(u, j)] = plain[(2 + j) * width:(3 + j) * width]
        senders -= excluded
        if len(senders) + 1 < self.config.t:
            self._fail(Rule.DECRYPTION_FAILED, f"only {len(senders)} peers' shares decrypted,"
                       f" threshold is {self.config.t}", rnd, peer=min(excluded))
        jobs = [(d.self_mask_key(self._seed, self.session_id, self.client_id), False)]
        private = self._s.private
        for u in sorted(senders):
            try:
                # d.masking_secret, with the session's constant KDF input computed once
                mask_key = pairs.mask_key(exchange(private, self._roster[u].masking_key), u)
            except InvalidKeyError:
                self._fail(Rule.INVALID_PUBLIC_KEY, "masking key is of low order", rnd, peer=u)
            # the smaller id adds the pairwise mask, the larger subtracts it
            jobs.append((mask_key, self.client_id > u))
        expander = MaskExpander(self.config.vector_length, self.config.bits)
        working = self._input.array  # this session's own copy, in the ring's dtype
        assert working is not None and working.dtype == expander.dtype
        try:
            if self._layout is not None:
                self._add_noise(working)
            expander.apply(jobs, working, executor=self._executor, workers=self._workers)
        except BaseException:
            # the working copy is masked in place: after a failure part-way
            # (the caller's executor, an interrupt) it holds the input plus
            # some of the masks and noise, and masking it again on a retry
            # would send a vector that unmasks to a wrong sum nobody can
            # detect.  So the session aborts for good (a dropout to the
            # server), and the copy, which holds unmasked entries, is cleared
            working.fill(0)
            del working
            self.state = ClientState.ABORTED
            self._answered = {}
            self._wipe()
            raise
        del working
        # the reply is kept to answer a repeated request identically: a view of
        # immutable bytes, so nobody can change what was sent (numpy refuses to
        # make it writable again), and an in-process server's store may keep it
        # without a copy (storage.frozen).  Sealing hands over the working
        # copy's own memory as those bytes: no second vector is allocated
        masked = self._input.seal()
        self._held_key_shares.update(key_shares)
        self._held_seed_shares.update(seed_shares)
        self._held_noise_shares.update(noise_shares)
        self._u2_view = frozenset(senders)
        self._excluded = frozenset(excluded)
        self._input = None
        self._share_keys = {}
        return MaskedInput(self.client_id, self.session_id, masked, tuple(sorted(excluded)))

    def _on_consistency(self, msg: ConsistencyRequest) -> ConsistencySignature:
        rnd = Round.CONSISTENCY_CHECK
        survivors, _ = self._check_survivors(msg.survivors, rnd)
        quorum = self.config.signature_quorum
        if len(survivors) < quorum:
            self._fail(Rule.BELOW_THRESHOLD,
                       f"{len(survivors)} survivors cannot give the {quorum} consistency"
                       " signatures an unmasking request needs ([PARAM-7])", rnd)
        assert self._identity_key is not None and self.session_id is not None
        signature = signing.sign(self._identity_key,
                                 d.consistency_payload(self.session_id, survivors))
        self._signed_survivors = survivors
        return ConsistencySignature(self.client_id, self.session_id, signature)

    def _on_unmask(self, msg: UnmaskingRequest) -> UnmaskingResponse:
        rnd = Round.UNMASKING
        assert self.session_id is not None
        # the O(n) lists are checked as sorted arrays (binary search), the
        # O(k) view walked in Python
        drop_arr = self._id_array(msg.dropped, "dropped", rnd)
        if bool(np.any(drop_arr == self.client_id)):
            self._fail(Rule.OWN_SHARE_REQUESTED,
                       "this client is listed as dropped: its own key share is requested", rnd)
        survivors, surv_arr = self._check_survivors(msg.survivors, rnd)
        if not _ascending(drop_arr):
            self._fail(Rule.MALFORMED, "dropped list must be sorted, without repeats", rnd)
        overlap = drop_arr[_in_sorted(surv_arr, drop_arr)]
        if overlap.size:
            self._fail(Rule.OVERLAPPING_LISTS,
                       f"clients {overlap[:10].tolist()} are listed as both survivor and"
                       " dropped", rnd)
        strangers = drop_arr[~_in_sorted(self._roster_ids, drop_arr)]
        if strangers.size:
            self._fail(Rule.UNKNOWN_PEER, "dropped list names a client outside the roster",
                       rnd, peer=int(strangers[0]))
        # a peer this client excluded (R2-6) must be listed as dropped; it is
        # never a survivor (_check_survivors: it is not in the view)
        nb = self._neighbour_array
        listed = set(nb[_in_sorted(surv_arr, nb) | _in_sorted(drop_arr, nb)].tolist())
        expected = set(self._u2_view) | self._excluded
        if listed != expected:
            missing = sorted(expected - listed)[:10]
            extra = sorted(listed - expected)[:10]
            self._fail(Rule.LISTS_CONTRADICT_VIEW,
                       f"neighbours that shared but are unlisted: {missing}; listed neighbours"
                       f" that never shared: {extra}", rnd)
        if self.config.mode is SecurityMode.ACTIVE:
            if survivors != self._signed_survivors:
                self._fail(Rule.LISTS_CONTRADICT_VIEW,
                           "survivor list differs from the one this client signed", rnd)
            valid = 0
            survivor_set = set(survivors)
            for signer, signature in msg.signatures.items():
                if signer not in survivor_set:
                    self._fail(Rule.INVALID_SIGNATURE, "signature from a client that is not a"
                               " survivor", rnd, peer=signer)
                self._verify(signature, d.consistency_payload(self.session_id, survivors),
                             signer, rnd)
                valid += 1
            # [PARAM-7]: more than half of all configured clients signed this very
            # list, so no other list can have been signed by as many (honest
            # clients sign once); and at most kappa - 1 clients are not signers
            quorum = self.config.signature_quorum
            if valid < quorum:
                self._fail(Rule.NOT_ENOUGH_SIGNATURES,
                           f"{valid} valid signatures over the survivor list, the signature"
                           f" quorum is {quorum} of n={self.config.num_clients} ([PARAM-7]:"
                           " more than n/2, and n-k+1 for a degree-k sparse graph)", rnd)
        noise_shares = self._noise_shares_to_reveal(msg, survivors, rnd)
        # O(k) in a sparse graph: walk this client's view, not the O(n) lists
        view = np.array(sorted(self._u2_view | {self.client_id}), dtype=np.int64)
        seed = {u: self._held_seed_shares[u] for u in view[_in_sorted(surv_arr, view)].tolist()}
        keys = {u: self._held_key_shares[u] for u in view[_in_sorted(drop_arr, view)].tolist()}
        self._revealed = {**dict.fromkeys(seed, "self-mask"), **dict.fromkeys(keys, "key")}
        return UnmaskingResponse(self.client_id, self.session_id, seed, keys, noise_shares)

    def _noise_shares_to_reveal(self, msg: UnmaskingRequest, survivors: tuple[int, ...],
                                rnd: Round) -> dict[tuple[int, int], bytes]:
        """SPEC [NZ-5]: the request must ask for exactly the excess seeds the
        public rule selects for ``survivors``; reveal this client's shares of
        those (of survivors it holds shares of) and nothing else."""
        asked = msg.noise_removals
        selected = () if self._layout is None else self._layout.removals(survivors)
        if not isinstance(asked, tuple) or not all(
                isinstance(p, tuple) and len(p) == 2 and all(
                    is_client_id(x) for x in p) for p in asked):
            self._fail(Rule.MALFORMED, "noise_removals must be a tuple of (client, component)"
                       " int pairs", rnd)
        if asked != selected:
            extra = sorted(set(asked) - set(selected))[:10]
            missing = sorted(set(selected) - set(asked))[:10]
            not_survivors = sorted({v for v, _ in extra if v not in survivors})[:10]
            self._fail(Rule.NOISE_REMOVAL_NOT_SELECTED,
                       f"the request asks for excess-noise seeds {extra} the public rule does"
                       f" not select for its {len(survivors)} survivors (of clients not listed"
                       f" as survivors: {not_survivors}) and leaves out {missing}", rnd)
        return {(v, j): self._held_noise_shares[(v, j)] for v, j in selected
                if v in self._u2_view or v == self.client_id}

    def _add_noise(self, masked: np.ndarray) -> None:
        """SPEC [NZ-4]: add ``Sk(B)`` keyed by the CSPRNG and every excess
        component ``Sk(w_j)`` keyed by its seed, in Z_{2^bits} (the native
        dtype wraps; the expander reduces afterwards)."""
        layout = self._layout
        assert layout is not None and self.session_id is not None
        m = self.config.noise_length  # the leading coordinates only ([NZ-4])
        # K0: 32 bytes of the session's randomness, used once and dropped: nobody can
        # regenerate it unless they can replay that source (a seeded rng; SPEC [NZ-4])
        total = noise.skellam(layout.base, m, self._rng.token_bytes(32))
        for j, variance in enumerate(layout.excess):
            key = d.excess_noise_key(self._noise_seeds[j], self.session_id, self.client_id, j)
            total += noise.skellam(variance, m, key)
        np.add(masked[:m], total.astype(masked.dtype), out=masked[:m])
        # the seeds live on only as shares (the holders') from here on
        del self._noise_seeds

    # -- helpers ------------------------------------------------------------

    def _id_array(self, values: Any, what: str, rnd: Round) -> np.ndarray:
        """``values`` (a list of client ids) as an int64 array: the codec's
        :class:`~securefl.protocol.roster.IdTuple` carries one already; other
        sequences are converted once (anything but ints is malformed)."""
        array = getattr(values, "array", None)
        if isinstance(array, np.ndarray):
            # its entries, as a plain ndarray: a subclass could answer
            # ``tolist`` (what is signed and compared with what was signed)
            # with another list than the entries revealed by
            array = np.ndarray.view(array, np.ndarray)
            if array.ndim != 1 or array.dtype.kind not in "iu" or (
                    array.dtype.kind == "u" and array.dtype.itemsize == 8):
                self._fail(Rule.MALFORMED, f"{what} list must hold client ids (ints)", rnd)
            # the array is the list this client reads; its callers take the
            # items from it too (never from the object's own items).  A copy:
            # the caller's buffer may be writable, and the caller's code runs
            # again (a signature map's items) between the checks and the reveal
            return array.astype(np.int64)
        try:
            items = tuple(values)
        except TypeError:
            # not iterable (the decoder builds a tuple or an IdTuple)
            self._fail(Rule.MALFORMED, f"{what} list must hold client ids (ints)", rnd)
        if not all(type(u) is int for u in items):
            self._fail(Rule.MALFORMED, f"{what} list must hold client ids (ints)", rnd)
        try:
            return np.array(items, dtype=np.int64).reshape(-1)
        except OverflowError:
            self._fail(Rule.MALFORMED, f"{what} list must hold client ids (ints)", rnd)

    def _check_survivors(self, survivors_in: Any, rnd: Round,
                         ) -> tuple[tuple[int, ...], np.ndarray]:
        """Check the survivor list against the roster and this client's view;
        return it as a tuple and as an ascending array.  O(n) array work and
        O(k) Python steps."""
        arr = self._id_array(survivors_in, "survivor", rnd)
        # one list: what is checked, signed, compared with what was signed and
        # revealed by are all this array (an object's items and its ``array``
        # could differ: a server handing over Python objects)
        survivors = tuple(arr.tolist())
        if not _ascending(arr):
            self._fail(Rule.MALFORMED, "survivor list must be sorted, without repeats", rnd)
        strangers = arr[~_in_sorted(self._roster_ids, arr)]
        if strangers.size:
            self._fail(Rule.UNKNOWN_PEER, "survivor list names a client outside the roster",
                       rnd, peer=int(strangers[0]))
        if not bool(_in_sorted(arr, np.array([self.client_id]))[0]):
            self._fail(Rule.LISTS_CONTRADICT_VIEW,
                       "this client sent its masked input but is not listed as a survivor", rnd)
        if len(survivors) < self.config.floor:
            self._fail(Rule.BELOW_THRESHOLD,
                       f"{len(survivors)} survivors, at least {self.config.floor} are required",
                       rnd)
        nb = self._neighbour_array
        in_view = nb[_in_sorted(arr, nb)].tolist()
        if len(in_view) + 1 < self.config.t:
            self._fail(Rule.BELOW_THRESHOLD,
                       f"{len(in_view)} surviving neighbours, threshold is {self.config.t}", rnd)
        not_shared = [u for u in in_view if u not in self._u2_view]
        if not_shared:
            self._fail(Rule.LISTS_CONTRADICT_VIEW,
                       f"survivors {not_shared[:10]} never shared keys with this client", rnd)
        return survivors, arr

    def _verify(self, signature: bytes | None, payload: bytes, signer: int, rnd: Round) -> None:
        if signature is None:
            self._fail(Rule.MISSING_SIGNATURE, "no signature in active mode", rnd, peer=signer)
        identity = self._identities.get(signer)
        if identity is None:
            self._fail(Rule.UNKNOWN_PEER, "no pinned identity key", rnd, peer=signer)
        try:
            signing.verify(identity, signature, payload)  # type: ignore[arg-type]
        except SignatureError:
            self._fail(Rule.INVALID_SIGNATURE, "signature does not verify under the pinned key",
                       rnd, peer=signer)

    def _refuse_after_done(self, message: Any) -> NoReturn:
        if isinstance(message, UnmaskingRequest):
            flipped = [u for u in message.survivors if self._revealed.get(u) == "key"] + [
                u for u in message.dropped if self._revealed.get(u) == "self-mask"]
            if flipped:
                raise RemoteProtocolError(
                    Rule.BOTH_SHARES_REQUESTED,
                    f"second request asks for the other share of clients {sorted(flipped)[:10]}",
                    peer=SERVER, round=Round.UNMASKING)
            raise RemoteProtocolError(Rule.SECOND_UNMASK_REQUEST,
                                      "this client already answered an unmasking request",
                                      peer=SERVER, round=Round.UNMASKING)
        raise LocalProtocolError(Rule.SESSION_FINISHED, "this session is finished",
                                 peer=self.client_id)

    def release_masked_input(self) -> None:
        """Forget the masked input this session sent, which it otherwise keeps
        to answer a repeated :class:`ShareDelivery` identically (SPEC [CLI-2]).

        Only for a caller that is the session's sole transport and never
        repeats a message to it (``secure_sum``'s in-process driver): a
        repeated ``ShareDelivery`` afterwards raises ``LocalProtocolError``
        (state unchanged) instead of being answered.  Nothing else changes;
        without a call, [CLI-2] holds as before.  Does nothing if no masked
        input was sent.
        """
        answered = self._answered.get(ShareDelivery)
        if answered is not None:
            self._answered[ShareDelivery] = (answered[0], None)  # type: ignore[assignment]

    def _fail(self, rule: Rule, detail: str, rnd: Round, *, peer: int | str = SERVER) -> NoReturn:
        """Abort the session for good and raise (never returns)."""
        self.state = ClientState.ABORTED
        self._answered = {}
        self._wipe()
        # the server relayed the offending content; name the client it came from
        raise RemoteProtocolError(rule, detail, peer=peer, round=rnd)

    def _wipe(self) -> None:
        """Drop every secret this session holds."""
        for name in ("_c", "_s", "_seed", "_share_keys", "_noise_seeds"):
            if hasattr(self, name):
                delattr(self, name)
        self._held_key_shares = {}
        self._held_seed_shares = {}
        self._held_noise_shares = {}
        self._input = None


_P_LOW_BYTE = 0xED  # 2^255 - 19 = ed ff .. ff 7f (little-endian)


def _own_columns(columns: RosterEntries) -> RosterEntries | None:
    """A columnar roster with every column a plain ``ndarray`` (None: a
    column is not an array, or the shapes disagree).  The columns are the
    caller's objects: an ``ndarray`` subclass could answer ``tolist`` (the
    ids the neighbour graph is built from) or ``>`` (the order check)
    otherwise than its entries (the ids hashed into the session id).  The
    senders are copied (the session keeps them as its roster ids, and the
    caller's buffer may be writable); the fields and rows (1 MB at n = 10^4,
    read only while the roster is handled, when no caller code runs) are
    plain views."""
    senders, fields, rows = columns.senders, columns.fields, columns.rows
    if not isinstance(senders, np.ndarray) or not isinstance(fields, np.ndarray) or not (
            rows is None or isinstance(rows, np.ndarray)):
        return None

    def plain(array: np.ndarray) -> np.ndarray:
        return np.ndarray.view(array, np.ndarray)

    try:
        return RosterEntries(np.array(plain(senders)), plain(fields),
                             None if rows is None else plain(rows))
    except ValueError:
        return None


def _columns_clean(columns: RosterEntries, invited: np.ndarray, components: int) -> bool:
    """:func:`_roster_clean` of a columnar roster (senders already checked
    ascending), on its columns: every sender in the ascending ``invited``
    array (binary search), no key twice, every key canonical.  Every field is
    32 bytes and no entry has noise commitments by construction.  O(n log n)
    array work, no Python step per entry."""
    if components:
        return False
    senders = columns.senders
    if invited.size and int(invited[-1]) - int(invited[0]) + 1 == invited.size:
        # the invited ids are a range (the default 1..n): a range check
        if senders.size and (int(senders[0]) < int(invited[0])
                             or int(senders[-1]) > int(invited[-1])):
            return False
    elif not bool(np.all(_in_sorted(invited, senders))):
        return False
    n = len(columns)
    keys = np.ascontiguousarray(columns.fields[:, :64]).reshape(2 * n, 32)
    if _has_equal_rows(keys):
        return False
    return _canonical_rows(keys)


def _field_elements(plain: bytes) -> bool:
    """Is ``plain`` (a whole number of serialised shares: little-endian
    uint32 words) made of field elements only, every word below the Shamir
    prime?  (The range rule of :func:`shamir.check_shares`.)"""
    words = np.frombuffer(plain, dtype="<u4")
    return words.size == 0 or int(words.max()) < shamir.PRIME


def _entries_at(columns: RosterEntries, ids: list[int]) -> dict[int, AdvertiseKeys]:
    """The entries of the ascending ``ids`` that a columnar roster holds, by
    sender (:meth:`RosterEntries.find` for each, with one binary search and
    one copy of their rows for all)."""
    senders = columns.senders
    if not ids or senders.size == 0:
        return {}
    wanted = np.array(ids, dtype=np.int64)
    pos = np.minimum(np.searchsorted(senders, wanted), senders.size - 1)
    hit = senders[pos] == wanted
    rows = np.ascontiguousarray(columns.fields[pos[hit]]).tobytes()
    out: dict[int, AdvertiseKeys] = {}
    for i, sender in enumerate(wanted[hit].tolist()):
        row = rows[96 * i:96 * i + 96]
        out[sender] = AdvertiseKeys(sender, row[:32], row[32:64], None, row[64:96], ())
    return out


def _has_equal_rows(rows: np.ndarray) -> bool:
    """Do two rows of the ``r x 32`` byte array agree?  Sorts the first 8
    bytes of every row as one ``uint64`` (fast); only when two of those agree
    are the whole rows compared (exact either way)."""
    heads = np.sort(np.ascontiguousarray(rows[:, :8]).view(np.uint64).reshape(-1))
    if not bool(np.any(heads[1:] == heads[:-1])):
        return False
    whole = np.unique(np.ascontiguousarray(rows).view(np.dtype((np.void, rows.shape[1]))))
    return int(whole.size) != rows.shape[0]


def _in_sorted(haystack: np.ndarray, needles: np.ndarray) -> np.ndarray:
    """For each of ``needles``, is it in the ascending array ``haystack``?
    (Binary search: O(len(needles) log len(haystack)).)"""
    needles = np.asarray(needles)
    if haystack.size == 0:
        return np.zeros(needles.shape, dtype=bool)
    pos = np.minimum(np.searchsorted(haystack, needles), haystack.size - 1)
    return np.asarray(haystack[pos] == needles)


def _ascending(values: np.ndarray) -> bool:
    """Strictly ascending (sorted, no repeats)?"""
    return values.size < 2 or bool(np.all(values[1:] > values[:-1]))


def _canonical_rows(words: np.ndarray) -> bool:
    """Every row (32 bytes) is a canonical u-coordinate: top bit clear and
    u < p = 2^255 - 19 (with the top bit clear, u >= p iff byte 31 is 0x7f,
    bytes 1..30 are 0xff and byte 0 is at least 0xed)."""
    top = words[:, 31]
    if np.any(top & 0x80):
        return False
    near = words[top == 0x7F]  # only these can reach p (rare: 1 key in 128)
    return not np.any(np.all(near[:, 1:31] == 0xFF, axis=1) & (near[:, 0] >= _P_LOW_BYTE))


def _roster_clean(entries: tuple[AdvertiseKeys, ...], ids: list[int],
                  invited: frozenset[int], components: int) -> bool:
    """True only if no entry breaks [R0-5] or [R0-7] (every sender invited,
    32-byte canonical keys, 32-byte commitments, the plan's number of noise
    commitments, no key twice), checked with set and array operations
    instead of a Python loop per entry.  False means "check one by one"."""
    if components or not invited.issuperset(ids):
        return False
    enc = [e.encryption_key for e in entries]
    mask = [e.masking_key for e in entries]
    keys = enc + mask
    if {type(k) for k in keys} != {bytes} or set(map(len, keys)) != {32}:
        return False
    if {type(c) for c in (e.seed_commitment for e in entries)} != {bytes} or set(
            len(e.seed_commitment) for e in entries) != {d.SEED_COMMITMENT_BYTES}:
        return False
    if any(type(e.noise_commitments) is not tuple or e.noise_commitments for e in entries):
        return False
    if len(set(keys)) != len(keys):
        return False
    return _canonical_rows(np.frombuffer(b"".join(keys), dtype=np.uint8).reshape(-1, 32))


def _same_message(a: Any, b: Any) -> bool:
    """Exact equality of two server messages (every field, same type)."""
    return type(a) is type(b) and bool(a == b)


@dataclass(frozen=True)
class _Fingerprint:
    """What a client keeps of an answered server message with O(n) content
    (a plain roster, a survivor list) to recognise an exact duplicate
    ([CLI-2]) in O(1) memory: the message kind and a SHA-256 over an
    unambiguous encoding of every field.  Two messages get equal
    fingerprints iff they are equal (up to a SHA-256 collision)."""

    kind: type
    digest: bytes


def _answer_key(message: Any, session_id: bytes | None) -> Any:
    """The message itself, or its :class:`_Fingerprint` when it has one
    (``session_id``: the id this client just derived from the roster
    answered, saving a second hash of it)."""
    if isinstance(message, KeyRoster) and type(message.entries) is RosterEntries \
            and session_id is not None:
        # the session id was derived from exactly this digest and these
        # entries (the roster was refused otherwise)
        return _Fingerprint(KeyRoster, message.config_digest + session_id)
    fingerprint = _fingerprint(message)
    return message if fingerprint is None else fingerprint


def _is_duplicate(key: Any, message: Any) -> bool:
    """Is ``message`` exactly the message remembered as ``key``?"""
    if isinstance(key, _Fingerprint):
        return type(message) is key.kind and _fingerprint(message) == key
    return _same_message(key, message)


def _fingerprint(message: Any) -> _Fingerprint | None:
    """The fingerprint of a plain roster (no signature, no noise commitment:
    the session id's hash already covers every other field, in order) or of
    a plain survivor/dropped-list request (no signatures, no noise removals);
    None for anything else (kept whole)."""
    if isinstance(message, KeyRoster):
        digest = message.config_digest
        entries = message.entries
        if not isinstance(digest, bytes):
            return None
        if type(entries) is RosterEntries:
            return _Fingerprint(KeyRoster, digest + session_id_of(digest, entries))
        if not isinstance(entries, tuple) or not all(
                isinstance(e, AdvertiseKeys) and type(e.sender) is int
                and 1 <= e.sender <= 0xFFFFFFFF and e.signature is None
                and type(e.noise_commitments) is tuple and not e.noise_commitments
                and all(type(f) is bytes and len(f) == 32 for f in (
                    e.encryption_key, e.masking_key, e.seed_commitment))
                for e in entries):
            return None
        senders = [e.sender for e in entries]
        if any(a >= b for a, b in itertools.pairwise(senders)):
            return None  # the session id sorts; only an ascending roster is plain
        return _Fingerprint(KeyRoster, digest + d.session_id(digest, entries))
    if isinstance(message, UnmaskingRequest | ConsistencyRequest):
        if isinstance(message, UnmaskingRequest) and (message.signatures
                                                      or message.noise_removals):
            return None
        if type(message.recipient) is not int or type(message.session_id) is not bytes \
                or not -(1 << 63) <= message.recipient < 1 << 63:
            return None  # (a recipient beyond 64 bits is refused as misaddressed)
        lists = [message.survivors] + ([message.dropped]
                                       if isinstance(message, UnmaskingRequest) else [])
        h = hashlib.sha256(type(message).__name__.encode())
        h.update(message.recipient.to_bytes(8, "big", signed=True))
        h.update(len(message.session_id).to_bytes(8, "big") + message.session_id)
        for ids in lists:
            array = getattr(ids, "array", None)
            if isinstance(array, np.ndarray):
                array = np.ndarray.view(array, np.ndarray)  # its entries, whatever the class
            elif not isinstance(ids, tuple) or not all(
                    type(u) is int and -(1 << 63) <= u < 1 << 63 for u in ids):
                return None
            else:
                array = np.array(ids, dtype=np.int64).reshape(-1)
            data = array.astype(">i8").tobytes()
            h.update(len(data).to_bytes(8, "big") + data)
        return _Fingerprint(type(message), h.digest())
    return None
