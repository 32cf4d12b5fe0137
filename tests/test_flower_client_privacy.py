"""What a Flower node's training step hands to the securefl mod (everything
the mod may forward to the server): only public DP parameters by default; no
training loss, no record count, and no generator state in the node's Context
that could predict its noise (issue 10, items 1, 2 and 5)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("flwr", reason="flwr is not installed (pip install 'securefl[flower]')")

from flower_harness import server_task_identity
from flwr.app import ArrayRecord, Context, Message, MessageType, RecordDict

from securefl.federation.model import make_mlp
from securefl.flower.client_train import DP_CLIENT_RECORD, train_private_client
from securefl.privacy.client import make_private_compatible

RUN = {"num-rounds": 2, "num-clients": 3, "seed": 3, "noise-multiplier": 1.1, "hidden": 8}
PUBLIC = {"dp-noise-multiplier", "dp-sample-rate", "dp-steps", "dp-history"}


def _train_twice(run_config: dict[str, Any]) -> tuple[list[dict[str, Any]], Context]:
    context = Context(run_id=7, node_id=1000, node_config={"partition-id": 0},
                      state=RecordDict(), run_config=run_config)
    model = make_private_compatible(make_mlp(64, 10, 8, seed=3))
    arrays = ArrayRecord([p.detach().numpy() for p in model.parameters()])
    replies = []
    with server_task_identity():
        for _ in range(2):
            msg = Message(RecordDict({"arrays": arrays}), 1000, MessageType.TRAIN)
            reply = train_private_client(msg, context)
            replies.append(dict(reply.content.metric_records["metrics"]))
    return replies, context


def test_a_node_returns_only_public_dp_parameters_by_default() -> None:
    replies, context = _train_twice(RUN)
    for metrics in replies:
        assert set(metrics) == PUBLIC
        assert metrics["dp-sample-rate"] == 0.5 and metrics["dp-steps"] == 2
    assert replies[1]["dp-history"] == [1.1, 0.5, 4.0]  # accounting continues
    # nothing in the node's state predicts its noise: only what it has spent
    assert set(dict(context.state.config_records[DP_CLIENT_RECORD])) == {
        "history", "history-rows"}


def test_weighting_by_examples_sends_the_count_and_insecure_noise_carries_generators() -> None:
    replies, context = _train_twice({**RUN, "weighting": "examples",
                                     "insecure-reproducible-noise": True})
    assert all(set(m) == PUBLIC | {"num-examples"} for m in replies)
    assert replies[0]["num-examples"] > 1
    assert {"sampling-generator", "noise-generator"} <= set(
        dict(context.state.config_records[DP_CLIENT_RECORD]))
