"""Distributed Skellam noise in the secure sum: the public :class:`NoisePlan`,
its per-client component layout, and the public selection rule that decides
which removable components the server takes out of the released sum.

Parametrisation: ``Sk(mu)`` has variance ``mu`` (:mod:`securefl.hazmat.noise`);
every variance here is per coordinate, in ring units (the integers of
Z_{2^bits} after encoding).

The layout (SPEC.md section 16).  With target variance ``V``, ``n`` configured
clients and ``f`` guaranteed survivors (``SecAggConfig.floor``: the protocol
never releases a sum of fewer), every client adds

* a *base* component of variance ``B = V / n`` keyed by the OS CSPRNG (never
  removable, never shared), and
* ``J`` *excess* components of variances ``w_j = w_0 / (f + 1)^j``,
  ``w_0 = V (n - f) / (n f)``, each keyed by its own fresh 32-byte seed that
  is committed in R0 and Shamir-shared t-of-n in R1 like the self-mask seed.

Selection rule: after the survivor list ``U`` (``u = |U| >= f``) is fixed, the
kept excess must cover the base deficit ``D = V (n - u) / n``.  In units of
``w_{J-1}`` that is ``q = f (f+1)^(J-1) (n - u) / (n - f)``; the rule keeps
``K = ceil(q)`` units, written in mixed radix ``K = sum_j c_j (f+1)^(J-1-j)``
with every digit ``0 <= c_j <= f <= u``, and keeps component ``j`` of ``c_j``
survivors, filling the sorted survivor list round-robin; every other
(survivor, component) pair is removed.  The released variance is
``u B + sum_j c_j w_j``, which is ``>= V`` and ``< V (1 + (n - f) / (n f
(f+1)^(J-1)))``; ``J`` is the least that makes the excess bound at most
``tolerance``.  Everything is computed in exact rationals from the public
plan and ``U``; component variances are floats rounded *up* from the exact
values, so the released variance (the exact sum of the floats used) is never
below ``V``.

Conditions (SPEC.md [NZ-1b], [NZ-1c], [NZ-8]): removable excess runs in active
mode only (``SecAggConfig`` refuses it in semi-honest mode, where split
survivor lists strip it); every component variance is 0 or in the samplers'
range ``[2^-64, 2^36]``; and the bounds hold only under [SEC-1]'s conditions
for the corrupt clients assumed.
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from securefl.errors import ConfigurationError
from securefl.hazmat.noise import MAX_PARTS, MAX_SAMPLE_VARIANCE, MIN_SAMPLE_VARIANCE

MAX_EXCESS_COMPONENTS = 16
"""The most excess components a plan may need (tolerance vs. floor)."""
TAIL_SIGMAS = 8
"""Bits check: the released noise must fit in +-TAIL_SIGMAS standard
deviations within half the ring (the other half is left to the data)."""


class NoiseCalibration(str, enum.Enum):
    """How a :class:`NoisePlan` meets its target under dropouts."""

    REMOVABLE = "removable"
    """Base ``V/n`` plus removable excess: the released variance is in
    ``[V, V (1 + excess_bound)]`` for every accepted dropout pattern.  Active
    mode only (with ``V > 0`` and at least one excess component)."""
    THRESHOLD = "threshold"
    """Base ``V/f`` and no excess (``J = 0``): the released variance is
    ``u V / f``, between ``V`` and ``V n / f``."""


@dataclass(frozen=True)
class NoisePlan:
    """Public parameters of the distributed Skellam noise of one session
    (part of :class:`~securefl.protocol.config.SecAggConfig`, bound into its
    digest and so into the session id).

    Args:
        target_variance: ``V``, the least variance per coordinate (ring
            units) of the noise in every released sum (0 runs the whole
            machinery with no noise: for tests of its exactness).
        calibration: :class:`NoiseCalibration` (default removable excess).
        tolerance: removable plans only: the largest allowed relative excess
            of the released variance over ``V`` (default ``1e-3``); fixes the
            number of excess components.
        noisy_length: how many leading coordinates of every input get noise
            (``None``, the default: all of them).  A vector encoded by
            :class:`~securefl.encoding.FixedPointCodec` carries its weight in
            the last coordinate, which must stay exact: build the plan with
            :func:`securefl.encoding.noise_plan_for`, which sets this to the
            number of value coordinates and checks the codec leaves the noise
            half the ring.

    Raises:
        ConfigurationError: ``V`` not finite and >= 0, tolerance outside
            ``(0, 1)``, unknown calibration, ``noisy_length`` not an int >= 0.
    """

    target_variance: float
    calibration: NoiseCalibration = NoiseCalibration.REMOVABLE
    tolerance: float = 1e-3
    noisy_length: int | None = None

    def __post_init__(self) -> None:
        v = self.target_variance
        if isinstance(v, bool) or not isinstance(v, int | float) or not (
                math.isfinite(v) and v >= 0):
            raise ConfigurationError(f"target_variance must be a finite number >= 0, got {v!r}")
        object.__setattr__(self, "target_variance", float(v))
        try:
            object.__setattr__(self, "calibration", NoiseCalibration(self.calibration))
        except ValueError:
            raise ConfigurationError(
                f"calibration must be one of {[c.value for c in NoiseCalibration]},"
                f" got {self.calibration!r}") from None
        tol = self.tolerance
        if isinstance(tol, bool) or not isinstance(tol, int | float) or not 0 < tol < 1:
            raise ConfigurationError(f"tolerance must be in (0, 1), got {tol!r}")
        object.__setattr__(self, "tolerance", float(tol))
        length = self.noisy_length
        if length is not None and (isinstance(length, bool) or not isinstance(length, int)
                                   or not 0 <= length < 2**32):
            raise ConfigurationError(
                f"noisy_length must be None or an int in 0..2^32-1, got {length!r}")

    @property
    def has_removable_excess(self) -> bool:
        """Whether a cohort may get removable excess: a ``removable`` plan
        with ``V > 0`` (``J = 0`` still when ``floor = n``)."""
        return self.calibration is NoiseCalibration.REMOVABLE and self.target_variance > 0

    @classmethod
    def calibrate_to_threshold(cls, target_variance: float) -> NoisePlan:
        """The plan without excess: every client adds ``V / f``."""
        return cls(target_variance, NoiseCalibration.THRESHOLD)

    def encode(self) -> bytes:
        """Canonical bytes (for the configuration digest); ``u32(noisy_length)``
        is appended only when it is set, so plans without it encode as before."""
        kind = self.calibration.value.encode()
        tail = b"" if self.noisy_length is None else struct.pack(">I", self.noisy_length)
        return (b"noise-plan/skellam" + struct.pack(">B", len(kind)) + kind
                + struct.pack(">dd", self.target_variance, self.tolerance) + tail)

    def layout(self, num_clients: int, floor: int, bits: int | None = None) -> NoiseLayout:
        """The component variances for ``num_clients`` clients of which at
        least ``floor`` survive; with ``bits``, also check the ring is wide
        enough.

        Raises:
            ConfigurationError: ``floor`` outside ``1..num_clients``; the
                tolerance needs more than ``MAX_EXCESS_COMPONENTS``
                components; a non-zero component variance outside the
                samplers' range ``[MIN_SAMPLE_VARIANCE, MAX_SAMPLE_VARIANCE]``
                (the message names the least / largest ``V`` allowed); ``bits``
                too few for the released noise (the message names the numbers
                and the fix).
        """
        n, f = num_clients, floor
        if not 1 <= f <= n:
            raise ConfigurationError(f"floor must be in 1..{n}, got {f}")
        self._check_sampleable(n, f)
        try:
            layout = self._layout(n, f)
            if bits is not None:
                layout.check_bits(bits)
        except OverflowError:  # not reachable after _check_sampleable; typed all the same
            raise ConfigurationError(
                f"target_variance {self.target_variance!r} is too large") from None
        return layout

    def _check_sampleable(self, n: int, f: int) -> None:
        """Refuse a plan whose largest component needs more than ``MAX_PARTS``
        table draws per coordinate, or whose smallest non-zero one is below
        the sampler's resolution (exact rationals: nothing can overflow)."""
        v = Fraction(self.target_variance)
        if v == 0:
            return
        if self.calibration is NoiseCalibration.THRESHOLD:
            big = small = v / f
        elif f == n:
            big = small = v / n
        else:
            j = self._components(n, f)
            w0 = v * (n - f) / (n * f)
            big, small = max(v / n, w0), min(v / n, w0 / (f + 1) ** (j - 1))
        if big > MAX_SAMPLE_VARIANCE:
            largest = float(Fraction(MAX_SAMPLE_VARIANCE) * v / big)
            raise ConfigurationError(
                f"target_variance {self.target_variance:.6g} is too large to sample: with"
                f" n={n} clients and floor f={f} a client's largest noise component has"
                f" variance {float(big):.6g} > 2^36, which would need more than {MAX_PARTS}"
                f" Poisson table draws per coordinate (each 2 keystream words: memory and"
                f" time grow with it); the largest target_variance allowed here is"
                f" {largest:.6g}: use a coarser encoding scale (fewer frac_bits) or more"
                " clients")
        if small < MIN_SAMPLE_VARIANCE:
            least = float(Fraction(MIN_SAMPLE_VARIANCE) * v / small)
            raise ConfigurationError(
                f"target_variance {self.target_variance!r} is too small to sample: with"
                f" n={n} clients and floor f={f} a client's smallest noise component has"
                f" variance {float(small):.6g} < 2^-64, below the sampler's resolution"
                f" (its table weights are multiples of 2^-64); use target_variance 0 (no"
                f" noise) or at least {least:.6g}")

    def _components(self, n: int, f: int) -> int:
        """J for a removable plan with ``f < n``."""
        j = 1
        while Fraction(n - f, n * f * (f + 1) ** (j - 1)) > Fraction(self.tolerance):
            j += 1
            if j > MAX_EXCESS_COMPONENTS:
                raise ConfigurationError(
                    f"tolerance {self.tolerance:g} needs more than {MAX_EXCESS_COMPONENTS}"
                    f" excess components with n={n} clients and floor f={f} (the excess"
                    f" bound is (n-f)/(n f (f+1)^(J-1))); raise the tolerance or the"
                    " floor (threshold / min_survivors)")
        return j

    def _layout(self, n: int, f: int) -> NoiseLayout:
        v = Fraction(self.target_variance)
        if self.calibration is NoiseCalibration.THRESHOLD or f == n:
            base = v / f if self.calibration is NoiseCalibration.THRESHOLD else v / n
            layout = NoiseLayout(n, f, v, _up(base), (), Fraction(n, f) - 1
                                 if self.calibration is NoiseCalibration.THRESHOLD
                                 else Fraction(0))
        else:
            j = self._components(n, f)
            w0 = v * (n - f) / (n * f)
            excess = tuple(_up(w0 / (f + 1) ** i) for i in range(j))
            layout = NoiseLayout(n, f, v, _up(v / n), excess,
                                 Fraction(n - f, n * f * (f + 1) ** (j - 1)))
        return layout


def _up(x: Fraction) -> float:
    """The least float >= ``x``."""
    y = float(x)
    return y if Fraction(y) >= x else math.nextafter(y, math.inf)


@dataclass(frozen=True)
class NoiseLayout:
    """A plan's component variances for one cohort.

    Attributes:
        num_clients: n.
        floor: f, the fewest survivors of any released sum.
        target: V as an exact rational.
        base: ``B``, variance of every client's non-removable component.
        excess: ``(w_0, ..., w_{J-1})``, variances of the removable ones.
        excess_bound: the promised relative bound: every released variance
            is in ``[V, V (1 + excess_bound)]`` (up to the upward rounding
            of the floats, at most ``(n J + n) 2^-52 V``).
    """

    num_clients: int
    floor: int
    target: Fraction
    base: float
    excess: tuple[float, ...]
    excess_bound: Fraction

    @property
    def components(self) -> int:
        """J, the number of removable components per client."""
        return len(self.excess)

    def kept_counts(self, survivors: int) -> tuple[int, ...]:
        """``(c_0, ..., c_{J-1})``: how many survivors keep each excess
        component when ``survivors`` clients survive.

        Raises:
            ConfigurationError: ``survivors`` outside ``floor..num_clients``.
        """
        n, f, u, j = self.num_clients, self.floor, survivors, self.components
        if not f <= u <= n:
            raise ConfigurationError(f"{u} survivors: a released sum has {f}..{n}")
        if j == 0:
            return ()
        radix = f + 1
        units = -((-f * radix ** (j - 1) * (n - u)) // (n - f))  # ceil, exact
        digits = []
        for i in range(j):
            place = radix ** (j - 1 - i)
            digits.append(units // place)
            units %= place
        return tuple(digits)

    def removals(self, survivors: Sequence[int]) -> tuple[tuple[int, int], ...]:
        """The public selection rule: the ``(client, component)`` pairs whose
        excess the server removes when ``survivors`` (the final list, any
        order) survive, ascending.  Component ``j`` is kept by ``c_j``
        consecutive survivors of the sorted list, the runs of consecutive
        components following each other round-robin; all other survivors'
        component ``j`` is removed.  Dropped clients never appear."""
        order = sorted(survivors)
        u = len(order)
        kept: set[tuple[int, int]] = set()
        pos = 0
        for comp, count in enumerate(self.kept_counts(u)):
            for _ in range(count):
                kept.add((order[pos % u], comp))
                pos += 1
        return tuple((v, comp) for v in order for comp in range(self.components)
                     if (v, comp) not in kept)

    def released_variance_exact(self, survivors: int) -> Fraction:
        """The exact variance of the noise left in a sum of ``survivors``
        clients' inputs (all honest) after the rule's removals."""
        counts = self.kept_counts(survivors)
        return survivors * Fraction(self.base) + sum(
            (c * Fraction(w) for c, w in zip(counts, self.excess, strict=True)), Fraction(0))

    def released_variance(self, survivors: int) -> float:
        """:meth:`released_variance_exact` rounded to the nearest float."""
        return float(self.released_variance_exact(survivors))

    def max_released_variance(self) -> Fraction:
        """An upper bound on the released variance over every accepted
        survivor count: ``V (1 + excess_bound)``, widened by 2^-40 for the
        upward rounding of the component variances."""
        return self.target * (1 + self.excess_bound) * (1 + Fraction(1, 2**40))

    def check_bits(self, bits: int) -> None:
        """Refuse a ring too narrow for the released noise.

        Raises:
            ConfigurationError: ``2 * TAIL_SIGMAS * sigma_max > 2^(bits-1)``,
                naming the numbers and the fix.
        """
        vmax = float(self.max_released_variance())
        if vmax <= 0:
            return
        sigma = math.sqrt(vmax)
        span = 2 * TAIL_SIGMAS * sigma
        needed = math.ceil(math.log2(span)) + 1 if span > 1 else 2
        if bits < needed:
            raise ConfigurationError(
                f"bits={bits} is too few for the noise: with n={self.num_clients} clients"
                f" and floor f={self.floor}, the released noise has variance up to"
                f" {vmax:.6g} (sigma {sigma:.6g}); +-{TAIL_SIGMAS} sigma spans {span:.6g}"
                f" ring units, which must fit in half the ring, i.e. 2^(bits-1): use"
                f" bits >= {needed}, or a smaller target_variance (a coarser encoding"
                " scale)")
