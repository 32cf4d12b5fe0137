"""The adversarial review of the commitment and complaint rules, replayed
(SPEC [SSS-5], [R0-2], [R0-5], [R2-6], [R4-11], [R4-12]).

Every test performs an attack that worked before the fix:

* A1: a dealer choosing a clamped ``k`` whose "negation" ``8l - k`` is clamped
  too (same public key) got an honest holder blamed for a forger's share;
* A2/A8: a masking key advertised with the ignored top bit set, or with a
  small-order component, let its owner abort the round by dropping after R1,
  and re-encoding a copied key bypassed the duplicate-key check;
* A3: colluding accusers removed more honest clients than there are colluders;
* A4: when one complaint aborts the round (stated, tested);
* A5: a complaint forged in transit gave a wrong sum without an error.
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from securefl import Round, SecAggConfig, SecurityMode
from securefl.errors import InvalidKeyError, RemoteProtocolError, Rule
from securefl.hazmat import shamir, signing
from securefl.hazmat.agreement import (
    FIELD_PRIME,
    GROUP_ORDER,
    SCALAR_FLOOR,
    KeyPair,
    is_binding_scalar,
    is_clamped,
    key_class,
    matches_public,
    validate_public,
)
from securefl.protocol import ClientSession
from securefl.protocol import derivation as d
from securefl.protocol.messages import (
    AdvertiseKeys,
    KeyRoster,
    MaskedInput,
    ShareDelivery,
    UnmaskingResponse,
)
from tests.test_exclusion import FAST, RNG, Attack, drive

DELTA = GROUP_ORDER - 2**252


def _cfg(n: int, t: int | None, mode: SecurityMode = SecurityMode.SEMI_HONEST) -> SecAggConfig:
    return SecAggConfig(num_clients=n, vector_length=6, bits=16, threshold=t, mode=mode)


def _readvertise(cfg: SecAggConfig, c: int, client: ClientSession, advert: AdvertiseKeys,
                 **keys: bytes) -> AdvertiseKeys:
    """The advertisement with other keys, re-signed by its owner in active mode."""
    advert = dataclasses.replace(advert, **keys)
    sig = None
    if cfg.mode is SecurityMode.ACTIVE:
        sig = signing.sign(client._identity_key, d.advertise_payload(
            cfg.digest(), c, advert.encryption_key, advert.masking_key, advert.seed_commitment))
    advert = dataclasses.replace(advert, signature=sig)
    client._advert = advert
    return advert


def _colliding_scalar() -> tuple[bytes, bytes]:
    """Two distinct clamped scalars k, 8l - k with the same public key."""
    k = 2**254 + 8 * secrets.randbelow(DELTA)
    return k.to_bytes(32, "little"), (8 * GROUP_ORDER - k).to_bytes(32, "little")


# -- A1: [SSS-5] the public key binds exactly one accepted scalar ----------------------


@FAST
@given(st.integers(0, DELTA))
def test_negated_clamped_scalars_are_never_generated_nor_accepted(m: int) -> None:
    k = 2**254 + 8 * m
    kb, k2b = k.to_bytes(32, "little"), (8 * GROUP_ORDER - k).to_bytes(32, "little")
    assert kb != k2b and is_clamped(kb) and is_clamped(k2b)
    pk = KeyPair.from_private_bytes(kb).public_bytes
    assert KeyPair.from_private_bytes(k2b).public_bytes == pk
    # exactly the scalars up to SCALAR_FLOOR have a clamped partner: refused
    assert k <= SCALAR_FLOOR
    assert not is_binding_scalar(kb) and not is_binding_scalar(k2b)
    assert not matches_public(kb, pk) and not matches_public(k2b, pk)


@FAST
@given(st.integers(0, 2**251 - 1))
def test_every_binding_scalar_has_no_clamped_partner(m: int) -> None:
    k = 2**254 + 8 * m
    raw = k.to_bytes(32, "little")
    if k > SCALAR_FLOOR:
        assert is_binding_scalar(raw)
        partner = 8 * GROUP_ORDER - k
        assert partner < 2**254  # not clamped: the public key binds k alone
    else:
        assert not is_binding_scalar(raw)


class _FirstColliding:
    """A random source whose first 32 bytes are a colliding scalar."""

    def __init__(self) -> None:
        self.first: bytes | None = _colliding_scalar()[0]

    def token_bytes(self, n: int) -> bytes:
        if self.first is not None and n == 32:
            out, self.first = self.first, None
            return out
        return RNG.token_bytes(n)


def test_key_generation_redraws_a_scalar_with_a_clamped_partner() -> None:
    source = _FirstColliding()
    bad = source.first
    pair = KeyPair.generate(source)  # type: ignore[arg-type]
    assert pair.private_bytes() != bad and is_binding_scalar(pair.private_bytes())
    assert matches_public(pair.private_bytes(), pair.public_bytes)


def _lagrange_at(x: int, points: list[tuple[int, np.ndarray]]) -> bytes:
    p = shamir.PRIME
    val = np.zeros(shamir.LIMBS, dtype=object)
    for i, (xi, yi) in enumerate(points):
        num = den = 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num, den = num * (x - xj) % p, den * (xi - xj) % p
        val = (val + yi * (num * pow(den, -1, p) % p)) % p
    return np.array(val, dtype="<u4").tobytes()


@pytest.mark.parametrize("mode", list(SecurityMode))
def test_a_dealer_with_a_negatable_key_never_gets_an_honest_holder_blamed(
        mode: SecurityMode) -> None:
    """Reviewer's A1: dealer 5 uses k with 8l-k clamped, deals k, drops after
    R1; colluding holder 1 reveals the share on the polynomial through
    (0, 8l-k) and two honest shares.  Before the fix honest holder 4 was
    blamed and the forger was not."""
    cfg = _cfg(5, 3, mode)
    kb, k2b = _colliding_scalar()
    clients: dict[int, ClientSession] = {}

    def start(c: int, client: ClientSession, advert: AdvertiseKeys) -> AdvertiseKeys:
        clients[c] = client
        if c != 5:
            return advert
        client._s = KeyPair.from_private_bytes(kb)
        return _readvertise(cfg, c, client, advert, masking_key=client._s.public_bytes)

    held: dict[int, bytes] = {}

    def reply(rnd: Round, c: int, msg: Any) -> Any:
        if c in (2, 3) and isinstance(msg, MaskedInput):
            # the dealer knows every share it dealt; read here from the holders
            held[c] = clients[c]._held_key_shares[5]
        if c != 1 or not isinstance(msg, UnmaskingResponse):
            return msg
        share = [np.frombuffer(held[h], "<u4").astype(object) for h in (2, 3)]
        points = [(0, np.frombuffer(k2b, "<u2").astype(object)), (2, share[0]), (3, share[1])]
        keys = dict(msg.key_shares)
        keys[5] = _lagrange_at(1, points)
        return dataclasses.replace(msg, key_shares=keys)

    out = drive(cfg, Attack(stop={5: Round.MASKED_INPUT_COLLECTION}, reply=reply,
                            responders={1, 2, 3, 4}, start=start))
    if out.result is None:
        assert out.abort is not None and out.abort.rule is Rule.COMMITMENT_MISMATCH
    else:
        assert out.exact()
        assert {b.peer for b in out.result.blame} <= {1}


# -- A2 / A8: [R0-2], [R0-5] canonical keys; torsion-tolerant [R4-11] -------------------


def _top(raw: bytes) -> bytes:
    return raw[:31] + bytes([raw[31] | 0x80])


def _plus_order_two(raw: bytes) -> bytes:
    """u-coordinate of P + T for T = (0, 0), the point of order 2: 1/u."""
    return pow(int.from_bytes(raw, "little"), FIELD_PRIME - 2, FIELD_PRIME).to_bytes(32, "little")


def _twist_point() -> bytes:
    while True:
        u = secrets.randbelow(FIELD_PRIME)
        rhs = (u**3 + 486662 * u * u + u) % FIELD_PRIME
        if pow(rhs, (FIELD_PRIME - 1) // 2, FIELD_PRIME) == FIELD_PRIME - 1:
            return u.to_bytes(32, "little")


def test_non_canonical_and_twist_encodings_are_refused_canonical_ones_not() -> None:
    pk = KeyPair.generate(RNG).public_bytes
    validate_public(pk)
    validate_public(_plus_order_two(pk))  # on the curve, mixed order: accepted
    base_non_canonical = (FIELD_PRIME + 9).to_bytes(32, "little")  # u = 9 encoded as p + 9
    for bad in (_top(pk), base_non_canonical, _twist_point()):
        with pytest.raises(InvalidKeyError):
            validate_public(bad)
    # the same key up to a small-order component is the same class
    assert key_class(pk) == key_class(_plus_order_two(pk))


@pytest.mark.parametrize("mode", list(SecurityMode))
@pytest.mark.parametrize("variant", ["top bit", "twist"])
def test_a_non_canonical_masking_key_is_refused_at_r0_not_at_unmasking(
        variant: str, mode: SecurityMode) -> None:
    """Reviewer's A2 (ii): before the fix the top-bit key was accepted and the
    dealer's drop after R1 aborted the round (reconstruction-fails-commitment)."""
    cfg = _cfg(5, 3, mode)

    def start(c: int, client: ClientSession, advert: AdvertiseKeys) -> AdvertiseKeys:
        if c != 5:
            return advert
        key = _top(advert.masking_key) if variant == "top bit" else _twist_point()
        return _readvertise(cfg, c, client, advert, masking_key=key)

    out = drive(cfg, Attack(stop={5: Round.MASKED_INPUT_COLLECTION}, start=start))
    assert out.refused == {5: Rule.INVALID_PUBLIC_KEY}
    assert out.result is not None and out.exact() and out.result.survivors == (1, 2, 3, 4)


@pytest.mark.parametrize("mode", list(SecurityMode))
def test_a_masking_key_with_a_torsion_component_still_unmasks_exactly(
        mode: SecurityMode) -> None:
    """Reviewer's A2 (iii): [k]B + T (T of order 2) passes R0; its owner drops
    after R1; the reconstructed k is checked up to torsion, which is all the
    honest peers' masks depend on.  Before the fix the round aborted."""
    cfg = _cfg(5, 3, mode)

    def start(c: int, client: ClientSession, advert: AdvertiseKeys) -> AdvertiseKeys:
        if c != 5:
            return advert
        return _readvertise(cfg, c, client, advert,
                            masking_key=_plus_order_two(advert.masking_key))

    out = drive(cfg, Attack(stop={5: Round.MASKED_INPUT_COLLECTION}, start=start))
    assert out.result is not None and out.exact()
    assert out.result.survivors == (1, 2, 3, 4) and not out.result.blame


@pytest.mark.parametrize("reencode", [_top, _plus_order_two])
def test_a_copied_key_re_encoded_is_still_a_duplicate(reencode: Any) -> None:
    """Reviewer's A8: client 5 copies client 1's keys with the top bit set
    (or with a torsion component).  Before the fix the server accepted it."""
    adverts: dict[int, AdvertiseKeys] = {}

    def start(c: int, client: ClientSession, advert: AdvertiseKeys) -> AdvertiseKeys:
        adverts[c] = advert
        if c == 5:
            return dataclasses.replace(advert, masking_key=reencode(adverts[1].masking_key),
                                       encryption_key=reencode(adverts[1].encryption_key))
        return advert

    out = drive(_cfg(5, 3), Attack(start=start))
    assert out.refused[5] in (Rule.INVALID_PUBLIC_KEY, Rule.DUPLICATE_KEY)
    assert out.result is not None and out.exact() and out.result.survivors == (1, 2, 3, 4)


def test_a_client_refuses_a_roster_with_a_non_canonical_key() -> None:
    cfg = _cfg(3, 2)
    clients = {c: ClientSession(cfg, c, input=np.zeros(6, dtype=np.uint64)) for c in cfg.ids}
    entries = [clients[c].start() for c in cfg.ids]
    entries[1] = dataclasses.replace(entries[1], masking_key=_top(entries[1].masking_key))
    with pytest.raises(RemoteProtocolError) as exc:
        clients[1].handle(KeyRoster(cfg.digest(), tuple(entries)))
    assert exc.value.rule is Rule.INVALID_PUBLIC_KEY


def test_a_dealer_sharing_another_key_than_it_advertised_aborts_typed() -> None:
    """A2 (i): a documented limit (needs verifiable secret sharing): the round
    aborts with a named rule, never gives a wrong sum."""
    def start(c: int, client: ClientSession, advert: AdvertiseKeys) -> AdvertiseKeys:
        if c == 5:
            client._s = KeyPair.generate(RNG)
        return advert

    out = drive(_cfg(5, 3), Attack(stop={5: Round.MASKED_INPUT_COLLECTION}, start=start))
    assert out.result is None
    assert out.abort is not None and out.abort.rule is Rule.COMMITMENT_MISMATCH


# -- A3 / A4: [R2-6] a maximal matching of the complaint graph -------------------------


def _accuse(plan: dict[int, set[int]]) -> Any:
    """Each accuser reports its accused (their ciphertexts to it are broken, so
    the stock client code leaves them out and reports them)."""
    def delivery(rnd: Round, c: int, msg: Any) -> Any:
        if isinstance(msg, ShareDelivery) and c in plan:
            cts = dict(msg.ciphertexts)
            for v in plan[c]:
                cts[v] = bytes(len(cts[v]))
            return dataclasses.replace(msg, ciphertexts=cts)
        return msg
    return delivery


COLLUDERS = {
    "K22": (8, 3, {1: {3, 4}, 2: {3, 4}}),
    "harmonic2": (8, 3, {1: {3, 4}, 2: {3, 5}}),
    "harmonic4": (16, 3, {1: {5, 6, 7, 9}, 2: {5, 6, 7, 10}, 3: {5, 6, 8, 11},
                          4: {5, 8, 12}}),
    # active mode, n large enough that n - 2c >= t
    "K22 active": (10, 6, {1: {3, 4}, 2: {3, 4}}),
    "harmonic2 active": (10, 6, {1: {3, 4}, 2: {3, 5}}),
}


@pytest.mark.parametrize("case", sorted(COLLUDERS))
def test_colluding_accusers_remove_at_most_as_many_honest_clients_as_they_are(
        case: str) -> None:
    """Reviewer's A3: before the fix the greedy cover removed 3 honest clients
    for 2 colluders (harmonic2) and 8 for 4 (harmonic4), none of the colluders,
    and the active rounds aborted."""
    n, t, plan = COLLUDERS[case]
    mode = SecurityMode.ACTIVE if "active" in case else SecurityMode.SEMI_HONEST
    out = drive(_cfg(n, t, mode), Attack(delivery=_accuse(plan)))
    assert out.result is not None and out.exact()
    removed = set(out.result.excluded)
    assert len(removed - set(plan)) <= len(plan)
    assert len(out.result.survivors) >= n - 2 * len(plan)


@FAST
@given(data=st.data(), n=st.integers(5, 10))
def test_any_complaints_cost_at_most_one_honest_client_per_colluder(
        data: st.DataObject, n: int) -> None:
    """Colluders 1..c accuse honest clients at will (any bipartite graph): the
    complaint step removes at most c honest clients; the sum is exact or the
    round aborts with too few clients."""
    c = data.draw(st.integers(1, max(1, (n - 3) // 2)), label="c")
    honest = list(range(c + 1, n + 1))
    plan = {a: data.draw(st.sets(st.sampled_from(honest), max_size=3), label=f"accused {a}")
            for a in range(1, c + 1)}
    plan = {a: us for a, us in plan.items() if us}
    out = drive(_cfg(n, 2), Attack(delivery=_accuse(plan)))
    if out.result is None:
        assert out.abort is not None
        assert out.abort.rule in (None, Rule.COMPLAINTS_LEFT_TOO_FEW)
        if out.abort.rule is Rule.COMPLAINTS_LEFT_TOO_FEW:
            refused = {b.peer for b in out.abort.blame if b.rule is Rule.SHARES_REFUSED}
            assert len(refused - set(plan)) <= len(plan)
        return
    assert out.exact()
    refused = {b.peer for b in out.result.blame if b.rule is Rule.SHARES_REFUSED}
    assert len(refused - set(plan)) <= len(plan)


@pytest.mark.parametrize("mode", list(SecurityMode))
def test_one_complaint_costs_two_clients_and_aborts_exactly_when_t_exceeds_n_minus_2(
        mode: SecurityMode) -> None:
    """A4 (stated in SPEC [R2-6]): on the complete graph one complaint removes
    both ends, like two dropouts after R1, so it aborts iff t > n' - 2 (n' the
    masked inputs received)."""
    for n, t in ((6, 4), (6, 5), (7, 5), (7, 6)):
        if mode is SecurityMode.ACTIVE and t < n // 2 + 1:
            continue
        out = drive(_cfg(n, t, mode), Attack(delivery=_accuse({1: {3}})))
        if t > n - 2:
            # the fixpoint then removes the n - 2 holders of 1's key too: the
            # abort says so, with its own rule and the complaint blame
            assert out.result is None and out.abort is not None
            assert out.abort.rule is Rule.COMPLAINTS_LEFT_TOO_FEW
            assert f"{n} masked inputs received, {n} removed by complaint resolution" \
                in str(out.abort)
            assert out.abort.available == 0 and out.abort.needed is not None
            assert [(b.peer, b.rule) for b in out.abort.blame] == [
                (1, Rule.SHARES_REFUSED), (3, Rule.SHARES_REFUSED)]
        else:
            assert out.result is not None and out.exact()
            assert set(out.result.excluded) == {1, 3}



def test_an_abort_by_complaint_resolution_says_so_and_carries_the_blame() -> None:
    """Reviewer: complete graph n=6, t=5; client 1 falsely reports client 3;
    the fixpoint then removes the 4 remaining holders of 1's key.  Before: an
    AbortError saying "only 0 clients sent masked inputs" (all 6 had), rule
    None, and the blame lost with the session."""
    from securefl.protocol import ClientStatus

    fed, abort = _abort_after_complaint(threshold=5, senders=6)
    assert abort.rule is Rule.COMPLAINTS_LEFT_TOO_FEW
    assert "6 masked inputs received, 6 removed by complaint resolution" in str(abort)
    assert "clients [1, 3] as the ends of matched share complaints, 4 holding" in str(abort)
    assert (abort.needed, abort.available) == (5, 0)
    assert [(b.peer, b.rule, b.round) for b in abort.blame] == [
        (1, Rule.SHARES_REFUSED, Round.MASKED_INPUT_COLLECTION),
        (3, Rule.SHARES_REFUSED, Round.MASKED_INPUT_COLLECTION)]
    assert all(s is ClientStatus.DEAD_AFTER_SHARE_KEYS_RECEIVED
               for s in fed.server.statuses.values())


def test_too_few_masked_inputs_with_a_complaint_keeps_rule_none_but_says_both() -> None:
    """Fewer masked inputs than t arrived at all: the abort is "too few" (rule
    None), but still says what complaint resolution removed, with its blame."""
    _, abort = _abort_after_complaint(threshold=4, senders=3)
    assert abort.rule is None
    assert "3 masked inputs received, 3 removed by complaint resolution" in str(abort)
    assert (abort.needed, abort.available) == (4, 0)
    assert {b.peer for b in abort.blame} == {1, 3}

# -- A5: [R4-12] a forged complaint never gives a silent wrong sum ---------------------


def _forge_excluded(sender: int, excluded: tuple[int, ...]) -> Any:
    def reply(rnd: Round, c: int, msg: Any) -> Any:
        if c == sender and isinstance(msg, MaskedInput):
            return dataclasses.replace(msg, excluded=excluded)
        return msg
    return reply


@pytest.mark.parametrize("mode,n", [(SecurityMode.SEMI_HONEST, 6), (SecurityMode.ACTIVE, 7)])
def test_reviewers_forged_complaint_gives_the_exact_sum(mode: SecurityMode, n: int) -> None:
    """Reviewer's A5: client 1's MaskedInput.excluded rewritten to (3,) in
    transit.  Before the fix: exact=False, no error."""
    out = drive(_cfg(n, None if mode is SecurityMode.ACTIVE else 3, mode),
                Attack(reply=_forge_excluded(1, (3,))))
    if out.result is None:
        assert out.abort is not None and out.abort.rule is Rule.COMPLAINT_CONTRADICTED
    else:
        assert out.exact()


@pytest.mark.parametrize("mode,n", [(SecurityMode.SEMI_HONEST, 7), (SecurityMode.ACTIVE, 10)])
def test_a_forged_complaint_off_the_matching_aborts_typed(mode: SecurityMode, n: int) -> None:
    """2 really reports 3 (3's ciphertext to 2 broken); 4's masked input is
    rewritten in transit to report 3 as well.  The matching removes 2 and 3;
    4 survives, masked with 3, and reveals 3's key share: the server aborts
    naming the rule.  Before the fix: exact=False, no error."""
    out = drive(_cfg(n, None if mode is SecurityMode.ACTIVE else 3, mode),
                Attack(reply=_forge_excluded(4, (3,)), delivery=_accuse({2: {3}})))
    assert out.result is None
    assert out.abort is not None and out.abort.rule is Rule.COMPLAINT_CONTRADICTED


def test_reviewers_complaint_edge_cases_give_exact_sums_or_typed_aborts() -> None:
    """Reviewer's A9: a self-complaint is refused; a complaint arriving after
    the accused's input; a liar that masked with the one it reported."""
    cfg = _cfg(6, 3)
    for attack in (Attack(reply=_forge_excluded(2, (2,))),
                   Attack(delivery=_accuse({5: {2}})),
                   Attack(reply=_forge_excluded(5, (2,))),
                   Attack(reply=_forge_excluded(5, (2,)), delivery=_accuse({1: {2}}))):
        out = drive(cfg, attack)
        if out.result is None:
            assert out.abort is not None and out.abort.rule is Rule.COMPLAINT_CONTRADICTED
        else:
            assert out.exact()


# -- [CLI-1] after DONE ---------------------------------------------------------------


def test_a_done_client_refuses_a_different_request_stays_done_and_answers_the_original(
) -> None:
    """Reviewer's A6: the wording of [CLI-1] for the DONE case."""
    from securefl.protocol import ServerSession
    from securefl.protocol.client import ClientState
    from securefl.protocol.messages import UnmaskingRequest

    cfg = _cfg(4, 2)
    server = ServerSession(cfg)
    clients = {c: ClientSession(cfg, c, input=np.arange(6, dtype=np.uint64)) for c in cfg.ids}
    for client in clients.values():
        server.receive(client.start())
    requests: dict[int, UnmaskingRequest] = {}
    while not server.finished:
        for env in server.close_round():
            if isinstance(env.message, UnmaskingRequest):
                requests[env.recipient] = env.message
            server.receive(clients[env.recipient].handle(env.message))
    c1 = clients[1]
    first = c1.handle(requests[1])
    assert c1.state is ClientState.DONE
    flip = dataclasses.replace(requests[1], survivors=(1, 2, 3), dropped=(4,))
    with pytest.raises(RemoteProtocolError) as exc:
        c1.handle(flip)
    assert exc.value.rule is Rule.BOTH_SHARES_REQUESTED
    assert c1.state is ClientState.DONE
    again = c1.handle(requests[1])
    assert again is first and not again.key_shares


# -- A7: the candidate bound of [R4-11] -------------------------------------------------


def test_bad_shares_beyond_the_candidate_bound_abort_typed() -> None:
    """Reviewer's A7: 4 forgers among 23 shares with t = 16 are within the
    radius floor((23 - 16 + 1) / 2) = 4, but locating them among the first 20
    (late in the order the candidates are tried) needs more than the 4096
    candidates of the bound (C(20, 4) = 4845): the round aborts typed (SPEC
    [R4-11], SECURITY.md), never a wrong sum."""
    assert shamir.MAX_CANDIDATES == 4096
    forgers, owner = {13, 14, 15, 16}, 23

    def reply(rnd: Round, c: int, msg: Any) -> Any:
        if c in forgers and isinstance(msg, UnmaskingResponse):
            shares = dict(msg.self_mask_shares)
            limbs = np.frombuffer(shares[owner], "<u4").copy()
            limbs[0] = (int(limbs[0]) + 1) % shamir.PRIME
            shares[owner] = limbs.astype("<u4").tobytes()
            return dataclasses.replace(msg, self_mask_shares=shares)
        return msg

    out = drive(SecAggConfig(num_clients=23, vector_length=4, bits=16, threshold=16),
                Attack(reply=reply))
    assert out.result is None
    assert out.abort is not None and out.abort.rule is Rule.COMMITMENT_MISMATCH


def _abort_after_complaint(threshold: int, senders: int) -> tuple[Any, Any]:
    """Six clients; clients 1..``senders`` send their masked input, client 1
    complaining about client 3's shares; the round's abort."""
    from protocol_harness import Federation

    from securefl.errors import AbortError

    fed = Federation(SecAggConfig(num_clients=6, vector_length=4, bits=16,
                                  threshold=threshold))
    fed.advertise()
    fed.step()
    replies = {c: fed.clients[c].handle(m) for c, m in fed.pending.items() if c <= senders}
    replies[1] = dataclasses.replace(replies[1], excluded=(3,))
    for r in replies.values():
        fed.server.receive(r)
    with pytest.raises(AbortError) as info:
        fed.close()
    return fed, info.value
