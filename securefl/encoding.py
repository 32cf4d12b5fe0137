"""Fixed-point encoding of float model updates into the ring Z_{2^k}.

A client's update (one or several float tensors) becomes one vector of
unsigned integers below ``2^k``:

1. every value is clipped to ``[-clip, clip]`` (the number clipped is
   reported, never silent);
2. the values are multiplied by ``weight / max_weight`` (so that the server
   can form an example-weighted average from the sum) and by ``2^frac_bits``;
3. they are rounded to integers by **unbiased stochastic rounding**
   (``E[round(y)] = y``) with a numpy ``Generator`` the caller owns;
4. negative integers wrap around in two's complement modulo ``2^k``;
5. one extra slot carries the integer ``weight`` itself, so the sum tells the
   server the total weight of the updates that entered it.

The **sum** of up to ``num_clients`` such vectors modulo ``2^k`` decodes
exactly (up to the rounding of each client, at most ``2^-frac_bits`` per value
and client) because :class:`FixedPointCodec` refuses, when it is built, any
configuration whose sum could leave ``[-2^(k-1), 2^(k-1))``.  Nothing ever
wraps silently.

This module knows nothing of networking or masking; it accepts numpy arrays
and anything with ``.detach().cpu().numpy()`` (torch tensors).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from securefl.errors import ConfigurationError, EncodingError

if TYPE_CHECKING:
    from securefl.protocol.noise import NoisePlan

__all__ = [
    "MAX_EXACT_SCALE_BITS",
    "DecodedSum",
    "EncodedUpdate",
    "FixedPointCodec",
    "PlainUpdate",
    "max_frac_bits",
    "min_bits",
    "noise_frac_bits",
    "noise_plan_for",
    "sum_vectors",
]

MAX_EXACT_SCALE_BITS = 52
"""``clip * 2^frac_bits`` must stay below ``2^52`` so that float64 still has
a fractional part to round stochastically."""

MAX_FRAC_BITS = 1000
"""``|frac_bits|`` above this cannot be represented in float64 scaling (and
no ring of at most 64 bits could use it)."""

_FLOAT_KINDS = ("f",)


def _check_int(name: str, value: Any, low: int, high: int | None) -> int:
    """``value`` as a Python int, after checking it is an int (numpy ints
    included, bools not) in ``low..high`` (``high`` None: no bound)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low \
            or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ConfigurationError(f"{name} must be an integer {bound}, got {value!r}"[:200])
    return int(value)


def _check_clip(clip: Any) -> float:
    """``clip`` is a positive number that is a finite float."""
    ok = not isinstance(clip, bool) and isinstance(clip, int | float | np.integer | np.floating)
    if ok:
        try:
            value = float(clip)
        except OverflowError:  # an int beyond the float range
            ok = False
        else:
            ok = math.isfinite(value) and value > 0
    if not ok:
        raise ConfigurationError(f"clip must be a positive finite number, got {clip!r}"[:200])
    return float(clip)


def _magnitude_bits(value: float) -> int:
    """Bits needed to hold the non-negative integer ``value`` plus a sign bit."""
    return max(1, math.ceil(value).bit_length()) + 1


def max_frac_bits(*, bits: int, clip: float, num_clients: int) -> int:
    """The largest ``frac_bits`` for which the sum of ``num_clients`` values in
    ``[-clip, clip]`` cannot overflow ``Z_{2^bits}`` (may be negative, which
    means no positive precision fits).

    Raises:
        ConfigurationError: ``bits`` not an int in 1..64, ``clip`` not a
            positive finite number, ``num_clients`` not an int >= 1.
    """
    bits = _check_int("bits", bits, 1, 64)
    clip = _check_clip(clip)
    num_clients = _check_int("num_clients", num_clients, 1, None)
    best = -64
    for frac in range(-63, 64):
        scaled = clip * 2.0**frac
        if scaled >= 2.0**MAX_EXACT_SCALE_BITS:
            break
        if num_clients * math.ceil(scaled) <= 2 ** (bits - 1) - 1:
            best = frac
        else:
            break
    return best


def min_bits(*, frac_bits: int, clip: float, num_clients: int, max_weight: int = 1) -> int:
    """The smallest ring size ``k`` whose signed range holds the sum of
    ``num_clients`` encoded values and weights.

    Raises:
        ConfigurationError: ``frac_bits`` not an int in
            -MAX_FRAC_BITS..MAX_FRAC_BITS, ``clip`` not a positive finite
            number, ``num_clients`` or ``max_weight`` not an int >= 1, or
            ``clip * 2^frac_bits`` beyond the float range.
    """
    frac_bits = _check_int("frac_bits", frac_bits, -MAX_FRAC_BITS, MAX_FRAC_BITS)
    clip = _check_clip(clip)
    num_clients = _check_int("num_clients", num_clients, 1, None)
    max_weight = _check_int("max_weight", max_weight, 1, None)
    if not math.isfinite(clip * 2.0**frac_bits):
        raise ConfigurationError(f"clip {clip} x 2^{frac_bits} is beyond the float range")
    value_bound = num_clients * math.ceil(clip * 2.0**frac_bits)
    weight_bound = num_clients * max_weight
    return max(_magnitude_bits(value_bound), _magnitude_bits(weight_bound))


@dataclass(frozen=True)
class EncodedUpdate:
    """One client's encoded update.

    Attributes:
        vector: ``uint64`` array of length ``vector_length``, every entry
            below ``2^bits``; the last entry is the weight.
        num_clipped: how many values lay outside ``[-clip, clip]`` and were
            clipped.
        num_values: how many values the update had.
        weight: the integer weight carried in the last slot.

    Its ``repr`` shows ``num_values`` only: the vector (the client's unmasked
    update), the clip count and the weight (a record count under weighting
    by examples) stay on the client.
    """

    vector: np.ndarray = field(repr=False)
    num_clipped: int = field(repr=False)
    num_values: int
    weight: int = field(repr=False)


@dataclass(frozen=True)
class PlainUpdate:
    """The float counterpart of :class:`EncodedUpdate` (clipped and scaled by
    ``weight / max_weight``, not rounded), used by plain summation.  Its
    ``repr`` shows ``num_values`` only, as :class:`EncodedUpdate`'s."""

    values: np.ndarray = field(repr=False)
    num_clipped: int = field(repr=False)
    num_values: int
    weight: int = field(repr=False)


@dataclass(frozen=True)
class DecodedSum:
    """A decoded sum of encoded updates.

    Attributes:
        tensors: one float64 array per declared shape: the sum over clients of
            ``clip(x_i) * weight_i / max_weight``.
        weight_total: the exact sum of the weights.
        max_weight: the codec's ``max_weight``.
    """

    tensors: list[np.ndarray]
    weight_total: int
    max_weight: int

    def average(self) -> list[np.ndarray]:
        """The weighted average ``sum_i w_i clip(x_i) / sum_i w_i``.

        Raises:
            EncodingError: when the total weight is zero (nothing entered the
                sum) or negative (the sum was not produced by this codec).
        """
        if self.weight_total <= 0:
            raise EncodingError(
                f"cannot average a sum whose total weight is {self.weight_total}: "
                "no update entered it, or it was not produced by this codec"
            )
        factor = self.max_weight / self.weight_total
        return [t * factor for t in self.tensors]


def _as_numpy(tensor: Any, index: int) -> np.ndarray:
    if isinstance(tensor, np.ndarray):
        return tensor
    if hasattr(tensor, "detach"):
        tensor = tensor.detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":  # numpy has no bfloat16
            tensor = tensor.float()
        try:
            return tensor.numpy()
        except (TypeError, RuntimeError) as exc:
            raise EncodingError(f"tensor {index} cannot be converted to numpy: {exc}") from None
    raise EncodingError(
        f"tensor {index} is a {type(tensor).__name__}, expected a numpy array or a torch tensor"
    )


def sum_vectors(vectors: Sequence[np.ndarray], bits: int) -> np.ndarray:
    """The element-wise sum of encoded vectors modulo ``2^bits`` (what the
    secure aggregation protocol computes, without the masks).

    Raises:
        EncodingError: when ``vectors`` is empty or the lengths differ.
    """
    if not vectors:
        raise EncodingError("cannot sum an empty list of vectors")
    length = len(vectors[0])
    total = np.zeros(length, dtype=np.uint64)
    for i, vector in enumerate(vectors):
        if vector.shape != (length,):
            raise EncodingError(f"vector {i} has shape {vector.shape}, expected ({length},)")
        total += vector.astype(np.uint64, copy=False)  # wraps modulo 2^64
    return total & _mask(bits)


def _mask(bits: int) -> np.uint64:
    return np.uint64((1 << bits) - 1)


@dataclass(frozen=True)
class FixedPointCodec:
    """Encoder/decoder between float updates and vectors in ``Z_{2^bits}``.

    Args:
        shapes: the shape of every tensor of an update, in order.
        bits: ``k``, the ring size; 2..64.
        frac_bits: fractional bits of the fixed-point representation (the
            rounding step is ``2^-frac_bits``).
        clip: values are clipped to ``[-clip, clip]`` (> 0).
        num_clients: the largest number of vectors that will be summed.
        max_weight: the largest integer weight a client may declare (1 for
            uniform weighting; the largest example count otherwise).

    Raises:
        ConfigurationError: on a value out of range or of the wrong type
            (non-positive clip, bits outside 2..64, ``|frac_bits|`` over
            ``MAX_FRAC_BITS``, a bool or float where an int belongs, a
            negative or non-integer dimension, empty shapes...).
        EncodingError: when the sum of ``num_clients`` encoded updates could
            overflow ``Z_{2^bits}``; the message names the numbers and the fix
            (fewer fractional bits or a larger ``bits``).
    """

    shapes: tuple[tuple[int, ...], ...]
    bits: int = 32
    frac_bits: int = 16
    clip: float = 4.0
    num_clients: int = 2
    max_weight: int = 1
    _sizes: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.shapes, str | bytes) or not isinstance(self.shapes, Sequence) or any(
                isinstance(s, str | bytes) or not isinstance(s, Sequence) for s in self.shapes):
            raise ConfigurationError(f"shapes must be a sequence of shapes, got {self.shapes!r}")
        for shape in self.shapes:
            for d in shape:
                _check_int("a shape dimension", d, 0, None)
        shapes = tuple(tuple(int(d) for d in s) for s in self.shapes)
        object.__setattr__(self, "shapes", shapes)
        if not shapes:
            raise ConfigurationError("shapes must name at least one tensor")
        object.__setattr__(self, "bits", _check_int("bits", self.bits, 2, 64))
        object.__setattr__(self, "frac_bits", _check_int("frac_bits", self.frac_bits,
                                                         -MAX_FRAC_BITS, MAX_FRAC_BITS))
        object.__setattr__(self, "clip", _check_clip(self.clip))
        object.__setattr__(self, "num_clients", _check_int("num_clients", self.num_clients, 1,
                                                           None))
        object.__setattr__(self, "max_weight", _check_int("max_weight", self.max_weight, 1, None))
        object.__setattr__(self, "_sizes", tuple(math.prod(s) for s in shapes))
        self.check_bit_budget()

    # -- the bit budget -------------------------------------------------------------

    def check_bit_budget(self) -> None:
        """Refuse any configuration whose sum could overflow.

        Raises:
            EncodingError: naming n, clip, frac_bits, bits and what would fit.
        """
        scaled = self.clip * 2.0**self.frac_bits
        if scaled >= 2.0**MAX_EXACT_SCALE_BITS:
            raise EncodingError(
                f"clip {self.clip} x 2^{self.frac_bits} (frac_bits={self.frac_bits}) = {scaled:.3g}"
                f" exceeds 2^{MAX_EXACT_SCALE_BITS}, beyond float64 precision; use fewer"
                " fractional bits"
            )
        limit = 2 ** (self.bits - 1) - 1
        value_bound = self.num_clients * math.ceil(scaled)
        weight_bound = self.num_clients * self.max_weight
        if value_bound > limit:
            fits = max_frac_bits(bits=self.bits, clip=self.clip, num_clients=self.num_clients)
            need = min_bits(frac_bits=self.frac_bits, clip=self.clip,
                            num_clients=self.num_clients, max_weight=self.max_weight)
            raise EncodingError(
                f"bit budget exceeded: the sum of n={self.num_clients} values clipped to"
                f" +/-{self.clip} at frac_bits={self.frac_bits} can reach {value_bound},"
                f" but Z_2^{self.bits} holds signed values only up to {limit};"
                f" use frac_bits <= {fits} or bits >= {need}"
            )
        if weight_bound > limit:
            need = min_bits(frac_bits=self.frac_bits, clip=self.clip,
                            num_clients=self.num_clients, max_weight=self.max_weight)
            raise EncodingError(
                f"bit budget exceeded: n={self.num_clients} weights of up to {self.max_weight}"
                f" sum to {weight_bound} > {limit} for bits={self.bits}; use bits >= {need}"
                " or uniform weighting"
            )

    # -- sizes ----------------------------------------------------------------------

    @property
    def num_values(self) -> int:
        """The number of float values in one update."""
        return sum(self._sizes)

    @property
    def vector_length(self) -> int:
        """The length of an encoded vector: every value plus the weight slot."""
        return self.num_values + 1

    @property
    def resolution(self) -> float:
        """The rounding step ``2^-frac_bits``."""
        return 2.0**-self.frac_bits

    # -- encoding -------------------------------------------------------------------

    def _flatten(self, tensors: Sequence[Any] | Mapping[str, Any]) -> np.ndarray:
        if isinstance(tensors, Mapping):
            tensors = list(tensors.values())
        if isinstance(tensors, np.ndarray) or hasattr(tensors, "detach"):
            tensors = [tensors]
        tensors = list(tensors)
        if len(tensors) != len(self.shapes):
            raise EncodingError(
                f"expected {len(self.shapes)} tensors, got {len(tensors)}"
            )
        flat = []
        for i, (tensor, shape) in enumerate(zip(tensors, self.shapes, strict=True)):
            array = _as_numpy(tensor, i)
            if array.dtype.kind not in _FLOAT_KINDS:
                raise EncodingError(
                    f"tensor {i} has dtype {array.dtype}, expected a floating point dtype"
                )
            if tuple(array.shape) != shape:
                raise EncodingError(
                    f"tensor {i} has shape {tuple(array.shape)}, expected {shape}"
                )
            flat.append(array.astype(np.float64, copy=False).reshape(-1))
        values = np.concatenate(flat) if flat else np.zeros(0)
        bad = ~np.isfinite(values)
        if bad.any():
            where = int(np.flatnonzero(bad)[0])
            raise EncodingError(
                f"the update holds {int(bad.sum())} NaN or infinite value(s)"
                f" (first at flat index {where}); it is refused before anything is sent"
            )
        return values

    def clamp_weight(self, count: int) -> int:
        """A client's record count as a weight this codec encodes: clamped into
        ``1..max_weight``, never refused (``max_weight`` is the server's, and
        a refusal would tell it that the count exceeds it)."""
        return min(max(int(count), 1), self.max_weight)

    def _check_weight(self, weight: int) -> int:
        if isinstance(weight, bool) or not isinstance(weight, (int, np.integer)):
            raise EncodingError(f"weight must be an integer, got {weight!r}")
        if not 1 <= int(weight) <= self.max_weight:
            raise EncodingError(
                f"weight {weight} is outside 1..{self.max_weight} (the declared max_weight)"
            )
        return int(weight)

    def _clip_scale(self, values: np.ndarray, weight: int) -> tuple[np.ndarray, int]:
        num_clipped = int(np.count_nonzero(np.abs(values) > self.clip))
        clipped = np.clip(values, -self.clip, self.clip)
        return clipped * (weight / self.max_weight), num_clipped

    def encode(
        self,
        tensors: Sequence[Any] | Mapping[str, Any],
        rng: np.random.Generator,
        *,
        weight: int = 1,
    ) -> EncodedUpdate:
        """Encode one update.

        Args:
            tensors: the update's tensors in the declared order (a mapping is
                taken in its iteration order).
            rng: the caller's generator for stochastic rounding (only
                ``rng.random`` is drawn, one number per value).
            weight: integer weight in ``1..max_weight``.

        Returns:
            the encoded vector and how many values were clipped.

        Raises:
            EncodingError: on NaN/inf values, a wrong number of tensors, a wrong
                shape or a non-float dtype, or a weight out of range.  Nothing is
                drawn from ``rng`` in that case.
        """
        values = self._flatten(tensors)
        weight = self._check_weight(weight)
        scaled, num_clipped = self._clip_scale(values, weight)
        scaled = scaled * 2.0**self.frac_bits
        floor = np.floor(scaled)
        rounded = floor + (rng.random(scaled.shape[0]) < (scaled - floor))
        ints = np.empty(self.vector_length, dtype=np.int64)
        ints[:-1] = rounded.astype(np.int64)
        ints[-1] = weight
        vector = ints.view(np.uint64) & _mask(self.bits)
        return EncodedUpdate(vector=vector, num_clipped=num_clipped,
                             num_values=values.shape[0], weight=weight)

    def encode_plain(
        self, tensors: Sequence[Any] | Mapping[str, Any], *, weight: int = 1
    ) -> PlainUpdate:
        """Validate, clip and scale an update exactly as :meth:`encode` does,
        but keep floats (no rounding, no ring): the plain-summation path.

        Raises:
            EncodingError: as :meth:`encode`.
        """
        values = self._flatten(tensors)
        weight = self._check_weight(weight)
        scaled, num_clipped = self._clip_scale(values, weight)
        return PlainUpdate(values=scaled, num_clipped=num_clipped,
                           num_values=values.shape[0], weight=weight)

    # -- decoding -------------------------------------------------------------------

    def _split(self, flat: np.ndarray) -> list[np.ndarray]:
        out = []
        offset = 0
        for size, shape in zip(self._sizes, self.shapes, strict=True):
            out.append(flat[offset:offset + size].reshape(shape))
            offset += size
        return out

    def decode_sum(self, total: np.ndarray) -> DecodedSum:
        """Decode the sum (mod ``2^bits``) of at most ``num_clients`` encoded
        vectors.

        Raises:
            EncodingError: when ``total`` has the wrong length, is not an
                unsigned integer array, or holds a value outside ``Z_{2^bits}``.
        """
        total = np.asarray(total)
        if total.dtype.kind != "u":
            raise EncodingError(f"the sum must be an unsigned integer array, got {total.dtype}")
        if total.shape != (self.vector_length,):
            raise EncodingError(
                f"the sum has shape {total.shape}, expected ({self.vector_length},)"
            )
        total = total.astype(np.uint64)
        if self.bits < 64 and (total >> np.uint64(self.bits)).any():
            raise EncodingError(f"the sum holds values outside Z_2^{self.bits}")
        # two's complement: x >= 2^(k-1) stands for x - 2^k = -((2^k - 1 - x) + 1)
        mask = _mask(self.bits)
        negative = total >= np.uint64(1 << (self.bits - 1))
        signed = total.astype(np.int64)
        signed[negative] = -((mask - total[negative]) + np.uint64(1)).astype(np.int64)
        values = signed[:-1].astype(np.float64) * 2.0**-self.frac_bits
        return DecodedSum(tensors=self._split(values), weight_total=int(signed[-1]),
                          max_weight=self.max_weight)

    def decode_plain_sum(self, updates: Sequence[PlainUpdate]) -> DecodedSum:
        """Sum plain updates into a :class:`DecodedSum` (the float counterpart
        of :func:`sum_vectors` followed by :meth:`decode_sum`).

        Raises:
            EncodingError: when ``updates`` is empty or a length differs.
        """
        if not updates:
            raise EncodingError("cannot sum an empty list of updates")
        total = np.zeros(self.num_values)
        weight = 0
        for update in updates:
            if update.values.shape != (self.num_values,):
                raise EncodingError(
                    f"update has {update.values.shape[0]} values, expected {self.num_values}"
                )
            total += update.values
            weight += update.weight
        return DecodedSum(tensors=self._split(total), weight_total=weight,
                          max_weight=self.max_weight)


# -- with distributed noise (SPEC.md section 16) ----------------------------------------


def noise_frac_bits(*, bits: int, clip: float, num_clients: int) -> int:
    """The largest ``frac_bits`` whose data sum leaves distributed noise its half
    of the ring: the sum of ``num_clients`` values in ``[-clip, clip]`` stays
    within ``+-(2^(bits-2) - 1)``, i.e. :func:`max_frac_bits` for ``bits - 1``.
    (A noise plan's own check, SPEC.md [NZ-1a], keeps its +-8 sigma within
    ``+-2^(bits-2)``; together the noisy sum stays in the signed range.)

    Raises:
        ConfigurationError: as :func:`max_frac_bits`, or ``bits < 2``.
    """
    bits = _check_int("bits", bits, 2, 64)
    return max_frac_bits(bits=bits - 1, clip=clip, num_clients=num_clients)


def noise_plan_for(codec: FixedPointCodec, target_variance: float, *,
                   calibration: str = "removable", tolerance: float = 1e-3) -> NoisePlan:
    """A :class:`~securefl.protocol.noise.NoisePlan` for vectors of ``codec``:
    noise on the ``codec.num_values`` value coordinates only (its
    ``noisy_length``; the weight slot, the last coordinate, stays exact), after
    checking that the codec's data sum leaves the noise half the ring
    (:func:`noise_frac_bits`).  Pass the plan to
    :class:`~securefl.protocol.config.SecAggConfig` with ``bits=codec.bits``
    and ``vector_length=codec.vector_length``; the configuration checks the
    noise's half ([NZ-1a]).

    A plan built by hand (``NoisePlan(V)``) knows nothing of the codec: it
    noises every coordinate, the weight included, and nothing checks that
    the data and the noise fit the ring together.

    Raises:
        EncodingError: the codec's data sum can exceed ``2^(bits-2) - 1`` in
            magnitude; the message names the largest ``frac_bits`` that fits.
        ConfigurationError: as :class:`~securefl.protocol.noise.NoisePlan`.
    """
    from securefl.protocol.noise import NoisePlan as Plan  # (kept out of import time)

    limit = 2 ** (codec.bits - 2) - 1
    value_bound = codec.num_clients * math.ceil(codec.clip * 2.0**codec.frac_bits)
    if value_bound > limit:
        fits = noise_frac_bits(bits=codec.bits, clip=codec.clip, num_clients=codec.num_clients)
        raise EncodingError(
            f"with distributed noise the data sum must leave the noise half the ring: the"
            f" sum of n={codec.num_clients} values clipped to +/-{codec.clip} at"
            f" frac_bits={codec.frac_bits} can reach {value_bound} > 2^{codec.bits - 2} - 1"
            f" = {limit}; use frac_bits <= {fits} (noise_frac_bits) or bits >="
            f" {codec.bits + 1}")
    return Plan(target_variance, calibration, tolerance,  # type: ignore[arg-type]
                noisy_length=codec.num_values)
