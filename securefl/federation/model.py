"""Small models for the simulations, and their evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

__all__ = ["Evaluation", "evaluate", "make_mlp"]


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
