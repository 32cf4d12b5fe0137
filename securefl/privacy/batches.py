"""A client's private examples, addressable by index, so that DP-SGD can draw
its Poisson-sampled batches from them.

DP-SGD's privacy analysis assumes Poisson sampling: at every step each record
joins the batch independently with the public probability ``q`` (so a batch
may be empty, and its size varies).  :class:`~securefl.privacy.client.PrivateClient`
draws that mask with the client's own randomness (``os.urandom``), then asks
its :class:`ClientBatches` for the chosen records.  This is what Opacus's
``DPDataLoader`` does to a ``DataLoader``: it keeps the data set and the
collate function and replaces the loader's sampler (shuffling, fixed batch
size) by a Poisson sampler; the loader's own order and batch size are not
used to sample.

Two kinds:

* :class:`TensorBatches`: features and targets as tensors with one row per
  example (what ``(x, y)`` arrays and most data sets collate to); a batch is
  two index selections;
* :class:`CollatedBatches`: a ``Dataset`` and a collate function (examples of
  different lengths, padded per batch; several inputs per example); a batch
  is ``collate_fn([dataset[i] for i in chosen])``.

A batch is ``(inputs, targets)``; ``inputs`` is a tensor, or a tuple of
tensors passed to the model as separate arguments.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import Any

import torch

__all__ = ["Batch", "ClientBatches", "CollatedBatches", "TensorBatches", "call_model",
           "empty_like"]

Batch = tuple[Any, torch.Tensor]
"""``(inputs, targets)``: ``inputs`` a tensor or a tuple of tensors."""


def empty_like(value: Any) -> Any:
    """``value`` (a tensor, or a tuple/list of them, nested) with zero rows:
    the batch a step gets when Poisson sampling chose no record."""
    if isinstance(value, torch.Tensor):
        return value[:0]
    if isinstance(value, tuple | list):
        return type(value)(empty_like(v) for v in value)
    return value


def call_model(model: Any, inputs: Any) -> Any:
    """``model(*inputs)`` for a tuple or list of inputs, else ``model(inputs)``."""
    return model(*inputs) if isinstance(inputs, tuple | list) else model(inputs)


class ClientBatches(abc.ABC):
    """A client's examples, addressable by index (an abstract base class:
    :class:`TensorBatches` and the data-set adapter implement it)."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """The number of examples."""

    @abc.abstractmethod
    def batch(self, index: torch.Tensor) -> Batch:
        """The examples at ``index`` (a 1-D long tensor, possibly empty) as
        ``(inputs, targets)``."""


class TensorBatches(ClientBatches):
    """Features and targets with one row per example.

    Args:
        features: a tensor of shape ``(n, ...)``.
        targets: a tensor of shape ``(n, ...)``.
    """

    def __init__(self, features: torch.Tensor, targets: torch.Tensor) -> None:
        if len(features) != len(targets):
            raise ValueError(f"{len(features)} feature rows but {len(targets)} targets")
        self.features = features
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def batch(self, index: torch.Tensor) -> Batch:
        return self.features[index], self.targets[index]


class CollatedBatches(ClientBatches):
    """A map-style data set of ``(input, target)`` items and the function that
    collates a list of them into a batch (a ``DataLoader``'s ``collate_fn``).

    An empty batch is the collate of one item with zero rows kept
    (:func:`empty_like`), so a step that sampled nobody still runs (and adds
    its noise), as Opacus's ``DPDataLoader`` does.

    Args:
        dataset: supports ``len`` and ``dataset[i]``.
        collate_fn: turns a list of items into ``(inputs, targets)``.
    """

    def __init__(self, dataset: Any, collate_fn: Callable[[Sequence[Any]], Any]) -> None:
        self.dataset = dataset
        self.collate_fn = collate_fn

    def __len__(self) -> int:
        return len(self.dataset)

    def batch(self, index: torch.Tensor) -> Batch:
        if len(index) == 0:
            inputs, targets = self.collate_fn([self.dataset[0]])
            return empty_like(inputs), empty_like(targets)
        inputs, targets = self.collate_fn([self.dataset[int(i)] for i in index])
        return inputs, targets
