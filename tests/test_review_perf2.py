"""Adversarial review of the performance changes: the Z_2 mask PRG by
encryption, the sealed working copy (``storage.SealableVector``), input
checks without a copy (``validation.validate_input_vector``), the unmasking
split by counts (``unmasking.plan``) and the released replies.

Each attack test performs the attack; the ones marked "hole" succeeded
against the code before the fix in this branch (a silently wrong sum or an
untyped error), the others pin down a property the review found sound.
"""

from __future__ import annotations

import copy
import itertools
import os
import pickle
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.errors import LocalProtocolError, Rule, SecureFLError
from securefl.hazmat.prg import MaskExpander, ring_dtype
from securefl.protocol import SecAggConfig
from securefl.protocol.client import ClientSession, ClientState
from securefl.protocol.inmemory import SessionDriver, secure_sum
from securefl.protocol.messages import MaskedInput
from securefl.protocol.storage import SealableVector, frozen
from securefl.protocol.unmasking import plan

# -- inputs: nothing may wrap silently into another ring element -------------


class _HidingMax(np.ndarray):
    """An ndarray subclass whose ``min``/``max`` do not see its entries."""

    def max(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return 0

    def min(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return 0


def _hostile_inputs(m: int) -> dict[str, np.ndarray]:
    big = np.arange(m, dtype=np.uint64)
    big[-1] = 1 << 33  # 2^33 = 0 mod 2^32
    negative = np.arange(m, dtype=np.int64)
    negative[-1] = -5  # = 2^32 - 5 mod 2^32
    return {
        "masked-above-2^bits": np.ma.array(big, mask=[False] * (m - 1) + [True]),
        "masked-negative": np.ma.array(negative, mask=[False] * (m - 1) + [True]),
        "subclass-hiding-max": big.view(_HidingMax),
        "subclass-hiding-min": negative.view(_HidingMax),
    }


@pytest.mark.parametrize("name", sorted(_hostile_inputs(4)))
def test_hole_an_input_whose_checks_skip_entries_is_refused(name: str) -> None:
    """Hole (before this branch): a masked array's ``max``/``min`` skip the
    masked entries that the working copy then reads, so 2^33 entered the
    ring as 0 and -5 as 2^32 - 5, and the sum was silently wrong; an ndarray
    subclass could hide entries the same way.  Now refused, typed, with the
    rule, whether given to a session or to ``secure_sum``."""
    config = SecAggConfig(num_clients=3, vector_length=4, bits=32)
    vector = _hostile_inputs(4)[name]
    with pytest.raises(LocalProtocolError) as caught:
        ClientSession(config, 1, input=vector)
    assert caught.value.rule in (Rule.MALFORMED, Rule.VALUE_OUT_OF_RANGE)
    session = ClientSession(config, 1)
    with pytest.raises(LocalProtocolError):
        session.provide_input(vector)
    assert session._input is None
    others = {c: np.zeros(4, dtype=np.uint32) for c in (2, 3)}
    with pytest.raises(LocalProtocolError) as caught:
        secure_sum({1: vector, **others}, config)
    assert caught.value.rule in (Rule.MALFORMED, Rule.VALUE_OUT_OF_RANGE)


def test_a_memmap_input_is_checked_and_copied_exactly(tmp_path: Any) -> None:
    """The other side of the fix: an honest ndarray subclass (``np.memmap``)
    is still accepted, and what is sealed is exactly its entries."""
    config = SecAggConfig(num_clients=3, vector_length=5, bits=16)
    mapped = np.memmap(tmp_path / "x.bin", dtype=np.uint32, mode="w+", shape=(5,))
    mapped[:] = [0, 1, 2, 65534, 65535]
    session = ClientSession(config, 1, input=mapped)
    assert session._input is not None and session._input.array is not None
    assert session._input.array.tolist() == [0, 1, 2, 65534, 65535]
    mapped[:] = 7  # the caller changing its file afterwards changes nothing
    assert session._input.array.tolist() == [0, 1, 2, 65534, 65535]
    mapped[-1] = 65536
    with pytest.raises(LocalProtocolError) as caught:
        session.provide_input(mapped)
    assert caught.value.rule is Rule.VALUE_OUT_OF_RANGE


def test_hole_a_ragged_input_to_secure_sum_is_a_typed_refusal() -> None:
    """Hole (before): ``np.asarray`` of a ragged list raised numpy's
    ValueError out of ``secure_sum``, not a SecureFLError naming the client."""
    config = SecAggConfig(num_clients=3, vector_length=2, bits=8)
    inputs: dict[int, Any] = {1: [[1, 2], [3]], 2: [0, 0], 3: [0, 0]}
    with pytest.raises(LocalProtocolError) as caught:
        secure_sum(inputs, config)
    assert caught.value.rule is Rule.MALFORMED and caught.value.peer == 1


_REFUSED: dict[str, tuple[Callable[[int], Any], Rule]] = {
    "bool": (lambda m: np.ones(m, dtype=bool), Rule.MALFORMED),
    "object": (lambda m: np.ones(m, dtype=object), Rule.MALFORMED),
    "float-integral": (lambda m: np.ones(m, dtype=np.float64), Rule.MALFORMED),
    "float-nan": (lambda m: np.full(m, np.nan), Rule.MALFORMED),
    "complex": (lambda m: np.ones(m, dtype=complex), Rule.MALFORMED),
    "structured": (lambda m: np.zeros(m, dtype=[("a", "<u4")]), Rule.MALFORMED),
    "timedelta": (lambda m: np.zeros(m, dtype="m8[s]"), Rule.MALFORMED),
    "0-d": (lambda m: np.array(1, dtype=np.uint32), Rule.WRONG_LENGTH),
    "2-d": (lambda m: np.zeros((m, 1), dtype=np.uint32), Rule.WRONG_LENGTH),
    "negative": (lambda m: -np.ones(m, dtype=np.int8), Rule.VALUE_OUT_OF_RANGE),
    "big-endian-2^32": (lambda m: np.full(m, 1 << 32, dtype=">u8"), Rule.VALUE_OUT_OF_RANGE),
    "uint64-2^32-strided": (lambda m: np.full(2 * m, 1 << 32, dtype=np.uint64)[::2],
                            Rule.VALUE_OUT_OF_RANGE),
    "int64-reversed": (lambda m: np.arange(-1, m - 1, dtype=np.int64)[::-1],
                       Rule.VALUE_OUT_OF_RANGE),
}


@pytest.mark.parametrize("name", sorted(_REFUSED))
def test_every_refused_input_is_typed_with_its_rule(name: str) -> None:
    """Sound: bits = 32, every dtype/shape/value attack is a LocalProtocolError
    with the right rule, from a session and from ``secure_sum``."""
    make, rule = _REFUSED[name]
    config = SecAggConfig(num_clients=3, vector_length=4, bits=32)
    with pytest.raises(LocalProtocolError) as caught:
        ClientSession(config, 1, input=make(4))
    assert caught.value.rule is rule
    others = {c: np.zeros(4, dtype=np.uint32) for c in (2, 3)}
    with pytest.raises(LocalProtocolError) as caught:
        secure_sum({1: make(4), **others}, config)
    assert caught.value.rule is rule


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(1, 64), dtype=st.sampled_from(["<u1", ">u2", "<u4", ">u8", "<i1",
                                                       ">i2", "<i4", ">i8"]),
       stride=st.integers(-2, 2).filter(bool), data=st.data())
def test_an_accepted_input_enters_the_ring_unchanged(bits: int, dtype: str, stride: int,
                                                     data: st.DataObject) -> None:
    """Sound: whatever the byte order, signedness and strides, an input is
    either refused or its working copy holds exactly its integer values."""
    info = np.iinfo(np.dtype(dtype))
    m = 6
    values = data.draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=m,
                                max_size=m))
    backing = np.zeros(m * abs(stride), dtype=dtype)
    vector = backing[::stride]
    vector[:] = values
    config = SecAggConfig(num_clients=3, vector_length=m, bits=bits)
    try:
        session = ClientSession(config, 1, input=vector)
    except LocalProtocolError as exc:
        assert exc.rule is Rule.VALUE_OUT_OF_RANGE
        assert not all(0 <= v < (1 << bits) for v in values)
        return
    assert all(0 <= v < (1 << bits) for v in values)
    assert session._input is not None and session._input.array is not None
    assert [int(x) for x in session._input.array] == values


# -- the working copy: masked in place, sealed, never re-masked ------------


class _FailingOnce:
    """An executor whose next ``map`` (once armed) runs the first task and
    then fails, as a pool that loses a worker part-way does."""

    def __init__(self) -> None:
        self.armed = False

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> Iterator[Any]:
        items = list(zip(*iterables, strict=True))
        if self.armed:
            self.armed = False
            fn(*items[0])
            raise RuntimeError("a worker was lost")
        return iter([fn(*args) for args in items])


def test_hole_masking_that_fails_part_way_is_not_masked_twice() -> None:
    """Hole (before): the input is masked in place, so a failure part-way
    (here the executor, after one of two segments) left the input plus half
    of the masks in the session, unchanged in state; handling the same
    message again masked it a second time and the server's sum came out
    wrong with nothing to detect it.  Now the session aborts (it is a
    dropout), its working copy is cleared and dropped, and the round's sum
    is exact over the survivors."""
    config = SecAggConfig(num_clients=4, vector_length=4096, bits=32)
    gen = np.random.default_rng(5)
    inputs = {c: gen.integers(0, 1 << 32, config.vector_length, dtype=np.uint32)
              for c in config.ids}
    executor = _FailingOnce()
    driver = SessionDriver(config, inputs, executor=executor, workers=2)
    driver.start()
    driver.close()
    driver.step()
    me = 1
    client = driver.clients[me]
    executor.armed = True
    with pytest.raises(RuntimeError):
        client.handle(driver.pending[me])
    try:
        reply = client.handle(driver.pending[me])  # the retry
    except LocalProtocolError as exc:
        assert exc.rule is Rule.SESSION_FINISHED
        assert client.state is ClientState.ABORTED and client._input is None
    else:  # what the code before the fix did: a second masking, sent
        driver.server.receive(reply)
    driver.answer(skip=[me])
    driver.close()
    while not driver.finished:
        driver.step(skip=[me])
    result = driver.result
    total = sum(inputs[c].astype(np.uint64) for c in result.survivors)
    assert np.array_equal(result.total, total & np.uint64(0xFFFFFFFF))
    assert me not in result.survivors


def test_the_sealed_reply_survives_every_handle_on_the_working_buffer() -> None:
    """Sound: whoever kept the BytesIO, its memoryview, a view or a
    memoryview of the working array, or a shallow copy of the vector, and
    writes through it after the seal, changes nothing that was sealed."""
    reference = np.arange(64, dtype=np.uint32)

    def attacks() -> Iterator[tuple[SealableVector, Callable[[], None]]]:
        vector = SealableVector(reference, np.dtype(np.uint32))
        kept = vector._buffer
        assert kept is not None

        def rewrite() -> None:
            kept.seek(0)
            kept.write(b"\xff" * 16)
        yield vector, rewrite
        vector = SealableVector(reference, np.dtype(np.uint32))
        kept2 = vector._buffer
        assert kept2 is not None
        yield vector, lambda: kept2.getbuffer().__setitem__(slice(0, 4), b"\xff" * 4)
        vector = SealableVector(reference, np.dtype(np.uint32))
        assert vector.array is not None
        view = vector.array.view(np.uint8)[::3]
        yield vector, lambda: view.fill(255)
        vector = SealableVector(reference, np.dtype(np.uint32))
        assert vector.array is not None
        raw = memoryview(vector.array)
        yield vector, lambda: raw.__setitem__(0, 9)
        vector = SealableVector(reference, np.dtype(np.uint32))
        twin = copy.copy(vector)
        yield vector, lambda: twin.array.fill(9)  # type: ignore[union-attr]

    for vector, attack in attacks():
        sealed = vector.seal()
        attack()
        assert np.array_equal(sealed, reference) and frozen(sealed)
        with pytest.raises(ValueError):
            sealed.flags.writeable = True


def test_a_fresh_session_pickles_again() -> None:
    """Regression (low): a session given its input before it starts pickled
    while the copy was an ndarray; the BytesIO's memoryview made it a
    TypeError.  A pickled or shallow-copied vector is independent."""
    config = SecAggConfig(num_clients=3, vector_length=8, bits=16)
    session = ClientSession(config, 1, input=np.arange(8, dtype=np.uint16))
    twin = pickle.loads(pickle.dumps(session))
    assert twin._input is not None and twin._input.array is not None
    twin._input.array[0] = 5
    assert session._input is not None and session._input.array is not None
    assert int(session._input.array[0]) == 0
    assert twin._input.seal().tolist() == [5, *range(1, 8)]
    sealed = SealableVector(np.arange(3, dtype=np.uint8), np.dtype(np.uint8))
    sealed.seal()
    assert pickle.loads(pickle.dumps(sealed)).array is None


# -- the Z_2 PRG by encryption ------------------------------------------------


def _reference(start: list[int], jobs: list[tuple[bytes, bool]], bits: int) -> list[int]:
    width = ring_dtype(bits).itemsize
    out = list(start)
    for key, negate in jobs:
        stream = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor().update(
            bytes(len(start) * width))
        for i in range(len(start)):
            word = int.from_bytes(stream[i * width:(i + 1) * width], "little")
            out[i] = out[i] - word if negate else out[i] + word
    return [x % (1 << bits) for x in out]


@settings(max_examples=25, deadline=None)
@given(length=st.integers(1, 900), picks=st.lists(st.tuples(st.integers(0, 3), st.booleans()),
                                                  max_size=10),
       chunk=st.sampled_from([16, 32, 48, 4096]), workers=st.integers(1, 3), data=st.data())
def test_z2_encryption_path_with_reused_keys_threads_and_native_arithmetic(
        length: int, picks: list[tuple[int, bool]], chunk: int, workers: int,
        data: st.DataObject) -> None:
    """Sound: in Z_2, keys repeated (a key added then subtracted cancels),
    start words with high bits set, 1-3 threads, any chunk, and the
    non-reducing ``add_into``/``subtract_into`` interleaved with native uint8
    arithmetic then one ``reduce``: all equal the integer reference."""
    keys = [os.urandom(32) for _ in range(4)]
    jobs = [(keys[i], negate) for i, negate in picks]
    start = data.draw(st.lists(st.integers(0, 255), min_size=length, max_size=length))
    noise = data.draw(st.lists(st.integers(0, 255), min_size=length, max_size=length))
    expected = _reference([x % 2 for x in start], jobs, 1)
    expander = MaskExpander(length, 1, chunk_bytes=chunk)
    acc = np.array(start, dtype=np.uint8)
    with ThreadPoolExecutor(3) as pool:
        expander.apply(jobs, acc, executor=pool, workers=workers)
    assert [int(x) for x in acc] == expected
    acc = np.array(start, dtype=np.uint8)
    extra = np.array(noise, dtype=np.uint8)
    for key, negate in jobs:
        (expander.subtract_into if negate else expander.add_into)(key, acc)
        acc += extra
        acc -= extra
    assert [int(x) for x in expander.reduce(acc)] == expected


# -- the unmasking split ------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(survivors=st.integers(0, 6), dropped=st.integers(0, 5), parts=st.integers(-1, 40),
       data=st.data())
def test_plan_puts_every_mask_in_exactly_one_task(survivors: int, dropped: int, parts: int,
                                                  data: st.DataObject) -> None:
    """Sound: for 0 survivors, 0 dropped, dropped clients with no survivor to
    unmask, any ``parts`` (non-positive, one, more than the masks), each mask
    (a survivor's self mask, a dropped client's mask with one survivor) is in
    exactly one task, every task is non-empty and carries exactly the
    secrets and public keys its masks need."""
    survivor_ids = list(range(1, survivors + 1))
    public = {v: os.urandom(32) for v in survivor_ids}
    seeds = {v: os.urandom(32) for v in survivor_ids}
    keys = {u: os.urandom(32) for u in range(100, 100 + dropped)}  # opaque to plan
    peers = {}
    for u in keys:
        order = data.draw(st.permutations(survivor_ids))
        peers[u] = tuple(order[:data.draw(st.integers(0, survivors))])
    tasks = plan(7, 8, os.urandom(32), seeds, keys, peers, public, parts)
    expected = [(v, None) for v in survivor_ids] + [(u, v) for u in keys for v in peers[u]]
    got = []
    for task in tasks:
        assert task.masks >= 1
        got += [(v, None) for v, seed in task.seeds if seeds[v] == seed]
        for u, raw, vs in task.keys:
            assert raw == keys[u] and vs
            got += [(u, v) for v in vs]
        assert dict(task.public) == {v: public[v] for _, _, vs in task.keys for v in vs}
    assert sorted(got, key=repr) == sorted(expected, key=repr)
    assert len(tasks) <= max(1, parts)
    sizes = [task.masks for task in tasks]
    assert all(b <= a + 1 for a, b in itertools.pairwise(sizes))
    if not expected:
        assert tasks == []


def test_released_replies_are_never_read_again() -> None:
    """Sound (item 5): after ``release_masked_input`` a repeated delivery is a
    typed refusal (never a stale or reused buffer), and the server's stored
    vector is the client's immutable reply itself."""
    config = SecAggConfig(num_clients=3, vector_length=16, bits=8)
    gen = np.random.default_rng(2)
    inputs = {c: gen.integers(0, 256, 16, dtype=np.uint8) for c in config.ids}
    driver = SessionDriver(config, inputs)
    driver.start()
    driver.close()
    driver.step()
    message = driver.pending[1]
    reply = driver.clients[1].handle(message)
    assert isinstance(reply, MaskedInput) and frozen(reply.masked)
    driver.server.receive(reply)
    driver.clients[1].release_masked_input()
    with pytest.raises(LocalProtocolError) as caught:
        driver.clients[1].handle(message)
    assert caught.value.rule is Rule.SESSION_FINISHED
    assert driver.server._store.get(1) is reply.masked
    driver.answer(skip=[1])
    driver.close()
    while not driver.finished:
        driver.step()
    total = sum(inputs[c].astype(np.uint64) for c in driver.result.survivors)
    assert np.array_equal(driver.result.total, total & np.uint64(0xFF))


def test_errors_are_securefl_errors() -> None:
    assert issubclass(LocalProtocolError, SecureFLError)


def test_hole_the_server_checks_every_entry_of_an_array_subclass() -> None:
    """Hole (low; an in-process client only, the wire decodes plain arrays):
    the server's fast path for a vector already in the ring's dtype took a
    masked array's ``max``, which skips masked entries, so a masked input
    with an entry of 2^bits or more was accepted against [R2]'s range rule.
    Now the full check refuses it, naming the sender."""
    from securefl.errors import RemoteProtocolError

    config = SecAggConfig(num_clients=3, vector_length=4, bits=4)
    inputs = {c: np.zeros(4, dtype=np.uint8) for c in config.ids}
    driver = SessionDriver(config, inputs)
    driver.start()
    driver.close()
    driver.step()
    reply = driver.clients[1].handle(driver.pending[1])
    assert isinstance(reply, MaskedInput)
    data = np.array(reply.masked)
    data[-1] = 200
    forged = MaskedInput(1, reply.session_id, np.ma.array(data, mask=[0, 0, 0, 1]),
                         reply.excluded)
    with pytest.raises(RemoteProtocolError) as caught:
        driver.server.receive(forged)
    assert caught.value.rule is Rule.MALFORMED and caught.value.peer == 1
    driver.server.receive(reply)  # the genuine one is still accepted
