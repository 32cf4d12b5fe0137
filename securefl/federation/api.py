"""Bring your own model, data and loss: :func:`federate` runs a private
federation in process, in Opacus's spirit (you keep your model, your data and
your loss; the library adds DP-SGD, secure aggregation and the privacy
ledger).

::

    import securefl
    from torch import nn

    result = securefl.federate(
        model,                         # any torch module DP-SGD can train
        [client_1_data, client_2_data, client_3_data],
        nn.MSELoss(),                  # any loss that averages over the batch
        rounds=20, target_epsilon=4.0, test_data=(x_test, y_test),
    )
    result.model, result.final, result.epsilon

What happens, in order, before anything trains:

1. the model is checked: a layer DP-SGD cannot train (``BatchNorm``...) is
   refused with a :class:`~securefl.errors.ModelIncompatibleError` naming it
   and the fix, or replaced when ``replace_incompatible_layers=True`` (each
   replacement logged); your model object itself is never changed: the
   federation trains a copy, returned as ``result.model``;
2. every client's data and the test set are checked
   (:mod:`securefl.federation.validation`): empty clients, NaN/inf, label
   ranges against the model's outputs, shapes across clients and against
   the model, and the loss on the model's output;
3. then each round runs in the simulator's round
   (:mod:`securefl.federation.simulation`): budget guard, durable in-flight
   charge in the ledger, local DP-SGD on every client, fixed-point encoding,
   secure aggregation of the survivors, the server optimizer, the settled
   ledger rows and (with ``output_dir``) the run's files.

**Sampling.**  DP-SGD's accounting assumes Poisson sampling: each record
joins each step's batch independently with probability ``q``; a round is
``local_epochs * round(1 / q)`` steps and each step's noisy gradient sum is
divided by the expected batch size ``B``.  ``q`` and ``B`` are:

* ``sample_rate`` and ``batch_size`` when given: one public ``q`` for every
  client (nothing about a client's record count leaks through it);
* otherwise, for a client given as a ``DataLoader``, Opacus's rule
  (``DPDataLoader``): ``B`` is the loader's ``batch_size`` and
  ``q = B / len(dataset)``.  The loader's sampler and shuffling are not used.
  Such a ``q`` is a function of the client's record count ``n`` and is
  public (the server and the ledger know it), so it reveals ``n`` (logged
  as a warning), and only replace-one epsilons hold (``n`` fixed): this
  rule needs ``weighting="examples"`` (whose ledger rows state replace-one
  epsilons); with the default uniform weighting, whose rows state
  add-or-remove-one epsilons, it is refused (a record added or removed
  would change the published ``q``: no finite add/remove-one epsilon);
* otherwise ``q`` = :data:`~securefl.privacy.client.DEFAULT_SAMPLE_RATE` and
  ``B`` = ``batch_size`` (default 36).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from securefl.errors import ConfigurationError
from securefl.federation.data import PreparedData, prepare_data
from securefl.federation.local_client import LocalClient
from securefl.federation.model import Evaluation, evaluate_loss
from securefl.federation.simulation import RoundReport, SimulationConfig, run_simulation
from securefl.federation.validation import DataSpec, check_federation
from securefl.privacy.client import DEFAULT_SAMPLE_RATE, DPConfig, OptimizerFactory, PrivateClient
from securefl.privacy.layers import Replacement, prepare_model
from securefl.privacy.options import Weighting

__all__ = ["FederationResult", "federate", "sample_rates"]

logger = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = DPConfig.batch_size
"""The expected batch size when neither ``batch_size`` nor a DataLoader gives one."""


@dataclass
class FederationResult:
    """What :func:`federate` returns.

    Attributes:
        model: the trained global model (a copy of yours, with replaced
            layers if you asked for replacements).
        rounds: one :class:`~securefl.federation.simulation.RoundReport` per
            round (survivors, dropouts, refusals, epsilons).
        evaluations: per round, the metrics of the global model after it
            (your ``evaluate``'s, or the test set's loss and accuracy; empty
            dicts without either).
        final: the metrics of the final global model.
        epsilon: the largest epsilon any client spent, at ``delta``, by
            Opacus's RDP accountant (the replace-one RDP bound when updates
            are weighted by examples): ``metrics["final"]["epsilon_max"]``;
            the other accountants' figures are beside it there.
        delta: the delta every epsilon is stated at.
        metrics: the content of ``metrics.json`` (written only with an
            ``output_dir``).
        output_dir: where the files were written, or None.
        replaced_layers: the layers replaced on request.
        clients: the simulated clients (their accountants; the caller of a
            simulation plays every party).
    """

    model: nn.Module
    rounds: list[RoundReport]
    evaluations: list[dict[str, float]]
    final: dict[str, float]
    epsilon: float
    delta: float
    metrics: dict[str, Any]
    output_dir: Path | None
    replaced_layers: list[Replacement] = field(default_factory=list)
    clients: list[PrivateClient] = field(repr=False, default_factory=list)


def sample_rates(data: Sequence[PreparedData], *, sample_rate: float | None,
                 batch_size: int | None) -> list[tuple[float, int]]:
    """Each client's Poisson sample rate ``q`` and expected batch size ``B``
    (see the module docstring).

    Raises:
        ConfigurationError: when some clients come as DataLoaders and others
            not, without ``sample_rate`` (the rule would differ between
            them), or on a ``batch_size`` below 1.
    """
    if batch_size is not None and batch_size < 1:
        raise ConfigurationError(f"batch_size must be >= 1, got {batch_size}")
    if sample_rate is not None:
        return [(float(sample_rate), batch_size or d.batch_size or DEFAULT_BATCH_SIZE)
                for d in data]
    loaders = [d.batch_size is not None for d in data]
    if any(loaders) and not all(loaders):
        raise ConfigurationError(
            "some clients are DataLoaders and others not: pass sample_rate (one public rate"
            " for all), or give every client as a DataLoader")
    if all(loaders):
        rates = []
        for d in data:
            expected = batch_size or int(d.batch_size or DEFAULT_BATCH_SIZE)
            rates.append((min(1.0, expected / len(d)), expected))
        return rates
    return [(DEFAULT_SAMPLE_RATE, batch_size or DEFAULT_BATCH_SIZE) for _ in data]


def _prepare(model: nn.Module, client_data: Sequence[Any], loss_fn: Any, test_data: Any, *,
             replace_incompatible_layers: bool
             ) -> tuple[nn.Module, list[Replacement], list[PreparedData], PreparedData | None,
                        DataSpec]:
    if isinstance(client_data, Mapping | str | bytes) or not isinstance(client_data, Sequence):
        raise ConfigurationError(
            "client_data must be a sequence (one entry per client) of Datasets, DataLoaders"
            f" or (x, y) pairs, got {type(client_data).__name__}")
    if len(client_data) < 2:
        raise ConfigurationError(
            f"a federation needs at least 2 clients, got {len(client_data)}")
    if not callable(loss_fn):
        raise ConfigurationError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
    # the caller's model is never changed: the federation trains a copy
    global_model, replaced = prepare_model(
        copy.deepcopy(model), replace_incompatible_layers=replace_incompatible_layers)
    prepared = [prepare_data(d, who=f"client {i}") for i, d in enumerate(client_data, start=1)]
    test = prepare_data(test_data, who="the test set") if test_data is not None else None
    spec = check_federation([p.examples for p in prepared],
                            test.examples if test is not None else None,
                            model=global_model, loss_fn=loss_fn)
    return global_model, replaced, prepared, test, spec


def federate(
    model: nn.Module,
    client_data: Sequence[Any],
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor],
    *,
    rounds: int = 10,
    target_epsilon: float | None = None,
    noise_multiplier: float | None = None,
    delta: float = 1e-5,
    max_grad_norm: float = 1.0,
    sample_rate: float | None = None,
    batch_size: int | None = None,
    local_epochs: int = 1,
    lr: float = 1.0,
    optimizer: OptimizerFactory | None = None,
    test_data: Any = None,
    evaluate: Callable[[nn.Module], Mapping[str, float]] | None = None,
    secure: bool = True,
    dropout: float = 0.0,
    replace_incompatible_layers: bool = False,
    output_dir: str | Path | None = None,
    seed: int = 0,
    on_round: Callable[[Any, dict[str, float]], None] | None = None,
    progress: bool = False,
    **options: Any,
) -> FederationResult:
    """Run a private federation of your model, data and loss in process.

    Every client is a :class:`~securefl.privacy.client.PrivateClient` (its
    own accountant, noise and sampling from ``os.urandom``); the rounds are
    :func:`~securefl.federation.simulation.run_simulation`'s, which sets
    ``torch.set_num_threads(1)``.

    Args:
        model: your torch module; the federation trains a copy.
        client_data: one entry per client (at least 2): a pair ``(x, y)`` of
            numpy arrays or tensors, a map-style ``Dataset`` of
            ``(input, target)`` items, or a ``DataLoader`` over one.
            Integer targets are class labels, real targets regression
            targets (their shape must match the model's output, e.g.
            ``(n, 1)``).
        loss_fn: ``loss_fn(output, targets)``: the mean over the batch of
            per-example losses (``nn.CrossEntropyLoss()``, ``nn.MSELoss()``,
            a function...).
        rounds: federation rounds.
        target_epsilon: each client's total epsilon at ``delta`` over
            ``rounds`` (the noise multiplier is calibrated from it); give
            this or ``noise_multiplier`` (neither: the simulator's default
            target).
        noise_multiplier: sigma, instead of ``target_epsilon``.
        delta: the delta every epsilon is stated at.
        max_grad_norm: the per-example clipping norm.
        sample_rate: one public Poisson sample rate for every client (see
            the module docstring for the default; DataLoaders without it
            need ``weighting="examples"``).
        batch_size: the expected batch size dividing each step's noisy
            gradient sum (default: the DataLoaders', else 36).
        local_epochs: local passes per round (``round(1 / q)`` steps each).
        lr: the local SGD learning rate (without ``optimizer``).
        optimizer: a factory ``params -> torch.optim.Optimizer`` for the
            local optimizer (it updates from the clipped, noised gradient).
        test_data: a held-out set (same forms as a client's); without
            ``evaluate``, each round reports its loss (and accuracy, for
            class labels).
        evaluate: ``evaluate(model) -> {"name": value}``, called on the
            global model after every round (and at the start).
        secure: secure aggregation (True) or plain summation (to compare).
        dropout: the probability that a client drops out of a round, at a
            protocol round drawn uniformly.
        replace_incompatible_layers: replace layers DP-SGD cannot train
            (logged) instead of refusing the model.
        output_dir: where to write the run (``ledger.jsonl``,
            ``metrics.json``, ``checkpoint.pt``...); None writes nothing.
        seed: the public seed of the dropout schedule (and of nothing that
            protects anyone: noise and sampling come from ``os.urandom``).
        on_round: called after every round with its report and the metrics
            of the global model after it.
        progress: show a progress bar.
        **options: any other field of
            :class:`~securefl.federation.simulation.SimulationConfig`
            (``weighting``, ``server_optimizer``, ``server_lr``,
            ``server_momentum``, ``bits``, ``frac_bits``, ``clip_range``,
            ``threshold``, ``accountant``, ``epsilon_budget``; secure
            aggregation: ``security_mode``, ``graph``, ``graph_degree``,
            ``roster_delivery`` (``"merkle"`` with ``graph="harary"``:
            sparse, Merkle-proven key rosters, docs/graphs.md); user-level DP:
            ``privacy`` (``"both"`` or ``"user-level"``), ``user_epsilon``,
            ``user_clip``, ``client_sample_rate``...; docs/user-level-dp.md).

    Returns:
        the :class:`FederationResult`.

    Raises:
        ModelIncompatibleError: the model has a layer DP-SGD cannot train
            (before anything else).
        DataValidationError: a client's data or the test set is refused,
            naming it and the problem (before any training).
        ConfigurationError: on invalid options, or DataLoaders without
            ``sample_rate`` under uniform weighting (their per-client rates
            would publish the record counts).
    """
    unknown = sorted(set(options) - _SIMULATION_FIELDS)
    if unknown:
        raise ConfigurationError(
            f"unknown options {unknown}; federate passes on the fields of SimulationConfig:"
            f" {', '.join(sorted(_SIMULATION_FIELDS))}")
    global_model, replaced, prepared, test, spec = _prepare(
        model, client_data, loss_fn, test_data,
        replace_incompatible_layers=replace_incompatible_layers)
    rates = sample_rates(prepared, sample_rate=sample_rate, batch_size=batch_size)
    config = SimulationConfig(
        num_clients=len(prepared), rounds=rounds, dropout=dropout,
        noise_multiplier=noise_multiplier, target_epsilon=target_epsilon, delta=delta,
        max_grad_norm=max_grad_norm, sample_rate=rates[0][0], batch_size=rates[0][1],
        local_epochs=local_epochs, lr=lr, secure=secure, seed=seed, **options)
    if sample_rate is None and prepared[0].batch_size is not None and config.record_level:
        if config.weighting is not Weighting.EXAMPLES:
            # q = B / n is published (ledger, messages): under add/remove-one
            # adjacency the neighbouring data sets (n and n + 1 records) give
            # different published rates, so no add/remove-one epsilon holds
            raise ConfigurationError(
                "each client's Poisson sample rate would be its DataLoader's batch_size /"
                " len(dataset) (Opacus's rule), which publishes its record count: the"
                " add-or-remove-one epsilons of weighting='uniform' would not hold (a record"
                " added or removed changes the published rate). Pass sample_rate= (one"
                " public rate for every client), or weighting='examples' (record counts"
                " public, replace-one epsilons)")
        logger.warning(
            "each client's Poisson sample rate is its DataLoader's batch_size / len(dataset),"
            " as Opacus's: these rates are public (in the ledger) and reveal every client's"
            " record count (weighting='examples': replace-one epsilons); pass sample_rate="
            " for one rate shared by all")
    dp = config.dp_config()
    clients: list[Any]
    if config.record_level:
        clients = [
            # the seed reaches a client's randomness only in the insecure
            # reproducible mode; otherwise it is ignored (os.urandom)
            PrivateClient(cid, global_model, data.batches, None, _client_config(dp, rate),
                          seed=config.seed, weighting=config.weighting, loss_fn=loss_fn,
                          optimizer=optimizer)
            for cid, (data, rate) in enumerate(zip(prepared, rates, strict=True), start=1)]
    else:
        # privacy="user-level": plain local SGD over minibatches of the batch
        # size, no per-example DP; the user-level layer protects the update
        clients = [
            LocalClient(cid, global_model, data.batches, None, batch_size=rate[1],
                        local_epochs=dp.local_epochs, lr=dp.lr, max_steps=dp.max_local_steps,
                        loss_fn=loss_fn, optimizer=optimizer)
            for cid, (data, rate) in enumerate(zip(prepared, rates, strict=True), start=1)]
    measure = _Measure(evaluate, test, loss_fn, spec)
    name = f"{type(model).__name__} on your data"
    by_round: dict[int, dict[str, float]] = {}

    def round_json(report: RoundReport) -> dict[str, Any]:
        # called as each round settles, right after the recorder evaluated it
        metrics = by_round.setdefault(report.round, dict(measure.latest))
        return {**report.to_json(), "metrics": metrics}

    def settled(report: RoundReport) -> None:
        if on_round is not None:
            on_round(report, dict(by_round.setdefault(report.round, dict(measure.latest))))

    with contextlib.ExitStack() as stack:
        if output_dir is None:
            # nothing is kept: the round recorder writes its run store and
            # exports into a private temporary directory, removed on return
            run_dir = Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="securefl-federate-"))) / "run"
        else:
            run_dir = Path(output_dir)
        result = run_simulation(
            config, run_dir, data=_ClientSizes(prepared, test, name), model=global_model,
            clients=clients, evaluator=measure, round_json=round_json,
            config_extra={"dataset": name, "alpha": None, "hidden": None},
            on_round=settled, progress=progress)
    evaluations = [by_round.get(r.round, {}) for r in result.rounds]
    final = dict(measure.latest)
    eps = result.metrics["final"].get("epsilon_max")
    return FederationResult(
        model=result.model, rounds=list(result.rounds), evaluations=evaluations, final=final,
        epsilon=float("nan") if eps is None else float(eps), delta=delta,
        metrics=result.metrics, output_dir=None if output_dir is None else result.output_dir,
        replaced_layers=replaced, clients=list(result.clients))


_SIMULATION_FIELDS = frozenset(f.name for f in dataclasses.fields(SimulationConfig)) - {
    "num_clients", "rounds", "dropout", "noise_multiplier", "target_epsilon", "delta",
    "max_grad_norm", "sample_rate", "batch_size", "local_epochs", "lr", "secure", "seed",
    "dataset", "alpha", "hidden"}
"""The simulator options :func:`federate` passes on by name."""


def _client_config(dp: DPConfig, rate: tuple[float, int]) -> DPConfig:
    return dataclasses.replace(dp, sample_rate=rate[0], batch_size=rate[1])


class _ClientSizes:
    """What the simulator needs to know of the data when the clients are
    built already: how many clients and their sizes (for the bit budget of
    weighting by examples), the test set's size, and a name."""

    def __init__(self, prepared: Sequence[PreparedData], test: PreparedData | None,
                 name: str) -> None:
        self.clients = [(None, range(len(d))) for d in prepared]
        self.client_sizes = [len(d) for d in prepared]
        self.test = (None, range(len(test) if test is not None else 0))
        self.name = name


class _Measure:
    """The evaluator the round recorder calls on the global model (at the
    start and after every applied round): your ``evaluate``, else the test
    set's loss (and accuracy), else nothing."""

    def __init__(self, evaluate: Callable[[nn.Module], Mapping[str, float]] | None,
                 test: PreparedData | None, loss_fn: Any, spec: DataSpec) -> None:
        self._evaluate = evaluate
        self._test = test
        self._loss_fn = loss_fn
        self._classification = spec.classification
        self.latest: dict[str, float] = {}

    def __call__(self, model: nn.Module) -> Evaluation:
        if self._evaluate is not None:
            metrics = {str(k): float(v) for k, v in self._evaluate(model).items()}
        elif self._test is not None:
            metrics = evaluate_loss(model, self._test.batches, self._loss_fn,
                                    classification=self._classification)
        else:
            metrics = {}
        self.latest = metrics
        return Evaluation(accuracy=metrics.get("accuracy", math.nan),
                          loss=metrics.get("loss", math.nan))
