"""Poisson client sampling and the secure aggregation session of a sampled
cohort, for user-level distributed DP (docs/user-level-dp.md): the
simulator (:func:`securefl.federation.simulation.run_simulation` with
``client_sample_rate < 1``) and ``examples/user_level_dp.py`` use these.

Every round each client joins independently with probability ``q``
(:func:`poisson_cohort`), drawn from the OS CSPRNG: the amplification by
sampling that the user-level ``epsilon`` claims holds only against whoever
cannot predict or learn the cohort, so it must not come from a seed.  The
server of the secure aggregation sees the cohort (hence the ledger's
``epsilon_unsampled``).  The session runs over the cohort alone, with the
threshold the security mode prescribes for the cohort's size
(:func:`cohort_threshold`); the ring is sized for :func:`cohort_bound`
clients.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

from securefl.errors import ConfigurationError
from securefl.protocol.config import SecAggConfig, SecurityMode, default_threshold
from securefl.protocol.graphs import NeighbourGraph
from securefl.protocol.noise import NoisePlan

__all__ = [
    "COHORT_BOUND_SIGMAS",
    "MIN_COHORT",
    "cohort_bound",
    "cohort_secagg_config",
    "cohort_threshold",
    "poisson_cohort",
]

COHORT_BOUND_SIGMAS = 4.0
"""Standard deviations above the mean cohort size ``n q`` that the ring is
sized for (:func:`cohort_bound`)."""
MIN_COHORT = 2
"""The fewest clients a secure aggregation session takes."""


def _check_rate(q: float) -> float:
    if isinstance(q, bool) or not isinstance(q, int | float) or not 0.0 < q <= 1.0:
        raise ConfigurationError(f"the client sampling rate must be in (0, 1], got {q!r}")
    return float(q)


def poisson_cohort(client_ids: Sequence[int], q: float) -> tuple[int, ...]:
    """Poisson sampling: each of ``client_ids`` joins independently with
    probability exactly ``q`` (a 64-bit uniform integer from ``os.urandom``
    per client, compared with ``q 2^64``, which is exact for every double
    ``q``).  No seed reaches it: the cohort is unpredictable to anyone who
    does not see it.

    Returns:
        the sampled ids, in the order given (possibly none).

    Raises:
        ConfigurationError: ``q`` is not in (0, 1].
    """
    q = _check_rate(q)
    ids = list(client_ids)
    if q == 1.0:
        return tuple(ids)
    cut = int(q * 2.0 ** 64)  # q * 2^64 is exact in binary floating point
    draws = os.urandom(8 * len(ids))
    return tuple(cid for i, cid in enumerate(ids)
                 if int.from_bytes(draws[8 * i:8 * i + 8], "big") < cut)


def cohort_bound(num_clients: int, q: float, sigmas: float = COHORT_BOUND_SIGMAS) -> int:
    """The cohort size the ring is sized for: ``ceil(n q + sigmas sqrt(n q
    (1 - q)))``, at most ``n`` (``n`` when ``q = 1``).  A larger cohort
    (probability below ``3.2e-5`` per round at 4 standard deviations, by
    the normal approximation) may wrap a coordinate around the ring: that
    costs accuracy, never privacy (modular clipping is post-processing).

    Raises:
        ConfigurationError: ``q`` not in (0, 1] or ``num_clients < 1``.
    """
    q = _check_rate(q)
    if num_clients < 1:
        raise ConfigurationError(f"need at least 1 client, got {num_clients}")
    mean = num_clients * q
    return min(num_clients, math.ceil(mean + sigmas * math.sqrt(mean * (1.0 - q))))


def cohort_threshold(cohort_size: int, mode: SecurityMode) -> int:
    """The Shamir threshold of a cohort's session: the security mode's
    default for the cohort's size (:func:`~securefl.protocol.default_threshold`:
    a majority in semi-honest mode, more than two thirds in active mode)."""
    return default_threshold(int(cohort_size), SecurityMode(mode))


def cohort_secagg_config(cohort: Sequence[int], *, vector_length: int, bits: int,
                         mode: SecurityMode, noise: NoisePlan | None = None,
                         graph: NeighbourGraph | None = None,
                         context: bytes = b"") -> SecAggConfig:
    """The secure aggregation session of a sampled cohort: its clients
    only, the threshold :func:`cohort_threshold` of its size.

    Raises:
        ConfigurationError: fewer than :data:`MIN_COHORT` clients, or a
            configuration no session accepts.
    """
    ids = [int(c) for c in cohort]
    if len(ids) < MIN_COHORT:
        raise ConfigurationError(f"a cohort of {len(ids)} client(s) is too small for a"
                                 f" secure aggregation session (at least {MIN_COHORT})")
    extra = {"graph": graph} if graph is not None else {}
    return SecAggConfig(num_clients=len(ids), vector_length=vector_length, bits=bits,
                        threshold=cohort_threshold(len(ids), mode), client_ids=ids,
                        mode=mode, noise=noise, context=context, **extra)
