"""securefl: private federated learning.

Clients train with Opacus DP-SGD, mask their updates with Bonawitz-style
secure aggregation (the server learns only the sum), and every round's
privacy spend goes into an auditable ledger.

The secure aggregation core is importable without torch::

    from securefl import SecAggConfig, secure_sum
"""

from securefl import errors
from securefl.protocol import (
    AggregationResult,
    ClientSession,
    ClientStatus,
    CompleteGraph,
    Round,
    SecAggConfig,
    SecurityMode,
    ServerSession,
    secure_sum,
)

__version__ = "0.1.0"

__all__ = [
    "AggregationResult",
    "ClientSession",
    "ClientStatus",
    "CompleteGraph",
    "Round",
    "SecAggConfig",
    "SecurityMode",
    "ServerSession",
    "__version__",
    "errors",
    "secure_sum",
]
