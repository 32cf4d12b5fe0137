"""Large plain rosters are decoded as columns (RosterEntries) and checked by
the client with array operations: the same message, the same session id, and
the same refusals as the entry-by-entry path, played here as a malicious
server tampering with a 70-client roster that went through the wire codec."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl import wire
from securefl.errors import RemoteProtocolError, Rule
from securefl.hazmat.agreement import FIELD_PRIME
from securefl.protocol import SecAggConfig
from securefl.protocol import derivation as d
from securefl.protocol.client import ClientState
from securefl.protocol.inmemory import SessionDriver
from securefl.protocol.messages import AdvertiseKeys, KeyRoster
from securefl.protocol.roster import RosterEntries, session_id_of

N = 70


@settings(max_examples=20, deadline=None)
@given(count=st.integers(64, 90), seed=st.integers(0, 2**32 - 1))
def test_columns_are_the_roster(count: int, seed: int) -> None:
    rng = random.Random(seed)
    ids: set[int] = set()
    while len(ids) < count:  # ids of every varint width (1 to 5 bytes)
        ids.add(rng.randint(1, (1 << rng.choice([7, 14, 21, 28, 31])) - 2))
    ids_sorted = sorted(ids)
    roster = KeyRoster(b"d" * 32, tuple(
        AdvertiseKeys(i, rng.randbytes(32), rng.randbytes(32), None, rng.randbytes(32))
        for i in ids_sorted))
    encoded = wire.encode(roster)
    back = wire.decode(encoded)
    assert isinstance(back, KeyRoster) and isinstance(back.entries, RosterEntries)
    assert back == roster and tuple(back.entries) == roster.entries
    assert wire.encode(back) == encoded
    assert session_id_of(b"d" * 32, back.entries) == d.session_id(b"d" * 32, roster.entries)
    assert back.entries.find(ids_sorted[5]) == roster.entries[5]
    assert back.entries.find(ids_sorted[-1] + 1) is None


def _tampered(change: str) -> tuple[SessionDriver, KeyRoster]:
    config = SecAggConfig(num_clients=N, vector_length=4, bits=16)
    driver = SessionDriver(config, dict.fromkeys(config.ids))
    driver.start()
    roster = driver.close()[1]
    entries = list(roster.entries)
    if change == "duplicate":  # client 40 re-advertises client 30's masking key
        entries[39] = dataclasses.replace(entries[39], masking_key=entries[29].masking_key)
    elif change == "top-bit":
        key = bytearray(entries[50].encryption_key)
        key[31] |= 0x80
        entries[50] = dataclasses.replace(entries[50], encryption_key=bytes(key))
    elif change == "u-at-least-p":
        entries[60] = dataclasses.replace(entries[60],
                                          masking_key=(FIELD_PRIME + 3).to_bytes(32, "little"))
    elif change == "stranger":
        entries[-1] = dataclasses.replace(entries[-1], sender=N + 5)
    return driver, dataclasses.replace(roster, entries=tuple(entries))


@pytest.mark.parametrize(("change", "rule"), [
    ("duplicate", Rule.DUPLICATE_KEY), ("top-bit", Rule.INVALID_PUBLIC_KEY),
    ("u-at-least-p", Rule.INVALID_PUBLIC_KEY), ("stranger", Rule.UNKNOWN_PEER)])
def test_a_tampered_columnar_roster_is_refused(change: str, rule: Rule) -> None:
    driver, roster = _tampered(change)
    received = wire.decode(wire.encode(roster))
    assert isinstance(received, KeyRoster) and isinstance(received.entries, RosterEntries)
    client = driver.clients[1]
    with pytest.raises(RemoteProtocolError) as info:
        client.handle(received)
    assert info.value.rule is rule
    assert client.state is ClientState.ABORTED


def test_an_untampered_columnar_roster_is_answered() -> None:
    driver, roster = _tampered("none")
    received = wire.decode(wire.encode(roster))
    assert isinstance(received.entries, RosterEntries)
    reply = driver.clients[1].handle(received)
    assert reply.session_id == d.session_id(roster.config_digest, roster.entries)
    assert set(reply.ciphertexts) == set(range(2, N + 1))
