"""``securefl sum-demo``: watch one secure aggregation session, round by round.

Ten hospitals each hold a vector of counts.  The server learns the sum and
nothing else, even though some hospitals drop out half-way.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from securefl.cli import help_text
from securefl.hazmat import signing
from securefl.hazmat.randomness import default_random
from securefl.protocol import (
    AggregationResult,
    ClientSession,
    Round,
    SecAggConfig,
    SecurityMode,
    ServerSession,
)

RoundReport = Callable[[Round, list[int], list[int], float], None]
"""Called once per protocol round with the round, the clients asked, the
clients that answered and the seconds the round took."""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``sum-demo`` sub-command."""
    p = sub.add_parser("sum-demo", help="one secure aggregation session, explained",
                       description=help_text(__doc__),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=10, help="number of clients (default 10)")
    p.add_argument("--length", type=int, default=100_000, help="vector length (default 100000)")
    p.add_argument("--bits", type=int, default=32, help="ring Z_{2^bits} (default 32)")
    p.add_argument("--mode", choices=[m.value for m in SecurityMode], default="semi-honest",
                   help="security mode: semi-honest (default; the server follows the protocol,"
                        " channels must be authenticated) or active (the server may deviate:"
                        " signed keys and a consistency round); see SECURITY.md")
    p.add_argument("--seed", type=int, default=0, help="seed of the demo inputs and dropouts")
    p.set_defaults(func=run)


def drive_session(config: SecAggConfig, inputs: Mapping[int, np.ndarray],
                  dropouts: Mapping[int, Round], report: RoundReport) -> AggregationResult:
    """Run one session with real client and server session objects, calling
    ``report`` as each round closes (the loop of
    :func:`securefl.protocol.secure_sum`, made visible).

    Raises:
        AbortError: fewer than ``t`` clients remained at some round.
    """
    source = default_random(None)  # the OS CSPRNG
    identities = {}
    pinned = None
    if config.mode is SecurityMode.ACTIVE:
        identities = {cid: signing.generate_identity(source) for cid in config.ids}
        pinned = {cid: key.public_key() for cid, key in identities.items()}

    def answers(cid: int, rnd: Round) -> bool:
        stop = dropouts.get(cid)
        return stop is None or rnd < stop

    workers = os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        server = ServerSession(config, peer_identities=pinned, rng=source, executor=pool)
        clients = {cid: ClientSession(config, cid, input=inputs[cid],
                                      identity_key=identities.get(cid), peer_identities=pinned,
                                      rng=source, executor=pool)
                   for cid in config.ids}
        rnd = Round.ADVERTISE_KEYS
        start = time.perf_counter()
        asked = list(config.ids)
        answered = []
        for cid, client in clients.items():
            advert = client.start()
            if answers(cid, rnd):
                server.receive(advert)
                answered.append(cid)
        while True:
            envelopes = server.close_round()
            report(rnd, asked, answered, time.perf_counter() - start)
            if server.finished:
                return server.result
            start = time.perf_counter()
            next_round = server.round
            assert next_round is not None
            rnd = next_round
            asked, answered = [], []
            for envelope in envelopes:
                asked.append(envelope.recipient)
                if answers(envelope.recipient, rnd):
                    server.receive(clients[envelope.recipient].handle(envelope.message))
                    answered.append(envelope.recipient)


def _print_round(rnd: Round, asked: list[int], answered: list[int], seconds: float) -> None:
    silent = sorted(set(asked) - set(answered))
    note = f"; silent: {silent}" if silent else ""
    print(f"  {rnd.name:<24} {len(answered):>4} of {len(asked):>4} clients answered"
          f"  {seconds:7.2f} s{note}", flush=True)


def run(args: argparse.Namespace) -> int:
    """Run one session and explain what the server saw."""
    config = SecAggConfig(num_clients=args.clients, vector_length=args.length, bits=args.bits,
                          mode=SecurityMode(args.mode))
    gen = np.random.default_rng(args.seed)  # demo data only; masks use the OS CSPRNG
    inputs = {c: gen.integers(0, 1000, config.vector_length, dtype=np.uint64)
              for c in config.ids}
    stages = [Round.SHARE_KEYS, Round.MASKED_INPUT_COLLECTION, Round.UNMASKING]
    dropped = gen.choice(list(config.ids), size=min(len(stages), config.num_clients - config.t),
                         replace=False)
    dropouts = {int(c): stages[i] for i, c in enumerate(dropped)}
    print(f"securefl secure aggregation: {config.num_clients} clients, vectors of"
          f" {config.vector_length:,} entries in Z_2^{config.bits}, threshold t={config.t},"
          f" {config.mode.value} mode")
    for c, rnd in sorted(dropouts.items()):
        print(f"  client {c} will drop out at {rnd.name}")
    print("\nround by round (the server closes each round with whoever answered):")
    start = time.perf_counter()
    result = drive_session(config, inputs, dropouts, _print_round)
    elapsed = time.perf_counter() - start
    plain = np.zeros(config.vector_length, dtype=np.uint64)
    for c in result.survivors:
        plain += inputs[c]
    plain &= np.uint64(config.modulus_mask)
    print(f"\nsession finished in {elapsed:.2f} s; survivors: {list(result.survivors)}")
    for c, status in sorted(result.statuses.items()):
        print(f"  client {c:>3}: {status.value}")
    exact = bool(np.array_equal(result.total, plain))
    print(f"\nsecure sum of the {len(result.survivors)} included inputs, first entries:"
          f" {result.total[:5].tolist()}")
    print(f"plain sum of the same inputs, first entries:        {plain[:5].tolist()}")
    print("the two are identical in every entry" if exact else "MISMATCH")
    return 0 if exact else 1
