"""The direct-I/O masked-input store (securefl.protocol.storage.DirectFileStore)
and the opener that picks it (securefl.protocol.inmemory.spill_store).

The store keeps what the server needs to take a late-excluded client's
masked input back out of the running sum (SPEC [R2-6]).  The promise is the
same as the other stores': what comes back is exactly what was put, a
failure of the file is a typed refusal that keeps nothing (the server then
refuses the masked input and its running sum stays as it was) or a typed
abort at close, never a different vector.  Real sessions with a late
complaint are run on it here; the file misbehaves through the system calls
the store makes (``os.pwrite`` / ``os.preadv``, patched).
"""

from __future__ import annotations

import errno
import os
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefl import Round, SecAggConfig
from securefl.errors import (
    ConfigurationError,
    LocalProtocolError,
    ProtocolError,
    Rule,
)
from securefl.hazmat.prg import ring_dtype
from securefl.protocol import inmemory, storage
from securefl.protocol.inmemory import secure_sum, spill_store
from securefl.protocol.messages import MaskedInput
from securefl.protocol.storage import DirectFileStore, FileStore
from tests import test_review_perf_store as review

CONFIG = SecAggConfig(num_clients=7, vector_length=1500, bits=32, threshold=3)
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _on_disk(store: DirectFileStore) -> int:
    return os.fstat(store._fd).st_size


@FAST
@given(data=st.data(), bits=st.integers(1, 64),
       lengths=st.lists(st.integers(0, 3000), min_size=1, max_size=6))
def test_what_comes_back_is_what_was_put_in_whole_blocks(
        data: st.DataObject, bits: int, lengths: list[int]) -> None:
    dtype = ring_dtype(bits)
    gen = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    with spill_store() as store:
        if not isinstance(store, DirectFileStore):
            pytest.skip("the temporary directory's file system takes no direct I/O")
        kept = {}
        for sender, m in enumerate(lengths, start=1):
            vector = (gen.integers(0, 2**63, m, dtype=np.uint64)
                      & np.uint64((1 << bits) - 1)).astype(dtype)
            buffer = vector.copy()
            store.put(sender, buffer)
            buffer[:] = 0  # the caller may reuse its buffer
            kept[sender] = vector
            # every record starts on a block boundary, padded to whole blocks
            assert _on_disk(store) % 4096 == 0
        for sender in data.draw(st.permutations(sorted(kept)), label="order"):
            back = store.get(sender)
            assert back.dtype == dtype and np.array_equal(back, kept[sender])
            assert back.flags.writeable and back.flags.owndata  # a fresh array
        store.clear()
        assert len(store) == 0 and _on_disk(store) == 0
        with pytest.raises(LocalProtocolError) as info:
            store.get(1)
        assert info.value.rule is Rule.STORE_FAILED


def test_a_sender_is_kept_once(direct: DirectFileStore) -> None:
    direct.put(3, np.arange(10, dtype=np.uint32))
    with pytest.raises(LocalProtocolError) as info:
        direct.put(3, np.zeros(10, dtype=np.uint32))
    assert info.value.rule is Rule.STORE_FAILED
    assert np.array_equal(direct.get(3), np.arange(10, dtype=np.uint32))


def test_the_padding_holds_zeros_not_an_earlier_vector(direct: DirectFileStore) -> None:
    # a long vector first, then a short one: the short one's padding must not
    # repeat the long one's bytes from the reused staging buffer
    direct.put(1, np.full(3000, 0xFFFFFFFF, dtype=np.uint32))
    direct.put(2, np.ones(5, dtype=np.uint32))
    staging = direct._buffer(8192)
    try:
        got = os.preadv(direct._fd, [staging], 12288)
        assert got == 4096
        raw = np.frombuffer(staging[:4096], dtype=np.uint8)
        assert raw[:20].tolist() == [1, 0, 0, 0] * 5
        assert not raw[20:].any()
        del raw
    finally:
        staging.release()


def test_bad_block_sizes_are_refused() -> None:
    for block in (0, 256, 1000, 4095):
        with pytest.raises(ValueError):
            DirectFileStore(-1, block=block)


def _inputs() -> dict[int, np.ndarray]:
    return review._inputs(CONFIG)


def _expected(inputs: dict[int, np.ndarray], survivors: tuple[int, ...]) -> np.ndarray:
    return review._expected(inputs, survivors)


class _Complaint(review._Complaint):
    """Client 5 reports client 2 after 2's masked input reached the server:
    both are excluded at close and 2's vector comes back out of the store
    (vectors of 6,000 bytes: more than one block)."""

    def __init__(self, inputs: dict[int, np.ndarray], store: Any) -> None:
        super().__init__(inputs, store, CONFIG)


def test_a_late_exclusion_reads_the_vector_back_and_the_sum_is_exact(
        direct: DirectFileStore) -> None:
    inputs = _inputs()
    driver = _Complaint(inputs, direct)
    driver.run()
    result = driver.result
    assert set(result.excluded) == {2, 5}
    assert np.array_equal(result.total, _expected(inputs, result.survivors))
    assert len(direct) == 0 and _on_disk(direct) == 0  # cleared when R2 closed


def test_writes_that_stop_short_in_whole_blocks_are_continued(
        direct: DirectFileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.pwrite
    calls = []

    def one_block(fd: int, data: Any, offset: int) -> int:
        calls.append(offset)
        return real(fd, memoryview(data)[:4096], offset)

    monkeypatch.setattr(storage.os, "pwrite", one_block)
    inputs = _inputs()
    driver = _Complaint(inputs, direct)
    driver.run()
    assert len(calls) > len(CONFIG.ids)  # each 6000-byte vector took two writes
    result = driver.result
    assert set(result.excluded) == {2, 5}
    assert np.array_equal(result.total, _expected(inputs, result.survivors))


@pytest.mark.parametrize("failure", ["part-block", "nothing", "disk-full"])
def test_a_failed_write_is_a_typed_refusal_that_changes_nothing(
        direct: DirectFileStore, monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    real = os.pwrite
    armed = {"on": False}

    def failing(fd: int, data: Any, offset: int) -> int:
        if not armed["on"]:
            return real(fd, data, offset)
        if failure == "disk-full":
            raise OSError(errno.ENOSPC, "No space left on device")
        if failure == "nothing":
            return 0
        return real(fd, memoryview(data)[:4096], offset) - 100  # "wrote" part of a block

    monkeypatch.setattr(storage.os, "pwrite", failing)

    class FailingOn4(_Complaint):
        error: BaseException | None = None

        def server_receive(self, rnd: Round, cid: int, message: Any) -> None:
            if isinstance(message, MaskedInput) and cid == 4:
                server: Any = self.server
                before = (len(server._store), None if server._running is None
                          else server._running.copy())
                armed["on"] = True
                try:
                    server.receive(message)
                except BaseException as exc:  # the test inspects what escaped
                    self.error = exc
                finally:
                    armed["on"] = False
                assert len(server._store) == before[0]
                if before[1] is not None:
                    assert np.array_equal(server._running, before[1])
                return
            super().server_receive(rnd, cid, message)

    inputs = _inputs()
    driver = FailingOn4(inputs, direct)
    driver.run()
    error = driver.error
    assert isinstance(error, ProtocolError), repr(error)
    assert error.rule is Rule.STORE_FAILED and error.round is Round.MASKED_INPUT_COLLECTION
    result = driver.result
    assert 4 not in result.survivors and set(result.excluded) == {2, 5}
    assert np.array_equal(result.total, _expected(inputs, result.survivors))


@pytest.mark.parametrize("failure", ["eof", "part-block", "eio"])
def test_a_store_that_cannot_be_read_at_close_aborts_with_a_typed_error(
        direct: DirectFileStore, monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    real = os.preadv

    def failing(fd: int, buffers: Any, offset: int) -> int:
        if failure == "eio":
            raise OSError(errno.EIO, "Input/output error")
        if failure == "eof":
            return 0
        return real(fd, [memoryview(buffers[0])[:4096]], offset) - 1

    monkeypatch.setattr(storage.os, "preadv", failing)
    review.aborts_at_close_for_its_store(_Complaint(_inputs(), direct))
    assert len(direct) == 0


def test_the_opener_falls_back_to_a_buffered_file_where_direct_io_is_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a file system that opens O_DIRECT files but refuses their writes
    # (EINVAL), one that refuses the flags at open, and a platform without them
    def refuse_writes(fd: int, data: Any, offset: int) -> int:
        raise OSError(errno.EINVAL, "Invalid argument")

    with monkeypatch.context() as patch:
        patch.setattr(storage.os, "pwrite", refuse_writes)
        with spill_store() as store:
            assert isinstance(store, FileStore)

    def read_nothing(fd: int, buffers: Any, offset: int) -> int:
        return len(memoryview(buffers[0]))  # "read" every byte, filled none

    with monkeypatch.context() as patch:
        # a file system whose direct reads report success without data: the
        # staging buffer would still hold the last vector put (another client's)
        patch.setattr(storage.os, "preadv", read_nothing)
        with spill_store() as store:
            assert isinstance(store, FileStore)
    real_open = os.open

    def refuse_open(path: str, flags: int, *args: Any) -> int:
        if flags & getattr(os, "O_DIRECT", 0):
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    with monkeypatch.context() as patch:
        patch.setattr(inmemory.os, "open", refuse_open)
        with spill_store() as store:
            assert isinstance(store, FileStore)
    with monkeypatch.context() as patch:
        patch.delattr(inmemory.os, "O_DIRECT", raising=False)
        with spill_store() as store:
            assert isinstance(store, FileStore)
    with spill_store(direct=False) as store:
        assert isinstance(store, FileStore)


def test_the_opener_closes_its_file_also_on_an_exception() -> None:
    with pytest.raises(RuntimeError), spill_store() as store:
        fd = store._fd if isinstance(store, DirectFileStore) else store._file.fileno()
        raise RuntimeError("the round failed")
    with pytest.raises(OSError):
        os.fstat(fd)


@pytest.mark.parametrize("spill", [True, "buffered"])
def test_secure_sum_spills_to_the_chosen_store_and_is_exact(
        monkeypatch: pytest.MonkeyPatch, spill: Any) -> None:
    used: list[Any] = []
    real = inmemory.spill_store

    def recording(*args: Any, **kwargs: Any) -> Any:
        context = real(*args, **kwargs)
        store = context.__enter__()
        used.append(store)

        class _Wrapped:
            def __enter__(self) -> Any:
                return store

            def __exit__(self, *exc: Any) -> Any:
                return context.__exit__(*exc)

        return _Wrapped()

    monkeypatch.setattr(inmemory, "spill_store", recording)
    config = SecAggConfig(num_clients=6, vector_length=777, bits=20, threshold=3)
    gen = np.random.default_rng(3)
    inputs = {c: gen.integers(0, 2**20, 777, dtype=np.uint64) for c in config.ids}
    result = secure_sum(inputs, config, {4: Round.MASKED_INPUT_COLLECTION}, spill=spill)
    assert len(used) == 1
    if spill == "buffered":
        assert type(used[0]) is FileStore
    else:
        with spill_store() as probe:  # what this file system gives
            assert type(used[0]) is type(probe)
    expected = sum(inputs[c] for c in result.survivors) & np.uint64(2**20 - 1)
    assert result.survivors == (1, 2, 3, 5, 6)
    assert np.array_equal(result.total, expected)


def test_secure_sum_refuses_an_unknown_spill_choice() -> None:
    config = SecAggConfig(num_clients=3, vector_length=4, bits=8, threshold=2)
    inputs = {c: np.zeros(4, dtype=np.uint64) for c in config.ids}
    with pytest.raises(ConfigurationError):
        secure_sum(inputs, config, spill="direct")  # type: ignore[arg-type]
