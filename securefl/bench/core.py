"""Micro- and round-level benchmarks of the secure aggregation core.

Every figure is measured against a baseline run in the same process on the
same machine: the mask PRG against ``openssl speed -evp aes-256-ctr`` and
against ``cryptography``'s raw AES-CTR, a round against a plain numpy sum.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from securefl import wire
from securefl.hazmat.prg import MaskExpander, ring_dtype
from securefl.protocol import Round, SecAggConfig
from securefl.protocol.graphs import NeighbourGraph
from securefl.protocol.inmemory import SessionDriver
from securefl.protocol.messages import KeyRoster
from securefl.protocol.server import ServerSession
from securefl.protocol.unmasking import worker_pool


def best_of(fn: Callable[[], object], repeat: int = 3,
            clock: Callable[[], float] = time.perf_counter) -> float:
    """The fastest of ``repeat`` timings of ``fn()`` (seconds) on ``clock``
    (wall-clock unless given, e.g. ``time.thread_time`` for one thread's CPU
    time, which is what ``openssl speed`` divides by)."""
    best = float("inf")
    for _ in range(repeat):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return best


def openssl_aes_ctr_gbps(seconds: int = 1) -> float | None:
    """Single-core AES-256-CTR throughput from ``openssl speed`` (16 KiB
    blocks), in GB/s; None if the openssl binary is not available."""
    exe = shutil.which("openssl")
    if exe is None:
        return None
    out = subprocess.run([exe, "speed", "-evp", "aes-256-ctr", "-seconds", str(seconds),
                          "-bytes", "16384"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"^(?:aes-256-ctr|AES-256-CTR)\s+([\d.]+)k", out, re.MULTILINE | re.I)
    return float(match.group(1)) * 1000 / 1e9 if match else None


def openssl_x25519_per_second(seconds: int = 1) -> float | None:
    """Single-core X25519 key agreements per second from ``openssl speed
    ecdhx25519``; None if the openssl binary is not available."""
    exe = shutil.which("openssl")
    if exe is None:
        return None
    out = subprocess.run([exe, "speed", "-seconds", str(seconds), "ecdhx25519"],
                         capture_output=True, text=True, check=False).stdout
    match = re.search(r"\(X25519\)\s+[\d.]+s\s+([\d.]+)", out)
    return float(match.group(1)) if match else None


def cryptography_x25519_per_second(seconds: float = 1.0) -> float:
    """Single-core X25519 key agreements per second through ``cryptography``
    (the fallback reference when there is no openssl binary)."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    private = X25519PrivateKey.generate()
    peer = X25519PrivateKey.generate().public_key()
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(100):
            private.exchange(peer)
        count += 100
    return count / (time.perf_counter() - start)


def prg_throughput(total_bytes: int = 64 << 20, bits: int = 32) -> dict[str, float | None]:
    """GB/s of: raw ``cryptography`` AES-CTR into a reused buffer, the mask
    PRG expanding into a reused buffer (one thread), the mask PRG adding many
    masks into an accumulator (one thread and all cores), and OpenSSL.  The
    one-thread figures divide by the thread's CPU time, as ``openssl speed``
    divides by its user CPU time; the all-cores figure by wall-clock time."""
    key = os.urandom(32)
    # the raw cipher writes 16 KiB blocks into one cached buffer, as ``openssl
    # speed`` does: one 64 MB call would time DRAM writes, not AES (0.6x)
    zeros = bytes(16384)
    out = bytearray(len(zeros) + 15)

    def raw() -> None:
        update = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update_into
        for _ in range(total_bytes // len(zeros)):
            update(zeros, out)

    width = 4 if bits <= 32 else 8
    m = total_bytes // width
    expander = MaskExpander(m, bits)
    buf = expander.zeros()
    keys = [(os.urandom(32), i % 2 == 1) for i in range(8)]
    acc = expander.zeros()
    workers = os.cpu_count() or 1
    cpu = time.thread_time  # one thread: its CPU time, as openssl speed measures itself
    result: dict[str, float | None] = {
        "cryptography_raw_gbps": total_bytes / best_of(raw, clock=cpu) / 1e9,
        "prg_expand_gbps":
            total_bytes / best_of(lambda: expander.expand(key, buf), clock=cpu) / 1e9,
        "prg_accumulate_1_thread_gbps":
            8 * total_bytes / best_of(lambda: expander.apply(keys, acc), clock=cpu) / 1e9,
    }
    with ThreadPoolExecutor(workers) as pool:
        result["prg_accumulate_all_cores_gbps"] = 8 * total_bytes / best_of(
            lambda: expander.apply(keys, acc, executor=pool, workers=workers)) / 1e9
    result["openssl_gbps"] = openssl_aes_ctr_gbps()
    result["workers"] = float(workers)
    return result


@dataclass
class RoundTimings:
    """Per-stage timings (seconds) and traffic of one session."""

    n: int
    m: int
    dropout: float
    graph: str
    server: dict[str, float] = field(default_factory=dict)
    clients_total: dict[str, float] = field(default_factory=dict)
    slowest_client: dict[str, float] = field(default_factory=dict)
    median_client: dict[str, float] = field(default_factory=dict)
    bytes_up_per_client: float = 0.0
    bytes_down_per_client: float = 0.0
    plain_sum_seconds: float = 0.0
    wall_seconds: float = 0.0
    transport_seconds: float = 0.0
    exact: bool = False
    survivors: int = 0
    input_seconds: float = 0.0  # making lazy inputs during the round (not in wall_seconds)
    minor_faults: int = 0  # page faults of the round (getrusage ru_minflt), inputs' left out

    @property
    def server_total(self) -> float:
        """All server work."""
        return sum(self.server.values())

    @property
    def clients_sum(self) -> float:
        """All client work, added up (clients run one after another)."""
        return sum(self.clients_total.values())

    @property
    def median_client_total(self) -> float:
        """The median client's total (clients sorted by their totals)."""
        return sum(self.median_client.values())

    @property
    def slowest_client_total(self) -> float:
        """The largest total of any one client."""
        return sum(self.slowest_client.values())


def _transfer(message: Any) -> tuple[Any, int]:
    """Send ``message`` through the v1 wire format: encode, decode, and
    return the decoded copy and the number of bytes on the wire."""
    data = wire.encode(message)
    return wire.decode(data), len(data)


class _TimedDriver(SessionDriver):
    """The in-memory driver, timing every party's work and every transfer
    (each message goes through the v1 wire encoding, counted in bytes)."""

    def __init__(self, config: SecAggConfig, inputs: Mapping[int, np.ndarray],
                 dropouts: Mapping[int, Round], pool: ThreadPoolExecutor, workers: int,
                 timings: RoundTimings) -> None:
        # inputs are handed over only when a client masks (as ``secure_sum``
        # does), so a lazy ``inputs`` mapping keeps one input alive at a time
        super().__init__(config, dict.fromkeys(config.ids), dropouts=dropouts, executor=pool,
                         workers=workers)
        self._inputs = inputs
        self.timings = timings
        self.per_client: dict[int, dict[str, float]] = {c: {} for c in config.ids}
        self.up: dict[int, int] = dict.fromkeys(config.ids, 0)
        self.down: dict[int, int] = dict.fromkeys(config.ids, 0)
        self._broadcast: tuple[Any, bytes] | None = None

    def client_start(self, cid: int) -> Any:
        start = time.perf_counter()
        advert = super().client_start(cid)
        self.per_client[cid][Round.ADVERTISE_KEYS.name] = time.perf_counter() - start
        return advert

    def client_handle(self, rnd: Round, cid: int, message: Any) -> Any:
        if rnd is Round.MASKED_INPUT_COLLECTION:
            self.clients[cid].provide_input(self._inputs[cid])
        start = time.perf_counter()
        reply = super().client_handle(rnd, cid, message)
        self.per_client[cid][rnd.name] = time.perf_counter() - start
        return reply

    def answer(self, skip: Iterable[int] = (), *, replace: Mapping[int, Any] | None = None,
               send: bool = True) -> dict[int, Any]:
        """As :meth:`Driver.answer`, but in the masked-input round every reply
        goes to the server as soon as it is made and is not kept in
        :attr:`sent`: at most one masked vector is in transit at a time.  This
        driver is its clients' only transport and never repeats a message, so
        each client then forgets its sent reply
        (:meth:`ClientSession.release_masked_input`, as ``secure_sum``'s
        driver does): the server's copies are the only masked vectors kept."""
        rnd = self.round
        if rnd is not Round.MASKED_INPUT_COLLECTION or not send or skip or replace:
            return super().answer(skip, replace=replace, send=send)
        for c, message in self.pending.items():
            if self.answers(c, rnd):
                delivered = self.to_client(rnd, c, message)
                if delivered is not None:
                    self._deliver(rnd, c, self.client_handle(rnd, c, delivered))
                    self.clients[c].release_masked_input()
        self.pending = {}
        return {}

    def to_server(self, rnd: Round, cid: int, message: Any) -> Any:
        return self._transfer(message, cid, self.up)

    def to_client(self, rnd: Round, cid: int, message: Any) -> Any:
        return self._transfer(message, cid, self.down)

    def _transfer(self, message: Any, cid: int, counted: dict[int, int]) -> Any:
        start = time.perf_counter()
        if self._broadcast is not None and self._broadcast[0] is message:
            # the very object the server sends to every client (the roster):
            # a real server encodes it once and sends the same bytes to all
            data = self._broadcast[1]
            message, size = wire.decode(data), len(data)
        else:
            data = wire.encode(message)
            if isinstance(message, KeyRoster):
                self._broadcast = (message, data)
            message, size = wire.decode(data), len(data)
        self.timings.transport_seconds += time.perf_counter() - start
        counted[cid] += size
        return message

    def server_receive(self, rnd: Round, cid: int, message: Any) -> None:
        start = time.perf_counter()
        super().server_receive(rnd, cid, message)
        self._server_time(rnd, time.perf_counter() - start)

    def server_close(self, rnd: Round) -> list[Any]:
        start = time.perf_counter()
        out = list(super().server_close(rnd))
        self._server_time(rnd, time.perf_counter() - start)
        return out

    def _server_time(self, rnd: Round, seconds: float) -> None:
        server = self.timings.server
        server[rnd.name] = server.get(rnd.name, 0.0) + seconds


def _minor_faults() -> int:
    """This process's minor page faults so far (first touches of memory)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class SeededInputs(Mapping[int, np.ndarray]):
    """Deterministic pseudo-random inputs, made afresh on every access.

    Client ``c``'s vector is drawn from ``numpy.random.default_rng((seed, c))``
    (benchmark data, not secrets) in the narrowest unsigned dtype that holds
    ``bits`` bits, so a round over ``n`` clients need not hold ``n`` inputs:
    the driver asks for one when that client masks, the exactness check asks
    again.  :attr:`seconds` and :attr:`cpu_seconds` add up the time spent
    making them, which :func:`run_round` leaves out of the round's time, and
    :attr:`minor_faults` the page faults taken meanwhile (left out of the
    round's count).
    """

    def __init__(self, ids: Iterable[int], m: int, bits: int, seed: int = 1) -> None:
        self._ids = tuple(ids)
        self._members = frozenset(self._ids)
        self._m, self._bits, self._seed = m, bits, seed
        self._dtype = ring_dtype(bits)
        self.seconds = 0.0
        self.cpu_seconds = 0.0
        self.minor_faults = 0

    def __getitem__(self, cid: int) -> np.ndarray:
        if cid not in self._members:
            raise KeyError(cid)
        start, cpu, faults = time.perf_counter(), time.process_time(), _minor_faults()
        gen = np.random.default_rng((self._seed, cid))
        width = self._dtype.itemsize
        if self._bits == 8 * width and width in (4, 8) and sys.byteorder == "little":
            # the very values ``gen.integers(0, 2**bits, m, dtype)`` returns
            # (over the whole range numpy takes the generator's raw 64-bit
            # outputs, for 32 bits low half first), without its per-element
            # bounded-integer path: half the time (tests/test_bench_inputs.py)
            words = gen.bit_generator.random_raw(-(-self._m * width // 8))
            vector = words.view(self._dtype)[:self._m]
        else:
            vector = gen.integers(0, 1 << self._bits, self._m, dtype=self._dtype)
        self.seconds += time.perf_counter() - start
        self.cpu_seconds += time.process_time() - cpu
        self.minor_faults += _minor_faults() - faults
        return vector

    def __iter__(self) -> Iterator[int]:
        return iter(self._ids)

    def __len__(self) -> int:
        return len(self._ids)


def run_round(n: int, m: int, *, dropout: float = 0.0,
              drop_stage: Round = Round.MASKED_INPUT_COLLECTION, bits: int = 32,
              graph: NeighbourGraph | None = None, threshold: int | None = None,
              workers: int | None = None, inputs: Mapping[int, np.ndarray] | None = None,
              unmask_processes: bool = False) -> RoundTimings:
    """Run one semi-honest session with real sessions, timing every party.

    ``round(dropout * n)`` clients (the highest ids) stop answering at
    ``drop_stage``.  Clients run one after another; each client's work is
    timed separately, the server's per stage.  Every message goes through
    the v1 wire encoding (timed as transport, and counted in bytes).  With
    ``unmask_processes`` the server removes the masks in a process pool of
    ``workers`` processes (:func:`securefl.protocol.unmasking.worker_pool`),
    started before the round and shut down after it.
    """
    kwargs: dict[str, object] = {}
    if graph is not None:
        kwargs["graph"] = graph
    config = SecAggConfig(num_clients=n, vector_length=m, bits=bits, threshold=threshold,
                          **kwargs)  # type: ignore[arg-type]
    if inputs is None:
        inputs = SeededInputs(config.ids, m, bits)
    dropped = config.ids[n - round(dropout * n):] if dropout else ()
    workers = workers or os.cpu_count() or 1
    timings = RoundTimings(n, m, dropout, config.graph.describe())
    with ThreadPoolExecutor(workers) as pool, \
            (worker_pool(workers) if unmask_processes else nullcontext()) as processes:
        driver = _TimedDriver(config, inputs, dict.fromkeys(dropped, drop_stage), pool,
                              workers, timings)
        if processes is not None:
            # the server removes the masks in the pool's processes (started,
            # and their imports done, before the round is timed)
            list(processes.map(abs, range(4 * workers)))
            driver.server = ServerSession(config, executor=pool, unmask_pool=processes,
                                          workers=workers)
        made = inputs.seconds if isinstance(inputs, SeededInputs) else 0.0
        made_faults = inputs.minor_faults if isinstance(inputs, SeededInputs) else 0
        faults = _minor_faults()
        wall_start = time.perf_counter()
        driver.run()
        timings.wall_seconds = time.perf_counter() - wall_start
        timings.minor_faults = _minor_faults() - faults
        if isinstance(inputs, SeededInputs):
            # making the benchmark's inputs is not part of the round
            timings.input_seconds = inputs.seconds - made
            timings.wall_seconds -= timings.input_seconds
            timings.minor_faults -= inputs.minor_faults - made_faults
    per_client, up, down = driver.per_client, driver.up, driver.down
    result = driver.result
    plain = np.zeros(m, dtype=np.uint64)
    for c in result.survivors:
        vector = inputs[c]  # (re)generating a lazy input is not part of the sum's time
        start = time.perf_counter()
        np.add(plain, vector, out=plain)
        timings.plain_sum_seconds += time.perf_counter() - start
    plain &= np.uint64((1 << bits) - 1)
    timings.exact = bool(np.array_equal(plain, result.total))
    timings.survivors = len(result.survivors)
    stages = sorted({s for d in per_client.values() for s in d}, key=lambda s: Round[s])
    for s in stages:
        values = [d.get(s, 0.0) for d in per_client.values()]
        timings.clients_total[s] = sum(values)
    ranked = sorted(config.ids, key=lambda c: sum(per_client[c].values()))
    timings.slowest_client = per_client[ranked[-1]]
    timings.median_client = per_client[ranked[len(ranked) // 2]]
    timings.bytes_up_per_client = sum(up.values()) / n
    timings.bytes_down_per_client = sum(down.values()) / n
    return timings


def client_masking_time(n: int, m: int, *, bits: int = 32, workers: int | None = None,
                        repeat: int = 3) -> float:
    """Seconds one client spends in the masked-input round (R2) with ``n - 1``
    peers and ``m`` entries: decrypting shares, n key agreements and n mask
    expansions.  Only that client's R2 is run (best of ``repeat``)."""
    config = SecAggConfig(num_clients=n, vector_length=m, bits=bits)
    workers = workers or os.cpu_count() or 1
    best = float("inf")
    with ThreadPoolExecutor(workers) as pool:
        for _ in range(repeat):
            driver = SessionDriver(config, dict.fromkeys(config.ids), executor=pool,
                                   workers=workers)
            driver.start()
            driver.close()
            delivery = driver.step()[1]
            clients = driver.clients
            clients[1].provide_input(np.zeros(m, dtype=np.uint64))
            start = time.perf_counter()
            clients[1].handle(delivery)
            best = min(best, time.perf_counter() - start)
    return best
