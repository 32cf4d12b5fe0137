"""The server's unmasking against its 2-core hardware floor, measured in one run.

Usage:
  python benchmarks/unmask_floor.py [--n 500] [--m 100000] [--dropout 0.3]
                                    [--bits 31] [--repeat 3] [--workers W] [--designs]
                                    [--profile] [--graph complete|harary] [--equal-tasks 4]

One semi-honest session (complete graph, or with ``--graph harary`` the
suite's sparse setting for ``n``) is run up to the moment the server holds
every unmasking response; ``round(dropout * n)`` clients drop after
sharing their keys (the costliest case: every pairwise mask between them and
the survivors must be recomputed).  Copies of that server then close the
last round, interleaved, best of ``--repeat``:

* ``processes``: ``unmask_pool`` = :func:`securefl.protocol.unmasking.worker_pool`
  (``W`` processes, created once, before the timings);
* ``threads``: the thread-pool path (main's: key agreement and derivation on
  the calling thread, AES split over ``W`` threads).

Every result is checked exactly against the plain sum of the survivors'
inputs.  The floor is computed for the round's exact work: the keystream
bytes (one mask of ``m`` ring words per survivor self mask and per
(dropped, survivor) pair) at OpenSSL's single-core AES-256-CTR rate plus the
pair count of X25519 exchanges at OpenSSL's single-core X25519 rate (or
``cryptography``'s when there is no openssl binary), divided by the cores
(``os.cpu_count()``).  The rates are measured before and after the timings;
the higher (the stricter floor) is used.  ``--profile`` prints where this
process spends the first timed close of each kind.  The machine may be shared: the
1-minute load average is printed with every timing, and so is the CPU time
used (this process and the pool's workers, from /proc): against the floor's
CPU time (the floor times the cores; ``openssl speed`` counts CPU time too)
it estimates the ratio on an idle machine when the wall time cannot.

With ``--designs`` no session is run: the same mask removal (random keys
for the same numbers of survivors and dropped clients) is timed three ways,
interleaved, and checked equal: ``whole``, the tasks run whole in processes
(what ``unmask_pool`` does: :func:`securefl.protocol.unmasking.plan`'s tasks
of decreasing size); ``equal``, the same with ``--equal-tasks`` tasks of equal
size per worker (the split used before); for these two the ``tail`` is also
printed, the time between the last two tasks' results, when one worker has
nothing left to do; ``split``, the keys derived in processes
(:func:`securefl.protocol.unmasking.derive_keys`) and the AES spread over
threads; ``main``, the keys derived on the calling thread and the AES spread
over threads (the thread-pool path).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

import numpy as np

from securefl.bench.core import (
    cryptography_x25519_per_second,
    openssl_aes_ctr_gbps,
    openssl_x25519_per_second,
)
from securefl.bench.suite import sparse_parameters
from securefl.hazmat.agreement import KeyPair
from securefl.hazmat.prg import MaskExpander, ring_dtype
from securefl.hazmat.randomness import default_random
from securefl.protocol import Round, SecAggConfig
from securefl.protocol import derivation as d
from securefl.protocol.config import ClientStatus
from securefl.protocol.graphs import neighbour_map
from securefl.protocol.harary import HararyGraph
from securefl.protocol.inmemory import SessionDriver
from securefl.protocol.server import ServerSession
from securefl.protocol.unmasking import (
    TASKS_PER_WORKER,
    MaskSumTask,
    derive_keys,
    mask_sum,
    plan,
    worker_pool,
)


def _rates() -> tuple[float, float, str]:
    """(AES-256-CTR bytes/s, X25519 exchanges/s, source), one core each."""
    aes = openssl_aes_ctr_gbps()
    if aes is None:
        raise SystemExit("the floor needs OpenSSL's AES rate: no openssl binary found")
    x25519 = openssl_x25519_per_second()
    source = "openssl speed"
    if x25519 is None:  # an openssl without ecdhx25519
        x25519, source = cryptography_x25519_per_second(), "openssl (AES), cryptography (X25519)"
    return aes * 1e9, x25519, source


class _FanOut(SessionDriver):
    """The in-memory driver, delivering every client message to several
    servers; the first one's messages go to the clients (all are equal)."""

    def __init__(self, config: SecAggConfig, inputs: Mapping[int, np.ndarray],
                 servers: Sequence[ServerSession], **kwargs: Any) -> None:
        super().__init__(config, inputs, **kwargs)
        self.servers = list(servers)
        self.server = self.servers[0]

    def server_receive(self, rnd: Round, cid: int, message: Any) -> None:
        for server in self.servers:
            server.receive(message)

    def server_close(self, rnd: Round) -> Sequence[Any]:
        out = [server.close_round() for server in self.servers]
        return out[0]


def _floor(keystream: int, exchanges: int, cores: int, before: tuple[float, float, str],
           after: tuple[float, float, str]) -> float:
    """The floor in seconds, and a report of the rates and the work."""
    aes_rate, x25519_rate = max(before[0], after[0]), max(before[1], after[1])
    floor = (keystream / aes_rate + exchanges / x25519_rate) / cores
    print(f"work: {keystream / 1e9:.2f} GB keystream, {exchanges} X25519 exchanges")
    print(f"rates ({before[2]}, per core, before/after): AES-256-CTR"
          f" {before[0] / 1e9:.2f}/{after[0] / 1e9:.2f} GB/s, X25519"
          f" {before[1]:,.0f}/{after[1]:,.0f} per s")
    print(f"{cores}-core floor: {floor:.2f} s (AES {keystream / aes_rate / cores:.2f} s +"
          f" X25519 {exchanges / x25519_rate / cores:.2f} s)")
    return floor


def _verdict(name: str, wall: float, cpu: float, load: float, floor: float,
             cores: int) -> None:
    print(f"{name:9s} best {wall:.2f} s = {wall / floor:.2f}x the floor (load {load:.2f} at"
          f" that run); least CPU {cpu:.2f} s = {cpu / (floor * cores):.2f}x the floor's"
          f" {floor * cores:.2f} CPU s")


def _equal_plan(tasks: Sequence[MaskSumTask], parts: int) -> list[MaskSumTask]:
    """``tasks`` re-cut into ``parts`` tasks of equal mask counts (up to one)."""
    first = tasks[0]
    units = [("seed", u, s, None) for t in tasks for u, s in t.seeds]
    units += [("pair", u, raw, v) for t in tasks for u, raw, vs in t.keys for v in vs]
    public = {v: p for t in tasks for v, p in t.public.items()}
    out = []
    for i in range(parts):
        piece = units[i * len(units) // parts:(i + 1) * len(units) // parts]
        grouped: dict[tuple[int, bytes], list[int]] = {}
        for kind, u, raw, v in piece:
            if kind == "pair":
                grouped.setdefault((u, raw), []).append(v)
        out.append(MaskSumTask(
            first.length, first.bits, first.session_id,
            tuple((u, s) for kind, u, s, _ in piece if kind == "seed"),
            tuple((u, raw, tuple(vs)) for (u, raw), vs in grouped.items()),
            {v: public[v] for vs in grouped.values() for v in vs}))
    return out


def _in_order(pool: Any, tasks: Sequence[MaskSumTask], total: np.ndarray,
              tails: list[float]) -> None:
    """The tasks' partial sums added into ``total``, in the order they finish;
    the gap between the last two appended to ``tails``."""
    done = []
    for future in as_completed([pool.submit(mask_sum, task) for task in tasks]):
        np.add(total, future.result(), out=total)
        done.append(time.perf_counter())
    tails.append(done[-1] - done[-2] if len(done) > 1 else 0.0)


def _designs(n: int, m: int, dropout: float, bits: int, repeat: int, workers: int,
             equal_tasks: int) -> None:
    """The mask removal alone, three ways (see the module docstring)."""
    cores = os.cpu_count() or 1
    rng = default_random(None)
    dropped = round(dropout * n)
    survivors = list(range(1, n - dropped + 1))
    gone = list(range(n - dropped + 1, n + 1))
    sid = os.urandom(32)
    seeds = {v: os.urandom(32) for v in survivors}
    pairs = {u: KeyPair.generate(rng) for u in gone}
    keys = {u: p.private_bytes() for u, p in pairs.items()}
    public = {v: KeyPair.generate(rng).public_bytes for v in survivors}
    peers = {u: survivors for u in gone}
    expander = MaskExpander(m, bits)
    start_sum = np.random.default_rng(2).integers(0, 1 << bits, m, dtype=np.uint64).astype(
        expander.dtype)
    tasks = plan(m, bits, sid, seeds, keys, peers, public, workers * TASKS_PER_WORKER)
    equal = _equal_plan(tasks, workers * equal_tasks)
    tails: dict[str, list[float]] = {"whole": [], "equal": []}

    with ThreadPoolExecutor(workers) as threads, worker_pool(workers) as processes:
        pids = sorted(set(processes.map(_pid, range(8 * workers))))

        def whole() -> np.ndarray:
            total = start_sum.copy()
            _in_order(processes, tasks, total, tails["whole"])
            return expander.reduce(total)

        def equal_split() -> np.ndarray:
            total = start_sum.copy()
            _in_order(processes, equal, total, tails["equal"])
            return expander.reduce(total)

        def split() -> np.ndarray:
            jobs = [job for part in processes.map(derive_keys, tasks) for job in part]
            return expander.apply(jobs, start_sum.copy(), executor=threads, workers=workers)

        def main_thread() -> np.ndarray:
            jobs = [(d.self_mask_key(seeds[v], sid, v), True) for v in survivors]
            for u, pair in pairs.items():
                jobs += [(d.masking_secret(pair, public[v], sid, u, v), v < u) for v in peers[u]]
            return expander.apply(jobs, start_sum.copy(), executor=threads, workers=workers)

        before = _rates()
        best: dict[str, float] = {}
        cpus: dict[str, float] = {}
        loads: dict[str, float] = {}
        reference = None
        for r in range(repeat):
            for name, fn in (("whole", whole), ("equal", equal_split), ("split", split),
                             ("main", main_thread)):
                total, seconds, cpu, own, load = _timed(fn, pids)
                if reference is None:
                    reference = total
                assert np.array_equal(total, reference), f"{name}: a different sum"
                print(f"  run {r + 1} {name:6s} {seconds:6.2f} s  cpu={cpu:6.2f} s (here"
                      f" {own:.2f} s)  equal=True  load={load:.2f}"
                      + (f"  tail={tails[name][-1]:.3f} s" if name in tails else ""),
                      flush=True)
                if seconds < best.get(name, float("inf")):
                    best[name], loads[name] = seconds, load
                cpus[name] = min(cpus.get(name, float("inf")), cpu)
        after = _rates()
    exchanges = sum(len(vs) for vs in peers.values())
    keystream = (len(survivors) + exchanges) * m * expander.dtype.itemsize
    print(f"mask removal alone: {len(survivors)} survivors, {dropped} dropped after sharing,"
          f" m={m} bits={bits} cores={cores} workers={workers}")
    floor = _floor(keystream, exchanges, cores, before, after)
    for name in best:
        _verdict(name, best[name], cpus[name], loads[name], floor, cores)
    for name, values in tails.items():
        print(f"{name:9s} {len(tasks) if name == 'whole' else len(equal)} tasks, tails (s):"
              f" {', '.join(f'{t:.3f}' for t in sorted(values))}")


def _load() -> float:
    return os.getloadavg()[0]


def _pid(_: int) -> int:
    time.sleep(0.05)
    return os.getpid()


def _cpu(pids: Sequence[int]) -> float:
    """CPU seconds used so far by this process (every thread) and by the
    processes ``pids`` (Linux /proc; 0 for them elsewhere)."""
    total = time.process_time()
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _timed(fn: Any, pids: Sequence[int]) -> tuple[Any, float, float, float, float]:
    """``fn()``, its wall seconds, CPU seconds (see :func:`_cpu`), the part of
    them in this process, and the load."""
    load = _load()
    cpu, own, start = _cpu(pids), time.process_time(), time.perf_counter()
    out = fn()
    wall = time.perf_counter() - start
    return out, wall, _cpu(pids) - cpu, time.process_time() - own, load


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--m", type=int, default=100_000)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--bits", type=int, default=31)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--graph", choices=("complete", "harary"), default="complete")
    parser.add_argument("--designs", action="store_true")
    parser.add_argument("--equal-tasks", type=int, default=4,
                        help="with --designs: equal tasks per worker of the 'equal' split")
    parser.add_argument("--profile", action="store_true",
                        help="print where this process spends the first timed close")
    args = parser.parse_args()
    if args.designs:
        _designs(args.n, args.m, args.dropout, args.bits, args.repeat, args.workers,
                 args.equal_tasks)
        return
    n, m, bits, workers = args.n, args.m, args.bits, args.workers
    cores = os.cpu_count() or 1
    if args.graph == "harary":
        # the suite's sparse setting: SecAgg+ parameters for this n and dropout
        params = sparse_parameters(n, max(args.dropout, 0.05), 0.05)
        if params is None:
            raise SystemExit(f"no sparse graph parameters for n={n}")
        config = SecAggConfig(num_clients=n, vector_length=m, bits=bits,
                              graph=HararyGraph(params[0]), threshold=params[1])
    else:
        config = SecAggConfig(num_clients=n, vector_length=m, bits=bits)
    gen = np.random.default_rng(1)
    inputs = {c: gen.integers(0, 1 << bits, m, dtype=np.uint64) for c in config.ids}
    dropped = config.ids[n - round(args.dropout * n):]

    with ThreadPoolExecutor(workers) as threads, worker_pool(workers) as processes:
        # one server per timed close, all fed the very same messages
        variants = {
            "processes": lambda: ServerSession(config, executor=threads, unmask_pool=processes,
                                               workers=workers),
            "threads": lambda: ServerSession(config, executor=threads, workers=workers),
        }
        servers = [(r, name, make()) for r in range(args.repeat)
                   for name, make in variants.items()]
        start = time.perf_counter()
        driver = _FanOut(config, inputs, [s for _, _, s in servers], executor=threads,
                         workers=workers,
                         dropouts=dict.fromkeys(dropped, Round.MASKED_INPUT_COLLECTION))
        driver.start()
        driver.close()
        while driver.round is not Round.UNMASKING:
            driver.step()
        driver.answer()  # every unmasking response is now with every server
        print(f"set-up (n={n} clients up to the last round): {time.perf_counter() - start:.1f} s",
              flush=True)
        pids = sorted(set(processes.map(_pid, range(8 * workers))))  # the workers are up
        server = servers[0][2]

        statuses = server.statuses
        survivors = [c for c, s in statuses.items()
                     if s is ClientStatus.UNMASKING_RESPONSE_RECEIVED]
        gone = [c for c, s in statuses.items()
                if s is ClientStatus.DEAD_AFTER_SHARE_KEYS_RECEIVED]
        assert server.session_id is not None
        graph = neighbour_map(config.graph, config.ids, server.session_id)
        alive = set(survivors)
        pairs = sum(len(set(graph[u]) & alive) for u in gone)
        width = ring_dtype(bits).itemsize
        keystream = (len(survivors) + pairs) * m * width
        expected = np.zeros(m, dtype=np.uint64)
        for c in survivors:
            np.add(expected, inputs[c], out=expected)
        expected &= np.uint64((1 << bits) - 1)

        before = _rates()
        best = dict.fromkeys(variants, float("inf"))
        cpus = dict.fromkeys(variants, float("inf"))
        loads: dict[str, float] = {}
        for r, name, session in servers:
            profile = cProfile.Profile() if args.profile and r == 0 else None
            if profile is not None:
                profile.enable()
            _, seconds, cpu, own, load = _timed(session.close_round, pids)
            if profile is not None:
                profile.disable()
                pstats.Stats(profile).sort_stats("tottime").print_stats(12)
            exact = bool(np.array_equal(session.result.total, expected))
            assert exact, f"{name}: the sum is wrong"
            print(f"  run {r + 1} {name:9s} {seconds:6.2f} s  cpu={cpu:6.2f} s (here {own:.2f} s)"
                  f"  exact={exact}  load={load:.2f}", flush=True)
            if seconds < best[name]:
                best[name], loads[name] = seconds, load
            cpus[name] = min(cpus[name], cpu)
        after = _rates()

    print(f"{config.graph.describe()}: n={n} m={m} bits={bits} dropped after sharing="
          f"{len(gone)} survivors={len(survivors)} cores={cores} workers={workers};"
          f" {len(survivors)} self + {pairs} pair masks")
    floor = _floor(keystream, pairs, cores, before, after)
    for name in variants:
        _verdict(name, best[name], cpus[name], loads[name], floor, cores)
    print(f"processes / threads: {best['processes'] / best['threads']:.2f}")


if __name__ == "__main__":
    main()
