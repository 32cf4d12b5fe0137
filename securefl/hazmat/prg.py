"""The mask PRG: AES-256-CTR keystream mapped to the ring Z_{2^k}.

Mapping (normative, see the protocol spec): with ``w`` the smallest of
1, 2, 4, 8 bytes that holds ``k`` bits, element ``i`` of the mask is the
little-endian ``w``-byte word at keystream offset ``i*w``, reduced mod 2^k.
The keystream is AES-256-CTR under a 32-byte derived key with an all-zero
16-byte initial counter block (every key is used for one mask only).

Because 2^k divides 2^(8w), masks may be added and subtracted in the native
``uint{8w}`` dtype with wrap-around and reduced mod 2^k once at the end; this
is what :class:`MaskExpander` does, chunk by chunk, into reused buffers, so
the hot path allocates nothing per call.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from securefl.errors import ConfigurationError

ZERO_IV = b"\0" * 16
_BLOCK = 16
DTYPES = {1: np.dtype("<u1"), 2: np.dtype("<u2"), 4: np.dtype("<u4"), 8: np.dtype("<u8")}
DEFAULT_CHUNK_BYTES = 1 << 17  # 128 KiB: stays in L2 while it is encrypted and added


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

    One expander owns its buffers; use one per thread.
    """

    def __init__(self, length: int, bits: int, *, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
        if length < 1:
            raise ConfigurationError("mask length must be positive")
        self.length = length
        self.bits = bits
        self.dtype = ring_dtype(bits)
        width = self.dtype.itemsize
        self._chunk_elems = max(1, chunk_bytes // width)
        chunk = min(self._chunk_elems, length) * width
        self._zeros = bytes(chunk)
        self._out = bytearray(chunk + _BLOCK - 1)
        self._view = np.frombuffer(self._out, dtype=self.dtype, count=chunk // width)

    def _chunks(self, key: bytes):  # type: ignore[no-untyped-def]
        """Yield ``(start, stop, keystream_view)`` over the whole mask."""
        if len(key) != 32:
            raise ConfigurationError("the mask PRG takes a 32-byte key")
        enc = Cipher(algorithms.AES(key), modes.CTR(ZERO_IV)).encryptor()
        width = self.dtype.itemsize
        zeros = memoryview(self._zeros)
        for start in range(0, self.length, self._chunk_elems):
            stop = min(start + self._chunk_elems, self.length)
            count = stop - start
            enc.update_into(zeros[: count * width], self._out)
            yield start, stop, self._view[:count]

    def add_into(self, key: bytes, acc: np.ndarray) -> None:
        """``acc += PRG(key)`` modulo 2^(8w) (reduce with :meth:`reduce` at the end)."""
        self._check_acc(acc)
        for start, stop, stream in self._chunks(key):
            seg = acc[start:stop]
            np.add(seg, stream, out=seg)

    def subtract_into(self, key: bytes, acc: np.ndarray) -> None:
        """``acc -= PRG(key)`` modulo 2^(8w)."""
        self._check_acc(acc)
        for start, stop, stream in self._chunks(key):
            seg = acc[start:stop]
            np.subtract(seg, stream, out=seg)

    def expand(self, key: bytes, out: np.ndarray | None = None) -> np.ndarray:
        """The mask itself, reduced into [0, 2^bits), in ``out`` if given."""
        if out is None:
            out = np.empty(self.length, dtype=self.dtype)
        self._check_acc(out)
        for start, stop, stream in self._chunks(key):
            out[start:stop] = stream
        return self.reduce(out)

    def reduce(self, acc: np.ndarray) -> np.ndarray:
        """Reduce ``acc`` mod 2^bits in place and return it."""
        if self.bits < 8 * self.dtype.itemsize:
            np.bitwise_and(acc, self.dtype.type((1 << self.bits) - 1), out=acc)
        return acc

    def zeros(self) -> np.ndarray:
        """A fresh accumulator of the right dtype and length."""
        return np.zeros(self.length, dtype=self.dtype)

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
