"""The server's mask removal in worker processes (``unmask_pool``).

Promises: the same exact sum as the single-thread path, whatever the ring,
the dropouts and the split; the pool is the caller's (the session starts no
process, and none is left once the caller's ``with`` block exits); a failing
worker surfaces as a typed :class:`SecureFLError` that names no secret.
"""

from __future__ import annotations

import itertools
import os
import pickle
import re
import signal
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefl import Round, SecAggConfig, SecurityMode
from securefl.errors import AbortError, SecureFLError, WorkerError
from securefl.hazmat.agreement import KeyPair
from securefl.hazmat.prg import MaskExpander
from securefl.hazmat.randomness import default_random
from securefl.protocol import NoisePlan
from securefl.protocol import derivation as d
from securefl.protocol.inmemory import SessionDriver
from securefl.protocol.server import ServerSession, ServerState
from securefl.protocol.unmasking import (
    MaskSumTask,
    PeerKeyRejectedError,
    mask_sum,
    plan,
    worker_pool,
)


@pytest.fixture(scope="module")
def pool() -> Iterator[Any]:
    with worker_pool(2) as p:
        yield p


class _FanOut(SessionDriver):
    """Every client message goes to several servers (the first one answers);
    ``make(pinned)`` builds each from the clients' pinned identity keys."""

    def __init__(self, config: SecAggConfig, inputs: Mapping[int, np.ndarray],
                 servers: Sequence[Any], **kwargs: Any) -> None:
        super().__init__(config, inputs, **kwargs)
        self.servers = [s if isinstance(s, ServerSession) else s(self.pinned) for s in servers]
        self.server = self.servers[0]

    def server_receive(self, rnd: Round, cid: int, message: Any) -> None:
        for server in self.servers:
            server.receive(message)

    def server_close(self, rnd: Round) -> Sequence[Any]:
        out = [server.close_round() for server in self.servers]
        return out[0]


def _to_last_round(config: SecAggConfig, inputs: Mapping[int, np.ndarray],
                   servers: Sequence[Any], dropouts: Mapping[int, Round]
                   ) -> list[ServerSession]:
    """Run the servers (fed the same messages) until they hold the responses."""
    driver = _FanOut(config, inputs, servers, dropouts=dropouts)
    driver.start()
    driver.close()
    while driver.round is not Round.UNMASKING:
        driver.step()
    driver.answer()
    return driver.servers


def test_with_a_noise_plan_in_active_mode_the_pool_gives_the_same_result(pool: Any) -> None:
    """Masks removed in the workers, the selected excess noise (SPEC [NZ-6])
    then on the calling thread: the same total and the same removals."""
    config = SecAggConfig(8, 256, bits=32, mode=SecurityMode.ACTIVE, noise=NoisePlan(400.0))
    gen = np.random.default_rng(4)
    inputs = {c: gen.integers(0, 1 << 20, 256, dtype=np.uint64) for c in config.ids}
    single, pooled = _to_last_round(
        config, inputs,
        [lambda pinned: ServerSession(config, peer_identities=pinned),
         lambda pinned: ServerSession(config, peer_identities=pinned, unmask_pool=pool)],
        {3: Round.MASKED_INPUT_COLLECTION, 7: Round.UNMASKING})
    single.close_round()
    pooled.close_round()
    assert pooled.result.noise_removed == single.result.noise_removed
    assert pooled.result.noise_removed  # the excess removal did happen
    assert np.array_equal(pooled.result.total, single.result.total)
    assert 3 not in pooled.result.survivors


@st.composite
def sessions(draw: st.DrawFn) -> tuple[SecAggConfig, dict[int, np.ndarray], dict[int, Round],
                                        int]:
    n = draw(st.integers(3, 9))
    t = draw(st.integers(2, n - 1))
    bits = draw(st.integers(1, 64))
    m = draw(st.integers(1, 40))
    config = SecAggConfig(num_clients=n, vector_length=m, bits=bits, threshold=t)
    high = (1 << bits) - 1
    inputs = {c: np.array(draw(st.lists(st.integers(0, high), min_size=m, max_size=m)),
                          dtype=np.uint64) for c in config.ids}
    # the costly case: clients that shared their keys, then dropped (their
    # pairwise masks are rebuilt); and survivors that do not answer R3
    spare = n - t
    after_sharing = draw(st.integers(0, spare))
    silent = draw(st.integers(0, spare - after_sharing))
    order = draw(st.permutations(config.ids))
    dropouts = dict.fromkeys(order[:after_sharing], Round.MASKED_INPUT_COLLECTION)
    dropouts.update(dict.fromkeys(order[after_sharing:after_sharing + silent], Round.UNMASKING))
    workers = draw(st.integers(1, 5))
    return config, inputs, dropouts, workers


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sessions())
def test_process_pool_gives_exactly_the_single_thread_sum(pool: Any, session: Any) -> None:
    config, inputs, dropouts, workers = session
    single = ServerSession(config)
    pooled = ServerSession(config, unmask_pool=pool, workers=workers)
    _to_last_round(config, inputs, [single, pooled], dropouts)
    single.close_round()
    pooled.close_round()
    assert pooled.result.survivors == single.result.survivors
    assert pooled.result.total.dtype == single.result.total.dtype
    assert np.array_equal(pooled.result.total, single.result.total)
    expected = np.zeros(config.vector_length, dtype=np.uint64)
    for c in single.result.survivors:
        expected += inputs[c]
    if config.bits < 64:
        expected &= np.uint64((1 << config.bits) - 1)
    assert np.array_equal(pooled.result.total, expected)


def _random_masks(draw: st.DrawFn) -> dict[str, Any]:
    rng = default_random(None)
    survivors = draw(st.lists(st.integers(1, 50), min_size=1, max_size=8, unique=True))
    dropped = draw(st.lists(st.integers(51, 99), max_size=4, unique=True))
    pairs = {u: KeyPair.generate(rng) for u in dropped}
    public = {v: KeyPair.generate(rng).public_bytes for v in survivors}
    # a dropped client may have no survivor left to unmask (its key then goes nowhere)
    peers = {u: sorted(draw(st.sets(st.sampled_from(survivors)))) for u in dropped}
    return dict(seeds={v: os.urandom(32) for v in survivors},
                keys={u: p.private_bytes() for u, p in pairs.items()},
                peers=peers, public=public)


@settings(max_examples=30, deadline=None)
@given(st.data(), st.integers(1, 12), st.integers(1, 64), st.integers(1, 50))
def test_any_split_sums_to_the_unsplit_masks(data: st.DataObject, parts: int, bits: int,
                                            m: int) -> None:
    spec = _random_masks(data.draw)
    sid = os.urandom(32)
    tasks = plan(m, bits, sid, spec["seeds"], spec["keys"], spec["peers"], spec["public"], parts)
    total_masks = len(spec["seeds"]) + sum(len(vs) for vs in spec["peers"].values())
    sizes = [task.masks for task in tasks]
    assert sum(sizes) == total_masks and len(tasks) <= parts and min(sizes) >= 1
    # decreasing sizes (up to rounding), so the tasks handed out last are short:
    # the largest is at most about twice the mean, the last at most about the mean
    assert all(later <= earlier + 1 for earlier, later in itertools.pairwise(sizes))
    assert max(sizes) <= 2 * total_masks / len(tasks) + 1
    assert sizes[-1] <= total_masks / len(tasks) + 1
    # every dropped client's key goes only to tasks holding one of its masks
    for task in tasks:
        assert all(vs for _, _, vs in task.keys)
        assert set(task.public) == {v for _, _, vs in task.keys for v in vs}
    for u, vs in spec["peers"].items():
        holding = [task for task in tasks if any(owner == u for owner, _, _ in task.keys)]
        assert sum(len(w) for task in holding for owner, _, w in task.keys if owner == u) \
            == len(vs)
        if min(sizes) >= len(vs):
            assert len(holding) <= 2
    # the masks, one by one, with the sign rule of the single-thread path
    expander = MaskExpander(m, bits)
    expected = expander.zeros()
    for u, seed in spec["seeds"].items():
        expander.subtract_into(d.self_mask_key(seed, sid, u), expected)
    for u, raw in spec["keys"].items():
        pair = KeyPair.from_private_bytes(raw)
        for v in spec["peers"][u]:
            key = d.masking_secret(pair, spec["public"][v], sid, u, v)
            (expander.subtract_into if v < u else expander.add_into)(key, expected)
    expander.reduce(expected)
    total = expander.zeros()
    for task in tasks:
        total += mask_sum(task)
    expander.reduce(total)
    assert np.array_equal(total, expected)


def test_task_repr_shows_no_secret() -> None:
    seed, raw = os.urandom(32), KeyPair.generate(default_random(None)).private_bytes()
    task = MaskSumTask(8, 16, b"s" * 32, ((1, seed),), ((9, raw, (1,)),), {1: b"p" * 32})
    text = repr(task)
    assert seed.hex() not in text and raw.hex() not in text and str(seed) not in text
    assert "self_masks=1" in text and "pair_masks=1" in text


# -- the pool belongs to the caller ----------------------------------------------


def _descendants(root: int) -> set[int]:
    """Every live (not zombie) process under ``root`` (Linux /proc)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(entry)] = int(fields[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {p for p, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _small_session() -> tuple[SecAggConfig, dict[int, np.ndarray], dict[int, Round]]:
    config = SecAggConfig(num_clients=8, vector_length=50, bits=20, threshold=5)
    gen = np.random.default_rng(3)
    inputs = {c: gen.integers(0, 1 << 20, 50, dtype=np.uint64) for c in config.ids}
    return config, inputs, {2: Round.MASKED_INPUT_COLLECTION, 7: Round.MASKED_INPUT_COLLECTION}


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_no_worker_outlives_the_callers_pool() -> None:
    before = _descendants(os.getpid())
    config, inputs, dropouts = _small_session()
    with worker_pool(2) as own:
        server = ServerSession(config, unmask_pool=own)
        _to_last_round(config, inputs, [server], dropouts)
        server.close_round()
        assert server.finished
        workers = set(own.map(_pid, range(16)))
        assert workers <= _descendants(os.getpid())  # they are ours, and alive
        # started from the fork server, not forked from this process (no copy of its memory)
        assert all(_parent(w) != os.getpid() for w in workers)
        assert own.submit(_pid, 0).result() in workers  # the session left the pool usable
    deadline = time.monotonic() + 10
    while workers & _descendants(os.getpid()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not workers & _descendants(os.getpid())
    # what may remain is multiprocessing's own helpers (the fork server), no worker
    assert not (_descendants(os.getpid()) - before) & workers


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads /proc")
def test_the_session_starts_no_process_itself() -> None:
    config, inputs, dropouts = _small_session()
    before = _descendants(os.getpid())
    server = ServerSession(config)
    _to_last_round(config, inputs, [server], dropouts)
    server.close_round()
    assert server.finished
    assert _descendants(os.getpid()) <= before


def _pid(_: int) -> int:
    time.sleep(0.01)
    return os.getpid()


# -- failures ---------------------------------------------------------------------

_HEX_RUN = re.compile(r"[0-9a-fA-F]{16,}|\\x[0-9a-f]{2}")


def test_a_killed_worker_aborts_with_a_typed_error_naming_no_secret() -> None:
    config, inputs, dropouts = _small_session()
    with worker_pool(2) as own:
        server = ServerSession(config, unmask_pool=own)
        _to_last_round(config, inputs, [server], dropouts)
        for pid in set(own.map(_pid, range(16))):
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(WorkerError) as info:
            server.close_round()
    error = info.value
    assert isinstance(error, AbortError) and isinstance(error, SecureFLError)
    assert error.round is Round.UNMASKING
    assert "BrokenProcessPool" in str(error)
    assert not _HEX_RUN.search(str(error)) and "b'" not in str(error)
    assert error.__cause__ is None and error.__suppress_context__
    assert server.state is ServerState.ABORTED and not server.finished


def test_a_low_order_peer_key_in_a_worker_is_a_typed_error_naming_only_the_peer(
        pool: Any) -> None:
    raw = X25519PrivateKey.generate()
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    secret = raw.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    task = MaskSumTask(16, 32, b"s" * 32, (), ((9, secret, (4,)),), {4: bytes(32)})  # order 4
    with pytest.raises(PeerKeyRejectedError) as info:
        pool.submit(mask_sum, task).result()
    assert info.value.peer == 4 and str(info.value) == "client 4's masking key is invalid"
    again = pickle.loads(pickle.dumps(info.value))
    assert again.peer == 4 and str(again) == str(info.value)


def test_the_server_turns_a_rejected_peer_key_into_an_abort(monkeypatch: Any) -> None:
    config, inputs, dropouts = _small_session()
    server = ServerSession(config, unmask_pool=_Inline())
    _to_last_round(config, inputs, [server], dropouts)

    def refuse(task: MaskSumTask) -> np.ndarray:
        raise PeerKeyRejectedError(min(task.public, default=1))

    monkeypatch.setattr("securefl.protocol.unmasking.mask_sum", refuse)
    with pytest.raises(AbortError) as info:
        server.close_round()
    assert not isinstance(info.value, WorkerError)
    assert "masking key is invalid" in str(info.value)
    assert server.state is ServerState.ABORTED


class _Inline:
    """An executor that runs in the calling thread (what a pool does, minus
    the processes)."""

    def map(self, fn: Any, *iterables: Any) -> Iterator[Any]:
        return map(fn, *iterables)


def test_remembered_key_classes_refuse_exactly_what_the_probe_refuses() -> None:
    """The cache behind ``key_class`` (public keys only) never turns a refusal
    into an answer: a low-order, twist or wrongly typed key is refused every
    time, and a valid key's class is the probe's."""
    from securefl.errors import InvalidKeyError
    from securefl.hazmat import agreement

    valid = KeyPair.generate(default_random(None)).public_bytes
    assert agreement.key_class(valid) == agreement._probe(valid)
    assert agreement.key_class(bytearray(valid)) == agreement.key_class(valid)
    twist = next(bytes([i]) + bytes(31) for i in range(2, 256)
                 if not agreement.is_canonical_public(bytes([i]) + bytes(31)))
    for bad in (bytes(32), b"\x01" + bytes(31), twist, [1] * 32, "x" * 32):
        for _ in range(2):
            with pytest.raises(InvalidKeyError):
                agreement.key_class(bad)  # type: ignore[arg-type]


_OPENED: list[tuple[Any, Any, int]] = []
_WATCHING: list[bool] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if _WATCHING and event == "open":
        _OPENED.append((args[0], args[1], args[2]))  # path, mode (open) or None, flags


def test_closing_with_the_pool_opens_no_file(pool: Any) -> None:
    """The secrets go to the workers through the pool's pipes: while the
    server closes the last round, this process opens no file for writing
    (audit hook; a pipe's descriptor, or a module read, is not a file
    written)."""
    import sys

    config, inputs, dropouts = _small_session()
    server = ServerSession(config, unmask_pool=pool)
    _to_last_round(config, inputs, [server], dropouts)
    if not _WATCHING:
        sys.addaudithook(_audit)  # hooks cannot be removed: it records only while watched
    _OPENED.clear()
    _WATCHING.append(True)
    try:
        server.close_round()
    finally:
        _WATCHING.clear()
    assert server.finished
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND
    written = [(path, mode) for path, mode, flags in _OPENED if not isinstance(path, int)
               and (set(str(mode or "")) & set("wax+") or flags & writing)]
    assert written == []
