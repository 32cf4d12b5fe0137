"""securefl on the Flower runtime (optional extra ``flower``).

Drop-in replacements for Flower's SecAgg+:

* client side: :func:`securefl_mod` in place of ``secaggplus_mod``
  (``ClientApp(mods=[securefl_mod])``); each node accepts only setups its
  own :class:`NodePolicy` (node config) allows;
* server side: :class:`SecureAggregationWorkflow` in place of
  ``SecAggPlusWorkflow``: it drives securefl's :class:`ServerSession` over
  the ServerApp's ``Grid``, one message exchange per protocol round, and
  returns the exact sum of the survivors' encoded updates.

See ``docs/flower.md``.  Importing this package needs ``flwr``
(``pip install 'securefl[flower]'``).
"""

from __future__ import annotations

try:
    import flwr  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "securefl.flower needs Flower: pip install 'securefl[flower]'"
    ) from exc

from securefl.flower.keys import load_identity_key, load_pinned_keys, provision_identities
from securefl.flower.mod import node_client_id, node_policy, securefl_mod
from securefl.flower.policy import NodePolicy, PolicyRule, SetupRefusedError
from securefl.flower.setup import SessionSetup, Stage
from securefl.flower.workflow import (
    FlowerRoundResult,
    SecureAggregationSettings,
    SecureAggregationWorkflow,
    dropped_round,
    exchange,
)

__all__ = [
    "FlowerRoundResult",
    "NodePolicy",
    "PolicyRule",
    "SecureAggregationSettings",
    "SecureAggregationWorkflow",
    "SessionSetup",
    "SetupRefusedError",
    "Stage",
    "dropped_round",
    "exchange",
    "load_identity_key",
    "load_pinned_keys",
    "node_client_id",
    "node_policy",
    "provision_identities",
    "securefl_mod",
]
