"""The client-side encoding of user-level distributed DP (Kairouz, Liu, Steinke,
"The Distributed Discrete Gaussian Mechanism for Federated Learning with
Secure Aggregation", ICML 2021, section 4; Agarwal, Kairouz, Liu, "The
Skellam Mechanism for Differentially Private Federated Learning", NeurIPS
2021): a client's whole update becomes a vector of ``Z_{2^bits}`` whose L2
norm is bounded **after** rounding, so that the sum of such vectors plus
integer (Skellam) noise is a mechanism of known sensitivity.

Client, :meth:`RotatedCodec.encode`:

1. **clip** the flattened update to L2 norm ``clip`` (``C``);
2. **pad** it with zeros to ``padded``, the next power of two, and
   **rotate** it: ``y = H D x / sqrt(padded)`` with ``H`` the Walsh-Hadamard
   matrix and ``D`` a diagonal of random signs; the signs come from
   AES-256-CTR keyed by ``SHA-256(ROTATION_DOMAIN || round_seed)``, a
   **public** per-round seed (the rotation hides nothing: it only spreads
   the mass over the coordinates so that each is small);
3. **scale** by ``gamma`` and round each coordinate to an integer by
   **conditional randomized rounding**: ``floor(z) + Bernoulli(z - floor(z))``
   with uniforms from AES-256-CTR under a fresh key from ``os.urandom``; the
   rounded vector is accepted only if its squared L2 norm is at most
   :attr:`RotatedCodec.norm_bound_sq`, and drawn again otherwise;
4. reduce modulo ``2^bits`` (two's complement).

The accepted norm bound (Kairouz et al. 2021, Theorem 23 with the
granularity 1 after scaling): with ``c = gamma * C`` and ``d = padded``,

    Delta_2^2 = floor(min(c^2 + d/4 + sqrt(2 ln(1/beta)) (c + sqrt(d)/2),
                          (c + sqrt(d))^2))

An attempt is accepted with probability at least ``1 - beta`` when the
first term is the smaller, and always when the second is (each coordinate
moves by less than 1, so ``||r|| < c + sqrt(d)``).  ``Delta_2`` is the L2
sensitivity of the sum in ring units under adding or removing one client;
its L1 sensitivity is ``Delta_1 = min(Delta_2^2, sqrt(d) Delta_2)``
(integers: ``|r_i| <= r_i^2``; and Cauchy-Schwarz).  Both are deterministic
bounds: the accounting of :mod:`securefl.privacy.distributed` uses them.

Server, :meth:`RotatedCodec.decode_sum`: the unmasked sum (noise included)
is read in the signed range ``[-2^(bits-1), 2^(bits-1))`` (**modular
clipping**), divided by ``gamma`` and un-rotated; the padding is dropped.
Without noise and without wrap-around, the result is the un-rotation of the
exact integer sum of the rounded vectors, within ``n sqrt(d) / gamma`` (L2)
of the sum of the ``n`` clipped updates (:meth:`RotatedCodec.rounding_error`).

This module needs only numpy and cryptography.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from securefl.errors import ConfigurationError, EncodingError

__all__ = [
    "DEFAULT_BETA",
    "MAX_ROUNDING_ATTEMPTS",
    "ROTATION_DOMAIN",
    "RotatedCodec",
    "RotatedUpdate",
    "fwht",
    "next_power_of_two",
    "rotation_signs",
]

ROTATION_DOMAIN = b"securefl/ddp/v1/rotation-signs\x00"
"""Domain separation of the key of the public sign PRG."""

DEFAULT_BETA = math.exp(-0.5)
"""``beta`` of conditional randomized rounding (TFF's default): an attempt is
refused with probability at most ``beta``."""

MAX_ROUNDING_ATTEMPTS = 1000
"""After this many refused attempts (probability at most ``beta^1000``,
about ``e^-500``), :meth:`RotatedCodec.encode` raises instead of sending
anything."""

_ZERO_IV = b"\0" * 16


def next_power_of_two(n: int) -> int:
    """The smallest power of two ``>= n`` (1 for ``n <= 1``)."""
    return 1 << max(0, (int(n) - 1).bit_length())


_BLOCK_LOG2 = 5


@functools.lru_cache(maxsize=_BLOCK_LOG2 + 1)
def _hadamard(size: int) -> np.ndarray:
    """The Sylvester Hadamard matrix of a power-of-two ``size`` (read-only)."""
    h = np.ones((1, 1))
    while h.shape[0] < size:
        h = np.block([[h, h], [h, -h]])
    h.setflags(write=False)
    return h


def fwht(values: np.ndarray) -> np.ndarray:
    """The unnormalised fast Walsh-Hadamard transform ``H x`` of a float
    vector whose length ``d`` is a power of two (a new array).

    ``H_d`` is the Kronecker product of Hadamard blocks of at most 32 x 32,
    so the transform is ``ceil(log2(d) / 5)`` batched matrix products with
    those blocks, each along one axis of ``x`` reshaped (``O(d log d)``
    operations, done by BLAS).  ``H`` is symmetric and ``H H = d I``, so
    ``fwht(fwht(x)) / d == x`` up to float rounding.

    Raises:
        EncodingError: when the length is not a power of two.
    """
    out = np.array(values, dtype=np.float64, copy=True)
    d = out.shape[0] if out.ndim == 1 else 0
    if out.ndim != 1 or d < 1 or d & (d - 1):
        raise EncodingError(f"the Hadamard transform needs a power-of-two length, got {d}")
    k = min(1 << _BLOCK_LOG2, d)
    out = (out.reshape(-1, k) @ _hadamard(k)).reshape(-1)
    h = k
    while h < d:
        k = min(1 << _BLOCK_LOG2, d // h)
        out = np.matmul(_hadamard(k), out.reshape(-1, k, h)).reshape(-1)
        h *= k
    return out


def rotation_signs(round_seed: bytes, length: int) -> np.ndarray:
    """The public random signs (+1.0 / -1.0) of the rotation of one round.

    Bit ``i`` of the AES-256-CTR keystream under key
    ``SHA-256(ROTATION_DOMAIN || round_seed)`` (zero counter block; bits in
    little-endian order within each byte) gives sign ``1 - 2 bit_i``.

    Raises:
        ConfigurationError: when ``round_seed`` is not bytes of at least 16
            bytes or ``length`` < 1.
    """
    if not isinstance(round_seed, bytes) or len(round_seed) < 16:
        raise ConfigurationError("the rotation seed must be at least 16 bytes")
    if length < 1:
        raise ConfigurationError(f"the rotation length must be positive, got {length}")
    key = hashlib.sha256(ROTATION_DOMAIN + round_seed).digest()
    encryptor = Cipher(algorithms.AES(key), modes.CTR(_ZERO_IV)).encryptor()
    stream = encryptor.update(bytes((length + 7) // 8)) + encryptor.finalize()
    bits = np.unpackbits(np.frombuffer(stream, dtype=np.uint8), bitorder="little")[:length]
    return 1.0 - 2.0 * bits.astype(np.float64)


def _os_uniform53(count: int) -> np.ndarray:
    """``count`` uniform integers below ``2^53``: the AES-256-CTR keystream
    under a fresh key from ``os.urandom`` (used for this one draw and
    forgotten), read as little-endian 64-bit words shifted right by 11 (the
    construction of the noise sampler's fresh draws, faster than reading 8
    bytes per value from ``os.urandom``)."""
    encryptor = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(_ZERO_IV)).encryptor()
    stream = encryptor.update(bytes(8 * count)) + encryptor.finalize()
    return np.frombuffer(stream, dtype="<u8") >> np.uint64(11)


@dataclass(frozen=True)
class RotatedUpdate:
    """One client's encoded update.

    Attributes:
        vector: ``uint64`` array of length ``padded``, entries below
            ``2^bits`` (two's complement of the rounded integers).
        clipped: whether the update's L2 norm exceeded ``clip`` (it was then
            scaled down to ``clip``), or it held a NaN or an infinity (it was
            then replaced by the zero vector).  Stays on the client.
        attempts: how many roundings were drawn before one was within the
            norm bound (1 most of the time).
    """

    vector: np.ndarray = field(repr=False)
    clipped: bool = field(repr=False)  # stays on the client: not in the repr either
    attempts: int = field(repr=False)


@dataclass(frozen=True)
class RotatedCodec:
    """Clip, rotate, scale and conditionally round updates of ``num_values``
    floats into ``Z_{2^bits}``; decode their (noisy) sum.

    Args:
        num_values: ``d0``, the number of floats of an update (> 0).
        clip: ``C``, the L2 bound of an update (> 0, finite).
        gamma: the scale (ring units per unit of the update; > 0, finite).
        bits: the ring size, 2..62.
        beta: the conditional-rounding parameter in [0, 1); 0 selects the
            deterministic bound ``(gamma C + sqrt(d))^2`` (never refused).

    Raises:
        ConfigurationError: when a parameter is out of range, or when the
            norm bound ``Delta_2`` does not fit in the signed range
            ``2^(bits-1)`` (one client's vector could then wrap on its own);
            the message names the numbers and the fix.
    """

    num_values: int
    clip: float
    gamma: float
    bits: int
    beta: float = DEFAULT_BETA

    def __post_init__(self) -> None:
        if isinstance(self.num_values, bool) or not isinstance(self.num_values, int) \
                or self.num_values < 1:
            raise ConfigurationError(f"num_values must be an integer >= 1, got {self.num_values!r}")
        for name in ("clip", "gamma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value) or value <= 0:
                raise ConfigurationError(
                    f"the {name} must be a positive finite number, got {value!r}"
                    + ("; the L2 norm bound of an update must be > 0" if name == "clip" else ""))
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) \
                or not 2 <= self.bits <= 62:
            raise ConfigurationError(f"bits must be an integer in 2..62, got {self.bits!r}")
        if not 0.0 <= self.beta < 1.0:
            raise ConfigurationError(f"beta must be in [0, 1), got {self.beta}")
        worst = (self.gamma * self.clip + math.sqrt(self.padded)) ** 2
        if worst >= 2.0**62:
            raise ConfigurationError(
                f"gamma {self.gamma:.4g} x clip {self.clip:.4g} = {self.gamma * self.clip:.4g}"
                " is too large: squared norms of rounded vectors must stay below 2^62 to be"
                " checked exactly; use a smaller gamma")
        bound = math.sqrt(self.norm_bound_sq)
        if bound >= 2 ** (self.bits - 1):
            raise ConfigurationError(
                f"one client's rounded update can have L2 norm {bound:.4g} (gamma {self.gamma:.4g}"
                f" x clip {self.clip:.4g} plus rounding over {self.padded} coordinates), beyond"
                f" the signed range 2^{self.bits - 1} of Z_2^{self.bits}; use a smaller gamma"
                f" or bits >= {math.ceil(math.log2(bound + 1)) + 1}")

    # -- sizes and bounds -------------------------------------------------------------

    @property
    def padded(self) -> int:
        """``d``: the power of two the update is padded to (the vector length)."""
        return next_power_of_two(self.num_values)

    @property
    def norm_bound_sq(self) -> int:
        """``Delta_2^2``: the largest squared L2 norm of an accepted rounded
        vector (ring units; an integer)."""
        return rounded_norm_bound_sq(self.gamma * self.clip, self.padded, self.beta)

    @property
    def l2_sensitivity(self) -> float:
        """``Delta_2 = sqrt(norm_bound_sq)``: the L2 sensitivity of the sum in
        ring units (add or remove one client)."""
        return math.sqrt(self.norm_bound_sq)

    @property
    def l1_sensitivity(self) -> float:
        """``Delta_1 = min(Delta_2^2, sqrt(d) Delta_2)`` in ring units."""
        return min(float(self.norm_bound_sq), math.sqrt(self.padded) * self.l2_sensitivity)

    def rounding_error(self, num_clients: int) -> float:
        """The largest L2 distance between :meth:`decode_sum` of the noiseless
        sum of ``num_clients`` encodings and the sum of their clipped updates:
        ``num_clients sqrt(d) / gamma`` (each rounded coordinate is within 1
        of the scaled one; the rotation is orthogonal)."""
        return num_clients * math.sqrt(self.padded) / self.gamma

    # -- the transform ------------------------------------------------------------------

    def rotate(self, values: np.ndarray, round_seed: bytes) -> np.ndarray:
        """``H D pad(values) / sqrt(d)``: an orthogonal map (the L2 norm is kept)."""
        padded = np.zeros(self.padded)
        padded[:self.num_values] = values
        return fwht(padded * rotation_signs(round_seed, self.padded)) / math.sqrt(self.padded)

    def unrotate(self, rotated: np.ndarray, round_seed: bytes) -> np.ndarray:
        """The inverse of :meth:`rotate`, padding dropped: ``(D H y / sqrt(d))[:d0]``."""
        full = fwht(rotated) / math.sqrt(self.padded) * rotation_signs(round_seed, self.padded)
        return full[:self.num_values]

    def clip_values(self, values: np.ndarray) -> tuple[np.ndarray, bool]:
        """``values`` scaled to L2 norm at most ``clip``, and whether it was.

        An update holding a NaN or an infinity is replaced by the zero
        vector, and counts as clipped.  It is not refused: whether an update
        is finite depends on the client's data (one record can overflow a
        layer whose weights the server chose), and a refusal is seen by the
        server outside the noise.  The zero vector is
        exactly what the client's zero-out neighbour sends, so the user-level
        guarantee holds for every input.

        Raises:
            EncodingError: on a wrong shape or a non-float dtype (the same for
                every client: they do not depend on the data).
        """
        array = np.asarray(values)
        if array.dtype.kind != "f":
            raise EncodingError(f"the update has dtype {array.dtype}, expected floats")
        array = array.astype(np.float64).reshape(-1)
        if array.shape[0] != self.num_values:
            raise EncodingError(
                f"the update has {array.shape[0]} values, expected {self.num_values}")
        if not np.isfinite(array).all():
            return np.zeros_like(array), True
        with np.errstate(over="ignore"):
            norm = float(np.linalg.norm(array))
        if not math.isfinite(norm):  # finite values whose squares overflow
            scale = float(np.max(np.abs(array)))
            norm = scale * float(np.linalg.norm(array / scale))
        if norm > self.clip:
            return array * (self.clip / norm), True
        return array, False

    def round_scaled(
        self, scaled: np.ndarray, uniform: Callable[[int], np.ndarray] = _os_uniform53,
    ) -> tuple[np.ndarray, int]:
        """Conditional randomized rounding of ``scaled`` (``gamma`` times a
        rotated clipped update): the rounded int64 vector whose squared norm
        is at most :attr:`norm_bound_sq`, and the number of attempts.

        ``uniform(n)`` returns ``n`` integers uniform below ``2^53`` as
        ``uint64`` (default: AES-256-CTR under a fresh key from
        ``os.urandom``; tests inject others).  A coordinate is rounded up
        with probability ``ceil(frac 2^53) / 2^53``.

        Raises:
            EncodingError: after :data:`MAX_ROUNDING_ATTEMPTS` refusals (an
                input beyond ``gamma * clip``, or probability ``beta^1000``).
        """
        floor = np.floor(scaled)
        # P(round up) = ceil(frac 2^53) / 2^53: within 2^-53 of frac
        threshold = np.ceil(np.ldexp(scaled - floor, 53)).astype(np.uint64)
        base = floor.astype(np.int64)
        limit = self.norm_bound_sq
        for attempt in range(1, MAX_ROUNDING_ATTEMPTS + 1):
            up = uniform(base.shape[0]) < threshold
            rounded = base + up
            if int(np.dot(rounded, rounded)) <= limit:
                return rounded, attempt
        raise EncodingError(
            f"conditional rounding refused {MAX_ROUNDING_ATTEMPTS} attempts in a row (norm bound"
            f" {math.sqrt(limit):.4g}); the input was not clipped to gamma x clip")

    def encode(self, values: np.ndarray, round_seed: bytes, *,
               uniform: Callable[[int], np.ndarray] = _os_uniform53) -> RotatedUpdate:
        """Clip, rotate with this round's public seed, scale by ``gamma``,
        round conditionally and reduce modulo ``2^bits``.

        Raises:
            EncodingError: on a wrong size or dtype (a NaN or an infinity is
                encoded as the zero vector, see :meth:`clip_values`).
            ConfigurationError: on a rotation seed shorter than 16 bytes.
        """
        clipped, was_clipped = self.clip_values(values)
        rounded, attempts = self.round_scaled(self.gamma * self.rotate(clipped, round_seed),
                                              uniform)
        return RotatedUpdate(vector=self.to_ring(rounded), clipped=was_clipped,
                             attempts=attempts)

    def to_ring(self, integers: np.ndarray) -> np.ndarray:
        """Signed integers as ``uint64`` residues modulo ``2^bits``."""
        return integers.astype(np.int64).view(np.uint64) & np.uint64((1 << self.bits) - 1)

    def signed(self, total: np.ndarray) -> np.ndarray:
        """Modular clipping: residues modulo ``2^bits`` read in
        ``[-2^(bits-1), 2^(bits-1))`` (int64).

        Raises:
            EncodingError: on a wrong length, a non-unsigned dtype or a value
                outside ``Z_{2^bits}``.
        """
        total = np.asarray(total)
        if total.dtype.kind != "u":
            raise EncodingError(f"the sum must be an unsigned integer array, got {total.dtype}")
        if total.shape != (self.padded,):
            raise EncodingError(f"the sum has shape {total.shape}, expected ({self.padded},)")
        total = total.astype(np.uint64)
        if (total >> np.uint64(self.bits)).any():
            raise EncodingError(f"the sum holds values outside Z_2^{self.bits}")
        signed = total.astype(np.int64)
        return np.where(signed >= (1 << (self.bits - 1)), signed - (1 << self.bits), signed)

    def decode_sum(self, total: np.ndarray, round_seed: bytes) -> np.ndarray:
        """The float sum of the clipped updates (plus the noise / gamma):
        modular clipping, division by ``gamma``, un-rotation.

        Raises:
            EncodingError: as :meth:`signed`.
        """
        return self.unrotate(self.signed(total).astype(np.float64) / self.gamma, round_seed)


def rounded_norm_bound_sq(scaled_clip: float, dim: int, beta: float) -> int:
    """``Delta_2^2`` of conditional randomized rounding (Kairouz, Liu, Steinke
    2021, Theorem 23): ``floor(min(c^2 + d/4 + sqrt(2 ln(1/beta)) (c + sqrt(d)/2),
    (c + sqrt(d))^2))`` for ``c = scaled_clip`` and ``d = dim``; ``beta = 0``
    gives the second (deterministic) term.

    Raises:
        ConfigurationError: when ``scaled_clip`` <= 0, ``dim`` < 1 or ``beta``
            outside [0, 1).
    """
    if not scaled_clip > 0 or dim < 1 or not 0.0 <= beta < 1.0:
        raise ConfigurationError(
            f"rounding bound needs gamma x clip > 0, d >= 1, beta in [0, 1);"
            f" got {scaled_clip}, {dim}, {beta}")
    deterministic = (scaled_clip + math.sqrt(dim)) ** 2
    if beta == 0.0:
        return math.floor(deterministic)
    probable = (scaled_clip ** 2 + dim / 4.0
                + math.sqrt(2.0 * math.log(1.0 / beta)) * (scaled_clip + math.sqrt(dim) / 2.0))
    return math.floor(min(probable, deterministic))
