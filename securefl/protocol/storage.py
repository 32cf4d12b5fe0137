"""Where the server keeps the masked inputs of the open masked-input round.

A complaint that arrives late in R2 may exclude a client whose masked input
was already received (SPEC [R2-6]), so until R2 closes the server must be
able to take any received vector back out of the sum.  The server adds each
accepted vector into a running sum at once and hands a copy to a
:class:`MaskedInputStore`; at close it reads back only the vectors of the
clients it excludes (usually none) and subtracts them, then clears the store.

* :class:`MemoryStore` (the default) keeps the copies in memory: ``n``
  vectors of ``m`` ring elements, as before the running sum existed.
* :class:`FileStore` writes them to a binary file the caller opened (for
  example ``tempfile.TemporaryFile()``): the server's memory for the round is
  then the running sum, O(m), whatever ``n``.
* :class:`DirectFileStore` does the same on a file descriptor the caller
  opened for direct I/O (``O_DIRECT``): each vector is written from one
  page-aligned staging buffer straight to the device, so the kernel neither
  copies it into the page cache nor keeps it there.  Keeping a 3.6 GB round
  cost the server 0.8-1.05 s of CPU this way on the 2-core machine the
  benchmarks run on, against 1.4-5.9 s through the page cache, depending on
  its state; the direct writes took 4.2-6.1 s of wall time, waiting for the
  disk, against 1.6-6.5 s (``benchmarks/spill_store.py``).
  :func:`securefl.protocol.inmemory.spill_store` opens such a file where the
  platform and file system allow it, and a :class:`FileStore` otherwise.

What goes to the file is exactly what the server received (masked inputs
are the server's to read anyway), so spilling them discloses nothing new to
whoever can read the server's memory; the caller chooses where the file
lives and deletes it (an anonymous ``TemporaryFile`` has no name on disk).
The protocol code stays sans-IO: it calls the injected store and never opens
a file itself.  A store serves one session at a time (both stores refuse a
second vector for a sender); if it fails, the server refuses the masked input
(``STORE_FAILED``, nothing added) or, at the close of R2, aborts the round:
never a sum corrected with other numbers.  The result is the same, bit for bit, with either store
(``tests/test_masked_store.py``): the sum is taken in the ring's native
dtype, where addition and subtraction wrap modulo a power of two at least
``2^bits``.

:class:`SealableVector` is the sending side of the same rule: a client masks
its private copy in place and seals it, without a second copy, into the
read-only view of ``bytes`` it sends and keeps, which :func:`frozen` accepts.
"""

from __future__ import annotations

import abc
import contextlib
import io
import mmap
import os
from typing import Any, BinaryIO

import numpy as np

from securefl.errors import LocalProtocolError, Rule


def frozen(vector: np.ndarray) -> bool:
    """Is ``vector`` safe to keep without a copy?  Only if it is a read-only
    view of an immutable ``bytes`` object (a decoded wire vector's payload, a
    client session's sent masked input): numpy refuses to make such a view
    writable again, and nobody can write to the ``bytes``.  A read-only array
    that owns its memory is *not* safe: whoever holds it may set
    ``flags.writeable = True`` and change it after the hand-over.  Anything
    else is copied."""
    if vector.flags.writeable or vector.flags.owndata:
        return False
    base = vector.base
    if isinstance(base, memoryview):
        base = base.obj
    return type(base) is bytes


class SealableVector:
    """A private, writable copy of a 1-D vector in ``dtype`` that is later
    sealed, once, into a read-only view of immutable ``bytes`` (one that
    :func:`frozen` accepts) without copying it again.

    A client session masks its input in place and then keeps and sends the
    result; before this class that took two fresh vector-sized allocations
    (the working copy, then ``tobytes()`` of it), now it takes one.  The copy
    lives in the buffer of an ``io.BytesIO`` and :attr:`array` is a writable
    numpy view of it.  :meth:`seal` drops this object's view and takes the
    buffer's content with ``getvalue()``: CPython hands out the buffer itself
    as the ``bytes`` object when no view of it is exported any more, and
    copies it otherwise (a view of :attr:`array` that someone still holds).
    Either way the sealed vector is immutable: nothing that could write to
    it survives, so it can be kept and shared without a copy.

    Args:
        vector: 1-D integer array whose values ``dtype`` holds exactly
            (checked by the caller, e.g.
            :func:`~securefl.protocol.validation.validate_input_vector`);
            it is copied, never kept.
        dtype: the dtype of the copy (e.g. the ring's dtype).
    """

    def __init__(self, vector: np.ndarray, dtype: np.dtype) -> None:
        self._dtype = np.dtype(dtype)
        buffer = io.BytesIO()
        size = int(vector.shape[0])
        if vector.dtype == self._dtype and vector.flags.c_contiguous:
            buffer.write(vector.data)  # one allocation, one copy
            convert = None
        else:
            if size:
                # one allocation of the final size (zero-filled), then one
                # converting copy into it
                buffer.seek(size * self._dtype.itemsize - 1)
                buffer.write(b"\0")
            convert = vector
        self._buffer: io.BytesIO | None = buffer
        self._view: memoryview | None = buffer.getbuffer()
        self.array: np.ndarray | None = np.frombuffer(self._view, dtype=self._dtype)
        """The writable working copy (None once sealed)."""
        if convert is not None:
            np.copyto(self.array, convert, casting="unsafe")

    def seal(self) -> np.ndarray:
        """Drop the writable :attr:`array` and return the content as a
        read-only view of a ``bytes`` object (:func:`frozen` is true of it).
        Callers must drop their own references to :attr:`array` first, or the
        content is copied once more (still correct).

        Raises:
            LocalProtocolError: already sealed (``SESSION_FINISHED``).
        """
        if self._buffer is None or self._view is None:
            raise LocalProtocolError(Rule.SESSION_FINISHED, "the vector is already sealed")
        self.array = None
        with contextlib.suppress(BufferError):  # a view of the array is alive: getvalue copies
            self._view.release()
        data = self._buffer.getvalue()
        self._buffer = self._view = None
        return np.frombuffer(data, dtype=self._dtype)

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle, ``copy.copy`` and ``copy.deepcopy`` (the decoder fuzzer
        snapshots whole sessions) as an independent vector: an open one
        as its content (a session given its input before it starts pickles as
        it did when the copy was a plain array), a sealed one as sealed.  (A
        memoryview cannot be pickled, and a shallow copy must not share the
        buffer.)"""
        if self.array is None:
            return (_sealed_vector, (self._dtype,))
        return (SealableVector, (np.array(self.array), self._dtype))

    def __repr__(self) -> str:
        state = "sealed" if self._buffer is None else "open"
        return f"SealableVector({self._dtype}, {state})"


def _sealed_vector(dtype: np.dtype) -> SealableVector:
    """A sealed, empty :class:`SealableVector` (what a sealed one unpickles to)."""
    vector = SealableVector(np.zeros(0, dtype=dtype), dtype)
    vector.seal()
    return vector


class MaskedInputStore(abc.ABC):
    """Holds one vector per sender until :meth:`clear` (the server's
    masked-input round)."""

    @abc.abstractmethod
    def put(self, sender: int, vector: np.ndarray) -> None:
        """Keep a copy of ``vector`` (1-D, the ring's dtype) for ``sender``;
        the caller may reuse the array afterwards.  A sender is put at most
        once between clears."""

    @abc.abstractmethod
    def get(self, sender: int) -> np.ndarray:
        """The vector kept for ``sender``, equal to the one put (a copy or a
        read-only view).

        Raises:
            LocalProtocolError: nothing is kept for ``sender``.
        """

    @abc.abstractmethod
    def clear(self) -> None:
        """Forget every vector (the round closed or aborted)."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """How many vectors are kept."""


class MemoryStore(MaskedInputStore):
    """The copies in a dict, in memory (``n * m`` elements at most)."""

    def __init__(self) -> None:
        self._vectors: dict[int, np.ndarray] = {}

    def put(self, sender: int, vector: np.ndarray) -> None:
        """Keep a copy in memory, or the vector itself if it is
        :func:`frozen` (a view of immutable ``bytes``: a client session's sent
        reply, a decoded wire vector): in-process rounds then hold each masked
        vector once.

        Raises:
            LocalProtocolError: ``sender`` is already kept (``STORE_FAILED``):
                two sessions share this store, or the caller broke the contract.
        """
        if sender in self._vectors:
            raise _twice(sender)
        self._vectors[sender] = vector if frozen(vector) else np.array(vector, copy=True)

    def get(self, sender: int) -> np.ndarray:
        """The copy kept for ``sender``."""
        try:
            return self._vectors[sender]
        except KeyError:
            raise _missing(sender) from None

    def clear(self) -> None:
        """Drop every copy."""
        self._vectors = {}

    def __len__(self) -> int:
        return len(self._vectors)

    def __repr__(self) -> str:
        return f"MemoryStore({len(self)} vectors)"


class FileStore(MaskedInputStore):
    """The copies appended to a binary file opened by the caller (read,
    write, seekable; e.g. ``tempfile.TemporaryFile()``): memory O(1) per
    vector.  :meth:`clear` truncates the file; closing it is the caller's.

    Args:
        file: the file to write the vectors to (its content is replaced).
    """

    def __init__(self, file: BinaryIO) -> None:
        self._file = file
        self._where: dict[int, tuple[int, np.dtype, int]] = {}
        self._end = 0
        self.clear()

    def put(self, sender: int, vector: np.ndarray) -> None:
        """Append the vector's bytes to the file (all of them: a raw file's
        short writes are continued).

        Raises:
            LocalProtocolError: ``sender`` is already kept, or the file took
                nothing (``STORE_FAILED``); nothing is kept then.
            OSError: from the file (e.g. the disk is full); nothing is kept.
        """
        if sender in self._where:
            raise _twice(sender)
        data = np.ascontiguousarray(vector)
        self._file.seek(self._end)
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            # a raw file may write fewer bytes than given (and say so)
            wrote = self._file.write(view[done:])
            if wrote is None or wrote <= 0:
                raise LocalProtocolError(Rule.STORE_FAILED, f"the store's file took none of"
                                         f" client {sender}'s masked input", peer="server")
            done += wrote
        self._where[sender] = (self._end, data.dtype, data.size)
        self._end += data.nbytes

    def get(self, sender: int) -> np.ndarray:
        """Read the vector back (a fresh array)."""
        try:
            offset, dtype, size = self._where[sender]
        except KeyError:
            raise _missing(sender) from None
        out = np.empty(size, dtype=dtype)
        self._file.seek(offset)
        view = memoryview(out).cast("B")
        got = 0
        while got < len(view):
            n = self._file.readinto(view[got:])  # type: ignore[attr-defined]
            if not n:
                raise LocalProtocolError(Rule.STORE_FAILED, f"the store's file lost client"
                                         f" {sender}'s masked input", peer="server")
            got += n
        return out

    def clear(self) -> None:
        """Forget every vector and truncate the file."""
        self._where = {}
        self._end = 0
        self._file.seek(0)
        self._file.truncate(0)

    def __len__(self) -> int:
        return len(self._where)

    def __repr__(self) -> str:
        return f"FileStore({len(self)} vectors, {self._end} bytes)"


class DirectFileStore(MaskedInputStore):
    """:class:`FileStore`'s contract on a file descriptor the caller opened
    for direct I/O (``O_DIRECT``, read and write; e.g. an ``O_TMPFILE``, which
    has no name on disk): each vector is copied into a page-aligned staging
    buffer (an anonymous ``mmap``, one vector long, reused) and written from it
    in whole ``block``-byte blocks at a block-aligned offset, as direct I/O
    requires; the bytes past the vector up to the block boundary are zeros.
    The kernel then moves the vector from the staging buffer to the device
    without copying it into the page cache, and the server's CPU time for
    keeping ``n`` vectors is one memory copy each plus the system calls.
    :meth:`clear` truncates the file; closing the descriptor is the caller's.

    A write or read the file system answers with fewer bytes than asked is
    continued while it stays block-aligned; otherwise the vector is refused
    (``STORE_FAILED``) and nothing is kept.

    Args:
        fd: the open file descriptor (its content is replaced).
        block: the alignment of offsets, lengths and the buffer, in bytes: a
            power of two that is a multiple of the device's logical block
            size (4096, the default, is one for every common device).

    Raises:
        ValueError: ``block`` is not a power of two of at least 512.
    """

    def __init__(self, fd: int, *, block: int = 4096) -> None:
        if block < 512 or block & (block - 1):
            raise ValueError(f"block must be a power of two of at least 512, got {block}")
        self._fd = fd
        self._block = block
        self._staging: mmap.mmap | None = None
        self._where: dict[int, tuple[int, np.dtype, int]] = {}
        self._end = 0
        self.clear()

    def _padded(self, nbytes: int) -> int:
        return max(self._block, -(-nbytes // self._block) * self._block)

    def _buffer(self, size: int) -> memoryview:
        """The staging buffer, at least ``size`` bytes (page-aligned: ``mmap``)."""
        if self._staging is None or len(self._staging) < size:
            self.close()
            self._staging = mmap.mmap(-1, size)
        return memoryview(self._staging)[:size]

    def put(self, sender: int, vector: np.ndarray) -> None:
        """Write the vector's bytes, padded with zeros to whole blocks, at the
        end of the file.

        Raises:
            LocalProtocolError: ``sender`` is already kept, or the file took
                no bytes or a part that is not whole blocks (``STORE_FAILED``);
                nothing is kept then.
            OSError: from the file (e.g. the disk is full); nothing is kept.
        """
        if sender in self._where:
            raise _twice(sender)
        data = np.ascontiguousarray(vector)
        nbytes = data.nbytes
        padded = self._padded(nbytes)
        buffer = self._buffer(padded)
        staged = np.frombuffer(buffer, dtype=np.uint8)
        staged[:nbytes] = memoryview(data).cast("B")
        staged[nbytes:] = 0
        del staged
        try:
            done = 0
            while done < padded:
                wrote = os.pwrite(self._fd, buffer[done:], self._end + done)
                if wrote <= 0 or wrote % self._block:
                    raise LocalProtocolError(Rule.STORE_FAILED, f"the store's file took"
                                             f" {wrote} bytes of client {sender}'s masked"
                                             " input, not whole blocks", peer="server")
                done += wrote
        finally:
            buffer.release()
        self._where[sender] = (self._end, data.dtype, data.size)
        self._end += padded

    def get(self, sender: int) -> np.ndarray:
        """Read the vector back (a fresh array).

        Raises:
            LocalProtocolError: nothing is kept for ``sender``, or the file
                ends before its blocks (``STORE_FAILED``).
            OSError: from the file.
        """
        try:
            offset, dtype, size = self._where[sender]
        except KeyError:
            raise _missing(sender) from None
        nbytes = size * dtype.itemsize
        padded = self._padded(nbytes)
        buffer = self._buffer(padded)
        try:
            got = 0
            while got < padded:
                n = os.preadv(self._fd, [buffer[got:]], offset + got)
                if n <= 0 or n % self._block:
                    raise LocalProtocolError(Rule.STORE_FAILED, f"the store's file lost"
                                             f" client {sender}'s masked input",
                                             peer="server")
                got += n
            return np.frombuffer(buffer[:nbytes], dtype=dtype).copy()
        finally:
            buffer.release()

    def clear(self) -> None:
        """Forget every vector and truncate the file."""
        self._where = {}
        self._end = 0
        os.ftruncate(self._fd, 0)

    def works(self) -> bool:
        """On a store that keeps nothing yet: write a two-block non-zero
        pattern, clear the staging buffer, read it back, compare, and clear
        the store: does this file really take direct I/O?  False on a
        failure of the file or on a different read-back (a read that filled
        nothing would leave the staging buffer's last content, another
        client's vector), never an exception."""
        pattern = np.frombuffer(bytes(range(1, 256)) * 17, dtype=np.uint8)  # 4335 B
        try:
            self.put(0, pattern)
            self.put(1, pattern[:1])
            if self._staging is not None:
                self._staging[:] = bytes(len(self._staging))  # what comes back was read
            good = (np.array_equal(self.get(0), pattern)
                    and np.array_equal(self.get(1), pattern[:1]))
            self.clear()
        except (OSError, LocalProtocolError):
            return False
        return good

    def close(self) -> None:
        """Release the staging buffer (not the file descriptor: the caller's).
        If a view of it is still alive (an exception's traceback may hold
        one), it is unmapped when the last view goes."""
        if self._staging is not None:
            with contextlib.suppress(BufferError):
                self._staging.close()
            self._staging = None

    def __len__(self) -> int:
        return len(self._where)

    def __repr__(self) -> str:
        return f"DirectFileStore({len(self)} vectors, {self._end} bytes)"


def _twice(sender: int) -> LocalProtocolError:
    # a sender is put at most once between clears: a second vector would
    # replace the one a later exclusion must subtract (e.g. one store given
    # to two open sessions)
    return LocalProtocolError(Rule.STORE_FAILED, f"a masked input of client {sender} is"
                              " already kept (is this store shared by two sessions?)",
                              peer="server")


def _missing(sender: int) -> LocalProtocolError:
    return LocalProtocolError(Rule.STORE_FAILED, f"no masked input of client {sender} is kept",
                              peer="server")
