"""Run a whole secure aggregation session in one process.

This drives real :class:`ClientSession` and :class:`ServerSession` objects
through every round, exactly as a transport would, with an optional dropout
schedule.  It is what tests, examples and the in-process simulator use.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from securefl.errors import ConfigurationError
from securefl.hazmat import signing
from securefl.hazmat.randomness import RandomSource, default_random
from securefl.protocol.client import ClientSession
from securefl.protocol.config import Round, SecAggConfig, SecurityMode
from securefl.protocol.server import AggregationResult, Executor, ServerSession
from securefl.protocol.validation import check_input_vector


def secure_sum(
    inputs: Mapping[int, np.ndarray],
    config: SecAggConfig,
    dropouts: Mapping[int, Round] | None = None,
    *,
    rng: RandomSource | None = None,
    executor: Executor | None = None,
) -> AggregationResult:
    """Securely sum ``inputs`` with the full protocol, in memory.

    Args:
        inputs: client id -> 1-D array of ``vector_length`` unsigned ints below
            2^bits, one for every id in ``config.client_ids``.
        config: the session configuration.
        dropouts: client id -> the first :class:`Round` at which it stops
            answering (it answered every earlier round).  In semi-honest mode
            ``CONSISTENCY_CHECK`` means "answers no round after its masked
            input", the same as ``UNMASKING``.
        rng: secret randomness for every party (default OS CSPRNG); pass a
            :class:`~securefl.hazmat.randomness.DeterministicRandom` only for
            reproducible tests.
        executor: optional executor for mask expansion (clients and server);
            by default a thread pool over the machine's CPUs is used for long
            vectors (AES-CTR and numpy release the GIL).

    Returns:
        the :class:`AggregationResult`: ``.total`` is the exact sum mod 2^bits
        of the inputs of ``.survivors``.

    Raises:
        AbortError: fewer than ``threshold`` clients remained at some round.
        ConfigurationError: inputs do not match the configuration.
        LocalProtocolError: an input vector is malformed or out of range.
    """
    dropouts = dict(dropouts or {})
    if set(inputs) != set(config.ids):
        raise ConfigurationError(
            f"inputs are for clients {sorted(inputs)[:10]}, the configuration invites"
            f" {list(config.ids)[:10]}"
        )
    for cid, rnd in dropouts.items():
        if cid not in config.ids:
            raise ConfigurationError(f"dropout for unknown client {cid}")
        if not isinstance(rnd, Round):
            raise ConfigurationError(f"dropout of client {cid} must be a Round, got {rnd!r}")
    vectors = {cid: check_input_vector(np.asarray(v), config, cid, local=True)
               for cid, v in inputs.items()}
    source = default_random(rng)
    identities: dict[int, Ed25519PrivateKey] = {}
    pinned = None
    if config.mode is SecurityMode.ACTIVE:
        identities = {cid: signing.generate_identity(source) for cid in config.ids}
        pinned = {cid: key.public_key() for cid, key in identities.items()}
    if executor is None and (os.cpu_count() or 1) > 1 and config.vector_length >= PARALLEL_MIN:
        with ThreadPoolExecutor(max_workers=os.cpu_count()) as pool:
            return _run(config, vectors, dropouts, source, identities, pinned, pool)
    return _run(config, vectors, dropouts, source, identities, pinned, executor)


PARALLEL_MIN = 1 << 17
"""Vectors at least this long are masked by several threads in ``secure_sum``."""


def _run(config: SecAggConfig, vectors: Mapping[int, np.ndarray], dropouts: Mapping[int, Round],
         source: RandomSource, identities: Mapping[int, Ed25519PrivateKey],
         pinned: Mapping[int, Ed25519PublicKey] | None,
         executor: Executor | None) -> AggregationResult:
    server = ServerSession(config, peer_identities=pinned, rng=source, executor=executor)
    clients = {
        cid: ClientSession(config, cid, input=vectors[cid], identity_key=identities.get(cid),
                           peer_identities=pinned, rng=source, executor=executor)
        for cid in config.ids
    }

    def answers(cid: int, rnd: Round) -> bool:
        stop = dropouts.get(cid)
        return stop is None or rnd < stop

    for cid, client in clients.items():
        advert = client.start()
        if answers(cid, Round.ADVERTISE_KEYS):
            server.receive(advert)
    while True:
        envelopes = server.close_round()
        if server.finished:
            return server.result
        rnd = server.round
        assert rnd is not None
        for envelope in envelopes:
            if answers(envelope.recipient, rnd):
                server.receive(clients[envelope.recipient].handle(envelope.message))
