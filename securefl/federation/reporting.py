"""What a federation writes at its end, shared by the in-process simulator and
the Flower ServerApp so that both produce the same ``metrics.json``."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from securefl.privacy.accounting import (
    AccountantKind,
    epsilon,
    epsilon_dp_accounting,
    epsilon_pld,
)
from securefl.strictjson import sanitize


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
    """Write ``data`` as strict JSON (non-finite floats as documented in
    :mod:`securefl.strictjson`) to ``path`` through a temporary file, fsync,
    ``os.replace`` and a directory fsync: readers see the old file or the
    new one, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(sanitize(data), handle, indent=2, allow_nan=False)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def client_summary(client_id: int, history: Sequence[tuple[float, float, int]], delta: float,
                   **fields: Any) -> dict[str, Any]:
    """One client's final privacy figures from its ``(sigma, q, steps)``
    history: epsilon by Opacus RDP and PRV and by ``dp-accounting``'s RDP
    (``epsilon_dp_accounting``) and PLD (``epsilon_pld``), plus any
    extra ``fields`` (example count, noise multiplier, budget...)."""
    return {
        "client_id": client_id,
        **fields,
        "total_steps": sum(int(r[2]) for r in history),
        "epsilon_rdp": epsilon(history, delta, AccountantKind.RDP),
        "epsilon_prv": finite_or_none(epsilon(history, delta, AccountantKind.PRV)),
        "epsilon_dp_accounting": epsilon_dp_accounting(history, delta) if history else 0.0,
        "epsilon_pld": finite_or_none(epsilon_pld(history, delta)),
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
        "epsilon_max_pld": finite_or_none(max(
            (c["epsilon_pld"] for c in clients if c["epsilon_pld"] is not None),
            default=math.nan)),
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
