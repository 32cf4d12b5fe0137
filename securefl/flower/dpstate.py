"""Carry a :class:`~securefl.privacy.client.PrivateClient` across ClientApp
processes.

Flower 1.4x runs every message in a fresh ClientApp process, while a DP-SGD
client's privacy accounting and random streams must continue from round to
round: its accountant history (what it has spent), its Poisson sampler's
generator and its noise generator.  These functions save them to, and
restore them from, a ConfigRecord in the node's Context state.  The noise
generator state is secret (it predicts the noise): it stays on the node.

(These reach into PrivateClient's Opacus objects; they belong in
``securefl.privacy.client`` as ``PrivateClient.state_dict`` /
``load_state_dict`` once that module is settled.)
"""

from __future__ import annotations

from typing import Any

import torch

from securefl.errors import ConfigurationError
from securefl.privacy.client import PrivateClient

__all__ = ["load_private_client_state", "private_client_state"]


def _generators(client: PrivateClient) -> tuple[torch.Generator, torch.Generator]:
    sampler = getattr(getattr(client, "_loader", None), "batch_sampler", None)
    sampling = getattr(sampler, "generator", None)
    noise = getattr(getattr(client, "_optimizer", None), "generator", None)
    if not isinstance(sampling, torch.Generator) or not isinstance(noise, torch.Generator):
        raise ConfigurationError("this PrivateClient does not expose its Opacus generators")
    return sampling, noise


def private_client_state(client: PrivateClient) -> dict[str, Any]:
    """The state to carry to the next round (ConfigRecord-ready values)."""
    sampling, noise = _generators(client)
    flat: list[float] = [float(v) for row in client.history for v in row]
    return {
        "history": flat,
        "history-rows": len(client.history),
        "sampling-generator": bytes(sampling.get_state().numpy().tobytes()),
        "noise-generator": bytes(noise.get_state().numpy().tobytes()),
    }


def load_private_client_state(client: PrivateClient, state: dict[str, Any]) -> None:
    """Restore what :func:`private_client_state` saved (a no-op for an empty
    state: the first round).

    Raises:
        ConfigurationError: a malformed state.
    """
    if not state:
        return
    try:
        rows = int(state["history-rows"])
        flat = [float(v) for v in state.get("history", [])] if rows else []
        if len(flat) != 3 * rows:
            raise ValueError("history length")
        history = [(flat[3 * i], flat[3 * i + 1], int(flat[3 * i + 2])) for i in range(rows)]
        sampling, noise = _generators(client)
        sampling.set_state(torch.frombuffer(bytearray(state["sampling-generator"]),
                                            dtype=torch.uint8).clone())
        noise.set_state(torch.frombuffer(bytearray(state["noise-generator"]),
                                         dtype=torch.uint8).clone())
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise ConfigurationError(f"malformed DP client state: {exc}") from None
    client.engine.accountant.history = history  # type: ignore[assignment]
