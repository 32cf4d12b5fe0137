"""The O(n)-per-client paths used with thousands of clients give exactly what
the general paths give: the roster decoded straight from its bytes, id lists
carried with their arrays (IdTuple), the configuration digest hashed in one
update, and the client's array checks of the survivor and dropped lists (the
same refusals, with the same rules, as a malicious server's lists get from a
plain tuple)."""

from __future__ import annotations

import hashlib
import pickle
import random
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefl import Round, wire
from securefl.errors import RemoteProtocolError, Rule, WireFormatError
from securefl.protocol import SecAggConfig
from securefl.protocol.client import ClientState
from securefl.protocol.config import PROTOCOL_VERSION
from securefl.protocol.harary import HararyGraph
from securefl.protocol.inmemory import SessionDriver
from securefl.protocol.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    KeyRoster,
    UnmaskingRequest,
)
from securefl.protocol.roster import IdTuple, RosterEntries
from securefl.wire import codec

FAST = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _roster(rng: random.Random, count: int) -> KeyRoster:
    ids: set[int] = set()
    while len(ids) < count:  # senders of every varint width (1 to 5 bytes)
        ids.add(rng.randint(1, (1 << rng.choice([7, 14, 21, 28, 31])) - 2))
    return KeyRoster(rng.randbytes(32), tuple(
        AdvertiseKeys(i, rng.randbytes(32), rng.randbytes(32), None, rng.randbytes(32))
        for i in sorted(ids)))


def _general(raw: bytes) -> object:
    """The general decoder's answer (protobuf parse and re-encode), or its
    refusal."""
    saved = codec._fast_roster
    codec._fast_roster = lambda raw, config: None  # type: ignore[assignment]
    try:
        return wire.decode(raw)
    except WireFormatError as exc:
        return exc
    finally:
        codec._fast_roster = saved  # type: ignore[assignment]


@FAST
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(64, 120), data=st.data())
def test_the_roster_read_from_its_bytes_is_what_the_general_decoder_reads(
        seed: int, count: int, data: st.DataObject) -> None:
    roster = _roster(random.Random(seed), count)
    raw = bytearray(wire.encode(roster))
    fast = codec._fast_roster(bytes(raw), None)
    assert fast is not None and fast == roster and isinstance(fast.entries, RosterEntries)
    for _ in range(data.draw(st.integers(0, 3), label="mutations")):
        at = data.draw(st.integers(0, len(raw) - 1), label="at")
        op = data.draw(st.sampled_from(["set", "insert", "delete"]), label="op")
        if op == "set":
            raw[at] = data.draw(st.integers(0, 255), label="byte")
        elif op == "insert":
            raw.insert(at, data.draw(st.integers(0, 255), label="byte"))
        else:
            del raw[at]
    mutated = bytes(raw)
    fast = codec._fast_roster(mutated, None)
    general = _general(mutated)
    if fast is not None:
        # accepted only what the general decoder accepts, as the same roster,
        # and only the canonical bytes of it
        assert not isinstance(general, WireFormatError)
        assert fast == general and wire.encode(fast) == mutated


def test_a_second_encoding_of_a_roster_is_refused_on_every_path() -> None:
    # a sender written as a non-minimal varint (0x81 0x00 for 1) is the same
    # roster in a second encoding: refused, whichever path reads it
    roster = _roster(random.Random(5), 70)
    first = roster.entries[0]
    roster = KeyRoster(roster.config_digest, (AdvertiseKeys(1, *[
        getattr(first, f) for f in ("encryption_key", "masking_key", "signature",
                                    "seed_commitment")]), *roster.entries[1:]))
    raw = wire.encode(roster)
    head = raw.index(b"\x1a\x68\x08\x01", 38)  # the first entry: 104 bytes, sender 1
    entry = b"\x1a\x69\x08\x81\x00" + raw[head + 4:head + 106]
    body = raw[raw.index(b"\x08\x01\x12\x20"):head] + entry + raw[head + 106:]
    second = b"\x12" + codec._encode_varint(len(body)) + body
    assert second != raw
    assert codec._fast_roster(second, None) is None
    with pytest.raises(WireFormatError) as info:
        wire.decode(second)
    assert info.value.reason == codec.WireIssue.NON_CANONICAL.value


@FAST
@given(ids=st.lists(st.integers(1, 2**31 - 2), unique=True, max_size=50))
def test_id_tuples_are_their_tuples(ids: list[int]) -> None:
    ids.sort()
    t = IdTuple(ids)
    assert t == tuple(ids) and hash(t) == hash(tuple(ids)) and repr(t) == repr(tuple(ids))
    assert t.array.tolist() == ids and not t.array.flags.writeable
    back = pickle.loads(pickle.dumps(t))
    assert back == t and back.array.tolist() == ids
    request = UnmaskingRequest(3, b"s" * 32, t, ())
    decoded = wire.decode(wire.encode(request))
    assert isinstance(decoded, UnmaskingRequest) and decoded == request
    assert isinstance(decoded.survivors, IdTuple)
    assert decoded.survivors.array.tolist() == ids


@FAST
@given(ids=st.lists(st.integers(1, 2**31 - 2), unique=True, min_size=2, max_size=300),
       context=st.binary(max_size=20))
def test_the_digest_is_the_per_id_formula(ids: list[int], context: bytes) -> None:
    config = SecAggConfig(num_clients=len(ids), vector_length=3, client_ids=tuple(ids),
                          context=context)
    h = hashlib.sha256()
    h.update(b"securefl/secagg/config")
    h.update(struct.pack(">IIIQB", PROTOCOL_VERSION, config.num_clients, config.t,
                         config.vector_length, config.bits))
    h.update(config.mode.value.encode().ljust(16, b"\0"))
    h.update(struct.pack(">I", len(config.ids)))
    for cid in sorted(ids):
        h.update(struct.pack(">I", cid))
    graph = config.graph.describe().encode()
    h.update(struct.pack(">I", len(graph)) + graph)
    h.update(struct.pack(">I", len(context)) + context)
    h.update(struct.pack(">I", config.floor))
    assert config.digest() == h.digest() == config.digest()
    assert config.id_set == frozenset(ids)
    assert config.id_array.tolist() == sorted(ids)
    # equality and hashing still look at the fields only
    twin = SecAggConfig(num_clients=len(ids), vector_length=3, client_ids=tuple(ids),
                        context=context)
    assert twin == config and hash(twin) == hash(config)


# -- a malicious server's lists: the array checks refuse what the tuple checks did --

N = 80


def _unmask_stage() -> tuple[SessionDriver, dict[int, UnmaskingRequest]]:
    config = SecAggConfig(num_clients=N, vector_length=4, bits=16, threshold=5,
                          graph=HararyGraph(10))
    driver = SessionDriver(config, {c: np.zeros(4, dtype=np.uint64) for c in config.ids},
                           dropouts={N: Round.MASKED_INPUT_COLLECTION})
    driver.start()
    driver.close()
    driver.step()
    requests = driver.step()
    return driver, requests


def _lists(kind: str, survivors: tuple[int, ...], dropped: tuple[int, ...],
           victim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    s, d = list(survivors), list(dropped)
    if kind == "unsorted":
        s[0], s[1] = s[1], s[0]
    elif kind == "repeat":
        s.insert(1, s[0])
    elif kind == "stranger":
        s.append(10**6)
    elif kind == "own-dropped":
        s.remove(victim)
        d = sorted([*d, victim])
    elif kind == "overlap":
        d = sorted({*d, s[-1]})
    elif kind == "dropped-stranger":
        d = sorted([*d, 10**6])
    elif kind == "missing-self":
        s.remove(victim)
    return tuple(s), tuple(d)


@pytest.mark.parametrize(("kind", "rule"), [
    ("unsorted", Rule.MALFORMED), ("repeat", Rule.MALFORMED),
    ("stranger", Rule.UNKNOWN_PEER), ("own-dropped", Rule.OWN_SHARE_REQUESTED),
    ("overlap", Rule.OVERLAPPING_LISTS), ("dropped-stranger", Rule.UNKNOWN_PEER),
    ("missing-self", Rule.LISTS_CONTRADICT_VIEW)])
@pytest.mark.parametrize("as_ids", [False, True])
def test_tampered_lists_are_refused_whether_or_not_they_carry_arrays(
        kind: str, rule: Rule, as_ids: bool) -> None:
    driver, requests = _unmask_stage()
    victim = min(requests)
    request = requests[victim]
    s, d = _lists(kind, tuple(request.survivors), tuple(request.dropped), victim)
    wrap = IdTuple if as_ids else tuple
    forged = UnmaskingRequest(victim, request.session_id, wrap(s), wrap(d))
    client = driver.clients[victim]
    with pytest.raises(RemoteProtocolError) as info:
        client.handle(forged)
    assert info.value.rule is rule
    assert client.state is ClientState.ABORTED
    # the untampered request would have been answered by another client
    other = max(requests)
    assert driver.clients[other].handle(requests[other]).sender == other


# -- id lists as packed varints (UnmaskingRequest, ConsistencyRequest) ----------


def _protobuf_encode(message: object) -> bytes:
    saved = codec._fast_list_encode
    codec._fast_list_encode = lambda message: None  # type: ignore[assignment]
    try:
        return wire.encode(message)  # type: ignore[arg-type]
    finally:
        codec._fast_list_encode = saved  # type: ignore[assignment]


def _general_lists(raw: bytes) -> object:
    saved = codec._fast_list_decode
    codec._fast_list_decode = lambda raw, config: None  # type: ignore[assignment]
    try:
        return wire.decode(raw)
    except WireFormatError as exc:
        return exc
    finally:
        codec._fast_list_decode = saved  # type: ignore[assignment]


_IDS = st.lists(st.one_of(st.integers(1, 200), st.integers(1, 2**31 - 2)), unique=True,
                max_size=60).map(sorted)


@FAST
@given(survivors=_IDS, dropped=_IDS, recipient=st.integers(1, 2**31 - 2),
       consistency=st.booleans(), as_ids=st.booleans(), data=st.data())
def test_id_lists_are_written_and_read_exactly_as_protobuf_does(
        survivors: list[int], dropped: list[int], recipient: int, consistency: bool,
        as_ids: bool, data: st.DataObject) -> None:
    wrap = IdTuple if as_ids else tuple
    message: object = (ConsistencyRequest(recipient, b"s" * 32, wrap(survivors)) if consistency
                       else UnmaskingRequest(recipient, b"s" * 32, wrap(survivors),
                                             wrap(dropped)))
    raw = wire.encode(message)  # type: ignore[arg-type]
    assert raw == _protobuf_encode(message)
    back = wire.decode(raw)
    assert back == message and back == _general_lists(raw)
    assert isinstance(back.survivors, IdTuple)  # type: ignore[union-attr]
    mutated = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        at = data.draw(st.integers(0, len(mutated) - 1), label="at")
        op = data.draw(st.sampled_from(["set", "insert", "delete"]), label="op")
        if op == "set":
            mutated[at] = data.draw(st.integers(0, 255), label="byte")
        elif op == "insert":
            mutated.insert(at, data.draw(st.integers(0, 255), label="byte"))
        elif len(mutated) > 1:
            del mutated[at]
    fast = codec._fast_list_decode(bytes(mutated), None)
    if fast is not None:
        general = _general_lists(bytes(mutated))
        assert not isinstance(general, WireFormatError)
        assert fast == general and wire.encode(fast) == bytes(mutated)


def test_non_minimal_varints_in_a_survivor_list_are_refused() -> None:
    request = UnmaskingRequest(3, b"s" * 32, (1, 2, 300), ())
    raw = wire.encode(request)
    # survivor 2 as 0x82 0x00: the same list in a second encoding
    body = raw[raw.index(b"\x22"):]
    assert body[:6] == b"\x22\x04\x01\x02\xac\x02"
    inner = raw[2:raw.index(b"\x22")] + b"\x22\x05\x01\x82\x00\xac\x02"
    second = b"\x42" + codec._encode_varint(len(inner)) + inner
    assert codec._fast_list_decode(second, None) is None
    with pytest.raises(WireFormatError) as info:
        wire.decode(second)
    assert info.value.reason == codec.WireIssue.NON_CANONICAL.value


# -- [CLI-2] with O(1) memory: fingerprints of answered O(n) messages ----------


def _through_wire(n: int) -> tuple[SessionDriver, dict[int, bytes], dict[int, object]]:
    """A session whose rosters reach the clients through the codec (columns)."""
    config = SecAggConfig(num_clients=n, vector_length=4, bits=16, threshold=5,
                          graph=HararyGraph(10))
    driver = SessionDriver(config, {c: np.zeros(4, dtype=np.uint64) for c in config.ids})
    driver.start()
    rosters = driver.close()
    raw = {c: wire.encode(r) for c, r in rosters.items()}  # type: ignore[arg-type]
    return driver, raw, rosters


def test_answered_rosters_and_lists_are_remembered_by_fingerprint_and_still_recognised(
        ) -> None:
    driver, raw, _ = _through_wire(N)
    replies = {}
    for c, data in raw.items():
        replies[c] = driver.clients[c].handle(wire.decode(data))
    driver.send(replies)
    client = driver.clients[1]
    key, _ = client._answered[KeyRoster]
    assert type(key).__name__ == "_Fingerprint"  # no O(n) roster kept
    # the same bytes decoded again (another object), and the equal roster as
    # a plain tuple, are the exact duplicate: the same reply, nothing changes
    again = wire.decode(raw[1])
    assert client.handle(again) is replies[1]
    assert client.handle(KeyRoster(again.config_digest, tuple(again.entries))) is replies[1]
    deliveries = driver.close()
    driver.answer()
    requests = driver.close()
    request = wire.decode(wire.encode(requests[1]))  # type: ignore[arg-type]
    answer = client.handle(request)
    assert type(client._answered[UnmaskingRequest][0]).__name__ == "_Fingerprint"
    assert client.handle(wire.decode(wire.encode(requests[1]))) is answer  # type: ignore[arg-type]
    assert client.handle(requests[1]) is answer  # the plain-tuple form
    assert deliveries


@pytest.mark.parametrize("change", ["key-byte", "order"])
def test_a_different_roster_in_the_answered_slot_still_aborts(change: str) -> None:
    driver, raw, rosters = _through_wire(N)
    client = driver.clients[2]
    client.handle(wire.decode(raw[2]))
    entries = list(rosters[2].entries)  # type: ignore[attr-defined]
    if change == "key-byte":
        key = bytearray(entries[40].masking_key)
        key[0] ^= 1
        entries[40] = AdvertiseKeys(entries[40].sender, entries[40].encryption_key, bytes(key),
                                    None, entries[40].seed_commitment)
    else:  # the same entries out of order: the same session id, another message
        entries[3], entries[4] = entries[4], entries[3]
    forged = KeyRoster(rosters[2].config_digest, tuple(entries))  # type: ignore[attr-defined]
    with pytest.raises(RemoteProtocolError):
        client.handle(forged)
    assert client.state is ClientState.ABORTED


def test_a_different_survivor_list_in_the_answered_slot_still_aborts() -> None:
    driver, requests = _unmask_stage()
    victim = min(requests)
    request = requests[victim]
    client = driver.clients[victim]
    client.handle(wire.decode(wire.encode(request)))
    survivors = list(request.survivors)
    dropped = list(request.dropped)
    moved = next(u for u in survivors if u != victim)
    forged = UnmaskingRequest(victim, request.session_id,
                              IdTuple([u for u in survivors if u != moved]),
                              IdTuple(sorted([*dropped, moved])))
    with pytest.raises(RemoteProtocolError):
        client.handle(forged)


def _reference_varints(raw: bytes) -> list[int] | None:
    """Packed varints read one byte at a time, with the fast path's rules
    (minimal, at most 5 bytes, below 2^32, ends on a boundary)."""
    out, value, shift, size = [], 0, 0, 0
    for byte in raw:
        value |= (byte & 0x7F) << shift
        shift, size = shift + 7, size + 1
        if not byte & 0x80:
            if size > 5 or (size > 1 and byte == 0) or value >= 1 << 32:
                return None
            out.append(value)
            value, shift, size = 0, 0, 0
    return None if size else out


@FAST
@given(raw=st.lists(st.one_of(st.integers(0, 2**35).map(codec._encode_varint),
                              st.binary(min_size=1, max_size=7)), max_size=40).map(b"".join),
       per_pass=st.integers(1, 9))
def test_packed_varints_read_in_passes_are_the_byte_by_byte_reading(
        raw: bytes, per_pass: int) -> None:
    """``_unpack_varints`` works in passes of ``_VARINT_PASS`` varints (a
    long id list costs a bounded extra, not 40 bytes a byte); whatever the
    pass size, it reads exactly what a byte-by-byte reader reads, and refuses
    (None) exactly what that reader refuses, wherever the bad varint falls."""
    expected = _reference_varints(raw)
    saved = codec._VARINT_PASS
    try:
        codec._VARINT_PASS = per_pass
        got = codec._unpack_varints(raw)
    finally:
        codec._VARINT_PASS = saved
    if expected is None:
        assert got is None
    else:
        assert got is not None and got.tolist() == expected
