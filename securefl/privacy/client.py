"""A federated client that trains with Opacus DP-SGD.

Each client owns **one** ``opacus.PrivacyEngine`` for the whole federation, so
its accountant composes every round it trains in.  Every round it loads the
global weights, runs DP-SGD locally (Poisson sampling, per-sample clipping,
Gaussian noise, all done by Opacus) and returns its update: local weights
minus global weights.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from securefl.errors import ConfigurationError
from securefl.privacy.accounting import (
    AccountantKind,
    HistoryRow,
    epsilon,
    noise_multiplier_for,
)
from securefl.privacy.budget import PrivacyBudget
from securefl.privacy.options import Weighting

__all__ = [
    "DPConfig",
    "LocalResult",
    "PrivateClient",
    "Weighting",
    "make_private_compatible",
]


@dataclass(frozen=True)
class DPConfig:
    """DP-SGD parameters shared by the clients of a federation.

    Exactly one of ``noise_multiplier`` and ``target_epsilon`` is given.  With
    ``target_epsilon`` each client turns it, once and up front, into the noise
    multiplier that spends exactly that budget over ``planned_rounds`` rounds
    at its own sample rate (Opacus's ``get_noise_multiplier``).

    Attributes:
        max_grad_norm: per-sample gradient clipping norm C.
        noise_multiplier: sigma (noise std is sigma * C).
        target_epsilon: total epsilon at ``delta`` over ``planned_rounds``.
        delta: the delta every epsilon is stated at.
        planned_rounds: how many rounds the federation plans.
        batch_size: expected (Poisson) batch size; the sample rate is
            ``1 / ceil(n_examples / batch_size)``.
        local_epochs: passes over the local data per round.
        max_local_steps: cap on DP-SGD steps per round (1 for FedSGD).
        lr: local SGD learning rate.
        accountant: the accountant the budget guard uses.
        epsilon_budget: a client refuses any round that would take it past this
            epsilon; defaults to ``target_epsilon`` (None: no guard).

    Raises:
        ConfigurationError: on inconsistent or out-of-range values.
    """

    max_grad_norm: float = 1.0
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    planned_rounds: int = 10
    batch_size: int = 32
    local_epochs: int = 1
    max_local_steps: int | None = None
    lr: float = 1.0
    accountant: AccountantKind = AccountantKind.RDP
    epsilon_budget: float | None = None

    def __post_init__(self) -> None:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ConfigurationError(
                "give exactly one of noise_multiplier and target_epsilon"
            )
        if self.noise_multiplier is not None and not (
            self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)
        ):
            raise ConfigurationError(
                f"noise multiplier must be >= 0, got {self.noise_multiplier}"
            )
        if self.target_epsilon is not None and not self.target_epsilon > 0:
            raise ConfigurationError(f"target epsilon must be > 0, got {self.target_epsilon}")
        if not 0 < self.delta < 1:
            raise ConfigurationError(f"delta must be in (0, 1), got {self.delta}")
        if not self.max_grad_norm > 0:
            raise ConfigurationError(f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        for name in ("planned_rounds", "batch_size", "local_epochs"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_local_steps is not None and self.max_local_steps < 1:
            raise ConfigurationError(f"max_local_steps must be >= 1, got {self.max_local_steps}")
        if not self.lr > 0:
            raise ConfigurationError(f"lr must be > 0, got {self.lr}")
        object.__setattr__(self, "accountant", AccountantKind(self.accountant))
        if self.epsilon_budget is None and self.target_epsilon is not None:
            object.__setattr__(self, "epsilon_budget", float(self.target_epsilon))
        if self.epsilon_budget is not None and not self.epsilon_budget > 0:
            raise ConfigurationError(f"epsilon budget must be > 0, got {self.epsilon_budget}")

    @property
    def budget(self) -> PrivacyBudget | None:
        """The per-client budget, if any."""
        if self.epsilon_budget is None:
            return None
        return PrivacyBudget(self.epsilon_budget, self.delta, self.accountant)


def make_private_compatible(model: nn.Module) -> nn.Module:
    """Return ``model`` if Opacus can train it, else ``ModuleValidator.fix``'s
    repaired copy (e.g. BatchNorm replaced by GroupNorm).

    Raises:
        ConfigurationError: carrying Opacus's own explanation, when even the
            fixed model cannot be trained with DP-SGD.
    """
    if not ModuleValidator.validate(model, strict=False):
        return model
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fixed = ModuleValidator.fix(copy.deepcopy(model))
    errors = ModuleValidator.validate(fixed, strict=False)
    if errors:
        explanation = "; ".join(str(e) for e in errors)
        raise ConfigurationError(f"Opacus cannot train this model: {explanation}")
    return fixed


@dataclass(frozen=True)
class LocalResult:
    """What a client produces in one round.

    Attributes:
        update: local minus global parameters, one float32 array per
            parameter, in ``model.parameters()`` order.
        weight: its integer weight (example count or 1).
        num_examples: its number of training examples.
        steps: DP-SGD steps taken this round.
        noise_multiplier, sample_rate: this round's DP-SGD parameters.
        loss: mean training loss over this round's non-empty batches.
    """

    update: list[np.ndarray]
    weight: int
    num_examples: int
    steps: int
    noise_multiplier: float
    sample_rate: float
    loss: float


class PrivateClient:
    """One federated client with its private data and its PrivacyEngine.

    Args:
        client_id: a positive integer (secure aggregation ids start at 1).
        model: the federation's model architecture (already Opacus-compatible,
            see :func:`make_private_compatible`); the client trains a copy.
        features: its private training data, one row per example; labels: their labels.
        config: DP-SGD parameters.
        seed: seeds its Poisson sampler and its noise generator.
        weighting: how its update is weighted.

    Raises:
        ConfigurationError: on empty data, mismatched lengths, or a target
            epsilon that cannot be reached.
    """

    def __init__(self, client_id: int, model: nn.Module, features: np.ndarray,
                 labels: np.ndarray, config: DPConfig, *, seed: int,
                 weighting: Weighting = Weighting.EXAMPLES) -> None:
        if len(features) == 0 or len(features) != len(labels):
            raise ConfigurationError(
                f"client {client_id} needs matching non-empty features and labels,"
                f" got {len(features)} and {len(labels)}"
            )
        self.client_id = int(client_id)
        self.config = config
        self.weighting = Weighting(weighting)
        self.num_examples = len(features)
        dataset = TensorDataset(torch.as_tensor(features, dtype=torch.float32),
                                torch.as_tensor(labels, dtype=torch.long))
        sampling = torch.Generator().manual_seed(int(seed) * 2 + 1)
        loader = DataLoader(dataset, batch_size=config.batch_size, generator=sampling)
        self.sample_rate = 1.0 / len(loader)
        per_round = config.local_epochs * len(loader)
        if config.max_local_steps is not None:
            per_round = min(per_round, config.max_local_steps)
        self.steps_per_round = per_round
        if config.noise_multiplier is not None:
            self.noise_multiplier = float(config.noise_multiplier)
        else:
            assert config.target_epsilon is not None
            self.noise_multiplier = noise_multiplier_for(
                float(config.target_epsilon), config.delta, self.sample_rate,
                per_round * config.planned_rounds, config.accountant,
            )
        self._model = copy.deepcopy(model)
        optimizer = torch.optim.SGD(self._model.parameters(), lr=config.lr)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Ss]ecure RNG.*")
            self.engine = PrivacyEngine(accountant=config.accountant.value)
            self._module, self._optimizer, self._loader = self.engine.make_private(
                module=self._model,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=self.noise_multiplier,
                max_grad_norm=config.max_grad_norm,
                poisson_sampling=True,
                noise_generator=torch.Generator().manual_seed(int(seed) * 2 + 2),
            )
        self._criterion = nn.CrossEntropyLoss()

    # -- privacy ------------------------------------------------------------------

    @property
    def history(self) -> list[HistoryRow]:
        """Opacus's accountant history ``[(sigma, q, steps), ...]`` (a copy)."""
        return [tuple(row) for row in self.engine.accountant.history]  # type: ignore[misc]

    def epsilon(self, kind: AccountantKind | None = None) -> float:
        """Epsilon spent so far at the configured delta."""
        return epsilon(self.history, self.config.delta, kind or self.config.accountant)

    def planned_round(self) -> list[HistoryRow]:
        """The history rows one more round would add."""
        return [(self.noise_multiplier, self.sample_rate, self.steps_per_round)]

    def check_budget(self) -> float | None:
        """Return the epsilon after one more round, or None without a budget.

        Raises:
            PrivacyBudgetExceededError: when that round would exceed the budget.
        """
        budget = self.config.budget
        if budget is None:
            return None
        return budget.check(self.history, self.planned_round(),
                            who=f"client {self.client_id}")

    # -- training -----------------------------------------------------------------

    def parameters(self) -> list[torch.Tensor]:
        """The local model's parameters (live tensors)."""
        return list(self._model.parameters())

    def train_round(self, global_params: Sequence[torch.Tensor]) -> LocalResult:
        """Load the global weights, run one round of DP-SGD, return the update.

        Callers check the budget first (:meth:`check_budget`); this method
        always trains, and its accountant always records the steps.

        Raises:
            ConfigurationError: when ``global_params`` does not match the model.
        """
        local = self.parameters()
        if len(local) != len(global_params):
            raise ConfigurationError(
                f"global model has {len(global_params)} tensors, client model {len(local)}"
            )
        with torch.no_grad():
            for param, value in zip(local, global_params, strict=True):
                if param.shape != value.shape:
                    raise ConfigurationError(
                        f"global tensor shape {tuple(value.shape)} != local {tuple(param.shape)}"
                    )
                param.copy_(value)
        self._module.train()
        with warnings.catch_warnings():
            # Opacus hooks the first layer, whose inputs never require grad.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            steps, losses = self._run_steps()
        with torch.no_grad():
            update = [(p.detach() - g.detach()).cpu().numpy().astype(np.float32)
                      for p, g in zip(local, global_params, strict=True)]
        weight = self.num_examples if self.weighting is Weighting.EXAMPLES else 1
        return LocalResult(
            update=update, weight=weight, num_examples=self.num_examples, steps=steps,
            noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate,
            loss=float(np.mean(losses)) if losses else math.nan,
        )

    def _run_steps(self) -> tuple[int, list[float]]:
        steps = 0
        losses: list[float] = []
        while steps < self.steps_per_round:
            for features, labels in self._loader:
                self._optimizer.zero_grad(set_to_none=True)
                output = self._module(features)
                loss = self._criterion(output, labels)
                loss.backward()
                self._optimizer.step()
                if len(labels):
                    losses.append(float(loss.detach()))
                steps += 1
                if steps >= self.steps_per_round:
                    break
        return steps, losses
