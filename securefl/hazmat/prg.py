"""The mask PRG: AES-256-CTR keystream mapped to the ring Z_{2^k}.

Mapping (normative, see the protocol spec): with ``w`` the smallest of
1, 2, 4, 8 bytes that holds ``k`` bits, element ``i`` of the mask is the
little-endian ``w``-byte word at keystream offset ``i*w``, reduced mod 2^k.
The keystream is AES-256-CTR under a 32-byte derived key with an all-zero
16-byte initial counter block (every key is used for one mask only).

Because 2^k divides 2^(8w), masks may be added and subtracted in the native
``uint{8w}`` dtype with wrap-around and reduced mod 2^k once at the end; this
is what :class:`MaskExpander` does, chunk by chunk, into reused buffers, so
the hot path allocates nothing per call.  In Z_2 (``k = 1``) adding or
subtracting a mask is XOR-ing bit 0 of each byte, which is what AES-CTR
encryption does to its input: there the accumulator is encrypted under each
key instead (see :meth:`MaskExpander._xor_segment`), with no ring addition.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from securefl.errors import ConfigurationError

ZERO_IV = b"\0" * 16
_BLOCK = 16
DTYPES = {1: np.dtype("<u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}
DEFAULT_CHUNK_BYTES = 1 << 17  # 128 KiB: stays in L2 while it is encrypted and added
# up to this vector size, threads split the keys (a private accumulator each is
# cheap); above it they split the vector, which needs no extra memory traffic
_SPLIT_KEYS_MAX = 1 << 20


@functools.lru_cache(maxsize=8)
def _zero_bytes(size: int) -> bytes:
    """``size`` zero bytes, shared by every expander of that chunk size (the
    plaintext of the keystream: immutable, read only)."""
    return bytes(size)


class Executor(Protocol):
    """What is needed of an executor (e.g. ``ThreadPoolExecutor``)."""

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> Iterator[Any]: ...


def ring_dtype(bits: int) -> np.dtype:
    """The native unsigned dtype in which Z_{2^bits} arithmetic is done."""
    if not 1 <= bits <= 64:
        raise ConfigurationError(f"bits must be in 1..64, got {bits}")
    for width in (1, 2, 4, 8):
        if bits <= 8 * width:
            return DTYPES[width]
    raise AssertionError("unreachable")


class MaskExpander:
    """Expands 32-byte keys into masks of ``length`` elements of Z_{2^bits}
    and adds or subtracts them into an accumulator in place.

    Work is done chunk-major: for each cache-sized chunk of the accumulator,
    every key's keystream for that chunk is generated into one reused buffer
    and added (or subtracted) at once, so the accumulator chunk stays in cache
    and nothing is allocated per key.  AES-CTR is seekable, so disjoint
    segments of one accumulator can be processed by different threads
    (:meth:`apply` with ``executor``); one expander owns its buffers, so each
    thread uses its own.
    """

    def __init__(self, length: int, bits: int, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        if length < 1:
            raise ConfigurationError("mask length must be positive")
        self.length = length
        self.bits = bits
        self.dtype = ring_dtype(bits)
        width = self.dtype.itemsize
        # chunks are whole AES blocks so every chunk starts on a block boundary
        self._chunk_elems = max(_BLOCK, (chunk_bytes // width) // _BLOCK * _BLOCK)
        chunk = min(self._chunk_elems, length) * width
        self._zeros = _zero_bytes(chunk)
        self._out = bytearray(chunk + _BLOCK - 1)
        self._view = np.frombuffer(self._out, dtype=self.dtype, count=chunk // width)
        self._out2: bytearray | None = None  # the second buffer of the Z_2 path

    def apply(self, jobs: Sequence[tuple[bytes, bool]], acc: np.ndarray, *,
              executor: Executor | None = None, workers: int = 1) -> np.ndarray:
        """For every ``(key, negate)`` in ``jobs``: ``acc -= PRG(key)`` if
        ``negate`` else ``acc += PRG(key)``, modulo 2^bits; then reduce
        ``acc`` mod 2^bits and return it.

        With an ``executor`` and ``workers > 1`` the work is spread over
        ``workers`` threads (AES and numpy release the GIL): many keys are
        split between the threads, each with its own accumulator; a few keys
        over a long vector are split into block-aligned segments instead.
        """
        self._check_acc(acc)
        for key, _ in jobs:
            if len(key) != 32:
                raise ConfigurationError("the mask PRG takes a 32-byte key")
        chunk_bytes = self._chunk_elems * self.dtype.itemsize
        if executor is None or workers <= 1:
            # reduced chunk by chunk while each is in cache: no final pass
            self._apply_segment(jobs, acc, 0, self.length, reduce=True)
            return acc
        elif len(jobs) >= 4 * workers and self.length * self.dtype.itemsize <= _SPLIT_KEYS_MAX:
            # many keys over a short vector: split the keys, so each key's
            # cipher is set up once, and give every worker its own accumulator
            def run_keys(group: Sequence[tuple[bytes, bool]]) -> np.ndarray:
                part = self.zeros()
                MaskExpander(self.length, self.bits, chunk_bytes=chunk_bytes)._apply_segment(
                    group, part, 0, self.length)
                return part

            for part in executor.map(run_keys, [jobs[i::workers] for i in range(workers)]):
                np.add(acc, part, out=acc)
        elif self.length >= 2 * workers * _BLOCK:
            # a long vector: split it into block-aligned segments
            step = -(-self.length // workers)
            step = -(-step // _BLOCK) * _BLOCK
            bounds = [(a, min(a + step, self.length)) for a in range(0, self.length, step)]

            # the workers reach ``acc`` through this list, emptied once they
            # are done: a pool may drop its reference to the task a moment
            # after the result is delivered, and a caller may need to know
            # that no view of ``acc`` is left (storage.SealableVector)
            target = [acc]

            def run_segment(bound: tuple[int, int]) -> None:
                MaskExpander(self.length, self.bits, chunk_bytes=chunk_bytes)._apply_segment(
                    jobs, target[0], bound[0], bound[1], reduce=True)

            try:
                list(executor.map(run_segment, bounds))
            finally:
                target.clear()
            return acc
        else:
            self._apply_segment(jobs, acc, 0, self.length, reduce=True)
            return acc
        return self.reduce(acc)

    def _apply_segment(self, jobs: Sequence[tuple[bytes, bool]], acc: np.ndarray,
                       start: int, stop: int, *, reduce: bool = False) -> None:
        """The keys' masks added/subtracted into ``acc[start:stop]`` chunk by
        chunk in the native width (wrapping mod 2^(8w); in Z_2 with a contiguous
        ``acc``, only bit 0 of each word is kept exact, by :meth:`_xor_segment`);
        with ``reduce``, each chunk is then reduced mod 2^bits while it is still
        in cache."""
        width = self.dtype.itemsize
        first_block = (start * width) // _BLOCK
        ctr = modes.CTR(first_block.to_bytes(16, "big"))  # a mode object holds only the IV
        encryptors = [(Cipher(algorithms.AES(key), ctr).encryptor().update_into, negate)
                      for key, negate in jobs]
        if self.bits == 1 and encryptors and acc.flags.c_contiguous:
            self._xor_segment(encryptors, acc, start, stop, reduce=reduce)
            return
        mask = (self.dtype.type((1 << self.bits) - 1)
                if reduce and self.bits < 8 * width else None)
        zeros = memoryview(self._zeros)
        out = self._out
        add, subtract, bitwise_and = np.add, np.subtract, np.bitwise_and
        for a in range(start, stop, self._chunk_elems):
            b = min(a + self._chunk_elems, stop)
            count = b - a
            seg = acc[a:b]
            stream = self._view[:count]
            source = zeros[:count * width]
            for update_into, negate in encryptors:
                update_into(source, out)
                if negate:
                    subtract(seg, stream, out=seg)
                else:
                    add(seg, stream, out=seg)
            if mask is not None:
                bitwise_and(seg, mask, out=seg)

    def _xor_segment(self, encryptors: Sequence[tuple[Callable[..., Any], bool]],
                     acc: np.ndarray, start: int, stop: int, *, reduce: bool) -> None:
        """Z_2 (``bits == 1``, one byte per element, only bit 0 counts): adding
        or subtracting a mask changes bit 0 of each byte by the XOR of the
        keystream byte's bit 0, and AES-CTR encryption XORs the keystream into
        its input.  So each chunk of ``acc`` is encrypted under every key in
        turn, ping-ponging between two buffers (input and output never
        overlap), and bit 0 of the result is bit 0 of the sum: the bits above
        it differ from the additive path's but are cleared by the reduction,
        so the reduced result is identical, with no ring addition at all."""
        if self._out2 is None:
            self._out2 = bytearray(len(self._out))
        acc_bytes = memoryview(acc).cast("B")
        buffers = (memoryview(self._out), memoryview(self._out2))
        views = (self._view, np.frombuffer(self._out2, dtype=self.dtype, count=len(self._view)))
        one = self.dtype.type(1)
        for a in range(start, stop, self._chunk_elems):
            b = min(a + self._chunk_elems, stop)
            source = acc_bytes[a:b]
            for i, (update_into, _) in enumerate(encryptors):
                update_into(source, buffers[i & 1])
                source = buffers[i & 1][:b - a]
            result = views[(len(encryptors) - 1) & 1][:b - a]
            if reduce:
                np.bitwise_and(result, one, out=acc[a:b])
            else:
                acc[a:b] = result

    def add_into(self, key: bytes, acc: np.ndarray) -> None:
        """``acc += PRG(key)``: the words of ``acc`` change by a value congruent
        to the mask mod 2^bits (mod 2^(8w) except in Z_2, where only bit 0 is
        defined); reduce with :meth:`reduce` at the end."""
        self._check_key(key)
        self._check_acc(acc)
        self._apply_segment([(key, False)], acc, 0, self.length)

    def subtract_into(self, key: bytes, acc: np.ndarray) -> None:
        """``acc -= PRG(key)``, congruent mod 2^bits as in :meth:`add_into`."""
        self._check_key(key)
        self._check_acc(acc)
        self._apply_segment([(key, True)], acc, 0, self.length)

    def expand(self, key: bytes, out: np.ndarray | None = None) -> np.ndarray:
        """The mask itself, reduced into [0, 2^bits), in ``out`` if given."""
        if out is None:
            out = np.empty(self.length, dtype=self.dtype)
        self._check_key(key)
        self._check_acc(out)
        width = self.dtype.itemsize
        enc = Cipher(algorithms.AES(key), modes.CTR(ZERO_IV)).encryptor()
        zeros = memoryview(self._zeros)
        target = memoryview(out.view(np.uint8)) if out.flags.c_contiguous else None
        total = self.length * width
        mask = self.dtype.type((1 << self.bits) - 1) if self.bits < 8 * width else None
        for a in range(0, self.length, self._chunk_elems):
            b = min(a + self._chunk_elems, self.length)
            if target is not None and b * width + _BLOCK - 1 <= total:
                # keystream straight into the caller's buffer; the slack the API
                # demands is overwritten by the next chunk
                enc.update_into(zeros[: (b - a) * width], target[a * width:b * width + _BLOCK - 1])
                if mask is not None:
                    np.bitwise_and(out[a:b], mask, out=out[a:b])
            elif mask is not None:
                enc.update_into(zeros[: (b - a) * width], self._out)
                np.bitwise_and(self._view[: b - a], mask, out=out[a:b])
            else:
                enc.update_into(zeros[: (b - a) * width], self._out)
                out[a:b] = self._view[: b - a]
        return out

    def reduce(self, acc: np.ndarray) -> np.ndarray:
        """Reduce ``acc`` mod 2^bits in place and return it."""
        if self.bits < 8 * self.dtype.itemsize:
            np.bitwise_and(acc, self.dtype.type((1 << self.bits) - 1), out=acc)
        return acc

    def zeros(self) -> np.ndarray:
        """A fresh accumulator of the right dtype and length."""
        return np.zeros(self.length, dtype=self.dtype)

    @staticmethod
    def _check_key(key: bytes) -> None:
        if len(key) != 32:
            raise ConfigurationError("the mask PRG takes a 32-byte key")

    def _check_acc(self, acc: np.ndarray) -> None:
        if acc.dtype != self.dtype or acc.shape != (self.length,):
            raise ConfigurationError(
                f"accumulator must be {self.dtype} of shape ({self.length},),"
                f" got {acc.dtype} {acc.shape}"
            )


def expand_mask(key: bytes, length: int, bits: int) -> np.ndarray:
    """Convenience: the mask ``PRG(key)`` as a fresh ``uint64`` array in
    [0, 2^bits).  Allocates; use :class:`MaskExpander` on hot paths."""
    return MaskExpander(length, bits).expand(key).astype(np.uint64)
