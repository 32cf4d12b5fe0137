"""Privacy accounting: Opacus's RDP and PRV accountants, and Google's
``dp-accounting`` as an independent cross-check.

A client's privacy history is Opacus's: a list of ``(noise_multiplier,
sample_rate, steps)`` rows, each a Poisson-subsampled Gaussian mechanism
composed ``steps`` times.  Every epsilon here is computed by Opacus's own
analysis (``opacus.accountants``) or by ``dp_accounting``; nothing is
re-derived by hand, except the replace-one RDP bound
(:func:`epsilon_replace_one_rdp`, from Opacus's add/remove RDP through
Mironov's weak triangle inequality).  :func:`epsilons_for` gives every
accountant of an adjacency: the four :data:`ACCOUNTANTS` for add/remove-one,
the two :data:`REPLACE_ONE_ACCOUNTANTS` for replace-one (record counts
public).  Results are cached by history because a federation asks the same
question for many clients and rounds.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as opacus_rdp
from opacus.accountants.utils import get_noise_multiplier

from securefl.errors import ConfigurationError
from securefl.privacy.options import AccountantKind

__all__ = [
    "ACCOUNTANTS",
    "REPLACE_ONE_ACCOUNTANTS",
    "AccountantKind",
    "History",
    "HistoryRow",
    "epsilon",
    "epsilon_dp_accounting",
    "epsilon_max",
    "epsilon_pld",
    "epsilon_replace_one_pld",
    "epsilon_replace_one_rdp",
    "epsilons",
    "epsilons_for",
    "noise_multiplier_for",
    "noise_multiplier_for_replace_one",
]

ACCOUNTANTS = ("opacus-rdp", "opacus-prv", "dp-accounting-rdp", "dp-accounting-pld")
"""The four accountants every epsilon is checked with: Opacus's RDP and PRV
accountants and Google's dp-accounting RDP and PLD accountants, all for the
Poisson-subsampled Gaussian mechanism under add-or-remove-one adjacency.  A
budget or a target epsilon holds only when it holds by all four
(:func:`epsilon_max`)."""

PLD_DISCRETIZATION = 1e-3
"""``value_discretization_interval`` of the dp-accounting PLD accountant.  Its
estimate is pessimistic (an upper bound) at any interval; 1e-3 is ten times
faster than the default 1e-4 and differs from it by about 2e-5 in epsilon."""

HistoryRow = tuple[float, float, int]
"""``(noise_multiplier, sample_rate, steps)``, as in Opacus."""

History = tuple[HistoryRow, ...]

MAX_GRID_STEPS = 1_000_000
"""The most DP-SGD steps (summed over a history) that the grid-based
accountants (Opacus PRV, dp-accounting PLD) are asked to compose.  Their
memory grows with the step count (about 0.7 GB at 10^5 steps, terabytes at
2^40), so a hostile ledger could otherwise exhaust the auditor's memory;
beyond the cap they return NaN (unverifiable), which the audit fails.  Real
runs take thousands of steps; RDP has no cap (it is a product).  Their
memory also grows with the epsilon: see :data:`MAX_GRID_EPSILON`."""


MAX_GRID_EPSILON = 100.0
"""The largest add/remove-one epsilon by Opacus's RDP accountant (cheap)
for which the grid-based accountants are run (the replace-one PLD too: its
epsilon is larger, about 284 at sigma 0.1, sample rate 1, one step, where
the RDP epsilon is 96, and takes 1.5 GB; the replace-one RDP bound is too
loose to decide, 2.5 times the tight value).  Their grid
spans the privacy loss, so their memory grows with the epsilon as well as
with the steps: a history of 1000 steps at sigma 0.5 and sample rate 1
(epsilon in the thousands) took Opacus's PRV accountant 8.4 GB and 42 s,
2000 steps at sigma 0.3 more than 24 GB (the process was killed), far below
:data:`MAX_GRID_STEPS`.  Beyond this epsilon they return NaN
(unverifiable, which the audit fails and the budget guard refuses); no
meaningful budget is that large (at 100 a record-level epsilon bounds
nothing), and under it they stay below about 1.5 GB."""


def _beyond_grid(history: History, delta: float | None = None) -> bool:
    """Whether the grid accountants must not compose a history: more steps
    than :data:`MAX_GRID_STEPS`, or (given ``delta``) an add/remove-one RDP
    epsilon above :data:`MAX_GRID_EPSILON` (NaN included)."""
    if sum(max(steps, 0) for _, _, steps in history) > MAX_GRID_STEPS:
        return True
    if delta is None:
        return False
    with _quiet_opacus():
        bound = _epsilon_cached(history, delta, AccountantKind.RDP)
    return not bound <= MAX_GRID_EPSILON


def _as_history(history: Sequence[Sequence[float]]) -> History:
    rows = []
    for row in history:
        sigma, q, steps = row
        rows.append((float(sigma), float(q), int(steps)))
    return tuple(rows)


@functools.lru_cache(maxsize=4096)
def _rdp_vector(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """Opacus's RDP of one step at its default orders."""
    return np.asarray(
        opacus_rdp.compute_rdp(
            q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
            orders=RDPAccountant.DEFAULT_ALPHAS,
        ),
        dtype=np.float64,
    )


def _noiseless(history: History) -> bool:
    """A row that took steps without noise: epsilon is infinite."""
    return any(steps > 0 and not sigma > 0 for sigma, _, steps in history)


def _trivial(history: History, *, grid: bool = False,
             delta: float | None = None) -> float | None:
    """The epsilon every accountant agrees on without computing: 0.0 for no
    steps, ``inf`` for a step without noise, and (``grid``: PRV and PLD)
    ``nan`` beyond :data:`MAX_GRID_STEPS` or (given ``delta``)
    :data:`MAX_GRID_EPSILON`; None when it must be computed."""
    if not any(steps > 0 for _, _, steps in history):
        return 0.0
    if _noiseless(history):
        return math.inf
    if grid and _beyond_grid(history, delta):
        return math.nan
    return None


@functools.lru_cache(maxsize=4096)
def _epsilon_cached(history: History, delta: float, kind: AccountantKind) -> float:
    grid = kind is not AccountantKind.RDP
    known = _trivial(history, grid=grid, delta=delta if grid else None)
    if known is not None:
        return known
    if kind is AccountantKind.RDP:
        # Opacus's RDPAccountant.get_privacy_spent, with the per-step RDP
        # cached: RDP composes additively, so steps * rdp(1 step) is exactly
        # what compute_rdp(steps=steps) returns.
        rdp = sum(steps * _rdp_vector(sigma, q) for sigma, q, steps in history)
        eps, _ = opacus_rdp.get_privacy_spent(
            orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta
        )
        return float(eps)
    accountant = PRVAccountant()
    accountant.history = [row for row in history if row[2] > 0]
    # At sample rate 1 Opacus's PRV evaluates np.log(1 - q) = log(0): numpy
    # warns "divide by zero" and returns -inf, the intended lower edge of the
    # privacy loss's support (the mechanism is then the plain Gaussian).
    # Only that division is silenced, and only for such a history.
    full_batch = any(q >= 1.0 for _, q, _ in accountant.history)
    with np.errstate(divide="ignore") if full_batch else contextlib.nullcontext():
        return float(accountant.get_epsilon(delta=delta))


def epsilon(history: Sequence[Sequence[float]], delta: float,
            kind: AccountantKind = AccountantKind.RDP) -> float:
    """Epsilon spent at ``delta`` by a history, per Opacus's accountant ``kind``.

    Returns ``0.0`` for an empty history and ``math.nan`` when the PRV
    accountant cannot bound this history (Opacus raises for some extreme
    parameters, or asks for more memory than exists) or is not run (beyond
    :data:`MAX_GRID_STEPS` steps or an RDP epsilon of
    :data:`MAX_GRID_EPSILON`); RDP always returns a number (possibly
    ``inf``).

    Raises:
        ConfigurationError: when ``delta`` is not in (0, 1).
    """
    if not 0.0 < delta < 1.0:
        raise ConfigurationError(f"delta must be in (0, 1), got {delta}")
    kind = AccountantKind(kind)
    try:
        with _quiet_opacus():
            return _epsilon_cached(_as_history(history), float(delta), kind)
    except (ValueError, RuntimeError, FloatingPointError, OverflowError, MemoryError):
        # MemoryError: the PRV accountant sizes its grid from the history and
        # numpy refuses at once a grid of terabytes (e.g. 2^40 steps)
        if kind is AccountantKind.PRV:
            return math.nan
        raise


@contextlib.contextmanager
def _quiet_opacus() -> Iterator[None]:
    """Opacus warns when the best RDP order is the largest one it tries (the
    bound is then valid but could be tighter); the binary search of
    ``get_noise_multiplier`` triggers it for every large sigma it probes."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    """dp-accounting warns through absl when an order fails to converge and
    excludes that order; the result stays a valid upper bound."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _compose_poisson_gaussian(accountant: Any, history: History) -> None:
    """Compose a history into a dp-accounting accountant: each row is
    ``PoissonSampledDpEvent(q, GaussianDpEvent(sigma))`` taken ``steps`` times."""
    import dp_accounting

    for sigma, q, steps in history:
        if steps > 0:
            accountant.compose(dp_accounting.PoissonSampledDpEvent(
                q, dp_accounting.GaussianDpEvent(sigma)), steps)


@functools.lru_cache(maxsize=4096)
def _dp_accounting_cached(history: History, delta: float) -> float:
    import dp_accounting

    known = _trivial(history)
    if known is not None:
        return known
    accountant = dp_accounting.rdp.RdpAccountant()
    with _quiet_absl():
        _compose_poisson_gaussian(accountant, history)
        return float(accountant.get_epsilon(delta))


def epsilon_dp_accounting(history: Sequence[Sequence[float]], delta: float) -> float:
    """Epsilon of a history per Google's ``dp_accounting.rdp.RdpAccountant``
    (``PoissonSampledDpEvent(q, GaussianDpEvent(sigma))`` composed ``steps``
    times per row): an accountant independent of Opacus.

    Raises:
        ConfigurationError: when ``delta`` is not in (0, 1).
    """
    if not 0.0 < delta < 1.0:
        raise ConfigurationError(f"delta must be in (0, 1), got {delta}")
    return _dp_accounting_cached(_as_history(history), float(delta))


@functools.lru_cache(maxsize=4096)
def _pld_cached(history: History, delta: float) -> float:
    import dp_accounting

    known = _trivial(history, grid=True, delta=delta)
    if known is not None:
        return known
    accountant = dp_accounting.pld.PLDAccountant(
        value_discretization_interval=PLD_DISCRETIZATION)
    _compose_poisson_gaussian(accountant, history)
    return float(accountant.get_epsilon(delta))


def epsilon_pld(history: Sequence[Sequence[float]], delta: float) -> float:
    """Epsilon of a history per Google's ``dp_accounting.pld.PLDAccountant``
    (add-or-remove-one, pessimistic estimate, discretization
    :data:`PLD_DISCRETIZATION`); ``math.nan`` when it cannot bound it or is
    not run (beyond :data:`MAX_GRID_STEPS` steps or an RDP epsilon of
    :data:`MAX_GRID_EPSILON`).

    Raises:
        ConfigurationError: when ``delta`` is not in (0, 1).
    """
    if not 0.0 < delta < 1.0:
        raise ConfigurationError(f"delta must be in (0, 1), got {delta}")
    try:
        return _pld_cached(_as_history(history), float(delta))
    except (ValueError, RuntimeError, FloatingPointError, OverflowError, MemoryError):
        # MemoryError: the PLD's self-composition sizes its FFT from the step
        # count and numpy refuses at once an array of terabytes (2^40 steps)
        return math.nan


def epsilons(history: Sequence[Sequence[float]], delta: float,
             *, stop_above: float | None = None) -> dict[str, float]:
    """Epsilon of a history (add-or-remove-one adjacency) at ``delta`` by each
    of the :data:`ACCOUNTANTS`, keyed by name.  ``math.inf`` for a history
    with a noiseless step, ``math.nan`` where an accountant cannot bound it.

    Args:
        stop_above: stop as soon as one accountant exceeds this epsilon (or
            is NaN); the result then holds only the accountants computed
            (the two RDP ones first: they are cheap and usually the loosest).

    Raises:
        ConfigurationError: when ``delta`` is not in (0, 1).
    """
    computers = {
        "opacus-rdp": lambda: epsilon(history, delta, AccountantKind.RDP),
        "dp-accounting-rdp": lambda: epsilon_dp_accounting(history, delta),
        "opacus-prv": lambda: epsilon(history, delta, AccountantKind.PRV),
        "dp-accounting-pld": lambda: epsilon_pld(history, delta),
    }
    result: dict[str, float] = {}
    for name, compute in computers.items():
        value = compute()
        result[name] = value
        if stop_above is not None and not value <= stop_above:
            break
    return {name: result[name] for name in ACCOUNTANTS if name in result}


def epsilon_max(history: Sequence[Sequence[float]], delta: float) -> float:
    """The largest epsilon of :func:`epsilons` (``math.nan`` if any is NaN:
    an epsilon an accountant cannot bound is no bound).

    Raises:
        ConfigurationError: when ``delta`` is not in (0, 1).
    """
    values = list(epsilons(history, delta).values())
    if any(math.isnan(v) for v in values):
        return math.nan
    return max(values)


_CHEAP = ("opacus-rdp", "dp-accounting-rdp")


def _within(sigma: float, target: float, delta: float, sample_rate: float, steps: int,
            names: tuple[str, ...]) -> bool:
    history = [(sigma, sample_rate, steps)]
    if names == _CHEAP:
        return (epsilon(history, delta, AccountantKind.RDP) <= target
                and epsilon_dp_accounting(history, delta) <= target)
    values = epsilons(history, delta, stop_above=target)
    return len(values) == len(ACCOUNTANTS) and all(v <= target for v in values.values())


def _raise_until(start: float, target: float, delta: float, sample_rate: float, steps: int,
                 names: tuple[str, ...]) -> float:
    """The smallest sigma >= ``start`` (to a relative 1e-4) whose epsilon is
    within ``target`` by the accountants ``names``."""
    if _within(start, target, delta, sample_rate, steps, names):
        return start
    low, high = start, start * 1.005
    while not _within(high, target, delta, sample_rate, steps, names):
        low, high = high, high * 1.1
        if high > 1e6:
            raise ConfigurationError(
                f"cannot reach epsilon {target} at delta {delta} by every accountant"
                f" with sample rate {sample_rate:.4g} over {steps} steps")
    while high / low - 1.0 > 1e-4:
        middle = (low + high) / 2
        if _within(middle, target, delta, sample_rate, steps, names):
            high = middle
        else:
            low = middle
    return high


@functools.lru_cache(maxsize=1024)
def noise_multiplier_for(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                         kind: AccountantKind = AccountantKind.RDP) -> float:
    """The noise multiplier that spends at most ``target_epsilon`` at
    ``delta`` over ``steps`` steps at ``sample_rate`` by **every** accountant
    of :data:`ACCOUNTANTS` (``max(epsilons(...).values()) <= target_epsilon``
    holds for the returned sigma).

    It starts from Opacus's ``get_noise_multiplier`` for ``kind`` (a sigma
    whose epsilon by that accountant is within 0.01 below the target); when
    another accountant is still above the target (dp-accounting's RDP is
    typically 0.1% above Opacus's), sigma is raised by bisection, first
    against the two RDP accountants, then against all four, to the smallest
    sigma (relative precision 1e-4) for which every accountant is within.

    Raises:
        ConfigurationError: when the target cannot be reached (Opacus: "The
            privacy budget is too low") or an argument is out of range.
    """
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise ConfigurationError(f"target epsilon must be positive, got {target_epsilon}")
    if not 0.0 < delta < 1.0:
        raise ConfigurationError(f"delta must be in (0, 1), got {delta}")
    if not 0.0 < sample_rate <= 1.0 or steps < 1:
        raise ConfigurationError(
            f"sample rate must be in (0, 1] and steps >= 1, got {sample_rate}, {steps}"
        )
    try:
        with _quiet_opacus():
            start = float(get_noise_multiplier(
                target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                steps=steps, accountant=AccountantKind(kind).value,
            ))
    except ValueError as exc:
        raise ConfigurationError(
            f"cannot reach epsilon {target_epsilon} at delta {delta} with sample rate"
            f" {sample_rate:.4g} over {steps} steps: {exc}"
        ) from None
    with _quiet_opacus():
        cheap = _raise_until(start, target_epsilon, delta, sample_rate, steps, _CHEAP)
        return _raise_until(cheap, target_epsilon, delta, sample_rate, steps, ACCOUNTANTS)


# -- replace-one adjacency ------------------------------------------------------------
#
# Opacus's accountants and dp-accounting's RDP accountant state epsilon for
# add/remove-one adjacency only (dp-accounting 0.6's RdpAccountant refuses
# REPLACE_ONE for a PoissonSampledDpEvent).  When a client's record count is
# public (weighting by examples), the right relation is replace-one; two ways
# to state it follow.

_REPLACE_ONE_ORDERS = tuple(k / 2 for k in range(3, 129))
"""Orders alpha of the replace-one RDP bound: half-integers, so that the
add/remove orders it needs, 2*alpha and 2*alpha - 1, are integers (where
Opacus's sampled-Gaussian RDP is exact and bounds both directions)."""


@functools.lru_cache(maxsize=4096)
def _rdp_at_integer_orders(noise_multiplier: float, sample_rate: float) -> np.ndarray:
    """Opacus's add/remove RDP of one step at orders 2..128 (index = order)."""
    orders = list(range(2, 129))
    rdp = opacus_rdp.compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=1,
                                 orders=orders)
    return np.concatenate([[0.0, 0.0], np.asarray(rdp, dtype=np.float64)])


@functools.lru_cache(maxsize=4096)
def _replace_one_rdp_cached(history: History, delta: float) -> float:
    known = _trivial(history)
    if known is not None:
        return known
    composed = sum(steps * _rdp_at_integer_orders(sigma, q)
                   for sigma, q, steps in history if steps > 0)
    orders = np.asarray(_REPLACE_ONE_ORDERS)
    hi = composed[(2 * orders).astype(int)]
    lo = composed[(2 * orders - 1).astype(int)]
    rdp = (orders - 0.5) / (orders - 1.0) * hi + lo
    with warnings.catch_warnings():
        # the bound is valid at whichever order is best, the smallest included
        warnings.filterwarnings("ignore", message="Optimal order is the smallest alpha")
        eps, _ = opacus_rdp.get_privacy_spent(orders=list(orders), rdp=rdp, delta=delta)
    return float(eps)


def epsilon_replace_one_rdp(history: Sequence[Sequence[float]], delta: float) -> float:
    """An upper bound on the replace-one epsilon of a history, from Opacus's
    add/remove RDP of the Poisson-sampled Gaussian.

    Replacing record x by x' goes through the data set without x:
    D = D0 + x, D' = D0 + x'.  Mironov's weak triangle inequality for Rényi
    divergence ("Rényi Differential Privacy", CSF 2017, Proposition 11 with
    p = q = 2) gives, for the composed mechanism M,

        D_a(M(D) || M(D')) <= (a - 1/2) / (a - 1) * D_2a(M(D) || M(D0))
                              + D_(2a-1)(M(D0) || M(D')),

    and each term is bounded by the add/remove RDP at that order (Opacus's
    value at integer orders bounds both directions; Mironov, Talwar, Zhang
    2019).  The RDP curve is then turned into (epsilon, delta) by Opacus's
    conversion.  Never below the tight value
    (:func:`epsilon_replace_one_pld`; a test checks it).

    Raises:
        ConfigurationError: when ``delta`` is not in (0, 1).
    """
    if not 0.0 < delta < 1.0:
        raise ConfigurationError(f"delta must be in (0, 1), got {delta}")
    with _quiet_opacus():
        return _replace_one_rdp_cached(_as_history(history), float(delta))


@functools.lru_cache(maxsize=1024)
def _replace_one_pld_cached(history: History, delta: float) -> float:
    import dp_accounting

    known = _trivial(history, grid=True, delta=delta)
    if known is not None:
        return known
    accountant = dp_accounting.pld.PLDAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    _compose_poisson_gaussian(accountant, history)
    return float(accountant.get_epsilon(delta))


def epsilon_replace_one_pld(history: Sequence[Sequence[float]], delta: float) -> float:
    """The replace-one epsilon of a history per dp-accounting's privacy loss
    distribution accountant (``PLDAccountant(neighboring_relation=
    REPLACE_ONE)``, which supports the Poisson-sampled Gaussian): tight up to
    its discretisation, which rounds pessimistically.  ``math.inf`` for a
    history with a noiseless step, ``math.nan`` when it cannot bound it or
    is not run (beyond :data:`MAX_GRID_STEPS` steps or an add/remove-one
    RDP epsilon of :data:`MAX_GRID_EPSILON`).

    Raises:
        ConfigurationError: when ``delta`` is not in (0, 1).
    """
    if not 0.0 < delta < 1.0:
        raise ConfigurationError(f"delta must be in (0, 1), got {delta}")
    history = _as_history(history)
    if not history or all(steps == 0 for _, _, steps in history):
        return 0.0
    try:
        return _replace_one_pld_cached(history, float(delta))
    except (ValueError, RuntimeError, FloatingPointError, OverflowError, MemoryError):
        return math.nan


REPLACE_ONE_ACCOUNTANTS = ("replace-one-rdp", "replace-one-pld")
"""The accountants a replace-one epsilon is checked with: the RDP bound of
:func:`epsilon_replace_one_rdp` (recorded as a ledger row's ``epsilon_rdp``)
and dp-accounting's replace-one PLD (:func:`epsilon_replace_one_pld`,
recorded as ``epsilon_dpa_pld``).  Opacus's PRV and dp-accounting's RDP
accountant support only add-or-remove-one."""


def epsilons_for(history: Sequence[Sequence[float]], delta: float,
                 adjacency: str) -> dict[str, float]:
    """Every accountant's epsilon of a history under ``adjacency``:
    ``"add-remove-one"``: :func:`epsilons` (the four :data:`ACCOUNTANTS`);
    ``"replace-one"``: the two :data:`REPLACE_ONE_ACCOUNTANTS`.  This is what
    the budget guard, the calibration and ``securefl audit`` hold to the
    budget.

    Raises:
        ConfigurationError: for an unknown adjacency or ``delta`` not in (0, 1).
    """
    if adjacency == "add-remove-one":
        return epsilons(history, delta)
    if adjacency == "replace-one":
        return {"replace-one-rdp": epsilon_replace_one_rdp(history, delta),
                "replace-one-pld": epsilon_replace_one_pld(history, delta)}
    raise ConfigurationError(f"unknown adjacency {adjacency!r}")


@functools.lru_cache(maxsize=256)
def noise_multiplier_for_replace_one(target_epsilon: float, delta: float, sample_rate: float,
                                     steps: int) -> float:
    """The smallest noise multiplier (within 0.1%) whose replace-one epsilon,
    per :func:`epsilon_replace_one_rdp`, over ``steps`` steps at
    ``sample_rate`` is at most ``target_epsilon``; found by bisection and
    always on the safe side.  The tight replace-one PLD epsilon
    (:func:`epsilon_replace_one_pld`) is then checked too and sigma raised
    until it is within as well, so that every one of
    :data:`REPLACE_ONE_ACCOUNTANTS` is within the target.

    Raises:
        ConfigurationError: when no noise multiplier up to 1000 reaches the
            target, or an argument is out of range.
    """
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise ConfigurationError(f"target epsilon must be positive, got {target_epsilon}")
    if not 0.0 < delta < 1.0:
        raise ConfigurationError(f"delta must be in (0, 1), got {delta}")
    if not 0.0 < sample_rate <= 1.0 or steps < 1:
        raise ConfigurationError(
            f"sample rate must be in (0, 1] and steps >= 1, got {sample_rate}, {steps}"
        )

    def eps(sigma: float) -> float:
        return epsilon_replace_one_rdp(((sigma, sample_rate, steps),), delta)

    low, high = 0.1, 1.0
    while eps(high) > target_epsilon:
        low, high = high, high * 2
        if high > 1000:
            raise ConfigurationError(
                f"cannot reach replace-one epsilon {target_epsilon} at delta {delta} with"
                f" sample rate {sample_rate:.4g} over {steps} steps"
            )
    while high - low > 1e-3 * high:
        mid = (low + high) / 2
        if eps(mid) > target_epsilon:
            low = mid
        else:
            high = mid
    history = ((high, sample_rate, steps),)
    while not epsilon_replace_one_pld(history, delta) <= target_epsilon:
        high *= 1.001
        if high > 1000:
            raise ConfigurationError(
                f"cannot reach replace-one epsilon {target_epsilon} at delta {delta} by the"
                f" PLD accountant with sample rate {sample_rate:.4g} over {steps} steps"
            )
        history = ((high, sample_rate, steps),)
    return high
