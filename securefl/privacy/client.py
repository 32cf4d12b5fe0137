"""A federated client that trains with Opacus DP-SGD.

Each client keeps **one** Opacus accountant for the whole federation, so it
composes every round it trains in.  Every round it loads the global weights,
runs DP-SGD locally (Poisson sampling at a public rate, per-sample clipping by
Opacus's ``GradSampleModule`` and ``DPOptimizer``, Gaussian noise) and returns
its update: local weights minus global weights.

What the server can learn from a client is only what the secure sum reveals,
and every parameter of the mechanism is public and the same for every client:

* the noise and the Poisson sampling come from
  :class:`~securefl.privacy.noise.OsRandomness` and the rounding of the update
  from :class:`~securefl.privacy.rounding.OsRounding` (both ``os.urandom``),
  never from a seed the server or the run configuration knows (the reproducible
  alternative exists only as ``DPConfig.insecure_reproducible_noise``);
* the sample rate, the steps per round, the noise multiplier and the divisor
  of each step's noisy gradient sum (``batch_size``) are configured constants,
  not functions of the client's record count ``n``;
* the update's weight in the secure sum is 1 (uniform weighting) unless the
  federation opts into weighting by ``n``, which then leaves the client: its
  epsilon is stated for replace-one adjacency (see :func:`adjacency_for`).

The training loss is computed on the raw private batches and is never
returned.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from opacus.accountants import create_accountant
from opacus.grad_sample import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.validators import ModuleValidator
from torch import nn

from securefl.errors import ConfigurationError
from securefl.privacy.accounting import (
    AccountantKind,
    HistoryRow,
    epsilon,
    epsilon_replace_one_rdp,
    noise_multiplier_for,
    noise_multiplier_for_replace_one,
)
from securefl.privacy.budget import PrivacyBudget
from securefl.privacy.noise import (
    ClientRandomness,
    NoiseSource,
    OsRandomness,
    SeededRandomness,
)
from securefl.privacy.options import Adjacency, Weighting, adjacency_for
from securefl.privacy.rounding import RoundingSource, rounding_randomness

__all__ = [
    "DEFAULT_SAMPLE_RATE",
    "DPConfig",
    "LocalResult",
    "PrivateClient",
    "Weighting",
    "adjacency_for",
    "calibrated_noise_multiplier",
    "make_private_compatible",
]

DEFAULT_SAMPLE_RATE = 0.5
"""The default Poisson sample rate: every record joins each step's batch with
probability 0.5, so one local epoch is 2 steps, for every client alike."""


@dataclass(frozen=True)
class DPConfig:
    """DP-SGD parameters shared by the clients of a federation.

    Every value is public (the server knows it) and the same for every
    client; none depends on a client's data.  Exactly one of
    ``noise_multiplier`` and ``target_epsilon`` is given.  With
    ``target_epsilon`` each client turns it, once and up front, into the noise
    multiplier that spends at most that budget over ``planned_rounds`` rounds
    by every accountant of its adjacency
    (:func:`~securefl.privacy.accounting.noise_multiplier_for`: all four
    add/remove-one accountants;
    :func:`~securefl.privacy.accounting.noise_multiplier_for_replace_one`:
    the replace-one RDP bound and PLD, when the weighting makes it
    replace-one).

    Attributes:
        max_grad_norm: per-sample gradient clipping norm C.
        noise_multiplier: sigma (noise std is sigma * C).
        target_epsilon: total epsilon at ``delta`` over ``planned_rounds``.
        delta: the delta every epsilon is stated at.
        planned_rounds: how many rounds the federation plans.
        sample_rate: the Poisson sample rate q: each record joins each step's
            batch independently with this probability.  One local epoch is
            ``round(1 / q)`` steps.
        batch_size: the public divisor of each step's noisy sum of clipped
            gradients (Opacus's ``expected_batch_size``), the same for every
            client; with the local ``lr`` it sets the local step size (the
            default 36 suits the digits demo, whose clients expect batches of
            about 72 at the default sample rate).  It is a constant, not
            ``q * n``:
            dividing by ``q * n`` would scale the noise by ``1 / n`` and let
            the server estimate ``n`` from the noise level of the sums.
        local_epochs: passes over the local data per round.
        max_local_steps: cap on DP-SGD steps per round (1 for FedSGD).
        lr: local SGD learning rate.
        accountant: the accountant the budget guard uses.
        epsilon_budget: a client refuses any round that would take it past this
            epsilon; defaults to ``target_epsilon`` (None: no guard).
        insecure_reproducible_noise: draw the noise, the Poisson sampling and
            the rounding from generators seeded with the client's public seed
            instead of ``os.urandom``.  INSECURE: whoever knows the seed (the
            server does) regenerates the noise, so there is no DP guarantee
            against them.  For debugging and regression tests only; recorded
            in the ledger as ``noise_source = "insecure-seeded"``.

    Raises:
        ConfigurationError: on inconsistent or out-of-range values.
    """

    max_grad_norm: float = 1.0
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    planned_rounds: int = 10
    sample_rate: float = DEFAULT_SAMPLE_RATE
    batch_size: int = 36
    local_epochs: int = 1
    max_local_steps: int | None = None
    lr: float = 1.0
    accountant: AccountantKind = AccountantKind.RDP
    epsilon_budget: float | None = None
    insecure_reproducible_noise: bool = False

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
        if not 0 < self.sample_rate <= 1:
            raise ConfigurationError(f"sample rate must be in (0, 1], got {self.sample_rate}")
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
        if not isinstance(self.insecure_reproducible_noise, bool | np.bool_):
            # a string such as "false" must not silently switch it on
            raise ConfigurationError(
                "insecure_reproducible_noise must be a bool, got"
                f" {self.insecure_reproducible_noise!r}")
        object.__setattr__(self, "insecure_reproducible_noise",
                           bool(self.insecure_reproducible_noise))
        if self.epsilon_budget is None and self.target_epsilon is not None:
            object.__setattr__(self, "epsilon_budget", float(self.target_epsilon))
        if self.epsilon_budget is not None and not self.epsilon_budget > 0:
            raise ConfigurationError(f"epsilon budget must be > 0, got {self.epsilon_budget}")

    @property
    def steps_per_round(self) -> int:
        """DP-SGD steps per round: ``local_epochs * round(1 / sample_rate)``,
        capped by ``max_local_steps`` (public: the same for every client)."""
        steps = self.local_epochs * max(1, round(1.0 / self.sample_rate))
        if self.max_local_steps is not None:
            steps = min(steps, self.max_local_steps)
        return steps

    @property
    def noise_source(self) -> NoiseSource:
        """Where the clients' noise comes from."""
        if self.insecure_reproducible_noise:
            return NoiseSource.INSECURE_SEEDED
        return NoiseSource.OS_CSPRNG

    @property
    def budget(self) -> PrivacyBudget | None:
        """The per-client budget, if any."""
        if self.epsilon_budget is None:
            return None
        return PrivacyBudget(self.epsilon_budget, self.delta, self.accountant)


def calibrated_noise_multiplier(config: DPConfig, adjacency: Adjacency) -> float:
    """The noise multiplier every client of a federation trains with: the
    configured one, or the one calibrated from ``target_epsilon`` over
    ``planned_rounds * steps_per_round`` steps at ``sample_rate`` so that
    every accountant of ``adjacency`` stays within the target (add/remove-one:
    :func:`~securefl.privacy.accounting.noise_multiplier_for`, all four
    accountants; replace-one:
    :func:`~securefl.privacy.accounting.noise_multiplier_for_replace_one`,
    the RDP bound and the PLD).  It depends only on public constants, so the
    server (the Flower ServerApp charging a node before it trains) computes
    the same value as the client.

    Raises:
        ConfigurationError: when the target cannot be reached.
    """
    if config.noise_multiplier is not None:
        return float(config.noise_multiplier)
    assert config.target_epsilon is not None
    total = config.steps_per_round * config.planned_rounds
    if Adjacency(adjacency) is Adjacency.REPLACE_ONE:
        return noise_multiplier_for_replace_one(
            float(config.target_epsilon), config.delta, float(config.sample_rate), total)
    return noise_multiplier_for(float(config.target_epsilon), config.delta,
                                float(config.sample_rate), total, config.accountant)


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
    """What a client sends in one round (all of it goes into the secure sum or
    is a public constant).

    Attributes:
        update: local minus global parameters, one float32 array per
            parameter, in ``model.parameters()`` order.
        weight: its integer weight in the sum: 1 (uniform weighting), or its
            record count (weighting by examples, replace-one adjacency).
        steps: DP-SGD steps taken this round (public: ``steps_per_round``).
        noise_multiplier, sample_rate: this round's DP-SGD parameters (public).
    """

    update: list[np.ndarray]
    weight: int
    steps: int
    noise_multiplier: float
    sample_rate: float


class _ClientDPOptimizer(DPOptimizer):
    """Opacus's DPOptimizer (clipping, summing, scaling, accounting hooks)
    with the Gaussian noise drawn from the client's :class:`ClientRandomness`
    instead of a ``torch.Generator``."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, randomness: ClientRandomness,
                 **kwargs: object) -> None:
        super().__init__(optimizer, **kwargs)  # type: ignore[arg-type]
        self.randomness = randomness

    def add_noise(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            noise = self.randomness.gaussian(std, tuple(p.summed_grad.shape),
                                             p.summed_grad.dtype)
            p.grad = (p.summed_grad + noise).view_as(p)
            _mark_as_processed(p.summed_grad)


class PrivateClient:
    """One federated client with its private data and its Opacus accountant.

    Args:
        client_id: a positive integer (secure aggregation ids start at 1).
        model: the federation's model architecture (already Opacus-compatible,
            see :func:`make_private_compatible`); the client trains a copy.
        features: its private training data, one row per example; labels: their labels.
        config: DP-SGD parameters.
        seed: the federation's public run seed; used only with
            ``config.insecure_reproducible_noise`` (then it seeds, with the
            client id, the sampling, noise and rounding generators, see
            :class:`~securefl.privacy.noise.SeededRandomness`), ignored
            otherwise: the randomness comes from ``os.urandom``.
        weighting: how its update is weighted (see :func:`adjacency_for`).

    Raises:
        ConfigurationError: on empty data, mismatched lengths, a target
            epsilon that cannot be reached, or insecure reproducible noise
            without a seed.
    """

    def __init__(self, client_id: int, model: nn.Module, features: np.ndarray,
                 labels: np.ndarray, config: DPConfig, *, seed: int | None = None,
                 weighting: Weighting = Weighting.UNIFORM) -> None:
        if len(features) == 0 or len(features) != len(labels):
            raise ConfigurationError(
                f"client {client_id} needs matching non-empty features and labels,"
                f" got {len(features)} and {len(labels)}"
            )
        self.client_id = int(client_id)
        self.config = config
        self.weighting = Weighting(weighting)
        self.adjacency = adjacency_for(self.weighting)
        self.num_examples = len(features)
        if config.insecure_reproducible_noise:
            if seed is None:
                raise ConfigurationError(
                    f"client {client_id}: insecure_reproducible_noise needs a seed")
            self.randomness: ClientRandomness = SeededRandomness(int(seed), self.client_id)
        else:
            self.randomness = OsRandomness()
        self._features = torch.as_tensor(features, dtype=torch.float32)
        self._labels = torch.as_tensor(labels, dtype=torch.long)
        self.sample_rate = float(config.sample_rate)
        self.steps_per_round = config.steps_per_round
        self.noise_multiplier = calibrated_noise_multiplier(config, self.adjacency)
        self._model = copy.deepcopy(model)
        self._module = GradSampleModule(self._model, batch_first=True, loss_reduction="mean")
        self._module.forbid_grad_accumulation()
        self.accountant = create_accountant(config.accountant.value)
        self._optimizer = _ClientDPOptimizer(
            torch.optim.SGD(self._model.parameters(), lr=config.lr),
            randomness=self.randomness, noise_multiplier=self.noise_multiplier,
            max_grad_norm=config.max_grad_norm, expected_batch_size=config.batch_size,
            loss_reduction="mean",
        )
        self._optimizer.attach_step_hook(
            self.accountant.get_optimizer_hook_fn(sample_rate=self.sample_rate))
        self._criterion = nn.CrossEntropyLoss()

    def __repr__(self) -> str:
        return (f"PrivateClient(client_id={self.client_id},"
                f" noise_source={self.randomness.source.value!r})")

    # -- privacy ------------------------------------------------------------------

    @property
    def noise_source(self) -> NoiseSource:
        """Where its noise, sampling and rounding come from."""
        return self.randomness.source

    @property
    def history(self) -> list[HistoryRow]:
        """Opacus's accountant history ``[(sigma, q, steps), ...]`` (a copy)."""
        return [tuple(row) for row in self.accountant.history]  # type: ignore[misc]

    def epsilon(self, kind: AccountantKind | None = None) -> float:
        """Epsilon spent so far at the configured delta, under this client's
        adjacency (replace-one: the RDP bound of
        :func:`~securefl.privacy.accounting.epsilon_replace_one_rdp`, whatever
        ``kind``)."""
        if self.adjacency is Adjacency.REPLACE_ONE:
            return epsilon_replace_one_rdp(self.history, self.config.delta)
        return epsilon(self.history, self.config.delta, kind or self.config.accountant)

    def planned_round(self) -> list[HistoryRow]:
        """The history rows one more round would add."""
        return [(self.noise_multiplier, self.sample_rate, self.steps_per_round)]

    def check_budget(self) -> float | None:
        """Return the epsilon after one more round, or None without a budget.

        The round is refused unless every accountant of the client's
        adjacency keeps it within the budget (add/remove-one: the four of
        :data:`~securefl.privacy.accounting.ACCOUNTANTS`; replace-one: the
        two of :data:`~securefl.privacy.accounting.REPLACE_ONE_ACCOUNTANTS`),
        as ``securefl audit`` checks it.

        Raises:
            PrivacyBudgetExceededError: when that round would exceed the budget.
        """
        budget = self.config.budget
        if budget is None:
            return None
        who = f"client {self.client_id}"
        return budget.check(self.history, self.planned_round(), who=who,
                            adjacency=self.adjacency.value)

    # -- training -----------------------------------------------------------------

    def parameters(self) -> list[torch.Tensor]:
        """The local model's parameters (live tensors)."""
        return list(self._model.parameters())

    def rounding(self, round_number: int, num_values: int) -> RoundingSource:
        """The randomness to round round ``round_number``'s update (of
        ``num_values`` values) with (:func:`~securefl.privacy.rounding.rounding_randomness`):
        the OS CSPRNG unless ``insecure_reproducible_noise``."""
        return rounding_randomness(self.randomness, round_number, num_values)

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
            steps = self._run_steps()
        with torch.no_grad():
            update = [(p.detach() - g.detach()).cpu().numpy().astype(np.float32)
                      for p, g in zip(local, global_params, strict=True)]
        weight = self.num_examples if self.weighting is Weighting.EXAMPLES else 1
        return LocalResult(update=update, weight=weight, steps=steps,
                           noise_multiplier=self.noise_multiplier,
                           sample_rate=self.sample_rate)

    def _run_steps(self) -> int:
        for _ in range(self.steps_per_round):
            # Poisson sampling, as Opacus's UniformWithReplacementSampler does
            # it, with the client's own randomness.
            chosen = self.randomness.poisson_mask(self.num_examples, self.sample_rate)
            index = chosen.nonzero().reshape(-1)
            self._optimizer.zero_grad(set_to_none=True)
            output = self._module(self._features[index])
            loss = self._criterion(output, self._labels[index])
            loss.backward()
            self._optimizer.step()
        return self.steps_per_round
