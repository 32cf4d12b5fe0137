"""Drive real sessions round by round so tests can intercept any message."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from securefl.protocol import SecAggConfig
from securefl.protocol.inmemory import SessionDriver
from securefl.protocol.messages import ServerMessage


class Federation(SessionDriver):
    """A server and its clients, stepped one round at a time (random inputs
    unless ``inputs`` is given; fresh OS-random keys)."""

    def __init__(self, config: SecAggConfig, inputs: dict[int, np.ndarray] | None = None) -> None:
        if not inputs:
            gen = np.random.default_rng(0)
            high = 2**config.bits if config.bits < 64 else 2**63
            inputs = {c: gen.integers(0, high, config.vector_length, dtype=np.uint64)
                      for c in config.ids}
        self.inputs = inputs
        super().__init__(config, inputs)

    def advertise(self, skip: Iterable[int] = ()) -> dict[int, ServerMessage]:
        """Every client starts, those not in ``skip`` advertise; close R0."""
        self.start(skip)
        return self.close()

    def expected_sum(self) -> np.ndarray:
        """The exact sum of the survivors' inputs."""
        total = np.zeros(self.config.vector_length, dtype=np.uint64)
        for c in self.result.survivors:
            total += self.inputs[c]
        if self.config.bits < 64:
            total &= np.uint64((1 << self.config.bits) - 1)
        return total
