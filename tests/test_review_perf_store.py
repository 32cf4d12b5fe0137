"""Adversarial review of the masked-input store (securefl.protocol.storage)
with real sessions: a late complaint excludes client 2 after its masked input
was added into the running sum, so the server must read 2's vector back from
the store and subtract it.  The store's file misbehaves in the ways a real
file does:

* a short write (``RawIOBase.write`` may write fewer bytes than given and
  say so in its return value, e.g. a file opened with ``buffering=0`` on a
  full disk): the vector read back must not be a different one;
* the disk fills up (``OSError`` on write) while a masked input is stored;
* the file cannot be read back at close.

The promise (SECURITY.md, SPEC.md): the server never returns a wrong sum
silently, and every failure is a typed :class:`SecureFLError` (the session
aborts at close, no result).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
from typing import Any

import numpy as np
import pytest

from securefl import Round, SecAggConfig
from securefl.errors import AbortError, ProtocolError, Rule, SecureFLError
from securefl.hazmat.randomness import DeterministicRandom
from securefl.protocol.inmemory import SessionDriver
from securefl.protocol.messages import MaskedInput, ShareDelivery
from securefl.protocol.storage import FileStore, MaskedInputStore

CONFIG = SecAggConfig(num_clients=7, vector_length=50, bits=32, threshold=3)


class _ShortWrites(io.RawIOBase):
    """A seekable raw binary file in memory whose ``write`` writes at most
    half of what it is given and returns how much it wrote (allowed for raw
    I/O: the caller must write the rest)."""

    def __init__(self) -> None:
        self._inner = io.BytesIO()

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()

    def truncate(self, size: int | None = None) -> int:
        return self._inner.truncate(size)

    def write(self, b: Any) -> int:
        data = bytes(b)
        return self._inner.write(data[:max(1, len(data) // 2)])

    def readinto(self, b: Any) -> int:
        return self._inner.readinto(b)


class _DiskFull(io.BytesIO):
    """Writes fail with ENOSPC while ``full``."""

    full = False

    def write(self, b: Any) -> int:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(b)


class _UnreadableAtClose(io.BytesIO):
    """Reads fail with EIO once armed (the disk went away during R2)."""

    armed = False

    def readinto(self, b: Any) -> int:
        if self.armed:
            raise OSError(errno.EIO, "Input/output error")
        return super().readinto(b)


class _Complaint(SessionDriver):
    """Client 5 reports client 2 (its ciphertext from 2 is broken on the way),
    after 2's masked input reached the server: both are excluded at close and
    2's vector must come back out of the running sum."""

    def __init__(self, inputs: dict[int, np.ndarray], store: MaskedInputStore,
                 config: SecAggConfig = CONFIG) -> None:
        super().__init__(config, inputs, store=store, rng=DeterministicRandom(bytes(32)))

    def to_client(self, rnd: Round, cid: int, message: Any) -> Any:
        if isinstance(message, ShareDelivery) and cid == 5:
            cts = dict(message.ciphertexts)
            cts[2] = bytes(len(cts[2]))
            message = dataclasses.replace(message, ciphertexts=cts)
        return message


def _inputs(config: SecAggConfig = CONFIG) -> dict[int, np.ndarray]:
    gen = np.random.default_rng(7)
    return {c: gen.integers(0, 2**32, config.vector_length, dtype=np.uint64)
            for c in config.ids}


def _expected(inputs: dict[int, np.ndarray], survivors: tuple[int, ...]) -> np.ndarray:
    return sum(inputs[c] for c in survivors) & np.uint64(0xFFFFFFFF)


def test_a_short_write_never_gives_a_wrong_sum() -> None:
    inputs = _inputs()
    driver = _Complaint(inputs, FileStore(_ShortWrites()))
    try:
        driver.run()
    except SecureFLError:
        return  # refusing is allowed; a wrong sum is not
    result = driver.result
    assert set(result.excluded) == {2, 5}
    assert np.array_equal(result.total, _expected(inputs, result.survivors))


class _FailingOn(SessionDriver):
    """Records the error the server raised on client ``victim``'s masked
    input, then lets the round go on without it."""

    def __init__(self, inputs: dict[int, np.ndarray], f: _DiskFull, victim: int) -> None:
        super().__init__(CONFIG, inputs, store=FileStore(f), rng=DeterministicRandom(bytes(32)))
        self.file = f
        self.victim = victim
        self.error: BaseException | None = None
        self.state_before: Any = None

    def server_receive(self, rnd: Round, cid: int, message: Any) -> None:
        if isinstance(message, MaskedInput) and cid == self.victim:
            server: Any = self.server
            self.state_before = (len(server._store), None if server._running is None
                                 else server._running.copy(), server._peers[cid].status)
            self.file.full = True
            try:
                self.server.receive(message)
            except BaseException as exc:  # the test inspects what escaped
                self.error = exc
            finally:
                self.file.full = False
            after = (len(server._store), server._running, server._peers[cid].status)
            assert after[0] == self.state_before[0] and after[2] == self.state_before[2]
            assert (after[1] is None) == (self.state_before[1] is None)
            if after[1] is not None:
                assert np.array_equal(after[1], self.state_before[1])
            return
        self.server.receive(message)


def test_disk_full_while_storing_a_masked_input_is_a_typed_refusal_and_the_sum_stays_right(
) -> None:
    inputs = _inputs()
    # client 4's masked input finds the disk full: refused (typed, naming the
    # round), the running sum and the store unchanged, the round goes on
    # without 4 (dropped) and its sum is exact
    driver = _FailingOn(inputs, _DiskFull(), victim=4)
    driver.run()
    assert isinstance(driver.error, SecureFLError), repr(driver.error)
    assert isinstance(driver.error, ProtocolError)
    assert driver.error.round is Round.MASKED_INPUT_COLLECTION
    assert driver.error.rule is Rule.STORE_FAILED
    result = driver.result
    assert 4 not in result.survivors
    assert np.array_equal(result.total, _expected(inputs, result.survivors))


class _Unreadable(_Complaint):
    def __init__(self, inputs: dict[int, np.ndarray], f: _UnreadableAtClose) -> None:
        super().__init__(inputs, FileStore(f))
        self.file = f

    def server_close(self, rnd: Round) -> Any:
        if rnd is Round.MASKED_INPUT_COLLECTION:
            self.file.armed = True
        return super().server_close(rnd)


def test_a_store_that_cannot_be_read_at_close_aborts_with_a_typed_error() -> None:
    driver = _Unreadable(_inputs(), _UnreadableAtClose())
    aborts_at_close_for_its_store(driver)


def aborts_at_close_for_its_store(driver: SessionDriver) -> None:
    """The round aborts when R2 closes (typed: ``STORE_FAILED``), the session
    is over and its store cleared."""
    with pytest.raises(AbortError) as info:
        driver.run()
    assert info.value.round is Round.MASKED_INPUT_COLLECTION
    assert info.value.rule is Rule.STORE_FAILED
    # the session is over: no second close can produce a sum from a half-corrected total
    with pytest.raises(SecureFLError):
        driver.server.close_round()
    assert len(driver.server._store) == 0


def _until_masked_inputs_sent(driver: SessionDriver) -> None:
    driver.start()
    driver.close()
    driver.step()  # R1 closed: share deliveries pending
    driver.answer()  # masked inputs sent


def _finish(driver: SessionDriver) -> None:
    driver.close()
    while not driver.finished:
        driver.step()


@pytest.mark.parametrize("kind", ["memory", "file"])
def test_one_store_given_to_two_open_sessions_never_gives_a_wrong_sum(kind: str) -> None:
    # the same store object handed to two sessions whose R2 is open at once
    # (clients numbered alike): B's client 2 must not replace A's client 2,
    # whose vector A subtracts when 5's complaint excludes it
    from securefl.protocol.storage import MemoryStore

    store: Any = MemoryStore() if kind == "memory" else FileStore(io.BytesIO())
    inputs_a, inputs_b = _inputs(), {c: v ^ np.uint64(0x5A5A) for c, v in _inputs().items()}
    a = _Complaint(inputs_a, store)
    b = SessionDriver(CONFIG, inputs_b, store=store, rng=DeterministicRandom(b"\1" * 32))
    _until_masked_inputs_sent(a)
    with contextlib.suppress(SecureFLError):  # refusing B's inputs is allowed
        _until_masked_inputs_sent(b)
    try:
        _finish(a)
    except SecureFLError:
        return  # a typed refusal is allowed; a wrong sum is not
    result = a.result
    assert set(result.excluded) == {2, 5}
    assert np.array_equal(result.total, _expected(inputs_a, result.survivors))
