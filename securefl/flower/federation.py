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
``pinned-keys`` (path, active mode), ``graph`` (``complete``, the default,
or ``harary``: SecAgg+ sparse graph), ``graph-degree`` (with ``harary``: the
even degree ``k``, 2..num-clients-2; 0: chosen with the threshold by
:func:`~securefl.protocol.params.find_graph_parameters`, as ``securefl
simulate --graph harary`` does), ``expected-dropout`` (the dropout rate the
finder sizes the graph for, default 0; Flower injects no dropouts),
``roster-delivery`` (``full``, the default: every node receives the whole key
roster; or ``merkle``, with ``graph = "harary"`` only: each node receives
its own and its neighbours' roster entries with Merkle inclusion proofs,
O(k log n) bytes instead of O(n); SPEC.md section 10.1a),
``min-survivors`` (the sessions' ``min_survivors``, 0 or absent: the
threshold, as before; in active mode it raises the consistency-signature
quorum, which SPEC.md [SEC-1] needs against clients colluding with the
server, and nodes whose ``securefl-graph-corrupt-fraction`` is above 0
refuse sessions without a large enough one; see docs/flower.md),
``output-dir`` (required: where the
artefacts go; the example's ServerApp picks a fresh directory when it is
empty, see :mod:`securefl.flower.runner`), ``federation-id`` (the name under
which each node keeps its DP accountant on its own disk; set it to make a run
resumable) and ``resume`` (bool: continue the run in ``output-dir``).  What a
node accepts is decided by the node's own policy
(:mod:`securefl.flower.policy`), not by this run config.

Resume: a new Flower run with ``resume = true``, the same ``output-dir``,
``federation-id`` and run config reopens the run store, restores the global
model and server optimizer of the last committed round and every client's
charged history, settles a round found in flight as aborted (its in-flight
charges kept: those nodes may have trained) and runs the rounds of work that
remain, so that ``num-rounds`` rounds of work are done in all.  The
ServerApp prints the per-round table of ``securefl simulate`` (``flwr run
--stream`` shows it) and raises :class:`FederationIncompleteError` when no
round completed or every client refused a round, so that Flower records the
run as failed.
"""

from __future__ import annotations

import dataclasses
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

from securefl.cli.simulate import HEADER, format_round, why_incomplete
from securefl.durable import atomic_write
from securefl.errors import AbortError, ConfigurationError, SecureFLError
from securefl.federation.optimizers import ServerOptimizerConfig
from securefl.federation.round import ClientOutcome, RoundRecorder, RoundReport
from securefl.federation.runstore import ResumeMismatchError
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
    "FederationIncompleteError",
    "run_federation",
    "simulation_config",
    "train_private_client",
]

SUMS_FILENAME = "sums.npz"
EVENTS_FILENAME = "events.jsonl"
_REFUSED = "node policy refused the setup: "


class FederationIncompleteError(SecureFLError):
    """The federation ran to its end, recorded, but no round completed or
    every client refused some round (the message says which and why)."""


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

    With run config ``resume = true`` it continues the run in
    ``output-dir`` instead (see the module docstring).

    Raises:
        ConfigurationError: bad run config, ``output-dir`` already holds a
            ledger or a run (and ``resume`` is not set), or ``resume`` of a
            run that was started without ``federation-id``.
        ResumeMismatchError: ``resume`` with another run config (the keys
            that differ are named, e.g. ``graph``, ``graph_degree``,
            ``roster_delivery``), security mode, graph or ``federation-id``.
        RunStoreError: ``resume`` of a directory that holds no run store.
        FederationIncompleteError: no round completed, or every client
            refused some round.
    """
    torch.set_num_threads(1)
    run_config = context.run_config
    config = simulation_config(run_config)
    if not run_config.get("output-dir"):
        raise ConfigurationError("set run config output-dir")
    out = Path(str(run_config["output-dir"]))
    resume = bool(run_config.get("resume", False))
    federation_id = str(run_config.get("federation-id", "") or "")
    if not resume:
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
    _min_survivors(run_config)  # a bad value is refused before anything is written
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
    # the graph and threshold `securefl simulate` would use for this config in
    # the sessions' security mode (SimulationConfig.secagg_plan: the degree
    # given, or fcp's parameter finder for expected-dropout, semi-malicious
    # server in active mode)
    plan = dataclasses.replace(config, security_mode=mode).secagg_plan()
    server = Server(model, codec, ServerOptimizerConfig(
        kind=config.server_optimizer, lr=config.server_lr, momentum=config.server_momentum),
        ids, mode=AggregationMode.SECURE, threshold=plan.threshold,
        name=f"securefl flower seed {config.seed}", security_mode=mode, graph=plan.graph,
        roster_delivery=plan.roster_delivery)
    if resume:
        recorder = RoundRecorder.resume(out, config=config, server=server, test=data.test,
                                        secure=True, round_json=_round_json)
    else:
        recorder = RoundRecorder.create(
            out, config=config, server=server, data_name=data.name, test=data.test,
            secure=True, config_extra={"runtime": "flower", "security_mode": mode.value,
                                       "graph_degree_used": plan.degree},
            round_json=_round_json,
            driver_state={"known": {}, "position": 0, "federation_id": federation_id})
    try:
        if resume:
            _check_resumable(recorder, mode, federation_id, plan.degree)
        _emit(HEADER)
        if resume:
            for report in recorder.reports:
                _emit(format_round(report, len(ids)))
            interrupted = recorder.settle_interrupted(
                detail="not sent the masked-input stage before the interruption")
            if interrupted is not None:
                _emit(format_round(interrupted, len(ids)))
        _run_rounds(grid, run_config, config, recorder, server, codec, mode, pinned)
    finally:
        recorder.close()
    incomplete = why_incomplete(recorder.reports, len(ids))
    if incomplete is not None:
        raise FederationIncompleteError(f"{out}: {incomplete}")


def _emit(line: str) -> None:
    """Print a line of the per-round table (the ServerApp's stdout is what
    ``flwr run --stream`` shows)."""
    print(line, flush=True)


def _check_resumable(recorder: RoundRecorder, mode: SecurityMode, federation_id: str,
                     degree: int | None) -> None:
    """Refuse to resume with another security mode, graph (``degree``: the
    Harary degree the sessions would use, None for the complete graph) or
    federation id, or a run started without a federation id (its nodes keep
    their accountants under the old Flower run id, which a new run does not
    have: they would refuse to train)."""
    stored = recorder.store.metrics_header.get("config", {})
    stored_mode = stored.get("security_mode")
    if stored_mode != mode.value:
        raise ResumeMismatchError(f"{recorder.out}: the run used security mode {stored_mode!r},"
                                  f" not {mode.value!r}", ["mode"])
    # runs from before sparse graphs over Flower recorded no degree: complete
    stored_degree = stored.get("graph_degree_used")
    if stored_degree != degree:
        def name(k: int | None) -> str:
            return "complete" if k is None else f"harary:k={k}"

        raise ResumeMismatchError(f"{recorder.out}: the run's sessions used the"
                                  f" {name(stored_degree)!r} graph, not {name(degree)!r}",
                                  ["graph"])
    stored_id = str(recorder.driver_state.get("federation_id", "") or "")
    if not stored_id:
        raise ConfigurationError(
            f"{recorder.out}: the run was started without run config federation-id, so its"
            " nodes keep their DP accountants under its Flower run id and would refuse a"
            " resumed run; start runs with federation-id set to make them resumable")
    if federation_id != stored_id:
        raise ResumeMismatchError(f"{recorder.out}: the run's federation-id is {stored_id!r},"
                                  f" not {federation_id!r}", ["federation-id"])


def _min_survivors(run_config: Mapping[str, Any]) -> int | None:
    """Run config ``min-survivors``: None when absent or 0 (the threshold).

    Raises:
        ConfigurationError: anything but an integer >= 0.
    """
    value = run_config.get("min-survivors", 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigurationError(f"run config min-survivors must be an integer >= 0 (0: the"
                                 f" threshold), got {value!r}")
    return value or None


def _load_sums(recorder: RoundRecorder) -> dict[str, np.ndarray]:
    """The exact sums of the committed, completed rounds (``sums.npz`` may
    hold the sum of a round whose commit never happened: it is left out)."""
    path = recorder.out / SUMS_FILENAME
    keep = {f"round_{r.round}" for r in recorder.reports if not r.aborted}
    if not path.exists() or not keep:
        return {}
    with np.load(path) as data:
        return {k: np.array(data[k]) for k in data.files if k in keep}


def _run_rounds(grid: Grid, run_config: Mapping[str, Any], config: SimulationConfig,
                recorder: RoundRecorder, server: Server, codec: Any, mode: SecurityMode,
                pinned: Any) -> None:
    """The rounds of work still to do: ``num-rounds`` minus those settled
    (a round settled as interrupted did no work: it is done again under the
    next round number)."""
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
        mode=mode, threshold=server.threshold, graph=server.graph,
        roster_delivery=server.roster_delivery,
        min_survivors=_min_survivors(run_config),
        timeout=float(run_config.get("round-timeout", 120.0)),
        pinned_keys=pinned, federation=server.name,
        authenticated_channels=bool(run_config.get("authenticated-channels", False)),
        allow_unauthenticated_semi_honest=bool(
            run_config.get("allow-unauthenticated-semi-honest", False))), codec, on_event=on_event)

    sums = _load_sums(recorder)
    driver = dict(recorder.driver_state)
    position = int(driver.get("position", recorder.next_round - 1))
    while position < config.rounds:
        round_number = recorder.next_round
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
            atomic_write(out / SUMS_FILENAME,
                         lambda handle: np.savez(handle, **sums))  # type: ignore[arg-type]
        position += 1
        driver.update(known={str(k): v for k, v in known.items()}, position=position)
        # with roster-delivery merkle: which one this round's session used
        # (full when too few nodes registered for the graph to be sparse)
        session = workflow.last_session
        delivery = session.roster_delivery if session is not None \
            and server.roster_delivery != "full" else None
        report = recorder.settle(round_number, outcome, outcomes, abort_reason=abort_reason,
                                 started=t0, driver_state=driver, roster_delivery=delivery)
        _emit(format_round(report, len(ids)))

    summaries = {
        cid: {"noise_multiplier": known.get(cid, {}).get("dp-noise-multiplier"),
              "sample_rate": known.get(cid, {}).get("dp-sample-rate"),
              "epsilon_budget": dp.epsilon_budget}
        for cid in ids
    }
    recorder.finish(summaries, sums_sha256={k: hashlib.sha256(v.tobytes()).hexdigest()
                                            for k, v in sums.items()})
