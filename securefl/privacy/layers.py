"""Layers DP-SGD cannot train, found before any training, and their
replacement (only when asked for).

DP-SGD clips each example's gradient, so the output for one example must not
depend on the other examples of its batch, and Opacus must be able to compute
per-example gradients.  :func:`incompatible_layers` lists every layer that
breaks this, by module path and class, with the reason and the fix:

* every ``BatchNorm`` (1d, 2d, 3d, ``SyncBatchNorm``), trainable or frozen:
  the client trains in ``train()`` mode, where it normalizes with the
  batch's statistics (and its running statistics are computed from private
  data);
* ``InstanceNorm`` with ``track_running_stats=True``;
* ``nn.LSTM``, ``nn.GRU``, ``nn.RNN`` and ``nn.MultiheadAttention``, whose
  implementation Opacus cannot differentiate per example (Opacus has
  drop-in ``DP`` versions);
* a trainable ``nn.Embedding`` with a ``padding_idx``: Opacus's
  per-example gradient ignores it (torch's gradient of the padding row is
  zero, Opacus's is the sum over the example's padding tokens), so an
  example's gradient, and its clipping factor, depend on how far its batch
  is padded, which the longest other sampled record decides (no automatic
  replacement: mask the padding in ``forward`` instead);
* any other trainable layer with buffers, which Opacus refuses.

:func:`prepare_model` refuses such a model with a
:class:`~securefl.errors.ModelIncompatibleError`, or, with
``replace_incompatible_layers=True``, returns a copy where each is replaced
and says what was replaced by what (logged as a warning on the
``securefl.privacy.layers`` logger, which Python prints on stderr when no
logging is configured).  A ``BatchNorm1d(C)`` becomes ``GroupNorm(1, C)``
(normalizing each example over its own features, like ``LayerNorm``), not
Opacus's ``GroupNorm(gcd(32, C), C)``: on ``(N, C)`` inputs that has one
feature per group, normalizes every feature to 0 and leaves a model that
predicts a constant.  The learned affine scale and shift are kept.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

from opacus.validators import ModuleValidator
from torch import nn

from securefl.errors import ModelIncompatibleError

__all__ = [
    "IncompatibleLayer",
    "Replacement",
    "incompatible_layers",
    "prepare_model",
]

logger = logging.getLogger(__name__)

OPT_IN = "replace_incompatible_layers=True"
"""The option that replaces incompatible layers instead of refusing them."""

_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_INSTANCENORM = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
_RECURRENT = {nn.LSTM: "DPLSTM", nn.GRU: "DPGRU", nn.RNN: "DPRNN",
              nn.MultiheadAttention: "DPMultiheadAttention"}


@dataclass(frozen=True)
class IncompatibleLayer:
    """A layer DP-SGD cannot train.

    Attributes:
        path: its module path in the model (``"encoder.1"``; ``""`` for the
            model itself).
        layer: its class name (``"BatchNorm1d"``).
        reason: why DP-SGD cannot train it.
        fix: what to use instead.
    """

    path: str
    layer: str
    reason: str
    fix: str

    @property
    def where(self) -> str:
        """``'path' (Class)``, how messages name it."""
        return f"{self.path or '<the model itself>'!r} ({self.layer})"


@dataclass(frozen=True)
class Replacement:
    """A layer replaced on request (``replace_incompatible_layers=True``).

    Attributes:
        path: its module path in the model.
        before: the replaced layer (``BatchNorm1d(16)``).
        after: its replacement (``GroupNorm(1, 16)``).
    """

    path: str
    before: str
    after: str

    def __str__(self) -> str:
        return f"replaced layer {self.path!r}: {self.before} -> {self.after}"


def _short(module: nn.Module) -> str:
    """A one-line description of a layer: ``GroupNorm(1, 16)``, ``LSTM(3, 4)``."""
    if isinstance(module, nn.GroupNorm):
        return f"GroupNorm({module.num_groups}, {module.num_channels})"
    if isinstance(module, _BATCHNORM):
        return f"{type(module).__name__}({module.num_features})"
    text = repr(module)
    return text if "\n" not in text else type(module).__name__


def _batchnorm_replacement(module: nn.modules.batchnorm._BatchNorm) -> nn.GroupNorm:
    channels = module.num_features
    groups = 1 if isinstance(module, nn.BatchNorm1d) else math.gcd(32, channels)
    new = nn.GroupNorm(groups, channels, eps=module.eps, affine=module.affine)
    if module.affine:
        # keep the learned per-channel scale and shift (and whether they train)
        new.weight.data.copy_(module.weight.data)
        new.bias.data.copy_(module.bias.data)
        new.weight.requires_grad_(module.weight.requires_grad)
        new.bias.requires_grad_(module.bias.requires_grad)
    tensors = [*module.parameters(), *module.buffers()]
    return new.to(tensors[0].device) if tensors else new


def _check(path: str, module: nn.Module,
           trainable: bool) -> tuple[IncompatibleLayer, Callable[[], nn.Module] | None] | None:
    """The problem with one layer and how to replace it (None: no problem)."""
    name = type(module).__name__
    if isinstance(module, _BATCHNORM):
        channels = module.num_features
        replacement = _batchnorm_replacement(module)
        if isinstance(module, nn.BatchNorm1d):
            instead = f"nn.GroupNorm(1, {channels}) or nn.LayerNorm({channels})"
        else:
            instead = f"nn.{_short(replacement)}"
        return IncompatibleLayer(
            path, name,
            "BatchNorm normalizes each example with the statistics of its whole batch, so"
            " no per-example gradient exists to clip (and its running statistics are"
            " computed from private data)",
            f"use {instead} instead, or pass {OPT_IN} to replace it by {_short(replacement)}",
        ), lambda: _batchnorm_replacement(module)
    if isinstance(module, _INSTANCENORM) and module.track_running_stats:
        return IncompatibleLayer(
            path, name, "its running statistics would be computed from private data",
            f"set track_running_stats=False, or pass {OPT_IN}",
        ), lambda: ModuleValidator.FIXERS[type(module)](module)
    if type(module) in _RECURRENT:
        dp = _RECURRENT[type(module)]
        return IncompatibleLayer(
            path, name, "Opacus cannot compute per-example gradients through its fused"
            " implementation",
            f"use opacus.layers.{dp} (a drop-in replacement), or pass {OPT_IN}",
        ), lambda: ModuleValidator.FIXERS[type(module)](module)
    if not trainable:
        return None
    if isinstance(module, nn.Embedding) and module.padding_idx is not None:
        return IncompatibleLayer(
            path, name, "Opacus's per-example gradient of an embedding ignores padding_idx:"
            " every padding token adds to the padding row, so an example's clipped gradient"
            " depends on how far its batch is padded (the longest other sampled record) and"
            " the clipping no longer bounds one record's effect on the sum",
            "build it with padding_idx=None and zero the padding positions' embeddings in"
            " forward (multiply by a mask: their gradients are then zero), or use"
            " nn.EmbeddingBag with offsets",
        ), None
    if type(module) in ModuleValidator.VALIDATORS:
        errors = ModuleValidator.VALIDATORS[type(module)](module)
        if errors:
            fixer = ModuleValidator.FIXERS.get(type(module))
            return IncompatibleLayer(
                path, name, "; ".join(str(e) for e in errors),
                "replace it by a layer Opacus supports"
                + (f", or pass {OPT_IN}" if fixer is not None else ""),
            ), (lambda: fixer(module)) if fixer is not None else None
    if any(True for _ in module.buffers()):
        return IncompatibleLayer(
            path, name, "Opacus cannot compute per-example gradients for a trainable"
            " layer that holds buffers",
            "move the buffers out of the trainable layer (or make them constants)",
        ), None
    return None


def _trainable(module: nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters(recurse=False))


def _scan(model: nn.Module) -> list[tuple[IncompatibleLayer, Callable[[], nn.Module] | None]]:
    found = []
    for path, module in model.named_modules():
        problem = _check(path, module, _trainable(module))
        if problem is not None:
            found.append(problem)
    return found


def incompatible_layers(model: nn.Module) -> list[IncompatibleLayer]:
    """Every layer of ``model`` that DP-SGD cannot train, in module order
    (empty: the model is fine).  The model is not modified."""
    return [layer for layer, _ in _scan(model)]


def _refusal(layers: list[IncompatibleLayer], *, after_replacement: bool = False) -> str:
    head = (f"the model has {len(layers)} layer{'s' if len(layers) > 1 else ''} that DP-SGD"
            " cannot train")
    if after_replacement:
        head += f" even with {OPT_IN}"
    return head + ": " + "; ".join(f"{layer.where}: {layer.reason}; fix: {layer.fix}"
                                   for layer in layers)


def prepare_model(model: nn.Module, *, replace_incompatible_layers: bool = False
                  ) -> tuple[nn.Module, list[Replacement]]:
    """``model`` itself when DP-SGD can train it; otherwise a refusal, or (with
    ``replace_incompatible_layers``) a copy with each incompatible layer
    replaced, every replacement logged as a warning.

    The caller's model is never modified.

    Returns:
        the model to train and the replacements made (empty when none).

    Raises:
        ModelIncompatibleError: naming every incompatible layer (module path
            and class), why and the fix; with ``replace_incompatible_layers``,
            only for a layer that has no replacement.
    """
    found = _scan(model)
    if not found:
        return model, []
    layers = [layer for layer, _ in found]
    if not replace_incompatible_layers:
        raise ModelIncompatibleError(_refusal(layers), layers=tuple(layers))
    unfixable = [layer for layer, fix in found if fix is None]
    if unfixable:
        raise ModelIncompatibleError(_refusal(unfixable, after_replacement=True),
                                     layers=tuple(unfixable))
    fixed = copy.deepcopy(model)
    replacements = []
    for layer, _ in found:
        if not layer.path:
            raise ModelIncompatibleError(
                _refusal([layer], after_replacement=True)
                + " (the model itself cannot be replaced: wrap it in a module)",
                layers=(layer,))
        parent_path, _, child = layer.path.rpartition(".")
        parent = fixed.get_submodule(parent_path)
        old = parent.get_submodule(child)
        problem = _check(layer.path, old, _trainable(old))
        assert problem is not None and problem[1] is not None
        new = problem[1]()
        parent.register_module(child, new)
        replacement = Replacement(layer.path, _short(old), _short(new))
        logger.warning("%s", replacement)
        replacements.append(replacement)
    remaining = incompatible_layers(fixed)
    if remaining:
        raise ModelIncompatibleError(_refusal(remaining, after_replacement=True),
                                     layers=tuple(remaining))
    return fixed, replacements
