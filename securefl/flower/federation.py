"""A whole private federation on the Flower runtime: the ServerApp and
ClientApp logic behind ``examples/flower_app``.

It trains the same model on the same data with the same DP-SGD clients,
encoding, server optimizer and privacy ledger as ``securefl simulate``
(:func:`securefl.federation.simulation.run_simulation`) and writes the same
``metrics.json``, ``ledger.jsonl`` and ``checkpoint.pt``, but the clients are
Flower SuperNodes and secure aggregation runs over the network with
:class:`~securefl.flower.workflow.SecureAggregationWorkflow` and
:func:`~securefl.flower.mod.securefl_mod`.  It also writes ``sums.npz`` (the
exact integer sum of every completed round, for audits and tests) and
``events.jsonl`` (one line per stage sent: progress).

Differences from the simulator, all due to real networks: a client trains
only when it reaches the masked-input stage (a node that drops earlier spends
no privacy); the server knows a client's DP parameters only from what it
forwards with its masked input, so a node that was sent the masked-input
stage (the message that makes it train) but never answered may have trained
and is charged the steps it was about to take (the in-flight rows, written
before that stage is sent, say which); nodes are invited to every round,
and a node that is offline is a dropout at ADVERTISE_KEYS.

Run config keys (``[tool.flwr.app.config]``, override with ``--run-config``):
``num-rounds``, ``num-clients``, ``seed``, ``noise-multiplier`` (0: use
``target-epsilon``), ``target-epsilon``, ``batch-size``, ``lr``, ``hidden``,
``alpha``, ``clip-range``, ``bits``, ``server-momentum``, ``threshold`` (0:
default), ``sample-rate`` (public Poisson rate, default 0.5), ``local-epochs``
(default 1: a Flower round costs a node half the simulator's default), ``weighting``
(``uniform``, the default, or ``examples``: replace-one epsilons),
``insecure-reproducible-noise`` (bool, INSECURE: noise seeded from ``seed``;
nodes refuse it), ``mode`` (``semi-honest``/``active``; empty: active when
``pinned-keys`` is set, else semi-honest), ``round-timeout`` (seconds),
``pinned-keys`` (path, active mode), ``output-dir`` (required: where the
artefacts go).  What a node accepts is decided by the node's own policy
(:mod:`securefl.flower.policy`), not by this run config.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid

from securefl.errors import AbortError, ConfigurationError
from securefl.federation.checkpoint import CHECKPOINT_FILENAME, save_checkpoint
from securefl.federation.model import evaluate
from securefl.federation.optimizers import ServerOptimizerConfig
from securefl.federation.reporting import (
    client_summary,
    final_metrics,
    ledger_epsilons,
    write_json_atomic,
)
from securefl.federation.server import AggregateOutcome, AggregationMode, Server
from securefl.federation.simulation import (
    METRICS_FILENAME,
    ClientRoundReport,
    RoundReport,
    SimulationConfig,
    load_data,
    preflight,
)
from securefl.flower.client_train import run_values, train_private_client
from securefl.flower.keys import load_pinned_keys
from securefl.flower.setup import Stage
from securefl.flower.workflow import (
    FlowerRoundResult,
    SecureAggregationSettings,
    SecureAggregationWorkflow,
)
from securefl.privacy.accounting import HistoryRow
from securefl.privacy.budget import compose
from securefl.privacy.client import calibrated_noise_multiplier
from securefl.privacy.ledger import LEDGER_FILENAME, LedgerEntry, Participation, PrivacyLedger
from securefl.protocol.config import Round, SecurityMode
from securefl.strictjson import sanitize

__all__ = [
    "EVENTS_FILENAME",
    "SUMS_FILENAME",
    "run_federation",
    "simulation_config",
    "train_private_client",
]

SUMS_FILENAME = "sums.npz"
EVENTS_FILENAME = "events.jsonl"
_REFUSED = "node policy refused the setup: "


def simulation_config(run_config: Mapping[str, Any]) -> SimulationConfig:
    """The :class:`SimulationConfig` a run config describes (the same
    federation ``securefl simulate`` would run with the same values).

    Raises:
        ConfigurationError: on invalid values.
    """
    return SimulationConfig(**run_values(run_config))


# -- the ServerApp ---------------------------------------------------------------------


def run_federation(grid: Grid, context: Context) -> None:
    """The ServerApp's ``main``: run ``num-rounds`` rounds of private
    federated training with secure aggregation over ``grid``.

    Raises:
        ConfigurationError: bad run config, or ``output-dir`` already holds
            a ledger.
    """
    torch.set_num_threads(1)
    started = time.perf_counter()
    run_config = context.run_config
    config = simulation_config(run_config)
    if not run_config.get("output-dir"):
        raise ConfigurationError("set run config output-dir")
    out = Path(str(run_config["output-dir"]))
    out.mkdir(parents=True, exist_ok=True)
    ledger = PrivacyLedger(out / LEDGER_FILENAME)
    if ledger.path.exists():
        raise ConfigurationError(f"{ledger.path} already exists: choose a fresh output-dir")
    if run_config.get("reproducible-rounding", False):
        raise ConfigurationError("reproducible-rounding was removed: every node rounds with"
                                 " randomness from its own OS CSPRNG")
    mode_value = str(run_config.get("mode", "") or "")
    if not mode_value:
        mode_value = (SecurityMode.ACTIVE if run_config.get("pinned-keys")
                      else SecurityMode.SEMI_HONEST).value
    try:
        mode = SecurityMode(mode_value)
    except ValueError:
        raise ConfigurationError(f"run config mode must be 'active' or 'semi-honest', got"
                                 f" {mode_value!r}") from None
    pinned = None
    if mode is SecurityMode.ACTIVE:
        if not run_config.get("pinned-keys"):
            raise ConfigurationError("active mode: set run config pinned-keys")
        pinned = load_pinned_keys(str(run_config["pinned-keys"]))
    data = load_data(config)
    dp = config.dp_config()
    model, codec = preflight(config, data)
    ids = tuple(range(1, config.num_clients + 1))
    server = Server(model, codec, ServerOptimizerConfig(
        kind=config.server_optimizer, lr=config.server_lr, momentum=config.server_momentum),
        ids, mode=AggregationMode.SECURE, threshold=config.threshold,
        name=f"securefl flower seed {config.seed}")
    events = out / EVENTS_FILENAME

    # the privacy each client has been charged so far, by the server: its
    # reported steps, or the planned steps of a round it may have trained in
    charged: dict[int, list[HistoryRow]] = {cid: [] for cid in ids}
    in_flight: dict[int, LedgerEntry] = {}  # this round's in-flight rows

    def planned(cid: int) -> HistoryRow:
        """The (sigma, q, steps) client ``cid`` is about to train with: as it
        last reported, or as the public DP-SGD configuration gives them (the
        same sample rate, steps per round and calibrated sigma for every
        node: nothing depends on its record count)."""
        metrics = known.get(cid)
        if metrics:
            return (float(metrics["dp-noise-multiplier"]), float(metrics["dp-sample-rate"]),
                    int(metrics["dp-steps"]))
        return (calibrated_noise_multiplier(dp, config.adjacency), float(dp.sample_rate),
                dp.steps_per_round)

    def ledger_row(cid: int, round_number: int, status: Participation,
                   row: HistoryRow, history: list[HistoryRow], *, survivors: int = 0,
                   where: Round | None = None) -> LedgerEntry:
        # in-flight and settled rows alike carry the run's noise source,
        # adjacency and weighting, and the epsilons stated for that adjacency
        return LedgerEntry(
            round=round_number, client_id=cid, status=status.value,
            entered_sum=status is Participation.INCLUDED, noise_multiplier=row[0],
            sample_rate=row[1], local_steps=row[2], delta=config.delta,
            **ledger_epsilons(history, config.delta, config.adjacency),
            accountant=config.accountant.value, epsilon_budget=dp.epsilon_budget,
            survivors=survivors, dropped_at=where.name if where is not None else None,
            history=[list(r) for r in history], secure_aggregation=True,
            noise_source=dp.noise_source.value, adjacency=config.adjacency.value,
            weighting=config.weighting.value)

    def on_event(fl_round: int, stage: str, detail: dict[str, Any]) -> None:
        if stage == Stage.MASKED_INPUT_COLLECTION.value and not in_flight:
            # the next message makes these nodes train: charge them first
            for cid in sorted(int(c) for c in detail.get("to", [])):
                row = planned(cid)
                in_flight[cid] = ledger_row(cid, fl_round, Participation.IN_FLIGHT, row,
                                            compose(charged[cid], [row]))
            ledger.begin_round(fl_round, [in_flight[c] for c in sorted(in_flight)])
        with open(events, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(sanitize({"round": fl_round, "stage": stage,
                                              "time": time.time(), **detail}),
                                    allow_nan=False) + "\n")

    workflow = SecureAggregationWorkflow(SecureAggregationSettings(
        mode=mode, threshold=config.threshold,
        timeout=float(run_config.get("round-timeout", 120.0)),
        pinned_keys=pinned, federation=server.name,
        authenticated_channels=bool(run_config.get("authenticated-channels", False)),
        allow_unauthenticated_semi_honest=bool(
            run_config.get("allow-unauthenticated-semi-honest", False))), codec, on_event=on_event)

    x_test, y_test = data.test
    last_eval = evaluate(model, x_test, y_test)
    known: dict[int, dict[str, Any]] = {}  # last DP metrics each client forwarded
    reports: list[RoundReport] = []
    sums: dict[str, np.ndarray] = {}
    completed = 0

    def checkpoint(round_number: int, survivors: tuple[int, ...]) -> None:
        save_checkpoint(out / CHECKPOINT_FILENAME, round=round_number,
                        model_state={k: v.clone() for k, v in model.state_dict().items()},
                        optimizer_state=server.optimizer.state_dict(),
                        extra={"config": config.to_json(), "survivors": list(survivors),
                               "ledger": ledger_anchor()})

    def ledger_anchor() -> dict[str, Any]:
        return {"round": ledger.settled_round, "head": ledger.settled_head}

    def metrics_doc(final: dict[str, Any] | None) -> dict[str, Any]:
        return {
            "config": {**config.to_json(), "frac_bits_used": codec.frac_bits,
                       "max_weight": codec.max_weight, "threshold_used": server.threshold,
                       "runtime": "flower", "security_mode": mode.value},
            "data": {"name": data.name, "test_size": len(y_test)},
            "rounds": [{**r.to_json(),
                        "refused_setup": {str(c.client_id): c.detail.removeprefix(_REFUSED)
                                          for c in r.clients if c.detail.startswith(_REFUSED)}}
                       for r in reports],
            "ledger": ledger_anchor(),
            "final": final,
        }

    ledger.create()
    checkpoint(0, ())
    write_json_atomic(out / METRICS_FILENAME, metrics_doc(None))
    for round_number in range(1, config.rounds + 1):
        t0 = time.perf_counter()
        in_flight.clear()
        arrays = ArrayRecord([p.detach().cpu().numpy() for p in server.global_parameters()])
        abort_reason = ""
        result: FlowerRoundResult | None
        try:
            result = workflow.run_round(grid, round_number, arrays,
                                        ConfigRecord({"server-round": round_number}))
        except AbortError as exc:
            result = None
            abort_reason = str(exc)
        survivors = result.survivors if result is not None else ()
        trained = dict(result.dp_metrics) if result is not None else {}
        dropped = result.dropped_at(mode) if result is not None else {}
        client_reports: list[ClientRoundReport] = []
        rows: list[LedgerEntry] = []
        for cid in ids:
            if cid in trained:
                known[cid] = trained[cid]
            if cid in survivors:
                status = Participation.INCLUDED
            elif result is None and cid in in_flight:
                status = Participation.ROUND_ABORTED
            else:
                status = Participation.DROPPED
            where: Round | None = dropped.get(cid)
            if result is not None and cid not in result.invited:
                where = Round.ADVERTISE_KEYS
            if cid in trained:
                metrics = trained[cid]
                row: HistoryRow = (float(metrics.get("dp-noise-multiplier", 0.0)),
                                   float(metrics.get("dp-sample-rate", 0.0)),
                                   int(metrics.get("dp-steps", 0)))
            elif cid in in_flight:
                # sent the masked-input stage, never answered: it may have
                # trained, so it is charged the steps it was about to take
                flight = in_flight[cid]
                row = (flight.noise_multiplier, flight.sample_rate, flight.local_steps)
            else:
                last = known.get(cid, {})
                row = (float(last.get("dp-noise-multiplier", 0.0)),
                       float(last.get("dp-sample-rate", 0.0)), 0)
            charged[cid] = compose(charged[cid], [row])
            entry = ledger_row(cid, round_number, status, row, charged[cid],
                               survivors=len(survivors), where=where)
            rows.append(entry)
            client_reports.append(ClientRoundReport(
                client_id=cid, status=status, entered_sum=cid in survivors, dropped_at=where,
                epsilon_rdp=entry.epsilon_rdp, epsilon_prv=entry.epsilon_prv,
                detail=_REFUSED + result.refused[cid] if result is not None
                and cid in result.refused else ""))
        if result is not None:
            server.apply(AggregateOutcome(average=result.decoded.average(), survivors=survivors,
                                          weight_total=result.decoded.weight_total))
            last_eval = evaluate(model, x_test, y_test)
            completed += 1
            sums[f"round_{round_number}"] = result.total
            np.savez(out / SUMS_FILENAME, **sums)
        ledger.settle_round(round_number, rows)  # at once, aborted or not
        checkpoint(round_number, survivors)
        eps_values = [c.epsilon_rdp for c in client_reports]
        prv_values = [c.epsilon_prv for c in client_reports if c.epsilon_prv is not None]
        reports.append(RoundReport(
            round=round_number, aborted=result is None, accuracy=last_eval.accuracy,
            loss=last_eval.loss, survivors=survivors, clients=tuple(client_reports),
            epsilon_max=max(eps_values), epsilon_max_prv=max(prv_values) if prv_values else None,
            delta=config.delta,
            seconds=time.perf_counter() - t0, abort_reason=abort_reason,
        ))
        write_json_atomic(out / METRICS_FILENAME, metrics_doc(None))

    summaries = [
        client_summary(cid, charged[cid], config.delta,
                       adjacency=config.adjacency,
                       noise_multiplier=known.get(cid, {}).get("dp-noise-multiplier"),
                       sample_rate=known.get(cid, {}).get("dp-sample-rate"),
                       epsilon_budget=dp.epsilon_budget)
        for cid in ids
    ]
    final = final_metrics(
        last_eval, summaries, reports, delta=config.delta, accountant=config.accountant.value,
        planned_rounds=config.rounds, completed=completed, secure=True,
        wall_seconds=time.perf_counter() - started,
        adjacency=config.adjacency.value, weighting=config.weighting.value,
        noise_source=dp.noise_source.value,
        sums_sha256={k: hashlib.sha256(v.tobytes()).hexdigest() for k, v in sums.items()})
    write_json_atomic(out / METRICS_FILENAME, metrics_doc(final))
