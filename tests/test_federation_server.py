"""The server: plain summation follows secure aggregation's dropout
semantics exactly, the weighted average is right, and the server optimizers
do what they promise."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.encoding import FixedPointCodec
from securefl.errors import AbortError, ConfigurationError
from securefl.federation.model import make_mlp
from securefl.federation.optimizers import (
    ServerOptimizer,
    ServerOptimizerConfig,
    ServerOptimizerKind,
)
from securefl.federation.server import AggregationMode, Server, plain_survivors
from securefl.protocol import Round, SecAggConfig, secure_sum

torch.set_num_threads(1)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=2, max_value=6).flatmap(lambda n: st.tuples(
    st.just(n),
    st.integers(min_value=1, max_value=n),
    st.lists(st.one_of(st.none(), st.sampled_from(list(Round))), min_size=n, max_size=n),
)))
def test_plain_dropout_semantics_match_secure_sum(case) -> None:
    n, threshold, where = case
    ids = tuple(range(1, n + 1))
    drops = {cid: rnd for cid, rnd in zip(ids, where, strict=True) if rnd is not None}
    inputs = {cid: np.full(3, cid, dtype=np.uint64) for cid in ids}
    config = SecAggConfig(num_clients=n, vector_length=3, bits=16, threshold=threshold,
                          client_ids=ids)
    try:
        secure = tuple(sorted(secure_sum(inputs, config, drops).survivors))
    except AbortError:
        secure = None
    try:
        plain = plain_survivors(ids, drops, threshold)
    except AbortError:
        plain = None
    assert plain == secure


def _server(mode: AggregationMode, kind: ServerOptimizerKind = ServerOptimizerKind.FEDAVG,
            max_weight: int = 1) -> tuple[Server, FixedPointCodec]:
    model = make_mlp(2, 2, 3, seed=0)
    shapes = tuple(tuple(p.shape) for p in model.parameters())
    codec = FixedPointCodec(shapes=shapes, bits=32, frac_bits=16, clip=4.0, num_clients=3,
                            max_weight=max_weight)
    return Server(model, codec, ServerOptimizerConfig(kind=kind), (1, 2, 3), mode=mode), codec


@pytest.mark.parametrize("mode", list(AggregationMode))
def test_weighted_average_of_the_survivors(mode: AggregationMode) -> None:
    server, codec = _server(mode, max_weight=100)
    rng = np.random.default_rng(0)
    values = {1: 1.0, 2: -2.0, 3: 3.5}
    weights = {1: 100, 2: 30, 3: 10}
    updates = {}
    for cid in values:
        tensors = [np.full(s, values[cid]) for s in codec.shapes]
        updates[cid] = (codec.encode(tensors, rng, weight=weights[cid])
                        if mode is AggregationMode.SECURE
                        else codec.encode_plain(tensors, weight=weights[cid]))
    # client 3 drops before sending its masked input: not in the sum
    outcome = server.aggregate(1, updates, {3: Round.MASKED_INPUT_COLLECTION})
    assert outcome.survivors == (1, 2)
    assert outcome.weight_total == 130
    expected = (100 * 1.0 + 30 * -2.0) / 130
    for tensor in outcome.average:
        np.testing.assert_allclose(tensor, expected, atol=3 * codec.resolution)
    before = [p.detach().clone() for p in server.model.parameters()]
    server.apply(outcome)
    for b, p, avg in zip(before, server.model.parameters(), outcome.average, strict=True):
        np.testing.assert_allclose((p.detach() - b).numpy(), avg, atol=1e-6)
    # a client that does not take part (None) counts as dropped before anything
    outcome = server.aggregate(2, {**updates, 2: None}, {})
    assert outcome.survivors == (1, 3)


def test_wrong_kind_of_update_is_refused() -> None:
    server, codec = _server(AggregationMode.PLAIN)
    rng = np.random.default_rng(0)
    encoded = codec.encode([np.zeros(s) for s in codec.shapes], rng)
    with pytest.raises(ConfigurationError, match="plain"):
        server.aggregate(1, {1: encoded, 2: encoded, 3: encoded}, {})
    with pytest.raises(ConfigurationError, match="unknown"):
        server.aggregate(1, {9: encoded}, {})


def test_server_optimizers() -> None:
    delta = [np.array([1.0, -2.0])]
    sgd = ServerOptimizer(ServerOptimizerConfig(kind=ServerOptimizerKind.FEDSGD, lr=0.5))
    step, state = sgd.step(delta)
    np.testing.assert_allclose(step[0], [0.5, -1.0])
    momentum = ServerOptimizer(ServerOptimizerConfig(kind=ServerOptimizerKind.FEDAVGM,
                                                     momentum=0.5))
    steps = []
    for _ in range(3):
        step, state = momentum.step(delta)
        momentum.commit(state)
        steps.append(step[0])
    np.testing.assert_allclose(steps, [[1, -2], [1.5, -3], [1.75, -3.5]])
    # step() alone does not change the state (an aborted round commits nothing)
    momentum.step(delta)
    assert momentum.state_dict()["t"] == 3
    adam = ServerOptimizer(ServerOptimizerConfig(kind=ServerOptimizerKind.FEDADAM, lr=0.1,
                                                 beta1=0.9, beta2=0.99, tau=1e-3))
    step, _ = adam.step(delta)
    expected = 0.1 * 0.1 * np.array([1.0, -2.0]) / (np.sqrt(0.01) * np.abs([1.0, 2.0]) + 1e-3)
    np.testing.assert_allclose(step[0], expected)
    restored = ServerOptimizer(momentum.config)
    restored.load_state_dict(momentum.state_dict())
    assert np.array_equal(restored.step(delta)[0][0], momentum.step(delta)[0][0])
    with pytest.raises(ConfigurationError):
        ServerOptimizerConfig(momentum=1.0)


def test_server_configuration_is_checked() -> None:
    model = make_mlp(2, 2, 3)
    shapes = tuple(tuple(p.shape) for p in model.parameters())
    codec = FixedPointCodec(shapes=shapes, num_clients=2)
    with pytest.raises(ConfigurationError, match="at least 2"):
        Server(model, codec, ServerOptimizerConfig(), (1,))
    with pytest.raises(ConfigurationError, match="threshold"):
        Server(model, codec, ServerOptimizerConfig(), (1, 2), threshold=3)
    with pytest.raises(ConfigurationError, match="bit budget covers 2"):
        Server(model, codec, ServerOptimizerConfig(), (1, 2, 3))
    other = FixedPointCodec(shapes=((1,),), num_clients=2)
    with pytest.raises(ConfigurationError, match="shapes"):
        Server(model, other, ServerOptimizerConfig(), (1, 2))
