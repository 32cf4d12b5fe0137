"""Adversarial review of the client's columnar roster checks
(``ClientSession`` on a :class:`RosterEntries` roster, SPEC [R0-7]: every
sender is an invited client id), with a real session.

A malicious server talking to clients in memory hands them a roster as
columns whose sender column is not an integer array: ``[1, 2, 3.5, 4, 5]``
(client 3 dropped, a sybil "3.5" with the server's keys in its place).  The
range check of the default ids (``1 <= senders <= n``, senders ascending)
passed it; the client then failed deep in key derivation with a bare
``struct.error`` (and with ``[1, 1.5, 2, ...]`` with Shamir's
``ConfigurationError``), not a refusal naming the server, the round and the
rule.  The wire decoder always builds a ``uint32`` column, so only in-memory
servers can do this.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from securefl import Round, SecAggConfig
from securefl.errors import RemoteProtocolError, Rule
from securefl.hazmat.agreement import KeyPair
from securefl.hazmat.randomness import default_random
from securefl.protocol import ClientState
from securefl.protocol.inmemory import SessionDriver
from securefl.protocol.messages import KeyRoster
from securefl.protocol.roster import RosterEntries

CONFIG = SecAggConfig(num_clients=5, vector_length=4, bits=16, threshold=3)


def _columns(roster: KeyRoster) -> tuple[np.ndarray, np.ndarray]:
    senders = np.array([e.sender for e in roster.entries], dtype=np.uint32)
    fields = np.frombuffer(b"".join(e.encryption_key + e.masking_key + e.seed_commitment
                                    for e in roster.entries), dtype=np.uint8).reshape(-1, 96)
    return senders, fields


@pytest.mark.parametrize("senders", [[1, 2, 3.5, 4, 5], [1, 1.5, 2, 4, 5]],
                         ids=["sybil-3.5", "sybil-1.5"])
def test_a_roster_column_of_non_integer_senders_is_refused(senders: list[float]) -> None:
    driver = SessionDriver(CONFIG, {c: np.zeros(4, dtype=np.uint64) for c in CONFIG.ids})
    driver.start(skip=[3])
    roster = driver.close()[1]
    assert isinstance(roster, KeyRoster)
    _, fields = _columns(roster)
    forged = fields.copy()
    # the sybil's keys: another client's keys with one bit flipped (distinct)
    rows = [forged[0], forged[1], forged[1] ^ 1, forged[2], forged[3]]
    if senders[1] == 1.5:
        rows = [forged[0], forged[0] ^ 1, forged[1], forged[2], forged[3]]
    columns = RosterEntries(np.array(senders, dtype=np.float64), np.array(rows, dtype=np.uint8))
    client = driver.clients[1]
    with pytest.raises(RemoteProtocolError) as info:
        client.handle(KeyRoster(roster.config_digest, columns))
    assert info.value.peer == "server" and info.value.round is Round.SHARE_KEYS
    assert info.value.rule in (Rule.MALFORMED, Rule.UNKNOWN_PEER)
    assert client.state is ClientState.ABORTED


def test_the_honest_columnar_roster_is_accepted() -> None:
    driver = SessionDriver(CONFIG, {c: np.zeros(4, dtype=np.uint64) for c in CONFIG.ids})
    driver.start(skip=[3])
    roster = driver.close()[1]
    senders, fields = _columns(roster)
    reply = driver.clients[1].handle(KeyRoster(roster.config_digest,
                                               RosterEntries(senders, fields)))
    assert reply.sender == 1


def test_a_column_roster_whose_hashed_rows_are_not_its_keys_gets_their_session_id() -> None:
    # the optional ``rows`` (the entries as the session id hashes them) of a
    # columnar roster made in memory: the honest roster's rows, but client
    # 3's encryption key in ``fields`` (what the client encrypts to) swapped
    # for the server's.  Before the fix the client derived the honest
    # roster's session id while using the forged key.
    from securefl.protocol import derivation as d

    driver = SessionDriver(CONFIG, {c: np.zeros(4, dtype=np.uint64) for c in CONFIG.ids})
    driver.start()
    roster = driver.close()[1]
    senders, fields = _columns(roster)
    rows = np.empty((len(senders), 100), dtype=np.uint8)
    rows[:, :4] = senders.astype(">u4").view(np.uint8).reshape(-1, 4)
    rows[:, 4:] = fields
    forged = fields.copy()
    forged[2, :32] ^= 1
    client = driver.clients[1]
    client.handle(KeyRoster(roster.config_digest, RosterEntries(senders, forged, rows)))
    used = RosterEntries(senders, forged)
    assert client.session_id == d.session_id(roster.config_digest, tuple(used))
    assert client.session_id != d.session_id(roster.config_digest, roster.entries)


def test_decoded_rosters_still_hash_their_rows_in_place() -> None:
    from securefl import wire
    from securefl.protocol import derivation as d
    from securefl.protocol.roster import _rows_hold, session_id_of

    config = SecAggConfig(num_clients=70, vector_length=4, bits=16, threshold=3)
    driver = SessionDriver(config, {c: np.zeros(4, dtype=np.uint64) for c in config.ids})
    driver.start()
    roster = driver.close()[1]
    decoded = wire.decode(wire.encode(roster))
    entries = decoded.entries
    assert isinstance(entries, RosterEntries) and entries.rows is not None
    assert _rows_hold(entries, entries.rows)
    assert session_id_of(roster.config_digest, entries) == d.session_id(roster.config_digest,
                                                                        roster.entries)


class _Misleading(RosterEntries):
    """A columnar roster whose ``find`` shows another encryption key for
    client 3 than its columns (which the session id hashes) hold."""

    fake: bytes = b""

    def find(self, sender: int) -> Any:
        entry = super().find(sender)
        if sender == 3 and entry is not None:
            return dataclasses.replace(entry, encryption_key=self.fake)
        return entry


class _SubclassRosters(SessionDriver):
    def to_client(self, rnd: Round, cid: int, message: Any) -> Any:
        if isinstance(message, KeyRoster):
            senders, fields = _columns(message)
            entries = _Misleading(senders, fields.copy())
            entries.fake = KeyPair.generate(default_random(None)).public_bytes
            message = KeyRoster(message.config_digest, entries)
        return message


def test_a_roster_subclass_cannot_show_other_keys_than_it_hashes() -> None:
    # every client gets the honest roster's columns, but find(3) shows a key
    # of the server's: before the fix clients 1, 2, 4, 5 encrypted their
    # shares for 3 to the server's key (the session id being the honest
    # roster's), and the round failed only because 3 saw its own key altered
    gen = np.random.default_rng(1)
    inputs = {c: gen.integers(0, 2**16, 4, dtype=np.uint64) for c in CONFIG.ids}
    driver = _SubclassRosters(CONFIG, inputs)
    driver.run()
    assert driver.result.survivors == CONFIG.ids
    assert not driver.result.excluded
    expected = sum(inputs.values()) & np.uint64(2**16 - 1)
    assert np.array_equal(driver.result.total, expected)
