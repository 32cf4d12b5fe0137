"""What a Flower node's training step hands to the securefl mod (everything
the mod may forward to the server): only public DP parameters by default; no
training loss, no record count, and no generator state, in the node's Context
or on its disk, that could predict its noise (issue 10, items 1, 2 and 5).
The accountant itself lives on the node's disk (issue 12)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flwr", reason="flwr is not installed (pip install 'securefl[flower]')")

from flower_harness import server_task_identity
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from securefl.federation.model import make_mlp
from securefl.federation.simulation import preflight
from securefl.flower.client_train import node_store, train_private_client
from securefl.flower.federation import simulation_config
from securefl.flower.mod import ENCODE_RECORD, ENCODED_RECORD
from securefl.flower.setup import Key, SessionSetup
from securefl.privacy.client import make_private_compatible
from securefl.protocol.config import SecAggConfig

RUN = {"num-rounds": 2, "num-clients": 3, "seed": 3, "noise-multiplier": 1.1, "hidden": 8}
PUBLIC = {"dp-noise-multiplier", "dp-sample-rate", "dp-steps", "dp-history"}


def train_content(run_config: dict[str, Any], fl_round: int,
                  context: bytes = b"test") -> dict[str, Any]:
    """What a masked-input message carries to ``train``: the global model and
    the session setup."""
    _, codec = preflight(simulation_config(run_config))
    config = SecAggConfig(num_clients=3, vector_length=codec.vector_length, bits=codec.bits,
                          client_ids=(1, 2, 3), context=context)
    setup = SessionSetup.create(fl_round, config, codec)
    model = make_private_compatible(make_mlp(64, 10, int(run_config["hidden"]),
                                             seed=int(run_config["seed"])))
    return {"arrays": ArrayRecord([p.detach().numpy() for p in model.parameters()]),
            ENCODE_RECORD: ConfigRecord({Key.SETUP: setup.to_bytes()})}


def train_message(run_config: dict[str, Any], fl_round: int) -> Message:
    """A masked-input message as the securefl mod hands it to ``train``."""
    return Message(RecordDict(train_content(run_config, fl_round)), 1000, MessageType.TRAIN)


def _train_twice(run_config: dict[str, Any], state_dir: Path, **node: Any
                 ) -> tuple[list[dict[str, Any]], Context]:
    context = Context(run_id=7, node_id=1000,
                      node_config={"partition-id": 0, "securefl-state-dir": str(state_dir),
                                   **node},
                      state=RecordDict(), run_config=run_config)
    replies = []
    with server_task_identity():
        for fl_round in (1, 2):
            reply = train_private_client(train_message(run_config, fl_round), context)
            assert reply.content.array_records[ENCODED_RECORD].to_numpy_ndarrays()[0].dtype \
                == "uint64"
            replies.append(dict(reply.content.metric_records["metrics"]))
    return replies, context


def test_a_node_returns_only_public_dp_parameters_by_default(tmp_path: Path) -> None:
    replies, context = _train_twice(RUN, tmp_path)
    for metrics in replies:
        assert set(metrics) == PUBLIC
        assert metrics["dp-sample-rate"] == 0.5 and metrics["dp-steps"] == 2
    assert replies[1]["dp-history"] == [1.1, 0.5, 4.0]  # accounting continues
    # the Context holds no accountant (it lives on disk) and nothing that
    # predicts the noise; the disk holds only what the node has spent
    assert set(context.state.config_records) == {"securefl.partition", "securefl.node"}
    assert dict(context.state.config_records["securefl.node"]) == {"first-round": 1,
                                                                   "charges": 2}
    state = node_store(context).load(3)
    assert state.history == [(1.1, 0.5, 4)] and dict(state.generators) == {}


def test_weighting_by_examples_sends_the_count(tmp_path: Path) -> None:
    # weighting by examples makes the epsilon replace-one: 11.5 after one round
    # at sigma 1.1, above the node's default budget (10), so the node raises it
    replies, context = _train_twice({**RUN, "weighting": "examples"}, tmp_path,
                                    **{"securefl-max-epsilon": 30.0,
                                       "securefl-allow-weighting-examples": True})
    assert all(set(m) == PUBLIC | {"num-examples"} for m in replies)
    assert replies[0]["num-examples"] > 1
    assert dict(node_store(context).load(3).generators) == {}


@pytest.mark.parametrize("where", ["run", "train"])
def test_train_refuses_insecure_reproducible_noise(tmp_path: Path, where: str) -> None:
    """``train`` itself refuses noise the server could regenerate (the mod
    refuses it too, before the session): nothing is trained or charged."""
    from securefl.flower.policy import PolicyRule, SetupRefusedError

    run = {**RUN, "insecure-reproducible-noise": True} if where == "run" else RUN
    context = Context(run_id=7, node_id=1000,
                      node_config={"partition-id": 0, "securefl-state-dir": str(tmp_path)},
                      state=RecordDict(), run_config=run)
    with server_task_identity():
        message = train_message(RUN, 1)
        if where == "train":
            message.content.config_records["config"] = ConfigRecord(
                {"insecure_reproducible_noise": True})
        with pytest.raises(SetupRefusedError) as info:
            train_private_client(message, context)
    assert info.value.rule is PolicyRule.INSECURE_NOISE
    assert "securefl.node" not in context.state.config_records  # nothing charged
    assert not list(tmp_path.rglob("client-*.json"))


def test_train_refuses_to_run_without_the_mod(tmp_path: Path) -> None:
    from securefl.errors import ConfigurationError

    context = Context(run_id=7, node_id=1000, node_config={"partition-id": 0},
                      state=RecordDict(), run_config=RUN)
    with server_task_identity():
        message = train_message(RUN, 1)
        del message.content.config_records[ENCODE_RECORD]
        with pytest.raises(ConfigurationError, match="securefl_mod"):
            train_private_client(message, context)
