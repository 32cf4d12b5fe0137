"""A malicious (or buggy) server tries to make a client reveal what it must not.
Each attempt is refused with the right typed error, naming the round and the
rule, and the client reveals nothing afterwards."""

from __future__ import annotations

import dataclasses

import pytest

from securefl import Round, SecAggConfig, SecurityMode
from securefl.errors import LocalProtocolError, RemoteProtocolError, Rule
from securefl.protocol import ClientState
from securefl.protocol.messages import (
    KeyRoster,
    MaskedInput,
    ShareDelivery,
    UnmaskingRequest,
    UnmaskingResponse,
)
from tests.protocol_harness import Federation

SEMI = SecAggConfig(num_clients=5, vector_length=8, threshold=3)
ACTIVE = SecAggConfig(num_clients=5, vector_length=8, threshold=3, mode=SecurityMode.ACTIVE)


def refused(fed: Federation, client: int, message: object, rule: Rule) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        fed.clients[client].handle(message)
    err = info.value
    assert err.rule is rule, err
    assert err.round is not None and err.round.name in str(err)
    assert rule.value in str(err)
    assert fed.clients[client].state is ClientState.ABORTED
    # an aborted client never answers again, whatever it is sent
    with pytest.raises(LocalProtocolError):
        fed.clients[client].handle(message)
    return err


def at_unmasking(config: SecAggConfig, drop_after_shares: set[int] = frozenset()) -> Federation:  # type: ignore[assignment]
    fed = Federation(config)
    fed.advertise()
    fed.step()  # shares
    fed.step(skip=set(drop_after_shares))  # masked inputs
    if config.mode is SecurityMode.ACTIVE:
        fed.step()  # consistency signatures
    return fed


def test_asking_for_both_shares_of_a_peer_is_refused() -> None:
    fed = at_unmasking(SEMI, drop_after_shares={5})
    req = fed.pending[1]
    assert isinstance(req, UnmaskingRequest)
    evil = dataclasses.replace(req, dropped=tuple(sorted((*req.dropped, 2))))
    err = refused(fed, 1, evil, Rule.OVERLAPPING_LISTS)
    assert err.peer == "server" and err.round is Round.UNMASKING


def test_a_second_request_for_the_other_share_is_refused() -> None:
    fed = at_unmasking(SEMI, drop_after_shares={5})
    req = fed.pending[1]
    first = fed.clients[1].handle(req)
    assert isinstance(first, UnmaskingResponse)
    assert set(first.key_shares) == {5} and 5 not in first.self_mask_shares
    # now claim 2 dropped and 5 survived: asks for 2's key share and 5's seed share
    flip = dataclasses.replace(req, survivors=(1, 3, 4, 5), dropped=(2,))
    with pytest.raises(RemoteProtocolError) as info:
        fed.clients[1].handle(flip)
    assert info.value.rule is Rule.BOTH_SHARES_REQUESTED
    # an exact retransmission of the answered request gets the same reply (SPEC [CLI-2]);
    # any other second request is refused
    assert fed.clients[1].handle(req) is first
    other = dataclasses.replace(req, dropped=())
    with pytest.raises(RemoteProtocolError) as info:
        fed.clients[1].handle(other)
    assert info.value.rule is Rule.SECOND_UNMASK_REQUEST


def test_survivor_list_below_threshold_is_refused() -> None:
    fed = at_unmasking(SEMI)
    req = fed.pending[1]
    small = dataclasses.replace(req, survivors=(1, 2), dropped=(3, 4, 5))
    refused(fed, 1, small, Rule.BELOW_THRESHOLD)


def test_listing_the_client_itself_as_dropped_is_refused() -> None:
    fed = at_unmasking(SEMI)
    req = fed.pending[1]
    evil = dataclasses.replace(req, survivors=(2, 3, 4, 5), dropped=(1,))
    refused(fed, 1, evil, Rule.OWN_SHARE_REQUESTED)
    evil = dataclasses.replace(fed.pending[2], survivors=(2, 3, 4, 5), dropped=())
    refused(fed, 2, dataclasses.replace(evil, survivors=(1, 3, 4, 5)), Rule.LISTS_CONTRADICT_VIEW)


def test_lists_that_contradict_what_the_client_saw_are_refused() -> None:
    fed = Federation(SEMI)
    fed.advertise()
    fed.step(skip={4})  # client 4 never shares its keys
    fed.step()
    req = fed.pending[1]
    assert 4 not in req.survivors and 4 not in req.dropped
    # claim 4 dropped after sharing: the server would get 4's key share it has no right to
    evil = dataclasses.replace(req, dropped=(4,))
    refused(fed, 1, evil, Rule.LISTS_CONTRADICT_VIEW)
    # hiding a survivor that shared is also a contradiction
    evil2 = dataclasses.replace(fed.pending[2], survivors=(1, 2, 3))
    refused(fed, 2, evil2, Rule.LISTS_CONTRADICT_VIEW)


def test_roster_with_a_duplicated_key_is_refused() -> None:
    fed = Federation(SEMI)
    roster = fed.advertise()[1]
    assert isinstance(roster, KeyRoster)
    entries = list(roster.entries)
    entries[3] = dataclasses.replace(entries[3], masking_key=entries[2].masking_key)
    err = refused(fed, 1, dataclasses.replace(roster, entries=tuple(entries)), Rule.DUPLICATE_KEY)
    assert err.peer == entries[3].sender


def test_roster_that_alters_the_clients_own_keys_is_refused() -> None:
    fed = Federation(SEMI)
    roster = fed.advertise()[1]
    entries = list(roster.entries)
    entries[0] = dataclasses.replace(entries[0], encryption_key=bytes(range(32)))
    refused(fed, 1, dataclasses.replace(roster, entries=tuple(entries)), Rule.OWN_KEY_ALTERED)


def test_roster_below_threshold_is_refused() -> None:
    fed = Federation(SEMI)
    roster = fed.advertise()[1]
    refused(fed, 1, dataclasses.replace(roster, entries=roster.entries[:2]),
            Rule.BELOW_THRESHOLD)


def test_roster_for_another_configuration_is_refused() -> None:
    fed = Federation(SEMI)
    roster = fed.advertise()[1]
    refused(fed, 1, dataclasses.replace(roster, config_digest=bytes(32)), Rule.WRONG_CONFIG)


def test_replay_from_another_session_is_refused() -> None:
    a, b = Federation(SEMI), Federation(SEMI)
    a.advertise()
    b.advertise()
    a.step()
    b.step()
    # a whole message from session A delivered in session B
    refused(b, 1, a.pending[1], Rule.WRONG_SESSION)
    # A's ciphertexts relabelled with B's session id fail authentication
    relabelled = dataclasses.replace(a.pending[2], session_id=b.pending[2].session_id)
    refused(b, 2, relabelled, Rule.DECRYPTION_FAILED)


def test_tampered_ciphertext_is_excluded_and_reported_naming_its_sender() -> None:
    # SPEC [R2-5]: the client cannot tell a tampering server from a lying peer;
    # it holds none of the peer's shares, masks without it and reports it
    fed = Federation(SEMI)
    fed.advertise()
    fed.step()
    delivery = fed.pending[1]
    assert isinstance(delivery, ShareDelivery)
    cts = dict(delivery.ciphertexts)
    cts[3] = cts[3][:-1] + bytes([cts[3][-1] ^ 0x80])
    reply = fed.clients[1].handle(dataclasses.replace(delivery, ciphertexts=cts))
    assert isinstance(reply, MaskedInput) and reply.excluded == (3,)


def test_ciphertext_redirected_to_another_recipient_is_excluded() -> None:
    fed = Federation(SEMI)
    fed.advertise()
    fed.step()
    cts = dict(fed.pending[1].ciphertexts)
    cts[3] = fed.pending[2].ciphertexts[3]  # 3's shares for client 2, given to client 1
    reply = fed.clients[1].handle(dataclasses.replace(fed.pending[1], ciphertexts=cts))
    assert isinstance(reply, MaskedInput) and reply.excluded == (3,)


def test_out_of_order_message_is_refused() -> None:
    fed = Federation(SEMI)
    fed.advertise()
    fed.step()
    delivery = fed.pending[1]
    other = Federation(SEMI)
    other.advertise()
    refused(other, 1, delivery, Rule.WRONG_ROUND)


def test_active_roster_with_missing_or_forged_signature_is_refused() -> None:
    fed = Federation(ACTIVE)
    roster = fed.advertise()[1]
    entries = list(roster.entries)
    unsigned = [*entries[:2], dataclasses.replace(entries[2], signature=None), *entries[3:]]
    err = refused(fed, 1, dataclasses.replace(roster, entries=tuple(unsigned)),
                  Rule.MISSING_SIGNATURE)
    assert err.peer == entries[2].sender
    forged = [*entries[:3], dataclasses.replace(entries[3], signature=entries[4].signature),
              entries[4]]
    refused(fed, 2, dataclasses.replace(roster, entries=tuple(forged)), Rule.INVALID_SIGNATURE)


def test_active_substituted_key_with_a_valid_looking_roster_is_refused() -> None:
    # the server swaps client 4's key for one it controls and re-uses 4's signature
    fed = Federation(ACTIVE)
    roster = fed.advertise()[1]
    entries = list(roster.entries)
    from securefl.hazmat.agreement import KeyPair
    from securefl.hazmat.randomness import SystemRandom
    mine = KeyPair.generate(SystemRandom())
    entries[3] = dataclasses.replace(entries[3], masking_key=mine.public_bytes)
    err = refused(fed, 1, dataclasses.replace(roster, entries=tuple(entries)),
                  Rule.INVALID_SIGNATURE)
    assert err.peer == 4


def test_active_unmasking_needs_t_valid_signatures_on_the_same_list() -> None:
    fed = at_unmasking(ACTIVE)
    req = fed.pending[1]
    assert len(req.signatures) == 5
    few = dict(list(req.signatures.items())[:2])
    refused(fed, 1, dataclasses.replace(req, signatures=few), Rule.NOT_ENOUGH_SIGNATURES)
    sigs = dict(req.signatures)
    sigs[3] = sigs[4]
    refused(fed, 2, dataclasses.replace(fed.pending[2], signatures=sigs), Rule.INVALID_SIGNATURE)
    # a different survivor list than the one the client signed
    refused(fed, 3, dataclasses.replace(fed.pending[3], survivors=(1, 2, 3, 4), dropped=(5,)),
            Rule.LISTS_CONTRADICT_VIEW)


def test_honest_run_through_the_harness_gives_the_exact_sum() -> None:
    for config in (SEMI, ACTIVE):
        fed = at_unmasking(config, drop_after_shares={2})
        fed.step()
        assert fed.server.finished
        assert fed.server.result.survivors == (1, 3, 4, 5)
        assert (fed.server.result.total == fed.expected_sum()).all()
