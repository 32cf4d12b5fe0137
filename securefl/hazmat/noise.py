"""Discrete noise for distributed differential privacy: Poisson and Skellam
samplers driven by an AES-256-CTR keystream.

Parametrisation (used everywhere in securefl): ``Sk(mu)`` is the law of
``X - Y`` with ``X, Y`` independent ``Poisson(mu / 2)``, so it is symmetric,
integer valued, has mean 0 and **variance mu**.  It is closed under sums of
independent draws, ``Sk(a) + Sk(b) = Sk(a + b)``, which is why a secure sum
of clients' Skellam shares carries exactly Skellam noise whatever the
dropouts.  The samplers take the variance ``mu``.

Randomness: every draw is a function of a 32-byte AES key.  The key is either
fresh from the OS CSPRNG (:func:`skellam_fresh`, the non-removable noise) or
derived with HKDF from a secret seed and a domain-separation label
(:func:`noise_key`, the removable noise that anyone holding the seed can
regenerate).  The keystream is the mask PRG's (:mod:`securefl.hazmat.prg`)
read as little-endian 64-bit words: a Skellam vector of length ``m`` uses
words ``0..m-1`` for ``X`` and words ``m..2m-1`` for ``Y`` (normative, see
SPEC.md section 16, [NZ-4]).

Method and exactness: Poisson(lam) is sampled by inverse CDF over an integer
table.  The support is cut where a tail holds less than 2^-100 (12 standard
deviations plus 40 on each side); the pmf ratios ``lam^(k-mode) mode!/k!``
are computed from the mode outwards in integer fixed point (192 fraction
bits, floored at each step), each mass is rounded down to a multiple of
2^-64 and the remainder is put on the mode, so the weights sum to exactly
2^64.  Only integer arithmetic and correctly rounded float operations
(``+ - * sqrt``) are used, so every platform builds the same table bit for
bit (the server regenerates clients' noise exactly).  A uniform 64-bit word
``U`` then selects ``k`` with ``C[k-1] <= U < C[k]`` (exact integer
comparisons), so the sampled law is *exactly* the table's.  Its
total-variation distance to the true Poisson(lam) is at most
:func:`statistical_distance_bound`: 2^-64 per table entry, plus the
fixed-point floors, plus the cut tails; below 2^-43 for every mean up to
2^31 and below 10^-15 for means up to 10^6 (tested).  For a Skellam sample
the bound doubles (two Poisson draws).  Means above ``2^31`` are drawn as a
sum of ``p`` independent Poisson draws of mean ``lam / p``, ``p`` the least
power of two with ``lam / p <= 2^31`` (division by a power of two is exact,
so the parts sum to exactly ``lam``; Poisson is closed under sums), so no
table exceeds about 750 000 entries.  The cost is ``2 p`` keystream words and
table look-ups per coordinate, so ``p`` is capped at :data:`MAX_PARTS`: the
largest variance a sampler accepts is :data:`MAX_SAMPLE_VARIANCE` (``2^36``);
the smallest non-zero one is :data:`MIN_SAMPLE_VARIANCE` (``2^-64``, the
resolution of the table weights; also keeps ``mu / 2`` exact, i.e. no
subnormal).  Both limits raise :class:`ConfigurationError` before any key or
keystream is touched, and :class:`~securefl.protocol.noise.NoisePlan` refuses
a plan with a component outside them up front.

Nothing here knows about rounds or clients.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import numpy as np

from securefl.errors import ConfigurationError
from securefl.hazmat.kdf import derive_key
from securefl.hazmat.prg import MaskExpander
from securefl.hazmat.randomness import RandomSource, default_random

MAX_TABLE_MEAN = float(2**31)
"""Poisson means above this are drawn as sums of several table draws."""
MAX_PARTS = 16
"""The most table draws per Poisson coordinate (a power of two): a larger
mean would cost ``2 MAX_PARTS`` keystream words (128 bytes) and look-ups per
Skellam coordinate and more, and is refused."""
MAX_SAMPLE_VARIANCE = 2 * MAX_PARTS * MAX_TABLE_MEAN
"""``2^36``: the largest Skellam variance the samplers accept (Poisson mean
``MAX_PARTS * 2^31``)."""
MIN_SAMPLE_VARIANCE = 2.0**-64
"""The smallest non-zero Skellam variance the samplers accept: table weights
are multiples of ``2^-64``, and halving is exact from here on (no
subnormals)."""
TAIL_BITS = 100
"""Each cut tail of a Poisson table holds less than 2^-TAIL_BITS."""
FIXED_BITS = 192
"""Fraction bits of the fixed-point pmf ratios a table is built from."""
NOISE_LABEL_PREFIX = b"noise/"
"""Every noise key derived from a seed has an HKDF label starting with this."""


@dataclass(frozen=True)
class PoissonTable:
    """The inverse-CDF table of one Poisson mean.

    Attributes:
        mean: lambda.
        offset: the smallest value in the support.
        thresholds: ``C[k]`` for all but the last entry: uint64 cumulative
            weights (the last, 2^64, is implicit); value ``offset + k`` is
            drawn when ``C[k-1] <= U < C[k]``.
        distance_bound: upper bound on the total-variation distance between
            the law this table samples and the exact Poisson(mean).
        guide: a speed-up only (the result is the same as a binary search):
            with ``g[b]`` the number of thresholds below ``b << shift``, a
            word whose top bits are ``b`` has index ``g[b]`` when
            ``g[b] == g[b + 1]``; ``guide[b]`` is that index, or -1 when the
            bucket holds a threshold (then the thresholds are searched).
        shift: ``64 - log2(len(guide))``.
    """

    mean: float
    offset: int
    thresholds: np.ndarray
    distance_bound: float
    guide: np.ndarray
    shift: int

    def indices(self, words: np.ndarray) -> np.ndarray:
        """``k`` (int32) with ``C[k-1] <= word < C[k]`` for uniform uint64
        ``words``: the sampled value is ``offset + k``."""
        idx = self.guide[words >> np.uint64(self.shift)]
        ambiguous = np.flatnonzero(idx < 0)
        if len(ambiguous):
            idx[ambiguous] = np.searchsorted(self.thresholds, words[ambiguous], side="right")
        return idx

    def lookup(self, words: np.ndarray) -> np.ndarray:
        """The sampled values (int64) for uniform uint64 ``words``: value
        ``offset + k`` where ``C[k-1] <= word < C[k]``."""
        out = self.indices(words).astype(np.int64)
        out += self.offset
        return out

    @property
    def size(self) -> int:
        """Number of support points."""
        return len(self.thresholds) + 1

    def pmf(self) -> np.ndarray:
        """The exact probabilities this table samples (float64 view of the
        integer weights divided by 2^64), for tests and documentation."""
        c = [0, *(int(x) for x in self.thresholds), 1 << 64]
        return np.array([(b - a) / 2.0**64 for a, b in itertools.pairwise(c)])


@functools.lru_cache(maxsize=16)
def poisson_table(mean: float) -> PoissonTable:
    """The (cached) inverse-CDF table of Poisson(``mean``), ``0 < mean <= 2^31``.

    Raises:
        ConfigurationError: ``mean`` not finite or outside ``(0, 2^31]``.
    """
    lam = float(mean)
    if not (math.isfinite(lam) and 0 < lam <= MAX_TABLE_MEAN):
        raise ConfigurationError(f"a Poisson table needs a mean in (0, 2^31], got {mean!r}")
    sd = math.sqrt(lam)  # +, -, *, sqrt are correctly rounded: the same everywhere
    mode = math.floor(lam)
    lo = max(0, math.floor(lam - 12 * sd - 40))
    hi = math.ceil(lam + 12 * sd + 40)
    # r_k = lam^(k - mode) mode! / k! in fixed point with FIXED_BITS fraction bits, by
    # integer recurrences from the mode (r_{k+1} = r_k lam / (k+1), r_{k-1} = r_k k / lam),
    # floored at every step: integer arithmetic only, so every platform builds the
    # same table bit for bit
    num, den = lam.as_integer_ratio()
    one = 1 << FIXED_BITS
    up, r = [], one
    for k in range(mode + 1, hi + 1):
        r = r * num // (den * k)
        up.append(r)
    down, r = [], one
    for k in range(mode, lo, -1):
        r = r * den * k // num
        down.append(r)
    ratios = [*down[::-1], one, *up]
    total = sum(ratios)
    # each mass rounded down to a multiple of 2^-64, the remainder on the mode;
    # Chernoff: both cut tails hold < e^-72 < 2^-100 (TAIL_BITS); cut further where
    # the weight is 0
    scaled = [(x << 64) // total for x in ratios]
    first = next(i for i, w in enumerate(scaled) if w)
    last = max(i for i, w in enumerate(scaled) if w)
    weights = scaled[first:last + 1]
    weights[mode - lo - first] += (1 << 64) - sum(weights)
    cumulative = list(itertools.accumulate(weights[:-1]))
    n = len(weights)
    # TV distance: rounding (< 2^-64 per entry, moved onto the mode), the fixed-point
    # floors (relative < 2^-(FIXED_BITS - 1) per step, len(ratios) steps), the cut tails
    bound = n * 2.0**-64 + len(ratios) * 2.0**(1 - FIXED_BITS) + 2.0**(1 - TAIL_BITS)
    thresholds = np.array(cumulative, dtype=np.uint64)
    guide_bits = min(20, max(8, (n - 1).bit_length() + 5))
    shift = 64 - guide_bits
    starts = np.arange((1 << guide_bits) + 1, dtype=np.uint64) << np.uint64(shift)
    below = np.searchsorted(thresholds, starts, side="left").astype(np.int32)
    below[-1] = len(thresholds)  # the last start wrapped to 0; no threshold reaches 2^64
    guide = np.where(below[:-1] == below[1:], below[:-1], np.int32(-1)).astype(np.int32)
    return PoissonTable(lam, lo + first, thresholds, bound, guide, shift)


def statistical_distance_bound(variance: float) -> float:
    """Upper bound on the total-variation distance between one coordinate of
    :func:`skellam` with this ``variance`` and the exact ``Sk(variance)``
    (0 for variance 0): ``2 p`` table bounds for ``2 p`` table draws (a
    coupling of each draw with an exact Poisson of its part mean; the part
    means sum to exactly ``variance / 2``, :func:`_split_mean`, so there is no
    mean-shift term).

    Raises:
        ConfigurationError: ``variance`` outside ``{0} u [MIN_SAMPLE_VARIANCE,
            MAX_SAMPLE_VARIANCE]``.
    """
    v = _check(variance, 0, "Skellam variance")
    if v == 0:
        return 0.0
    lam, parts = _split_mean(v / 2)
    return 2 * parts * poisson_table(lam).distance_bound


def _split_mean(mean: float) -> tuple[float, int]:
    """``(mean / p, p)``, ``p`` the least power of two with ``mean / p <= 2^31``:
    exact (``p * (mean / p) == mean`` for every accepted ``mean``, which is a
    normal double, so the sampled variance is exactly the one asked for)."""
    parts = 1
    while mean / parts > MAX_TABLE_MEAN:
        parts *= 2
    return mean / parts, parts


def uniform_words(key: bytes, count: int) -> np.ndarray:
    """``count`` little-endian uint64 words of the AES-256-CTR keystream of
    ``key`` (zero IV): the mask PRG with ``bits = 64``."""
    if count == 0:
        return np.zeros(0, dtype=np.uint64)
    return MaskExpander(count, 64).expand(key)


def _poisson_from_words(lam: float, words: np.ndarray) -> np.ndarray:
    return poisson_table(lam).lookup(words)


def _check(value: float, size: int, what: str) -> float:
    """``value`` as a float after checking it is 0 or a Skellam variance (or,
    for a Poisson mean, half of one) the samplers honour exactly."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ConfigurationError(f"size must be a non-negative int, got {size!r}")
    try:
        v = float(value)
    except (OverflowError, TypeError, ValueError):
        raise ConfigurationError(f"the {what} must be a finite number, got {value!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise ConfigurationError(f"the {what} must be finite and >= 0, got {value!r}")
    scale = 0.5 if what == "Poisson mean" else 1.0
    if v != 0 and not MIN_SAMPLE_VARIANCE * scale <= v <= MAX_SAMPLE_VARIANCE * scale:
        raise ConfigurationError(
            f"the {what} {v!r} is outside the samplers' range: 0 or"
            f" [{MIN_SAMPLE_VARIANCE * scale!r}, {MAX_SAMPLE_VARIANCE * scale!r}] (at most"
            f" {MAX_PARTS} Poisson table draws per coordinate; weights are multiples of"
            " 2^-64)")
    return v


def poisson(mean: float, size: int, key: bytes) -> np.ndarray:
    """``size`` independent Poisson(``mean``) draws (int64), a deterministic
    function of the 32-byte AES key ``key`` (keystream words ``0..size*p-1``,
    ``p`` the number of table parts, :func:`_split_mean`: 1 for means up to
    2^31).

    Raises:
        ConfigurationError: negative or non-finite mean, a non-zero mean
            outside ``[MIN_SAMPLE_VARIANCE / 2, MAX_SAMPLE_VARIANCE / 2]``,
            bad size or key.
    """
    lam = _check(mean, size, "Poisson mean")
    if lam == 0 or size == 0:
        return np.zeros(size, dtype=np.int64)
    part, parts = _split_mean(lam)
    words = uniform_words(key, size * parts)
    out = _poisson_from_words(part, words[:size])
    for i in range(1, parts):
        out += _poisson_from_words(part, words[i * size:(i + 1) * size])
    return out


def skellam(variance: float, size: int, key: bytes) -> np.ndarray:
    """``size`` independent ``Sk(variance)`` draws (int64; ``Poisson(variance/2)``
    minus an independent ``Poisson(variance/2)``), a deterministic function of
    the 32-byte AES key ``key``: the first Poisson vector uses the keystream's
    first ``size*p`` words, the second the next ``size*p``.

    Raises:
        ConfigurationError: negative or non-finite variance, a non-zero
            variance outside ``[MIN_SAMPLE_VARIANCE, MAX_SAMPLE_VARIANCE]``,
            bad size or key.
    """
    v = _check(variance, size, "Skellam variance")
    if v == 0 or size == 0:
        return np.zeros(size, dtype=np.int64)
    part, parts = _split_mean(v / 2)
    words = uniform_words(key, 2 * size * parts)
    half = size * parts
    table = poisson_table(part)
    if parts == 1:
        # X - Y: the tables' common offset cancels; int32 indices differ by < 2^31
        idx = table.indices(words)
        return (idx[:size] - idx[size:]).astype(np.int64)
    out = np.zeros(size, dtype=np.int64)
    for i in range(parts):
        out += table.indices(words[i * size:(i + 1) * size])
        out -= table.indices(words[half + i * size:half + (i + 1) * size])
    return out


def skellam_fresh(variance: float, size: int, rng: RandomSource | None = None) -> np.ndarray:
    """``size`` independent ``Sk(variance)`` draws keyed by 32 fresh bytes of
    ``rng`` (default: the OS CSPRNG); the key is discarded, so nobody can
    regenerate or remove this noise."""
    v = _check(variance, size, "Skellam variance")
    if v == 0 or size == 0:
        return np.zeros(size, dtype=np.int64)
    return skellam(v, size, default_random(rng).token_bytes(32))


def noise_key(seed: bytes, label: bytes, *, version: int, session_id: bytes,
              client_ids: tuple[int, ...]) -> bytes:
    """The 32-byte AES key of one removable noise vector: HKDF-SHA256 of the
    32-byte secret ``seed`` with the label ``"noise/" + label`` and the
    context of :func:`securefl.hazmat.kdf.derive_key`, so keys for different
    labels, sessions or clients are independent.

    Raises:
        ConfigurationError: the seed is not 32 bytes.
    """
    if len(seed) != 32:
        raise ConfigurationError("a noise seed is 32 bytes")
    return derive_key(seed, NOISE_LABEL_PREFIX + label, version=version, session_id=session_id,
                      client_ids=client_ids)


def skellam_from_seed(seed: bytes, label: bytes, variance: float, size: int, *, version: int,
                      session_id: bytes, client_ids: tuple[int, ...]) -> np.ndarray:
    """``skellam(variance, size, noise_key(seed, label, ...))``: removable noise
    that whoever learns ``seed`` regenerates exactly."""
    return skellam(variance, size, noise_key(seed, label, version=version,
                                             session_id=session_id, client_ids=client_ids))
