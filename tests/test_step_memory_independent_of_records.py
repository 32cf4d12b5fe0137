"""A server that chooses the model's size against a client's memory.

A DP-SGD step keeps one gradient per sampled example (Opacus's
``grad_sample``: the Poisson batch, about ``q * n`` rows, times the model's
parameters).  A server that chose a model large enough (the Flower run
config's ``hidden``, within the node's ``securefl-max-vector-length``) made
the step run out of memory, so the node raised out of ``client_update`` and
dropped out of the round, only when it held many records: with a 600 MiB
memory headroom and a 1.5M-parameter MLP, nodes of 10 to 40 records always
answered and nodes of 160 or 320 records never did
(``/tmp/review-leak/leak2_memory_dropout.py`` in the review).  Now every
forward and backward pass takes exactly ``PHYSICAL_BATCH_SIZE`` examples
(chunks of the batch, the last padded with examples that contribute the zero
vector), so the memory of a step does not depend on the record count; the
mechanism (clipped sum over the sampled examples, noise once per step) is
unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefl.federation.model import make_mlp
from securefl.privacy.batches import CollatedBatches
from securefl.privacy.client import (
    PHYSICAL_BATCH_SIZE,
    DPConfig,
    PrivateClient,
    make_private_compatible,
)


def _client(n: int, sample_rate: float, *, seed: int = 5, reproducible: bool = False,
            hidden: int = 4) -> PrivateClient:
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = rng.integers(0, 3, n)
    config = DPConfig(noise_multiplier=1.0, sample_rate=sample_rate, planned_rounds=5,
                      batch_size=8, insecure_reproducible_noise=reproducible)
    model = make_private_compatible(make_mlp(6, 3, hidden, seed=1))
    return PrivateClient(1, model, x, y, config, seed=seed)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 150), sample_rate=st.sampled_from([0.02, 0.3, 0.5, 1.0]))
def test_every_pass_holds_the_same_number_of_examples_whatever_the_record_count(
        n: int, sample_rate: float) -> None:
    client = _client(n, sample_rate)
    sizes: list[int] = []
    rows: list[int] = []
    client._model.register_forward_hook(lambda module, inputs, output:
                                        sizes.append(int(inputs[0].shape[0])))
    clip = client._optimizer.clip_and_accumulate

    def counting_clip() -> None:
        rows.append(len(client._optimizer.params[0].grad_sample))
        clip()

    client._optimizer.clip_and_accumulate = counting_clip  # type: ignore[method-assign]
    result = client.train_round([p.detach().clone() for p in client.parameters()])
    assert sizes and set(sizes) == {PHYSICAL_BATCH_SIZE}
    assert set(rows) == {PHYSICAL_BATCH_SIZE}  # per-example gradients held at once
    assert result.steps == client.steps_per_round
    # the accountant counts logical steps, not passes
    assert client.history == [(1.0, sample_rate, client.steps_per_round)]
    assert client.zeroed_examples == 0  # padding is not counted as a zeroed record


@pytest.mark.parametrize("n", [1, 40, 97])
def test_chunked_steps_are_the_same_mechanism(n: int) -> None:
    """With the same (reproducible) randomness, passes of 3 examples give the
    update that one pass over the whole batch gives: the clipped per-example
    gradients are summed over the step's sampled examples and the noise is
    added once per step."""
    small, whole = (_client(n, 0.5, reproducible=True) for _ in range(2))
    small.physical_batch_size = 3
    whole.physical_batch_size = n  # the whole batch in one pass
    start = [p.detach().clone() for p in small.parameters()]
    a = small.train_round(start).update
    b = whole.train_round(start).update
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert small.history == whole.history


def test_a_record_that_raises_is_zeroed_in_a_padded_pass() -> None:
    """The one-example fallback counts only the sampled examples it zeroed,
    never the padding."""

    class RaisesOnLabelTwo(torch.nn.CrossEntropyLoss):
        def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            if bool((target == 2).any()):
                raise IndexError("label 2")
            return super().forward(output, target)

    x = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1])
    config = DPConfig(noise_multiplier=1.0, sample_rate=1.0, planned_rounds=5, batch_size=8)
    client = PrivateClient(1, make_private_compatible(make_mlp(6, 3, 4, seed=1)), x, y,
                           config, loss_fn=RaisesOnLabelTwo())
    client.train_round([p.detach().clone() for p in client.parameters()])
    # sample rate 1: every step samples all five records; only the one labelled 2 raised
    assert client.zeroed_examples == client.steps_per_round


class _InterruptedOnSecondPass(torch.nn.Module):
    """Raises ``KeyboardInterrupt`` (not an ``Exception``: it stops the round)
    on its second forward while ``armed``: mid-step, after one pass's clipped
    gradients were accumulated for a later pass."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.armed = False
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.armed and self.calls == 2:
            raise KeyboardInterrupt
        return self.linear(x)


def test_a_step_interrupted_mid_way_leaves_nothing_for_the_next_round() -> None:
    """The passes of a step accumulate their clipped gradients (Opacus's
    skipped virtual steps); a round interrupted between two passes left them,
    and the flag that keeps them, for the next call, whose first step then
    summed a stale partial batch.  The next round now equals a fresh
    client's."""
    x = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
    y = np.arange(200) % 3
    config = DPConfig(noise_multiplier=0.0, sample_rate=1.0, planned_rounds=10)
    model = _InterruptedOnSecondPass()
    weights = [p.detach().clone() for p in model.parameters()]
    client = PrivateClient(1, model, x, y, config)
    client._model.armed = True
    with pytest.raises(KeyboardInterrupt):
        client.train_round(weights)
    client._model.armed = False
    after = client.train_round(weights).update
    fresh = PrivateClient(1, model, x, y, config).train_round(weights).update
    for a, b in zip(after, fresh, strict=True):
        np.testing.assert_array_equal(a, b)


class _BagOfTokens(torch.nn.Module):
    """Sums token embeddings, the padding (token 0) masked out: each
    example's output and per-example gradient depend on its own tokens only,
    whatever the batch's padded length."""

    def __init__(self, vocab: int = 50) -> None:
        super().__init__()
        self.embedding = torch.nn.Embedding(vocab, 4)
        self.linear = torch.nn.Linear(4, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != 0).unsqueeze(-1).to(torch.float32)
        return self.linear((self.embedding(tokens) * mask).sum(dim=1))


@pytest.mark.parametrize("record_zero", ["out-of-vocabulary", "5000 tokens"])
def test_a_record_that_was_not_sampled_enters_no_pass(record_zero: str) -> None:
    """The last pass of a step was padded with example 0, sampled or not:
    a record 0 of 5000 tokens made every pass 5000 tokens long (its memory
    set by that record every step), and a record 0 the model raised on made
    every step fall back to one-example passes (33 forwards instead of 1 a
    step).  The padding now repeats the pass's own sampled examples."""
    lengths: list[int] = []

    def collate(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        longest = max(len(tokens) for tokens, _ in items)
        lengths.append(longest)
        batch = torch.zeros(len(items), longest, dtype=torch.long)
        for row, (tokens, _) in enumerate(items):
            batch[row, :len(tokens)] = tokens
        return batch, torch.tensor([label for _, label in items])

    generator = torch.Generator().manual_seed(0)
    first = (torch.tensor([49, 50, 3]) if record_zero == "out-of-vocabulary"
             else torch.randint(1, 50, (5000,), generator=generator))
    data = [(first, 0)] + [(torch.randint(1, 50, (5,), generator=generator), i % 2)
                           for i in range(40)]
    config = DPConfig(noise_multiplier=1.0, sample_rate=0.5, planned_rounds=5)
    client = PrivateClient(1, _BagOfTokens(), CollatedBatches(data, collate), None, config)

    def without_record_zero(n: int, rate: float) -> torch.Tensor:
        mask = torch.ones(n, dtype=torch.bool)
        mask[0] = False  # every other record sampled, never record 0
        return mask

    client.randomness.poisson_mask = without_record_zero  # type: ignore[method-assign]
    client.train_round([p.detach().clone() for p in client.parameters()])
    # 40 sampled examples a step: two passes, neither holding record 0
    assert lengths == [5] * (2 * client.steps_per_round)
    assert client.zeroed_examples == 0
