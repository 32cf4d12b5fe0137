"""Malformed, late, duplicate or forged client messages are refused by the
server with a typed error naming the peer, the round and the rule; the
server's state is intact and the round still produces the exact sum."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from securefl import ClientStatus, Round, SecAggConfig, SecurityMode
from securefl.errors import AbortError, LocalProtocolError, RemoteProtocolError, Rule
from securefl.protocol.messages import AdvertiseKeys, MaskedInput, UnmaskingResponse
from tests.protocol_harness import Federation

SEMI = SecAggConfig(num_clients=5, vector_length=8, threshold=3)
ACTIVE = SecAggConfig(num_clients=5, vector_length=8, threshold=3, mode=SecurityMode.ACTIVE)


def refused(fed: Federation, message: object, rule: Rule, peer: int | None) -> None:
    before = dict(fed.server.statuses)
    state = fed.server.state
    with pytest.raises(RemoteProtocolError) as info:
        fed.server.receive(message)
    assert info.value.rule is rule, info.value
    assert info.value.peer == peer
    assert info.value.round is fed.server.round
    assert fed.server.statuses == before and fed.server.state is state


def finish(fed: Federation) -> None:
    while not fed.server.finished:
        fed.step()
    assert (fed.server.result.total == fed.expected_sum()).all()


def test_unknown_sender_is_refused() -> None:
    fed = Federation(SEMI)
    adverts = {c: cl.start() for c, cl in fed.clients.items()}
    refused(fed, dataclasses.replace(adverts[1], sender=99), Rule.UNKNOWN_PEER, 99)


def test_duplicate_and_copied_keys_are_refused() -> None:
    fed = Federation(SEMI)
    adverts = {c: cl.start() for c, cl in fed.clients.items()}
    fed.server.receive(adverts[1])
    refused(fed, adverts[1], Rule.DUPLICATE_MESSAGE, 1)
    stolen = dataclasses.replace(adverts[2], masking_key=adverts[1].masking_key)
    refused(fed, stolen, Rule.DUPLICATE_KEY, 2)
    same = dataclasses.replace(adverts[3], masking_key=adverts[3].encryption_key)
    refused(fed, same, Rule.DUPLICATE_KEY, 3)
    refused(fed, dataclasses.replace(adverts[4], masking_key=b"short"), Rule.INVALID_PUBLIC_KEY,
            4)
    for c in (2, 3, 4, 5):
        fed.server.receive(adverts[c])
    fed.close()
    finish(fed)


def test_late_and_early_messages_are_refused() -> None:
    fed = Federation(SEMI)
    fed.advertise()
    late = fed.sent[Round.ADVERTISE_KEYS][2]
    refused(fed, late, Rule.WRONG_ROUND, 2)
    replies = fed.answer()
    fed.close()
    refused(fed, replies[3], Rule.WRONG_ROUND, 3)  # shares again, after the round closed
    finish(fed)


def test_wrong_recipients_and_wrong_session_are_refused() -> None:
    fed = Federation(SEMI)
    fed.advertise()
    shares = {c: fed.clients[c].handle(m) for c, m in fed.pending.items()}
    cts = dict(shares[1].ciphertexts)
    del cts[2]
    refused(fed, dataclasses.replace(shares[1], ciphertexts=cts), Rule.WRONG_RECIPIENTS, 1)
    cts[1] = b"\0" * 144  # shares addressed to itself
    refused(fed, dataclasses.replace(shares[1], ciphertexts=cts), Rule.WRONG_RECIPIENTS, 1)
    refused(fed, dataclasses.replace(shares[1], session_id=bytes(32)), Rule.WRONG_SESSION, 1)
    for msg in shares.values():
        fed.server.receive(msg)
    fed.close()
    finish(fed)


@pytest.mark.parametrize(
    ("vector", "rule"),
    [
        (np.zeros(7, dtype=np.uint32), Rule.WRONG_LENGTH),
        (np.zeros((2, 8), dtype=np.uint32), Rule.WRONG_LENGTH),
        (np.full(8, 2**40, dtype=np.uint64), Rule.VALUE_OUT_OF_RANGE),
        (np.zeros(8, dtype=np.float32), Rule.MALFORMED),
        (np.full(8, -1, dtype=np.int64), Rule.VALUE_OUT_OF_RANGE),
    ],
)
def test_malformed_masked_inputs_are_refused(vector: np.ndarray, rule: Rule) -> None:
    fed = Federation(SEMI)
    fed.advertise()
    fed.step()
    good = fed.clients[4].handle(fed.pending[4])
    refused(fed, MaskedInput(4, good.session_id, vector), rule, 4)
    fed.server.receive(good)
    fed.answer(skip={4})
    fed.close()
    finish(fed)


def test_unmasking_response_revealing_both_shares_or_the_wrong_set_is_refused() -> None:
    fed = Federation(SEMI)
    fed.advertise()
    fed.step()
    fed.step(skip={5})
    reply = fed.clients[1].handle(fed.pending[1])
    assert isinstance(reply, UnmaskingResponse)
    both = dataclasses.replace(reply, key_shares={**reply.key_shares,
                                                  2: reply.self_mask_shares[2]})
    refused(fed, both, Rule.BOTH_SHARES_REQUESTED, 1)
    missing = dataclasses.replace(reply, self_mask_shares={
        k: v for k, v in reply.self_mask_shares.items() if k != 3})
    refused(fed, missing, Rule.MALFORMED, 1)
    fed.server.receive(reply)
    refused(fed, reply, Rule.DUPLICATE_MESSAGE, 1)
    fed.answer(skip={1})
    fed.close()
    assert (fed.server.result.total == fed.expected_sum()).all()


def test_corrupted_share_is_located_and_its_holder_blamed() -> None:
    fed = Federation(SecAggConfig(num_clients=5, vector_length=8, threshold=3))
    fed.advertise()
    fed.step()
    fed.step()
    replies = {c: fed.clients[c].handle(m) for c, m in fed.pending.items()}
    share = bytearray(replies[2].self_mask_shares[1])
    share[0] ^= 1  # still a field element: well-formed, but wrong
    replies[2] = dataclasses.replace(replies[2], self_mask_shares={
        **replies[2].self_mask_shares, 1: bytes(share)})
    for r in replies.values():
        fed.server.receive(r)
    fed.close()
    assert (fed.server.result.total == fed.expected_sum()).all()
    assert [(b.peer, b.rule) for b in fed.server.result.blame] == [(2, Rule.FORGED_SHARE)]


def test_corrupted_share_among_exactly_t_aborts_typed() -> None:
    fed = Federation(SecAggConfig(num_clients=5, vector_length=8, threshold=3))
    fed.advertise()
    fed.step()
    fed.step()
    replies = {c: fed.clients[c].handle(m) for c, m in fed.pending.items() if c <= 3}
    share = bytearray(replies[2].self_mask_shares[1])
    share[0] ^= 1
    replies[2] = dataclasses.replace(replies[2], self_mask_shares={
        **replies[2].self_mask_shares, 1: bytes(share)})
    for r in replies.values():
        fed.server.receive(r)
    with pytest.raises(AbortError) as info:
        fed.close()
    assert info.value.rule is Rule.COMMITMENT_MISMATCH
    with pytest.raises(LocalProtocolError):
        _ = fed.server.result


def test_active_mode_server_refuses_unsigned_and_forged_messages() -> None:
    fed = Federation(ACTIVE)
    adverts = {c: cl.start() for c, cl in fed.clients.items()}
    refused(fed, dataclasses.replace(adverts[1], signature=None), Rule.MISSING_SIGNATURE, 1)
    refused(fed, dataclasses.replace(adverts[1], signature=adverts[2].signature),
            Rule.INVALID_SIGNATURE, 1)
    for m in adverts.values():
        fed.server.receive(m)
    fed.close()
    fed.step()
    fed.step()
    sigs = {c: fed.clients[c].handle(m) for c, m in fed.pending.items()}
    refused(fed, dataclasses.replace(sigs[1], signature=sigs[2].signature),
            Rule.INVALID_SIGNATURE, 1)
    for s in sigs.values():
        fed.server.receive(s)
    fed.close()
    finish(fed)
    assert fed.server.result.statuses[1] is ClientStatus.UNMASKING_RESPONSE_RECEIVED


def test_non_messages_and_finished_sessions_are_local_errors() -> None:
    fed = Federation(SEMI)
    with pytest.raises(LocalProtocolError):
        fed.server.receive("hello")
    fed.advertise()
    finish(fed)
    with pytest.raises(LocalProtocolError):
        fed.server.receive(AdvertiseKeys(1, bytes(32), bytes(32)))
    with pytest.raises(LocalProtocolError):
        fed.server.close_round()


@pytest.mark.parametrize("forgers", [(2,), (2, 4)])
def test_share_outside_the_field_excludes_exactly_its_sender(forgers: tuple[int, ...]) -> None:
    """Client(s) ``forgers`` encrypt, under the right pair key, a key share
    holding a word >= p for client 1: client 1 excludes exactly them (SPEC
    [R2-6]) and every other share it received is held, the other clients
    exclude nobody, and the round still sums the survivors exactly."""
    from securefl.hazmat import shamir
    from securefl.protocol import derivation as d

    fed = Federation(SecAggConfig(num_clients=6, vector_length=8, threshold=3))
    fed.advertise()
    replies = fed.answer(send=False)
    for forger in forgers:
        session = fed.clients[forger]
        key, sid = session._share_keys[1], session.session_id
        key_share, seed_share, _ = d.decrypt_share_bundle(
            key, sid, forger, 1, replies[forger].ciphertexts[1])
        bad = shamir.PRIME.to_bytes(4, "little") + key_share[4:]  # not a field element
        replies[forger] = dataclasses.replace(replies[forger], ciphertexts={
            **replies[forger].ciphertexts, 1: d.encrypt_shares(key, sid, forger, 1, bad,
                                                               seed_share)})
    fed.send(replies)
    fed.close()
    masked = fed.answer()
    assert masked[1].excluded == forgers
    assert all(masked[c].excluded == () for c in masked if c != 1)
    held = fed.clients[1]._held_key_shares
    assert set(held) == {1, 2, 3, 4, 5, 6} - set(forgers)
    fed.close()
    while not fed.server.finished:
        fed.step()
    assert (fed.server.result.total == fed.expected_sum()).all()
