"""User-level accounting and calibration of the distributed Skellam mechanism.

The mechanism of one round: every sampled client's update is clipped,
rotated and conditionally rounded by
:class:`~securefl.privacy.distributed_encoding.RotatedCodec` (L2 sensitivity
``Delta_2``, L1 sensitivity ``Delta_1`` in ring units, both deterministic),
and the released sum carries symmetric Skellam noise of per-coordinate
variance ``mu`` (at least the calibrated ``V`` for every dropout pattern the
protocol accepts).  Each client joins a round independently with
probability ``q`` (Poisson sampling); neighbouring federations differ by
one client's update (all of its data) **replaced by zero**, its participation
and its noise share unchanged (zero-out adjacency,
:data:`~securefl.privacy.ledger.USER_LEVEL_ADJACENCY`).  This is what the
bounds below cover: the Skellam bound is for a shift of the sum by at most
``Delta_2`` under the same noise, and the subsampling bounds for a Poisson sample
in which the differing client's contribution is present or zero.  Adding or
removing a client is not covered: it would also add or remove the client's
noise share, and the variance change is not a shift.

**Per round, unsampled** (Agarwal, Kairouz, Liu, "The Skellam Mechanism for
Differentially Private Federated Learning", NeurIPS 2021, Theorem 3.5 /
Corollary 3.6; the parametrisation of TFF's and Dordis's ``skellam_rdp``, in
which ``mu`` is the variance of the released noise, each Poisson of mean
``mu / 2``): for every integer order ``alpha > 1``,

    eps(alpha) <= alpha Delta_2^2 / (2 mu)
                  + min(((2 alpha - 1) Delta_2^2 + 6 Delta_1) / (4 mu^2),
                        3 Delta_1 / (2 mu))

(:func:`skellam_rdp`).  The bound holds for any difference vector with
those norms, in either direction, so it bounds the RDP of both orderings of
a neighbouring pair.  The first term is the Gaussian's RDP at variance ``mu``.

**Poisson sampling.**  Condition on the other clients' participation,
updates and rounding (the same on both sides) and on the differing client's
rounded vector (independent of the rest); joint convexity of
``exp((alpha-1) D_alpha)`` lets us take the worst conditional: the pair is
``M = (1-q) P + q Q`` against ``P``,
where ``P`` is the law of ``s + Z`` and ``Q`` that of ``s + v + Z``, ``Z``
the Skellam noise and ``v`` the client's rounded vector
(``||v||_2 <= Delta_2``, ``||v||_1 <= Delta_1``).  Two bounds
(``accountant``, recorded in every ledger row):

* ``"symmetric-binomial"`` (:data:`ACCOUNTANT`, the default).  The "add"
  direction expands exactly, for integer ``alpha``, by the binomial theorem
  (no inequality): ``E_P[((1-q) + q Q/P)^alpha] = sum_k C(alpha,k)
  (1-q)^(alpha-k) q^k exp((k-1) D_k(Q||P))``, and every ``D_k(Q||P)`` is at
  most the Skellam ``eps(k)``, all coefficients being positive:

      eps_q(alpha) <= 1/(alpha-1) log[(1-q)^(alpha-1) (alpha q - q + 1)
                      + sum_{k=2}^{alpha} C(alpha,k) q^k (1-q)^(alpha-k) e^((k-1) eps(k))]

  The "remove" direction ``D_alpha(P || M)`` is at most the "add"
  direction for every pair that a measure-preserving involution ``T``
  swaps (``P(T x) = Q(x)`` and ``Q(T x) = P(x)``): here ``T(x) = 2s + v - x``, because the
  Skellam noise is symmetric (``Z`` and ``-Z`` have the same law).  Proof:
  with ``L = Q/P``, ``a(L) = (1-q) + qL`` and ``phi(a) = a^alpha -
  a^(1-alpha)``: since ``P/M = 1/a(L)``, "add" minus "remove" (as
  ``E[.^alpha]`` moments) is ``E_P[a(L)^alpha] - E_P[a(L)^(1-alpha)] =
  E_P[phi(a(L))]``.  ``T`` maps ``L`` to ``1/L`` and ``P`` to ``Q = L P``,
  so this equals ``1/2 E_P[phi(a(L)) + L phi(a(1/L))] = 1/2 E_P[(a(L) - 1)
  (psi(a(L)) - psi(a(1/L)))]`` (as ``L (a(1/L) - 1) = -(a(L) - 1)``), with
  ``psi(a) = phi(a) / (a - 1)``, i.e. ``sinh((alpha - 1/2) t) / sinh(t/2)``
  at ``a = e^t``: even in ``t`` and increasing in ``|t|``.  As ``a(L)
  a(1/L) = 1 + q (1-q) (L-1)^2 / L >= 1``, whichever of ``a(L)``,
  ``a(1/L)`` exceeds 1 is the farther from 1 in log scale, so ``a(L) - 1``
  and ``psi(a(L)) - psi(a(1/L))`` have the same sign: every term is
  ``>= 0``.  Mironov, Talwar and Zhang ("Rényi Differential Privacy of
  the Sampled Gaussian Mechanism", 2019, section 3.3) prove the same
  dominance for the Gaussian; the argument above uses only the symmetry of
  the noise, so it holds for the Skellam noise (and for any symmetric
  noise with full support).  For the Gaussian ``eps(k) = k Delta_2^2 /
  (2 mu)`` and the bound is their exact integer-order RDP (dp-accounting's
  ``compute_rdp``), so ours is never below it and tends to it as ``mu``
  grows (the Skellam ``eps(k)`` tends to the Gaussian's).
* ``"zhu-wang-general"`` (:data:`LEGACY_ACCOUNTANT`; ledger rows written
  before the field existed).  Zhu and Wang's general upper bound ("Poisson
  Subsampled Rényi Differential Privacy", ICML 2019; Theorem 5 of the
  proceedings version as Google's distributed-DP code cites it), valid for any
  mechanism, both directions: the same sum with the terms ``k >= 3``
  multiplied by 3.

Both are minimised with the unsampled ``eps(alpha)`` (sampling never hurts:
joint quasi-convexity of the Rényi divergence)
(:func:`poisson_subsampled_rdp`).  Rounds compose by adding RDP; the curve
becomes ``(epsilon, delta)`` by the conversion of Balle et al. 2020
(Theorem 21; Canonne, Kamath, Steinke 2020), the one Opacus uses:
``eps = min_alpha rdp(alpha) + log((alpha-1)/alpha) - (log delta + log alpha)/(alpha-1)``
(:func:`rdp_to_epsilon`).

**Skipped rounds** (:func:`skip_mixture_rdp`).  A federation of ``n``
clients skips a round whose cohort has fewer than ``k`` clients (nothing
released).  Whether a round is released depends on whether the target was
sampled, so a released round alone is not the Poisson-sampled pair at
``q``: every round, released, skipped or aborted, is charged with one
non-adaptive bound.  Under zero-out adjacency the target's participation
is the same in both worlds and the sampling is data independent; condition
on the cohort ``S'`` among the other ``n - 1`` clients, ``B = |S'| ~
Bin(n - 1, q)`` (the same weights on both sides; joint convexity of
``exp((alpha-1) D_alpha)``): for ``B >= k`` the round is released whatever
the target does and the pair is the sampled pair above (moment ``A_q =
exp((alpha-1) eps_q)``, both directions); for ``B = k - 1`` it is released
only if the target joins, the pair ``((1-q) skip + q Q, (1-q) skip + q P)``
has moment at most ``(1-q) + q exp((alpha-1) eps(alpha))`` (convexity of
``x^alpha y^(1-alpha)``; ``eps`` holds for both orderings); for ``B < k -
1`` both worlds skip (moment 1).  Hence

    eps_round(alpha) = 1/(alpha-1) log[P(B >= k) A_q(alpha)
                       + P(B = k-1) (1 - q + q e^((alpha-1) eps(alpha))) + P(B < k-1)],

at most ``eps(alpha)``, the sampled bound for ``k = 0`` (never skipped;
history rows of 5 fields), close to it when ``P(B < k)`` is small.  Against
the server (``q = 1`` below), a skipped round costs nothing: the server
sees the cohort and receives nothing; history rows record ``released`` 0.

**Whom the amplification protects against.**  Amplification by sampling
holds against an adversary who does not learn which clients were sampled:
whoever sees only the released sums or the models.  The server of the
secure aggregation sees who took part; against it, the epsilon is the
unsampled one (``q = 1``) over the rounds the client took part in, and
it holds against the server alone, provided every survivor adds its noise
share: ``c`` survivors colluding with the server can subtract their shares
(with noise calibrated to the threshold ``t``, at exactly ``t`` survivors
the others' sum then carries only ``V (t - c) / t``).
:func:`user_level_epsilons` computes both; ``colluders`` gives the epsilon
at that reduced variance.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from securefl.errors import ConfigurationError
from securefl.privacy.distributed_encoding import DEFAULT_BETA, RotatedCodec
from securefl.privacy.ledger import (
    USER_LEVEL_ACCOUNTANT,
    USER_LEVEL_ACCOUNTANTS,
    USER_LEVEL_ADJACENCY,
    USER_LEVEL_DELTA_MAX,
    USER_LEVEL_LEGACY_ACCOUNTANT,
    UserLevelEntry,
)
from securefl.protocol.noise import TAIL_SIGMAS

__all__ = [
    "ACCOUNTANT",
    "ACCOUNTANTS",
    "LEGACY_ACCOUNTANT",
    "MECHANISM",
    "NOISE_TAIL_SIGMAS",
    "ORDERS",
    "ROUNDING_INFLATION_LIMIT",
    "PrivacyLevel",
    "SkellamRound",
    "UserLevelPlan",
    "calibrate_variance",
    "colluder_epsilon",
    "plan_user_level",
    "poisson_subsampled_rdp",
    "rdp_to_epsilon",
    "skellam_rdp",
    "skip_mixture_rdp",
    "user_level_entry",
    "user_level_epsilon",
    "user_level_epsilons",
]

class PrivacyLevel(str, enum.Enum):
    """Which differential privacy a federation gives (``securefl simulate
    --privacy``)."""

    RECORD_LEVEL = "record-level"
    """DP-SGD inside each client (Opacus): one training example is protected."""
    USER_LEVEL = "user-level"
    """Skellam noise inside the secure sum: a client's whole contribution is
    protected."""
    BOTH = "both"
    """Both layers; both epsilons are reported."""

    @property
    def user_level(self) -> bool:
        """Whether the user-level layer is on."""
        return self is not PrivacyLevel.RECORD_LEVEL


MECHANISM = "skellam"
"""The ``mechanism`` of a user-level ledger row."""

ACCOUNTANT = USER_LEVEL_ACCOUNTANT
"""``"symmetric-binomial"``: the subsampling bound for a shift under
symmetric noise (module docstring), the default of every function here."""
LEGACY_ACCOUNTANT = USER_LEVEL_LEGACY_ACCOUNTANT
"""``"zhu-wang-general"``: Zhu and Wang's general bound (any mechanism), the
bound of ledger rows written before rows named their accountant."""
ACCOUNTANTS = USER_LEVEL_ACCOUNTANTS
"""Every accepted ``accountant``."""

ORDERS = tuple(range(2, 129)) + tuple(range(136, 257, 8))
"""The integer Rényi orders at which the bounds are evaluated (both bounds
hold at integer orders only)."""

_MAX_ORDER = ORDERS[-1]

NOISE_TAIL_SIGMAS = float(TAIL_SIGMAS)
"""The protocol's own ring check for the noise plan
(:meth:`~securefl.protocol.noise.NoiseLayout.check_bits`, SPEC section 16):
the released noise's ``+-8`` standard deviations must fit in half the ring,
``2 * 8 * sqrt(V_max) <= 2^(bits-1)``; :func:`plan_user_level` keeps to it
so that a session configured with its variance is not refused for it."""

ROUNDING_INFLATION_LIMIT = 1.25
""":func:`plan_user_level` refuses a ring too small for a scale ``gamma``
whose rounding inflates the sensitivity ``Delta_2`` beyond this factor times
``gamma C`` (the noise, calibrated to ``Delta_2``, would then mostly hide
rounding, not data)."""


def _check_q(q: float) -> float:
    if isinstance(q, bool) or not isinstance(q, int | float) or not 0.0 < q <= 1.0:
        raise ConfigurationError(
            f"the client sampling rate q must be in (0, 1], got {q!r}; q is the probability"
            " that a client takes part in a round (expected cohort / number of clients)")
    return float(q)


def _check_delta(delta: float) -> float:
    if not 0.0 < delta < 1.0:
        raise ConfigurationError(f"delta must be in (0, 1), got {delta}")
    return float(delta)


def skellam_rdp(orders: Sequence[int] | np.ndarray, l1: float, l2: float,
                mu: float) -> np.ndarray:
    """The RDP bound of the Skellam mechanism of Agarwal, Kairouz, Liu 2021
    (see the module docstring) at integer ``orders``: noise of variance
    ``mu`` per coordinate, sensitivities ``l1``, ``l2`` (all in ring units).

    Raises:
        ConfigurationError: when ``mu <= 0``, a sensitivity is negative, or
            an order is not an integer > 1.
    """
    a = np.asarray(orders, dtype=np.float64)
    if a.size and (np.any(a <= 1) or np.any(a != np.round(a))):
        raise ConfigurationError("the Skellam RDP bound holds at integer orders > 1 only")
    if not mu > 0 or not math.isfinite(mu):
        raise ConfigurationError(f"the Skellam variance must be positive and finite, got {mu}")
    if l1 < 0 or l2 < 0:
        raise ConfigurationError(f"sensitivities must be >= 0, got l1={l1}, l2={l2}")
    gaussian = a * l2 ** 2 / (2.0 * mu)
    extra = np.minimum(((2.0 * a - 1.0) * l2 ** 2 + 6.0 * l1) / (4.0 * mu ** 2),
                       3.0 * l1 / (2.0 * mu))
    return gaussian + extra


def _log_comb(n: np.ndarray, k: np.ndarray) -> np.ndarray:
    lg = np.vectorize(math.lgamma, otypes=[np.float64])
    return lg(n + 1.0) - lg(k + 1.0) - lg(n - k + 1.0)


@functools.lru_cache(maxsize=1)
def _binomials() -> np.ndarray:
    """``log C(alpha, l)`` for alpha, l in 0.._MAX_ORDER (-inf for l > alpha)."""
    a = np.arange(_MAX_ORDER + 1, dtype=np.float64)[:, None]
    l_ = np.arange(_MAX_ORDER + 1, dtype=np.float64)[None, :]
    out = np.full((_MAX_ORDER + 1, _MAX_ORDER + 1), -np.inf)
    valid = l_ <= a
    aa, ll = np.broadcast_arrays(a, l_)
    out[valid] = _log_comb(aa[valid], ll[valid])
    return out


def _check_accountant(accountant: str) -> str:
    if accountant not in ACCOUNTANTS:
        raise ConfigurationError(f"unknown user-level accountant {accountant!r}; one of"
                                 f" {list(ACCOUNTANTS)}")
    return accountant


def poisson_subsampled_rdp(orders: Sequence[int], q: float, base: np.ndarray, *,
                           accountant: str = LEGACY_ACCOUNTANT) -> np.ndarray:
    """An upper bound on the RDP of a mechanism run on a Poisson sample
    (rate ``q``) of the data, at integer ``orders``, given ``base[l]`` = an
    upper bound on the mechanism's RDP at order ``l`` for every integer
    ``l`` in ``0..max(orders)`` (entries 0 and 1 unused), minimised with the
    unsampled RDP.

    ``accountant`` (module docstring): ``"zhu-wang-general"`` (the default
    here, as this function knows nothing of the mechanism) is Zhu and
    Wang's general upper bound, valid for any mechanism; ``"symmetric-binomial"`` is
    the exact binomial expansion of the "add" direction, valid (for both
    directions) only when the sampled pair is a shift under noise whose law
    is symmetric, as the Skellam and Gaussian mechanisms' are.

    Raises:
        ConfigurationError: when ``q`` is not in (0, 1], an order is not an
            integer in 2..len(base)-1, or ``accountant`` is unknown.
    """
    q = _check_q(q)
    general = _check_accountant(accountant) == LEGACY_ACCOUNTANT
    orders_arr = np.asarray(orders)
    if orders_arr.size == 0:
        return np.zeros(0)
    if np.any(orders_arr < 2) or np.any(orders_arr >= len(base)) \
            or np.any(orders_arr != np.round(orders_arr)):
        raise ConfigurationError("subsampled RDP needs integer orders in 2..len(base)-1")
    orders_int = orders_arr.astype(int)
    unsampled = base[orders_int]
    if q == 1.0:
        return unsampled.copy()
    log_q, log_1q = math.log(q), math.log1p(-q)
    binom = _binomials()
    out = np.empty(len(orders_int))
    for i, alpha in enumerate(orders_int):
        ls = np.arange(2, alpha + 1)
        terms = (binom[alpha, ls] + ls * log_q + (alpha - ls) * log_1q
                 + (ls - 1) * base[ls])
        if general:
            terms[1:] += math.log(3.0)  # l >= 3 carry the factor 3
        first = (alpha - 1) * log_1q + math.log(alpha * q - q + 1.0)
        everything = np.concatenate([[first], terms])
        top = float(np.max(everything))
        log_sum = top + math.log(float(np.sum(np.exp(everything - top))))
        out[i] = log_sum / (alpha - 1)
    return np.minimum(out, unsampled)


def rdp_to_epsilon(orders: Sequence[int] | np.ndarray, rdp: np.ndarray,
                   delta: float) -> float:
    """``(epsilon, delta)``-DP from an RDP curve (Balle et al. 2020, Theorem
    21): ``min over alpha of rdp + log((alpha-1)/alpha) - (log delta +
    log alpha)/(alpha-1)``, floored at 0; ``inf`` for an infinite curve.

    Raises:
        ConfigurationError: when ``delta`` is not in (0, 1).
    """
    delta = _check_delta(delta)
    a = np.asarray(orders, dtype=np.float64)
    r = np.asarray(rdp, dtype=np.float64)
    eps = r + np.log((a - 1.0) / a) - (math.log(delta) + np.log(a)) / (a - 1.0)
    best = float(np.nanmin(eps)) if eps.size else math.inf
    return max(0.0, best)


@dataclass(frozen=True)
class SkellamRound:
    """One row of a user-level history: ``rounds`` rounds of the Skellam
    mechanism with released variance ``mu`` (ring units), sensitivities
    ``l1``, ``l2`` (ring units) and client sampling rate ``q``, in a
    federation of ``n`` clients whose rounds are skipped when fewer than
    ``k`` are sampled (``k = 0``: never; ``k = 1``: only an empty cohort;
    the module docstring, "Skipped rounds"), ``released`` 1 when the
    round's sum was (or may have been) released, 0 when the round was
    skipped (it costs nothing against the server, which sees the cohort;
    the sampled charge is the same)."""

    mu: float
    l1: float
    l2: float
    q: float
    rounds: int
    n: int = 0
    k: int = 0
    released: int = 1

    def as_list(self) -> list[float]:
        """``[mu, l1, l2, q, rounds, n, k, released]`` as the ledger stores
        it (``[mu, l1, l2, q, rounds]`` for a row without a skip threshold,
        ``k = 0``, released, as rows were written before skips were charged)."""
        if self.k == 0 and self.released == 1 and self.n == 0:
            return [self.mu, self.l1, self.l2, self.q, self.rounds]
        return [self.mu, self.l1, self.l2, self.q, self.rounds, self.n, self.k, self.released]


def _is_count(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float) \
        and math.isfinite(value) and int(value) == value and value >= 0


def _as_rounds(history: Sequence[SkellamRound | Sequence[float]]) -> tuple[SkellamRound, ...]:
    rows = []
    for row in history:
        if isinstance(row, SkellamRound):
            rows.append(row)
            continue
        if len(row) == 5:
            mu, l1, l2, q, rounds = row
            n, k, released = 0, 0, 1
        elif len(row) == 8:
            mu, l1, l2, q, rounds, n, k, released = row
            if not (_is_count(n) and _is_count(k) and n >= 1 and released in (0, 1)
                    and not isinstance(released, bool)):
                raise ConfigurationError(
                    f"a history row's n must be an integer >= 1, k an integer >= 0 and"
                    f" released 0 or 1: {row!r}")
        else:
            raise ConfigurationError(f"a history row has 5 or 8 fields: {row!r}")
        if isinstance(rounds, bool) or int(rounds) != rounds or rounds < 0:
            raise ConfigurationError(f"a history row's rounds must be an integer >= 0: {row!r}")
        rows.append(SkellamRound(float(mu), float(l1), float(l2), float(q), int(rounds),
                                 int(n), int(k), int(released)))
    return tuple(rows)


@functools.lru_cache(maxsize=4096)
def _round_rdp(mu: float, l1: float, l2: float, q: float, accountant: str) -> np.ndarray:
    base = np.zeros(_MAX_ORDER + 1)
    base[2:] = skellam_rdp(np.arange(2, _MAX_ORDER + 1), l1, l2, mu)
    return poisson_subsampled_rdp(ORDERS, q, base, accountant=accountant)


def _log_binomial_masses(n: int, q: float, k: int) -> tuple[float, float, float]:
    """``log P(B >= k)``, ``log P(B = k - 1)``, ``log P(B < k - 1)`` for
    ``B ~ Bin(n - 1, q)`` (the cohort among the other ``n - 1`` clients),
    ``-inf`` for an empty event."""
    m = n - 1
    j = np.arange(m + 1, dtype=np.float64)
    if q == 1.0:
        log_pmf = np.where(j == m, 0.0, -np.inf)
    else:
        log_pmf = _log_comb(np.full_like(j, m), j) + j * math.log(q) + (m - j) * math.log1p(-q)

    def mass(select: np.ndarray) -> float:
        picked = log_pmf[select]
        if picked.size == 0 or not np.isfinite(picked).any():
            return -math.inf
        top = float(np.max(picked))
        return top + math.log(float(np.sum(np.exp(picked - top))))

    return mass(j >= k), mass(j == k - 1), mass(j < k - 1)


def skip_mixture_rdp(orders: Sequence[int] | np.ndarray, sampled: np.ndarray,
                     unsampled: np.ndarray, q: float, n: int, k: int) -> np.ndarray:
    """The RDP of one round of a federation of ``n`` clients, each sampled
    with probability ``q``, whose round is skipped (nothing released) when
    fewer than ``k`` clients are sampled, charged whatever happens (module
    docstring, "Skipped rounds"): at each order ``alpha``,

        1/(alpha-1) log[ P(B >= k) e^((alpha-1) sampled)
                         + P(B = k-1) (1 - q + q e^((alpha-1) unsampled))
                         + P(B < k-1) ],   B ~ Bin(n - 1, q),

    given ``sampled`` (the Poisson-sampled bound at rate ``q``) and
    ``unsampled`` (the mechanism's bound, either ordering) at ``orders``.
    For ``k = 0`` (never skipped) it is ``sampled``; ``k = 1`` skips an empty cohort only.

    Raises:
        ConfigurationError: ``q`` not in (0, 1], ``n < 1``, ``k < 0``, or
            the arrays' lengths differ from ``orders``'.
    """
    q = _check_q(q)
    a = np.asarray(orders, dtype=np.float64)
    sampled = np.asarray(sampled, dtype=np.float64)
    unsampled = np.asarray(unsampled, dtype=np.float64)
    if not (_is_count(n) and n >= 1 and _is_count(k)):
        raise ConfigurationError(f"the pool n must be >= 1 and the threshold k >= 0, got"
                                 f" n={n!r}, k={k!r}")
    if sampled.shape != a.shape or unsampled.shape != a.shape:
        raise ConfigurationError("skip_mixture_rdp needs one value per order")
    if k == 0:
        return sampled.copy()
    log_ge, log_eq, log_lt = _log_binomial_masses(int(n), q, int(k))
    log_join = np.logaddexp(math.log1p(-q) if q < 1.0 else -math.inf,
                            math.log(q) + (a - 1.0) * unsampled)
    # a branch of probability zero contributes nothing, even where its
    # divergence is infinite (0 * inf = 0 here, not NaN)
    ge = np.full_like(a, -math.inf) if log_ge == -math.inf else log_ge + (a - 1.0) * sampled
    eq = np.full_like(a, -math.inf) if log_eq == -math.inf else log_eq + log_join
    terms = np.stack([ge, eq, np.full_like(a, log_lt)])
    if np.isnan(terms).any():
        raise ConfigurationError("skip_mixture_rdp: a NaN bound (check sampled/unsampled)")
    top = np.max(terms, axis=0)  # finite: the three masses sum to 1, or +inf
    finite = np.isfinite(top)
    total = np.full_like(a, math.inf)
    total[finite] = top[finite] + np.log(
        np.sum(np.exp(terms[:, finite] - top[finite]), axis=0))
    return np.maximum(total, 0.0) / (a - 1.0)


@functools.lru_cache(maxsize=4096)
def _skip_round_rdp(mu: float, l1: float, l2: float, q: float, n: int, k: int,
                    accountant: str) -> np.ndarray:
    """One round's amplified RDP at :data:`ORDERS`, skips included (every
    round charged, released or skipped): :func:`skip_mixture_rdp` of the
    sampled and unsampled Skellam bounds; :func:`_round_rdp` for ``k = 0``."""
    sampled = _round_rdp(mu, l1, l2, q, accountant)
    if k == 0:
        return sampled
    unsampled = skellam_rdp(np.asarray(ORDERS), l1, l2, mu)
    return skip_mixture_rdp(ORDERS, sampled, unsampled, q, n, k)


def user_level_epsilon(history: Sequence[SkellamRound | Sequence[float]], delta: float,
                       *, amplified: bool = True, accountant: str = ACCOUNTANT) -> float:
    """The user-level epsilon at ``delta`` of a composed history (one
    client's update zeroed out).  Amplified, every row is charged with the
    skip-aware bound (module docstring, "Skipped rounds"), skipped rounds
    included.  ``amplified=False`` ignores the sampling (``q = 1``): the
    epsilon against an adversary who sees who took part, over the rows
    whose sum was (or may have been) released (``released`` 1); a skipped
    round releases nothing to it.
    ``accountant`` names the subsampling bound (:data:`ACCOUNTANTS`; both
    coincide at ``q = 1``).

    Returns 0.0 for no rounds and ``inf`` for a round without noise.

    Raises:
        ConfigurationError: on ``delta`` not in (0, 1), a ``q`` not in
            (0, 1], a negative sensitivity, a malformed row or an unknown
            accountant.
    """
    delta = _check_delta(delta)
    accountant = _check_accountant(accountant)
    rows = _as_rounds(history)
    total = np.zeros(len(ORDERS))
    for row in rows:
        if row.rounds == 0 or (not amplified and not row.released):
            continue
        if not row.mu > 0:
            return math.inf
        if amplified:
            total = total + row.rounds * _skip_round_rdp(row.mu, row.l1, row.l2,
                                                         _check_q(row.q), row.n, row.k,
                                                         accountant)
        elif row.released:
            total = total + row.rounds * _round_rdp(row.mu, row.l1, row.l2, 1.0, accountant)
    if not total.any():
        return 0.0
    return rdp_to_epsilon(ORDERS, total, delta)


def user_level_epsilons(history: Sequence[SkellamRound | Sequence[float]],
                        delta: float, *, accountant: str = ACCOUNTANT) -> dict[str, float]:
    """Both user-level epsilons of a history: ``"sampled"`` (amplified by
    Poisson client sampling, by ``accountant``'s bound) and ``"unsampled"``
    (``q = 1``; holds against the server, which sees who took part).

    Raises:
        ConfigurationError: as :func:`user_level_epsilon`.
    """
    return {"sampled": user_level_epsilon(history, delta, accountant=accountant),
            "unsampled": user_level_epsilon(history, delta, amplified=False)}


def colluder_epsilon(history: Sequence[SkellamRound | Sequence[float]],
                     colluder_history: Sequence[float], delta: float) -> float:
    """The unsampled epsilon at ``delta`` against the server colluding with
    survivors who subtract their own noise shares: every round of
    ``history`` at its variance minus the matching ``colluder_history``
    entry (the variance the colluders' shares made up in it), ``q = 1``.
    ``inf`` when the colluders can remove all of a round's noise.

    Raises:
        ConfigurationError: when the two histories differ in length, a
            colluder variance is negative or not finite, or as
            :func:`user_level_epsilon`.
    """
    rows = _as_rounds(history)
    if len(rows) != len(colluder_history):
        raise ConfigurationError(f"{len(colluder_history)} colluder variances for"
                                 f" {len(rows)} history rows")
    reduced = []
    for row, removed in zip(rows, colluder_history, strict=True):
        removed = float(removed)
        if not (removed >= 0 and math.isfinite(removed)):
            raise ConfigurationError(f"a colluder variance must be >= 0, got {removed}")
        reduced.append(SkellamRound(max(0.0, row.mu - removed), row.l1, row.l2, 1.0,
                                    row.rounds, row.n, row.k, row.released))
    return user_level_epsilon(reduced, delta, amplified=False)


@functools.lru_cache(maxsize=1024)
def calibrate_variance(target_epsilon: float, delta: float, l1: float, l2: float, q: float,
                       rounds: int, accountant: str = ACCOUNTANT, pool: int = 0,
                       skip_below: int = 0) -> float:
    """The smallest released variance ``mu`` (ring units, relative precision
    1e-6, on the safe side) whose user-level epsilon over ``rounds`` rounds
    at sampling rate ``q`` (by ``accountant``) is at most ``target_epsilon``
    (bisection; the epsilon decreases with ``mu``), every round charged as
    the ledger charges it: skip-aware (module docstring, "Skipped rounds")
    in a pool of ``pool`` clients whose rounds with fewer than
    ``skip_below`` sampled are skipped (``skip_below = 0``: never).

    Raises:
        ConfigurationError: when ``target_epsilon`` is not positive and
            finite, ``delta``/``q`` out of range, ``rounds`` < 1, ``l2 <= 0``,
            or ``accountant`` is unknown.
    """
    _check_accountant(accountant)
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise ConfigurationError(f"the target epsilon must be positive, got {target_epsilon}")
    _check_delta(delta)
    _check_q(q)
    if rounds < 1:
        raise ConfigurationError(f"rounds must be >= 1, got {rounds}")
    if not l2 > 0:
        raise ConfigurationError(f"the L2 sensitivity must be > 0, got {l2}")
    if skip_below >= 1 and not pool >= 1:
        raise ConfigurationError(f"a skip threshold {skip_below} needs the pool size (>= 1),"
                                 f" got {pool}")

    def eps(mu: float) -> float:
        return user_level_epsilon([SkellamRound(mu, l1, l2, q, rounds, pool, skip_below)],
                                  delta,
                                  accountant=accountant)

    high = l2 ** 2
    while eps(high) > target_epsilon:
        high *= 4.0
        if high > 1e30 * l2 ** 2:
            raise ConfigurationError(
                f"no Skellam variance reaches epsilon {target_epsilon} at delta {delta}")
    low = high / 4.0
    while eps(low) <= target_epsilon and low > 1e-12 * l2 ** 2:
        high, low = low, low / 4.0
    while high / low - 1.0 > 1e-6:
        middle = math.sqrt(low * high)
        if eps(middle) <= target_epsilon:
            high = middle
        else:
            low = middle
    return high


@dataclass(frozen=True)
class UserLevelPlan:
    """A calibrated configuration of user-level distributed DP.

    Attributes:
        codec: the client encoding (clip, rotation, scale ``gamma``, ring).
        variance: ``V``, the per-coordinate variance of the Skellam noise the
            released sum must carry at least (ring units).
        q: the client sampling rate.
        rounds: the number of rounds calibrated for.
        delta: the delta.
        target_epsilon: the user-level epsilon (amplified by sampling) that
            ``variance`` reaches over ``rounds`` rounds.
        cohort: the cohort size the ring was sized for.
        stddevs: how many standard deviations of the sum the signed range
            holds.
        accountant: the subsampling bound ``variance`` was calibrated with
            (:data:`ACCOUNTANTS`); the ledger rows of the plan use it too.
        pool: ``n``, the number of clients sampled from (0: not given).
        skip_below: ``k``, a round with fewer than ``k`` sampled clients is
            skipped (``k = 0``: never); ``variance`` was calibrated with
            the skip-aware charge, and every ledger row records both.
    """

    codec: RotatedCodec
    variance: float
    q: float
    rounds: int
    delta: float
    target_epsilon: float
    cohort: int
    stddevs: float
    accountant: str = ACCOUNTANT
    pool: int = 0
    skip_below: int = 0

    @property
    def round_row(self) -> SkellamRound:
        """One round of this plan as a history row (at the calibrated variance)."""
        return SkellamRound(self.variance, self.codec.l1_sensitivity,
                            self.codec.l2_sensitivity, self.q, 1, self.pool, self.skip_below)

    def sum_stddev(self, noise_factor: float = 1.001) -> float:
        """The per-coordinate standard deviation bound the ring was sized for."""
        return _sum_stddev(self.codec, self.cohort, self.variance * noise_factor)


def _sum_stddev(codec: RotatedCodec, cohort: int, noise_variance: float) -> float:
    """A rotated client vector's coordinates have variance ``||v||^2 / d``;
    ``cohort`` aligned vectors of norm ``Delta_2`` give ``(n Delta_2)^2 / d``
    (the worst case, as in TFF), plus the noise."""
    return math.sqrt((cohort * codec.l2_sensitivity) ** 2 / codec.padded + noise_variance)


def plan_user_level(*, num_values: int, clip: float, bits: int, cohort: int, q: float,
                    rounds: int, target_epsilon: float, delta: float,
                    beta: float = DEFAULT_BETA, stddevs: float = 3.0,
                    noise_factor: float = 1.001,
                    accountant: str = ACCOUNTANT, pool: int = 0,
                    skip_below: int = 0) -> UserLevelPlan:
    """Calibrate user-level distributed DP: the largest scale ``gamma`` such
    that ``stddevs`` standard deviations of the sum of ``cohort`` rounded
    updates plus noise of variance ``noise_factor * V`` fit in the signed
    range ``2^(bits-1)``, and :data:`NOISE_TAIL_SIGMAS` standard deviations
    of the noise alone in half of it (the protocol's check), where ``V`` is
    the Skellam variance that spends ``target_epsilon`` over ``rounds``
    rounds at sampling rate ``q``.

    Args:
        num_values: floats per update.
        clip: the L2 bound ``C`` of an update (> 0).
        bits: the ring size.
        cohort: the most clients whose vectors enter one sum.
        q: the client sampling rate, in (0, 1].
        rounds: rounds to calibrate for.
        target_epsilon: user-level epsilon (amplified by sampling).
        delta: delta, at most :data:`~securefl.privacy.ledger.USER_LEVEL_DELTA_MAX`.
        beta: conditional rounding's beta.
        stddevs: the margin of the signed range, in standard deviations.
        noise_factor: the released variance over ``V`` at most (1.001 for
            removable excess noise; ``n / t`` when calibrated to a threshold
            ``t`` of ``n``).
        accountant: the subsampling bound to calibrate with
            (:data:`ACCOUNTANTS`; the default :data:`ACCOUNTANT`).
        pool: ``n``, the clients the cohort is sampled from (0: not given).
        skip_below: ``k``: rounds with fewer than ``k`` sampled clients are
            skipped; calibrated with the skip-aware charge the ledger uses
            (:func:`calibrate_variance`).

    Raises:
        ConfigurationError: ``clip <= 0``, ``q`` not in (0, 1], ``delta``
            above :data:`~securefl.privacy.ledger.USER_LEVEL_DELTA_MAX`, ``cohort`` <
            1, or ``bits`` too few for the noise, the cohort and the clip
            (no ``gamma`` fits with rounding inflating ``Delta_2`` by at
            most :data:`ROUNDING_INFLATION_LIMIT`); the message names the
            numbers and the bits that would fit; an unknown ``accountant``.
    """
    accountant = _check_accountant(accountant)
    if isinstance(clip, bool) or not isinstance(clip, int | float) or not clip > 0 \
            or not math.isfinite(clip):
        raise ConfigurationError(f"the L2 norm bound (clip) must be > 0 and finite, got {clip!r};"
                                 " pass the largest L2 norm an update may have")
    q = _check_q(q)
    _check_delta(delta)
    if not delta <= USER_LEVEL_DELTA_MAX:
        raise ConfigurationError(
            f"the user-level delta must be at most {USER_LEVEL_DELTA_MAX:g}, got {delta}; a"
            " delta near 1 / (number of clients) permits releasing a client's data outright"
            " (use delta << 1 / clients, e.g. 1e-5)")
    if cohort < 1:
        raise ConfigurationError(f"the cohort must be >= 1 client, got {cohort}")
    if not 2 <= bits <= 62:
        raise ConfigurationError(f"bits must be in 2..62, got {bits}")
    padded = RotatedCodec(num_values=num_values, clip=1.0, gamma=1.0, bits=62,
                          beta=beta).padded
    limit = 2 ** (bits - 1) - 1

    def attempt(gamma: float, ring_bits: int) -> tuple[RotatedCodec, float, float] | None:
        try:
            codec = RotatedCodec(num_values=num_values, clip=float(clip), gamma=gamma,
                                 bits=ring_bits, beta=beta)
        except ConfigurationError:
            return None
        variance = calibrate_variance(float(target_epsilon), float(delta),
                                      codec.l1_sensitivity, codec.l2_sensitivity, q, rounds,
                                      accountant, int(pool), int(skip_below))
        need = max(stddevs * _sum_stddev(codec, cohort, variance * noise_factor),
                   2.0 * NOISE_TAIL_SIGMAS * math.sqrt(variance * noise_factor))
        return codec, variance, need

    # gamma at which rounding inflates Delta_2 by exactly the limit: below it, refuse
    low = math.sqrt(padded) / clip / 64.0
    high = 64.0 * math.sqrt(padded) / clip
    while True:
        codec = RotatedCodec(num_values=num_values, clip=float(clip), gamma=high, bits=62,
                             beta=beta)
        if codec.l2_sensitivity <= ROUNDING_INFLATION_LIMIT * high * clip:
            break
        high *= 2.0
    while high / low - 1.0 > 1e-3:
        middle = math.sqrt(low * high)
        codec = RotatedCodec(num_values=num_values, clip=float(clip), gamma=middle, bits=62,
                             beta=beta)
        if codec.l2_sensitivity <= ROUNDING_INFLATION_LIMIT * middle * clip:
            high = middle
        else:
            low = middle
    gamma_min = high
    smallest = attempt(gamma_min, 62)
    at_bits = attempt(gamma_min, bits)
    if smallest is None or at_bits is None or at_bits[2] > limit:
        assert smallest is not None
        need = math.ceil(math.log2(smallest[2] + 1)) + 1
        raise ConfigurationError(
            f"bits={bits} are too few for the noise, the cohort and the clip: at the smallest"
            f" useful scale gamma={gamma_min:.4g} (rounding inflates the sensitivity by"
            f" {ROUNDING_INFLATION_LIMIT}x over {padded} coordinates), {cohort} clients clipped"
            f" to L2 {clip} plus Skellam noise of variance {smallest[1]:.4g} (epsilon"
            f" {target_epsilon} over {rounds} rounds at q={q}) need {smallest[2]:.4g} <="
            f" 2^{bits - 1}; use bits >= {need}, a smaller cohort or a larger epsilon")
    low, high = gamma_min, gamma_min
    while True:
        found = attempt(high * 2.0, bits)
        if found is None or found[2] > limit:
            break
        high *= 2.0
    low, high = high, high * 2.0
    while high / low - 1.0 > 1e-3:
        middle = math.sqrt(low * high)
        found = attempt(middle, bits)
        if found is not None and found[2] <= limit:
            low = middle
        else:
            high = middle
    final = attempt(low, bits)
    assert final is not None and final[2] <= limit
    codec, variance, _ = final
    return UserLevelPlan(codec=codec, variance=variance, q=q, rounds=int(rounds),
                         delta=float(delta), target_epsilon=float(target_epsilon),
                         cohort=int(cohort), stddevs=float(stddevs), accountant=accountant,
                         pool=int(pool), skip_below=int(skip_below))


def user_level_entry(plan: UserLevelPlan, *, round_number: int, released_variance: float,
                     survivors: int, previous: UserLevelEntry | None = None,
                     epsilon_budget: float | None = None, colluders: int = 0,
                     colluder_variance: float = 0.0, skipped: bool = False) -> UserLevelEntry:
    """The ledger row of one released round: the history of ``previous``
    (the last user-level row, None for the first) plus this round at the
    variance the released sum actually carries, and its epsilons, computed
    with the plan's ``accountant``, which the row records (the whole
    history is recomputed with it, whichever accountant ``previous``
    named).

    ``colluders`` (``c``) survivors colluding with the server can subtract
    their noise shares, ``colluder_variance`` of this round's released
    variance at most (for a :class:`~securefl.protocol.noise.NoiseLayout`,
    ``c`` times its largest per-client share; ``V c / t`` for the plan
    calibrated to the threshold ``t``); the row records the unsampled
    epsilon against that coalition in ``epsilon_colluders``.  ``c`` must
    be the same in every row of a ledger.

    Every row charges its round with the skip-aware bound of the plan's
    ``pool`` and ``skip_below`` (module docstring, "Skipped rounds"), which
    it records (``cohort_pool``, ``skip_below`` and the last history row
    ``[mu, l1, l2, q, 1, n, k, released]``; a plan with ``skip_below = 0``
    and no pool writes the 5-field rows of earlier ledgers).
    ``skipped``: the round was skipped (its cohort was smaller than
    ``skip_below``): status ``skipped``, ``released_variance`` the plan's
    variance, no survivors and no colluder variance; charged in the sampled
    epsilon like any round, not in the unsampled one (nothing reached the
    server).

    Raises:
        ConfigurationError: when ``released_variance`` is below the plan's
            variance (the sum does not carry the calibrated noise; nothing is
            recorded as if it did), ``colluders`` is negative or differs from
            ``previous``'s, or ``colluder_variance`` is negative, above the
            released variance, or not 0 when ``colluders`` is 0.
    """
    if not released_variance >= plan.variance:
        raise ConfigurationError(
            f"round {round_number}: the released sum carries variance {released_variance:.6g},"
            f" below the calibrated {plan.variance:.6g}")
    if isinstance(colluders, bool) or not isinstance(colluders, int) or colluders < 0 \
            or (previous is not None and previous.colluders != colluders):
        raise ConfigurationError(f"round {round_number}: colluders must be an integer >= 0,"
                                 f" the same in every row of a ledger, got {colluders!r}")
    if not 0.0 <= colluder_variance <= released_variance \
            or (colluders == 0 and colluder_variance != 0.0):
        raise ConfigurationError(
            f"round {round_number}: colluder variance {colluder_variance!r} must be in"
            f" [0, {released_variance:.6g}] and 0 without colluders")
    if skipped and not (released_variance == plan.variance and survivors == 0
                        and colluder_variance == 0.0):
        raise ConfigurationError(f"round {round_number}: a skipped round is charged at the"
                                 " plan's variance, with no survivors and no colluder variance")
    codec = plan.codec
    history = [list(row) for row in previous.history] if previous is not None else []
    history.append(SkellamRound(float(released_variance), codec.l1_sensitivity,
                                codec.l2_sensitivity, plan.q, 1, plan.pool, plan.skip_below,
                                0 if skipped else 1).as_list())
    removed = list(previous.colluder_history) if previous is not None else []
    removed.append(float(colluder_variance))
    eps = user_level_epsilons(history, plan.delta, accountant=plan.accountant)
    return UserLevelEntry(
        round=int(round_number), mechanism=MECHANISM, adjacency=USER_LEVEL_ADJACENCY,
        sample_rate=plan.q, released_variance=float(released_variance),
        target_variance=plan.variance, gamma=codec.gamma, clip=codec.clip,
        dimension=codec.padded, beta=codec.beta, bits=codec.bits,
        l1_sensitivity=codec.l1_sensitivity, l2_sensitivity=codec.l2_sensitivity,
        survivors=int(survivors), delta=plan.delta, epsilon=eps["sampled"],
        epsilon_unsampled=eps["unsampled"], epsilon_budget=epsilon_budget, history=history,
        colluders=colluders, colluder_history=removed,
        epsilon_colluders=colluder_epsilon(history, removed, plan.delta),
        accountant=plan.accountant, cohort_pool=plan.pool, skip_below=plan.skip_below,
        status="skipped" if skipped else "released")
