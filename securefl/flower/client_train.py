"""The ClientApp's training step, kept light to import.

Flower 1.4x starts a fresh ClientApp process for every message, and on two
cores five nodes importing torch, Opacus, scikit-learn and matplotlib at
once dominate a round.  This module imports only torch, Opacus and the
model; the node's data partition is loaded once (scikit-learn) and then kept
in the node's Context.  The node's accountant is kept on its own disk
(:mod:`securefl.flower.dpstate`), never only in the Context.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from securefl.errors import ConfigurationError
from securefl.federation.client_update import Admission, client_update
from securefl.federation.model import make_mlp
from securefl.federation.options import DEFAULT_TARGET_EPSILON
from securefl.federation.server import AggregationMode
from securefl.flower.dpstate import (
    NodeAccountantState,
    NodeAccountantStore,
    federation_key,
    state_dir,
)
from securefl.flower.mod import ENCODE_RECORD, ENCODED_RECORD, NODE_RECORD, node_client_id
from securefl.flower.policy import NodeDPLimits, allow_fresh_state, check_no_insecure_noise
from securefl.flower.setup import Key, SessionSetup
from securefl.privacy.accounting import AccountantKind
from securefl.privacy.client import (
    DEFAULT_SAMPLE_RATE,
    DPConfig,
    PrivateClient,
    Weighting,
    adjacency_for,
    calibrated_noise_multiplier,
    make_private_compatible,
)
from securefl.privacy.ledger import Participation
from securefl.privacy.noise import SeededRandomness

__all__ = ["dp_config", "node_dp_config", "node_store", "run_values", "train_private_client"]

PARTITION_RECORD = "securefl.partition"
"""Context state record caching the node's training partition."""


def _opt(value: Any, cast: type) -> Any:
    if value is None or value == "" or (isinstance(value, int | float) and value == 0):
        return None
    return cast(value)


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"expected a boolean, got {value!r}")


def run_values(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`~securefl.federation.simulation.SimulationConfig` keyword
    arguments a Flower run config describes (see
    :mod:`securefl.flower.federation` for the keys).

    Raises:
        ConfigurationError: a value of the wrong type.
    """
    c = run_config
    try:
        return {
            "num_clients": int(c.get("num-clients", 5)), "rounds": int(c.get("num-rounds", 3)),
            "dropout": float(c.get("expected-dropout", 0.0)),
            "noise_multiplier": _opt(c.get("noise-multiplier"), float),
            "target_epsilon": _opt(c.get("target-epsilon"), float),
            "batch_size": int(c.get("batch-size", 32)), "lr": float(c.get("lr", 1.0)),
            "hidden": int(c.get("hidden", 64)), "alpha": float(c.get("alpha", 0.5)),
            "clip_range": float(c.get("clip-range", 4.0)), "bits": int(c.get("bits", 32)),
            "server_momentum": float(c.get("server-momentum", 0.5)),
            "threshold": _opt(c.get("threshold"), int), "seed": int(c.get("seed", 0)),
            "sample_rate": float(c.get("sample-rate", DEFAULT_SAMPLE_RATE)),
            "local_epochs": int(c.get("local-epochs", 1)),
            "weighting": Weighting(str(c.get("weighting", Weighting.UNIFORM.value))),
            "insecure_reproducible_noise": _flag(c.get("insecure-reproducible-noise", False)),
            "graph": str(c.get("graph", "complete") or "complete"),
            "graph_degree": _opt(c.get("graph-degree"), int),
            "roster_delivery": str(c.get("roster-delivery", "full") or "full"),
        }
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"bad run config: {exc}") from None


def dp_config(run_config: Mapping[str, Any]) -> DPConfig:
    """The clients' DP-SGD configuration, as ``SimulationConfig.dp_config()``
    gives it for the same values (FedAvgM server optimizer)."""
    v = run_values(run_config)
    noise, target = v["noise_multiplier"], v["target_epsilon"]
    if noise is None and target is None:
        target = DEFAULT_TARGET_EPSILON
    return DPConfig(max_grad_norm=1.0, noise_multiplier=noise, target_epsilon=target,
                    delta=1e-5, planned_rounds=v["rounds"], sample_rate=v["sample_rate"],
                    batch_size=v["batch_size"], local_epochs=v["local_epochs"],
                    max_local_steps=None,
                    lr=v["lr"], accountant=AccountantKind.RDP, epsilon_budget=None,
                    insecure_reproducible_noise=v["insecure_reproducible_noise"])


def node_dp_config(run_config: Mapping[str, Any], limits: NodeDPLimits, *,
                   fl_round: int | None = None) -> DPConfig:
    """The DP-SGD configuration this node trains with: the run's
    (:func:`dp_config`, chosen by the server) within the node's own
    ``limits`` (its node config), with the node's budget.

    The noise multiplier is the run's, or the one calibrated from the run's
    target epsilon (at the run's delta, as the server computes it); the
    budget guard uses the node's budget (``limits.max_epsilon``, or the run's
    target if smaller) at ``min(limits.max_delta, the run's delta)``, so the
    node always has a budget of its own, whatever the run config says.

    Raises:
        DPLimitRefusedError: the run exceeds the node's limits (nothing
            trained, nothing charged).
        ConfigurationError: a bad run config.
    """
    run = dp_config(run_config)
    limits.check_weighting(run_values(run_config)["weighting"].value, fl_round=fl_round)
    limits.check(noise_multiplier=run.noise_multiplier, target_epsilon=run.target_epsilon,
                 sample_rate=run.sample_rate, fl_round=fl_round)
    sigma = calibrated_noise_multiplier(run, adjacency_for(run_values(run_config)["weighting"]))
    limits.check_noise(sigma, fl_round=fl_round)
    return replace(run, noise_multiplier=sigma, target_epsilon=None,
                   delta=limits.delta(run.delta),
                   epsilon_budget=limits.budget(run.target_epsilon))


def _partition(context: Context, client_id: int) -> tuple[np.ndarray, np.ndarray]:
    cached = context.state.config_records.get(PARTITION_RECORD)
    if cached is not None:
        rows, cols = int(cached["rows"]), int(cached["cols"])  # type: ignore[call-overload]
        x = np.frombuffer(bytes(cached["x"]), dtype=str(cached["x-dtype"])).reshape(rows, cols)  # type: ignore[arg-type]
        y = np.frombuffer(bytes(cached["y"]), dtype=str(cached["y-dtype"]))  # type: ignore[arg-type]
        return x.copy(), y.copy()
    from securefl.federation.data import load_digits_federated

    v = run_values(context.run_config)
    data = load_digits_federated(v["num_clients"], alpha=v["alpha"], seed=v["seed"])
    if not 1 <= client_id <= len(data.clients):
        raise ConfigurationError(f"client {client_id} has no partition (num-clients="
                                 f"{v['num_clients']})")
    x, y = data.clients[client_id - 1]
    x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)
    context.state.config_records[PARTITION_RECORD] = ConfigRecord({
        "x": x.tobytes(), "x-dtype": x.dtype.str, "rows": x.shape[0], "cols": x.shape[1],
        "y": y.tobytes(), "y-dtype": y.dtype.str, "classes": 10,
    })
    return x, y


def node_store(context: Context) -> NodeAccountantStore:
    """This node's accountant store for the context's run: its state
    directory (node config ``securefl-state-dir``), the federation
    (:func:`~securefl.flower.dpstate.federation_key`) and its client id.

    Raises:
        ConfigurationError: no client id in the node config.
    """
    return NodeAccountantStore(state_dir(context.node_config),
                               federation_key(context.run_id, context.run_config),
                               node_client_id(context))


def _session_setup(msg: Message) -> SessionSetup:
    record = msg.content.config_records.get(ENCODE_RECORD)
    raw = record.get(Key.SETUP) if record is not None else None
    if not isinstance(raw, bytes):
        raise ConfigurationError("train_private_client runs behind securefl_mod (the message"
                                 f" carries no {ENCODE_RECORD!r} record)")
    return SessionSetup.from_bytes(raw)


def _generators(client: PrivateClient) -> dict[str, bytes]:
    if not isinstance(client.randomness, SeededRandomness):
        return {}
    sampling, noise = client.randomness.generators
    return {"sampling": bytes(sampling.get_state().numpy().tobytes()),
            "noise": bytes(noise.get_state().numpy().tobytes())}


def _restore(client: PrivateClient, history: list[Any], generators: Mapping[str, bytes],
             where: str) -> None:
    seeded = isinstance(client.randomness, SeededRandomness)
    if generators and not seeded:
        raise ConfigurationError(f"{where} holds seeded generator states, but this node's"
                                 " noise comes from os.urandom")
    if seeded and generators:
        sampling, noise = client.randomness.generators  # type: ignore[attr-defined]
        try:
            sampling.set_state(torch.frombuffer(bytearray(generators["sampling"]),
                                                dtype=torch.uint8).clone())
            noise.set_state(torch.frombuffer(bytearray(generators["noise"]),
                                             dtype=torch.uint8).clone())
        except (KeyError, RuntimeError) as exc:
            raise ConfigurationError(f"{where}: bad generator state: {exc}") from None
    client.accountant.history = list(history)


def _witness(context: Context) -> tuple[int | None, int]:
    """What this SuperNode process remembers of the federation (the
    ``securefl.node`` Context record): the first round it saw, and how many
    charges it last wrote to disk."""
    record = context.state.config_records.get(NODE_RECORD)
    if record is None:
        return None, 0
    first, charges = record.get("first-round"), record.get("charges", 0)
    return (first if isinstance(first, int) and not isinstance(first, bool) else None,
            charges if isinstance(charges, int) and not isinstance(charges, bool) else 0)


def train_private_client(msg: Message, context: Context) -> Message:
    """The ClientApp's ``train`` behind :func:`~securefl.flower.securefl_mod`:
    one round of Opacus DP-SGD on this node's partition through
    :func:`~securefl.federation.client_update.client_update`, with the
    accountant kept on the node's disk (:mod:`securefl.flower.dpstate`).

    In order: the node refuses a run that asks for reproducible (insecure)
    noise (as the mod does), checks the run's DP parameters against its own
    limits (:class:`~securefl.flower.policy.NodeDPLimits`, node config
    ``securefl-max-epsilon`` ...; :func:`node_dp_config`), loads its
    accountant for this federation (refusing a corrupt or lost one), runs
    the budget guard on it (the node's own budget), writes and fsyncs the
    in-flight charge, trains (noise and Poisson sampling from ``os.urandom``),
    encodes the update with the session's codec (rounding from the OS CSPRNG), and
    settles the charge, all before it returns: nothing derived from training
    reaches the mod, let alone the server, before the spend is on disk.

    Returns the local model (``arrays``), the encoded update (one uint64
    array in the ``securefl.encoded`` ArrayRecord, which the mod masks) and
    the public ``dp-*`` metrics (noise multiplier, sample rate, steps,
    history) the mod forwards; the ``num-examples`` weight only under
    ``weighting = "examples"``.  The training loss and the record count are
    never returned.

    Raises:
        SetupRefusedError: the run config or the train config sets
            ``insecure-reproducible-noise``.
        DPLimitRefusedError: the run's DP parameters exceed the node's limits
            (the mod turns it into a refusal naming the rule).
        NodeStateError: the node's on-disk accountant is corrupt or lost.
        PrivacyBudgetExceededError: the round would exceed the budget (the
            mod turns it into an error reply: a dropout that spent nothing).
        EncodingError: the encoder refused the update (the steps stay spent).
        ConfigurationError: a bad run or node config, or no securefl_mod in
            front (no session setup in the message).
    """
    torch.set_num_threads(1)
    setup = _session_setup(msg)
    fl_round = setup.fl_round
    # the mod refuses these runs before the session starts; checked here too,
    # so that no path trains with noise the server can regenerate
    check_no_insecure_noise(context.run_config, msg.content.config_records.get("config"),
                            fl_round=fl_round)
    v = run_values(context.run_config)
    # the run's DP parameters within the node's own limits, with its own budget,
    # before the node touches its data
    config = node_dp_config(context.run_config,
                            NodeDPLimits.from_node_config(context.node_config),
                            fl_round=fl_round)
    cid = node_client_id(context)
    features, labels = _partition(context, cid)
    model = make_private_compatible(make_mlp(features.shape[1], 10, v["hidden"], seed=v["seed"]))
    # The seed reaches the client's randomness only with insecure reproducible noise.
    client = PrivateClient(cid, model, features, labels, config,
                           seed=v["seed"], weighting=v["weighting"])
    arrays = msg.content.array_records["arrays"].to_numpy_ndarrays()
    store = node_store(context)
    first_seen, witnessed = _witness(context)

    def remember(saved: NodeAccountantState) -> NodeAccountantState:
        context.state.config_records[NODE_RECORD] = ConfigRecord(
            {"first-round": first_seen if first_seen is not None else fl_round,
             "charges": len(saved.charges)})
        return saved

    with store.locked():
        state = store.load(fl_round, allow_fresh=allow_fresh_state(context.node_config),
                           first_seen=first_seen, witnessed=witnessed)
        _restore(client, state.history, state.generators, str(store.path))

        def charge(admission: Admission) -> None:
            nonlocal state
            state = remember(store.charge(state, fl_round, admission.planned))

        update = client_update(client, [torch.as_tensor(a) for a in arrays], setup.codec(),
                               fl_round, AggregationMode.SECURE, charge=charge)
        if update.refusal is Participation.REFUSED_BUDGET:
            remember(store.refuse_budget(state, fl_round))
        else:
            assert update.result is not None
            result = update.result
            remember(store.settle(state, [(result.noise_multiplier, result.sample_rate,
                                           result.steps)], generators=_generators(client)))
    if update.error is not None:
        raise update.error
    assert update.result is not None and update.encoded is not None
    result = update.result
    local = [p.detach().cpu().numpy().copy() for p in client.parameters()]
    values: dict[str, Any] = {
        "dp-noise-multiplier": float(result.noise_multiplier),
        "dp-sample-rate": float(result.sample_rate),
        "dp-steps": int(result.steps),
        "dp-history": [float(x) for row in client.history for x in row],
    }
    if client.weighting is Weighting.EXAMPLES:
        values["num-examples"] = int(result.weight)
    encoded = np.asarray(update.encoded.vector, dtype=np.uint64)  # type: ignore[union-attr]
    return Message(RecordDict({"arrays": ArrayRecord(local),
                               ENCODED_RECORD: ArrayRecord([encoded]),
                               "metrics": MetricRecord(values)}), reply_to=msg)
