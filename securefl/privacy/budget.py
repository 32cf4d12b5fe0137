"""The budget guard: a client refuses a round that would push it past its
privacy budget."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from securefl.errors import ConfigurationError, PrivacyBudgetExceededError
from securefl.privacy.accounting import (
    AccountantKind,
    HistoryRow,
    epsilon,
    epsilon_replace_one_rdp,
    epsilons,
    epsilons_for,
)

__all__ = ["PrivacyBudget", "compose", "projected_epsilon"]


@dataclass(frozen=True)
class PrivacyBudget:
    """A total privacy budget: at most ``epsilon`` at ``delta`` by every
    accountant of :data:`~securefl.privacy.accounting.ACCOUNTANTS`;
    ``accountant`` is the one whose epsilon :meth:`check` returns.

    Raises:
        ConfigurationError: on a non-positive epsilon or delta outside (0, 1).
    """

    epsilon: float
    delta: float
    accountant: AccountantKind = AccountantKind.RDP

    def __post_init__(self) -> None:
        if not (self.epsilon > 0 and not math.isnan(self.epsilon)):
            raise ConfigurationError(f"budget epsilon must be positive, got {self.epsilon}")
        if not 0.0 < self.delta < 1.0:
            raise ConfigurationError(f"budget delta must be in (0, 1), got {self.delta}")
        object.__setattr__(self, "accountant", AccountantKind(self.accountant))

    def check(self, history: Sequence[HistoryRow], planned: Sequence[HistoryRow],
              *, who: str = "client", adjacency: str = "add-remove-one") -> float:
        """Return the epsilon the client would have after ``planned`` steps,
        provided that **every** accountant of its ``adjacency`` keeps it within
        the budget (the audit fails a run on any of them): for add/remove-one
        the four of :data:`~securefl.privacy.accounting.ACCOUNTANTS` (the epsilon
        returned is :attr:`accountant`'s), for replace-one the two of
        :data:`~securefl.privacy.accounting.REPLACE_ONE_ACCOUNTANTS` (the
        replace-one RDP bound is returned).

        Raises:
            PrivacyBudgetExceededError: when that epsilon exceeds the budget by
                any accountant (or one cannot bound it); the message names the
                client, the epsilon so far, the projected epsilon, the
                accountant that exceeds and the budget.
        """
        composed = compose(history, planned)
        if adjacency == "add-remove-one":
            before = epsilon(history, self.delta, self.accountant)
            spent = f"{self.accountant.value}"
            values = epsilons(composed, self.delta, stop_above=self.epsilon)
        else:
            before = epsilon_replace_one_rdp(history, self.delta)
            spent = "replace-one RDP bound"
            values = epsilons_for(composed, self.delta, adjacency)
        over = {name: value for name, value in values.items()
                if not value <= self.epsilon}  # also refuses NaN
        if over:
            name, value = next(iter(over.items()))
            raise PrivacyBudgetExceededError(
                f"{who} refuses the round: it has spent epsilon {before:.3f}"
                f" ({spent}) and this round would take it to {value:.3f}"
                f" by {name} > its budget {self.epsilon:g} (delta {self.delta:g})"
            )
        if adjacency == "add-remove-one":
            return epsilon(composed, self.delta, self.accountant)
        return values["replace-one-rdp"]


def compose(history: Sequence[HistoryRow], planned: Sequence[HistoryRow]) -> list[HistoryRow]:
    """Append ``planned`` rows to ``history`` the way Opacus's accountants do
    (consecutive rows with the same noise multiplier and sample rate merge)."""
    rows = [tuple(r) for r in history]
    for sigma, q, steps in planned:
        if steps <= 0:
            continue
        if rows and rows[-1][0] == sigma and rows[-1][1] == q:
            rows[-1] = (sigma, q, rows[-1][2] + steps)
        else:
            rows.append((sigma, q, steps))
    return rows  # type: ignore[return-value]


def projected_epsilon(history: Sequence[HistoryRow], planned: Sequence[HistoryRow],
                      delta: float, kind: AccountantKind = AccountantKind.RDP) -> float:
    """Epsilon at ``delta`` after composing ``planned`` onto ``history``."""
    return epsilon(compose(history, planned), delta, kind)
