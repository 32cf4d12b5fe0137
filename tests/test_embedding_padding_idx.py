"""A token model whose embedding has a ``padding_idx``.

torch's gradient of the padding row is zero; Opacus's per-example gradient
of ``nn.Embedding`` ignores ``padding_idx`` and sums every padding token's
contribution into that row.  So an example's per-example gradient, and the
factor it is clipped by, depend on how far its batch is padded, which the
longest *other* sampled record decides: with 20 records of 3 tokens and
``C = 1``, adding one record of 300 tokens moved the clipped sum by 3.58
(``/tmp/review-rev2/repro_padding_idx.py``), beyond the sensitivity the
noise is calibrated to.  Such a layer is now refused up front, like a
BatchNorm; the same model with the padding masked in ``forward`` trains,
and there one record moves the clipped sum by at most ``C``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from securefl.errors import ModelIncompatibleError
from securefl.privacy import DPConfig, PrivateClient, make_private_compatible
from securefl.privacy.batches import CollatedBatches
from securefl.privacy.layers import incompatible_layers

torch.set_num_threads(1)


class _Tokens(nn.Module):
    def __init__(self, *, padding_idx: int | None, masked: bool) -> None:
        super().__init__()
        self.embedding = nn.Embedding(50, 8, padding_idx=padding_idx)
        self.linear = nn.Linear(8, 2)
        self.masked = masked

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        embedded = self.embedding(tokens)
        if self.masked:
            embedded = embedded * (tokens != 0).unsqueeze(-1).to(embedded.dtype)
        return self.linear(embedded.sum(dim=1))


def _collate(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(len(tokens) for tokens, _ in items)
    batch = torch.zeros(len(items), longest, dtype=torch.long)
    for row, (tokens, _) in enumerate(items):
        batch[row, :len(tokens)] = tokens
    return batch, torch.tensor([label for _, label in items])


def test_an_embedding_with_a_padding_idx_is_refused() -> None:
    model = _Tokens(padding_idx=0, masked=False)
    [layer] = incompatible_layers(model)
    assert layer.path == "embedding" and layer.layer == "Embedding"
    assert "padding_idx" in layer.reason and "mask" in layer.fix
    with pytest.raises(ModelIncompatibleError):
        make_private_compatible(model)
    with pytest.raises(ModelIncompatibleError):
        make_private_compatible(model, replace_incompatible_layers=True)
    with pytest.raises(ModelIncompatibleError):
        PrivateClient(1, model, CollatedBatches([(torch.tensor([1, 2]), 0)], _collate), None,
                      DPConfig(noise_multiplier=1.0))
    # a frozen embedding has no per-example gradient: nothing to refuse
    model.embedding.weight.requires_grad_(False)
    assert incompatible_layers(model) == []


def test_with_the_padding_masked_one_long_record_moves_the_sum_by_at_most_c() -> None:
    generator = torch.Generator().manual_seed(0)
    short = [(torch.randint(1, 50, (3,), generator=generator), i % 2) for i in range(20)]
    long = (torch.randint(1, 50, (300,), generator=generator), 0)
    torch.manual_seed(0)
    model = _Tokens(padding_idx=None, masked=True)
    start = [p.detach().clone() for p in model.parameters()]
    config = DPConfig(noise_multiplier=0.0, sample_rate=1.0, batch_size=1, lr=1.0,
                      max_grad_norm=1.0)

    def clipped_sum(data: list[tuple[torch.Tensor, int]]) -> np.ndarray:
        client = PrivateClient(1, model, CollatedBatches(data, _collate), None, config)
        return np.concatenate([-u.ravel() for u in client.train_round(start).update])

    moved = float(np.linalg.norm(clipped_sum([*short, long]) - clipped_sum(short)))
    assert moved <= 1.0 + 1e-4
