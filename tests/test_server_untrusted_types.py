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
