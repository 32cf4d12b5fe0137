"""Adversarial review of the direct-I/O store (DirectFileStore, spill_store).

Holes found by the review, each fixed after its test failed:

* a failed truncate of the spill file at the close of R2 escaped as a bare
  ``OSError`` (or replaced the round's own ``AbortError``), and closing R2
  again then gave a sum of zeros minus the masks, silently;
* the direct spill file was opened without ``O_EXCL``, so anyone with the
  descriptor (or ``/proc/<pid>/fd`` of the same user) could give it a name
  and keep the masked inputs past the round;
* ``spill_store`` leaked its descriptor when the store could not be built.
"""
from __future__ import annotations

import dataclasses
import errno
import os
from typing import Any

import numpy as np
import pytest

from securefl import Round
from securefl.errors import AbortError, LocalProtocolError, Rule, SecureFLError
from securefl.hazmat.randomness import DeterministicRandom
from securefl.protocol import storage
from securefl.protocol.inmemory import SessionDriver, spill_store
from securefl.protocol.messages import ShareDelivery
from securefl.protocol.storage import DirectFileStore
from tests.test_direct_store import CONFIG, _expected, _inputs


def _link(fd: int, target: str) -> None:
    """linkat(AT_FDCWD, "/proc/self/fd/<fd>", AT_FDCWD, target, AT_SYMLINK_FOLLOW):
    what any process of the same user may do (no capability needed)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.linkat(-100, f"/proc/self/fd/{fd}".encode(), -100, target.encode(), 0x400):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _failing_ftruncate(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    real = os.ftruncate
    armed = {"on": False}

    def ftruncate(fd: int, length: int) -> None:
        if armed["on"]:
            raise OSError(errno.EIO, "Input/output error")
        real(fd, length)

    monkeypatch.setattr(storage.os, "ftruncate", ftruncate)
    return armed


class _Driver(SessionDriver):
    """Closes R2 with the store's truncate failing (EIO); with ``retry`` the
    caller then closes the round again."""

    def __init__(self, inputs: dict[int, np.ndarray], store: Any, armed: dict[str, bool], *,
                 retry: bool = False, complaint: bool = False,
                 dropouts: dict[int, Round] | None = None) -> None:
        super().__init__(CONFIG, inputs, store=store, rng=DeterministicRandom(bytes(32)),
                         dropouts=dropouts)
        self.armed, self.retry, self.complaint = armed, retry, complaint
        self.first: BaseException | None = None

    def to_client(self, rnd: Round, cid: int, message: Any) -> Any:
        if self.complaint and isinstance(message, ShareDelivery) and cid == 5:
            cts = dict(message.ciphertexts)
            cts[2] = bytes(len(cts[2]))
            message = dataclasses.replace(message, ciphertexts=cts)
        return message

    def server_close(self, rnd: Round) -> Any:
        if rnd is not Round.MASKED_INPUT_COLLECTION:
            return super().server_close(rnd)
        self.armed["on"] = True
        try:
            return super().server_close(rnd)
        except BaseException as exc:
            if not self.retry:
                raise
            self.first = exc
        finally:
            self.armed["on"] = False
        return super().server_close(rnd)  # the caller tries again


@pytest.mark.parametrize("how", ["close", "abort"])
def test_a_failed_truncate_at_close_of_r2_is_a_typed_error(
        direct: DirectFileStore, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    # promise (2): a failure of the file at close is an AbortError (STORE_FAILED),
    # not an OSError out of ServerSession.close_round
    armed = _failing_ftruncate(monkeypatch)
    dropouts = ({c: Round.MASKED_INPUT_COLLECTION for c in (3, 4, 5, 6, 7)}
                if how == "abort" else None)
    driver = _Driver(_inputs(), direct, armed, dropouts=dropouts)
    with pytest.raises(SecureFLError) as info:
        driver.run()
    assert isinstance(info.value, AbortError)
    assert info.value.round is Round.MASKED_INPUT_COLLECTION
    if how == "close":
        assert info.value.rule is Rule.STORE_FAILED
    else:  # the round's own reason stays the error; the store's failure is noted
        assert info.value.rule is not Rule.STORE_FAILED
        assert any("could not be cleared" in note for note in info.value.__notes__)
    with pytest.raises(LocalProtocolError) as again:  # aborted: no second close
        driver.server.close_round()
    assert again.value.rule is Rule.SESSION_FINISHED


@pytest.mark.parametrize("complaint", [False, True])
def test_closing_r2_again_after_a_failed_truncate_never_gives_a_wrong_sum(
        direct: DirectFileStore, monkeypatch: pytest.MonkeyPatch, complaint: bool) -> None:
    # whatever escaped the first close_round, a second one must either refuse
    # (typed) or carry on to the exact sum -- not a sum of zeros minus masks
    armed = _failing_ftruncate(monkeypatch)
    inputs = _inputs()
    driver = _Driver(inputs, direct, armed, retry=True, complaint=complaint)
    try:
        driver.run()
    except SecureFLError:
        return  # refused: fine
    assert driver.first is not None  # the truncate did fail the first close
    result = driver.result
    assert np.array_equal(result.total, _expected(inputs, result.survivors)), \
        f"wrong sum after {driver.first!r}"


def test_the_direct_spill_file_cannot_be_given_a_name(tmp_path: Any) -> None:
    # promise (4): "the file has no name on disk" -- tempfile.TemporaryFile
    # opens O_TMPFILE with O_EXCL, so it can never be linked into the
    # namespace; the direct opener leaves O_EXCL out, so anyone holding the
    # descriptor (or same-uid /proc/<pid>/fd access) can give it a name.
    target = str(tmp_path / "linked-spill-file")
    with spill_store(str(tmp_path)) as store:
        if not isinstance(store, DirectFileStore):
            pytest.skip("no direct I/O here")
        store.put(1, np.arange(1000, dtype=np.uint32))
        try:
            _link(store._fd, target)
        except OSError:
            return  # cannot be named: as promised
        try:
            with open(target, "rb") as f:
                leaked = f.read(16)
        finally:
            os.unlink(target)
        pytest.fail(f"the spill file was linked as {target}; it read {leaked!r}")


def test_the_buffered_fallback_cannot_be_given_a_name(tmp_path: Any) -> None:
    # the baseline the direct opener matches
    with spill_store(str(tmp_path), direct=False) as store, pytest.raises(OSError):
        _link(store._file.fileno(), str(tmp_path / "x"))  # type: ignore[attr-defined]


def test_spill_store_does_not_leak_its_descriptor_when_the_store_cannot_be_made(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # promise (3): _open_direct's probe succeeds (two truncates), then
    # DirectFileStore(fd) in spill_store truncates again and fails: the
    # descriptor is opened outside any try and never closed
    real = os.ftruncate
    calls = {"n": 0}

    def ftruncate(fd: int, length: int) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.EIO, "Input/output error")
        real(fd, length)

    monkeypatch.setattr(storage.os, "ftruncate", ftruncate)
    before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError), spill_store() as store:
        pytest.skip(f"no direct I/O here ({type(store).__name__})")
    leaked = set(os.listdir("/proc/self/fd")) - before
    assert calls["n"] == 3
    assert not leaked, f"descriptors left open: {sorted(leaked)}"
