"""PrivateClient's bring-your-own hooks: any loss (regression with real
targets), a local optimizer factory, and data drawn through a user's collate
function; none of them gets around per-example clipping."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from securefl.errors import ConfigurationError
from securefl.privacy import DPConfig, PrivateClient
from securefl.privacy.batches import CollatedBatches, TensorBatches

torch.set_num_threads(1)


def _regression(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3)).astype(np.float32)
    return x, (x @ np.array([[1.0], [-2.0], [0.5]], dtype=np.float32))


def _norm(update: list[np.ndarray]) -> float:
    return float(np.sqrt(sum(float((u.astype(np.float64) ** 2).sum()) for u in update)))


def _globals(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@settings(max_examples=10, deadline=None)
@given(scale=st.sampled_from([1.0, 1e3, 1e6]), clip=st.sampled_from([0.1, 1.0, 3.0]),
       momentum=st.sampled_from([0.0, 0.9]))
def test_no_loss_or_optimizer_gets_around_clipping(scale: float, clip: float,
                                                   momentum: float) -> None:
    # noise off, every record in the batch, one step of (momentum) SGD at lr
    # 1, divisor n: the update is the mean of clipped per-example gradients,
    # so its norm is at most the clip norm however large the loss's gradients
    x, y = _regression(20)
    model = nn.Linear(3, 1)
    config = DPConfig(noise_multiplier=0.0, sample_rate=1.0, batch_size=20,
                      max_local_steps=1, max_grad_norm=clip)
    client = PrivateClient(
        1, model, x, y * scale, config,
        loss_fn=lambda out, target: ((out - target) ** 4).mean(),
        optimizer=functools.partial(torch.optim.SGD, lr=1.0, momentum=momentum))
    result = client.train_round(_globals(model))
    assert 0 < _norm(result.update) <= clip * (1 + 1e-5)


def test_regression_with_real_targets_and_mse_learns() -> None:
    x, y = _regression(200)
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    client = PrivateClient(1, model, x, y, DPConfig(noise_multiplier=0.3, batch_size=100,
                                                      lr=0.5, local_epochs=10),
                           loss_fn=nn.MSELoss())
    with torch.no_grad():
        before = float(nn.functional.mse_loss(model(torch.as_tensor(x)), torch.as_tensor(y)))
    result = client.train_round(_globals(model))
    with torch.no_grad():
        for p, u in zip(model.parameters(), result.update, strict=True):
            p.add_(torch.as_tensor(u))
    with torch.no_grad():
        after = float(nn.functional.mse_loss(model(torch.as_tensor(x)), torch.as_tensor(y)))
    assert after < before / 2


def test_float_labels_stay_real_for_a_regression_loss() -> None:
    x, y = _regression(10)
    client = PrivateClient(1, nn.Linear(3, 1), x, y + 0.25, DPConfig(noise_multiplier=1.0),
                           loss_fn=nn.MSELoss())
    batches = client._batches
    assert isinstance(batches, TensorBatches)
    assert batches.targets.dtype == torch.float32
    assert torch.equal(batches.targets, torch.as_tensor(y + 0.25))  # not truncated to ints


def test_a_loss_that_sums_is_refused() -> None:
    x, y = _regression(10)
    with pytest.raises(ConfigurationError, match="reduction='mean'"):
        PrivateClient(2, nn.Linear(3, 1), x, y, DPConfig(noise_multiplier=1.0),
                      loss_fn=nn.MSELoss(reduction="sum"))


def test_an_optimizer_factory_must_optimize_the_given_parameters() -> None:
    x, y = _regression(10)
    stray = nn.Linear(3, 1)
    with pytest.raises(ConfigurationError, match="parameters it is given"):
        PrivateClient(2, nn.Linear(3, 1), x, y, DPConfig(noise_multiplier=1.0),
                      loss_fn=nn.MSELoss(),
                      optimizer=lambda params: torch.optim.SGD(stray.parameters(), lr=0.1))
    with pytest.raises(ConfigurationError, match=r"torch\.optim\.Optimizer"):
        PrivateClient(2, nn.Linear(3, 1), x, y, DPConfig(noise_multiplier=1.0),
                      loss_fn=nn.MSELoss(), optimizer=lambda params: None)


def test_the_local_optimizer_state_starts_fresh_every_round() -> None:
    x, y = _regression(20)
    model = nn.Linear(3, 1)
    client = PrivateClient(1, model, x, y, DPConfig(noise_multiplier=1.0, max_local_steps=2),
                           loss_fn=nn.MSELoss(),
                           optimizer=functools.partial(torch.optim.Adam, lr=1e-2))
    client.train_round(_globals(model))
    steps = [int(s["step"]) for s in client._optimizer.original_optimizer.state.values()]
    client.train_round(_globals(model))
    again = [int(s["step"]) for s in client._optimizer.original_optimizer.state.values()]
    assert steps == again == [2, 2]  # not 4: Adam restarted with the round


class _Bag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(20, 4, mode="mean")
        self.head = nn.Linear(4, 2)

    def forward(self, tokens: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.head(self.bag(tokens, offsets))


def test_a_collated_dataset_trains_through_the_users_collate() -> None:
    # bags of token ids of different lengths, collated as (tokens, offsets):
    # two inputs, passed to the model as two arguments
    rng = np.random.default_rng(1)
    items = [(torch.as_tensor(rng.integers(1, 20, size=int(rng.integers(1, 6)))), int(i % 2))
             for i in range(30)]
    seen: list[int] = []

    def bags(batch):
        seen.append(len(batch))
        lengths = torch.tensor([len(t) for t, _ in batch])
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
        tokens = torch.cat([t for t, _ in batch])
        return (tokens, offsets), torch.tensor([label for _, label in batch])

    torch.manual_seed(0)
    model = _Bag()
    client = PrivateClient(1, model, CollatedBatches(items, bags), None,
                           DPConfig(noise_multiplier=1.0, sample_rate=0.3, max_local_steps=3))
    result = client.train_round(_globals(model))
    assert result.steps == 3 and len(seen) == 3
    assert all(np.isfinite(u).all() for u in result.update)
    assert client.num_examples == 30


def test_labels_beside_client_batches_are_refused() -> None:
    x, y = _regression(5)
    batches = TensorBatches(torch.as_tensor(x), torch.as_tensor(y))
    with pytest.raises(ConfigurationError, match="inside its ClientBatches"):
        PrivateClient(1, nn.Linear(3, 1), batches, y, DPConfig(noise_multiplier=1.0))
