"""In-process rounds hold each masked vector once: a client's sent reply is a
read-only view of immutable bytes and the server keeps it without a second
copy (as it keeps a decoded wire message), so ``secure_sum`` needs the
server's n ring-width vectors plus a few, not twice that; with ``spill=True``
the server's copies go to a temporary file and the clients release theirs, so
it needs a few vectors whatever n.  A vector the caller can still write to,
or make writable again, is copied: a caller reusing its buffer after handing
it over cannot change the sum."""

from __future__ import annotations

import contextlib
import os
import tracemalloc
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl import wire
from securefl.errors import AbortError, LocalProtocolError, Rule
from securefl.hazmat.prg import ring_dtype
from securefl.protocol import Round, SecAggConfig, inmemory
from securefl.protocol.inmemory import SessionDriver, secure_sum
from securefl.protocol.messages import MaskedInput
from securefl.protocol.storage import DirectFileStore


def _inputs(config: SecAggConfig, seed: int) -> dict[int, np.ndarray]:
    gen = np.random.default_rng(seed)
    return {c: gen.integers(0, 1 << config.bits, config.vector_length, dtype=np.uint64)
            for c in config.ids}


def _expected(inputs: dict[int, np.ndarray], ids: Any, bits: int) -> np.ndarray:
    total = np.zeros(len(next(iter(inputs.values()))), dtype=np.uint64)
    for c in ids:
        total += inputs[c]
    return total & np.uint64((1 << bits) - 1)


@pytest.mark.parametrize("bits", [16, 32])
def test_secure_sum_holds_each_masked_vector_once(bits: int) -> None:
    n, m = 32, 1 << 17
    config = SecAggConfig(num_clients=n, vector_length=m, bits=bits)
    inputs = _inputs(config, 3)
    ring = m * ring_dtype(bits).itemsize
    secure_sum(_inputs(config, 4), config)  # modules imported lazily are not the round's
    tracemalloc.start()
    try:
        result = secure_sum(inputs, config)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.array_equal(np.asarray(result.total, dtype=np.uint64),
                          _expected(inputs, config.ids, bits))
    # the server's n vectors plus a constant number of vectors (its sum, a
    # client's input and masked copy in flight, the mask threads' accumulators
    # and buffers: about 10 measured); before, the clients' cached replies
    # doubled the n vectors (about 2n + 8)
    assert peak < (n + 14) * ring


def test_sent_and_decoded_masked_vectors_are_read_only() -> None:
    config = SecAggConfig(num_clients=4, vector_length=50, bits=20)
    driver = SessionDriver(config, _inputs(config, 5))
    driver.start()
    driver.close()
    driver.step()
    replies = driver.answer(send=False)
    reply = replies[1]
    assert isinstance(reply, MaskedInput)
    with pytest.raises(ValueError):
        reply.masked[0] = 0
    decoded = wire.decode(wire.encode(reply, element_bytes=config.wire_element_bytes),
                          config=config)
    assert np.array_equal(decoded.masked, reply.masked)
    with pytest.raises(ValueError):
        decoded.masked[0] = 0


class _ReusingDriver(SessionDriver):
    """A caller that hands the server a writable buffer and then reuses it."""

    def server_receive(self, rnd: Round, cid: int, message: Any) -> None:
        if isinstance(message, MaskedInput):
            buffer = np.array(message.masked)  # writable, owns its memory
            super().server_receive(rnd, cid, MaskedInput(message.sender, message.session_id,
                                                         buffer, message.excluded))
            buffer[:] = 0  # reused for something else after the hand-over
            return
        super().server_receive(rnd, cid, message)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), bits=st.sampled_from([8, 24, 64]))
def test_a_buffer_reused_after_receive_does_not_change_the_sum(seed: int, bits: int) -> None:
    config = SecAggConfig(num_clients=5, vector_length=40, bits=bits)
    inputs = _inputs(config, seed)
    driver = _ReusingDriver(config, inputs)
    driver.run()
    result = driver.result
    assert np.array_equal(np.asarray(result.total, dtype=np.uint64),
                          _expected(inputs, result.survivors, bits))


class _ReadOnlyViewDriver(SessionDriver):
    """A caller that hands the server a read-only view of a buffer it can
    still write to (a bytearray), and then overwrites the buffer."""

    def server_receive(self, rnd: Round, cid: int, message: Any) -> None:
        if isinstance(message, MaskedInput):
            buffer = bytearray(np.ascontiguousarray(message.masked).tobytes())
            view = np.frombuffer(memoryview(buffer).toreadonly(), dtype=message.masked.dtype)
            assert not view.flags.writeable
            super().server_receive(rnd, cid, MaskedInput(message.sender, message.session_id,
                                                         view, message.excluded))
            buffer[:] = bytes(len(buffer))
            return
        super().server_receive(rnd, cid, message)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), bits=st.sampled_from([8, 32, 64]))
def test_a_read_only_view_of_a_mutable_buffer_is_copied(seed: int, bits: int) -> None:
    config = SecAggConfig(num_clients=5, vector_length=40, bits=bits)
    inputs = _inputs(config, seed)
    driver = _ReadOnlyViewDriver(config, inputs)
    driver.run()
    result = driver.result
    assert np.array_equal(np.asarray(result.total, dtype=np.uint64),
                          _expected(inputs, result.survivors, bits))


def test_decoding_an_aligned_vector_copies_nothing() -> None:
    m = 1 << 18  # long enough for the decoder's split path (a short payload is parsed)
    config = SecAggConfig(num_clients=4, vector_length=m, bits=32)
    vector = np.arange(m, dtype=np.uint32)
    vector.flags.writeable = False
    data = wire.encode(MaskedInput(1, bytes(32), vector, ()))
    decoded = wire.decode(data, config=config)
    assert np.array_equal(decoded.masked, vector)
    assert np.shares_memory(decoded.masked, np.frombuffer(data, dtype=np.uint8))
    with pytest.raises(ValueError):
        decoded.masked.flags.writeable = True  # a view of immutable bytes stays read-only


_SPILL_STORE = inmemory.spill_store


class _Opened:
    """One store ``secure_sum`` opened through ``spill_store``."""

    def __init__(self, store: Any) -> None:
        self.store = store

    @property
    def closed(self) -> bool:
        """Is its file closed (so removed: it had no name)?"""
        if isinstance(self.store, DirectFileStore):
            try:
                os.fstat(self.store._fd)
            except OSError:
                return True
            return False
        return bool(self.store._file.closed)


class _Files:
    """Records the spill stores ``secure_sum`` opens (a ``DirectFileStore``
    or, where the file system takes no direct I/O, a ``FileStore``)."""

    def __init__(self) -> None:
        self.opened: list[_Opened] = []

    @contextlib.contextmanager
    def __call__(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        with _SPILL_STORE(*args, **kwargs) as store:  # secure_sum closes it
            self.opened.append(_Opened(store))
            yield store


@pytest.mark.parametrize("n", [16, 48])
def test_secure_sum_spilling_holds_a_constant_number_of_vectors(
        n: int, monkeypatch: pytest.MonkeyPatch) -> None:
    m, bits = 1 << 17, 32
    config = SecAggConfig(num_clients=n, vector_length=m, bits=bits)
    inputs = _inputs(config, 6)
    ring = m * ring_dtype(bits).itemsize
    files = _Files()
    monkeypatch.setattr(inmemory, "spill_store", files)
    secure_sum(_inputs(config, 7), config, spill=True)  # lazily imported modules
    tracemalloc.start()
    try:
        result = secure_sum(inputs, config, spill=True)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.array_equal(np.asarray(result.total, dtype=np.uint64),
                          _expected(inputs, config.ids, bits))
    # the server's running sum, one client's input and masked copy in flight,
    # the mask threads' accumulators: the same bound for 16 and 48 clients
    # (without spilling the server and the clients' sent replies hold n)
    assert peak < 14 * ring
    assert len(files.opened) == 2 and all(f.closed for f in files.opened)


def test_the_spill_file_is_closed_when_the_round_aborts(monkeypatch: pytest.MonkeyPatch) -> None:
    config = SecAggConfig(num_clients=5, vector_length=30, bits=16, threshold=4)
    files = _Files()
    monkeypatch.setattr(inmemory, "spill_store", files)
    with pytest.raises(AbortError):
        secure_sum(_inputs(config, 8), config, {1: Round.UNMASKING, 2: Round.UNMASKING},
                   spill=True)
    assert len(files.opened) == 1 and files.opened[0].closed


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), bits=st.sampled_from([8, 24, 64]),
       dropped=st.sets(st.integers(1, 6), max_size=2),
       at=st.sampled_from([Round.MASKED_INPUT_COLLECTION, Round.UNMASKING]))
def test_spilling_or_not_gives_the_exact_sum(seed: int, bits: int, dropped: set[int],
                                             at: Round) -> None:
    config = SecAggConfig(num_clients=6, vector_length=33, bits=bits, threshold=3)
    inputs = _inputs(config, seed)
    dropouts = dict.fromkeys(dropped, at)
    for spill in (True, False):
        result = secure_sum(inputs, config, dropouts, spill=spill)
        assert result.survivors == tuple(c for c in config.ids if c not in dropped
                                         or at is Round.UNMASKING)
        assert np.array_equal(np.asarray(result.total, dtype=np.uint64),
                              _expected(inputs, result.survivors, bits))


def test_spill_none_spills_above_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    config = SecAggConfig(num_clients=4, vector_length=25, bits=16)  # 4 * 25 * 2 = 200 bytes
    inputs = _inputs(config, 9)
    files = _Files()
    monkeypatch.setattr(inmemory, "spill_store", files)
    monkeypatch.setattr(inmemory, "SPILL_BYTES", 200)
    secure_sum(inputs, config)
    assert files.opened == []
    monkeypatch.setattr(inmemory, "SPILL_BYTES", 199)
    result = secure_sum(inputs, config)
    assert len(files.opened) == 1 and files.opened[0].closed
    assert np.array_equal(np.asarray(result.total, dtype=np.uint64),
                          _expected(inputs, config.ids, 16))


def test_a_released_masked_input_is_not_sent_again_and_the_session_goes_on() -> None:
    config = SecAggConfig(num_clients=4, vector_length=20, bits=12)
    inputs = _inputs(config, 10)
    driver = SessionDriver(config, inputs)
    driver.start()
    driver.close()
    driver.step()  # shares
    request = dict(driver.pending)
    driver.answer()
    client = driver.clients[1]
    assert client.handle(request[1]) is driver.sent[Round.MASKED_INPUT_COLLECTION][1]  # [CLI-2]
    state = client.state
    client.release_masked_input()
    with pytest.raises(LocalProtocolError) as info:
        client.handle(request[1])
    assert info.value.rule is Rule.SESSION_FINISHED and info.value.peer == 1
    assert client.state is state  # nothing else changed: the round completes
    driver.close()
    while not driver.finished:
        driver.step()
    assert np.array_equal(np.asarray(driver.result.total, dtype=np.uint64),
                          _expected(inputs, driver.result.survivors, 12))
