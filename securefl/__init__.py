"""securefl: private federated learning.

Clients train with Opacus DP-SGD, mask their updates with Bonawitz-style
secure aggregation (the server learns only the sum), and every round's
privacy spend goes into an auditable ledger.

The secure aggregation core is importable without torch::

    from securefl import SecAggConfig, secure_sum

``pip install securefl`` installs that core (numpy, cryptography, protobuf);
``pip install 'securefl[train]'`` adds federated training (torch, Opacus,
scikit-learn, matplotlib, tqdm, dp-accounting).  Importing a training module
without it raises :class:`~securefl.errors.MissingExtraError` (an
:class:`ImportError`) that names the extra.
"""

from securefl import _extras, errors
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

_extras.install()

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
