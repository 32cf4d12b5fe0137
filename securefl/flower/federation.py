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
from securefl.federation.optimizers import ServerOptimizerConfig
from securefl.federation.round import ClientOutcome, RoundRecorder, RoundReport
from securefl.federation.server import AggregationMode, Server
from securefl.federation.simulation import SimulationConfig, load_data, preflight
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


def _round_json(report: RoundReport) -> dict[str, Any]:
    """A Flower round's ``metrics.json`` entry: the simulator's, and the nodes
    whose policy refused the session setup."""
    return {**report.to_json(),
            "refused_setup": {str(c.client_id): c.detail.removeprefix(_REFUSED)
                              for c in report.clients if c.detail.startswith(_REFUSED)}}


def run_federation(grid: Grid, context: Context) -> None:
    """The ServerApp's ``main``: run ``num-rounds`` rounds of private
    federated training with secure aggregation over ``grid``, recorded by
    :class:`~securefl.federation.round.RoundRecorder` (the simulator's
    recorder: the same run store, ledger, checkpoint and ``metrics.json``).

    Raises:
        ConfigurationError: bad run config, or ``output-dir`` already holds
            a ledger or a run.
    """
    torch.set_num_threads(1)
    run_config = context.run_config
    config = simulation_config(run_config)
    if not run_config.get("output-dir"):
        raise ConfigurationError("set run config output-dir")
    out = Path(str(run_config["output-dir"]))
    RoundRecorder.check_fresh(out)
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
    model, codec = preflight(config, data)
    ids = tuple(range(1, config.num_clients + 1))
    # the sessions' security mode sets the default threshold, so that the
    # recorded threshold_used is the one the sessions run with
    server = Server(model, codec, ServerOptimizerConfig(
        kind=config.server_optimizer, lr=config.server_lr, momentum=config.server_momentum),
        ids, mode=AggregationMode.SECURE, threshold=config.threshold,
        name=f"securefl flower seed {config.seed}", security_mode=mode)
    recorder = RoundRecorder.create(
        out, config=config, server=server, data_name=data.name, test=data.test, secure=True,
        config_extra={"runtime": "flower", "security_mode": mode.value},
        round_json=_round_json, driver_state={"known": {}})
    try:
        _run_rounds(grid, run_config, config, recorder, server, codec, mode, pinned)
    finally:
        recorder.close()


def _run_rounds(grid: Grid, run_config: Mapping[str, Any], config: SimulationConfig,
                recorder: RoundRecorder, server: Server, codec: Any, mode: SecurityMode,
                pinned: Any) -> None:
    dp = config.dp_config()
    ids = server.client_ids
    out = recorder.out
    events = out / EVENTS_FILENAME
    # the privacy each client has been charged so far, by the server: its
    # reported steps, or the planned steps of a round it may have trained in
    charged: dict[int, list[HistoryRow]] = {
        cid: [tuple(r) for r in recorder.client_states.get(cid, {}).get("history", [])]  # type: ignore[misc]
        for cid in ids}
    # the last DP metrics each client forwarded
    known: dict[int, dict[str, Any]] = {
        int(k): dict(v) for k, v in recorder.driver_state.get("known", {}).items()}

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

    def on_event(fl_round: int, stage: str, detail: dict[str, Any]) -> None:
        if stage == Stage.MASKED_INPUT_COLLECTION.value and not recorder.in_flight:
            # the next message makes these nodes train: charge them first
            charges = {}
            for cid in sorted(int(c) for c in detail.get("to", [])):
                row = planned(cid)
                charges[cid] = (row, compose(charged[cid], [row]))
            recorder.begin(fl_round, charges)
        with open(events, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(sanitize({"round": fl_round, "stage": stage,
                                              "time": time.time(), **detail}),
                                    allow_nan=False) + "\n")

    workflow = SecureAggregationWorkflow(SecureAggregationSettings(
        mode=mode, threshold=server.threshold,
        timeout=float(run_config.get("round-timeout", 120.0)),
        pinned_keys=pinned, federation=server.name,
        authenticated_channels=bool(run_config.get("authenticated-channels", False)),
        allow_unauthenticated_semi_honest=bool(
            run_config.get("allow-unauthenticated-semi-honest", False))), codec, on_event=on_event)

    sums: dict[str, np.ndarray] = {}
    for round_number in range(recorder.next_round, config.rounds + 1):
        t0 = time.perf_counter()
        recorder.in_flight = {}
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
        in_flight = recorder.in_flight
        outcomes: list[ClientOutcome] = []
        for cid in ids:
            if cid in trained:
                known[cid] = trained[cid]
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
            # status derived by the recorder: included, round-aborted (in
            # flight when the round aborted) or dropped
            outcomes.append(ClientOutcome(
                cid, row, charged[cid], dropped_at=where,
                detail=_REFUSED + result.refused[cid] if result is not None
                and cid in result.refused else ""))
        outcome = None
        if result is not None:
            # the server's one decoding path (Server.outcome_from_sum)
            outcome = server.outcome_from_sum(result.total, survivors)
            sums[f"round_{round_number}"] = result.total
            np.savez(out / SUMS_FILENAME, **sums)
        recorder.settle(round_number, outcome, outcomes, abort_reason=abort_reason, started=t0,
                        driver_state={"known": {str(k): v for k, v in known.items()}})

    summaries = {
        cid: {"noise_multiplier": known.get(cid, {}).get("dp-noise-multiplier"),
              "sample_rate": known.get(cid, {}).get("dp-sample-rate"),
              "epsilon_budget": dp.epsilon_budget}
        for cid in ids
    }
    recorder.finish(summaries, sums_sha256={k: hashlib.sha256(v.tobytes()).hexdigest()
                                            for k, v in sums.items()})
