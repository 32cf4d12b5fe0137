"""Server optimizers, applied to the decoded average update.

They only post-process an already differentially private aggregate, so they
cost no privacy (Reddi et al., "Adaptive Federated Optimization", 2021).
Each treats the average client update ``delta`` (local minus global weights)
as a pseudo-gradient step: ``-delta`` is the pseudo-gradient.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from securefl.errors import ConfigurationError

__all__ = ["ServerOptimizer", "ServerOptimizerConfig", "ServerOptimizerKind"]


class ServerOptimizerKind(str, enum.Enum):
    """How the server applies the average update."""

    FEDAVG = "fedavg"
    """``w += lr * delta`` (McMahan et al. 2017)."""
    FEDAVGM = "fedavgm"
    """Server momentum: ``v = beta * v + delta; w += lr * v`` (Hsu et al. 2019)."""
    FEDADAM = "fedadam"
    """Adam on the pseudo-gradient (Reddi et al. 2021)."""
    FEDSGD = "fedsgd"
    """Clients take one DP-SGD step with local learning rate 1, so the update
    is minus their noisy gradient; the server applies ``w += lr * delta``."""


@dataclass(frozen=True)
class ServerOptimizerConfig:
    """Server optimizer hyper-parameters.

    Raises:
        ConfigurationError: on out-of-range values.
    """

    kind: ServerOptimizerKind = ServerOptimizerKind.FEDAVGM
    lr: float = 1.0
    momentum: float = 0.5
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", ServerOptimizerKind(self.kind))
        if not self.lr > 0:
            raise ConfigurationError(f"server learning rate must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigurationError(f"server momentum must be in [0, 1), got {self.momentum}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1 and self.tau > 0):
            raise ConfigurationError("FedAdam needs 0 <= beta1, beta2 < 1 and tau > 0")


class ServerOptimizer:
    """Turns an average update into the step applied to the global weights.

    :meth:`step` returns the step without touching its own state;
    :meth:`commit` adopts the new state.  The server commits only once the
    round has succeeded, so an aborted round leaves the optimizer as it was.
    """

    def __init__(self, config: ServerOptimizerConfig) -> None:
        self.config = config
        self._state: dict[str, Any] = {"t": 0, "m": None, "v": None}

    def step(self, average: Sequence[np.ndarray]) -> tuple[list[np.ndarray], dict[str, Any]]:
        """Return ``(step, new_state)`` for the average update ``average``."""
        c = self.config
        delta = [np.asarray(a, dtype=np.float64) for a in average]
        t = self._state["t"] + 1
        m_old = self._state["m"] or [np.zeros_like(d) for d in delta]
        v_old = self._state["v"] or [np.zeros_like(d) for d in delta]
        if c.kind is ServerOptimizerKind.FEDAVGM:
            m = [c.momentum * mo + d for mo, d in zip(m_old, delta, strict=True)]
            return [c.lr * x for x in m], {"t": t, "m": m, "v": None}
        if c.kind is ServerOptimizerKind.FEDADAM:
            m = [c.beta1 * mo + (1 - c.beta1) * d for mo, d in zip(m_old, delta, strict=True)]
            v = [c.beta2 * vo + (1 - c.beta2) * d * d for vo, d in zip(v_old, delta, strict=True)]
            out = [c.lr * mi / (np.sqrt(vi) + c.tau) for mi, vi in zip(m, v, strict=True)]
            return out, {"t": t, "m": m, "v": v}
        return [c.lr * d for d in delta], {"t": t, "m": None, "v": None}

    def commit(self, state: dict[str, Any]) -> None:
        """Adopt the state returned by :meth:`step`."""
        self._state = state

    def state_dict(self) -> dict[str, Any]:
        """A copy of the optimizer state (for checkpoints)."""
        return {"t": self._state["t"], "m": _copy_list(self._state["m"]),
                "v": _copy_list(self._state["v"])}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`."""
        self._state = {"t": int(state["t"]), "m": state.get("m"), "v": state.get("v")}


def _copy_list(arrays: list[np.ndarray] | None) -> list[np.ndarray] | None:
    return None if arrays is None else [a.copy() for a in arrays]
