"""The server's running sum of masked inputs and the store it takes excluded
vectors back from (securefl.protocol.storage, SPEC [R2-3], [R2-6]).

The server adds every accepted masked input into a running sum at once and
keeps a copy in an injected store; a complaint that arrives later may exclude
a client whose vector is already in the sum, which must then be subtracted
exactly.  These tests perform such late exclusions (a complaint about a
client that sent its masked input before the complainer) and check the sum
exactly, with the in-memory and the file-backed store giving the same result
bit for bit.
"""

from __future__ import annotations

import dataclasses
import tempfile
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefl import Round, SecAggConfig
from securefl.errors import AbortError, LocalProtocolError
from securefl.hazmat.prg import ring_dtype
from securefl.hazmat.randomness import DeterministicRandom
from securefl.protocol.harary import HararyGraph
from securefl.protocol.inmemory import SessionDriver, spill_store
from securefl.protocol.messages import MaskedInput, ShareDelivery
from securefl.protocol.storage import FileStore, MaskedInputStore, MemoryStore, frozen

FAST = settings(max_examples=20, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _stores() -> list[tuple[str, Any]]:
    return [("memory", lambda: (MemoryStore(), None)),
            ("file", lambda: _file_store()),
            ("direct", lambda: _direct_store())]


def _direct_store() -> tuple[MaskedInputStore, Any]:
    """A DirectFileStore where the temporary directory takes direct I/O (else
    the opener's buffered fallback, which is then what ``spill`` uses)."""
    context = spill_store()
    return context.__enter__(), _Closer(context)


class _Closer:
    def __init__(self, context: Any) -> None:
        self.context = context

    def close(self) -> None:
        self.context.__exit__(None, None, None)


def _file_store() -> tuple[FileStore, Any]:
    f = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the test
    return FileStore(f), f


@FAST
@given(data=st.data(), bits=st.integers(1, 64), m=st.integers(1, 300),
       kind=st.sampled_from(["memory", "file", "direct"]))
def test_running_sum_minus_taken_back_vectors_is_the_sum_of_the_rest(
        data: st.DataObject, bits: int, m: int, kind: str) -> None:
    dtype = ring_dtype(bits)
    senders = data.draw(st.lists(st.integers(1, 2**31 - 2), min_size=1, max_size=12,
                                 unique=True), label="senders")
    gen = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    vectors = {s: (gen.integers(0, 2**63, m, dtype=np.uint64)
                   & np.uint64((1 << bits) - 1)).astype(dtype) for s in senders}
    store, f = dict(_stores())[kind]()
    try:
        running = np.zeros(m, dtype=dtype)
        for s in senders:
            buffer = vectors[s].copy()
            store.put(s, buffer)
            np.add(running, buffer, out=running)
            buffer[:] = 0  # the caller may reuse its buffer: the store kept a copy
        assert len(store) == len(senders)
        out = data.draw(st.sets(st.sampled_from(senders)), label="excluded")
        for s in sorted(out):
            back = store.get(s)
            assert back.dtype == dtype and np.array_equal(back, vectors[s])
            np.subtract(running, back, out=running)
        expected = np.zeros(m, dtype=np.uint64)
        for s in senders:
            if s not in out:
                expected = (expected + vectors[s].astype(np.uint64)) & np.uint64(
                    (1 << bits) - 1) if bits < 64 else expected + vectors[s].astype(np.uint64)
        got = running.astype(np.uint64) & np.uint64((1 << bits) - 1) if bits < 64 else \
            running.astype(np.uint64)
        assert np.array_equal(got, expected)
        store.clear()
        assert len(store) == 0
        with pytest.raises(LocalProtocolError):
            store.get(senders[0])
    finally:
        if f is not None:
            f.close()


class _Complaints(SessionDriver):
    """Breaks ``victim``'s ciphertext to each accuser (the network or the
    server did it: to the server the accuser reports the victim), and records
    how many vectors the server's store held when R2 closed."""

    def __init__(self, config: SecAggConfig, inputs: dict[int, np.ndarray],
                 pairs: set[tuple[int, int]], store: MaskedInputStore,
                 dropouts: dict[int, Round], seed: bytes) -> None:
        # the same keys (hence the same sparse graph) for both stores
        super().__init__(config, inputs, store=store, dropouts=dropouts,
                         rng=DeterministicRandom(seed))
        self.pairs = pairs
        self.store = store
        self.held_at_close: int | None = None

    def to_client(self, rnd: Round, cid: int, message: Any) -> Any:
        if isinstance(message, ShareDelivery):
            cts = dict(message.ciphertexts)
            for accuser, victim in self.pairs:
                if accuser == cid and victim in cts:
                    cts[victim] = bytes(len(cts[victim]))
            message = dataclasses.replace(message, ciphertexts=cts)
        return message

    def server_close(self, rnd: Round) -> Any:
        if rnd is Round.MASKED_INPUT_COLLECTION:
            self.held_at_close = len(self.store)
        return super().server_close(rnd)


def _run(config: SecAggConfig, pairs: set[tuple[int, int]], dropouts: dict[int, Round],
         kind: str, seed: bytes = bytes(32)) -> tuple[Any, _Complaints, dict[int, np.ndarray]]:
    gen = np.random.default_rng(11)
    inputs = {c: gen.integers(0, 2**config.bits, config.vector_length, dtype=np.uint64)
              for c in config.ids}
    store, f = dict(_stores())[kind]()
    driver = _Complaints(config, inputs, pairs, store, dropouts, seed)
    try:
        driver.run()
        return driver.result, driver, inputs
    except AbortError as exc:
        return exc, driver, inputs
    finally:
        if f is not None:
            f.close()


@FAST
@given(data=st.data(), n=st.integers(5, 12), sparse=st.booleans(),
       bits=st.sampled_from([8, 20, 32, 64]))
def test_late_complaints_subtract_exactly_and_both_stores_agree(
        data: st.DataObject, n: int, sparse: bool, bits: int) -> None:
    graph = HararyGraph(4) if sparse and n > 5 else None
    t = data.draw(st.integers(2, 3 if graph is not None else n - 3), label="t")
    kwargs: dict[str, Any] = {} if graph is None else {"graph": graph}
    config = SecAggConfig(num_clients=n, vector_length=37, bits=bits, threshold=t, **kwargs)
    ids = list(config.ids)
    # complaints either way round: an accuser after its victim reports a
    # vector the server has already added into the running sum
    pairs = data.draw(st.sets(st.tuples(st.sampled_from(ids), st.sampled_from(ids))
                              .filter(lambda p: p[0] != p[1]), max_size=3), label="pairs")
    drop = data.draw(st.sets(st.sampled_from(ids), max_size=1), label="dropped")
    dropouts = dict.fromkeys(drop, Round.MASKED_INPUT_COLLECTION)
    seed = data.draw(st.binary(min_size=32, max_size=32), label="seed")
    outcomes = {kind: _run(config, pairs, dropouts, kind, seed)
                for kind in ("memory", "file", "direct")}
    mem = outcomes["memory"][0]
    if isinstance(mem, AbortError):
        for kind in ("file", "direct"):
            other = outcomes[kind][0]
            assert isinstance(other, AbortError) and str(other) == str(mem)
        for _, driver, _ in outcomes.values():
            assert len(driver.store) == 0  # an abort clears the store too
        return
    for kind in ("file", "direct"):
        other = outcomes[kind][0]
        assert not isinstance(other, AbortError)
        assert np.array_equal(mem.total, other.total)
        assert (mem.survivors, mem.excluded, mem.blame) == (other.survivors, other.excluded,
                                                           other.blame)
    inputs = outcomes["memory"][2]
    expected = np.zeros(config.vector_length, dtype=np.uint64)
    for c in mem.survivors:
        expected += inputs[c]
    expected &= np.uint64(config.modulus_mask)
    assert np.array_equal(mem.total, expected)
    assert not set(mem.excluded) & set(mem.survivors)
    for _, driver, _ in outcomes.values():
        # every accepted masked input was held until R2 closed, none after
        assert driver.held_at_close == n - len(drop)
        assert len(driver.store) == 0


def test_a_client_reported_after_its_vector_arrived_is_taken_out_of_the_sum() -> None:
    # client 2 sends its masked input before client 5, whose complaint about 2
    # removes both: 2's vector is already in the running sum and must come out
    config = SecAggConfig(num_clients=7, vector_length=50, bits=32, threshold=3)
    for kind in ("memory", "file", "direct"):
        result, driver, inputs = _run(config, {(5, 2)}, {}, kind)
        assert not isinstance(result, AbortError)
        assert result.survivors == (1, 3, 4, 6, 7)
        assert set(result.excluded) == {2, 5}
        expected = sum(inputs[c] for c in result.survivors) & np.uint64(0xFFFFFFFF)
        assert np.array_equal(result.total, expected)
        assert driver.held_at_close == 7


class _Rewriter(_Complaints):
    """The attack on the store's no-copy rule: the caller hands the server a
    masked input whose vector is read-only and owns its memory, then makes
    it writable again (numpy allows the owner to) and changes it.  If the
    store kept that array, a later exclusion of the sender would subtract
    the changed vector and the sum would be silently wrong."""

    def server_receive(self, rnd: Round, cid: int, message: Any) -> None:
        if isinstance(message, MaskedInput):
            vector = np.array(message.masked)  # owns its memory
            vector.flags.writeable = False
            assert vector.flags.owndata and not vector.flags.writeable
            super().server_receive(rnd, cid, dataclasses.replace(message, masked=vector))
            vector.flags.writeable = True
            vector += vector.dtype.type(1)
            return
        super().server_receive(rnd, cid, message)


@pytest.mark.parametrize("kind", ["memory", "file", "direct"])
def test_a_read_only_owner_rewritten_after_receive_does_not_change_the_sum(kind: str) -> None:
    # client 2 sends before client 5, whose complaint about 2 removes both:
    # the server subtracts what it kept of 2's vector, which 2's caller has
    # rewritten since
    config = SecAggConfig(num_clients=7, vector_length=50, bits=32, threshold=3)
    gen = np.random.default_rng(12)
    inputs = {c: gen.integers(0, 2**32, 50, dtype=np.uint64) for c in config.ids}
    store, f = dict(_stores())[kind]()
    try:
        driver = _Rewriter(config, inputs, {(5, 2)}, store, {}, bytes(32))
        driver.run()
    finally:
        if f is not None:
            f.close()
    result = driver.result
    assert set(result.excluded) == {2, 5}
    assert result.survivors == (1, 3, 4, 6, 7)
    expected = sum(inputs[c] for c in result.survivors) & np.uint64(0xFFFFFFFF)
    assert np.array_equal(result.total, expected)


def test_only_read_only_views_of_bytes_are_kept_without_a_copy() -> None:
    data = np.arange(8, dtype=np.uint32).tobytes()
    view = np.frombuffer(data, dtype=np.uint32)
    assert frozen(view) and frozen(np.frombuffer(memoryview(data), dtype=np.uint32))
    with pytest.raises(ValueError):
        view.flags.writeable = True  # numpy refuses: the bytes are immutable
    owner = np.arange(8, dtype=np.uint32)
    owner.flags.writeable = False
    assert not frozen(owner)  # its owner may make it writable again
    assert not frozen(np.arange(8, dtype=np.uint32))
    mutable = bytearray(data)
    assert not frozen(np.frombuffer(memoryview(mutable).toreadonly(), dtype=np.uint32))
    store = MemoryStore()
    store.put(1, view)
    store.put(2, owner)
    assert store.get(1) is view
    assert store.get(2) is not owner and np.array_equal(store.get(2), owner)
