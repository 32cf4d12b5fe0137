"""What a federation writes at its end, shared by the in-process simulator and
the Flower ServerApp so that both produce the same ``metrics.json``.

``metrics.json`` is a server-side artefact: it holds only what the server
learns anyway (the aggregate, the survivors, public DP parameters and the
epsilons they imply), never a per-client record count, training loss or clip
count.  Every epsilon is stated for the federation's adjacency (see
:func:`round_epsilons`)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from securefl.errors import ConfigurationError
from securefl.privacy.accounting import (
    AccountantKind,
    epsilon,
    epsilon_dp_accounting,
    epsilon_replace_one_pld,
    epsilon_replace_one_rdp,
)
from securefl.privacy.options import Adjacency

PRIVATE_FIELDS = frozenset({"num_examples", "client_sizes", "train_loss", "clipped"})
"""Per-client values that never leave a client and so never appear in a
server-side artefact (:func:`client_summary` refuses them)."""


class _Evaluation(Protocol):
    accuracy: float
    loss: float


class _Round(Protocol):
    survivors: Any
    dropped: Any
    refused: Any


def finite_or_none(value: float | None) -> float | None:
    """JSON-friendly epsilon: None for NaN/None, ``inf`` kept as infinity."""
    if value is None or math.isnan(value):
        return None
    return value if math.isfinite(value) else math.inf


def write_json_atomic(path: Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file, fsync and
    ``os.replace``: readers see the old file or the new one, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, allow_nan=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def round_epsilons(history: Sequence[tuple[float, float, int]], delta: float,
                   adjacency: Adjacency) -> tuple[float, float | None]:
    """A history's ``(epsilon_rdp, epsilon_prv)`` as the ledger records them,
    stated for ``adjacency``:

    * add/remove-one: Opacus's RDP and PRV accountants (PRV None when it
      cannot bound the history);
    * replace-one: the RDP bound of
      :func:`~securefl.privacy.accounting.epsilon_replace_one_rdp`, and None
      for PRV (Opacus's PRV accountant states add/remove-one only).
    """
    if Adjacency(adjacency) is Adjacency.REPLACE_ONE:
        return epsilon_replace_one_rdp(history, delta), None
    prv = epsilon(history, delta, AccountantKind.PRV)
    return epsilon(history, delta, AccountantKind.RDP), None if math.isnan(prv) else prv


def client_summary(client_id: int, history: Sequence[tuple[float, float, int]], delta: float,
                   *, adjacency: Adjacency = Adjacency.ADD_REMOVE_ONE,
                   **fields: Any) -> dict[str, Any]:
    """One client's final privacy figures from its ``(sigma, q, steps)``
    history, stated for ``adjacency``: ``epsilon_rdp`` and ``epsilon_prv`` as
    :func:`round_epsilons` gives them, and ``epsilon_dp_accounting`` from
    Google's dp-accounting (its RDP accountant for add/remove-one, its PLD
    accountant with ``REPLACE_ONE`` for replace-one), plus any extra public
    ``fields`` (noise multiplier, budget...).

    Raises:
        ConfigurationError: when ``fields`` holds a private per-client value
            (:data:`PRIVATE_FIELDS`).
    """
    private = PRIVATE_FIELDS & set(fields)
    if private:
        raise ConfigurationError(
            f"client {client_id}: {sorted(private)} never leave a client and are not"
            " written to server-side artefacts")
    eps_rdp, eps_prv = round_epsilons(history, delta, adjacency)
    if Adjacency(adjacency) is Adjacency.REPLACE_ONE:
        eps_dpa = epsilon_replace_one_pld(history, delta)
    else:
        eps_dpa = epsilon_dp_accounting(history, delta) if history else 0.0
    return {
        "client_id": client_id,
        **fields,
        "adjacency": Adjacency(adjacency).value,
        "total_steps": sum(int(r[2]) for r in history),
        "epsilon_rdp": eps_rdp,
        "epsilon_prv": finite_or_none(eps_prv),
        "epsilon_dp_accounting": eps_dpa,
    }


def final_metrics(last_eval: _Evaluation, clients: Sequence[dict[str, Any]],
                  rounds: Sequence[_Round], *, delta: float, accountant: str,
                  planned_rounds: int, completed: int, secure: bool,
                  wall_seconds: float, **extra: Any) -> dict[str, Any]:
    """The ``final`` block of ``metrics.json``."""
    return {
        "accuracy": last_eval.accuracy,
        "loss": last_eval.loss,
        "epsilon_max": max(c["epsilon_rdp"] for c in clients),
        "epsilon_max_prv": finite_or_none(max(
            (c["epsilon_prv"] for c in clients if c["epsilon_prv"] is not None),
            default=math.nan)),
        "epsilon_max_dp_accounting": max(c["epsilon_dp_accounting"] for c in clients),
        "delta": delta,
        "accountant": accountant,
        "rounds_completed": completed,
        "rounds_aborted": planned_rounds - completed,
        "survivors_per_round": [len(r.survivors) for r in rounds],
        "dropped_per_round": [len(r.dropped) for r in rounds],
        "refused_per_round": [len(r.refused) for r in rounds],
        "secure_aggregation": secure,
        "wall_seconds": round(wall_seconds, 2),
        **extra,
        "clients": list(clients),
    }
