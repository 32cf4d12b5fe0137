"""``securefl sum-demo``: watch one secure aggregation session, round by round.

Ten hospitals each hold a vector of counts.  The server learns the sum and
nothing else, even though some hospitals drop out half-way.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from securefl.protocol import Round, SecAggConfig, SecurityMode, secure_sum


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``sum-demo`` sub-command."""
    p = sub.add_parser("sum-demo", help="one secure aggregation session, explained",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=10, help="number of clients (default 10)")
    p.add_argument("--length", type=int, default=100_000, help="vector length (default 100000)")
    p.add_argument("--bits", type=int, default=32, help="ring Z_{2^bits} (default 32)")
    p.add_argument("--mode", choices=[m.value for m in SecurityMode], default="semi-honest")
    p.add_argument("--seed", type=int, default=0, help="seed of the demo inputs and dropouts")
    p.set_defaults(func=run)


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
    start = time.perf_counter()
    result = secure_sum(inputs, config, dropouts)
    elapsed = time.perf_counter() - start
    plain = np.zeros(config.vector_length, dtype=np.uint64)
    for c in result.survivors:
        plain += inputs[c]
    plain &= np.uint64(config.modulus_mask)
    print(f"\nround finished in {elapsed:.2f} s; survivors: {list(result.survivors)}")
    for c, status in sorted(result.statuses.items()):
        print(f"  client {c:>3}: {status.value}")
    exact = bool(np.array_equal(result.total, plain))
    print(f"\nsecure sum of the {len(result.survivors)} included inputs, first entries:"
          f" {result.total[:5].tolist()}")
    print(f"plain sum of the same inputs, first entries:        {plain[:5].tolist()}")
    print("the two are identical in every entry" if exact else "MISMATCH")
    return 0 if exact else 1
