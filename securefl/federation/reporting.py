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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from securefl.durable import atomic_write
from securefl.errors import ConfigurationError
from securefl.privacy.accounting import (
    AccountantKind,
    epsilon,
    epsilon_dp_accounting,
    epsilon_pld,
    epsilon_replace_one_pld,
    epsilon_replace_one_rdp,
    epsilons_for,
)
from securefl.privacy.options import Adjacency
from securefl.strictjson import sanitize

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
    """Write ``data`` as strict JSON (non-finite floats as documented in
    :mod:`securefl.strictjson`) to ``path`` with :func:`securefl.durable.atomic_write`:
    readers see the old file or the new one, never half."""
    text = json.dumps(sanitize(data), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def _number(value: float) -> float | None:
    """None for an epsilon an accountant cannot bound (NaN)."""
    return None if math.isnan(value) else value


def ledger_epsilons(history: Sequence[Sequence[float]], delta: float,
                    adjacency: Adjacency | str) -> dict[str, float | None]:
    """The epsilon fields of a ledger row (``epsilon_rdp``, ``epsilon_prv``,
    ``epsilon_dpa_rdp``, ``epsilon_dpa_pld``) for a client's history, stated
    for ``adjacency``; exactly what ``securefl audit`` recomputes:

    * add/remove-one: Opacus's RDP and PRV, dp-accounting's RDP and PLD
      (:data:`~securefl.privacy.accounting.ACCOUNTANTS`);
    * replace-one: ``epsilon_rdp`` is the RDP bound of
      :func:`~securefl.privacy.accounting.epsilon_replace_one_rdp`,
      ``epsilon_dpa_pld`` dp-accounting's replace-one PLD
      (:func:`~securefl.privacy.accounting.epsilon_replace_one_pld`); the
      other two are None (those accountants state add/remove-one only).

    An accountant that cannot bound the history gives None (NaN in memory).
    """
    adjacency = Adjacency(adjacency)
    eps = epsilons_for(history, delta, adjacency.value)
    if adjacency is Adjacency.REPLACE_ONE:
        return {"epsilon_rdp": eps["replace-one-rdp"], "epsilon_prv": None,
                "epsilon_dpa_rdp": None, "epsilon_dpa_pld": _number(eps["replace-one-pld"])}
    return {"epsilon_rdp": eps["opacus-rdp"], "epsilon_prv": _number(eps["opacus-prv"]),
            "epsilon_dpa_rdp": _number(eps["dp-accounting-rdp"]),
            "epsilon_dpa_pld": _number(eps["dp-accounting-pld"])}


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
    history, stated for ``adjacency``, by the accountants the ledger records
    and ``securefl audit`` checks (:func:`round_epsilons`):

    * add/remove-one: ``epsilon_rdp`` and ``epsilon_prv`` (Opacus's RDP and
      PRV), ``epsilon_dp_accounting`` and ``epsilon_pld`` (Google
      dp-accounting's RDP and PLD);
    * replace-one: ``epsilon_rdp`` is the replace-one RDP bound
      (:func:`~securefl.privacy.accounting.epsilon_replace_one_rdp`),
      ``epsilon_pld`` dp-accounting's replace-one PLD
      (:func:`~securefl.privacy.accounting.epsilon_replace_one_pld`), and
      ``epsilon_prv`` and ``epsilon_dp_accounting`` are None (those
      accountants state add/remove-one only);

    plus any extra public ``fields`` (noise multiplier, budget...).

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
        eps_dpa: float | None = None
        eps_pld = epsilon_replace_one_pld(history, delta)
    else:
        eps_dpa = epsilon_dp_accounting(history, delta) if history else 0.0
        eps_pld = epsilon_pld(history, delta)
    return {
        "client_id": client_id,
        **fields,
        "adjacency": Adjacency(adjacency).value,
        "total_steps": sum(int(r[2]) for r in history),
        "epsilon_rdp": eps_rdp,
        "epsilon_prv": finite_or_none(eps_prv),
        "epsilon_dp_accounting": eps_dpa,
        "epsilon_pld": finite_or_none(eps_pld),
    }


def final_metrics(last_eval: _Evaluation, clients: Sequence[dict[str, Any]],
                  rounds: Sequence[_Round], *, delta: float, accountant: str,
                  planned_rounds: int, completed: int, secure: bool,
                  wall_seconds: float, **extra: Any) -> dict[str, Any]:
    """The ``final`` block of ``metrics.json``."""
    return {
        "accuracy": last_eval.accuracy,
        "loss": last_eval.loss,
        # no client summary (privacy user-level alone): no record-level epsilon
        "epsilon_max": max((c["epsilon_rdp"] for c in clients), default=None),
        "epsilon_max_prv": finite_or_none(max(
            (c["epsilon_prv"] for c in clients if c["epsilon_prv"] is not None),
            default=math.nan)),
        "epsilon_max_dp_accounting": finite_or_none(max(
            (c["epsilon_dp_accounting"] for c in clients
             if c["epsilon_dp_accounting"] is not None), default=math.nan)),
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
