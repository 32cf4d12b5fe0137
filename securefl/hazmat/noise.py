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
SPEC.md section 16, [NZ-4]).  The samplers produce these words a chunk at a
time, each Poisson stream from its own AES-CTR encryptor seeked to the
stream's first word, and look them up through a guide table: both are
speed-ups only, bit for bit the same as looking up :func:`uniform_words` by
binary search (tested).

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
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

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
_CHUNK_WORDS = 1 << 13
"""Keystream words per stream per step of the samplers' loop (a speed-up only:
64 KiB per stream, so one step's words, bucket numbers and indices stay in
cache and no vector-sized temporary is allocated)."""


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
            int16 when the table has at most 2^15 - 1 entries, else int32.
        shift: ``64 - log2(len(guide))``.
    """

    mean: float
    offset: int
    thresholds: np.ndarray
    distance_bound: float
    guide: np.ndarray
    shift: int

    def indices(self, words: np.ndarray, out: np.ndarray | None = None,
                scratch: np.ndarray | None = None) -> np.ndarray:
        """``k`` (of the guide's dtype, int16 or int32) with ``C[k-1] <= word
        < C[k]`` for uniform uint64 ``words``: the sampled value is ``offset +
        k``.  The result is the same as ``np.searchsorted(thresholds, words,
        side="right")``; ``words`` is not modified.

        ``out`` (the guide's dtype) and ``scratch`` (uint64), 1-D and of the
        length of the 1-D ``words``, are optional reused buffers (a speed-up
        only); the result is ``out`` when given."""
        if scratch is None:
            scratch = np.empty(words.shape, dtype=np.uint64)
        if out is None:
            out = np.empty(words.shape, dtype=self.guide.dtype)
        # bucket numbers are < len(guide) <= 2^20, so the int64 view is exact and every
        # index is in range ("clip" only spares np.take its defensive copy of ``out``)
        buckets = np.right_shift(words, np.uint64(self.shift), out=scratch).view(np.int64)
        np.take(self.guide, buckets, out=out, mode="clip")
        ambiguous = np.flatnonzero(out < 0)
        if len(ambiguous):
            out[ambiguous] = np.searchsorted(self.thresholds, words[ambiguous], side="right")
        return out

    def lookup(self, words: np.ndarray) -> np.ndarray:
        """The sampled values (int64) for uniform uint64 ``words``: value
        ``offset + k`` where ``C[k-1] <= word < C[k]``."""
        return np.add(self.indices(words), self.offset, dtype=np.int64)

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
    # the guide (a speed-up only): about 64 buckets per entry, so about 1% of the words
    # land in a bucket that holds a threshold; int16 entries when every index fits,
    # so the guide stays in cache
    guide_bits = min(20, max(12, (n - 1).bit_length() + 6))
    shift = 64 - guide_bits
    starts = np.arange((1 << guide_bits) + 1, dtype=np.uint64) << np.uint64(shift)
    below = np.searchsorted(thresholds, starts, side="left").astype(np.int32)
    below[-1] = len(thresholds)  # the last start wrapped to 0; no threshold reaches 2^64
    index_type = np.int16 if n <= np.iinfo(np.int16).max else np.int32
    guide = np.where(below[:-1] == below[1:], below[:-1], np.int32(-1)).astype(index_type)
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


def _stream(key: bytes, start: int) -> CipherContext:
    """The AES-256-CTR encryptor of ``key`` (zero IV) positioned at keystream
    word ``start`` (byte ``8 start``): the same bytes as :func:`uniform_words`
    from there on (CTR is seekable; the counter block is the 128-bit
    big-endian block number, as in :mod:`securefl.hazmat.prg`).

    Raises:
        ConfigurationError: ``key`` is not 32 bytes.
    """
    if len(key) != 32:
        raise ConfigurationError("the mask PRG takes a 32-byte key")
    block, skip = divmod(8 * start, 16)
    enc = Cipher(algorithms.AES(key), modes.CTR(block.to_bytes(16, "big"))).encryptor()
    if skip:
        enc.update(bytes(skip))
    return enc


def _index_sums(table: PoissonTable, key: bytes, size: int, plus: int,
                minus: int) -> np.ndarray:
    """``sum_{s < plus} I_s - sum_{plus <= s < plus + minus} I_s`` (int64, length
    ``size``), where ``I_s`` are the table indices (:meth:`PoissonTable.indices`)
    of keystream words ``s*size .. (s+1)*size - 1`` of ``key``.

    Bit for bit the same as looking up ``uniform_words(key, (plus + minus) *
    size)`` slice by slice; the keystream is produced and consumed
    :data:`_CHUNK_WORDS` words per stream at a time into reused buffers."""
    streams = plus + minus
    encryptors = [_stream(key, s * size) for s in range(streams)]
    chunk = min(_CHUNK_WORDS, size)
    # a step of c words per stream puts stream s at words s*c .. (s+1)*c - 1 of one
    # contiguous buffer; update_into wants 15 bytes of slack after its output, which
    # the next stream (or the 15 spare bytes at the end) overwrites
    raw = bytearray(8 * streams * chunk + 15)
    words = np.frombuffer(raw, dtype=np.uint64, count=streams * chunk)
    scratch = np.empty(streams * chunk, dtype=np.uint64)
    idx = np.empty(streams * chunk, dtype=table.guide.dtype)
    buffer = memoryview(raw)
    zeros = memoryview(bytes(8 * chunk))
    out = np.empty(size, dtype=np.int64)
    for a in range(0, size, chunk):
        c = min(chunk, size - a)
        for s, enc in enumerate(encryptors):
            enc.update_into(zeros[:8 * c], buffer[8 * s * c:8 * (s + 1) * c + 15])
        i = table.indices(words[:streams * c], out=idx[:streams * c],
                          scratch=scratch[:streams * c]).reshape(streams, c)
        target = out[a:a + c]
        if streams == 1:
            np.copyto(target, i[0])
        elif plus == 1 and minus == 1:
            # X - Y, computed in int64
            np.subtract(i[0], i[1], out=target, dtype=np.int64)
        else:
            np.sum(i[:plus], axis=0, dtype=np.int64, out=target)
            if minus:
                target -= np.sum(i[plus:], axis=0, dtype=np.int64)
    return out


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
    table = poisson_table(part)
    out = _index_sums(table, key, size, parts, 0)
    out += parts * table.offset
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
    # X's p parts are keystream words 0..size*p-1, Y's the next size*p: streams
    # 0..p-1 and p..2p-1 of length size; the tables' common offset cancels
    return _index_sums(poisson_table(part), key, size, parts, parts)


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
