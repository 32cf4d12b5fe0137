"""Where secret randomness comes from.

Sessions never call ``os.urandom`` themselves: they take a
:class:`RandomSource`, so that test vectors can replay a session with fixed
fake randomness.  Production code uses :class:`SystemRandom` (the OS CSPRNG).
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from securefl.errors import ConfigurationError


@runtime_checkable
class RandomSource(Protocol):
    """Anything that returns ``n`` uniformly random bytes."""

    def token_bytes(self, n: int) -> bytes:
        """Return ``n`` fresh random bytes."""
        ...


class SystemRandom:
    """The operating system's CSPRNG (``os.urandom``)."""

    def token_bytes(self, n: int) -> bytes:
        return os.urandom(n)

    def __repr__(self) -> str:
        return "SystemRandom()"


class DeterministicRandom:
    """AES-256-CTR keystream from a 32-byte seed.

    Every byte a session draws is a function of the seed, so the seed is as
    secret as the keys it yields.  Two uses only: test vectors and
    reproducible tests (a known seed, never real keys), and the Flower mod
    (:mod:`securefl.flower.mod`), which seeds it with 32 fresh bytes of
    ``os.urandom`` kept on the node alone, so that each ClientApp process can
    rebuild the same session by replay.  Never seed it from anything the
    server, the run configuration or a checkpoint knows.
    """

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ConfigurationError("DeterministicRandom needs a 32-byte seed")
        self._enc = Cipher(algorithms.AES(seed), modes.CTR(b"\0" * 16)).encryptor()

    def token_bytes(self, n: int) -> bytes:
        return self._enc.update(b"\0" * n)

    def __repr__(self) -> str:
        return "DeterministicRandom(<seed hidden>)"


def default_random(rng: RandomSource | None) -> RandomSource:
    """``rng`` if given, else the OS CSPRNG."""
    return rng if rng is not None else SystemRandom()
