"""Adversarial review of the client's duplicate handling by fingerprint
([CLI-2]; ``securefl.protocol.client._fingerprint``), with real sessions.

A client remembers an answered survivor-list request by a SHA-256 over its
fields.  The server (malicious, in memory: it hands the client any object)
then sends:

* an exact duplicate, with the lists as plain tuples or as ``IdTuple``: the
  same reply, nothing changes;
* a different request (another recipient, session id, an id moved between
  the lists, an id added or removed): refused with a typed error naming the
  server, the round and the rule, and the client reveals nothing new;
* a request whose recipient does not fit in 64 bits: before the fix the
  fingerprint raised a bare ``OverflowError`` (``int.to_bytes``) from
  :meth:`ClientSession.handle`, not a :class:`SecureFLError`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefl import Round, SecAggConfig
from securefl.errors import ProtocolError, SecureFLError
from securefl.hazmat.randomness import DeterministicRandom
from securefl.protocol import ClientState, SecurityMode
from securefl.protocol.inmemory import SessionDriver
from securefl.protocol.messages import ConsistencyRequest, UnmaskingRequest
from securefl.protocol.roster import IdTuple

CONFIG = SecAggConfig(num_clients=6, vector_length=8, bits=16, threshold=3)


class _Recorder(SessionDriver):
    """Runs a session, client 4 dropping before its masked input (so the
    dropped list is not empty), and keeps every request the clients answered."""

    def __init__(self, config: SecAggConfig) -> None:
        gen = np.random.default_rng(3)
        inputs = {c: gen.integers(0, 2**16, config.vector_length, dtype=np.uint64)
                  for c in config.ids}
        super().__init__(config, inputs, rng=DeterministicRandom(bytes(32)),
                         dropouts={4: Round.MASKED_INPUT_COLLECTION})
        self.seen: dict[tuple[int, type], tuple[Any, Any]] = {}

    def client_handle(self, rnd: Round, cid: int, message: Any) -> Any:
        reply = super().client_handle(rnd, cid, message)
        self.seen[(cid, type(message))] = (message, reply)
        return reply


def _session(config: SecAggConfig) -> _Recorder:
    driver = _Recorder(config)
    driver.run()
    return driver


@pytest.fixture(scope="module")
def semi_honest() -> _Recorder:
    return _session(CONFIG)


@pytest.mark.parametrize("recipient", [1 << 63, 1 << 64, 1 << 200, -(1 << 63) - 1])
def test_a_recipient_beyond_64_bits_is_a_typed_refusal(semi_honest: _Recorder,
                                                       recipient: int) -> None:
    request, reply = semi_honest.seen[(1, UnmaskingRequest)]
    client = semi_honest.clients[1]
    assert client.state is ClientState.DONE
    with pytest.raises(SecureFLError) as info:
        client.handle(dataclasses.replace(request, recipient=recipient))
    assert isinstance(info.value, ProtocolError)
    assert info.value.peer == "server" and info.value.round is Round.UNMASKING
    assert client.state is ClientState.DONE
    assert client.handle(request) is reply  # still answers the exact duplicate


def test_a_recipient_beyond_64_bits_before_unmasking_is_a_typed_refusal() -> None:
    # active mode: the consistency request is answered, the client waits for
    # the unmasking request; a huge recipient on a second consistency request
    config = SecAggConfig(num_clients=6, vector_length=8, bits=16, threshold=4,
                          mode=SecurityMode.ACTIVE)
    driver = _Recorder(config)
    driver.start()
    driver.close()
    driver.step()
    driver.step()  # R0..R2 closed
    driver.answer()  # the consistency requests answered
    answered = [(cid, m) for (cid, kind), (m, _) in driver.seen.items()
                if kind is ConsistencyRequest]
    assert answered
    cid, request = answered[0]
    client = driver.clients[cid]
    assert client.state is ClientState.CONSISTENCY_SIGNED
    with pytest.raises(SecureFLError) as info:
        client.handle(dataclasses.replace(request, recipient=1 << 64))
    assert isinstance(info.value, ProtocolError) and info.value.peer == "server"


_MUTATIONS = st.sampled_from(["same-tuple", "same-idtuple", "recipient", "session",
                              "move-to-dropped", "move-to-survivors", "add", "remove"])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(mutation=_MUTATIONS, data=st.data())
def test_duplicates_get_the_same_reply_and_anything_else_is_refused(
        semi_honest: _Recorder, mutation: str, data: st.DataObject) -> None:
    cid = data.draw(st.sampled_from([1, 2, 3, 5, 6]), label="client")
    request, reply = semi_honest.seen[(cid, UnmaskingRequest)]
    survivors, dropped = list(request.survivors), list(request.dropped)
    assert dropped == [4]
    if mutation == "same-tuple":
        other = dataclasses.replace(request, survivors=tuple(survivors), dropped=tuple(dropped))
    elif mutation == "same-idtuple":
        other = dataclasses.replace(request, survivors=IdTuple(survivors),
                                    dropped=IdTuple(dropped))
    elif mutation == "recipient":
        other = dataclasses.replace(request, recipient=data.draw(
            st.integers(-(1 << 70), 1 << 70).filter(lambda r: r != cid)))
    elif mutation == "session":
        other = dataclasses.replace(request, session_id=data.draw(
            st.binary(min_size=0, max_size=40).filter(lambda s: s != request.session_id)))
    elif mutation == "move-to-dropped":
        u = data.draw(st.sampled_from([s for s in survivors if s != cid]))
        other = dataclasses.replace(request, survivors=tuple(s for s in survivors if s != u),
                                    dropped=tuple(sorted([*dropped, u])))
    elif mutation == "move-to-survivors":
        other = dataclasses.replace(request, survivors=tuple(sorted([*survivors, 4])),
                                    dropped=())
    elif mutation == "add":
        other = dataclasses.replace(request, dropped=(4, 7))
    else:
        u = data.draw(st.sampled_from([s for s in survivors if s != cid]))
        other = dataclasses.replace(request, survivors=tuple(s for s in survivors if s != u))
    client = semi_honest.clients[cid]
    if mutation.startswith("same"):
        assert client.handle(other) is reply
    else:
        with pytest.raises(ProtocolError) as info:
            client.handle(other)
        assert info.value.peer == "server" and info.value.round is Round.UNMASKING
    assert client.state is ClientState.DONE
    assert client.handle(request) is reply
