"""One record must not decide, outside the noise, whether a client sends.

The attack (an adversarial review of 2026-12-03): the server chooses the
global weights.  It sets one hidden unit to ``ReLU(1e38 * x_0)``, which
overflows float32 exactly for records with ``x_0 > 3.4``.  Such a record's
per-example gradient holds an infinity; Opacus clips it by ``C / inf = 0`` and
``0 * inf`` is NaN, so the whole noised sum became NaN, the encoder refused
the update and the client dropped out of the round with status
``encoding-error``: seen by the server, with probability 0 without the record
and about 0.75 with it, so no (epsilon, delta) bound held whatever the ledger
said.  The client now zeroes such an example's gradient before clipping (its
contribution is the zero vector, within the clipping bound), and user-level
DP encodes a non-finite update as the zero vector (its zero-out neighbour).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.grad_sample import GradSampleModule
from torch import nn

from securefl.encoding import FixedPointCodec
from securefl.federation.client_update import client_update
from securefl.federation.model import make_mlp
from securefl.federation.server import AggregationMode
from securefl.privacy.client import DPConfig, PrivateClient, _ClientDPOptimizer
from securefl.privacy.distributed_encoding import RotatedCodec
from securefl.privacy.noise import OsRandomness

SEED = b"r" * 32
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


def _overflowing_global(model: nn.Module) -> list[torch.Tensor]:
    """The server's weights: hidden unit 0 is ``ReLU(1e38 * x_0)`` and feeds
    every logit a little."""
    weights = [torch.zeros_like(p) for p in model.parameters()]
    weights[0][0, 0] = 1e38
    weights[2][:, 0] = 1e-38
    return weights


def _data(with_record: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = np.clip(rng.normal(size=(40, 8)), -2.9, 2.9).astype(np.float32)
    y = rng.integers(0, 3, size=40)
    if with_record:
        record = np.zeros((1, 8), dtype=np.float32)
        record[0, 0] = 5.0  # an ordinary, finite record
        x, y = np.concatenate([x, record]), np.concatenate([y, [1]])
    return x, y


def test_one_record_no_longer_decides_whether_the_client_sends(caplog) -> None:
    """The reviewer's attack through the library's own client path: without
    the fix 0 of 40 rounds were refused without the record and about 30 of
    40 with it; now no round is refused either way, and every update is
    finite.  The zeroed examples are logged on the client only."""
    model = make_mlp(8, 3, 16, seed=0)
    config = DPConfig(noise_multiplier=1.0, sample_rate=0.5, planned_rounds=100)
    codec = FixedPointCodec(shapes=[tuple(p.shape) for p in model.parameters()], bits=32,
                            frac_bits=16, clip=4.0, num_clients=5)
    weights = _overflowing_global(model)
    zeroed = {}
    for with_record in (False, True):
        x, y = _data(with_record)
        refused = 0
        zeroed[with_record] = 0
        for _ in range(12):
            client = PrivateClient(1, model, x, y, config)
            update = client_update(client, weights, codec, 1, AggregationMode.SECURE)
            refused += update.refusal is not None
            assert update.result is not None
            assert all(np.isfinite(t).all() for t in update.result.update)
            zeroed[with_record] += client.zeroed_examples
        assert refused == 0
    # the attack's record is the only one that overflows: it was zeroed in
    # most rounds (sampled with probability 1 - 0.5^2 per round)
    assert zeroed[False] == 0 and zeroed[True] >= 1
    assert any("contributed nothing" in r.getMessage() for r in caplog.records)


def _optimizer(model: nn.Module) -> tuple[GradSampleModule, _ClientDPOptimizer]:
    module = GradSampleModule(model, batch_first=True, loss_reduction="sum")
    optimizer = _ClientDPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1),
                                   randomness=OsRandomness(), noise_multiplier=0.0,
                                   max_grad_norm=1.0, expected_batch_size=1,
                                   loss_reduction="sum")
    return module, optimizer


def _summed(x: torch.Tensor, y: torch.Tensor) -> tuple[list[torch.Tensor], int]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    module, optimizer = _optimizer(model)
    optimizer.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(module(x), y, reduction="sum")
    loss.backward()
    optimizer.clip_and_accumulate()
    return [p.summed_grad.clone() for p in optimizer.params], optimizer.zeroed_examples


@settings(max_examples=40, deadline=None)
@given(rows=st.lists(st.sampled_from(["ok", "nan", "inf", "-inf"]), min_size=1, max_size=8),
       column=st.integers(0, 2))
def test_a_non_finite_example_contributes_exactly_nothing(rows: list[str], column: int) -> None:
    """The clipped sum over a batch with non-finite examples equals, exactly,
    the clipped sum over the batch without them: each contributes the zero
    vector, so the sum's sensitivity stays the clipping bound."""
    values = {"ok": 0.5, "nan": math.nan, "inf": math.inf, "-inf": -math.inf}
    generator = torch.Generator().manual_seed(len(rows))
    x = torch.randn(len(rows), 3, generator=generator)
    for i, kind in enumerate(rows):
        if kind != "ok":
            x[i, column] = values[kind]
    y = torch.arange(len(rows)) % 2
    keep = torch.tensor([kind == "ok" for kind in rows])
    got, zeroed = _summed(x, y)
    assert zeroed == len(rows) - int(keep.sum())
    if keep.any():
        want, _ = _summed(x[keep], y[keep])
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)
    else:
        assert all(torch.equal(a, torch.zeros_like(a)) for a in got)
    assert all(torch.isfinite(a).all() for a in got)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_user_level_encodes_a_non_finite_update_as_its_zero_out_neighbour(bad: float) -> None:
    """User-level DP: an update holding a NaN or an infinity is encoded
    exactly as the zero vector, what the client's zero-out neighbour sends,
    with the same rounding draws; it is not a visible refusal."""
    codec = RotatedCodec(num_values=5, clip=1.0, gamma=100.0, bits=24)
    values = np.array([0.1, bad, 0.0, -0.2, 0.3], dtype=np.float64)

    def uniform(n: int) -> np.ndarray:
        return np.random.default_rng(7).integers(0, 1 << 53, size=n, dtype=np.uint64)

    got = codec.encode(values, SEED, uniform=uniform)
    want = codec.encode(np.zeros(5), SEED, uniform=uniform)
    assert np.array_equal(got.vector, want.vector) and got.clipped


def test_user_level_clips_a_finite_update_whose_squared_norm_overflows() -> None:
    """Finite values whose squares overflow float64 are clipped to the bound
    like any other long update (their norm is computed rescaled), not zeroed."""
    codec = RotatedCodec(num_values=4, clip=2.0, gamma=100.0, bits=24)
    clipped, was_clipped = codec.clip_values(np.array([1e200, -1e200, 0.0, 1e200]))
    assert was_clipped and math.isclose(float(np.linalg.norm(clipped)), 2.0, rel_tol=1e-12)
    assert np.allclose(clipped, 2.0 / math.sqrt(3) * np.array([1, -1, 0, 1]))
