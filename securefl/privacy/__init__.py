"""Differential privacy for federated clients: Opacus DP-SGD clients, the
accountants, the budget guard and the privacy ledger.

Names are imported lazily (PEP 562), so that importing a light submodule
(``securefl.privacy.options``, ``securefl.privacy.ledger``) does not load
torch and Opacus.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AccountantKind": "options",
    "Adjacency": "options",
    "Weighting": "options",
    "epsilon": "accounting",
    "epsilon_dp_accounting": "accounting",
    "epsilon_max": "accounting",
    "epsilon_pld": "accounting",
    "epsilon_replace_one_pld": "accounting",
    "epsilon_replace_one_rdp": "accounting",
    "epsilons": "accounting",
    "epsilons_for": "accounting",
    "noise_multiplier_for": "accounting",
    "noise_multiplier_for_replace_one": "accounting",
    "NoiseSource": "options",
    "OsRandomness": "noise",
    "adjacency_for": "options",
    "PrivacyBudget": "budget",
    "DPConfig": "client",
    "LocalResult": "client",
    "PrivateClient": "client",
    "make_private_compatible": "client",
    "LedgerEntry": "ledger",
    "Participation": "ledger",
    "PrivacyLedger": "ledger",
    "load_ledger": "ledger",
    "read_ledger": "ledger",
    "UserLevelEntry": "ledger",
    "RotatedCodec": "distributed_encoding",
    "UserLevelPlan": "distributed",
    "PrivacyLevel": "distributed",
    "plan_user_level": "distributed",
    "user_level_epsilon": "distributed",
    "user_level_epsilons": "distributed",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'securefl.privacy' has no attribute {name!r}")
    return getattr(importlib.import_module(f"securefl.privacy.{module}"), name)


def __dir__() -> list[str]:
    return __all__
