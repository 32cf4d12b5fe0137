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
  epsilon is stated for replace-one adjacency (see :func:`adjacency_for`);
* every forward and backward pass takes exactly :data:`PHYSICAL_BATCH_SIZE`
  examples (a step's batch in chunks, the last padded), so the memory a step
  needs does not depend on ``n`` either: a server that chose a model large
  enough to exhaust a client's memory cannot make only clients with many
  records drop out.

The training loss is computed on the raw private batches and is never
returned.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from opacus.accountants import create_accountant
from opacus.grad_sample import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.module_utils import trainable_modules
from torch import nn

from securefl.errors import (
    ConfigurationError,
    DataProblem,
    DataValidationError,
    ModelIncompatibleError,
)
from securefl.privacy.accounting import (
    AccountantKind,
    HistoryRow,
    epsilon,
    epsilon_replace_one_rdp,
    noise_multiplier_for,
    noise_multiplier_for_replace_one,
)
from securefl.privacy.batches import ClientBatches, TensorBatches, call_model
from securefl.privacy.budget import PrivacyBudget
from securefl.privacy.layers import incompatible_layers, prepare_model
from securefl.privacy.ledger import RECORD_LEVEL_DELTA_MAX
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
    "PHYSICAL_BATCH_SIZE",
    "DPConfig",
    "LocalResult",
    "OptimizerFactory",
    "PrivateClient",
    "Weighting",
    "adjacency_for",
    "calibrated_noise_multiplier",
    "client_batches",
    "make_private_compatible",
]

logger = logging.getLogger(__name__)

DEFAULT_SAMPLE_RATE = 0.5
"""The default Poisson sample rate: every record joins each step's batch with
probability 0.5, so one local epoch is 2 steps, for every client alike."""

PHYSICAL_BATCH_SIZE = 32
"""How many examples one forward/backward pass of a DP-SGD step takes.  A
step's Poisson batch (about ``q * n`` examples) is cut into chunks of this
size and the last one is padded to it with repeats of its own sampled
examples, whose rows contribute the zero vector (a step that sampled nobody:
example 0, all padding), so every pass computes exactly this many
per-example gradients: the
memory a step needs (``PHYSICAL_BATCH_SIZE`` times the model's parameters)
does not depend on the client's record count.  With whole batches, a server
that chose a model large enough made a step run out of memory, and the
client drop out, only when the client had many records."""


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
        delta: the delta every epsilon is stated at, in (0, 1e-3] (the cap
            :data:`~securefl.privacy.ledger.RECORD_LEVEL_DELTA_MAX` that
            ``securefl audit`` holds every ledger row to).
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
        if not 0 < self.delta <= RECORD_LEVEL_DELTA_MAX:
            # the cap securefl audit holds every ledger row to: a larger delta
            # buys a smaller epsilon that protects little (delta 0.5 turned an
            # epsilon of 10.3 into 2.0)
            raise ConfigurationError(
                f"delta must be in (0, {RECORD_LEVEL_DELTA_MAX:g}], got {self.delta}")
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


def make_private_compatible(model: nn.Module, *,
                            replace_incompatible_layers: bool = False) -> nn.Module:
    """Return ``model`` if DP-SGD can train it.  Otherwise refuse it, naming
    each layer it cannot train (module path and class) and the fix; or, with
    ``replace_incompatible_layers=True`` (an explicit opt-in), return a copy
    where each such layer is replaced (``BatchNorm1d(C)`` by
    ``GroupNorm(1, C)``...), every replacement logged as a warning (see
    :mod:`securefl.privacy.layers`).  ``model`` itself is never modified.

    Raises:
        ModelIncompatibleError: (a :class:`~securefl.errors.ConfigurationError`)
            when the model has a layer DP-SGD cannot train and no replacement
            was asked for, or one that has no replacement.
    """
    prepared, _ = prepare_model(model, replace_incompatible_layers=replace_incompatible_layers)
    return prepared


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

    Its ``repr`` shows the public parameters only: the update (before secure
    aggregation) and the weight (a record count under weighting by examples)
    stay on the client.
    """

    update: list[np.ndarray] = field(repr=False)
    weight: int = field(repr=False)
    steps: int
    noise_multiplier: float
    sample_rate: float


class _ClientDPOptimizer(DPOptimizer):
    """Opacus's DPOptimizer (clipping, summing, scaling, accounting hooks)
    with the Gaussian noise drawn from the client's :class:`ClientRandomness`
    instead of a ``torch.Generator``, and with non-finite per-example
    gradients zeroed before clipping.

    Why the zeroing: Opacus clips an example's gradient by the factor
    ``C / (norm + 1e-6)``; for a gradient holding an infinity that factor is
    0, and ``0 * inf`` is NaN, so one such example would make the whole noised
    sum NaN, which no noise hides.  Whether that happens depends on which
    records were sampled (a record whose features overflow a layer the server
    chose the weights of is enough), and the encoder's refusal of a NaN update
    is visible to the server: an event outside the mechanism, with no
    (epsilon, delta) bound.  A zeroed example contributes the zero vector,
    whose norm is within the clipping bound, so the sum keeps its sensitivity
    ``C`` and the accounted guarantee holds for every input.
    ``zeroed_examples`` counts them; it stays on the client."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, randomness: ClientRandomness,
                 **kwargs: object) -> None:
        super().__init__(optimizer, **kwargs)  # type: ignore[arg-type]
        self.randomness = randomness
        self.zeroed_examples = 0
        self.padding_rows: slice | None = None
        """The rows of the per-example gradients that pad the pass to its
        fixed size (after the sampled examples); zeroed before clipping.
        None: no padding."""

    def pre_step(self, closure: Callable[[], float] | None = None) -> bool | None:
        self._fill_missing_grad_samples()
        return super().pre_step(closure)

    def _fill_missing_grad_samples(self) -> None:
        # a parameter no sampled example used (a routing model, an unused
        # head) has no per-example gradient, and Opacus would raise: whether it
        # does depends on which records were sampled, so it gets zero rows
        present = [p.grad_sample for p in self.params
                   if getattr(p, "grad_sample", None) is not None]
        if present:
            rows = len(present[0]) if isinstance(present[0], torch.Tensor) \
                else sum(len(g) for g in present[0])
            for p in self.params:
                if getattr(p, "grad_sample", None) is None:
                    p.grad_sample = torch.zeros((rows, *p.shape), dtype=p.dtype,
                                                device=p.device)

    def clip_and_accumulate(self) -> None:
        self._fill_missing_grad_samples()
        # one tensor per parameter (the module forbids accumulation, so
        # ``grad_sample`` is never a list): zeroed in place, Opacus then clips it
        samples = [self._get_flat_grad_sample(p) for p in self.params]
        if samples and len(samples[0]):
            bad = torch.zeros(len(samples[0]), dtype=torch.bool, device=samples[0].device)
            for grad in samples:
                bad |= ~torch.isfinite(grad.reshape(len(grad), -1)).all(dim=1).to(bad.device)
            padding = torch.zeros_like(bad)
            if self.padding_rows is not None:
                padding[self.padding_rows] = True
            self.zeroed_examples += int((bad & ~padding).sum())
            drop = bad | padding
            if bool(drop.any()):
                for p, grad in zip(self.params, samples, strict=True):
                    rows = drop.to(grad.device).view(-1, *([1] * (grad.dim() - 1)))
                    p.grad_sample = grad.masked_fill(rows, 0.0)
        super().clip_and_accumulate()

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
        features: its private training data, one row per example (cast to
            float32); or a :class:`~securefl.privacy.batches.ClientBatches`
            (any inputs: token ids, several tensors, a ``Dataset`` with its
            collate function), with ``labels`` None.
        labels: their targets: integer class labels (as ``long``) or real
            values (floating arrays stay real, as ``float32``, for
            regression losses); None with a ``ClientBatches``.
        config: DP-SGD parameters.
        seed: the federation's public run seed; used only with
            ``config.insecure_reproducible_noise`` (then it seeds, with the
            client id, the sampling, noise and rounding generators, see
            :class:`~securefl.privacy.noise.SeededRandomness`), ignored
            otherwise: the randomness comes from ``os.urandom``.
        weighting: how its update is weighted (see :func:`adjacency_for`).
        loss_fn: the training loss, ``loss_fn(output, targets) -> scalar``,
            the **mean** over the batch of per-example losses (Opacus's
            ``loss_reduction="mean"``; a loss module with another
            ``reduction`` is refused); default cross-entropy.  A loss module
            with a ``reduction`` is called with ``reduction="none"``, each
            example's losses summed over their other dimensions (tokens)
            and averaged over the batch size (its own mean may divide by a
            data-dependent sum, e.g. class weights or the padded length); a
            module that then returns no row per example raises
            :class:`~securefl.errors.ConfigurationError` from
            :meth:`train_round`; a plain function must return that mean
            itself.  An example whose
            gradient is not finite, or for which the model, the loss or the
            data loader raises, contributes the zero vector (see
            SECURITY.md).
        optimizer: a factory ``optimizer(parameters) -> torch.optim.Optimizer``
            for the local optimizer (e.g. ``functools.partial(torch.optim.Adam,
            lr=1e-3)``), which then updates the weights from the clipped,
            noised gradient (post-processing: it costs no privacy); its state
            is reset at the start of every round.  Default: SGD at
            ``config.lr``.

    Raises:
        ConfigurationError: on empty data, mismatched lengths, a target
            epsilon that cannot be reached, insecure reproducible noise
            without a seed, a loss that does not average, or an optimizer
            factory that does not optimize the model's parameters.
        DataValidationError: (a ``ConfigurationError``) on NaN or infinite
            features or targets.
        ModelIncompatibleError: (a ``ConfigurationError``) when the model has
            a layer DP-SGD cannot train (see :func:`make_private_compatible`).
    """

    def __init__(self, client_id: int, model: nn.Module,
                 features: np.ndarray | torch.Tensor | ClientBatches,
                 labels: np.ndarray | torch.Tensor | None, config: DPConfig, *,
                 seed: int | None = None, weighting: Weighting = Weighting.UNIFORM,
                 loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
                 optimizer: OptimizerFactory | None = None) -> None:
        who = f"client {client_id}"
        self._batches: ClientBatches = client_batches(who, features, labels)
        layers = incompatible_layers(model)
        if layers:
            raise ModelIncompatibleError(f"{who}: " + "; ".join(
                f"{layer.where}: {layer.reason}; fix: {layer.fix}" for layer in layers),
                layers=tuple(layers))
        self.client_id = int(client_id)
        self.config = config
        self.weighting = Weighting(weighting)
        self.adjacency = adjacency_for(self.weighting)
        self.num_examples = len(self._batches)
        if config.insecure_reproducible_noise:
            if seed is None:
                raise ConfigurationError(
                    f"client {client_id}: insecure_reproducible_noise needs a seed")
            self.randomness: ClientRandomness = SeededRandomness(int(seed), self.client_id)
        else:
            self.randomness = OsRandomness()
        self.sample_rate = float(config.sample_rate)
        self.steps_per_round = config.steps_per_round
        self.physical_batch_size = PHYSICAL_BATCH_SIZE
        self.noise_multiplier = calibrated_noise_multiplier(config, self.adjacency)
        self._model = copy.deepcopy(model)
        self._module = GradSampleModule(self._model, batch_first=True, loss_reduction="mean")
        self._module.forbid_grad_accumulation()
        self.accountant = create_accountant(config.accountant.value)
        if optimizer is None:
            local: torch.optim.Optimizer = torch.optim.SGD(self._model.parameters(), lr=config.lr)
        else:
            local = _local_optimizer(who, optimizer, self._model)
        self._optimizer = _ClientDPOptimizer(
            local,
            randomness=self.randomness, noise_multiplier=self.noise_multiplier,
            max_grad_norm=config.max_grad_norm, expected_batch_size=config.batch_size,
            loss_reduction="mean",
        )
        self._optimizer.attach_step_hook(
            self.accountant.get_optimizer_hook_fn(sample_rate=self.sample_rate))
        if loss_fn is None:
            loss_fn = nn.CrossEntropyLoss()
        reduction = getattr(loss_fn, "reduction", "mean")
        if reduction != "mean":
            raise ConfigurationError(
                f"{who}: the loss must average over the batch (Opacus's loss_reduction"
                f" 'mean'), got reduction={reduction!r}; use reduction='mean'")
        self._criterion = _batch_mean(loss_fn)

    def __repr__(self) -> str:
        return (f"PrivateClient(client_id={self.client_id},"
                f" noise_source={self.randomness.source.value!r})")

    # -- privacy ------------------------------------------------------------------

    @property
    def noise_source(self) -> NoiseSource:
        """Where its noise, sampling and rounding come from."""
        return self.randomness.source

    @property
    def zeroed_examples(self) -> int:
        """How many sampled examples' gradients were NaN or infinite and were
        zeroed before clipping, over every round so far (see
        :class:`_ClientDPOptimizer`).  Local diagnostics only: it depends on
        the data, so it never leaves the client (no ``LocalResult``, report,
        ledger row or message carries it)."""
        return self._optimizer.zeroed_examples

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
        # a fresh local optimizer state every round (momentum, Adam moments),
        # as FedAvg clients start each round from the global model
        self._optimizer.original_optimizer.state.clear()
        # and no clipped sum of a step an exception interrupted in an earlier
        # call (its passes before the exception were accumulated, skipped)
        self._optimizer._step_skip_queue.clear()
        self._optimizer._is_last_step_skipped = False
        self._optimizer.zero_grad(set_to_none=True)
        zeroed = self._optimizer.zeroed_examples
        for _ in range(self.steps_per_round):
            # Poisson sampling, as Opacus's UniformWithReplacementSampler does
            # it, with the client's own randomness.
            chosen = self.randomness.poisson_mask(self.num_examples, self.sample_rate)
            self._step(chosen.nonzero().reshape(-1))
        if self._optimizer.zeroed_examples > zeroed:
            # the client's own log (a Flower node's, or the simulating
            # process's), never a message
            logger.warning("client %d: %d sampled example(s) had a NaN or infinite gradient"
                           " or raised this round, and contributed nothing (zeroed before"
                           " clipping)", self.client_id,
                           self._optimizer.zeroed_examples - zeroed)
        return self.steps_per_round

    def _step(self, index: torch.Tensor) -> None:
        """One DP-SGD step over the sampled examples at ``index``: passes of
        exactly :data:`PHYSICAL_BATCH_SIZE` examples (the last padded with
        repeats of its own sampled examples, whose padded rows are zeroed),
        their clipped gradients summed, the noise added and the weights
        updated once, after the last pass (Opacus's virtual steps).  The
        padding repeats the pass's own examples so that no record that was
        not sampled enters a pass: padded with a fixed record (example 0),
        that record's length set every step's padded length and memory, and
        a record 0 the model raised on made every step fall back to
        one-example passes, sampled or not.  A step that sampled nobody still
        makes one pass, of example 0 only (all padding), so its memory is
        that of any other."""
        size = self.physical_batch_size
        chunks = list(index.split(size)) or [index[:0]]
        for number, chunk in enumerate(chunks):
            real = len(chunk)
            padded = (chunk.repeat(-(-size // real))[:size] if real
                      else chunk.new_zeros(size))
            self._per_example_gradients(padded, real)
            self._optimizer.padding_rows = slice(real, size)
            self._optimizer.signal_skip_step(do_skip=number < len(chunks) - 1)
            try:
                self._optimizer.step()
            finally:
                # a step an exception interrupts leaves skip signals and a
                # partial clipped sum: _run_steps forgets them when it starts
                self._optimizer.padding_rows = None

    def _per_example_gradients(self, index: torch.Tensor, real: int | None = None) -> None:
        """The per-example gradients of one pass's examples at ``index`` in
        ``p.grad_sample``, never raising because of a record; the rows after
        the first ``real`` (default: all) are padding."""
        self._optimizer.zero_grad(set_to_none=True)
        try:
            self._backward(index)
        except _LossShapeError:
            raise  # the loss's shape: the same for every batch
        except Exception as exc:
            # one sampled record made the model, the loss or the data loader
            # raise.  Raising here would let the server see the client drop
            # out because of that record, outside the noise; instead the step
            # is redone one example at a time and every example that raises
            # contributes the zero vector
            self._forget_failed_pass()
            self._backward_per_example(index, exc, real)

    def _backward(self, index: torch.Tensor) -> None:
        """Forward the examples at ``index``, the batch-mean loss, backward:
        their per-example gradients in ``p.grad_sample``."""
        inputs, targets = self._batches.batch(index)
        loss = self._criterion(call_model(self._module, inputs), targets)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise _LossShapeError(
                f"client {self.client_id}: the loss must return a scalar tensor (the"
                " mean over the batch)")
        loss.backward()
        rows = len(index)
        for p in self._optimizer.params:
            sample = getattr(p, "grad_sample", None)
            if sample is not None and len(sample) != rows:
                # a parameter that saw only some of the examples (a routing
                # model): its rows are not the examples'.  Redone one example
                # at a time, where they are
                raise _MisalignedGradSamplesError(f"{len(sample)} per-example gradients for"
                                             f" {rows} examples")

    def _forget_failed_pass(self) -> None:
        """After a forward or backward pass that raised: drop what Opacus's
        hooks kept of it (the activations a forward stored for a backward
        that never came would be taken for the next batch's: a wrong batch
        size, wrong per-example gradients; the count of forwards awaiting a
        backward would keep every later gradient from being promoted) and
        every gradient."""
        # only the modules Opacus hooks, and only values of the types its hooks
        # store (a model's own attribute of the same name is left alone)
        for _, module in trainable_modules(self._module._module):
            for name, kind in (("activations", list), ("max_batch_len", int)):
                if isinstance(module.__dict__.get(name), kind):
                    del module.__dict__[name]
        for p in self._optimizer.params:
            if hasattr(p, "_current_grad_sample"):
                del p._current_grad_sample
            if hasattr(p, "_forward_counter"):
                # counts forwards awaiting their backward: a gradient is only
                # promoted to grad_sample when it is back to 0
                p._forward_counter = 0
        self._optimizer.zero_grad(set_to_none=True)

    def _backward_per_example(self, index: torch.Tensor, first: BaseException,
                              real: int | None = None) -> None:
        """The per-example gradients of the examples at ``index``, computed
        one example at a time, with zero rows for every example whose forward,
        loss or backward raises; left in ``p.grad_sample`` for the optimizer.
        Each example's gradient is the one the batch would give it (DP-SGD's
        layers do not mix examples), so the step is the same mechanism over
        the examples that did not raise.  Only the first ``real`` examples
        (default: all) count as sampled; the rest pad the pass."""
        if real is None:
            real = int(index.numel())
        params = self._optimizer.params
        rows: list[list[torch.Tensor]] = [[] for _ in params]
        failed = 0
        for position, i in enumerate(index.reshape(-1, 1)):
            self._optimizer.zero_grad(set_to_none=True)
            try:
                self._backward(i)
                grads = [getattr(p, "grad_sample", None) for p in params]
            except _LossShapeError:
                raise
            except Exception:
                self._forget_failed_pass()
                failed += int(position < real)
                grads = [None] * len(params)
            for row, p, g in zip(rows, params, grads, strict=True):
                row.append(g.detach().clone() if g is not None
                           else torch.zeros((1, *p.shape), dtype=p.dtype, device=p.device))
        self._forget_failed_pass()  # no hook state of the one-example passes is left
        for row, p in zip(rows, params, strict=True):
            p.grad_sample = (torch.cat(row) if row
                             else torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device))
        self._optimizer.zeroed_examples += failed
        if failed and failed == real:
            # every example raised alone too: most likely the model or the loss
            # cannot take this data at all (the step trained on noise only)
            logger.error("client %d: every example of a DP-SGD step raised (%s: %s); check"
                         " that the model and the loss accept the data one example at a"
                         " time", self.client_id, type(first).__name__, first)
        logger.warning("client %d: a DP-SGD step raised %s (%s); %d of its %d examples raised"
                       " alone and contributed nothing", self.client_id, type(first).__name__,
                       first, failed, real)


class _LossShapeError(ConfigurationError):
    """The loss does not have the shape DP-SGD needs: the same for every
    batch (it depends on the loss, not on the records), so it is raised."""


class _MisalignedGradSamplesError(Exception):
    """A parameter's per-example gradients do not line up with the batch."""


def _batch_mean(loss_fn: Callable[[Any, torch.Tensor], torch.Tensor]
                ) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """The loss as the batch mean of per-example losses, divided by the batch
    size, which is what Opacus's ``loss_reduction="mean"`` undoes.  A loss
    module with a ``reduction`` is called with ``reduction="none"`` and
    averaged here: its own mean may divide by something that depends on the
    examples (``CrossEntropyLoss(weight=...)`` divides by the sum of the
    sampled labels' weights, ``ignore_index`` by the examples not ignored),
    so one record would rescale every other example's gradient and the
    clipping would no longer bound its effect.  Each example's losses over
    its other dimensions (tokens, padded to the batch's longest record) are
    summed, not averaged, for the same reason.  A module that returns no row
    per example raises :class:`_LossShapeError` (a ConfigurationError).  A
    plain function is trusted to return that mean."""
    if not isinstance(loss_fn, nn.Module) or not hasattr(loss_fn, "reduction"):
        return loss_fn
    per_example = copy.copy(loss_fn)
    per_example.reduction = "none"

    def mean(output: Any, targets: torch.Tensor) -> torch.Tensor:
        losses = per_example(output, targets)
        rows = len(targets)
        if not isinstance(losses, torch.Tensor) or losses.dim() < 1 \
                or losses.shape[0] != rows:
            # a module that ignores ``reduction`` (or reads it only when it is
            # built): its own divisor may depend on the examples
            raise _LossShapeError(
                "the loss module must honour reduction='none' and return one loss per"
                f" example (a tensor of {rows} rows), got"
                f" {tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses)}")
        # each example's losses summed over its other dimensions (tokens: a
        # mean over them would divide by the batch's padded length, which one
        # long record sets), then averaged over the batch size
        return losses.reshape(rows, -1).sum(dim=1).sum() / max(rows, 1)

    return mean


OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
"""Builds a local optimizer over the parameters it is given."""


def _local_optimizer(who: str, factory: OptimizerFactory,
                     model: nn.Module) -> torch.optim.Optimizer:
    local = factory(model.parameters())
    if not isinstance(local, torch.optim.Optimizer):
        raise ConfigurationError(
            f"{who}: the optimizer factory must return a torch.optim.Optimizer, got"
            f" {type(local).__name__}")
    given = {id(p) for group in local.param_groups for p in group["params"]}
    wanted = {id(p) for p in model.parameters() if p.requires_grad}
    if not wanted <= given:
        raise ConfigurationError(
            f"{who}: the optimizer factory must optimize the parameters it is given"
            " (call it as factory(params) -> Optimizer(params, ...))")
    return local


def client_batches(who: str, features: np.ndarray | torch.Tensor | ClientBatches,
                   labels: np.ndarray | torch.Tensor | None) -> ClientBatches:
    """A client's data as :class:`ClientBatches`: ``features`` itself when it
    already is (labels inside it), else a :class:`TensorBatches` of float32
    features and targets (integer labels as ``long``, real targets as
    ``float32``).  The one intake of the private and the plain local client.

    Raises:
        ConfigurationError: labels given beside a ``ClientBatches``, missing
            or mismatched labels, or no example.
        DataValidationError: NaN or infinite features or targets (naming
            how many examples).
    """
    if isinstance(features, ClientBatches):
        if labels is not None:
            raise ConfigurationError(f"{who}: give labels inside its ClientBatches, not apart")
        batches: ClientBatches = features
    else:
        if labels is None or len(features) != len(labels):
            raise ConfigurationError(
                f"{who} needs matching non-empty features and labels, got"
                f" {len(features)} and {'no labels' if labels is None else len(labels)}")
        tensors = TensorBatches(torch.as_tensor(features, dtype=torch.float32),
                                _as_targets(labels))
        _refuse_non_finite(who, tensors.features, tensors.targets)
        batches = tensors
    if len(batches) == 0:
        raise ConfigurationError(f"{who} needs matching non-empty features and labels,"
                                 " got 0 examples")
    return batches


def _as_targets(labels: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Integer (or boolean) labels as ``long``; real targets as ``float32``."""
    tensor = torch.as_tensor(labels)
    if tensor.is_floating_point():
        return tensor.to(torch.float32)
    return tensor.to(torch.long)


def _refuse_non_finite(who: str, features: torch.Tensor, targets: torch.Tensor) -> None:
    """Refuse NaN/inf data: its gradients would be NaN, the encoder would refuse
    every update, and the client would spend privacy for nothing."""
    for tensor, problem, name in ((features, DataProblem.NON_FINITE_FEATURES, "features"),
                                  (targets, DataProblem.NON_FINITE_TARGETS, "targets")):
        if tensor.is_floating_point():
            bad = int((~torch.isfinite(tensor)).reshape(len(tensor), -1).any(dim=1).sum())
            if bad:
                raise DataValidationError(
                    problem, f"{bad} example{'s' if bad > 1 else ''} with NaN or infinite"
                    f" {name}; drop or impute them before training", who=who)
