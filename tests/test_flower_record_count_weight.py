"""A server against the record count a ClientApp reports as its weight.

Behind ``securefl_mod``, a ClientApp whose ``train`` returns the
``num-examples`` metric (every Flower template does) had its record count
put into the secure sum as its weight whatever its node config said (the
node's consent, ``securefl-allow-weighting-examples``, was checked against
the run config's ``weighting`` only), and a server that announced a codec
``max_weight`` below a node's count saw that node drop out with an
``EncodingError``: with counts 7, 30, 120 and 55 and ``max_weight = 100``
exactly the node of 120 records dropped (``/tmp/review-leak/
leak3_generic_weight.py`` in the review).  Now the count needs the node's
consent (else a refusal naming the rule, whatever the count), and a count
beyond ``max_weight`` is clamped, in the mod and in ``client_update`` (the
simulator's and the example's DP path), so whether a node answers never
depends on its count."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr", reason="flwr is not installed (pip install 'securefl[flower]')")

import torch
from flower_harness import InProcessGrid, node_configs, server_task_identity
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefl.encoding import FixedPointCodec
from securefl.errors import AbortError
from securefl.federation.client_update import client_update
from securefl.federation.model import make_mlp
from securefl.federation.server import AggregationMode
from securefl.flower import SecureAggregationSettings, SecureAggregationWorkflow
from securefl.flower.mod import securefl_mod
from securefl.flower.policy import DPLimitRule
from securefl.privacy.client import DPConfig, PrivateClient, Weighting, make_private_compatible

NODES = 4


def _counting_app(counts: dict[int, int]) -> ClientApp:
    app = ClientApp(mods=[securefl_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        arrays = msg.content.array_records["arrays"].to_numpy_ndarrays()
        return Message(RecordDict({
            "arrays": ArrayRecord([a + np.float32(0.25) for a in arrays]),
            "metrics": MetricRecord({"num-examples": counts[context.node_id]})}), reply_to=msg)

    return app


def _round(counts: dict[int, int], max_weight: int, **node: Any) -> tuple[Any, InProcessGrid]:
    codec = FixedPointCodec(shapes=[(3,)], bits=32, frac_bits=8, clip=4.0,
                            num_clients=NODES, max_weight=max_weight)
    grid = InProcessGrid(_counting_app(counts), node_configs(NODES, **node), {})
    workflow = SecureAggregationWorkflow(SecureAggregationSettings(threshold=3, timeout=5.0),
                                         codec)
    with server_task_identity():
        result = workflow.run_round(grid, 1, ArrayRecord([np.zeros(3, np.float32)]),
                                    ConfigRecord({}))
    return result, grid


def test_a_count_needs_the_nodes_consent() -> None:
    counts = {1000 + i: c for i, c in enumerate((7, 30, 120, 55))}
    codec = FixedPointCodec(shapes=[(3,)], bits=32, frac_bits=8, clip=4.0,
                            num_clients=NODES, max_weight=200)
    grid = InProcessGrid(_counting_app(counts), node_configs(NODES), {})
    workflow = SecureAggregationWorkflow(SecureAggregationSettings(threshold=3, timeout=5.0),
                                         codec)
    with server_task_identity(), pytest.raises(AbortError):
        workflow.run_round(grid, 1, ArrayRecord([np.zeros(3, np.float32)]), ConfigRecord({}))
    # every node refused, by its policy, the same way whatever its count
    masked = [r for (_, stage, _, r) in grid.replies if stage == "masked-input-collection"]
    assert len(masked) == NODES
    reasons = set()
    for reply in masked:
        assert not reply.has_error() and not reply.content.metric_records
        record = dict(reply.content.config_records["securefl"])
        assert set(record) == {"refused", "reason"}
        assert record["refused"] == DPLimitRule.WEIGHTING.value
        reasons.add(record["reason"])
    assert len(reasons) == 1


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(counts=st.lists(st.integers(1, 300), min_size=NODES, max_size=NODES),
       max_weight=st.integers(1, 150))
def test_with_consent_every_node_answers_whatever_max_weight_the_server_announces(
        counts: list[int], max_weight: int) -> None:
    by_node = {1000 + i: c for i, c in enumerate(counts)}
    result, grid = _round(by_node, max_weight,
                          **{"securefl-allow-weighting-examples": True})
    assert sorted(result.survivors) == list(range(1, NODES + 1))
    assert not any(r.has_error() for (_, _, _, r) in grid.replies)
    assert int(result.total[-1]) == sum(min(c, max_weight) for c in counts)


def test_client_update_clamps_a_count_beyond_max_weight() -> None:
    """The DP path (the simulator's and the Flower example's): a client
    weighted by its 40 records, against a codec announcing max_weight 10,
    sends an update of weight 10 instead of refusing to encode."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 6)).astype(np.float32), rng.integers(0, 3, 40)
    model = make_private_compatible(make_mlp(6, 3, 4, seed=1))
    client = PrivateClient(1, model, x, y,
                           DPConfig(noise_multiplier=1.0, planned_rounds=3, batch_size=8),
                           weighting=Weighting.EXAMPLES)
    codec = FixedPointCodec(shapes=[tuple(p.shape) for p in model.parameters()], bits=32,
                            frac_bits=8, clip=4.0, num_clients=3, max_weight=10)
    start = [torch.as_tensor(p.detach().numpy()) for p in model.parameters()]
    for mode in AggregationMode:
        update = client_update(client, start, codec, 1, mode)
        assert update.error is None and update.encoded is not None
        assert update.encoded.weight == 10
