"""Scenario cases, numbered by SPEC.md section (h2spec style).

For ``kind="client"`` cases the runner plays the server (with securefl's
reference server and reference peer clients) against one client under
test, id 1, and tampers with what it sends; for ``kind="server"`` cases the
runner plays every client (securefl's reference clients) against the
server under test and tampers with what they send.

Every refusal is checked by :class:`~securefl.errors.Rule`.  After a client
refuses, it must never answer again (nothing is revealed), and its refusal
must not carry secret key material the runner can compute
(:meth:`World.check_no_secret`); after a server refuses, its client statuses
must be unchanged and the round must still finish with the exact sum of the
survivors' inputs, the survivors being exactly the clients whose masked input
was delivered (less the ends of complaints a case expects removed).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from securefl.conformance.adapters import (
    ClientSpec,
    ClientUnderTest,
    SecureFLClient,
    SecureFLServer,
    ServerSpec,
    ServerUnderTest,
)
from securefl.conformance.cases import Case, CaseFailedError, Target, expect_refusal
from securefl.errors import AbortError, ProtocolError, Rule, SecureFLError
from securefl.hazmat import signing
from securefl.hazmat.agreement import KeyPair, clamp
from securefl.hazmat.randomness import DeterministicRandom
from securefl.protocol import derivation
from securefl.protocol.config import Round, SecAggConfig, SecurityMode
from securefl.protocol.graphs import neighbour_map
from securefl.protocol.harary import HararyGraph
from securefl.protocol.inmemory import Driver
from securefl.protocol.messages import (
    AdvertiseKeys,
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
from securefl.protocol.noise import NoisePlan
from securefl.wire import decode, encode
from securefl.wire import secagg_pb2 as pb

SEMI = SecAggConfig(num_clients=5, vector_length=6, bits=16, threshold=3,
                    context=b"conformance")
ACTIVE = SecAggConfig(num_clients=5, vector_length=6, bits=16, threshold=3,
                      mode=SecurityMode.ACTIVE, context=b"conformance")
TWELVE = SecAggConfig(num_clients=5, vector_length=6, bits=12, threshold=3,
                      context=b"conformance")
HARARY = SecAggConfig(num_clients=7, vector_length=6, bits=16, threshold=3,
                      graph=HararyGraph(4), context=b"conformance")
ACTIVE_HARARY = SecAggConfig(num_clients=7, vector_length=6, bits=16, threshold=3,
                             mode=SecurityMode.ACTIVE, graph=HararyGraph(4),
                             context=b"conformance")
"""Active mode on a sparse graph: t = 3, signature quorum 7 - 4 + 1 = 4 ([PARAM-7])."""
MERKLE = SecAggConfig(num_clients=7, vector_length=6, bits=16, threshold=3,
                      graph=HararyGraph(4), context=b"conformance", roster_delivery="merkle")
"""Sparse roster delivery (SPEC.md section 10.1a): each client gets its own and
its 4 neighbours' entries with inclusion proofs."""
NOISE = SecAggConfig(num_clients=5, vector_length=6, bits=16, threshold=3,
                     context=b"conformance", noise=NoisePlan(0.0, tolerance=0.05))
"""A noise plan (SPEC.md section 16) with J = 2 excess seeds a client, of variance 0 so
the sum stays exact: every seed is committed, shared, selected, revealed and
removed for real."""
UNDER_TEST = 1
LOW_ORDER_POINT = bytes.fromhex(
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
"""A point of order 8 on Curve25519 (RFC 7748 section 6.1 / libsodium blocklist)."""
"""The id of the client under test in client scenarios."""


def _seed(label: str) -> bytes:
    return hashlib.sha256(f"securefl conformance/{label}".encode()).digest()


def _inputs(config: SecAggConfig) -> dict[int, tuple[int, ...]]:
    rng = DeterministicRandom(_seed("inputs"))
    return {c: tuple(int.from_bytes(rng.token_bytes(8), "little") % (1 << config.bits)
                     for _ in range(config.vector_length)) for c in config.ids}


def _identities(config: SecAggConfig) -> tuple[dict[int, bytes], dict[int, bytes]]:
    if config.mode is not SecurityMode.ACTIVE:
        return {}, {}
    private = {c: _seed(f"identity/{c}") for c in config.ids}
    public = {c: signing.public_bytes(Ed25519PrivateKey.from_private_bytes(k))
              for c, k in private.items()}
    return private, public


class World(Driver):
    """A server and its clients, some under test, stepped round by round on
    wire bytes (the in-memory :class:`~securefl.protocol.inmemory.Driver`
    over the byte adapters).

    Args:
        target: the implementation under test.
        config: the session configuration.
        server_under_test: use the target's server (else securefl's).
        client_under_test: the id of the target's client, or None.
        label: makes the clients' fixed randomness differ between worlds.
    """

    server: ServerUnderTest
    clients: dict[int, ClientUnderTest]  # type: ignore[assignment]

    def __init__(self, target: Target, config: SecAggConfig, *, server_under_test: bool,
                 client_under_test: int | None, label: str = "world") -> None:
        self.inputs = _inputs(config)
        self.private, self.pinned = _identities(config)
        spec = ServerSpec(config, self.pinned, None)
        server: ServerUnderTest = (target.server(spec) if server_under_test
                                   else SecureFLServer(spec))
        clients: dict[int, ClientUnderTest] = {}
        self.seeds = {c: _seed(f"{label}/client/{c}") for c in config.ids}
        self.removed: set[int] = set()
        """Clients a case expects the server to remove by complaint ([R2-6])."""
        self.client_under_test = client_under_test
        # a client that draws its randomness as SPEC 14.2 says gets its seed,
        # so that its own secrets are known and looked for in its refusals
        self.own_secrets_known = target.client_fixed_randomness
        for c in config.ids:
            cspec = ClientSpec(config, c, self.inputs[c], self.private.get(c), self.pinned,
                               self.seeds[c])
            if c == client_under_test:
                clients[c] = target.client(cspec if self.own_secrets_known
                                           else dataclasses.replace(cspec, random_seed=None))
            else:
                clients[c] = SecureFLClient(cspec)
        super().__init__(config, server, clients)

    # -- driving ------------------------------------------------------------

    def run_to(self, rnd: Round, drop: dict[Round, set[int]] | None = None) -> dict[int, bytes]:
        """From the start, run until the server sends the messages of ``rnd``
        (or the round before it in semi-honest mode for CONSISTENCY_CHECK)."""
        drop = drop or {}
        self.start(drop.get(Round.ADVERTISE_KEYS, ()))
        self.close()
        while self.round is not None and self.round < rnd:
            self.step(drop.get(self.round, ()))
        return self.pending

    def finish(self) -> None:
        """Run every remaining round honestly and check the exact sum."""
        while not self.finished:
            self.step()
        self.check_sum()

    def check_sum(self) -> None:
        """The server's result is the exact sum of its survivors' inputs, and
        its survivors are exactly the clients whose masked input the runner
        delivered, less :attr:`removed` (so that a server cannot pass by
        reporting fewer survivors, or none, with their sum)."""
        res = self.server.result()
        delivered = self.sent.get(Round.MASKED_INPUT_COLLECTION)
        if delivered is not None:
            expected = sorted(set(delivered) - self.removed)
            if sorted(res.survivors) != expected:
                raise CaseFailedError(f"survivors {list(res.survivors)}, expected {expected}"
                                      " (every client whose masked input was delivered and"
                                      " not removed by a complaint, SPEC [DROP-1], [R2-6])")
        total = [0] * self.config.vector_length
        for c in res.survivors:
            total = [(a + b) & self.config.modulus_mask
                     for a, b in zip(total, self.inputs[c], strict=True)]
        if list(res.total) != total:
            raise CaseFailedError(f"the result is not the exact sum of survivors"
                                  f" {list(res.survivors)}")

    def expect_abort(self, rule: Rule | None, failure: str) -> None:
        """The server under test aborts when the current round is closed (with
        ``rule`` when it is given, SPEC 13); ``failure`` says what it did
        instead if it went on.  An aborted session must report no result
        ([ABORT-1])."""
        try:
            self.server.close_round()
        except AbortError as exc:
            if rule is not None and getattr(exc, "rule", None) != rule:
                raise CaseFailedError(f"aborted, but not with rule '{rule.value}': {exc}"
                                      ) from None
        else:
            raise CaseFailedError(failure)
        try:
            res = self.server.result()
        except Exception:
            return
        raise CaseFailedError(f"an aborted session reported a result ({list(res.survivors)})")

    # -- checks -------------------------------------------------------------

    def server_refuses(self, data: bytes, rule: Rule, what: str) -> None:
        """The server under test refuses ``data`` with ``rule`` and its
        client statuses do not change."""
        before = self.server.statuses()
        expect_refusal(lambda: self.server.receive(data), rule, what)
        after = self.server.statuses()
        if after != before:
            changed = {c: (before.get(c), s) for c, s in after.items() if before.get(c) != s}
            raise CaseFailedError(f"{what}: refused, but client statuses changed: {changed}")

    def secrets(self) -> list[bytes]:
        """Secret bytes the client under test holds or can compute that the
        runner knows: its pairwise X25519 agreements with every reference
        peer (from the peers' seeds and its advertised public keys) and, for
        a client with fixed randomness, its own private keys and self-mask
        seed (SPEC 14.2)."""
        cut = self.client_under_test
        if cut is None:
            return []
        found: list[bytes] = []
        if self.own_secrets_known:
            found.extend(_drawn_secrets(self.seeds[cut]))
        advert = self.sent.get(Round.ADVERTISE_KEYS, {}).get(cut)
        if advert is None:
            return found
        try:
            mine = decode(advert)
        except SecureFLError:  # its advertisement is refused by other cases
            return found
        if not isinstance(mine, AdvertiseKeys):
            return found
        for peer, seed in self.seeds.items():
            if peer == cut:
                continue
            c, s_, _ = _drawn_secrets(seed)
            for private, public in ((c, mine.encryption_key), (s_, mine.masking_key)):
                try:
                    found.append(X25519PrivateKey.from_private_bytes(private).exchange(
                        X25519PublicKey.from_public_bytes(public)))
                except ValueError:  # a low-order key the client advertised
                    continue
        return found

    def check_no_secret(self, exc: BaseException, what: str) -> None:
        """The refusal's text carries none of :meth:`secrets` (hex, in any
        8-byte window, or Python's bytes repr, or base64)."""
        text = " ".join((str(exc), repr(exc), str(getattr(exc, "detail", ""))))
        lowered = text.lower()
        for secret in self.secrets():
            h = secret.hex()
            if (any(h[i:i + 16] in lowered for i in range(0, len(h) - 15, 2))
                    or repr(secret)[2:-1][:24] in text
                    or base64.b64encode(secret).decode()[:16] in text):
                raise CaseFailedError(f"{what}: refused, but the refusal's text carries secret"
                                      " key material (errors must never carry keys, seeds or"
                                      " shares)")

    def client_refusal(self, data: bytes, rule: Rule, what: str,
                       cid: int = UNDER_TEST) -> None:
        """Client ``cid`` refuses ``data`` with ``rule``, and the refusal
        carries no secret the runner knows (:meth:`check_no_secret`)."""
        exc = expect_refusal(lambda: self.clients[cid].handle(data), rule, what)
        self.check_no_secret(exc, what)

    def client_refuses(self, data: bytes, rule: Rule, what: str,
                       cid: int = UNDER_TEST) -> None:
        """The client under test refuses ``data`` with ``rule`` (carrying no
        secret), then never answers again (even the honest message)."""
        self.client_refusal(data, rule, what, cid)
        honest = self.pending.get(cid)
        for again in (data, honest):
            if again is None:
                continue
            try:
                self.clients[cid].handle(again)
            except ProtocolError:
                continue
            raise CaseFailedError(f"{what}: refused, but answered a later message (an aborted"
                                  " client must never answer again)")


def _drawn_secrets(seed: bytes) -> tuple[bytes, bytes, bytes]:
    """The encryption and masking private keys and the self-mask seed a
    client draws first from ``seed`` (SPEC 14.2: c_u, s_u clamped, b_u)."""
    rng = DeterministicRandom(seed)
    return clamp(rng.token_bytes(32)), clamp(rng.token_bytes(32)), rng.token_bytes(32)


def _edit(data: bytes, **changes: Any) -> bytes:
    """Decode, replace dataclass fields, re-encode."""
    message = decode(data)
    element = changes.pop("_element_bytes", None)
    return encode(dataclasses.replace(message, **changes), element_bytes=element)


def _envelope(data: bytes) -> Any:
    return pb.SecAggMessage.FromString(data)


def _body(envelope: Any) -> Any:
    return getattr(envelope, envelope.WhichOneof("body"))


# -- client cases: the runner plays the server --------------------------------


def _client_world(target: Target, config: SecAggConfig = SEMI, label: str = "c") -> World:
    return World(target, config, server_under_test=False, client_under_test=UNDER_TEST,
                 label=label)


def c_honest(config: SecAggConfig) -> Callable[[Target], None]:
    """The client under test takes part in a whole round with dropouts."""
    def run(target: Target) -> None:
        w = _client_world(target, config)
        w.run_to(Round.UNMASKING, {Round.MASKED_INPUT_COLLECTION: {5}})
        w.finish()
        if UNDER_TEST not in w.server.result().survivors:
            raise CaseFailedError("the client under test is not among the survivors")
    return run


def c_roster(edit: Callable[[KeyRoster], KeyRoster], rule: Rule, what: str,
             config: SecAggConfig = SEMI) -> Callable[[Target], None]:
    """A tampered roster is refused."""
    def run(target: Target) -> None:
        w = _client_world(target, config)
        w.run_to(Round.SHARE_KEYS)
        roster = decode(w.pending[UNDER_TEST])
        assert isinstance(roster, KeyRoster)
        w.client_refuses(encode(edit(roster)), rule, what)
    return run


def c_sparse(edit: Callable[[World, SparseKeyRoster], SparseKeyRoster], rule: Rule,
             what: str) -> Callable[[Target], None]:
    """A tampered sparse roster (SPEC.md 10.1a) is refused."""
    def run(target: Target) -> None:
        w = _client_world(target, MERKLE)
        w.run_to(Round.SHARE_KEYS)
        roster = decode(w.pending[UNDER_TEST])
        if not isinstance(roster, SparseKeyRoster):
            raise CaseFailedError("the reference server did not send a sparse roster")
        w.client_refuses(encode(edit(w, roster)), rule, what)
    return run


def _entries_without(r: SparseKeyRoster, sender: int) -> tuple[ProvenEntry, ...]:
    return tuple(p for p in r.entries if p.entry.sender != sender)


def _neighbour_of(r: SparseKeyRoster) -> int:
    return next(p.entry.sender for p in r.entries if p.entry.sender != r.recipient)


def _bad_proof(_: World, r: SparseKeyRoster) -> SparseKeyRoster:
    v = _neighbour_of(r)
    p = next(p for p in r.entries if p.entry.sender == v)
    first = bytes([p.inclusion_path[0][0] ^ 1]) + p.inclusion_path[0][1:]
    bad = ProvenEntry(p.entry, (first, *p.inclusion_path[1:]))
    return dataclasses.replace(r, entries=tuple(sorted(
        (*_entries_without(r, v), bad), key=lambda q: q.entry.sender)))


def _missing_neighbour(_: World, r: SparseKeyRoster) -> SparseKeyRoster:
    return dataclasses.replace(r, entries=_entries_without(r, _neighbour_of(r)))


def _extra_entry(w: World, r: SparseKeyRoster) -> SparseKeyRoster:
    mine = {p.entry.sender for p in r.entries}
    # a non-neighbour's genuine entry and proof, from another client's roster
    extra = next(p for c, data in sorted(w.pending.items()) if c != UNDER_TEST
                 for p in decode(data).entries  # type: ignore[union-attr]
                 if p.entry.sender not in mine)
    return dataclasses.replace(r, entries=tuple(sorted(
        (*r.entries, extra), key=lambda q: q.entry.sender)))


def _padding_bit(_: World, r: SparseKeyRoster) -> SparseKeyRoster:
    # 7 invited ids: the last bit of the one byte is padding
    return dataclasses.replace(r, id_bitmap=bytes([r.id_bitmap[0] | 1]))


def _with_entry(r: KeyRoster, index: int, **changes: Any) -> KeyRoster:
    """The roster with entry ``index`` changed."""
    e = list(r.entries)
    e[index] = dataclasses.replace(e[index], **changes)
    return dataclasses.replace(r, entries=tuple(e))


def _dup_key(r: KeyRoster) -> KeyRoster:
    return _with_entry(r, 3, masking_key=r.entries[2].masking_key)


def _own_key(r: KeyRoster) -> KeyRoster:
    return _with_entry(r, 0, encryption_key=KeyPair.generate(
        DeterministicRandom(_seed("other"))).public_bytes)


def _unsigned(r: KeyRoster) -> KeyRoster:
    return _with_entry(r, 2, signature=None)


def _forged(r: KeyRoster) -> KeyRoster:
    return _with_entry(r, 3, signature=r.entries[4].signature)


def _substituted(r: KeyRoster) -> KeyRoster:
    mine = KeyPair.generate(DeterministicRandom(_seed("server key"))).public_bytes
    return _with_entry(r, 3, masking_key=mine)


def _stranger_entry(r: KeyRoster) -> KeyRoster:
    # the last entry (client 5) relabelled as client 6, outside the configuration
    return _with_entry(r, len(r.entries) - 1, sender=6)


def _low_order_entry(r: KeyRoster) -> KeyRoster:
    return _with_entry(r, 2, encryption_key=LOW_ORDER_POINT)


def _top_bit_entry(r: KeyRoster) -> KeyRoster:
    key = r.entries[2].masking_key
    return _with_entry(r, 2, masking_key=key[:31] + bytes([key[31] | 0x80]))


def _bitmap_without_self(_: World, r: SparseKeyRoster) -> SparseKeyRoster:
    # client 1 is the first invited id: the most significant bit of byte 0
    return dataclasses.replace(r, id_bitmap=bytes([r.id_bitmap[0] & 0x7F, *r.id_bitmap[1:]]))


def _sparse_misaddressed(_: World, r: SparseKeyRoster) -> SparseKeyRoster:
    return dataclasses.replace(r, recipient=2)


def _sparse_other_config(_: World, r: SparseKeyRoster) -> SparseKeyRoster:
    return dataclasses.replace(r, config_digest=bytes(32))


def c_delivery(edit: Callable[[World, ShareDelivery], bytes], rule: Rule,
               what: str) -> Callable[[Target], None]:
    """A tampered share delivery is refused."""
    def run(target: Target) -> None:
        w = _client_world(target)
        w.run_to(Round.MASKED_INPUT_COLLECTION)
        delivery = decode(w.pending[UNDER_TEST])
        assert isinstance(delivery, ShareDelivery)
        w.client_refuses(edit(w, delivery), rule, what)
    return run


def _tampered(_: World, d: ShareDelivery) -> bytes:
    cts = dict(d.ciphertexts)
    cts[3] = cts[3][:-1] + bytes([cts[3][-1] ^ 0x80])
    return encode(dataclasses.replace(d, ciphertexts=cts))


def _redirected(w: World, d: ShareDelivery) -> bytes:
    cts = dict(d.ciphertexts)
    other = decode(w.pending[2])
    cts[3] = other.ciphertexts[3]  # type: ignore[union-attr]
    return encode(dataclasses.replace(d, ciphertexts=cts))


def _from_itself(_: World, d: ShareDelivery) -> bytes:
    cts = dict(d.ciphertexts)
    cts[UNDER_TEST] = cts[2]
    return encode(dataclasses.replace(d, ciphertexts=cts))


def _few_senders(_: World, d: ShareDelivery) -> bytes:
    first = min(d.ciphertexts)
    return encode(dataclasses.replace(d, ciphertexts={first: d.ciphertexts[first]}))


def c_fresh_keys(target: Target) -> None:
    """[R0-1]: every session draws fresh key pairs and a fresh seed.  Two
    sessions of the client under test, given the same specification (its own
    CSPRNG, ``random_seed=None``), advertise different encryption keys,
    masking keys and seed commitments (the commitment binds the configuration,
    the id and the seed, so an equal commitment is a reused seed); within one
    advertisement the two keys differ ([R0-2])."""
    config = SEMI
    inputs = _inputs(config)
    adverts = []
    for _ in range(2):
        client = target.client(ClientSpec(config, UNDER_TEST, inputs[UNDER_TEST]))
        advert = decode(client.start())
        if not isinstance(advert, AdvertiseKeys):
            raise CaseFailedError(f"start() returned a {type(advert).__name__}, expected"
                                  " AdvertiseKeys")
        adverts.append(advert)
    a, b = adverts
    if a.encryption_key == a.masking_key:
        raise CaseFailedError("the encryption and masking keys of one advertisement are equal")
    keys_b = (b.encryption_key, b.masking_key)
    reused = [name for name in ("encryption_key", "masking_key") if getattr(a, name) in keys_b]
    if a.seed_commitment == b.seed_commitment:
        reused.append("seed_commitment")
    if reused:
        raise CaseFailedError(f"two sessions advertised the same {', '.join(reused)}: keys and"
                              " seed must be fresh for every session ([R0-1])")


def c_consistency(edit: Callable[[ConsistencyRequest], ConsistencyRequest], rule: Rule,
                  what: str, drop: dict[Round, set[int]] | None = None,
                  ) -> Callable[[Target], None]:
    """Active mode: a consistency request whose survivor list breaks [R4-2]
    is not signed ([R3-1])."""
    def run(target: Target) -> None:
        w = _client_world(target, ACTIVE)
        w.run_to(Round.CONSISTENCY_CHECK, drop)
        request = decode(w.pending[UNDER_TEST])
        assert isinstance(request, ConsistencyRequest)
        w.client_refuses(encode(edit(request)), rule, what)
    return run


def c_signs_once(target: Target) -> None:
    """Active mode: a client signs at most one survivor list per session
    ([R3-1]); a second, different consistency request is refused (the first
    signature stands, so this is not an abort of the session)."""
    w = _client_world(target, ACTIVE)
    w.run_to(Round.CONSISTENCY_CHECK, {Round.MASKED_INPUT_COLLECTION: {5}})
    request = decode(w.pending[UNDER_TEST])
    assert isinstance(request, ConsistencyRequest)
    first = decode(w.clients[UNDER_TEST].handle(w.pending[UNDER_TEST]))
    if not isinstance(first, ConsistencySignature):
        raise CaseFailedError("the honest consistency request was not signed")
    other = dataclasses.replace(request, survivors=tuple(
        c for c in request.survivors if c != max(request.survivors)))
    w.client_refusal(encode(other), Rule.WRONG_ROUND,
                     "a second consistency request with another survivor list")


def c_excludes(edit: Callable[[World, ShareDelivery], bytes],
               what: str) -> Callable[[Target], None]:
    """A share ciphertext that does not decrypt is not a reason to abort
    (SPEC [R2-5]): the client masks without that peer, names it in
    ``excluded``, refuses to list it as a survivor, and the round finishes
    (the reference server removes both ends of the complaint, [R2-6], so the
    lying survivor list is addressed to the client under test by hand)."""
    def run(target: Target) -> None:
        w = _client_world(target)
        w.run_to(Round.MASKED_INPUT_COLLECTION)
        delivery = decode(w.pending[UNDER_TEST])
        assert isinstance(delivery, ShareDelivery)
        w.pending[UNDER_TEST] = edit(w, delivery)
        replies = w.answer()
        reply = decode(replies[UNDER_TEST])
        if not isinstance(reply, MaskedInput) or tuple(reply.excluded) != (3,):
            got = getattr(reply, "excluded", None)
            raise CaseFailedError(f"{what}: the masked input must name client 3 in excluded,"
                                  f" got {got}")
        w.close()
        if w.round is Round.UNMASKING:
            request = decode(next(iter(w.pending.values())))
            assert isinstance(request, UnmaskingRequest)
            if 3 in request.survivors or 3 not in request.dropped:
                raise CaseFailedError("the reference server did not drop the excluded client 3")
            lying = dataclasses.replace(
                request, recipient=UNDER_TEST,
                survivors=tuple(sorted({*request.survivors, UNDER_TEST, 3})),
                dropped=tuple(u for u in request.dropped if u not in (3, UNDER_TEST)))
            w.client_refusal(encode(lying), Rule.LISTS_CONTRADICT_VIEW,
                             "a survivor list naming the peer this client excluded")
            w2 = _client_world(target, label="c2")
            w2.run_to(Round.MASKED_INPUT_COLLECTION)
            w2.pending[UNDER_TEST] = edit(w2, decode(w2.pending[UNDER_TEST]))  # type: ignore[arg-type]
            w2.step()
            w = w2
        w.removed = {UNDER_TEST, 3}  # both ends of the complaint ([R2-6])
        w.finish()
        if 3 in w.server.result().survivors:
            raise CaseFailedError("client 3 is still counted as a survivor")
    return run


def c_duplicates(config: SecAggConfig) -> Callable[[Target], None]:
    """Every server message delivered twice: the client answers the copy with
    the same bytes (SPEC [CLI-2]) and the round finishes with the exact sum."""
    def run(target: Target) -> None:
        w = _TwiceWorld(target, config, server_under_test=False,
                        client_under_test=UNDER_TEST, label="c")
        w.run()
        w.check_sum()
    return run


class _TwiceWorld(World):
    """Delivers every server message twice to the client under test."""

    def client_handle(self, rnd: Round, cid: int, message: Any) -> Any:
        first = super().client_handle(rnd, cid, message)
        if cid == UNDER_TEST and self.clients[cid].handle(message) != first:
            raise CaseFailedError(f"{rnd.name}: an exact duplicate of an answered message got a"
                                  " different answer")
        return first


def c_replay(target: Target) -> None:
    """A share delivery from another session is refused."""
    a = World(target, SEMI, server_under_test=False, client_under_test=None, label="other")
    a.run_to(Round.MASKED_INPUT_COLLECTION)
    b = _client_world(target)
    b.run_to(Round.MASKED_INPUT_COLLECTION)
    b.client_refuses(a.pending[UNDER_TEST], Rule.WRONG_SESSION,
                     "a share delivery replayed from another session")


def c_relabelled(target: Target) -> None:
    """Ciphertexts from another session relabelled with this session id fail."""
    a = World(target, SEMI, server_under_test=False, client_under_test=None, label="other")
    a.run_to(Round.MASKED_INPUT_COLLECTION)
    b = _client_world(target)
    b.run_to(Round.MASKED_INPUT_COLLECTION)
    mine = decode(b.pending[UNDER_TEST])
    b.client_refuses(_edit(a.pending[UNDER_TEST], session_id=mine.session_id),  # type: ignore[union-attr]
                     Rule.DECRYPTION_FAILED, "ciphertexts of another session, relabelled")


def c_out_of_order(target: Target) -> None:
    """A share delivery where the roster is expected is refused."""
    a = World(target, SEMI, server_under_test=False, client_under_test=None, label="other")
    a.run_to(Round.MASKED_INPUT_COLLECTION)
    b = _client_world(target)
    b.run_to(Round.SHARE_KEYS)
    b.client_refuses(a.pending[UNDER_TEST], Rule.WRONG_ROUND,
                     "a share delivery sent before the roster")


def c_unmask(edit: Callable[[UnmaskingRequest], UnmaskingRequest], rule: Rule, what: str,
             config: SecAggConfig = SEMI,
             drop: dict[Round, set[int]] | None = None) -> Callable[[Target], None]:
    """A tampered unmasking request is refused."""
    def run(target: Target) -> None:
        w = _client_world(target, config)
        default = {Round.MASKED_INPUT_COLLECTION: {5}}
        w.run_to(Round.UNMASKING, default if drop is None else drop)
        request = decode(w.pending[UNDER_TEST])
        assert isinstance(request, UnmaskingRequest)
        w.client_refuses(encode(edit(request)), rule, what)
    return run


def _both(r: UnmaskingRequest) -> UnmaskingRequest:
    return dataclasses.replace(r, dropped=tuple(sorted({*r.dropped, 2})))


def _below(r: UnmaskingRequest) -> UnmaskingRequest:
    return dataclasses.replace(r, survivors=(1, 2), dropped=(3, 4, 5))


def _self_dropped(r: UnmaskingRequest) -> UnmaskingRequest:
    return dataclasses.replace(r, survivors=(2, 3, 4), dropped=(1, 5))


def _few_signatures(r: UnmaskingRequest) -> UnmaskingRequest:
    return dataclasses.replace(r, signatures=dict(list(r.signatures.items())[:2]))


def _forged_signature(r: UnmaskingRequest) -> UnmaskingRequest:
    sigs = dict(r.signatures)
    sigs[3] = sigs[4]
    return dataclasses.replace(r, signatures=sigs)


def _other_list(r: UnmaskingRequest) -> UnmaskingRequest:
    return dataclasses.replace(r, survivors=(1, 2, 3), dropped=(4, 5))


def _split_world(target: Target) -> tuple[World, bytes, tuple[int, ...], frozenset[int]]:
    """ACTIVE_HARARY run to the consistency check: the world, the session id,
    the roster and the neighbours of the client under test."""
    w = _client_world(target, ACTIVE_HARARY, label="split")
    w.run_to(Round.CONSISTENCY_CHECK)
    request = decode(w.pending[UNDER_TEST])
    assert isinstance(request, ConsistencyRequest)
    roster = tuple(sorted(w.sent[Round.ADVERTISE_KEYS]))
    nmap = neighbour_map(ACTIVE_HARARY.graph, roster, request.session_id)
    return w, request.session_id, roster, nmap[UNDER_TEST]


def c_short_list_unsigned(target: Target) -> None:
    """A survivor list shorter than the signature quorum is not signed."""
    w, sid, _, mine = _split_world(target)
    survivors = tuple(sorted({UNDER_TEST, *sorted(mine)[:2]}))
    assert ACTIVE_HARARY.floor <= len(survivors) < ACTIVE_HARARY.signature_quorum
    w.client_refuses(encode(ConsistencyRequest(UNDER_TEST, sid, survivors)),
                     Rule.BELOW_THRESHOLD, f"a survivor list of {len(survivors)} with signature"
                     f" quorum {ACTIVE_HARARY.signature_quorum}")


def c_split_lists(target: Target) -> None:
    """The split-list attack: the server shows the client under test and two
    peers a list without one of its neighbours, the rest a list without
    another client; the first list carries t = 3 valid signatures (what a
    threshold rule would accept) but fewer than the quorum of 4."""
    w, sid, roster, mine = _split_world(target)
    x = min(mine)
    y = max(c for c in roster if c not in (UNDER_TEST, x))
    list_a = tuple(c for c in roster if c != x)
    list_b = tuple(c for c in roster if c != y)
    group_a = [UNDER_TEST, *[c for c in roster if c not in (UNDER_TEST, x, y)][:2]]
    sigs: dict[int, bytes] = {}
    for c in roster:
        if c == y:
            continue  # listed as dropped on B's list: it is not asked
        survivors = list_a if c in group_a else list_b
        reply = decode(w.clients[c].handle(encode(ConsistencyRequest(c, sid, survivors))))
        if not isinstance(reply, ConsistencySignature):
            raise CaseFailedError(f"client {c} did not sign a consistent survivor list")
        if c in group_a:
            sigs[c] = reply.signature
    assert ACTIVE_HARARY.t <= len(sigs) < ACTIVE_HARARY.signature_quorum
    request = UnmaskingRequest(UNDER_TEST, sid, list_a, (x,), sigs)
    w.client_refuses(encode(request), Rule.NOT_ENOUGH_SIGNATURES,
                     f"a survivor list signed by {len(sigs)} clients (t = {ACTIVE_HARARY.t},"
                     f" quorum {ACTIVE_HARARY.signature_quorum}) while the others"
                     f" signed a list without client {y}")


def s_below_quorum(target: Target) -> None:
    """Active, sparse graph: t = 3 clients sign but the quorum is 4: abort."""
    w = _server_world(target, ACTIVE_HARARY)
    w.run_to(Round.CONSISTENCY_CHECK)
    w.answer(skip=sorted(w.pending)[ACTIVE_HARARY.t:])
    w.expect_abort(None, f"sent unmasking requests with {ACTIVE_HARARY.t} consistency"
                   f" signatures, quorum {ACTIVE_HARARY.signature_quorum}")


def c_stranger_dropped(target: Target) -> None:
    """A dropped list naming a client that is not in the roster (it never
    advertised keys) is refused ([R4-3], ``sender-not-in-roster``)."""
    w = _client_world(target)
    w.run_to(Round.UNMASKING, {Round.ADVERTISE_KEYS: {4}, Round.MASKED_INPUT_COLLECTION: {5}})
    request = decode(w.pending[UNDER_TEST])
    assert isinstance(request, UnmaskingRequest) and 4 not in request.dropped
    w.client_refuses(encode(dataclasses.replace(request,
                                                dropped=tuple(sorted({*request.dropped, 4})))),
                     Rule.UNKNOWN_PEER, "a dropped list naming client 4, which never"
                     " advertised keys")


def c_outsider_signature(target: Target) -> None:
    """Active mode: a consistency signature from a client that is not on the
    survivor list is refused ([R4-6], ``signature-invalid``), even when it is a
    valid signature of that very list by a pinned identity key and the
    survivors' own signatures reach the quorum."""
    w = _client_world(target, ACTIVE)
    w.run_to(Round.UNMASKING, {Round.MASKED_INPUT_COLLECTION: {5}})
    request = decode(w.pending[UNDER_TEST])
    assert isinstance(request, UnmaskingRequest) and 5 not in request.survivors
    outsider = signing.sign(Ed25519PrivateKey.from_private_bytes(w.private[5]),
                            derivation.consistency_payload(request.session_id,
                                                           request.survivors))
    w.client_refuses(encode(dataclasses.replace(
        request, signatures={**request.signatures, 5: outsider})), Rule.INVALID_SIGNATURE,
        "a valid signature of the survivor list by client 5, which is not a survivor")


def c_stranger_survivor(target: Target) -> None:
    """A survivor list naming a client that is not in the roster (it never
    advertised keys) is refused ([R4-2], ``sender-not-in-roster``)."""
    w = _client_world(target)
    w.run_to(Round.UNMASKING, {Round.ADVERTISE_KEYS: {4}, Round.MASKED_INPUT_COLLECTION: {5}})
    request = decode(w.pending[UNDER_TEST])
    assert isinstance(request, UnmaskingRequest) and 4 not in request.survivors
    w.client_refuses(encode(dataclasses.replace(
        request, survivors=tuple(sorted({*request.survivors, 4})))), Rule.UNKNOWN_PEER,
        "a survivor list naming client 4, which never advertised keys")


def c_never_shared(target: Target) -> None:
    """A dropped list naming a client that never shared keys is refused."""
    w = _client_world(target)
    w.run_to(Round.UNMASKING, {Round.SHARE_KEYS: {4}})
    request = decode(w.pending[UNDER_TEST])
    assert isinstance(request, UnmaskingRequest) and 4 not in request.dropped
    w.client_refuses(encode(dataclasses.replace(request, dropped=(4,))),
                     Rule.LISTS_CONTRADICT_VIEW, "a dropped list naming a client that never"
                     " shared keys (asks for a key share nobody may have)")


def c_second_request(flip: bool) -> Callable[[Target], None]:
    """A second, different unmasking request is refused; the first answer
    stands (an exact duplicate is answered again, SPEC [CLI-2])."""
    def run(target: Target) -> None:
        w = _client_world(target)
        w.run_to(Round.UNMASKING, {Round.MASKED_INPUT_COLLECTION: {5}})
        request = decode(w.pending[UNDER_TEST])
        first = decode(w.clients[UNDER_TEST].handle(w.pending[UNDER_TEST]))
        if not isinstance(first, UnmaskingResponse) or set(first.key_shares) != {5}:
            raise CaseFailedError("the honest unmasking answer should reveal exactly client 5's"
                                  " key share")
        second = (dataclasses.replace(request, survivors=(1, 3, 4, 5), dropped=(2,))  # type: ignore[arg-type]
                  if flip else dataclasses.replace(request, dropped=()))  # type: ignore[arg-type]
        rule = Rule.BOTH_SHARES_REQUESTED if flip else Rule.SECOND_UNMASK_REQUEST
        w.client_refusal(encode(second), rule, "a second unmasking request"
                         + (" asking for the other shares" if flip else ""))
    return run


def c_wire(edit: Callable[[bytes], bytes], at: Round, what: str,
           rule: Rule = Rule.MALFORMED) -> Callable[[Target], None]:
    """Malformed bytes from the server are refused (as MALFORMED unless said)."""
    def run(target: Target) -> None:
        w = _client_world(target)
        w.run_to(at, {Round.MASKED_INPUT_COLLECTION: {5}})
        w.client_refuses(edit(w.pending[UNDER_TEST]), rule, what)
    return run


def _version_2(data: bytes) -> bytes:
    env = _envelope(data)
    _body(env).version = 2
    return env.SerializeToString()


def _truncated_key(data: bytes) -> bytes:
    env = _envelope(data)
    entry = _body(env).entries[1]
    entry.masking_key = entry.masking_key[:31]
    return env.SerializeToString()


def _duplicate_survivor(data: bytes) -> bytes:
    env = _envelope(data)
    body = _body(env)
    body.survivors.append(body.survivors[-1])
    return env.SerializeToString()


def _duplicate_sender(data: bytes) -> bytes:
    env = _envelope(data)
    body = _body(env)
    extra = body.ciphertexts.add()
    extra.CopyFrom(body.ciphertexts[0])
    return env.SerializeToString()


def _duplicate_entry(data: bytes) -> bytes:
    env = _envelope(data)
    body = _body(env)
    extra = body.entries.add()
    extra.CopyFrom(body.entries[len(body.entries) - 2])
    return env.SerializeToString()


def _cut(data: bytes) -> bytes:
    return data[: len(data) // 2]


# -- server cases: the runner plays the clients -------------------------------


def _server_world(target: Target, config: SecAggConfig = SEMI, label: str = "s") -> World:
    return World(target, config, server_under_test=True, client_under_test=None, label=label)


def s_honest(config: SecAggConfig, drop: dict[Round, set[int]]) -> Callable[[Target], None]:
    """A whole round (with the given dropouts) gives the exact sum."""
    def run(target: Target) -> None:
        w = _server_world(target, config)
        w.run_to(Round.UNMASKING, drop)
        while not w.finished:
            w.step(drop.get(w.round, ()) if w.round is not None else ())
        w.check_sum()
        statuses = w.server.statuses()
        for rnd, ids in drop.items():
            for c in ids:
                if statuses[c] == "UNMASKING_RESPONSE_RECEIVED":
                    raise CaseFailedError(f"client {c} dropped at {rnd.name} but is reported"
                                          " as finished")
    return run


def s_abort(target: Target) -> None:
    """Fewer than t masked inputs: the round aborts, no result."""
    w = _server_world(target)
    w.run_to(Round.MASKED_INPUT_COLLECTION)
    w.answer(skip={3, 4, 5})
    w.expect_abort(None, "closed the masked-input round with 2 of threshold 3 clients")


def s_advert(edit: Callable[[World, dict[int, bytes]], bytes], rule: Rule, what: str,
             config: SecAggConfig = SEMI,
             first: Iterable[int] = (2, 3)) -> Callable[[Target], None]:
    """A bad advertisement is refused; the round still completes."""
    def run(target: Target) -> None:
        w = _server_world(target, config)
        adverts = w.start(skip=w.clients)
        w.send({c: adverts[c] for c in first})
        w.server_refuses(edit(w, adverts), rule, what)
        w.send({c: data for c, data in adverts.items() if c not in set(first)})
        w.close()
        w.finish()
    return run


def _unknown_sender(_: World, a: dict[int, bytes]) -> bytes:
    return _edit(a[1], sender=99)


def _copied_key(_: World, a: dict[int, bytes]) -> bytes:
    return _edit(a[1], masking_key=decode(a[2]).masking_key)  # type: ignore[union-attr]


def _equal_keys(_: World, a: dict[int, bytes]) -> bytes:
    return _edit(a[1], masking_key=decode(a[1]).encryption_key)  # type: ignore[union-attr]


def _forged_advert(_: World, a: dict[int, bytes]) -> bytes:
    return _edit(a[1], signature=decode(a[2]).signature)  # type: ignore[union-attr]


def _unsigned_advert(_: World, a: dict[int, bytes]) -> bytes:
    return _edit(a[1], signature=None)


def s_round(at: Round, edit: Callable[[World, dict[int, bytes]], bytes], rule: Rule,
            what: str, config: SecAggConfig = SEMI,
            drop: dict[Round, set[int]] | None = None) -> Callable[[Target], None]:
    """In round ``at`` (after the dropouts ``drop``), a bad client message is
    refused after the honest replies were computed (but before they are
    sent); the round completes."""
    def run(target: Target) -> None:
        w = _server_world(target, config)
        w.run_to(at, drop)
        replies = w.answer(send=False)
        w.server_refuses(edit(w, replies), rule, what)
        w.send(replies)
        w.close()
        w.finish()
    return run


def _excluded_never_delivered(w: World, r: dict[int, bytes]) -> bytes:
    """Client 1 reports client 4, whose shares were never delivered to it."""
    return _edit(r[1], excluded=(4,), _element_bytes=w.config.wire_element_bytes)


def _excluded_too_many(w: World, r: dict[int, bytes]) -> bytes:
    """Client 1 reports 3 of its 4 peers: fewer than t - 1 = 2 are left."""
    return _edit(r[1], excluded=(2, 3, 4), _element_bytes=w.config.wire_element_bytes)


def _wrong_recipients(_: World, r: dict[int, bytes]) -> bytes:
    msg = decode(r[1])
    cts = dict(msg.ciphertexts)  # type: ignore[union-attr]
    del cts[2]
    return encode(dataclasses.replace(msg, ciphertexts=cts))


def _shares_to_itself(_: World, r: dict[int, bytes]) -> bytes:
    msg = decode(r[1])
    cts = dict(msg.ciphertexts)  # type: ignore[union-attr]
    cts[1] = cts[2]
    return encode(dataclasses.replace(msg, ciphertexts=cts))


def _wrong_session(_: World, r: dict[int, bytes]) -> bytes:
    return _edit(r[1], session_id=bytes(32))


def _dup_ids_shares(_: World, r: dict[int, bytes]) -> bytes:
    return _duplicate_sender(r[1])


def _masked(config_edit: Callable[[np.ndarray], np.ndarray],
            element: int | None = None) -> Callable[[World, dict[int, bytes]], bytes]:
    def edit(_: World, r: dict[int, bytes]) -> bytes:
        msg = decode(r[1])
        return encode(dataclasses.replace(msg, masked=config_edit(msg.masked)),  # type: ignore[union-attr,arg-type]
                      element_bytes=element)
    return edit


def _misaligned(_: World, r: dict[int, bytes]) -> bytes:
    env = _envelope(r[1])
    _body(env).masked += b"\0"
    return env.SerializeToString()


def _early_masked(w: World, r: dict[int, bytes]) -> bytes:
    sid = decode(r[1]).session_id  # type: ignore[union-attr]
    return encode(MaskedInput(1, sid, np.zeros(w.config.vector_length, dtype="<u2")))


def _late_advert(w: World, _: dict[int, bytes]) -> bytes:
    return w.sent[Round.ADVERTISE_KEYS][2]


def _both_shares(_: World, r: dict[int, bytes]) -> bytes:
    msg = decode(r[1])
    assert isinstance(msg, UnmaskingResponse)
    keys = dict(msg.key_shares)
    keys[2] = msg.self_mask_shares[2]
    return encode(dataclasses.replace(msg, key_shares=keys))


def _missing_share(_: World, r: dict[int, bytes]) -> bytes:
    msg = decode(r[1])
    assert isinstance(msg, UnmaskingResponse)
    shares = dict(msg.self_mask_shares)
    del shares[3]
    return encode(dataclasses.replace(msg, self_mask_shares=shares))


def _dup_owner(_: World, r: dict[int, bytes]) -> bytes:
    env = _envelope(r[1])
    body = _body(env)
    extra = body.self_mask_shares.add()
    extra.CopyFrom(body.self_mask_shares[0])
    return env.SerializeToString()


def _forged_consistency(_: World, r: dict[int, bytes]) -> bytes:
    return _edit(r[1], signature=decode(r[2]).signature)  # type: ignore[union-attr]


def _bytes(edit: Callable[[bytes], bytes]) -> Callable[[World, dict[int, bytes]], bytes]:
    return lambda _, r: edit(r[1])


def s_low_order(target: Target) -> None:
    """An advertisement with a low-order X25519 key is refused; that client is
    left out and the others finish with their exact sum (SPEC [R0-2])."""
    w = _server_world(target)
    adverts = w.start(skip=w.clients)
    w.send({c: adverts[c] for c in (2, 3, 4, 5)})
    low = LOW_ORDER_POINT
    w.server_refuses(_edit(adverts[1], masking_key=low), Rule.INVALID_PUBLIC_KEY,
                     "a masking key of order 8")
    w.server_refuses(_edit(adverts[1], encryption_key=bytes(32)), Rule.INVALID_PUBLIC_KEY,
                     "the all-zero encryption key")
    w.close()
    w.finish()
    if 1 in w.server.result().survivors:
        raise CaseFailedError("the client with a low-order key is counted as a survivor")


def s_garbage_ciphertexts(to: tuple[int, ...]) -> Callable[[Target], None]:
    """Client 2 sends random bytes as its share ciphertexts to ``to``; the
    recipients exclude and report it (SPEC [R2-5], [R2-6]); the server drops both
    ends of the first complaint (the smallest recipient in ``to``, and client 2)
    and finishes with the exact sum of the others."""
    def run(target: Target) -> None:
        w = _server_world(target, label=f"garbage{len(to)}")
        w.run_to(Round.SHARE_KEYS)
        replies = w.answer(send=False)
        msg = decode(replies[2])
        noise = DeterministicRandom(_seed("garbage"))
        cts = {p: (noise.token_bytes(len(ct)) if p in to else ct)
               for p, ct in msg.ciphertexts.items()}  # type: ignore[union-attr]
        replies[2] = encode(dataclasses.replace(msg, ciphertexts=cts))
        w.send(replies)
        w.close()
        w.removed = {2, min(to)}  # both ends of the first complaint ([R2-6])
        w.finish()
        res = w.server.result()
        expected = [c for c in (1, 2, 3, 4, 5) if c not in (2, min(to))]
        if list(res.survivors) != expected:
            raise CaseFailedError(f"survivors {list(res.survivors)}: expected every client"
                                  f" but the garbage sender 2 and its reporter {min(to)}")
        if tuple(res.blamed) != tuple(sorted((2, min(to)))):
            raise CaseFailedError(f"blamed {list(res.blamed)}: expected both ends of the"
                                  f" matched complaint, clients {sorted((2, min(to)))}"
                                  " (SPEC [R2-6]: the server cannot tell which end lied)")
    return run


def _forge_share(data: bytes, owner: int, random: bool, field: str = "self_mask_shares",
                 ) -> bytes:
    msg = decode(data)
    assert isinstance(msg, UnmaskingResponse)
    share = bytearray(getattr(msg, field)[owner])
    if random:
        share = bytearray(DeterministicRandom(_seed("forged")).token_bytes(64))
        for i in range(0, 64, 4):
            share[i + 3] &= 0x3F  # keep every element a field element
    else:
        limb = int.from_bytes(share[:4], "little")
        share[:4] = ((limb + 1) % (2**31 - 1)).to_bytes(4, "little")
    shares = {**getattr(msg, field), owner: bytes(share)}
    return encode(dataclasses.replace(msg, **{field: shares}))


def s_forged_share(responders: tuple[int, ...], random: bool,
                   key: bool = False) -> Callable[[Target], None]:
    """Client 2 reveals a forged share of client 1's self-mask seed (with
    ``key``: of the masking key of client 5, dropped after sharing).  With
    exactly t responders the server must abort with rule
    ``reconstruction-fails-commitment`` (never a wrong sum); with more it must
    finish with the exact sum and blame exactly client 2 (SPEC [R4-11]: a
    reconstructed masking key is checked against the advertised public key
    as a seed is against its commitment)."""
    def run(target: Target) -> None:
        label = f"forged{'-key' if key else ''}{len(responders)}"
        w = _server_world(target, label=label)
        w.run_to(Round.UNMASKING, {Round.MASKED_INPUT_COLLECTION: {5}} if key else None)
        replies = w.answer(skip=set(w.pending) - set(responders), send=False)
        replies[2] = (_forge_share(replies[2], 5, random, "key_shares") if key
                      else _forge_share(replies[2], 1, random))
        w.send(replies)
        if len(responders) == w.config.t:
            w.expect_abort(Rule.COMMITMENT_MISMATCH, "a forged share among exactly t gave a"
                           " result (it must abort: the sum would be wrong)")
            return
        w.close()
        w.check_sum()
        if tuple(w.server.result().blamed) != (2,):
            raise CaseFailedError(f"blamed {list(w.server.result().blamed)}, expected exactly"
                                  " the forger, client 2")
    return run


def s_duplicate(at: Round, config: SecAggConfig = SEMI) -> Callable[[Target], None]:
    """A second message from one client in round ``at`` (an exact copy of the
    one accepted) is refused (``duplicate-message-from-peer``), statuses
    unchanged; the round finishes with the exact sum."""
    def run(target: Target) -> None:
        w = _server_world(target, config)
        w.run_to(at)
        replies = w.answer()
        w.server_refuses(replies[2], Rule.DUPLICATE_MESSAGE,
                         f"client 2's {at.name} message a second time")
        w.close()
        w.finish()
    return run


def s_contradicted_complaint(target: Target) -> None:
    """[R4-12]: client 5 shares its keys, then drops; client 1's masked input
    is altered in transit to report 5 in ``excluded`` (masked inputs are not
    signed).  The server, which now removes no mask between 1 and 5, must
    abort when 1's unmasking response reveals its share of 5's masking key
    (``complaint-contradicted-by-its-sender``): unmasking anyway gives a
    wrong sum."""
    w = _server_world(target, label="contradicted")
    w.run_to(Round.MASKED_INPUT_COLLECTION)
    replies = w.answer(skip={5}, send=False)
    replies[1] = _edit(replies[1], excluded=(5,), _element_bytes=w.config.wire_element_bytes)
    w.send(replies)
    w.close()
    if w.round is not Round.UNMASKING:
        raise CaseFailedError(f"the round did not proceed to UNMASKING after the complaint"
                              f" (round {w.round})")
    w.answer()
    w.expect_abort(Rule.COMPLAINT_CONTRADICTED, "unmasked although client 1 revealed a share"
                   " of client 5's key after reporting it (SPEC [R4-12]: the sum cannot be"
                   " exact)")


def _share_outside_field(_: World, r: dict[int, bytes]) -> bytes:
    msg = decode(r[1])
    assert isinstance(msg, UnmaskingResponse)
    owner = min(msg.self_mask_shares)
    share = bytearray(msg.self_mask_shares[owner])
    share[:4] = (2**31 - 1).to_bytes(4, "little")  # p itself: not an element of GF(p)
    return encode(dataclasses.replace(msg, self_mask_shares={**msg.self_mask_shares,
                                                             owner: bytes(share)}))


def s_complaints_leave_too_few(target: Target) -> None:
    """Two disjoint complaints (client 2 sends garbage to 1, client 4 to 3)
    remove four of five clients ([R2-6]): the server must abort, typed
    ``too-few-left-after-complaint-resolution``, and report no result."""
    w = _server_world(target, label="too-few")
    w.run_to(Round.SHARE_KEYS)
    replies = w.answer(send=False)
    noise = DeterministicRandom(_seed("too few"))
    for sender, victim in ((2, 1), (4, 3)):
        msg = decode(replies[sender])
        assert isinstance(msg, EncryptedShares)
        cts = {p: (noise.token_bytes(len(ct)) if p == victim else ct)
               for p, ct in msg.ciphertexts.items()}
        replies[sender] = encode(dataclasses.replace(msg, ciphertexts=cts))
    w.send(replies)
    w.close()
    w.answer()
    w.expect_abort(Rule.COMPLAINTS_LEFT_TOO_FEW,
                   "went on after complaints removed 4 of 5 clients (threshold 3)")


def s_too_few_holders(target: Target) -> None:
    """SecAgg+ graph: t clients answer the unmasking request, but fewer than t
    of them hold shares of some survivor's self-mask seed: the server must
    abort ([R4-10], [ABORT-1]) and report no result."""
    w = _server_world(target, HARARY, label="holders")
    w.run_to(Round.UNMASKING)
    sid = decode(next(iter(w.pending.values()))).session_id  # type: ignore[union-attr]
    nmap = neighbour_map(HARARY.graph, tuple(sorted(w.sent[Round.ADVERTISE_KEYS])), sid)
    u = next(c for c in HARARY.ids if len(set(HARARY.ids) - nmap[c] - {c}) >= 2)
    outsiders = sorted(set(HARARY.ids) - nmap[u] - {u})
    responders = {*outsiders[:2], min(nmap[u])}
    assert len(responders) == HARARY.t and len(responders & (nmap[u] | {u})) < HARARY.t
    w.answer(skip=set(w.pending) - responders)
    w.expect_abort(None, f"closed the unmasking round although only"
                   f" {len(responders & nmap[u])} of the {HARARY.t} responders"
                   f" {sorted(responders)} hold shares of client {u}'s seed")


def s_duplicate_masked(target: Target) -> None:
    """A second masked input from the same client is refused; the sum holds."""
    w = _server_world(target)
    w.run_to(Round.MASKED_INPUT_COLLECTION)
    replies = w.answer()
    w.server_refuses(replies[2], Rule.DUPLICATE_MESSAGE, "the same masked input twice")
    w.close()
    w.finish()


def s_not_shared(target: Target) -> None:
    """A masked input from a client that never shared keys is refused."""
    w = _server_world(target)
    w.run_to(Round.SHARE_KEYS)
    w.answer(skip={4})
    w.close()
    other = World(target, SEMI, server_under_test=False, client_under_test=None)
    other.run_to(Round.MASKED_INPUT_COLLECTION)
    sid = decode(w.pending[1]).session_id  # type: ignore[union-attr]
    forged = _edit(other.answer(send=False)[4], session_id=sid)
    replies = w.answer(send=False)
    w.server_refuses(forged, Rule.UNKNOWN_PEER, "a masked input from a client that never"
                     " shared its keys")
    w.send(replies)
    w.close()
    w.finish()


# -- weak setups ---------------------------------------------------------------
# Which setups a node accepts at all is its deployment's policy, decided before
# the protocol starts (securefl.flower.policy; tests/test_flower_node_policy.py):
# the targets here are configured out of band and have no such layer.  What the
# protocol itself guarantees is that a configuration a client accepted cannot be
# weakened afterwards: the server cannot run the session under a lower
# threshold, fewer clients or another mode, because the roster carries the
# digest of the configuration it was made for ([PARAM-5], [R0-4]).


def _kept_pairs(r: UnmaskingRequest) -> list[tuple[int, int]]:
    """The (survivor, component) excess seeds the rule keeps for ``r``'s list."""
    components = NOISE.noise_components
    return sorted({(v, j) for v in r.survivors for j in range(components)}
                  - set(r.noise_removals))


def _greedy_noise(r: UnmaskingRequest) -> UnmaskingRequest:
    return dataclasses.replace(r, noise_removals=tuple(sorted({*r.noise_removals,
                                                               _kept_pairs(r)[0]})))


def _dropped_noise(r: UnmaskingRequest) -> UnmaskingRequest:
    return dataclasses.replace(r, noise_removals=tuple(sorted({*r.noise_removals,
                                                               (r.dropped[0], 0)})))


def _no_commitment(r: KeyRoster) -> KeyRoster:
    return _with_entry(r, 2, noise_commitments=r.entries[2].noise_commitments[:-1])


def _advert_no_commitment(_: World, a: dict[int, bytes]) -> bytes:
    return _edit(a[1], noise_commitments=decode(a[1]).noise_commitments[:-1])  # type: ignore[union-attr]


def _unrequested_noise_share(_: World, r: dict[int, bytes]) -> bytes:
    msg = decode(r[1])
    assert isinstance(msg, UnmaskingResponse)
    shares = dict(msg.noise_shares)
    shares[(2, NOISE.noise_components)] = msg.self_mask_shares[2]
    return encode(dataclasses.replace(msg, noise_shares=shares))


def s_noise(config: SecAggConfig, drop: dict[Round, set[int]]) -> Callable[[Target], None]:
    """A whole round with a noise plan: the exact sum (variance 0), and the
    released variance and removals of the public rule (SPEC [NZ-5], [NZ-6])."""
    def run(target: Target) -> None:
        s_honest(config, drop)(target)
        w = _server_world(target, config)
        w.run_to(Round.UNMASKING, drop)
        while not w.finished:
            w.step(drop.get(w.round, ()) if w.round is not None else ())
        res = w.server.result()
        layout = config.noise_layout
        assert layout is not None
        if res.noise_variance != layout.released_variance(len(res.survivors)) or \
                tuple(res.noise_removed) != layout.removals(res.survivors):
            raise CaseFailedError(
                f"released variance {res.noise_variance} and removals"
                f" {list(res.noise_removed)[:10]}, the rule gives"
                f" {layout.released_variance(len(res.survivors))} and"
                f" {list(layout.removals(res.survivors))[:10]}")
    return run


def _weakened(config: SecAggConfig, **changes: Any) -> Callable[[KeyRoster], KeyRoster]:
    weaker = dataclasses.replace(config, **changes)
    return lambda r: dataclasses.replace(r, config_digest=weaker.digest())


# -- the catalogue ------------------------------------------------------------


def _c(section: str, n: int, title: str, run: Callable[[Target], None]) -> Case:
    return Case(f"{section}/{n}", section, title, "client", run)


def _s(section: str, n: int, title: str, run: Callable[[Target], None]) -> Case:
    return Case(f"{section}/{n}", section, title, "server", run)


def scenario_cases() -> list[Case]:
    """Every scenario case, in spec order."""
    R = Rule  # noqa: N806 - short alias keeps the table readable
    S, A = SEMI, ACTIVE  # noqa: N806
    MIC, UNM = Round.MASKED_INPUT_COLLECTION, Round.UNMASKING  # noqa: N806
    cases = [
        # 3.4: weak setups (a configuration cannot be weakened in the protocol)
        _c("3.4", 1, "client refuses a roster made for its session at threshold 1",
           c_roster(_weakened(S, threshold=1), R.WRONG_CONFIG,
                    "a roster with the digest of the same session at t=1")),
        _c("3.4", 2, "client refuses a roster made for its session without its own id",
           c_roster(_weakened(S, num_clients=4, client_ids=(2, 3, 4, 5)), R.WRONG_CONFIG,
                    "a roster with the digest of the session minus client 1")),
        _c("3.4", 3, "active: client refuses a roster downgrading its session to semi-honest",
           c_roster(_weakened(A, mode=SecurityMode.SEMI_HONEST), R.WRONG_CONFIG,
                    "a roster with the digest of the session in semi-honest mode", A)),
        # 9: wire format, both directions
        _c("9.1", 1, "client refuses bytes that are not a SecAggMessage",
           c_wire(_cut, Round.SHARE_KEYS, "a truncated roster")),
        _c("9.1", 2, "client refuses an unknown protocol version",
           c_wire(_version_2, Round.SHARE_KEYS, "a roster with version 2",
                  Rule.UNSUPPORTED_VERSION)),
        _c("9.2", 1, "client refuses a roster with a 31-byte key",
           c_wire(_truncated_key, Round.SHARE_KEYS, "a roster with a truncated key")),
        _c("9.2", 2, "client refuses a share delivery listing one sender twice",
           c_wire(_duplicate_sender, MIC, "a delivery with a duplicated sender")),
        _c("9.2", 3, "client refuses an unmasking request listing a survivor twice",
           c_wire(_duplicate_survivor, UNM, "a survivor list with a duplicate")),
        _c("9.2", 7, "client refuses a roster listing one sender twice",
           c_wire(_duplicate_entry, Round.SHARE_KEYS, "a roster repeating client 4's entry")),
        _s("9.1", 3, "server refuses bytes that are not a SecAggMessage",
           s_round(Round.SHARE_KEYS, _bytes(_cut), R.MALFORMED, "truncated bytes")),
        _s("9.1", 4, "server refuses an unknown protocol version",
           s_round(Round.SHARE_KEYS, _bytes(_version_2), R.UNSUPPORTED_VERSION, "version 2")),
        _s("9.2", 4, "server refuses an advertisement with a 33-byte key",
           s_advert(lambda _, a: _edit(a[1], encryption_key=decode(a[1]).encryption_key  # type: ignore[union-attr]
                                       + b"\0"), R.MALFORMED, "a 33-byte key")),
        _s("9.2", 5, "server refuses encrypted shares listing one recipient twice",
           s_round(Round.SHARE_KEYS, _dup_ids_shares, R.MALFORMED, "a duplicated recipient")),
        _s("9.2", 6, "server refuses an unmasking response listing one owner twice",
           s_round(UNM, _dup_owner, R.MALFORMED, "a duplicated share owner")),
        _s("9.3", 1, "server refuses a masked vector of the wrong length",
           s_round(MIC, _masked(lambda v: v[:-1]), R.WRONG_LENGTH, "a short masked vector")),
        _s("9.3", 2, "server refuses a masked vector whose bytes are not whole elements",
           s_round(MIC, _misaligned, R.MALFORMED, "a misaligned masked vector")),
        _s("9.3", 3, "server refuses a masked vector at the wrong element width",
           s_round(MIC, _masked(lambda v: v.astype("<u4")), R.MALFORMED,
                   "4-byte elements in a 16-bit ring")),
        # 10.1 (section 10.1a): sparse roster delivery, cases 21..25
        _c("10.1", 21, "client takes part in a whole round with sparse roster delivery",
           c_honest(MERKLE)),
        _c("10.1", 22, "client refuses a neighbour's entry whose inclusion proof is altered",
           c_sparse(_bad_proof, R.ROSTER_PROOF_INVALID, "a proof with one bit flipped")),
        _c("10.1", 23, "client refuses a sparse roster leaving out a neighbour",
           c_sparse(_missing_neighbour, R.ROSTER_NOT_NEIGHBOURS, "a neighbour's entry removed")),
        _c("10.1", 24, "client refuses a sparse roster with a non-neighbour's entry",
           c_sparse(_extra_entry, R.ROSTER_NOT_NEIGHBOURS,
                    "a non-neighbour's genuine entry and proof added")),
        _c("10.1", 25, "client refuses an id bitmap with a bit past the invited ids",
           c_sparse(_padding_bit, R.ROSTER_ID_SET_INVALID, "a padding bit set")),
        _c("10.1", 27, "client refuses a sparse roster whose id set leaves it out",
           c_sparse(_bitmap_without_self, R.OWN_KEY_ALTERED, "client 1's bit cleared")),
        _c("10.1", 28, "client refuses a sparse roster made for another configuration",
           c_sparse(_sparse_other_config, R.WRONG_CONFIG, "a zero configuration digest")),
        _c("10.1", 29, "client refuses a sparse roster addressed to another client",
           c_sparse(_sparse_misaddressed, R.MALFORMED, "client 2's recipient id")),
        # 10.1: advertise keys and the roster
        _s("10.1", 1, "server refuses an advertisement from an uninvited client",
           s_advert(_unknown_sender, R.UNKNOWN_PEER, "sender 99")),
        _s("10.1", 2, "server refuses a second advertisement from one client",
           s_advert(lambda _, a: a[2], R.DUPLICATE_MESSAGE, "a repeated advertisement")),
        _s("10.1", 3, "server refuses a key already advertised by another client",
           s_advert(_copied_key, R.DUPLICATE_KEY, "a copied masking key")),
        _s("10.1", 4, "server refuses two equal keys in one advertisement",
           s_advert(_equal_keys, R.DUPLICATE_KEY, "encryption key == masking key")),
        _s("10.1", 5, "active: server refuses an advertisement with a forged signature",
           s_advert(_forged_advert, R.INVALID_SIGNATURE, "another client's signature", A)),
        _s("10.1", 6, "active: server refuses an unsigned advertisement",
           s_advert(_unsigned_advert, R.MISSING_SIGNATURE, "no signature", A)),
        _c("10.1", 7, "client refuses a roster with a duplicated key",
           c_roster(_dup_key, R.DUPLICATE_KEY, "a roster repeating a key")),
        _c("10.1", 8, "client refuses a roster below threshold",
           c_roster(lambda r: dataclasses.replace(r, entries=r.entries[:2]),
                    R.BELOW_THRESHOLD, "a roster of 2 with threshold 3")),
        _c("10.1", 9, "client refuses a roster that alters its own keys",
           c_roster(_own_key, R.OWN_KEY_ALTERED, "a roster with a substituted own key")),
        _c("10.1", 10, "client refuses a roster made for another configuration",
           c_roster(lambda r: dataclasses.replace(r, config_digest=bytes(32)),
                    R.WRONG_CONFIG, "a roster with another configuration digest")),
        _c("10.1", 11, "client refuses a roster not sorted by sender",
           c_roster(lambda r: dataclasses.replace(r, entries=r.entries[::-1]), R.MALFORMED,
                    "a roster in descending order")),
        _c("10.1", 12, "active: client refuses a roster with a forged signature",
           c_roster(_forged, R.INVALID_SIGNATURE, "a roster entry with another's signature",
                    A)),
        _c("10.1", 13, "active: client refuses a roster with a missing signature",
           c_roster(_unsigned, R.MISSING_SIGNATURE, "an unsigned roster entry", A)),
        _c("10.1", 14, "active: client refuses a roster with a substituted key",
           c_roster(_substituted, R.INVALID_SIGNATURE, "a server-chosen masking key", A)),
        _s("10.1", 15, "server refuses low-order keys and finishes without that client",
           s_low_order),
        _c("10.1", 16, "active: client refuses a roster with a substituted seed commitment",
           c_roster(lambda r: _with_entry(r, 3, seed_commitment=bytes(32)),
                    R.INVALID_SIGNATURE, "a server-chosen seed commitment", A)),
        _c("10.1", 17, "client refuses a roster that leaves out its own entry",
           c_roster(lambda r: dataclasses.replace(r, entries=r.entries[1:]),
                    R.OWN_KEY_ALTERED, "a roster without client 1's entry")),
        _c("10.1", 18, "client draws fresh keys and a fresh seed for every session",
           c_fresh_keys),
        _c("10.1", 19, "client refuses a roster naming a client outside the configuration",
           c_roster(_stranger_entry, R.UNKNOWN_PEER, "an entry from client 6 of 5")),
        _c("10.1", 20, "client refuses a roster with a low-order encryption key",
           c_roster(_low_order_entry, R.INVALID_PUBLIC_KEY,
                    "client 3's encryption key of order 8 (an all-zero agreement)")),
        _c("10.1", 26, "client refuses a roster with a non-canonical key",
           c_roster(_top_bit_entry, R.INVALID_PUBLIC_KEY, "a masking key with its top bit set")),
        # 10.2: share keys
        _s("10.2", 1, "server refuses shares not addressed to exactly the neighbours",
           s_round(Round.SHARE_KEYS, _wrong_recipients, R.WRONG_RECIPIENTS,
                   "shares missing a recipient")),
        _s("10.2", 2, "server refuses shares addressed to the sender itself",
           s_round(Round.SHARE_KEYS, _shares_to_itself, R.WRONG_RECIPIENTS,
                   "a share for the sender itself")),
        _s("10.2", 3, "server refuses a message with another session id",
           s_round(Round.SHARE_KEYS, _wrong_session, R.WRONG_SESSION, "a zero session id")),
        _s("10.2", 4, "server refuses a late advertisement",
           s_round(Round.SHARE_KEYS, _late_advert, R.WRONG_ROUND,
                   "an advertisement during SHARE_KEYS")),
        _s("10.2", 5, "server refuses an early masked input",
           s_round(Round.SHARE_KEYS, _early_masked, R.WRONG_ROUND,
                   "a masked input during SHARE_KEYS")),
        _c("10.2", 6, "client refuses a delivery from another session",
           c_replay),
        _c("10.2", 7, "client refuses a delivery sent before the roster", c_out_of_order),
        _s("10.2", 8, "server refuses a second share message from one client",
           s_duplicate(Round.SHARE_KEYS)),
        # 10.3: masked input collection
        _c("10.3", 1, "client excludes and reports a peer whose ciphertext was tampered with",
           c_excludes(_tampered, "a flipped tag bit")),
        _c("10.3", 2, "client excludes and reports a peer whose ciphertext was redirected",
           c_excludes(_redirected, "client 3's shares for client 2")),
        _c("10.3", 3, "client refuses ciphertexts of another session relabelled",
           c_relabelled),
        _c("10.3", 4, "client refuses a share claimed to come from itself",
           c_delivery(_from_itself, R.UNKNOWN_PEER, "a share from the recipient itself")),
        _s("10.3", 5, "server refuses a duplicate masked input", s_duplicate_masked),
        _s("10.3", 6, "server refuses a masked input from a client that never shared",
           s_not_shared),
        _s("10.3", 7, "server refuses a masked entry outside Z_2^k",
           s_round(MIC, _masked(lambda v: v | 4096), R.VALUE_OUT_OF_RANGE,
                   "an entry of at least 2^12 in a 12-bit ring", TWELVE)),
        _s("10.3", 8, "garbage ciphertexts to one peer: the others' exact sum",
           s_garbage_ciphertexts((3,))),
        _s("10.3", 9, "garbage ciphertexts to every peer: the others' exact sum",
           s_garbage_ciphertexts((1, 3, 4, 5))),
        _c("10.3", 10, "client refuses a delivery from fewer than t - 1 senders",
           c_delivery(_few_senders, R.BELOW_THRESHOLD, "shares from 1 peer, threshold 3")),
        _s("10.3", 11, "server refuses a complaint about a client whose shares it never"
           " delivered", s_round(MIC, _excluded_never_delivered, R.MALFORMED,
                                 "excluded names client 4, which never shared",
                                 drop={Round.SHARE_KEYS: {4}})),
        _s("10.3", 12, "server refuses a complaint list leaving fewer than t - 1 peers",
           s_round(MIC, _excluded_too_many, R.BELOW_THRESHOLD,
                   "excluded names 3 of the sender's 4 peers")),
        # 10.4: consistency check (active)
        _s("10.4", 1, "active: server refuses a forged consistency signature",
           s_round(Round.CONSISTENCY_CHECK, _forged_consistency, R.INVALID_SIGNATURE,
                   "another client's signature", A)),
        _c("10.4", 2, "active, sparse graph: client refuses to sign a list below the"
           " signature quorum", c_short_list_unsigned),
        _s("10.4", 3, "active, sparse graph: server aborts with t signatures below the quorum",
           s_below_quorum),
        _c("10.4", 4, "active: client refuses to sign a survivor list without itself",
           c_consistency(lambda r: dataclasses.replace(
               r, survivors=tuple(c for c in r.survivors if c != UNDER_TEST)),
               R.LISTS_CONTRADICT_VIEW, "a survivor list that leaves out client 1")),
        _c("10.4", 5, "active: client refuses to sign a list naming a client that never"
           " shared", c_consistency(lambda r: dataclasses.replace(
               r, survivors=tuple(sorted({*r.survivors, 4}))), R.LISTS_CONTRADICT_VIEW,
               "a survivor list naming client 4, which never shared keys",
               {Round.SHARE_KEYS: {4}})),
        _c("10.4", 6, "active: client signs at most one survivor list", c_signs_once),
        _s("10.4", 7, "active: server refuses a second consistency signature from one client",
           s_duplicate(Round.CONSISTENCY_CHECK, A)),
        # 10.5: unmasking
        _c("10.5", 1, "client refuses a request for both shares of a peer",
           c_unmask(_both, R.OVERLAPPING_LISTS, "client 2 listed as survivor and dropped")),
        _c("10.5", 2, "client refuses a second request that flips a peer's share",
           c_second_request(True)),
        _c("10.5", 3, "client refuses a different second unmasking request",
           c_second_request(False)),
        _c("10.5", 4, "client refuses a survivor list below threshold",
           c_unmask(_below, R.BELOW_THRESHOLD, "2 survivors with threshold 3")),
        _c("10.5", 5, "client refuses being listed as dropped",
           c_unmask(_self_dropped, R.OWN_SHARE_REQUESTED, "the client's own key share")),
        _c("10.5", 6, "client refuses lists naming a client that never shared",
           c_never_shared),
        _c("10.5", 7, "active: client refuses fewer consistency signatures than the quorum",
           c_unmask(_few_signatures, R.NOT_ENOUGH_SIGNATURES, "2 signatures, quorum 3", A,
                    {})),
        _c("10.5", 8, "active: client refuses a forged consistency signature",
           c_unmask(_forged_signature, R.INVALID_SIGNATURE, "client 4's signature as 3's", A,
                    {})),
        _c("10.5", 9, "active: client refuses a survivor list other than the one it signed",
           c_unmask(_other_list, R.LISTS_CONTRADICT_VIEW, "a different survivor list", A, {})),
        _s("10.5", 10, "server refuses a response revealing both shares of a peer",
           s_round(UNM, _both_shares, R.BOTH_SHARES_REQUESTED, "both shares of client 2")),
        _s("10.5", 11, "server refuses a response missing a requested share",
           s_round(UNM, _missing_share, R.MALFORMED, "no share for client 3")),
        _s("10.5", 12, "forged seed share among exactly t: the server aborts, typed",
           s_forged_share((1, 2, 3), False)),
        _s("10.5", 13, "forged seed share with t+1 responders: exact sum, the forger named",
           s_forged_share((1, 2, 3, 4), False)),
        _s("10.5", 14, "random seed share with t+2 responders: exact sum, the forger named",
           s_forged_share((1, 2, 3, 4, 5), True)),
        _c("10", 1, "semi-honest: client answers exact duplicates with the same bytes",
           c_duplicates(S)),
        _c("10", 2, "active: client answers exact duplicates with the same bytes",
           c_duplicates(A)),
        _c("10.5", 15, "active, sparse graph: client refuses split survivor lists (t"
           " signatures, fewer than the quorum)", c_split_lists),
        _c("10.5", 16, "client refuses a dropped list naming a client outside the roster",
           c_stranger_dropped),
        _c("10.5", 17, "active: client refuses a consistency signature from a non-survivor",
           c_outsider_signature),
        _s("10.5", 18, "forged key share among exactly t: the server aborts, typed",
           s_forged_share((1, 2, 3), False, key=True)),
        _s("10.5", 19, "forged key share with t+1 responders: exact sum, the forger named",
           s_forged_share((1, 2, 3, 4), False, key=True)),
        _s("10.5", 20, "server aborts when a complaint is contradicted by its sender",
           s_contradicted_complaint),
        _s("10.5", 21, "server refuses a second unmasking response from one client",
           s_duplicate(UNM)),
        _c("10.5", 22, "client refuses a survivor list naming a client outside the roster",
           c_stranger_survivor),
        _s("10.5", 23, "server refuses a share that is not in the field",
           s_round(UNM, _share_outside_field, R.MALFORMED, "a share limb equal to p")),
        # 11/12: dropouts, aborts, whole rounds
        _c("11", 1, "semi-honest: client under test completes a round with a dropout",
           c_honest(S)),
        _c("11", 2, "active: client under test completes a round with a dropout", c_honest(A)),
        _s("11", 3, "semi-honest: server sums exactly with no dropout", s_honest(S, {})),
        _s("11", 4, "semi-honest: server recovers drops at every stage",
           s_honest(SecAggConfig(num_clients=7, vector_length=5, bits=12, threshold=3),
                    {Round.ADVERTISE_KEYS: {7}, Round.SHARE_KEYS: {6}, MIC: {5}, UNM: {4}})),
        _s("11", 5, "active: server recovers drops before and after the masked input",
           s_honest(A, {MIC: {5}, Round.CONSISTENCY_CHECK: {4}})),
        _c("11", 6, "SecAgg+ graph: client under test completes a round with a dropout",
           c_honest(HARARY)),
        _s("11", 7, "SecAgg+ graph: server recovers drops before and after sharing",
           s_honest(HARARY, {Round.SHARE_KEYS: {7}, MIC: {5}})),
        _s("12", 1, "server aborts below threshold and reports no result", s_abort),
        _s("12", 2, "server aborts, typed, when complaints leave fewer than t",
           s_complaints_leave_too_few),
        _s("12", 3, "SecAgg+ graph: server aborts when fewer than t holders of a seed answer",
           s_too_few_holders),
        # 16: distributed noise
        _c("16", 1, "noise plan: client under test completes a round with a dropout",
           c_honest(NOISE)),
        _c("16", 2, "client refuses a request for an excess seed the rule keeps",
           c_unmask(_greedy_noise, R.NOISE_REMOVAL_NOT_SELECTED,
                    "an unmasking request asking for one more excess seed", NOISE)),
        _c("16", 3, "client refuses a request for a dropped client's excess seed",
           c_unmask(_dropped_noise, R.NOISE_REMOVAL_NOT_SELECTED,
                    "an unmasking request asking for a dropped client's excess seed", NOISE)),
        _c("16", 4, "client refuses a roster entry without all its noise commitments",
           c_roster(_no_commitment, R.MALFORMED, "a roster entry missing a noise commitment",
                    NOISE)),
        _s("16", 5, "noise plan: server removes the rule's excess, reports its variance",
           s_noise(NOISE, {MIC: {5}, UNM: {4}})),
        _s("16", 6, "server refuses an advertisement without all its noise commitments",
           s_advert(_advert_no_commitment, R.MALFORMED,
                    "an advertisement missing a noise commitment", NOISE)),
        _s("16", 7, "server refuses a response carrying an unrequested noise share",
           s_round(UNM, _unrequested_noise_share, R.MALFORMED,
                   "a noise share nobody asked for", NOISE)),
    ]
    return sorted(cases, key=lambda c: [int(p) for p in c.id.replace("/", ".").split(".")])
