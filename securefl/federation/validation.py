"""Checks on a federation's data before any training.

Bad data used to fail mid-run with raw torch errors (a label of 7 with 2
classes: ``Target 7 is out of bounds``), or worse, silently: NaN features
made a client's every update NaN, the encoder refused it each round while its
accountant still spent privacy, and NaN in the test set wrote ``"loss": NaN``.
Here every data set is checked up front and refused with a
:class:`~securefl.errors.DataValidationError` that names whose data it is
(``client 3``, ``the test set``) and the :class:`~securefl.errors.DataProblem`:

* empty data sets, and features and targets of different lengths;
* NaN or infinite values in any floating feature tensor or target;
* examples of different shapes across clients and the test set, targets of
  different shapes or kinds (class labels on one client, real values on
  another);
* with the model: examples the model does not accept (a dry forward pass on
  two examples, without gradients), real-valued targets whose shape differs
  from the model's output (an MSE loss would silently broadcast ``(n, 1)``
  against ``(n,)``), and class labels outside ``[0, C)`` where ``C`` is the
  model's number of outputs;
* with the loss: that it returns a finite scalar on the model's output.

Messages count offending examples and show at most one offending label; they
never quote a feature value.  The checks run where the data is (in the
simulation: in process).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from securefl.errors import ConfigurationError, DataProblem, DataValidationError
from securefl.privacy.batches import call_model

__all__ = ["DataSpec", "Examples", "check_examples", "check_federation"]


@dataclass(frozen=True)
class Examples:
    """One data set to check, collated whole.

    Attributes:
        who: whose data it is (``"client 3"``, ``"the test set"``).
        inputs: the model inputs, one row per example: a tensor or a tuple of
            tensors.
        targets: the targets, one row per example.
        fixed_shape: every example has the same shape (not padded per batch),
            so shapes can be compared across data sets.
    """

    who: str
    inputs: Any
    targets: torch.Tensor
    fixed_shape: bool = True


@dataclass(frozen=True)
class DataSpec:
    """The form of a federation's data (shapes and kinds, no values).

    Attributes:
        feature_shape: the shape of one example's input (None when the inputs
            are several tensors or padded per batch).
        target_shape: the shape of one example's target (``()`` for a label).
        classification: targets are integer class labels.
        num_classes: the number of classes (the model's outputs), when known.
    """

    feature_shape: tuple[int, ...] | None
    target_shape: tuple[int, ...]
    classification: bool
    num_classes: int | None


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, tuple | list):
        return [t for v in value for t in _tensors(v)]
    return []


def _rows(value: Any) -> int | None:
    tensors = _tensors(value)
    return len(tensors[0]) if tensors and tensors[0].dim() > 0 else None


def _head(value: Any, k: int) -> Any:
    if isinstance(value, torch.Tensor):
        return value[:k]
    if isinstance(value, tuple | list):
        return type(value)(_head(v, k) for v in value)
    return value


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'s' if count != 1 else ''}"


def _non_finite_rows(tensor: torch.Tensor) -> int:
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return 0
    bad = ~torch.isfinite(tensor)
    if tensor.dim() == 0:
        return int(bad)
    return int(bad.reshape(len(tensor), -1).any(dim=1).sum())


def _label_range(who: str, targets: torch.Tensor, num_classes: int, origin: str) -> None:
    outside = (targets < 0) | (targets >= num_classes)
    count = int(outside.sum())
    if count:
        example = int(targets[outside].max()) if bool((targets >= num_classes).any()) else int(
            targets[outside].min())
        raise DataValidationError(
            DataProblem.LABEL_OUT_OF_RANGE,
            f"{_plural(count, 'label')} outside [0, {num_classes}) (e.g. {example}), but"
            f" {origin}; fix the labels, or give the model one output per class",
            who=who)


def check_examples(examples: Examples, *, num_classes: int | None = None) -> None:
    """Check one data set on its own: not empty, as many targets as examples,
    every floating value finite, and (with ``num_classes``, integer targets)
    every label in ``[0, num_classes)``.

    Raises:
        DataValidationError: naming ``examples.who`` and the problem.
    """
    who = examples.who
    targets = examples.targets
    n = len(targets) if targets.dim() > 0 else 0
    if n == 0:
        raise DataValidationError(DataProblem.EMPTY, "no examples; give every client at least"
                                  " one example, or leave it out of the federation", who=who)
    for tensor in _tensors(examples.inputs):
        rows = len(tensor) if tensor.dim() > 0 else None
        if examples.fixed_shape and rows != n:
            raise DataValidationError(
                DataProblem.LENGTH_MISMATCH,
                f"{rows} feature rows but {n} targets", who=who)
    bad = sum(_non_finite_rows(t) for t in _tensors(examples.inputs))
    if bad:
        raise DataValidationError(
            DataProblem.NON_FINITE_FEATURES,
            f"{_plural(bad, 'example')} with NaN or infinite features; drop or impute them"
            " before training (their gradients would be NaN: every update refused while"
            " the client still spends privacy)", who=who)
    bad = _non_finite_rows(targets)
    if bad:
        raise DataValidationError(
            DataProblem.NON_FINITE_TARGETS,
            f"{_plural(bad, 'example')} with a NaN or infinite target; drop or impute them"
            " before training", who=who)
    if num_classes is not None and not targets.is_floating_point():
        _label_range(who, targets, num_classes, f"there are {num_classes} classes")


def _feature_shape(examples: Examples) -> tuple[int, ...] | None:
    if examples.fixed_shape and isinstance(examples.inputs, torch.Tensor):
        return tuple(examples.inputs.shape[1:])
    return None


def _kind(targets: torch.Tensor) -> str:
    return "real values" if targets.is_floating_point() else "class labels"


def check_federation(
    clients: Sequence[Examples],
    test: Examples | None = None,
    *,
    model: nn.Module | None = None,
    loss_fn: Callable[[Any, torch.Tensor], torch.Tensor] | None = None,
    num_classes: int | None = None,
) -> DataSpec:
    """Check every client's data and the test set, alone and against each
    other, then (with ``model``) against the model and (with ``loss_fn``)
    the loss.  Nothing trains and the model is not changed (the dry forward
    pass runs in eval mode without gradients; the mode is restored).

    Args:
        clients: one data set per client.
        test: the held-out test set, if any.
        model: the model to train (already made DP-compatible).
        loss_fn: the training loss.
        num_classes: the number of classes, when the model cannot tell
            (default: the model's number of outputs, for integer targets).

    Returns:
        the form of the data.

    Raises:
        DataValidationError: naming the first data set at fault and the
            :class:`~securefl.errors.DataProblem`.
        ConfigurationError: when there is no client, or the loss does not
            return a finite scalar.
    """
    if not clients:
        raise ConfigurationError("a federation needs at least one client's data")
    everyone = [*clients, *([test] if test is not None else [])]
    for examples in everyone:
        check_examples(examples)
    first = clients[0]
    shape = _feature_shape(first)
    target_shape = tuple(first.targets.shape[1:])
    for examples in everyone[1:]:
        other = _feature_shape(examples)
        if shape is not None and other is not None and other != shape:
            raise DataValidationError(
                DataProblem.FEATURE_SHAPE_MISMATCH,
                f"examples of shape {other}, but {first.who}'s are {shape}; every client and"
                " the test set must describe an example the same way", who=examples.who)
        if examples.targets.is_floating_point() != first.targets.is_floating_point():
            raise DataValidationError(
                DataProblem.TARGET_SHAPE_MISMATCH,
                f"its targets are {_kind(examples.targets)}, {first.who}'s are"
                f" {_kind(first.targets)}", who=examples.who)
        if tuple(examples.targets.shape[1:]) != target_shape:
            raise DataValidationError(
                DataProblem.TARGET_SHAPE_MISMATCH,
                f"targets of shape {tuple(examples.targets.shape[1:])} per example, but"
                f" {first.who}'s are {target_shape}", who=examples.who)
    classification = not first.targets.is_floating_point()
    origin = f"there are {num_classes} classes"
    if model is not None:
        outputs = _dry_run(model, everyone)
        out_shape = tuple(outputs.shape[1:])
        if classification and outputs.dim() == first.targets.dim() + 1:
            if num_classes is None:
                num_classes = int(outputs.shape[1])
                origin = f"the model has {num_classes} outputs (one per class)"
            elif num_classes != outputs.shape[1]:
                raise ConfigurationError(
                    f"num_classes is {num_classes} but the model has {outputs.shape[1]} outputs")
        elif not classification and out_shape != target_shape:
            raise DataValidationError(
                DataProblem.TARGET_SHAPE_MISMATCH,
                f"targets of shape {target_shape} per example, but the model outputs"
                f" {out_shape} per example; reshape the targets (e.g. y.reshape(-1, 1)) or"
                " the output to match (a loss such as MSE would otherwise broadcast"
                " them against each other)", who=first.who)
    if classification and num_classes is not None:
        for examples in everyone:
            _label_range(examples.who, examples.targets, num_classes, origin)
    if model is not None and loss_fn is not None:
        _check_loss(loss_fn, outputs, first)
    return DataSpec(feature_shape=shape, target_shape=target_shape,
                    classification=classification, num_classes=num_classes)


def _dry_run(model: nn.Module, everyone: Sequence[Examples]) -> torch.Tensor:
    """The model's output on the first two examples of every data set (the
    first data set's is returned)."""
    was_training = model.training
    model.eval()
    first_output: torch.Tensor | None = None
    try:
        with torch.no_grad():
            for examples in everyone:
                inputs = _head(examples.inputs, 2) if examples.fixed_shape else examples.inputs
                try:
                    output = call_model(model, inputs)
                except Exception as exc:  # any failure of the user's forward pass
                    shapes = [tuple(t.shape[1:]) for t in _tensors(inputs)]
                    raise DataValidationError(
                        DataProblem.FEATURE_SHAPE_MISMATCH,
                        f"the model does not accept its examples (shape"
                        f" {shapes[0] if len(shapes) == 1 else shapes}):"
                        f" {type(exc).__name__}: {exc}", who=examples.who) from exc
                if not isinstance(output, torch.Tensor):
                    raise ConfigurationError(
                        f"the model must return one tensor, got {type(output).__name__}")
                if first_output is None:
                    first_output = output
    finally:
        model.train(was_training)
    assert first_output is not None
    return first_output


def _check_loss(loss_fn: Callable[[Any, torch.Tensor], torch.Tensor], output: torch.Tensor,
                examples: Examples) -> None:
    targets = examples.targets[:len(output)]
    try:
        loss = loss_fn(output, targets)
    except Exception as exc:  # any failure of the user's loss
        raise DataValidationError(
            DataProblem.TARGET_SHAPE_MISMATCH,
            f"the loss fails on the model's output (shape {tuple(output.shape)}) and its"
            f" targets (shape {tuple(targets.shape)}): {type(exc).__name__}: {exc}",
            who=examples.who) from exc
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ConfigurationError(
            f"the loss must return a scalar tensor, the mean over the batch (got {got})")
