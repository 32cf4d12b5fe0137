"""The server session refuses client messages whose fields have the wrong
Python type with a typed protocol error, and its state is unchanged.

Before: ``sender=True`` was accepted as client 1 (``bool`` is an ``int``),
and shares that were not bytes raised ``TypeError`` inside
``hazmat/shamir.py`` through ``ServerSession.receive``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_harness import Federation

from securefl.errors import RemoteProtocolError, Rule
from securefl.protocol import ClientStatus, Round, SecAggConfig
from securefl.protocol.messages import UnmaskingResponse

CONFIG = SecAggConfig(num_clients=4, vector_length=3, bits=16, threshold=3, context=b"types")


def _at_unmasking() -> tuple[Federation, dict[int, Any]]:
    fed = Federation(CONFIG)
    fed.advertise()
    fed.step()  # share keys
    fed.step()  # masked input collection
    assert fed.server.round is Round.UNMASKING
    replies = {c: fed.clients[c].handle(m) for c, m in fed.pending.items()}
    return fed, replies


def test_a_boolean_sender_is_not_client_one() -> None:
    fed = Federation(CONFIG)
    adverts = {c: cl.start() for c, cl in fed.clients.items()}
    forged = dataclasses.replace(adverts[1], sender=True)
    with pytest.raises(RemoteProtocolError) as info:
        fed.server.receive(forged)
    assert info.value.rule is Rule.UNKNOWN_PEER
    assert fed.server.statuses[1] is not ClientStatus.ADVERTISE_KEYS_RECEIVED
    fed.server.receive(adverts[1])  # the real client 1 is still welcome


wrong_shares = st.one_of(st.none(), st.integers(), st.text(min_size=1, max_size=60),
                         st.lists(st.integers(0, 255), max_size=40), st.floats(),
                         st.binary(max_size=60).map(bytearray))


@settings(max_examples=40, deadline=None)
@given(wrong_shares)
def test_shares_of_the_wrong_type_are_refused(bad: Any) -> None:
    fed, replies = _at_unmasking()
    reply: UnmaskingResponse = replies[2]
    shares = dict(reply.self_mask_shares)
    owner = next(iter(shares))
    shares[owner] = bad
    forged = dataclasses.replace(reply, self_mask_shares=shares)
    with pytest.raises(RemoteProtocolError) as info:
        fed.server.receive(forged)
    assert info.value.rule is Rule.MALFORMED
    assert fed.server.statuses[2] is ClientStatus.MASKED_INPUT_RESPONSE_RECEIVED
    for c in (1, 2, 3, 4):  # the honest replies still finish the round exactly
        fed.server.receive(replies[c])
    fed.server.close_round()
    assert (fed.server.result.total == fed.expected_sum()).all()


class _HashBomb(int):
    """An int whose own ``__hash__`` raises (any set or dict lookup)."""

    def __hash__(self) -> int:
        raise RuntimeError("hash bomb")


class _EqBomb(int):
    """An int whose own comparisons raise (a lookup that finds its hash)."""

    __hash__ = int.__hash__

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("eq bomb")

    def __ne__(self, other: object) -> bool:
        raise RuntimeError("ne bomb")


class _Impostor(int):
    """An int that claims to equal every client id."""

    __hash__ = int.__hash__

    def __eq__(self, other: object) -> bool:
        return True


_BOMBS = [_HashBomb, _EqBomb, _Impostor]


def _bare(message: Any, **fields: Any) -> Any:
    """``message`` with ``fields`` set without running its ``__post_init__``
    (which would itself hash or compare them)."""
    copy = dataclasses.replace(message)
    for name, value in fields.items():
        object.__setattr__(copy, name, value)
    return copy


@pytest.mark.parametrize("bomb", _BOMBS)
def test_an_int_subclass_sender_is_refused_typed(bomb: type[int]) -> None:
    fed = Federation(CONFIG)
    adverts = {c: cl.start() for c, cl in fed.clients.items()}
    before = fed.server.statuses
    with pytest.raises(RemoteProtocolError) as info:
        fed.server.receive(dataclasses.replace(adverts[1], sender=bomb(1)))
    assert info.value.rule is Rule.UNKNOWN_PEER
    assert info.value.peer is None
    assert fed.server.statuses == before
    for m in adverts.values():  # the real clients are still welcome
        fed.server.receive(m)


@pytest.mark.parametrize("bomb", _BOMBS)
def test_int_subclass_ids_in_fields_are_refused_typed(bomb: type[int]) -> None:
    fed, replies = _at_unmasking()
    reply: UnmaskingResponse = replies[2]
    owner = next(iter(reply.self_mask_shares))
    before = fed.server.statuses
    if bomb is not _HashBomb:  # (cannot be a key of any dict)
        shares = {(bomb(k) if k == owner else k): v for k, v in reply.self_mask_shares.items()}
        with pytest.raises(RemoteProtocolError) as info:
            fed.server.receive(_bare(reply, self_mask_shares=shares))
        assert info.value.rule is Rule.MALFORMED
        assert fed.server.statuses == before
        pairs = {(bomb(owner), 0): next(iter(reply.self_mask_shares.values()))}
        with pytest.raises(RemoteProtocolError) as info:
            fed.server.receive(_bare(reply, noise_shares=pairs))
        assert info.value.rule is Rule.MALFORMED
        assert fed.server.statuses == before
    for c in (1, 2, 3, 4):  # the honest replies still finish the round exactly
        fed.server.receive(replies[c])
    fed.server.close_round()
    assert (fed.server.result.total == fed.expected_sum()).all()


@pytest.mark.parametrize("bomb", _BOMBS)
def test_an_int_subclass_in_a_masked_inputs_excluded_list_is_refused(bomb: type[int]) -> None:
    fed = Federation(CONFIG)
    fed.advertise()
    fed.step()  # share keys; the masked inputs are pending
    replies = {c: fed.clients[c].handle(m) for c, m in fed.pending.items()}
    forged = _bare(replies[1], excluded=(bomb(2),))
    with pytest.raises(RemoteProtocolError) as info:
        fed.server.receive(forged)
    assert info.value.rule is Rule.MALFORMED
    for r in replies.values():
        fed.server.receive(r)
    fed.close()
    fed.step()
    assert (fed.server.result.total == fed.expected_sum()).all()


def test_numpy_integer_ids_in_fields_are_still_ids() -> None:
    import numpy as np

    from securefl.protocol.validation import is_client_id

    assert all(is_client_id(t(3)) for t in (int, np.int64, np.uint32, np.int8))
    assert not any(is_client_id(v) for v in (True, np.bool_(True), 3.0, "3",
                                             _HashBomb(3), _EqBomb(3), _Impostor(3)))


@pytest.mark.parametrize("bomb", _BOMBS)
def test_the_client_refuses_int_subclass_ids_from_the_server_typed(bomb: type[int]) -> None:
    from securefl.protocol.client import ClientState

    # the roster's entry senders
    fed = Federation(CONFIG)
    rosters = fed.advertise()
    roster = rosters[1]
    entries = list(roster.entries)
    entries[1] = _bare(entries[1], sender=bomb(entries[1].sender))
    with pytest.raises(RemoteProtocolError) as info:
        fed.clients[1].handle(_bare(roster, entries=tuple(entries)))
    assert info.value.rule is Rule.MALFORMED
    assert fed.clients[1].state is ClientState.ABORTED
    # the share delivery's recipient and its ciphertexts' keys
    for field in ("recipient", "ciphertexts"):
        fed = Federation(CONFIG)
        fed.advertise()
        fed.step()
        delivery = fed.pending[1]
        if field == "recipient":
            forged = _bare(delivery, recipient=bomb(1))
        elif bomb is _HashBomb:
            continue  # cannot be a key of any dict
        else:
            forged = _bare(delivery, ciphertexts={
                (bomb(k) if i == 0 else k): v
                for i, (k, v) in enumerate(delivery.ciphertexts.items())})
        with pytest.raises(RemoteProtocolError) as info:
            fed.clients[1].handle(forged)
        assert info.value.rule is Rule.MALFORMED
