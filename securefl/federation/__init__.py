"""Federated learning: the global model and server, data sets, server
optimizers, checkpoints, the round recorder and its run store, and the
in-process simulation.

Names are imported lazily (PEP 562), so that importing a light submodule
(``securefl.federation.options``, ``securefl.federation.optimizers``) does not
load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FederationResult": "api",
    "federate": "api",
    "DatasetName": "options",
    "FederatedData": "data",
    "load_breast_cancer_federated": "data",
    "load_digits_federated": "data",
    "evaluate": "model",
    "make_mlp": "model",
    "ServerOptimizerConfig": "optimizers",
    "ServerOptimizerKind": "optimizers",
    "AggregationMode": "server",
    "Server": "server",
    "RoundRecorder": "round",
    "RoundReport": "round",
    "SimulationConfig": "simulation",
    "SimulationResult": "simulation",
    "resume_simulation": "simulation",
    "run_simulation": "simulation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'securefl.federation' has no attribute {name!r}")
    return getattr(importlib.import_module(f"securefl.federation.{module}"), name)


def __dir__() -> list[str]:
    return __all__
