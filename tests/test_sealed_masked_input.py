"""A client masks its private ring-dtype copy in place and seals it into the
immutable bytes it sends, without a second vector (``storage.SealableVector``).

What must hold, and is checked here: the sealed vector has exactly the values
given, in the target dtype; it is a read-only view of ``bytes`` that nobody
can make writable again (``storage.frozen`` accepts it), so a server may keep
it without a copy; a caller who kept a view of the working copy and writes
through it after sealing changes nothing that was sealed (the attack); the
client's reply is exactly its input plus its masks; and the copy that used to
be made (``tobytes()`` of the working copy) is gone: the reply is the working
copy's own memory, and the masked-input round allocates one vector, not two.
"""

from __future__ import annotations

import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.errors import LocalProtocolError, SecureFLError
from securefl.hazmat.prg import MaskExpander, ring_dtype
from securefl.protocol import SecAggConfig
from securefl.protocol import derivation as d
from securefl.protocol.client import ClientSession
from securefl.protocol.inmemory import SessionDriver
from securefl.protocol.messages import MaskedInput
from securefl.protocol.storage import SealableVector, frozen
from securefl.protocol.validation import check_input_vector, validate_input_vector

_DTYPES = [np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64]


def _address(array: np.ndarray) -> int:
    return int(array.__array_interface__["data"][0])


@settings(max_examples=60, deadline=None)
@given(data=st.data(), target=st.sampled_from([np.uint8, np.uint16, np.uint32, np.uint64]),
       source=st.sampled_from(_DTYPES), size=st.integers(0, 300), stride=st.integers(1, 3))
def test_sealing_keeps_the_exact_values_and_freezes_them(
        data: st.DataObject, target: type, source: type, size: int, stride: int) -> None:
    top = min(np.iinfo(target).max, np.iinfo(source).max)
    values = data.draw(st.lists(st.integers(0, top), min_size=size, max_size=size))
    given_vector = np.zeros(size * stride, dtype=source)
    given_vector[::stride] = values
    vector = given_vector[::stride]  # strided when stride > 1: converted, not written raw
    sealable = SealableVector(vector, np.dtype(target))
    work = sealable.array
    assert work is not None and work.flags.writeable and work.dtype == np.dtype(target)
    assert not np.shares_memory(work, given_vector)
    given_vector[::stride] = 0  # the caller reusing its buffer changes nothing
    assert [int(x) for x in work] == values
    del work
    sealed = sealable.seal()
    assert sealed.dtype == np.dtype(target) and [int(x) for x in sealed] == values
    assert frozen(sealed) and not sealed.flags.writeable
    with pytest.raises(ValueError):
        sealed.flags.writeable = True
    assert sealable.array is None
    with pytest.raises(LocalProtocolError):
        sealable.seal()


def test_writing_through_a_kept_working_view_after_sealing_changes_nothing() -> None:
    # the attack: keep a view of the working copy, let it be sealed, then
    # write through the view.  getvalue() must then have copied.
    vector = np.arange(1000, dtype=np.uint32)
    sealable = SealableVector(vector, np.dtype(np.uint32))
    assert sealable.array is not None
    kept = sealable.array[10:20]  # a view that outlives the seal
    sealed = sealable.seal()
    kept[:] = 7
    assert frozen(sealed)
    assert np.array_equal(sealed, vector)
    assert not np.shares_memory(sealed, kept)


@pytest.mark.parametrize("workers", [1, 2])
def test_the_reply_is_the_working_copy_sealed_in_place(workers: int) -> None:
    """No tobytes() copy: the masked vector sent lives where the client's
    working copy was (also when threads masked it), and it is frozen."""
    config = SecAggConfig(num_clients=4, vector_length=4096, bits=32)
    gen = np.random.default_rng(3)
    inputs = {c: gen.integers(0, 1 << 32, config.vector_length, dtype=np.uint32)
              for c in config.ids}
    with ThreadPoolExecutor(2) as pool:
        driver = SessionDriver(config, inputs, executor=pool, workers=workers)
        driver.start()
        driver.close()
        driver.step()
        for c in config.ids:
            working = driver.clients[c]._input
            assert working is not None and working.array is not None
            where = _address(working.array)
            reply = driver.clients[c].handle(driver.pending[c])
            assert isinstance(reply, MaskedInput)
            assert _address(reply.masked) == where
            assert frozen(reply.masked)
            driver.server.receive(reply)
        driver.close()
        while not driver.finished:
            driver.step()
    total = sum(inputs[c].astype(np.uint64) for c in driver.result.survivors)
    assert np.array_equal(driver.result.total, total & np.uint64(0xFFFFFFFF))


@settings(max_examples=25, deadline=None)
@given(bits=st.integers(1, 64), source=st.sampled_from(_DTYPES), seed=st.integers(0, 2**31))
def test_the_reply_is_exactly_the_input_plus_the_masks(bits: int, source: type,
                                                        seed: int) -> None:
    """The client's sealed reply against an independent computation of
    ``x + self mask + sum(+-pairwise masks) mod 2^bits`` from its secrets."""
    config = SecAggConfig(num_clients=4, vector_length=37, bits=bits)
    gen = np.random.default_rng(seed)
    top = min((1 << bits) - 1, int(np.iinfo(source).max))
    inputs = {c: gen.integers(0, top, config.vector_length, dtype=source, endpoint=True)
              for c in config.ids}
    driver = SessionDriver(config, inputs)
    driver.start()
    driver.close()
    driver.step()
    me = 2
    client = driver.clients[me]
    sid = client.session_id
    assert sid is not None
    jobs = [(d.self_mask_key(client._seed, sid, me), False)]
    for u in sorted(client._neighbours):
        key = d.masking_secret(client._s, client._roster[u].masking_key, sid, me, u)
        jobs.append((key, me > u))  # the larger id subtracts
    expander = MaskExpander(config.vector_length, bits)
    expected = inputs[me].astype(ring_dtype(bits))
    expander.apply(jobs, expected)
    reply = client.handle(driver.pending[me])
    assert isinstance(reply, MaskedInput)
    assert reply.masked.dtype == ring_dtype(bits)
    assert np.array_equal(reply.masked, expected)
    assert frozen(reply.masked)


def test_masking_allocates_one_vector_not_two() -> None:
    """provide_input + the masked-input round: one vector-sized allocation
    (the working copy that becomes the reply); before, the working copy and
    its ``tobytes()`` were both alive at the end of the round (2 vectors)."""
    m = 1 << 20
    config = SecAggConfig(num_clients=3, vector_length=m, bits=32)
    vector = np.random.default_rng(1).integers(0, 1 << 32, m, dtype=np.uint32)
    driver = SessionDriver(config, dict.fromkeys(config.ids))
    driver.start()
    driver.close()
    driver.step()
    client = driver.clients[1]
    size = m * 4
    tracemalloc.start()
    try:
        client.provide_input(vector)
        reply = client.handle(driver.pending[1])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(reply, MaskedInput) and frozen(reply.masked)
    assert peak < 1.5 * size


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 64), source=st.sampled_from(_DTYPES), data=st.data())
def test_validation_accepts_exactly_what_the_converting_check_accepts(
        bits: int, source: type, data: st.DataObject) -> None:
    """``validate_input_vector`` (no copy, and no pass over the entries when
    the dtype cannot exceed 2^bits) refuses exactly what the converting check
    refuses, with the same rule, and returns the very array it was given."""
    config = SecAggConfig(num_clients=3, vector_length=4, bits=bits)
    info = np.iinfo(source)
    values = data.draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=4,
                                max_size=4))
    vector = np.array(values, dtype=source)
    outcomes = []
    for check in (lambda: validate_input_vector(vector, config, 1, local=True),
                  lambda: check_input_vector(vector, config, 1, local=True)):
        try:
            out = check()
            outcomes.append(("ok", out))
        except SecureFLError as exc:
            outcomes.append((getattr(exc, "rule", None), None))
    assert outcomes[0][0] == outcomes[1][0]
    in_range = all(0 <= v < (1 << bits) for v in values)
    assert (outcomes[0][0] == "ok") == in_range
    if in_range:
        assert outcomes[0][1] is vector
        assert [int(x) for x in outcomes[1][1]] == values


def test_an_aborted_client_drops_its_private_copy() -> None:
    config = SecAggConfig(num_clients=3, vector_length=8, bits=16)
    client = ClientSession(config, 1, input=np.arange(8, dtype=np.uint16))
    assert client._input is not None
    client.start()
    with pytest.raises(SecureFLError):
        # a client message where the roster is expected: the session aborts
        client.handle(MaskedInput(1, bytes(32), np.zeros(8, np.uint16), ()))
    assert client._input is None


def test_the_benchmark_round_holds_the_servers_vectors_only() -> None:
    """The benchmark's driver releases every client's sent reply once the
    server has it (as ``secure_sum``'s does): the round's peak is the
    server's n message buffers plus a few vectors (about n + 4 measured),
    not the 2n + 3 it was when every client kept its reply."""
    from securefl.bench.core import run_round

    n, m = 16, 1 << 16
    run_round(4, m, workers=1)  # modules imported lazily are not the round's
    tracemalloc.start()
    try:
        result = run_round(n, m, bits=32, workers=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.exact
    assert peak < (n + 8) * 4 * m


def test_a_session_snapshot_copies_the_working_vector_apart() -> None:
    """``copy.deepcopy`` of an open working copy (the decoder fuzzer
    snapshots whole client sessions) gives an independent vector with the
    same content; writing to one never changes the other, and a sealed one
    copies as sealed."""
    import copy

    from securefl.protocol.storage import SealableVector

    original = SealableVector(np.arange(10, dtype=np.uint32), np.dtype(np.uint32))
    twin = copy.deepcopy(original)
    assert twin.array is not None and original.array is not None
    twin.array[0] = 99
    assert int(original.array[0]) == 0
    assert np.array_equal(twin.seal()[1:], np.arange(1, 10, dtype=np.uint32))
    assert np.array_equal(original.seal(), np.arange(10, dtype=np.uint32))
    assert copy.deepcopy(original).array is None
