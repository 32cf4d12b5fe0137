"""One malicious client cannot make the server return a wrong sum, cannot get
an honest client blamed, and cannot stop everyone's round (SPEC [R0-2],
[R0-10], [R2-5], [R2-6], [R4-11], [CLI-2]).

Every test here performs the attack.  Against the code before these rules, a
forged share among exactly t gave a wrong sum without an error, a forged
share among t+1 aborted blaming whichever holder was last, a low-order key or
one garbage ciphertext made every honest client abort, and a duplicated
server message aborted its recipient for good.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from securefl import Round, SecAggConfig, SecurityMode
from securefl.errors import (
    AbortError,
    InvalidKeyError,
    LocalProtocolError,
    RemoteProtocolError,
    Rule,
)
from securefl.hazmat import shamir
from securefl.hazmat.agreement import KeyPair, clamp, is_clamped, matches_public, validate_public
from securefl.hazmat.randomness import SystemRandom
from securefl.protocol import ClientSession
from securefl.protocol.inmemory import SessionDriver
from securefl.protocol.messages import (
    AdvertiseKeys,
    EncryptedShares,
    KeyRoster,
    MaskedInput,
    ShareDelivery,
    UnmaskingRequest,
    UnmaskingResponse,
)
from securefl.protocol.server import AggregationResult

RNG = SystemRandom()
P = shamir.PRIME
FAST = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# Every encoding of a point of small order on Curve25519 or its twist (the
# libsodium blocklist: 0, 1, the two points of order 8, p-1, p, p+1, and the
# same with the ignored top bit set).
LOW_ORDER = [bytes.fromhex(h) for h in (
    "00" * 32, "01" + "00" * 31,
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ec" + "ff" * 30 + "7f", "ed" + "ff" * 30 + "7f", "ee" + "ff" * 30 + "7f",
    "00" * 31 + "80", "01" + "00" * 30 + "80",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b880",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f11d7",
    "ec" + "ff" * 31, "ed" + "ff" * 31, "ee" + "ff" * 31)]


# -- a round driver that lets a test play one malicious client ----------------


@dataclass
class Attack:
    """What the malicious party changes; every hook defaults to honesty."""

    stop: dict[int, Round] = field(default_factory=dict)
    """client -> first round it no longer answers."""
    reply: Callable[[Round, int, Any], Any] | None = None
    """edit a client's reply before the server gets it."""
    delivery: Callable[[Round, int, Any], Any] | None = None
    """edit a server message before the client gets it."""
    responders: set[int] | None = None
    """who answers the unmasking request (default: everyone asked)."""
    duplicate: bool = False
    """deliver every server message twice."""
    start: Callable[[int, ClientSession, AdvertiseKeys], AdvertiseKeys] | None = None
    """edit a client (its keys) and its advertisement right after ``start()``."""


@dataclass
class Outcome:
    result: AggregationResult | None
    abort: AbortError | None
    inputs: dict[int, np.ndarray]
    config: SecAggConfig
    seed_revealed: set[int] = field(default_factory=set)
    key_revealed: set[int] = field(default_factory=set)
    refused: dict[int, Rule] = field(default_factory=dict)

    def exact(self) -> bool:
        assert self.result is not None
        total = np.zeros(self.config.vector_length, dtype=np.uint64)
        for c in self.result.survivors:
            total += self.inputs[c]
        total &= np.uint64(self.config.modulus_mask)
        return bool((self.result.total == total).all())


class _Attacked(SessionDriver):
    """The in-memory driver with the attack's hooks."""

    def __init__(self, config: SecAggConfig, attack: Attack, out: Outcome) -> None:
        super().__init__(config, out.inputs, dropouts=attack.stop)
        self.attack, self.out = attack, out

    def answers(self, cid: int, rnd: Round) -> bool:
        responders = self.attack.responders
        if rnd is Round.UNMASKING and responders is not None and cid not in responders:
            return False
        return super().answers(cid, rnd)

    def to_client(self, rnd: Round, cid: int, message: Any) -> Any:
        return message if self.attack.delivery is None else self.attack.delivery(rnd, cid,
                                                                                  message)

    def client_start(self, cid: int) -> Any:
        advert = super().client_start(cid)
        if self.attack.start is not None:
            advert = self.attack.start(cid, self.clients[cid], advert)
        return advert

    def client_handle(self, rnd: Round, cid: int, message: Any) -> Any:
        reply = super().client_handle(rnd, cid, message)
        if self.attack.duplicate:
            assert self.clients[cid].handle(message) is reply
        return reply

    def to_server(self, rnd: Round, cid: int, message: Any) -> Any:
        if self.attack.reply is not None:
            message = self.attack.reply(rnd, cid, message)
        if isinstance(message, UnmaskingResponse):
            self.out.seed_revealed |= set(message.self_mask_shares)
            self.out.key_revealed |= set(message.key_shares)
        return message

    def server_receive(self, rnd: Round, cid: int, message: Any) -> None:
        try:
            super().server_receive(rnd, cid, message)
        except RemoteProtocolError as exc:
            self.out.refused[cid] = exc.rule


def drive(config: SecAggConfig, attack: Attack) -> Outcome:
    """Run one round with real sessions; honest clients must never abort."""
    gen = np.random.default_rng(7)
    inputs = {c: gen.integers(0, 2**config.bits, config.vector_length, dtype=np.uint64)
              for c in config.ids}
    out = Outcome(None, None, inputs, config)
    driver = _Attacked(config, attack, out)
    try:
        driver.run()
    except AbortError as exc:
        out.abort = exc
        return out
    out.result = driver.result
    return out


# -- SPEC [R4-11]: shares are checked against commitments --------------------------


def _forge(share: bytes, random: bool) -> bytes:
    if random:
        words = np.frombuffer(RNG.token_bytes(64), dtype="<u4") % np.uint32(P)
        return words.astype("<u4").tobytes()
    raw = bytearray(share)
    raw[:4] = ((int.from_bytes(raw[:4], "little") + 1) % P).to_bytes(4, "little")
    return bytes(raw)


@FAST
@given(data=st.data(), t=st.integers(1, 6), extra=st.integers(0, 4),
       random=st.booleans())
def test_reconstruction_locates_exactly_the_forged_shares(data: st.DataObject, t: int,
                                                          extra: int, random: bool) -> None:
    holders = sorted(data.draw(st.sets(st.integers(1, 10_000), min_size=t + extra,
                                       max_size=t + extra)))
    h = len(holders)
    radius = (h - t + 1) // 2
    forgers = data.draw(st.sets(st.sampled_from(range(h)), min_size=1,
                                max_size=max(1, radius)))
    secrets = [RNG.token_bytes(32) for _ in range(3)]
    shares = shamir.split(secrets, holders, t, RNG).astype(np.uint64)
    victim = data.draw(st.integers(0, 2))
    for i in forgers:
        shares[i, victim] = np.frombuffer(_forge(shamir.share_to_bytes(shares[i, victim]),
                                                 random), dtype="<u4")
    rec = shamir.Reconstructor(holders, t)

    def verify(i: int, value: bytes) -> bool:
        return value == secrets[i]
    if h == t:
        with pytest.raises(shamir.UnverifiableSecretError) as info:
            rec.reconstruct_verified(shares, verify, RNG)
        assert info.value.index == victim
        return
    assume(len(forgers) <= radius)
    found = rec.reconstruct_verified(shares, verify, RNG)
    assert found.secrets == secrets
    assert found.excluded == {victim: tuple(sorted(holders[i] for i in forgers))}


def test_one_holder_forging_every_secret_is_found_once_then_tried_first() -> None:
    holders = list(range(1, 41))
    secrets = [RNG.token_bytes(32) for _ in range(30)]
    shares = shamir.split(secrets, holders, 20, RNG).astype(np.uint64)
    shares[7] = (shares[7] + 1) % P
    calls = []

    def verify(i: int, value: bytes) -> bool:
        calls.append(i)
        return value == secrets[i]
    found = shamir.Reconstructor(holders, 20).reconstruct_verified(shares, verify, RNG)
    assert found.secrets == secrets
    assert set(found.excluded) == set(range(30))
    assert all(bad == (8,) for bad in found.excluded.values())
    # first secret: at most one check per left-out holder; then the suspect first
    assert len(calls) <= 30 + 40 + 4 * 29


def test_x25519_keys_are_stored_clamped_and_checked_bit_for_bit() -> None:
    pair = KeyPair.generate(RNG)
    raw = pair.private_bytes()
    assert is_clamped(raw) and matches_public(raw, pair.public_bytes)
    unclamped = bytes([raw[0] | 1]) + raw[1:]
    # the same X25519 function, but not the committed scalar: refused
    assert KeyPair.from_private_bytes(unclamped).public_bytes == pair.public_bytes
    assert not matches_public(unclamped, pair.public_bytes)
    assert clamp(unclamped) == raw


def _round(n: int, t: int, mode: SecurityMode = SecurityMode.SEMI_HONEST) -> SecAggConfig:
    return SecAggConfig(num_clients=n, vector_length=6, bits=16, threshold=t, mode=mode)


@FAST
@given(data=st.data(), n=st.integers(3, 8), kind=st.sampled_from(["seed", "key"]),
       random=st.booleans(), active=st.booleans())
def test_a_forged_share_never_gives_a_wrong_sum_or_blames_an_honest_holder(
        data: st.DataObject, n: int, kind: str, random: bool, active: bool) -> None:
    mode = SecurityMode.ACTIVE if active else SecurityMode.SEMI_HONEST
    low = n // 2 + 1 if active else 2
    t = data.draw(st.integers(low, n - 1), label="t")
    dropped = n  # drops after sharing, so its masking key is reconstructed
    survivors = [c for c in range(1, n + 1) if c != dropped]
    count = data.draw(st.integers(t, min(t + 3, len(survivors))), label="responders")
    responders = sorted(data.draw(st.sets(st.sampled_from(survivors), min_size=count,
                                          max_size=count), label="who"))
    forger = responders[data.draw(st.integers(0, count - 1), label="position")]
    owner = (dropped if kind == "key"
             else data.draw(st.sampled_from([c for c in survivors if c != forger]),
                            label="owner"))

    def reply(rnd: Round, c: int, msg: Any) -> Any:
        if c != forger or not isinstance(msg, UnmaskingResponse):
            return msg
        field_name = "key_shares" if kind == "key" else "self_mask_shares"
        shares = dict(getattr(msg, field_name))
        shares[owner] = _forge(shares[owner], random)
        return dataclasses.replace(msg, **{field_name: shares})

    out = drive(_round(n, t, mode), Attack(stop={dropped: Round.MASKED_INPUT_COLLECTION},
                                           reply=reply, responders=set(responders)))
    assert not out.refused
    if count == t:
        assert out.result is None and out.abort is not None
        assert out.abort.rule is Rule.COMMITMENT_MISMATCH
        return
    assert out.result is not None and out.exact()
    assert {(b.peer, b.rule) for b in out.result.blame} == {(forger, Rule.FORGED_SHARE)}


# -- SPEC [R0-2]: low-order keys are refused at R0 -------------------------------


def test_every_low_order_encoding_is_refused_and_random_keys_are_not() -> None:
    for point in LOW_ORDER:
        with pytest.raises(InvalidKeyError):
            validate_public(point)
    for _ in range(20):
        validate_public(KeyPair.generate(RNG).public_bytes)


@pytest.mark.parametrize("which", ["encryption_key", "masking_key"])
@pytest.mark.parametrize("mode", list(SecurityMode))
def test_a_low_order_key_excludes_only_its_advertiser(which: str, mode: SecurityMode) -> None:
    evil = 2

    def reply(rnd: Round, c: int, msg: Any) -> Any:
        if c == evil and isinstance(msg, AdvertiseKeys):
            return dataclasses.replace(msg, **{which: LOW_ORDER[2]})
        return msg
    out = drive(_round(5, 3, mode), Attack(reply=reply))
    assert out.refused == {evil: Rule.INVALID_PUBLIC_KEY}
    assert out.result is not None and out.exact()
    assert out.result.survivors == (1, 3, 4, 5)


# -- SPEC [R2-6]: undecryptable shares exclude one end, not the round ----------


def _garbage(evil: int, victims: set[int]) -> Callable[[Round, int, Any], Any]:
    def reply(rnd: Round, c: int, msg: Any) -> Any:
        if c == evil and isinstance(msg, EncryptedShares):
            cts = {v: (RNG.token_bytes(len(ct)) if v in victims else ct)
                   for v, ct in msg.ciphertexts.items()}
            return dataclasses.replace(msg, ciphertexts=cts)
        return msg
    return reply


@FAST
@given(data=st.data(), n=st.integers(4, 9), active=st.booleans())
def test_garbage_ciphertexts_cost_the_round_only_the_sender(data: st.DataObject, n: int,
                                                            active: bool) -> None:
    mode = SecurityMode.ACTIVE if active else SecurityMode.SEMI_HONEST
    t = data.draw(st.integers(n // 2 + 1 if active else 2, n - 1), label="t")
    evil = data.draw(st.integers(1, n), label="evil")
    honest = [c for c in range(1, n + 1) if c != evil]
    victims = data.draw(st.sets(st.sampled_from(honest), min_size=1), label="victims")
    late = [Round.SHARE_KEYS, Round.MASKED_INPUT_COLLECTION, Round.UNMASKING]
    if active:
        late.append(Round.CONSISTENCY_CHECK)
    stop = data.draw(st.dictionaries(st.sampled_from(honest), st.sampled_from(late),
                                     max_size=max(0, n - t - 1)), label="stop")
    if data.draw(st.booleans(), label="evil drops after sharing"):
        stop[evil] = Round.MASKED_INPUT_COLLECTION
    out = drive(_round(n, t, mode), Attack(stop=stop, reply=_garbage(evil, victims)))
    # the server never learns both kinds of share of anyone
    assert not out.seed_revealed & out.key_revealed
    masked = [c for c in range(1, n + 1)
              if c not in stop or stop[c] > Round.MASKED_INPUT_COLLECTION]
    complainers = sorted(c for c in victims if c in masked)
    # [R2-6]: both ends of a maximal matching (here one edge: the smallest
    # complainer and evil), then, to a fixpoint, the holders of a removed
    # client's key when fewer than t survivors hold it
    matched = {evil, complainers[0]} if complainers and evil in masked else set()
    gone = matched | ({evil} if complainers and evil not in masked else set())
    alive = [c for c in masked if c not in matched]
    changed = True
    while changed:
        changed = False
        for j in sorted(gone):
            holders = [c for c in alive if c != j and not (j == evil and c in victims)]
            if 0 < len(holders) < t:
                alive = [c for c in alive if c not in holders]
                gone |= set(holders)
                changed = True
                break
    expected = alive
    # when must the round abort?  (threshold everywhere, and t holders per secret)
    sharers = [c for c in range(1, n + 1) if c not in stop or stop[c] > Round.SHARE_KEYS]
    signers = [c for c in expected if c not in stop or stop[c] > Round.CONSISTENCY_CHECK]
    responders = [c for c in signers if c not in stop]
    must_abort = min(len(sharers), len(expected), len(signers), len(responders)) < t
    for u in set(sharers) - set(expected):
        takers = [c for c in expected if not (u == evil and c in victims)]
        if takers and len([c for c in takers if c in responders]) < t:
            must_abort = True
    if out.result is None:
        assert must_abort
        assert out.abort is not None
        assert out.abort.rule in (None, Rule.COMPLAINTS_LEFT_TOO_FEW)
        assert out.abort.available is not None and out.abort.needed is not None
        assert out.abort.available < out.abort.needed
        return
    assert not must_abort
    assert out.exact()
    assert list(out.result.survivors) == expected
    assert {b.peer for b in out.result.blame} == matched


def _refuse_shares_of(victim: int, accusers: set[int]) -> Callable[[Round, int, Any], Any]:
    """The network (or server) breaks ``victim``'s ciphertexts to ``accusers``:
    from the server's view exactly like ``accusers`` lying about ``victim``."""
    def delivery(rnd: Round, c: int, msg: Any) -> Any:
        if c in accusers and isinstance(msg, ShareDelivery) and victim in msg.ciphertexts:
            cts = dict(msg.ciphertexts)
            cts[victim] = bytes(len(cts[victim]))
            return dataclasses.replace(msg, ciphertexts=cts)
        return msg
    return delivery


@pytest.mark.parametrize("mode", list(SecurityMode))
def test_a_client_accusing_several_peers_costs_itself_and_one_of_them(
        mode: SecurityMode) -> None:
    liar = 1
    deliveries = [_refuse_shares_of(v, {liar}) for v in (3, 4)]

    def delivery(rnd: Round, c: int, msg: Any) -> Any:
        for d in deliveries:
            msg = d(rnd, c, msg)
        return msg
    out = drive(_round(6, 4, mode), Attack(delivery=delivery))
    assert out.result is not None and out.exact()
    # the first complaint (1 reports 3) is the matching; it covers 1 reports 4
    assert out.result.survivors == (2, 4, 5, 6)
    assert set(out.result.excluded) == {liar, 3}
    assert [(b.peer, b.rule) for b in out.result.blame] == [(liar, Rule.SHARES_REFUSED),
                                                            (3, Rule.SHARES_REFUSED)]


def test_a_single_accusation_drops_both_ends_and_only_them() -> None:
    out = drive(_round(6, 4), Attack(delivery=_refuse_shares_of(3, {1})))
    assert out.result is not None and out.exact()
    assert out.result.survivors == (2, 4, 5, 6)
    assert [(b.peer, b.rule) for b in out.result.blame] == [(1, Rule.SHARES_REFUSED),
                                                            (3, Rule.SHARES_REFUSED)]


def test_valid_shares_to_fewer_than_t_peers_drop_those_peers_too() -> None:
    # 7 clients, t=3: client 7 sends garbage to 1..4, valid shares to 5 and 6 only;
    # the matching removes 1 and 7; nobody else could ever remove 5's and 6's
    # masks with 7, so they go as well
    out = drive(_round(7, 3), Attack(reply=_garbage(7, {1, 2, 3, 4})))
    assert out.result is not None and out.exact()
    assert out.result.survivors == (2, 3, 4)
    assert set(out.result.excluded) == {1, 5, 6, 7}
    assert [b.peer for b in out.result.blame] == [1, 7]  # 5 and 6 are dropped, not blamed


def test_lists_must_name_an_excluded_peer_as_dropped() -> None:
    config = _round(6, 3)
    seen: dict[int, UnmaskingRequest] = {}

    def delivery(rnd: Round, c: int, msg: Any) -> Any:
        # 1 and 2 report 3; the matching removes 1 and 3, 2 survives
        msg = _refuse_shares_of(3, {1, 2})(rnd, c, msg)
        if isinstance(msg, UnmaskingRequest):
            seen[c] = msg
            if c == 2:  # the server claims 3 survived
                return dataclasses.replace(msg, survivors=(2, 3, 4, 5, 6), dropped=(1,))
        return msg
    with pytest.raises(RemoteProtocolError) as info:
        drive(config, Attack(delivery=delivery))
    assert info.value.rule is Rule.LISTS_CONTRADICT_VIEW and info.value.peer == "server"
    assert 3 in seen[2].dropped  # the honest server listed it as dropped


def test_the_server_refuses_exclusions_of_peers_never_delivered() -> None:
    def reply(rnd: Round, c: int, msg: Any) -> Any:
        if c == 2 and isinstance(msg, MaskedInput):
            return dataclasses.replace(msg, excluded=(9,))
        if c == 3 and isinstance(msg, MaskedInput):
            return dataclasses.replace(msg, excluded=(4, 1))
        return msg
    out = drive(_round(5, 3), Attack(reply=reply))
    assert out.refused == {2: Rule.MALFORMED, 3: Rule.MALFORMED}
    assert out.result is not None and out.exact() and out.result.survivors == (1, 4, 5)


# -- SPEC [CLI-2]: duplicates are answered again -----------------------------------


@FAST
@given(data=st.data(), n=st.integers(3, 7), active=st.booleans())
def test_duplicated_server_messages_still_give_the_exact_sum(data: st.DataObject, n: int,
                                                             active: bool) -> None:
    mode = SecurityMode.ACTIVE if active else SecurityMode.SEMI_HONEST
    t = data.draw(st.integers(n // 2 + 1 if active else 1, n), label="t")
    stop = data.draw(st.dictionaries(st.integers(1, n), st.sampled_from(list(Round)),
                                     max_size=max(0, n - t)), label="stop")
    out = drive(_round(n, t, mode), Attack(stop=stop, duplicate=True))
    assert not out.refused
    if out.result is None:
        assert out.abort is not None and out.abort.rule is None
    else:
        assert out.exact()


def test_a_different_message_in_an_answered_slot_still_aborts() -> None:
    config = _round(5, 3)
    session = ClientSession(config, 1, input=np.zeros(6, dtype=np.uint64))
    others = [ClientSession(config, c, input=np.zeros(6, dtype=np.uint64)) for c in (2, 3)]
    entries = (session.start(), *(o.start() for o in others))
    roster = KeyRoster(config.digest(), entries)
    first = session.handle(roster)
    assert session.handle(roster) is first
    assert session.handle(KeyRoster(config.digest(), entries)) is first  # equal, not identical
    with pytest.raises(RemoteProtocolError) as info:
        session.handle(KeyRoster(config.digest(), entries[:2]))
    assert info.value.rule is Rule.WRONG_ROUND
    with pytest.raises(LocalProtocolError):  # aborted for good, even for the old message
        session.handle(roster)


# -- the limits SECURITY.md states ------------------------------------------------


def test_a_client_sharing_another_seed_than_it_committed_to_aborts_typed() -> None:
    config = _round(5, 3)
    liar = 4

    def delivery(rnd: Round, c: int, msg: Any) -> Any:
        if c == liar and isinstance(msg, KeyRoster):
            # after committing in R0, the client shares (and masks with) another seed
            object.__setattr__(clients_seen[liar], "_seed", RNG.token_bytes(32))
        return msg
    clients_seen: dict[int, ClientSession] = {}
    original = ClientSession.start

    def start(self: ClientSession) -> AdvertiseKeys:
        clients_seen[self.client_id] = self
        return original(self)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ClientSession, "start", start)
        out = drive(config, Attack(delivery=delivery))
    assert out.result is None and out.abort is not None
    assert out.abort.rule is Rule.COMMITMENT_MISMATCH and "client 4" in str(out.abort)


def test_a_dealer_of_one_bad_key_share_gets_that_holder_named_with_itself() -> None:
    from securefl.protocol import derivation

    dealer, holder = 5, 2
    original = derivation.encrypt_shares

    def encrypt(key: bytes, sid: bytes, sender: int, recipient: int, key_share: bytes,
                seed_share: bytes) -> bytes:
        if (sender, recipient) == (dealer, holder):
            key_share = _forge(key_share, False)
        return original(key, sid, sender, recipient, key_share, seed_share)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(derivation, "encrypt_shares", encrypt)
        out = drive(_round(5, 3), Attack(stop={dealer: Round.MASKED_INPUT_COLLECTION}))
    assert out.result is not None and out.exact()
    [blame] = out.result.blame
    assert blame.peer == holder and blame.rule is Rule.FORGED_SHARE
    assert f"client {dealer}" in blame.detail  # the dealer may be the one at fault


def test_with_t_equal_n_one_garbage_sender_makes_its_recipients_abort() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        drive(_round(4, 4), Attack(reply=_garbage(4, {1})))
    assert info.value.rule is Rule.DECRYPTION_FAILED and info.value.peer == 4


def test_more_bad_shares_than_the_radius_is_a_typed_error_never_a_wrong_secret() -> None:
    # H = t + 2 tolerates floor(3/2) = 1 bad share; with 2 bad ones (among the first t)
    # nothing can be located: a typed error, not a guess
    holders = list(range(1, 8))
    secret = RNG.token_bytes(32)
    shares = shamir.split([secret], holders, 5, RNG).astype(np.uint64)
    shares[0, 0, 0] = (shares[0, 0, 0] + 1) % P
    shares[1, 0, 3] = (shares[1, 0, 3] + 7) % P
    with pytest.raises(shamir.UnverifiableSecretError):
        shamir.Reconstructor(holders, 5).reconstruct_verified(
            shares, lambda i, v: v == secret, RNG)


def test_a_garbage_sender_that_then_drops_cannot_strand_the_few_that_took_its_shares() -> None:
    # 7 clients, t=3: 7 sends garbage to 1..4, valid shares to 5 and 6, and then sends
    # no masked input; 5 and 6 masked with 7, and only they hold its key shares
    out = drive(_round(7, 3), Attack(reply=_garbage(7, {1, 2, 3, 4}),
                                     stop={7: Round.MASKED_INPUT_COLLECTION}))
    assert out.result is not None and out.exact()
    assert out.result.survivors == (1, 2, 3, 4)
    assert set(out.result.excluded) == {5, 6}


@pytest.mark.parametrize("kind", ["seed", "key"])
@pytest.mark.parametrize("extra", [0, 1, 2, 3])
def test_a_forged_share_at_every_position_of_the_responder_order(kind: str, extra: int) -> None:
    # n = 7, t = 3, client 7 drops after sharing (its key is reconstructed);
    # responders are the first 3 + extra survivors; the forger takes every position
    t = 3
    responders = list(range(1, t + extra + 1))
    for position, forger in enumerate(responders):
        for random in (False, True):
            owner = 7 if kind == "key" else (responders[-1] if forger != responders[-1]
                                             else responders[0])

            def reply(rnd: Round, c: int, msg: Any, forger: int = forger, owner: int = owner,
                      random: bool = random) -> Any:
                if c != forger or not isinstance(msg, UnmaskingResponse):
                    return msg
                name = "key_shares" if kind == "key" else "self_mask_shares"
                shares = {**getattr(msg, name)}
                shares[owner] = _forge(shares[owner], random)
                return dataclasses.replace(msg, **{name: shares})
            out = drive(_round(7, t), Attack(stop={7: Round.MASKED_INPUT_COLLECTION},
                                             reply=reply, responders=set(responders)))
            where = f"position {position}, {'random' if random else 'limb+1'}"
            if extra == 0:
                assert out.abort is not None, where
                assert out.abort.rule is Rule.COMMITMENT_MISMATCH, where
            else:
                assert out.result is not None and out.exact(), where
                assert [(b.peer, b.rule) for b in out.result.blame] == [
                    (forger, Rule.FORGED_SHARE)], where


def test_well_encrypted_but_malformed_shares_are_excluded_like_garbage() -> None:
    from securefl.protocol import derivation

    original = derivation.encrypt_shares

    def encrypt(key: bytes, sid: bytes, sender: int, recipient: int, key_share: bytes,
                seed_share: bytes) -> bytes:
        if sender == 2:
            key_share = b"\xff" * 64  # elements not below p
        return original(key, sid, sender, recipient, key_share, seed_share)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(derivation, "encrypt_shares", encrypt)
        out = drive(_round(5, 3), Attack())
    assert out.result is not None and out.exact()
    assert out.result.survivors == (3, 4, 5)  # the matching: 1 and 2
    assert [b.peer for b in out.result.blame] == [1, 2]


@pytest.mark.parametrize("mode", list(SecurityMode))
@pytest.mark.parametrize("victims", [{1}, {1, 2, 3, 4, 6}], ids=["one peer", "every peer"])
def test_garbage_to_one_or_every_peer_gives_the_exact_sum_of_the_others(
        mode: SecurityMode, victims: set[int]) -> None:
    out = drive(_round(6, 4, mode), Attack(reply=_garbage(5, victims)))
    assert out.result is not None and out.exact()
    assert out.result.survivors == (2, 3, 4, 6)  # the matching: 1 and 5
    assert not out.seed_revealed & out.key_revealed
    assert 5 not in out.seed_revealed  # its self mask is never asked for
