"""Atomic checkpoints of the global model."""

from __future__ import annotations

import os
from typing import Any

import torch

from securefl.durable import atomic_write

__all__ = ["CHECKPOINT_FILENAME", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FILENAME = "checkpoint.pt"


def save_checkpoint(path: str | os.PathLike[str], *, round: int,
                    model_state: dict[str, torch.Tensor],
                    optimizer_state: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Write ``{round, model, server_optimizer, extra}`` to a temporary file
    in the same directory, fsync it, then atomically replace ``path`` and
    fsync the directory (:func:`securefl.durable.atomic_write`): a reader
    always sees a complete checkpoint (the old one or the new one).

    Raises:
        OSError: when it cannot be written; ``path`` is then unchanged.
    """
    state = {"round": int(round), "model": model_state,
             "server_optimizer": optimizer_state, "extra": extra or {}}
    atomic_write(path, lambda handle: torch.save(state, handle))


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        OSError: when it cannot be read.
    """
    return torch.load(path, map_location="cpu", weights_only=False)
