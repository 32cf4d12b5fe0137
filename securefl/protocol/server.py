"""The server side of secure aggregation, sans-IO.

A :class:`ServerSession` is fed client messages with :meth:`receive` and told
when a round's deadline has passed with :meth:`close_round`, which returns
the messages to send next (or, after the last round, makes :attr:`result`
available).  Deadlines, sockets and threads are the caller's business; an
optional ``executor`` (anything with ``map``) lets the caller spread the
unmasking work over cores.

A message that breaks a rule raises :class:`RemoteProtocolError` and is
dropped: the session's state is exactly as before.  Fewer than ``threshold``
clients at any round raises :class:`AbortError`; a result is never wrong.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
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
)
from securefl.hazmat import shamir, signing
from securefl.hazmat.agreement import KeyPair, load_public
from securefl.hazmat.prg import Executor, MaskExpander, ring_dtype
from securefl.hazmat.randomness import RandomSource, default_random
from securefl.protocol import derivation as d
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
    ShareDelivery,
    UnmaskingRequest,
    UnmaskingResponse,
)
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


_ROUND_OF_STATE = {
    ServerState.COLLECTING_ADVERTISE_KEYS: Round.ADVERTISE_KEYS,
    ServerState.COLLECTING_SHARE_KEYS: Round.SHARE_KEYS,
    ServerState.COLLECTING_MASKED_INPUTS: Round.MASKED_INPUT_COLLECTION,
    ServerState.COLLECTING_CONSISTENCY_CHECKS: Round.CONSISTENCY_CHECK,
    ServerState.COLLECTING_UNMASKING_RESPONSES: Round.UNMASKING,
}
_MESSAGE_OF_STATE: dict[ServerState, type] = {
    ServerState.COLLECTING_ADVERTISE_KEYS: AdvertiseKeys,
    ServerState.COLLECTING_SHARE_KEYS: EncryptedShares,
    ServerState.COLLECTING_MASKED_INPUTS: MaskedInput,
    ServerState.COLLECTING_CONSISTENCY_CHECKS: ConsistencySignature,
    ServerState.COLLECTING_UNMASKING_RESPONSES: UnmaskingResponse,
}
_ROUND_OF_MESSAGE = {
    AdvertiseKeys: Round.ADVERTISE_KEYS,
    EncryptedShares: Round.SHARE_KEYS,
    MaskedInput: Round.MASKED_INPUT_COLLECTION,
    ConsistencySignature: Round.CONSISTENCY_CHECK,
    UnmaskingResponse: Round.UNMASKING,
}


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
    """

    total: np.ndarray
    survivors: tuple[int, ...]
    statuses: Mapping[int, ClientStatus] = field(default_factory=dict)
    session_id: bytes = b""

    def dropped_at(self) -> dict[int, ClientStatus]:
        """The clients that did not finish, with where they stopped."""
        return {c: s for c, s in self.statuses.items()
                if s is not ClientStatus.UNMASKING_RESPONSE_RECEIVED}


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
        workers: how many segments to split the work into (default: the
            number of CPUs when an executor is given).
    """

    def __init__(
        self,
        config: SecAggConfig,
        *,
        peer_identities: Mapping[int, Ed25519PublicKey | bytes] | None = None,
        rng: RandomSource | None = None,
        executor: Executor | None = None,
        workers: int | None = None,
    ) -> None:
        self.config = config
        self._workers = workers or (os.cpu_count() or 1 if executor is not None else 1)
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
        self.state = ServerState.COLLECTING_ADVERTISE_KEYS
        self.statuses: dict[int, ClientStatus] = dict.fromkeys(config.ids,
                                                               ClientStatus.READY_TO_START)
        self.session_id: bytes | None = None
        self._adverts: dict[int, AdvertiseKeys] = {}
        self._keys_seen: dict[bytes, int] = {}
        self._neighbours: Mapping[int, frozenset[int]] = {}
        self._shares: dict[int, EncryptedShares] = {}
        self._dtype = ring_dtype(config.bits)
        self._sum: np.ndarray | None = None
        self._u2: tuple[int, ...] = ()
        self._u3: tuple[int, ...] = ()
        self._masked_from: set[int] = set()
        self._dropped: tuple[int, ...] = ()
        self._signatures: dict[int, bytes] = {}
        self._responders: tuple[int, ...] = ()
        self._responses: dict[int, UnmaskingResponse] = {}
        self._result: AggregationResult | None = None

    def __repr__(self) -> str:
        return f"ServerSession(state={self.state.name}, n={self.config.num_clients})"

    @property
    def round(self) -> Round | None:
        """The round being collected, or None once finished or aborted."""
        return _ROUND_OF_STATE.get(self.state)

    @property
    def finished(self) -> bool:
        """True once :attr:`result` is available."""
        return self.state is ServerState.FINISHED

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
                wrong session, bad signature); it is ignored and the
                session's state is unchanged.
            LocalProtocolError: the session is finished or aborted, or the
                object is not a client message.
        """
        if self.state in (ServerState.FINISHED, ServerState.ABORTED):
            raise LocalProtocolError(Rule.SESSION_FINISHED, f"session is {self.state.name}",
                                     peer="server")
        rnd = _ROUND_OF_STATE[self.state]
        msg_round = _ROUND_OF_MESSAGE.get(type(message))
        if msg_round is None:
            raise LocalProtocolError(Rule.MALFORMED,
                                     f"not a client message: {type(message).__name__}",
                                     peer="server", round=rnd)
        sender = getattr(message, "sender", None)
        if isinstance(sender, bool) or not isinstance(sender, int) \
                or sender not in self.statuses:
            raise RemoteProtocolError(Rule.UNKNOWN_PEER, "sender is not an invited client",
                                      peer=sender if isinstance(sender, int) else None,
                                      round=rnd)
        check_message_fields(message, rnd)
        if msg_round is not rnd:
            when = "late" if msg_round < rnd else "early"
            raise RemoteProtocolError(Rule.WRONG_ROUND,
                                      f"{type(message).__name__} arrived {when}, server is"
                                      f" collecting {rnd.name}", peer=sender, round=rnd)
        if not isinstance(message, AdvertiseKeys) and message.session_id != self.session_id:
            raise RemoteProtocolError(Rule.WRONG_SESSION, "message belongs to another session",
                                      peer=sender, round=rnd)
        handler = {
            AdvertiseKeys: self._receive_advert,
            EncryptedShares: self._receive_shares,
            MaskedInput: self._receive_masked,
            ConsistencySignature: self._receive_signature,
            UnmaskingResponse: self._receive_unmasking,
        }[type(message)]
        handler(message, rnd)

    def _receive_advert(self, msg: AdvertiseKeys, rnd: Round) -> None:
        if msg.sender in self._adverts:
            raise RemoteProtocolError(Rule.DUPLICATE_MESSAGE, "already advertised keys",
                                      peer=msg.sender, round=rnd)
        for key in (msg.encryption_key, msg.masking_key):
            try:
                load_public(key)
            except InvalidKeyError:
                raise RemoteProtocolError(Rule.INVALID_PUBLIC_KEY, "advertised key is not a"
                                          " 32-byte X25519 key", peer=msg.sender,
                                          round=rnd) from None
        if msg.encryption_key == msg.masking_key:
            raise RemoteProtocolError(Rule.DUPLICATE_KEY, "the two advertised keys are equal",
                                      peer=msg.sender, round=rnd)
        for key in (msg.encryption_key, msg.masking_key):
            if key in self._keys_seen:
                raise RemoteProtocolError(
                    Rule.DUPLICATE_KEY,
                    f"advertised a key already advertised by client {self._keys_seen[key]}",
                    peer=msg.sender, round=rnd)
        if self.config.mode is SecurityMode.ACTIVE:
            self._verify(msg.signature, d.advertise_payload(
                self._digest, msg.sender, msg.encryption_key, msg.masking_key), msg.sender, rnd)
        self._adverts[msg.sender] = msg
        self._keys_seen[msg.encryption_key] = msg.sender
        self._keys_seen[msg.masking_key] = msg.sender
        self.statuses[msg.sender] = ClientStatus.ADVERTISE_KEYS_RECEIVED

    def _receive_shares(self, msg: EncryptedShares, rnd: Round) -> None:
        self._expect_status(msg.sender, ClientStatus.ADVERTISE_KEYS_RECEIVED, rnd)
        expected = self._neighbours[msg.sender]
        if set(msg.ciphertexts) != expected:
            raise RemoteProtocolError(
                Rule.WRONG_RECIPIENTS,
                f"ciphertexts for {len(msg.ciphertexts)} clients, expected exactly its"
                f" {len(expected)} neighbours", peer=msg.sender, round=rnd)
        for ct in msg.ciphertexts.values():
            if not isinstance(ct, bytes | bytearray) or len(ct) != d.SHARES_CIPHERTEXT_BYTES:
                raise RemoteProtocolError(Rule.MALFORMED,
                                          f"a share ciphertext is {d.SHARES_CIPHERTEXT_BYTES}"
                                          " bytes", peer=msg.sender, round=rnd)
        self._shares[msg.sender] = msg
        self.statuses[msg.sender] = ClientStatus.SHARE_KEYS_RECEIVED

    def _receive_masked(self, msg: MaskedInput, rnd: Round) -> None:
        self._expect_status(msg.sender, ClientStatus.SHARE_KEYS_RECEIVED, rnd)
        vector = msg.masked
        if not (isinstance(vector, np.ndarray) and vector.dtype == self._dtype):
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
        if self._sum is None:
            self._sum = np.zeros(self.config.vector_length, dtype=self._dtype)
        np.add(self._sum, vector.astype(self._dtype, copy=False), out=self._sum)
        self._masked_from.add(msg.sender)
        self.statuses[msg.sender] = ClientStatus.MASKED_INPUT_RESPONSE_RECEIVED

    def _receive_signature(self, msg: ConsistencySignature, rnd: Round) -> None:
        self._expect_status(msg.sender, ClientStatus.MASKED_INPUT_RESPONSE_RECEIVED, rnd)
        assert self.session_id is not None
        self._verify(msg.signature, d.consistency_payload(self.session_id, self._u3),
                     msg.sender, rnd)
        self._signatures[msg.sender] = msg.signature
        self.statuses[msg.sender] = ClientStatus.CONSISTENCY_CHECK_RECEIVED

    def _receive_unmasking(self, msg: UnmaskingResponse, rnd: Round) -> None:
        asked = (ClientStatus.CONSISTENCY_CHECK_RECEIVED if self.config.mode is SecurityMode.ACTIVE
                 else ClientStatus.MASKED_INPUT_RESPONSE_RECEIVED)
        self._expect_status(msg.sender, asked, rnd)
        both = set(msg.self_mask_shares) & set(msg.key_shares)
        if both:
            raise RemoteProtocolError(Rule.BOTH_SHARES_REQUESTED,
                                      f"revealed both shares of clients {sorted(both)[:10]}",
                                      peer=msg.sender, round=rnd)
        holds = self._neighbours[msg.sender]
        want_self = {u for u in self._u3 if u in holds or u == msg.sender}
        want_keys = {u for u in self._dropped if u in holds}
        if set(msg.self_mask_shares) != want_self or set(msg.key_shares) != want_keys:
            raise RemoteProtocolError(Rule.MALFORMED,
                                      "response does not carry exactly the requested shares",
                                      peer=msg.sender, round=rnd)
        try:
            shamir.check_shares([*msg.self_mask_shares.values(), *msg.key_shares.values()])
        except InconsistentSharesError:
            raise RemoteProtocolError(Rule.MALFORMED, "malformed share", peer=msg.sender,
                                      round=rnd) from None
        self._responses[msg.sender] = msg
        self.statuses[msg.sender] = ClientStatus.UNMASKING_RESPONSE_RECEIVED

    # -- closing rounds -----------------------------------------------------

    def close_round(self) -> list[Envelope]:
        """The current round's deadline passed: proceed with whoever answered.

        Returns:
            the messages to deliver for the next round (empty once finished).

        Raises:
            AbortError: fewer than ``threshold`` clients remain (the session
                is then ABORTED and produces no result).
            LocalProtocolError: the session already finished or aborted.
        """
        handlers = {
            ServerState.COLLECTING_ADVERTISE_KEYS: self._close_advertise,
            ServerState.COLLECTING_SHARE_KEYS: self._close_share_keys,
            ServerState.COLLECTING_MASKED_INPUTS: self._close_masked,
            ServerState.COLLECTING_CONSISTENCY_CHECKS: self._close_consistency,
            ServerState.COLLECTING_UNMASKING_RESPONSES: self._close_unmasking,
        }
        handler = handlers.get(self.state)
        if handler is None:
            raise LocalProtocolError(Rule.SESSION_FINISHED, f"session is {self.state.name}",
                                     peer="server")
        try:
            return handler()
        except AbortError:
            self.state = ServerState.ABORTED
            self._sum = None
            raise

    def _close_advertise(self) -> list[Envelope]:
        rnd = Round.ADVERTISE_KEYS
        self._mark_dead(ClientStatus.READY_TO_START, ClientStatus.DEAD_BEFORE_SENDING_ANYTHING)
        self._need(len(self._adverts), rnd, "clients advertised keys", self.config.floor)
        entries = tuple(self._adverts[c] for c in sorted(self._adverts))
        self.session_id = d.session_id(self._digest, entries)
        self._neighbours = neighbour_map(self.config.graph, tuple(sorted(self._adverts)),
                                         self.session_id)
        roster = KeyRoster(self._digest, entries)
        self.state = ServerState.COLLECTING_SHARE_KEYS
        return [Envelope(c, roster) for c in sorted(self._adverts)]

    def _close_share_keys(self) -> list[Envelope]:
        rnd = Round.SHARE_KEYS
        self._mark_dead(ClientStatus.ADVERTISE_KEYS_RECEIVED,
                        ClientStatus.DEAD_AFTER_ADVERTISE_KEYS_RECEIVED)
        self._u2 = tuple(sorted(self._shares))
        self._need(len(self._u2), rnd, "clients shared their keys", self.config.floor)
        assert self.session_id is not None
        out = []
        for v in self._u2:
            cts = {u: self._shares[u].ciphertexts[v] for u in self._u2
                   if u != v and v in self._neighbours[u]}
            # a client that sees fewer than t-1 sharing neighbours would refuse
            # (sparse graphs only): it is not asked, and counts as dropped here
            if len(cts) + 1 >= self.config.t:
                out.append(Envelope(v, ShareDelivery(v, self.session_id, cts)))
        self._shares = {}
        self.state = ServerState.COLLECTING_MASKED_INPUTS
        return out

    def _close_masked(self) -> list[Envelope]:
        rnd = Round.MASKED_INPUT_COLLECTION
        self._mark_dead(ClientStatus.SHARE_KEYS_RECEIVED,
                        ClientStatus.DEAD_AFTER_SHARE_KEYS_RECEIVED)
        self._u3 = tuple(sorted(self._masked_from))
        self._need(len(self._u3), rnd, "clients sent masked inputs", self.config.floor)
        self._dropped = tuple(u for u in self._u2 if u not in self._masked_from)
        assert self.session_id is not None
        u3 = set(self._u3)
        # sparse graphs: a survivor with fewer than t-1 surviving neighbours
        # would refuse to sign or unmask; its input still counts
        asked = [v for v in self._u3 if len(self._neighbours[v] & u3) + 1 >= self.config.t]
        if self.config.mode is SecurityMode.ACTIVE:
            self.state = ServerState.COLLECTING_CONSISTENCY_CHECKS
            return [Envelope(v, ConsistencyRequest(v, self.session_id, self._u3)) for v in asked]
        self.state = ServerState.COLLECTING_UNMASKING_RESPONSES
        return [Envelope(v, UnmaskingRequest(v, self.session_id, self._u3, self._dropped))
                for v in asked]

    def _close_consistency(self) -> list[Envelope]:
        rnd = Round.CONSISTENCY_CHECK
        self._mark_dead(ClientStatus.MASKED_INPUT_RESPONSE_RECEIVED,
                        ClientStatus.DEAD_AFTER_MASKED_INPUT_RESPONSE_RECEIVED)
        self._need(len(self._signatures), rnd, "clients signed the survivor list")
        assert self.session_id is not None
        sigs = dict(self._signatures)
        self.state = ServerState.COLLECTING_UNMASKING_RESPONSES
        return [Envelope(v, UnmaskingRequest(v, self.session_id, self._u3, self._dropped, sigs))
                for v in sorted(sigs)]

    def _close_unmasking(self) -> list[Envelope]:
        rnd = Round.UNMASKING
        asked = (ClientStatus.CONSISTENCY_CHECK_RECEIVED if self.config.mode is SecurityMode.ACTIVE
                 else ClientStatus.MASKED_INPUT_RESPONSE_RECEIVED)
        dead = (ClientStatus.DEAD_AFTER_CONSISTENCY_CHECK_RECEIVED
                if self.config.mode is SecurityMode.ACTIVE
                else ClientStatus.DEAD_AFTER_MASKED_INPUT_RESPONSE_RECEIVED)
        self._responders = tuple(sorted(self._responses))
        self._need(len(self._responders), rnd, "clients answered the unmasking request")
        total = self._unmask()
        self._mark_dead(asked, dead)
        assert self.session_id is not None
        self._result = AggregationResult(total.astype(np.uint64), self._u3, dict(self.statuses),
                                         self.session_id)
        self._responses = {}
        self._sum = None
        self.state = ServerState.FINISHED
        return []

    # -- unmasking ----------------------------------------------------------

    def _unmask(self) -> np.ndarray:
        rnd = Round.UNMASKING
        t = self.config.t
        responders = set(self._responders)
        # group the secrets to reconstruct by their holder set (one group for the
        # complete graph), so Lagrange coefficients are computed once per group
        groups: dict[tuple[int, ...], list[tuple[str, int]]] = {}
        for u in self._u3:
            holders = tuple(sorted((self._neighbours[u] | {u}) & responders))
            groups.setdefault(holders, []).append(("self", u))
        for u in self._dropped:
            holders = tuple(sorted(self._neighbours[u] & responders))
            groups.setdefault(holders, []).append(("key", u))
        seeds: dict[int, bytes] = {}
        private_keys: dict[int, bytes] = {}
        for holders, secrets in groups.items():
            if len(holders) < t:
                raise AbortError(
                    f"only {len(holders)} holders answered for the shares of client"
                    f" {secrets[0][1]}, threshold is {t}", round=rnd, needed=t,
                    available=len(holders))
            raw = b"".join(
                (self._responses[h].self_mask_shares if kind == "self"
                 else self._responses[h].key_shares)[owner]
                for h in holders for kind, owner in secrets)
            shares = np.frombuffer(raw, dtype="<u4").reshape(len(holders), len(secrets),
                                                              shamir.LIMBS)
            try:
                values = shamir.Reconstructor(holders, t).reconstruct(shares, self._rng)
            except InconsistentSharesError as exc:
                raise AbortError(f"inconsistent shares: {exc}", round=rnd) from exc
            for (kind, owner), value in zip(secrets, values, strict=True):
                (seeds if kind == "self" else private_keys)[owner] = value
        assert self.session_id is not None and self._sum is not None
        sid = self.session_id
        jobs: list[tuple[bytes, bool]] = [
            (d.self_mask_key(seeds[u], sid, u), True) for u in self._u3]
        for u, raw_key in private_keys.items():
            pair = KeyPair.from_private_bytes(raw_key)
            if pair.public_bytes != self._adverts[u].masking_key:
                raise AbortError(f"reconstructed key of client {u} does not match its advertised"
                                 " key (inconsistent shares)", round=rnd)
            for v in self._u3:
                if v in self._neighbours[u]:
                    try:
                        key = d.masking_secret(pair, self._adverts[v].masking_key, sid, u, v)
                    except InvalidKeyError as exc:
                        raise AbortError(f"client {v}'s masking key is invalid",
                                         round=rnd) from exc
                    # v added +PRG when v < u, -PRG when v > u: undo it
                    jobs.append((key, v < u))
        return self._apply_masks(self._sum.copy(), jobs)

    def _apply_masks(self, total: np.ndarray, jobs: list[tuple[bytes, bool]]) -> np.ndarray:
        """Apply every ``(key, negate)`` mask job to ``total`` and reduce."""
        expander = MaskExpander(self.config.vector_length, self.config.bits)
        return expander.apply(jobs, total, executor=self._executor, workers=self._workers)

    # -- helpers ------------------------------------------------------------

    def _need(self, count: int, rnd: Round, what: str, needed: int | None = None) -> None:
        needed = self.config.t if needed is None else needed
        if count < needed:
            what_needed = ("threshold" if needed == self.config.t
                           else "the minimum number of survivors")
            raise AbortError(f"only {count} {what}, {what_needed} is {needed}",
                             round=rnd, needed=needed, available=count)

    def _mark_dead(self, waiting: ClientStatus, dead: ClientStatus) -> None:
        for c, status in self.statuses.items():
            if status is waiting:
                self.statuses[c] = dead

    def _expect_status(self, sender: int, status: ClientStatus, rnd: Round) -> None:
        current = self.statuses[sender]
        if current is status:
            return
        if _STATUS_ORDER.get(current, -1) > _STATUS_ORDER[status]:
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


_STATUS_ORDER = {
    ClientStatus.READY_TO_START: 0,
    ClientStatus.ADVERTISE_KEYS_RECEIVED: 1,
    ClientStatus.SHARE_KEYS_RECEIVED: 2,
    ClientStatus.MASKED_INPUT_RESPONSE_RECEIVED: 3,
    ClientStatus.CONSISTENCY_CHECK_RECEIVED: 4,
    ClientStatus.UNMASKING_RESPONSE_RECEIVED: 5,
}
