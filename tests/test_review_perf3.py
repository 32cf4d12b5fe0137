"""Adversarial review of the third batch of performance changes: the codec's
share-map and masked-input fast paths, batched Shamir reconstruction, the
server's one-pass routing and per-class field checks, and the client's
batched share decryption.

Tests named ``test_hole_...`` perform an attack that succeeded against the
code before the fix in this branch; the others pin down a property the
review attacked and found sound.
"""

from __future__ import annotations

import dataclasses
import importlib
import multiprocessing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from securefl import Round, SecAggConfig, SecurityMode, wire
from securefl.errors import ProtocolError, RemoteProtocolError, Rule
from securefl.hazmat.shamir import PRIME
from securefl.protocol import derivation as d
from securefl.protocol import validation
from securefl.protocol.client import ClientSession
from securefl.protocol.inmemory import SessionDriver
from securefl.protocol.messages import (
    EncryptedShares,
    KeyRoster,
    MaskedInput,
    UnmaskingRequest,
    UnmaskingResponse,
)
from securefl.protocol.roster import IdTuple, RosterEntries
from securefl.wire import codec

# -- validation.check_message_fields: the per-class cache ----------------------


def test_hole_an_instance_cannot_choose_its_checked_fields(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A message instance carrying its own ``__dataclass_fields__`` (a frozen
    dataclass without slots takes one through ``object.__setattr__``) chose
    which of its fields were checked, and, being the first of its class the
    process checked, cached that choice for every later message of the class:
    after it, no EncryptedShares from anyone had its fields checked."""
    monkeypatch.setattr(validation, "_CHECKS_OF_TYPE", {})
    poisoned = EncryptedShares(1, bytes(32), {2: b"\0" * 144})
    object.__setattr__(poisoned, "__dataclass_fields__", {})
    object.__setattr__(poisoned, "session_id", bytearray(32))  # not bytes
    with pytest.raises(RemoteProtocolError) as caught:
        validation.check_message_fields(poisoned, Round.SHARE_KEYS)
    assert caught.value.rule is Rule.MALFORMED and caught.value.peer == 1
    # and the class's checks are its declared fields, whatever came first
    plain = EncryptedShares(3, bytes(32), {True: b"\0" * 144})  # a bool is no client id
    with pytest.raises(RemoteProtocolError) as caught:
        validation.check_message_fields(plain, Round.SHARE_KEYS)
    assert caught.value.rule is Rule.MALFORMED and caught.value.peer == 3
    checked = {name for name, _, _ in validation._CHECKS_OF_TYPE[EncryptedShares]}
    assert checked == {f.name for f in dataclasses.fields(EncryptedShares)}


# -- benchmarks/scale_round.py: the server child is stopped on every path ------


def _scale_round(monkeypatch: pytest.MonkeyPatch) -> Any:
    # importable by name: the spawned server child imports it to find its target
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    return importlib.import_module("scale_round")


def test_hole_a_failing_benchmark_round_stops_its_server_child(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A round that fails in the parent (here: an input that cannot be made)
    left the server child running, blocked on its socket, for the parent's
    exit to join (a hang) or the garbage collector to close the pipe."""
    module = _scale_round(monkeypatch)
    started: list[Any] = []
    real = module._RemoteServer

    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.append(self._proc)

    def no_input(*_: Any) -> Any:
        raise RuntimeError("the caller's input failed")

    monkeypatch.setattr(module, "_RemoteServer", Recording)
    monkeypatch.setattr(module, "_input", no_input)
    with pytest.raises(RuntimeError, match="input failed"):
        module._stream_round(40, 8, 0.0, False, True)
    assert len(started) == 1
    assert not started[0].is_alive()
    assert started[0] not in multiprocessing.active_children()


# -- the client's id lists: an ndarray subclass cannot show two lists ----------


class _LyingList(np.ndarray):
    """An int64 array whose ``tolist`` (what the client signs and compares
    with what it signed) is another list than its entries (what the client
    checks and reveals by)."""

    shown: list[int]

    def tolist(self) -> Any:  # type: ignore[override]
        return list(self.shown)


def test_hole_an_array_subclass_cannot_split_the_signed_survivor_list() -> None:
    """Active mode: the survivor list's ``array`` is an ndarray subclass whose
    entries leave out survivor 2 (listed as dropped) while its ``tolist`` is
    the list everyone signed.  The client compared that ``tolist`` with what
    it signed and checked the signatures over it, but revealed by the
    entries: it sent 2's masking-KEY share while 2's other holders send 2's
    self-mask SEED shares for the same signed list, so a server handing over
    Python objects could unmask 2's input (the split-list attack the
    signature quorum stops)."""
    config = SecAggConfig(num_clients=6, vector_length=4, bits=16, threshold=4,
                          mode=SecurityMode.ACTIVE)
    driver = SessionDriver(config, {c: np.zeros(4, dtype=np.uint64) for c in config.ids})
    driver.start()
    driver.close()
    driver.step()
    driver.step()
    driver.step()  # consistency signatures collected: unmasking requests pending
    request = driver.pending[1]
    assert isinstance(request, UnmaskingRequest) and 2 in request.survivors
    signed = list(request.survivors)
    entries = np.array([u for u in signed if u != 2], dtype=np.int64).view(_LyingList)
    entries.shown = signed
    survivors = IdTuple(signed)
    survivors.array = entries
    evil = dataclasses.replace(request, survivors=survivors,
                               dropped=IdTuple(sorted({*request.dropped, 2})))
    try:
        response = driver.clients[1].handle(evil)
    except ProtocolError as exc:
        assert exc.peer == "server" and exc.round is Round.UNMASKING
        return
    assert 2 not in response.key_shares, "revealed a signed survivor's masking-key share"


# -- the server's share maps: read once, through their items -------------------


class _LyingMap(Mapping[int, bytes]):
    """The honest shares through ``keys``/``values``/``items`` (what the
    receipt checks read), ``served`` through ``[]`` (what the
    reconstruction read); ``items`` raises with ``broken``."""

    def __init__(self, honest: Mapping[int, bytes], served: bytes, broken: bool = False) -> None:
        self._honest, self._served, self._broken = dict(honest), served, broken

    def __getitem__(self, key: int) -> bytes:
        return self._served

    def __iter__(self) -> Iterator[int]:
        return iter(self._honest)

    def __len__(self) -> int:
        return len(self._honest)

    def keys(self) -> Any:
        return self._honest.keys()

    def values(self) -> Any:
        return self._honest.values()

    def items(self) -> Any:
        if self._broken:
            raise RuntimeError("no items")
        return self._honest.items()


@pytest.mark.parametrize("served", [b"", b"\xff" * 64, b"\x01" * 64],
                         ids=["short", "not-field-elements", "forged"])
def test_hole_a_share_map_cannot_show_the_checks_other_shares(served: bytes) -> None:
    """A client's UnmaskingResponse map whose ``[]`` serves other bytes than
    its ``values``: the server checked the values and reconstructed from
    ``[]``, so a short share crashed the server with a ValueError and shares
    that are not field elements aborted the round with no one blamed.  Now
    the maps are copied once on receipt: the round ends with the exact sum."""
    config = SecAggConfig(num_clients=6, vector_length=4, bits=16, threshold=4)
    inputs = {c: np.full(4, c, dtype=np.uint64) for c in config.ids}
    driver = SessionDriver(config, inputs, dropouts={6: Round.MASKED_INPUT_COLLECTION})
    driver.start()
    driver.close()
    while driver.round is not Round.UNMASKING:
        driver.step()
    replies = driver.answer(send=False)
    honest = replies[1]
    evil = dataclasses.replace(honest)
    object.__setattr__(evil, "self_mask_shares", _LyingMap(honest.self_mask_shares, served))
    replies[1] = evil
    driver.send(replies)
    driver.close()
    assert driver.finished
    assert driver.result.total.tolist() == [1 + 2 + 3 + 4 + 5] * 4
    assert driver.result.blame == ()


def test_a_share_map_without_items_is_refused_typed_naming_its_sender() -> None:
    config = SecAggConfig(num_clients=6, vector_length=4, bits=16, threshold=4)
    driver = SessionDriver(config, {c: np.full(4, c, dtype=np.uint64) for c in config.ids})
    driver.start()
    driver.close()
    while driver.round is not Round.UNMASKING:
        driver.step()
    replies = driver.answer(send=False)
    evil = dataclasses.replace(replies[1])
    object.__setattr__(evil, "self_mask_shares",
                       _LyingMap(replies[1].self_mask_shares, b"", broken=True))
    with pytest.raises(RemoteProtocolError) as caught:
        driver.server.receive(evil)
    assert caught.value.rule is Rule.MALFORMED and caught.value.peer == 1
    del replies[1]
    driver.send(replies)
    driver.close()
    assert driver.finished and driver.result.total.tolist() == [sum(config.ids)] * 4


# -- the client's batched share decryption -------------------------------------


@pytest.mark.parametrize("bad", [b"\xff" * 128, bytes(124) + PRIME.to_bytes(4, "little")],
                         ids=["all-words-out-of-range", "one-word-equal-to-p"])
def test_one_sender_with_unusable_shares_is_the_only_one_excluded(bad: bytes) -> None:
    """Client 2 encrypts, under the genuine pair keys, bundles its recipients
    cannot use (words not below p; a bundle of another length makes a
    ciphertext of another length, which the server refuses): the batched check
    fails, and the per-sender pass excludes 2 and only 2 at every recipient;
    the round ends with the exact sum of the survivors it names, 2 not among
    them.  (That is why one check for all bundles may stand in for one per
    sender: it passes iff every per-sender check does.)"""
    config = SecAggConfig(num_clients=7, vector_length=4, bits=16, threshold=4)
    inputs = {c: np.full(4, 10 * c, dtype=np.uint64) for c in config.ids}
    driver = SessionDriver(config, inputs)
    driver.start()
    driver.close()
    replies = driver.answer(send=False)  # R1: the share ciphertexts
    forger = driver.clients[2]
    sid = replies[2].session_id
    keys = forger._share_keys
    replies[2] = EncryptedShares(2, sid, {v: d.encrypt_shares(keys[v], sid, 2, v, bad[:64],
                                                              bad[64:])
                                          for v in replies[2].ciphertexts})
    driver.send(replies)
    driver.close()
    masked = driver.answer()  # R2
    for c, message in masked.items():
        assert message.excluded == ((2,) if c != 2 else ())
    driver.close()
    while not driver.finished:
        driver.step()
    result = driver.result
    assert 2 not in result.survivors  # (and a complainer with it: SPEC [R2-6])
    assert result.total.tolist() == [sum(10 * c for c in result.survivors) % 2**16] * 4


class _RewritingSignatures(Mapping[int, bytes]):
    """The genuine consistency signatures; reading them rewrites the
    caller-owned buffers of the request's survivor and dropped lists (after
    the client checked them, before it reveals by them)."""

    def __init__(self, genuine: Mapping[int, bytes], rewrite: Any) -> None:
        self._genuine, self._rewrite = dict(genuine), rewrite

    def __getitem__(self, key: int) -> bytes:
        return self._genuine[key]

    def __iter__(self) -> Iterator[int]:
        return iter(self._genuine)

    def __len__(self) -> int:
        return len(self._genuine)

    def items(self) -> Any:
        self._rewrite()
        return self._genuine.items()


def test_hole_the_lists_cannot_change_between_check_and_reveal() -> None:
    """Active mode, client 6 dropped before its masked input: the request's
    lists carry writable arrays of the server's; reading the signatures
    rewrites them (survivors without 2, dropped = [2]).  The client read the
    arrays in place: it checked and signed-compared the genuine lists, then
    revealed by the rewritten ones, sending survivor 2's masking-key share."""
    config = SecAggConfig(num_clients=6, vector_length=4, bits=16, threshold=4,
                          mode=SecurityMode.ACTIVE)
    driver = SessionDriver(config, {c: np.zeros(4, dtype=np.uint64) for c in config.ids},
                           dropouts={6: Round.MASKED_INPUT_COLLECTION})
    driver.start()
    driver.close()
    while driver.round is not Round.UNMASKING:
        driver.step()
    request = driver.pending[1]
    assert tuple(request.survivors) == (1, 2, 3, 4, 5) and tuple(request.dropped) == (6,)
    survivors, dropped = IdTuple(request.survivors), IdTuple(request.dropped)
    survivors.array = np.array(request.survivors, dtype=np.int64)  # writable, the server's
    dropped.array = np.array(request.dropped, dtype=np.int64)

    def rewrite() -> None:
        survivors.array[:] = [1, 3, 4, 5, 5]
        dropped.array[:] = [2]

    evil = dataclasses.replace(request, survivors=survivors, dropped=dropped)
    # (set after construction: __post_init__ would read the map at once)
    object.__setattr__(evil, "signatures", _RewritingSignatures(request.signatures, rewrite))
    try:
        response = driver.clients[1].handle(evil)
    except ProtocolError as exc:
        assert exc.peer == "server" and exc.round is Round.UNMASKING
        return
    assert 2 not in response.key_shares, "revealed a signed survivor's masking-key share"
    assert set(response.self_mask_shares) == {1, 2, 3, 4, 5}


# -- the client's columnar roster: its own plain copy --------------------------


class _ExtraId(np.ndarray):
    """Roster senders whose ``tolist`` adds an id the entries do not hold."""

    def tolist(self) -> Any:  # type: ignore[override]
        return [*np.ndarray.tolist(self), 99]


def test_hole_roster_columns_are_read_as_the_client_hashes_them() -> None:
    """A columnar roster handed over in process, its senders an ndarray
    subclass whose ``tolist`` (the ids the client built its neighbour graph
    from) held an id the entries (hashed into the session id) do not: the
    client crashed with a KeyError (untyped).  Now it reads its own plain
    copy of the columns: it deals to exactly the roster's other clients."""
    config = SecAggConfig(num_clients=70, vector_length=4, bits=16)
    driver = SessionDriver(config, {c: np.zeros(4, dtype=np.uint64) for c in config.ids})
    driver.start()
    driver.close()
    roster = wire.decode(wire.encode(driver.pending[1]))
    assert isinstance(roster, KeyRoster) and type(roster.entries) is RosterEntries
    columns = roster.entries
    evil = dataclasses.replace(roster, entries=RosterEntries(
        columns.senders.view(_ExtraId), columns.fields, columns.rows))
    shares = driver.clients[1].handle(evil)
    assert sorted(shares.ciphertexts) == list(range(2, 71))
    # the session keeps its own roster ids: the caller's buffer may change later
    columns.senders[-1] = 4_000_000
    assert driver.clients[1]._roster_ids.tolist() == list(range(1, 71))
    # and columns that are not arrays are refused typed
    other = ClientSession(config, 1)
    other.start()
    bad = RosterEntries(columns.senders, columns.fields)
    bad.fields = list(columns.fields)  # type: ignore[assignment]
    with pytest.raises(ProtocolError) as caught:
        other.handle(dataclasses.replace(roster, entries=bad))
    assert caught.value.rule is Rule.MALFORMED and caught.value.peer == "server"


# -- the codec's fast paths keep nothing of a caller's buffer --------------------


def test_a_decoded_message_does_not_change_with_the_callers_buffer() -> None:
    """The fast decoders (share maps as records, a long masked input read in
    place) return views and slices of the bytes they read: of the decoder's
    own immutable copy, never of a caller's bytearray or memoryview, so a
    caller (or a transport) reusing its receive buffer cannot change a
    message a session has accepted."""
    sid = bytes(range(32))
    vector = np.arange(5000, dtype=np.uint32)
    messages = [
        MaskedInput(3, sid, vector, (1, 2)),
        EncryptedShares(3, sid, {u: bytes([u]) * 144 for u in (1, 2, 200)}),
        UnmaskingResponse(3, sid, {1: b"\x01" * 64}, {2: b"\x02" * 64}),
    ]
    for message in messages:
        raw = wire.encode(message)
        # (each takes a fast path)
        assert (codec._fast_masked_decode(raw, None) if isinstance(message, MaskedInput)
                else codec._fast_keyed_decode(raw, None)) is not None
        for buffer in (bytearray(raw), memoryview(bytearray(raw))):
            decoded = wire.decode(buffer)
            before = wire.encode(decoded)
            buffer[:] = bytes(len(raw))  # the transport reuses its buffer
            assert wire.encode(decoded) == before == raw
    masked = wire.decode(bytearray(wire.encode(messages[0])))
    assert isinstance(masked, MaskedInput) and not masked.masked.flags.writeable
