"""Small models for the simulations, and their evaluation: :func:`evaluate`
for the built-in classification data sets, :func:`evaluate_loss` for any
model, data and loss (what :func:`securefl.federate` reports when no
``evaluate`` function is given)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from securefl.privacy.batches import ClientBatches, call_model

__all__ = ["Evaluation", "evaluate", "evaluate_loss", "make_mlp"]


def make_mlp(num_features: int, num_classes: int, hidden: int = 64, *, seed: int = 0) -> nn.Module:
    """A two-layer perceptron ``features -> hidden -> classes`` (ReLU), its
    weights drawn from a torch generator seeded with ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(num_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )


@dataclass(frozen=True)
class Evaluation:
    """Accuracy and mean cross-entropy loss on a data set."""

    accuracy: float
    loss: float


def evaluate(model: nn.Module, features: np.ndarray, labels: np.ndarray) -> Evaluation:
    """Evaluate ``model`` (in eval mode, without gradients) on a data set."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        x = torch.as_tensor(features, dtype=torch.float32)
        y = torch.as_tensor(labels, dtype=torch.long)
        logits = model(x)
        loss = float(nn.functional.cross_entropy(logits, y))
        accuracy = float((logits.argmax(dim=1) == y).float().mean())
    model.train(was_training)
    return Evaluation(accuracy=accuracy, loss=loss)


def evaluate_loss(model: nn.Module, data: ClientBatches,
                  loss_fn: Callable[[Any, torch.Tensor], torch.Tensor], *,
                  classification: bool, batch_size: int = 1024) -> dict[str, float]:
    """The model's mean loss on a data set (in eval mode, without gradients,
    ``batch_size`` examples at a time, each batch's mean loss weighted by its
    size) and, for class labels (``classification``), its accuracy (the
    arg-max over the output's second dimension).

    Returns:
        ``{"loss": ...}``, plus ``"accuracy"`` when ``classification``.
    """
    was_training = model.training
    model.eval()
    total, loss_sum, correct = 0, 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, len(data), batch_size):
                index = torch.arange(start, min(start + batch_size, len(data)))
                inputs, targets = data.batch(index)
                output = call_model(model, inputs)
                count = len(targets)
                loss_sum += float(loss_fn(output, targets)) * count
                if classification:
                    correct += int((output.argmax(dim=1) == targets).sum())
                total += count
    finally:
        model.train(was_training)
    metrics = {"loss": loss_sum / total if total else math.nan}
    if classification:
        metrics["accuracy"] = correct / total if total else math.nan
    return metrics
