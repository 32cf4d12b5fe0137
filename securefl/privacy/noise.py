"""Where a DP client's randomness comes from: DP-SGD noise, Poisson sampling
and the stochastic rounding of its update.

All three protect the client's data from the server, so by default they come
from the operating system's CSPRNG and from nothing the server or the run
configuration knows:

* :class:`OsRandomness` (``noise_source = "os-csprng"``) reads every random
  bit from ``os.urandom`` at the moment it is needed.  There is no seed and
  no generator state to leak, persist or regenerate: Poisson sampling and
  rounding compare uniform 53-bit fractions drawn from ``os.urandom``; the
  Gaussian noise is Box-Muller on such fractions, and, like Opacus's
  ``secure_mode``, each noise value is the sum of four independent normal
  draws divided by two (Holohan and Braghin, arXiv 2107.10138, section 5.1),
  which blunts floating-point attacks on the Gaussian sampler.
  (Opacus's own ``secure_mode`` needs ``torchcsprng``, which has no release
  for current torch, so the noise is drawn here and added through Opacus's
  ``DPOptimizer``; see :mod:`securefl.privacy.client`.)
* :class:`SeededRandomness` (``noise_source = "insecure-seeded"``) reproduces
  the old behaviour exactly: torch generators seeded from the public run seed
  and the client id (Opacus's own ``torch.normal`` and ``torch.rand`` calls)
  and, for rounding, the client's segment of a numpy stream seeded with the
  run seed and the round (the simulator's former shared rounding generator).
  Anyone who knows the seed regenerates the noise and subtracts it from the
  update, so the DP guarantee is void against them.  It exists only behind
  ``DPConfig.insecure_reproducible_noise``.
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np
import torch

from securefl.privacy.options import NoiseSource

__all__ = [
    "ClientRandomness",
    "NoiseSource",
    "OsRandomness",
    "SeededRandomness",
    "os_uniform",
]


_TWO_POW_53 = float(2**53)


def os_uniform(count: int) -> np.ndarray:
    """``count`` independent uniform float64 values in [0, 1), each the top 53
    bits of 8 bytes of ``os.urandom`` divided by 2**53 (so every value is a
    multiple of 2**-53, exactly as numpy's own ``random()``)."""
    if count <= 0:
        return np.zeros(0, dtype=np.float64)
    words = np.frombuffer(os.urandom(8 * count), dtype=np.uint64)
    return (words >> np.uint64(11)).astype(np.float64) / _TWO_POW_53


def _os_standard_normal(count: int) -> np.ndarray:
    """``count`` independent N(0, 1) values by Box-Muller on ``os_uniform``."""
    pairs = (count + 1) // 2
    u = os_uniform(2 * pairs)
    radius = np.sqrt(-2.0 * np.log1p(-u[:pairs]))  # 1 - u is in (0, 1]: log is finite
    angle = 2.0 * np.pi * u[pairs:]
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])[:count]


class ClientRandomness(Protocol):
    """The random draws a DP client makes."""

    source: NoiseSource

    def gaussian(self, std: float, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """Independent N(0, std^2) noise of ``shape``."""
        ...

    def poisson_mask(self, count: int, rate: float) -> torch.Tensor:
        """A boolean mask: each of ``count`` records independently with
        probability ``rate``."""
        ...

    def random(self, size: int) -> np.ndarray:
        """``size`` uniform values in [0, 1) for stochastic rounding (the one
        method :meth:`securefl.encoding.FixedPointCodec.encode` calls)."""
        ...

    def for_round(self, round_number: int, num_values: int) -> ClientRandomness:
        """The randomness to round round ``round_number``'s update (of
        ``num_values`` values) with."""
        ...


class OsRandomness:
    """Every draw straight from ``os.urandom``: secret, unpredictable,
    stateless (nothing to persist between rounds or processes)."""

    source = NoiseSource.OS_CSPRNG

    def gaussian(self, std: float, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        count = int(np.prod(shape, dtype=np.int64))
        if std == 0:
            return torch.zeros(shape, dtype=dtype)
        # Sum of 4 N(0, std^2) draws, halved: N(0, std^2) again (Opacus's
        # secure_mode construction against floating-point attacks).
        total = _os_standard_normal(4 * count).reshape(4, count).sum(axis=0) / 2.0
        return torch.from_numpy(total * float(std)).to(dtype).reshape(shape)

    def poisson_mask(self, count: int, rate: float) -> torch.Tensor:
        return torch.from_numpy(os_uniform(count) < float(rate))

    def random(self, size: int) -> np.ndarray:
        return os_uniform(int(size))

    def for_round(self, round_number: int, num_values: int) -> OsRandomness:
        return self

    def __repr__(self) -> str:
        return "OsRandomness()"


class SeededRandomness:
    """INSECURE, reproducible randomness from the public run ``seed``: the
    torch generators the old code gave Opacus (with ``s = seed * 1000 +
    client_id``: ``s * 2 + 1`` for Poisson sampling through ``torch.rand``,
    ``s * 2 + 2`` for the noise through ``torch.normal``) and, for rounding
    in round ``r``, ``numpy.random.default_rng([seed, 13, r])`` advanced by
    ``(client_id - 1) * num_values`` (the client's segment of the round's
    stream).  Whoever knows ``seed`` regenerates every draw."""

    source = NoiseSource.INSECURE_SEEDED

    def __init__(self, seed: int, client_id: int) -> None:
        self.seed = int(seed)
        self.client_id = int(client_id)
        client_seed = self.seed * 1000 + self.client_id
        self._sampling = torch.Generator().manual_seed(client_seed * 2 + 1)
        self._noise = torch.Generator().manual_seed(client_seed * 2 + 2)
        self._rounding = np.random.default_rng([self.seed, 13, 0])

    @property
    def generators(self) -> tuple[torch.Generator, torch.Generator]:
        """The sampling and noise generators (their state is carried across
        Flower ClientApp processes by :mod:`securefl.flower.dpstate`)."""
        return self._sampling, self._noise

    def gaussian(self, std: float, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        if std == 0:
            return torch.zeros(shape, dtype=dtype)
        return torch.normal(mean=0, std=std, size=shape, generator=self._noise, dtype=dtype)

    def poisson_mask(self, count: int, rate: float) -> torch.Tensor:
        return torch.rand(count, generator=self._sampling) < rate

    def random(self, size: int) -> np.ndarray:
        return self._rounding.random(int(size))

    def for_round(self, round_number: int, num_values: int) -> SeededRandomness:
        self._rounding = np.random.default_rng([self.seed, 13, int(round_number)])
        self._rounding.bit_generator.advance(  # type: ignore[attr-defined]
            (self.client_id - 1) * int(num_values))
        return self

    def __repr__(self) -> str:
        return f"SeededRandomness(seed={self.seed}, client_id={self.client_id}, INSECURE)"
