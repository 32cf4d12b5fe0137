"""Scaling of a full in-process round (Harary graph, v1 codec on every message).

Usage:
  python benchmarks/scale_round.py [n ...] [--m M] [--dropout D] [--profile]
  python benchmarks/scale_round.py 500 1000 2000 --baseline /path/to/other/checkout
  python benchmarks/scale_round.py 10000 --m 100000 --dropout 0.1 --server-process --spill
  python benchmarks/scale_round.py 4000 --m 100000 --dropout 0.1 --server-process --spill \
      --profile [--unmask-workers 2]
  python benchmarks/scale_round.py 10000 --m 100000 --dropout 0.1 --stream --spill
  python benchmarks/scale_round.py 2000 --m 1000 --stream --roster merkle

Prints one row per n: wall time, the process's CPU time for the round (the
figure to compare on a shared machine, where wall time counts other
processes' turns; it includes generating the inputs), server / transport /
client wall time, bytes down per client, exactness (every round checks the
sum exactly), and the fitted exponent of CPU time in n between consecutive
sizes.  With ``--baseline``
every size is run in a subprocess for this tree and for the baseline tree,
interleaved (this, baseline, next size, ...), and the ratio baseline/this of
CPU times is printed with the exponents of both (the default mode only uses APIs an older
checkout has: ``securefl.bench.core.run_round``).

``--stream`` runs the round with a streaming driver instead (needed from a few
thousand clients: every input is generated from a per-client seed when its
client masks it, every reply goes to the server at once, nothing is recorded)
and reports the server's own CPU time (``time.process_time`` around every
server call, including decoding what it receives and encoding what it sends;
the server's executor threads, if any, are counted as well).

``--server-process`` runs the server in a child process that receives the
clients' wire bytes over a socket pair and sends its own back, and reports the
child's CPU time and peak resident memory (``ru_maxrss``, and the same after
the imports, before the session starts, so the difference is what the session
held), and prints the child's CPU time by phase (decoding and handling each
kind of message, closing each round, encoding each kind of reply).  The
child reads each message's wire bytes as one ``bytes`` object (one copy, by
the kernel) and sends its replies gathered.  The clients stay in this
process, so the wall time is not an in-process time there (the two
processes overlap on two cores).  With ``--profile`` the child runs under
cProfile on CPU time and its statistics are printed (kept in the file
``$SCALE_ROUND_PSTATS`` names, if set).  ``--unmask-workers W`` gives the
server an ``unmask_pool`` of ``W`` worker processes
(``securefl.protocol.unmasking.worker_pool``) for the mask removal; their
CPU time is reported apart (``unmask_workers_cpu``) and counted in the
round's.

``--spill`` gives the server the store of
:func:`securefl.protocol.inmemory.spill_store` (an unnamed temporary file,
opened here, in the driver), so its masked inputs do not stay in memory until
the masked-input round closes: a :class:`~securefl.protocol.storage.DirectFileStore`
(direct I/O, no page cache) where the file system takes it, which the child
names in its ``server store:`` line; ``--spill buffered`` forces the
:class:`~securefl.protocol.storage.FileStore` through the page cache.

Every mode checks the sum exactly against the survivors' inputs.
"""

from __future__ import annotations

import argparse
import cProfile
import itertools
import math
import os
import pstats
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent
# the checkout to import: this one, or (``--baseline`` on a checkout older than
# this script) the one the parent names
TREE = Path(os.environ.get("SCALE_ROUND_TREE", HERE))
if str(TREE) not in sys.path:
    # run as a script, import that checkout (not whatever the venv installed)
    sys.path.insert(0, str(TREE))


def _one(n: int, m: int, dropout: float, profile: bool) -> float:
    from securefl.bench.core import run_round
    from securefl.bench.suite import sparse_parameters
    from securefl.protocol.harary import HararyGraph

    params = sparse_parameters(n, max(dropout, 0.05), 0.05)
    assert params is not None, n
    k, t = params
    prof = cProfile.Profile() if profile else None
    if prof is not None:
        prof.enable()
    cpu0 = time.process_time()
    r = run_round(n, m, graph=HararyGraph(k), threshold=t, dropout=dropout, workers=1)
    cpu = time.process_time() - cpu0
    if prof is not None:
        prof.disable()
        stats = pstats.Stats(prof)
        stats.sort_stats("cumulative").print_stats(25)
        stats.sort_stats("tottime").print_stats(25)
    assert r.exact
    import securefl
    print(f"securefl from {Path(securefl.__file__).resolve().parent.parent}", flush=True)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"n={n:6d} k={k:3d} m={m} wall={r.wall_seconds:8.2f}s cpu={cpu:8.2f}s "
          f"server={r.server_total:7.2f}s transport={r.transport_seconds:7.2f}s "
          f"clients={r.clients_sum:7.2f}s down/client={r.bytes_down_per_client:,.0f}B "
          f"exact={r.exact} loadavg=({load})", flush=True)
    return cpu


# -- the streaming driver (--stream, --server-process) --------------------------

def _input(seed: int, cid: int, m: int, bits: int) -> Any:
    import numpy as np
    return np.random.default_rng([seed, cid]).integers(0, 1 << bits, m, dtype=np.uint64)


def _config(n: int, m: int, dropout: float) -> tuple[Any, int, int]:
    from securefl.bench.suite import sparse_parameters
    from securefl.protocol import SecAggConfig
    from securefl.protocol.harary import HararyGraph

    params = sparse_parameters(n, max(dropout, 0.05), 0.05)
    assert params is not None, n
    k, t = params
    # --roster (passed on to a server child process through its environment)
    roster = os.environ.get(_ROSTER_ENV, "full")
    return SecAggConfig(num_clients=n, vector_length=m, bits=32, threshold=t,
                        graph=HararyGraph(k), roster_delivery=roster), k, t


_ROSTER_ENV = "SECUREFL_BENCH_ROSTER_DELIVERY"


class _LocalServer:
    """The server in this process, behind the codec; CPU and wall time of
    every server call, decoding and encoding included."""

    def __init__(self, config: Any, spill: str | None, unmask_pool: Any = None,
                 workers: int | None = None) -> None:
        import contextlib

        from securefl.protocol.inmemory import spill_store
        from securefl.protocol.server import ServerSession

        self.config = config
        # the store's file lives until the process exits (closing it removes it)
        self._files = contextlib.ExitStack()
        store = (self._files.enter_context(spill_store(direct=spill == "direct")) if spill
                 else None)
        self.store_kind = type(store).__name__ if store is not None else "MemoryStore"
        self.session = ServerSession(config, store=store, unmask_pool=unmask_pool,
                                     workers=workers)
        self.cpu = 0.0
        self.wall = 0.0
        # CPU seconds by phase: "decode <Message>", "receive <Message>",
        # "close <round>", "encode <round>"
        self.phases: dict[str, float] = {}

    def _phase(self, name: str, seconds: float) -> None:
        self.phases[name] = self.phases.get(name, 0.0) + seconds

    def receive(self, data: bytes) -> None:
        from securefl import wire
        c0, w0 = time.process_time(), time.perf_counter()
        message = wire.decode(data, config=self.config)
        c1 = time.process_time()
        self.session.receive(message)
        c2 = time.process_time()
        name = type(message).__name__
        self._phase(f"decode {name}", c1 - c0)
        self._phase(f"receive {name}", c2 - c1)
        self.cpu += c2 - c0
        self.wall += time.perf_counter() - w0

    def close_round(self) -> list[tuple[int, bytes]]:
        return list(self.close_stream())

    def close_stream(self) -> Iterator[tuple[int, bytes]]:
        """Close the round and encode its messages one at a time (a
        broadcast, the roster, once), timing the server's share."""
        from securefl import wire
        rnd = self.session.round
        c0, w0 = time.process_time(), time.perf_counter()
        out = self.session.close_round()
        self._phase(f"close {rnd.name if rnd is not None else None}",
                    time.process_time() - c0)
        last: tuple[int, bytes] | None = None
        for e in out:
            if last is None or last[0] != id(e.message):
                e0 = time.process_time()
                last = (id(e.message), wire.encode(e.message))
                self._phase(f"encode {type(e.message).__name__}", time.process_time() - e0)
            self.cpu += time.process_time() - c0
            self.wall += time.perf_counter() - w0
            yield e.recipient, last[1]
            c0, w0 = time.process_time(), time.perf_counter()
        self.cpu += time.process_time() - c0
        self.wall += time.perf_counter() - w0

    @property
    def finished(self) -> bool:
        return self.session.finished

    def result(self) -> tuple[Any, tuple[int, ...], dict[str, float]]:
        r = self.session.result
        self._files.close()
        return r.total, r.survivors, {"server_cpu": self.cpu, "server_wall": self.wall}


class _FrameSocket:
    """Messages of ``multiprocessing.Connection``'s framing (a 4-byte
    big-endian length, then the payload: here a 1-byte kind and the wire
    bytes) on the connection's socket, the server child's side.  Read with
    ``MSG_WAITALL``: the wire
    bytes arrive as one ``bytes`` object, copied once by the kernel, which
    the codec then decodes without copying; ``Connection.recv_bytes`` copies
    a large message three times (64 KB chunks, a ``BytesIO``, its value) and
    slicing off the kind once more."""

    def __init__(self, fd: int) -> None:
        import socket

        self._socket = socket.socket(fileno=os.dup(fd))
        self._waitall = socket.MSG_WAITALL

    def read(self) -> tuple[bytes, bytes]:
        """The next message's kind (1 byte) and its payload."""
        head = self._recv(5)
        size = int.from_bytes(head[:4], "big", signed=True)
        if size < 1:
            raise ValueError("every message here has a kind byte; none is 2 GB")
        return head[4:], self._recv(size - 1)

    def send(self, *parts: bytes) -> None:
        """One message made of ``parts``, in the same framing, gathered by
        the kernel (no joined copy)."""
        size = sum(len(p) for p in parts)
        views = [memoryview(size.to_bytes(4, "big", signed=True)), *map(memoryview, parts)]
        while views:
            sent = self._socket.sendmsg(views)
            while views and sent >= len(views[0]):
                sent -= len(views[0])
                views.pop(0)
            if views and sent:
                views[0] = views[0][sent:]

    def _recv(self, size: int) -> bytes:
        data = self._socket.recv(size, self._waitall) if size else b""
        while len(data) < size:  # a signal may cut MSG_WAITALL short
            more = self._socket.recv(size - len(data), self._waitall)
            if not more:
                raise EOFError
            data += more
        return data


def _pool_cpu(pool: Any) -> float:
    """CPU seconds (user + system) used so far by the worker processes of a
    ``ProcessPoolExecutor`` (Linux: ``/proc/PID/stat``)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in list(getattr(pool, "_processes", None) or {}):
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return total


def _server_child(conn: Any, n: int, m: int, dropout: float, spill: str | None,
                  profile: str | None = None, unmask_workers: int = 0) -> None:
    """The server process: wire bytes in, wire bytes out, over ``conn``;
    with ``profile`` (a path), its session under cProfile, the stats dumped
    there; with ``unmask_workers``, the mask removal in that many worker
    processes (``unmasking.worker_pool``), whose CPU time is reported apart."""
    import contextlib
    import resource

    import numpy  # noqa: F401 - imported before the baseline RSS

    from securefl import wire  # noqa: F401 - imports before the baseline RSS
    from securefl.protocol import unmasking

    config, _, _ = _config(n, m, dropout)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with contextlib.ExitStack() as stack:
        pool = (stack.enter_context(unmasking.worker_pool(unmask_workers)) if unmask_workers
                else None)
        _serve(conn, config, spill, profile, pool, unmask_workers, base_rss)


def _serve(conn: Any, config: Any, spill: str | None, profile: str | None, pool: Any,
           workers: int, base_rss: int) -> None:
    """:func:`_server_child`'s loop."""
    import pickle
    import resource

    import numpy as np

    server = _LocalServer(config, spill, pool, workers or None)
    # CPU time, not wall time: the child mostly waits for the clients
    prof = cProfile.Profile(time.process_time) if profile else None
    if prof is not None:
        prof.enable()
    cpu0 = time.process_time()
    reader = _FrameSocket(conn.fileno())
    while True:
        kind, data = reader.read()
        if kind == b"R":
            server.receive(data)
            continue
        last = None
        for recipient, blob in server.close_stream():
            # the same bytes to many recipients (the roster) cross once
            if blob is last:
                reader.send(recipient.to_bytes(4, "big"), b"=")
            else:
                reader.send(recipient.to_bytes(4, "big"), b"+", blob)
            last = blob
        reader.send()
        if server.finished:
            break
    if prof is not None:
        prof.disable()
        prof.dump_stats(profile)
    total, survivors, _ = server.result()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"server store: {server.store_kind}; server CPU by phase: " + ", ".join(
        f"{name} {seconds:.2f}s" for name, seconds in sorted(
            server.phases.items(), key=lambda item: -item[1])), flush=True)
    extra = {} if pool is None else {"unmask_workers_cpu": _pool_cpu(pool)}
    conn.send_bytes(pickle.dumps((np.asarray(total), survivors, {
        "server_cpu": time.process_time() - cpu0, **extra,
        "server_session_cpu": server.cpu,
        "server_peak_rss_mb": usage.ru_maxrss / 1024,
        "server_rss_before_session_mb": base_rss / 1024})))


class _RemoteServer:
    """The parent's side of :func:`_server_child`."""

    def __init__(self, n: int, m: int, dropout: float, spill: str | None,
                 profile: str | None = None, unmask_workers: int = 0) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_server_child,
                                 args=(child, n, m, dropout, spill, profile, unmask_workers))
        self._proc.start()
        self.finished = False
        self._rounds = 0

    def receive(self, data: bytes) -> None:
        self._conn.send_bytes(b"R" + data)

    def close_round(self) -> list[tuple[int, bytes]]:
        self._conn.send_bytes(b"C")
        out: list[tuple[int, bytes]] = []
        blob = b""
        while True:
            item = self._conn.recv_bytes()
            if not item:
                break
            if item[4:5] == b"+":
                blob = item[5:]
            out.append((int.from_bytes(item[:4], "big"), blob))
        self.finished = not out
        return out

    def result(self) -> tuple[Any, tuple[int, ...], dict[str, float]]:
        import pickle
        total, survivors, stats = pickle.loads(self._conn.recv_bytes())
        self._proc.join()
        return total, survivors, stats

    def close(self) -> None:
        """Stop the child, whatever state the round is in: the connection
        closed (the child's next read ends), then the child terminated if it
        has not exited within a few seconds, and joined (so no run leaves a
        server process behind, on an error or an interrupt in this one)."""
        self._conn.close()
        self._proc.join(5)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join()


def _stream_round(n: int, m: int, dropout: float, spill: str | None, remote: bool,
                  seed: int = 1, profile: bool = False, unmask_workers: int = 0) -> float:
    import numpy as np

    from securefl import wire
    from securefl.protocol import Round
    from securefl.protocol.client import ClientSession
    from securefl.protocol.inmemory import next_round

    config, k, t = _config(n, m, dropout)
    dropped = set(config.ids[n - round(dropout * n):]) if dropout else set()
    stats = {"clients": 0.0, "client_codec": 0.0}
    wall0, cpu0 = time.perf_counter(), time.process_time()
    stats_path = None
    if profile and remote:
        import tempfile
        fd, stats_path = tempfile.mkstemp(suffix=".pstats")
        os.close(fd)
    server: Any = (_RemoteServer(n, m, dropout, spill, stats_path, unmask_workers) if remote
                   else _LocalServer(config, spill))
    try:
        prof = cProfile.Profile() if profile and not remote else None
        if prof is not None:
            prof.enable()
        clients = {c: ClientSession(config, c) for c in config.ids}
        down = 0
        roster_down = 0  # the roster alone (what --roster changes)

        def client_send(message: Any) -> None:
            c0 = time.perf_counter()
            data = wire.encode(message)
            stats["client_codec"] += time.perf_counter() - c0
            server.receive(data)

        for c in config.ids:
            c0 = time.perf_counter()
            advert = clients[c].start()
            stats["clients"] += time.perf_counter() - c0
            client_send(advert)
        rnd: Round | None = Round.ADVERTISE_KEYS
        while True:
            out = server.close_round()
            if not out:
                break
            rnd = next_round(rnd, config)
            assert rnd is not None
            for cid, data in out:
                if cid in dropped and rnd >= Round.MASKED_INPUT_COLLECTION:
                    continue
                down += len(data)
                if rnd is Round.SHARE_KEYS:
                    roster_down += len(data)
                c0 = time.perf_counter()
                message = wire.decode(data)
                c1 = time.perf_counter()
                if rnd is Round.MASKED_INPUT_COLLECTION:
                    clients[cid].provide_input(_input(seed, cid, m, config.bits))
                reply = clients[cid].handle(message)
                stats["client_codec"] += c1 - c0
                stats["clients"] += time.perf_counter() - c1
                client_send(reply)
                del message, reply
        total, survivors, server_stats = server.result()
        wall = time.perf_counter() - wall0
        if prof is not None or stats_path is not None:
            # the server's own profile with --server-process, else the whole round
            if prof is not None:
                prof.disable()
            profiled = pstats.Stats(stats_path if stats_path is not None else prof)
            profiled.sort_stats("cumulative").print_stats(40)
            profiled.sort_stats("tottime").print_stats(40)
            if stats_path is not None:
                keep = os.environ.get("SCALE_ROUND_PSTATS")  # where to keep the server's stats
                if keep:
                    os.replace(stats_path, keep)
                else:
                    os.unlink(stats_path)
        # the round's CPU time: this process, plus the server's child if any
        cpu = time.process_time() - cpu0 + (server_stats["server_cpu"] if remote else 0.0) \
            + server_stats.get("unmask_workers_cpu", 0.0)
        plain = np.zeros(m, dtype=np.uint64)
        for c in survivors:
            np.add(plain, _input(seed, c, m, config.bits), out=plain)
        plain &= np.uint64(config.modulus_mask)
        exact = bool(np.array_equal(plain, np.asarray(total, dtype=np.uint64)))
        assert exact, "the sum is not exact"
        assert len(survivors) == n - len(dropped), (len(survivors), n, len(dropped))
        mode = "server-process" if remote else "in-process"
        extra = " ".join(f"{key}={value:.2f}" for key, value in server_stats.items())
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"n={n:6d} k={k:3d} t={t} m={m} dropout={dropout} mode={mode} spill={spill} "
              f"roster={config.roster_delivery} roster_down/client={roster_down / n:,.0f}B "
              f"wall={wall:8.2f}s cpu={cpu:8.2f}s clients={stats['clients']:.2f}s "
              f"client_codec={stats['client_codec']:.2f}s {extra} "
              f"down/client={down / n:,.0f}B survivors={len(survivors)} exact={exact} "
              f"loadavg=({load})", flush=True)
        return cpu
    finally:
        if remote:
            server.close()


def _subprocess(tree: Path, n: int, m: int, dropout: float) -> float:
    """Run this script's default mode from ``tree`` (its own copy of this
    file, or this file importing ``tree`` when ``tree`` predates it); return
    the round's CPU time."""
    env = dict(os.environ, PYTHONPATH=str(tree), SCALE_ROUND_TREE=str(tree))
    script = tree / "benchmarks" / "scale_round.py"
    if not script.exists():
        script = Path(__file__).resolve()
    out = subprocess.run([sys.executable, str(script), str(n),
                          "--m", str(m), "--dropout", str(dropout)], env=env, cwd=tree,
                         capture_output=True, text=True, check=True).stdout
    if "securefl from " in out and f"securefl from {tree}" not in out:
        raise AssertionError(f"the run did not import {tree}: {out}")
    match = re.search(r"cpu=\s*([\d.]+)s", out)
    assert match is not None, out
    row = next(line for line in out.splitlines() if "cpu=" in line)
    print(f"[{tree}] {row}", flush=True)
    return float(match.group(1))


def _exponents(label: str, rows: list[tuple[int, float]]) -> None:
    for (n0, a), (n1, b) in itertools.pairwise(rows):
        if n0 == n1:  # a size repeated (best of several): no exponent
            continue
        print(f"{label} exponent {n0}->{n1}: {math.log(b / a) / math.log(n1 / n0):.2f}")
    if len(rows) > 2 and rows[0][0] != rows[-1][0]:
        (n0, a), (n1, b) = rows[0], rows[-1]
        print(f"{label} exponent {n0}->{n1}: {math.log(b / a) / math.log(n1 / n0):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("ns", nargs="*", type=int, default=[500, 1000, 2000])
    parser.add_argument("--m", type=int, default=10_000)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--baseline", type=Path, default=None)
    parser.add_argument("--stream", action="store_true",
                        help="streaming in-process driver; reports the server's CPU time")
    parser.add_argument("--server-process", action="store_true",
                        help="the server in a child process; reports its CPU and peak memory")
    parser.add_argument("--roster", choices=("full", "merkle"), default="full",
                        help="with --stream/--server-process: roster delivery (SPEC.md"
                             " 10.1a); 'merkle' sends each client only its neighbours'"
                             " entries with inclusion proofs")
    parser.add_argument("--spill", nargs="?", const="direct", choices=("direct", "buffered"),
                        default=None,
                        help="the server keeps R2's masked inputs in an unnamed temporary file"
                             " (securefl.protocol.inmemory.spill_store): written with direct"
                             " I/O where the file system takes it (the default), or through"
                             " the page cache ('buffered')")
    parser.add_argument("--unmask-workers", type=int, default=0,
                        help="with --server-process: the mask removal in this many worker"
                             " processes (their CPU time reported apart)")
    args = parser.parse_args()
    print(f"loadavg at start: {os.getloadavg()}", flush=True)
    os.environ[_ROSTER_ENV] = args.roster
    if args.roster != "full" and not (args.stream or args.server_process):
        parser.error("--roster needs --stream or --server-process")
    if args.stream or args.server_process:
        rows = [(n, _stream_round(n, args.m, args.dropout, args.spill, args.server_process,
                                  profile=args.profile, unmask_workers=args.unmask_workers))
                for n in args.ns]
        _exponents("this", rows)
        return
    if args.baseline is None:
        rows = [(n, _one(n, args.m, args.dropout, args.profile)) for n in args.ns]
        _exponents("this", rows)
        return
    this_rows, base_rows = [], []
    for n in args.ns:
        this_rows.append((n, _subprocess(HERE, n, args.m, args.dropout)))
        base_rows.append((n, _subprocess(args.baseline.resolve(), n, args.m, args.dropout)))
        print(f"n={n}: baseline / this = {base_rows[-1][1] / this_rows[-1][1]:.2f}x "
              f"(loadavg {os.getloadavg()[0]:.2f})", flush=True)
    _exponents("this", this_rows)
    _exponents("baseline", base_rows)


if __name__ == "__main__":
    main()
