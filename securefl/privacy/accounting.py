"""Privacy accounting: Opacus's RDP and PRV accountants, and Google's
``dp-accounting`` as an independent cross-check.

A client's privacy history is Opacus's: a list of ``(noise_multiplier,
sample_rate, steps)`` rows, each a Poisson-subsampled Gaussian mechanism
composed ``steps`` times.  Every epsilon here is computed by Opacus's own
analysis (``opacus.accountants``) or by ``dp_accounting``; nothing is
re-derived by hand.  Results are cached by history because a federation asks
the same question for many clients and rounds.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.analysis import rdp as opacus_rdp
from opacus.accountants.utils import get_noise_multiplier

from securefl.errors import ConfigurationError
from securefl.privacy.options import AccountantKind

__all__ = [
    "AccountantKind",
    "History",
    "HistoryRow",
    "epsilon",
    "epsilon_dp_accounting",
    "noise_multiplier_for",
]

HistoryRow = tuple[float, float, int]
"""``(noise_multiplier, sample_rate, steps)``, as in Opacus."""

History = tuple[HistoryRow, ...]


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


@functools.lru_cache(maxsize=4096)
def _epsilon_cached(history: History, delta: float, kind: AccountantKind) -> float:
    if not history or all(steps == 0 for _, _, steps in history):
        return 0.0
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
    return float(accountant.get_epsilon(delta=delta))


def epsilon(history: Sequence[Sequence[float]], delta: float,
            kind: AccountantKind = AccountantKind.RDP) -> float:
    """Epsilon spent at ``delta`` by a history, per Opacus's accountant ``kind``.

    Returns ``0.0`` for an empty history and ``math.nan`` when the PRV
    accountant cannot bound this history (Opacus raises for some extreme
    parameters, or asks for more memory than exists); RDP always returns a
    number (possibly ``inf``).

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


@functools.lru_cache(maxsize=4096)
def _dp_accounting_cached(history: History, delta: float) -> float:
    import dp_accounting

    accountant = dp_accounting.rdp.RdpAccountant()
    with _quiet_absl():
        for sigma, q, steps in history:
            if steps > 0:
                event = dp_accounting.PoissonSampledDpEvent(
                    q, dp_accounting.GaussianDpEvent(sigma))
                accountant.compose(event, steps)
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


@functools.lru_cache(maxsize=1024)
def noise_multiplier_for(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                         kind: AccountantKind = AccountantKind.RDP) -> float:
    """The noise multiplier that spends ``target_epsilon`` at ``delta`` over
    ``steps`` steps at ``sample_rate``, per Opacus's
    ``get_noise_multiplier`` (which returns a sigma whose epsilon is at most
    the target, within its tolerance of 0.01 below).

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
            return float(get_noise_multiplier(
                target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                steps=steps, accountant=AccountantKind(kind).value,
            ))
    except ValueError as exc:
        raise ConfigurationError(
            f"cannot reach epsilon {target_epsilon} at delta {delta} with sample rate"
            f" {sample_rate:.4g} over {steps} steps: {exc}"
        ) from None
