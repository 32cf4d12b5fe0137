"""Differential privacy for federated clients: Opacus DP-SGD clients, the
accountants, the budget guard and the privacy ledger."""

from securefl.privacy.accounting import (
    AccountantKind,
    epsilon,
    epsilon_dp_accounting,
    noise_multiplier_for,
)
from securefl.privacy.budget import PrivacyBudget
from securefl.privacy.client import (
    DPConfig,
    LocalResult,
    PrivateClient,
    Weighting,
    make_private_compatible,
)
from securefl.privacy.ledger import LedgerEntry, Participation, PrivacyLedger, read_ledger

__all__ = [
    "AccountantKind",
    "DPConfig",
    "LedgerEntry",
    "LocalResult",
    "Participation",
    "PrivacyBudget",
    "PrivacyLedger",
    "PrivateClient",
    "Weighting",
    "epsilon",
    "epsilon_dp_accounting",
    "make_private_compatible",
    "noise_multiplier_for",
    "read_ledger",
]
