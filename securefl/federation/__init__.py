"""Federated learning: the global model and server, data sets, server
optimizers, checkpoints and the in-process simulation."""

from securefl.federation.data import (
    FederatedData,
    load_breast_cancer_federated,
    load_digits_federated,
)
from securefl.federation.model import evaluate, make_mlp
from securefl.federation.optimizers import ServerOptimizerConfig, ServerOptimizerKind
from securefl.federation.server import AggregationMode, Server
from securefl.federation.simulation import (
    DatasetName,
    RoundReport,
    SimulationConfig,
    SimulationResult,
    run_simulation,
)

__all__ = [
    "AggregationMode",
    "DatasetName",
    "FederatedData",
    "RoundReport",
    "Server",
    "ServerOptimizerConfig",
    "ServerOptimizerKind",
    "SimulationConfig",
    "SimulationResult",
    "evaluate",
    "load_breast_cancer_federated",
    "load_digits_federated",
    "make_mlp",
    "run_simulation",
]
