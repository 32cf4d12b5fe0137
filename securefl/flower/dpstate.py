"""Carry a :class:`~securefl.privacy.client.PrivateClient` across ClientApp
processes.

Flower 1.4x runs every message in a fresh ClientApp process, while a DP-SGD
client's privacy accounting must continue from round to round.  These
functions save its accountant history (what it has spent) to, and restore it
from, a ConfigRecord in the node's Context state.

With the default randomness (:class:`~securefl.privacy.noise.OsRandomness`)
there is nothing else to carry: every draw comes fresh from ``os.urandom``
and no generator state exists that could predict the noise.  Only with
``insecure-reproducible-noise`` are the seeded Poisson-sampling and noise
generators' states carried too, so that a reproducible run continues its
streams instead of replaying them.
"""

from __future__ import annotations

from typing import Any

import torch

from securefl.errors import ConfigurationError
from securefl.privacy.client import PrivateClient
from securefl.privacy.noise import SeededRandomness

__all__ = ["load_private_client_state", "private_client_state"]


def private_client_state(client: PrivateClient) -> dict[str, Any]:
    """The state to carry to the next round (ConfigRecord-ready values)."""
    flat: list[float] = [float(v) for row in client.history for v in row]
    state: dict[str, Any] = {"history": flat, "history-rows": len(client.history)}
    if isinstance(client.randomness, SeededRandomness):
        sampling, noise = client.randomness.generators
        state["sampling-generator"] = bytes(sampling.get_state().numpy().tobytes())
        state["noise-generator"] = bytes(noise.get_state().numpy().tobytes())
    return state


def load_private_client_state(client: PrivateClient, state: dict[str, Any]) -> None:
    """Restore what :func:`private_client_state` saved (a no-op for an empty
    state: the first round).

    Raises:
        ConfigurationError: a malformed state, or generator states that do not
            match the client's randomness (seeded state for an
            ``os.urandom`` client or the reverse).
    """
    if not state:
        return
    seeded = isinstance(client.randomness, SeededRandomness)
    try:
        rows = int(state["history-rows"])
        flat = [float(v) for v in state.get("history", [])] if rows else []
        if len(flat) != 3 * rows:
            raise ValueError("history length")
        history = [(flat[3 * i], flat[3 * i + 1], int(flat[3 * i + 2])) for i in range(rows)]
        has_generators = "noise-generator" in state or "sampling-generator" in state
        if has_generators != seeded:
            raise ValueError("generator state does not match the client's noise source"
                             f" ({client.noise_source.value})")
        if isinstance(client.randomness, SeededRandomness):
            sampling, noise = client.randomness.generators
            sampling.set_state(torch.frombuffer(bytearray(state["sampling-generator"]),
                                                dtype=torch.uint8).clone())
            noise.set_state(torch.frombuffer(bytearray(state["noise-generator"]),
                                             dtype=torch.uint8).clone())
    except (KeyError, ValueError, TypeError, RuntimeError) as exc:
        raise ConfigurationError(f"malformed DP client state: {exc}") from None
    client.accountant.history = history  # type: ignore[assignment]
