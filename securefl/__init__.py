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

With the training extra, :func:`securefl.federate` runs a private federation
of your own model, data and loss (see :mod:`securefl.federation.api`); it is
imported on first use, so ``import securefl`` never loads torch.
"""

from typing import Any

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

_LAZY = {
    "federate": "securefl.federation.api",
    "FederationResult": "securefl.federation.api",
}
"""Names loaded on first use from a module of the ``train`` extra (PEP 562)."""

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'securefl' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted([*__all__, *_LAZY])
