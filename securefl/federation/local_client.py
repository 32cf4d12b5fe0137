"""A client that trains without per-example DP: plain local SGD, for
federations whose only privacy is user-level distributed DP
(``privacy="user-level"``, docs/user-level-dp.md).

Under user-level DP the whole update is clipped and the secure sum carries
the Skellam noise: the guarantee covers everything a client's data does to
its update, however it trained.  There is then no record-level guarantee of
its own (beyond what user-level DP implies for any one record), so such a
client has no accountant and writes no record-level ledger row.  Its batches
are shuffled with a generator seeded from ``os.urandom`` (the order hides
nothing: the update is protected as a whole).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from securefl.errors import ConfigurationError
from securefl.privacy.batches import ClientBatches, call_model
from securefl.privacy.client import LocalResult, OptimizerFactory, client_batches

__all__ = ["LocalClient"]


class LocalClient:
    """Plain local training of one client (no clipping of examples, no
    noise): ``local_epochs`` passes over its data in shuffled minibatches of
    ``batch_size`` (``max_steps`` caps the steps; FedSGD: one full-batch
    step), with SGD at ``lr`` or the ``optimizer`` factory, from the global
    model every round.

    Raises:
        ConfigurationError: on empty or mismatched data, non-finite values,
            a loss that does not return a scalar, or out-of-range settings.
    """

    def __init__(self, client_id: int, model: nn.Module,
                 features: np.ndarray | torch.Tensor | ClientBatches,
                 labels: np.ndarray | torch.Tensor | None, *, batch_size: int,
                 local_epochs: int, lr: float, max_steps: int | None = None,
                 loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
                 optimizer: OptimizerFactory | None = None) -> None:
        who = f"client {client_id}"
        self._batches: ClientBatches = client_batches(who, features, labels)
        if batch_size < 1 or local_epochs < 1 or not (lr > 0 and math.isfinite(lr)) \
                or (max_steps is not None and max_steps < 1):
            raise ConfigurationError(f"{who}: batch_size, local_epochs and max_steps must be"
                                     f" >= 1 and lr > 0, got {batch_size}, {local_epochs},"
                                     f" {max_steps}, {lr}")
        self.client_id = int(client_id)
        self.num_examples = len(self._batches)
        self.batch_size = int(batch_size)
        per_epoch = math.ceil(self.num_examples / self.batch_size)
        steps = local_epochs * per_epoch
        self.steps_per_round = min(steps, max_steps) if max_steps is not None else steps
        self._full_batch = max_steps == 1
        self._model = copy.deepcopy(model)
        self._optimizer = (torch.optim.SGD(self._model.parameters(), lr=lr)
                           if optimizer is None else optimizer(self._model.parameters()))
        self._criterion = loss_fn if loss_fn is not None else nn.CrossEntropyLoss()
        self._generator = torch.Generator().manual_seed(
            int.from_bytes(os.urandom(8), "big") >> 1)

    def __repr__(self) -> str:
        return f"LocalClient(client_id={self.client_id})"

    @property
    def history(self) -> list[tuple[float, float, int]]:
        """No record-level accountant: always empty."""
        return []

    def parameters(self) -> list[torch.Tensor]:
        """The local model's parameters (live tensors)."""
        return list(self._model.parameters())

    def train_round(self, global_params: Sequence[torch.Tensor]) -> LocalResult:
        """Load the global weights, train one round, return local minus
        global (weight 1; ``noise_multiplier`` 0: no per-example noise).

        Raises:
            ConfigurationError: ``global_params`` does not match the model,
                or the loss is not a scalar.
        """
        local = self.parameters()
        if len(local) != len(global_params) or any(
                p.shape != g.shape for p, g in zip(local, global_params, strict=False)):
            raise ConfigurationError(f"client {self.client_id}: the global model does not"
                                     " match the local one")
        with torch.no_grad():
            for param, value in zip(local, global_params, strict=True):
                param.copy_(value)
        self._model.train()
        state = getattr(self._optimizer, "state", None)
        if state is not None:
            state.clear()  # a fresh local optimizer state every round
        steps, order, cursor = 0, torch.empty(0, dtype=torch.long), 0
        while steps < self.steps_per_round:
            if self._full_batch:
                index = torch.arange(self.num_examples)
            else:
                if cursor >= len(order):
                    order = torch.randperm(self.num_examples, generator=self._generator)
                    cursor = 0
                index = order[cursor:cursor + self.batch_size]
                cursor += self.batch_size
            self._optimizer.zero_grad(set_to_none=True)
            inputs, targets = self._batches.batch(index)
            loss = self._criterion(call_model(self._model, inputs), targets)
            if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
                raise ConfigurationError(f"client {self.client_id}: the loss must return a"
                                         " scalar tensor")
            loss.backward()
            self._optimizer.step()
            steps += 1
        with torch.no_grad():
            update = [(p.detach() - g.detach()).cpu().numpy().astype(np.float32)
                      for p, g in zip(local, global_params, strict=True)]
        return LocalResult(update=update, weight=1, steps=steps, noise_multiplier=0.0,
                           sample_rate=1.0)
