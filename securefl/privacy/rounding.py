"""Where the randomness that rounds a client's update comes from: the one
derivation used by the simulator, :class:`~securefl.privacy.client.PrivateClient`
and the Flower mod.

Stochastic rounding of the encoded update hides the update's low-order bits
from the server, so by default its uniforms come from the OS CSPRNG
(:class:`OsRounding`, ``os.urandom`` at the moment they are drawn) and from
nothing the server or the run configuration knows: no seed, no round number,
no client id enters them.  Only a client built with
``DPConfig.insecure_reproducible_noise`` rounds with its seeded stream
(:meth:`~securefl.privacy.noise.SeededRandomness.for_round`), which whoever
knows the public seed regenerates.

This module imports neither torch nor Opacus (the Flower mod imports it in
every ClientApp process).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol

import numpy as np

from securefl.privacy.options import NoiseSource

if TYPE_CHECKING:
    from securefl.privacy.noise import ClientRandomness

__all__ = ["OsRounding", "RoundingSource", "rounding_randomness"]

_WORD_BITS_DROPPED = np.uint64(11)  # keep the top 53 bits of each 64-bit word
_TWO_POW_MINUS_53 = 2.0**-53


class RoundingSource(Protocol):
    """What :meth:`securefl.encoding.FixedPointCodec.encode` draws from."""

    def random(self, size: int) -> np.ndarray:
        """``size`` independent uniforms in [0, 1)."""
        ...


class OsRounding:
    """Uniforms in [0, 1) with 53 random bits each, read from ``os.urandom``
    when drawn (every value a multiple of 2**-53, as numpy's ``random()``).
    Stateless: there is nothing to persist, leak or regenerate."""

    def random(self, size: int) -> np.ndarray:
        """``size`` independent uniforms in [0, 1)."""
        count = int(size)
        if count <= 0:
            return np.zeros(0, dtype=np.float64)
        words = np.frombuffer(os.urandom(8 * count), dtype="<u8")
        return (words >> _WORD_BITS_DROPPED).astype(np.float64) * _TWO_POW_MINUS_53

    def __repr__(self) -> str:
        return "OsRounding()"


def rounding_randomness(randomness: ClientRandomness | None, round_number: int,
                        num_values: int) -> RoundingSource:
    """The source to round round ``round_number``'s update (of ``num_values``
    values) with.

    Args:
        randomness: the client's randomness
            (:attr:`PrivateClient.randomness <securefl.privacy.client.PrivateClient>`),
            or None for an update that no securefl DP client produced (a
            Flower ClientApp that returns its local model to the mod).

    Returns:
        :class:`OsRounding` unless ``randomness`` is the INSECURE seeded kind
        (``noise_source = "insecure-seeded"``); then its stream for the round,
        which anyone who knows the run seed regenerates.
    """
    if randomness is None or randomness.source is not NoiseSource.INSECURE_SEEDED:
        return OsRounding()
    return randomness.for_round(int(round_number), int(num_values))
