"""The central promise: the unmasked sum equals the plain sum mod 2^k, exactly,
for every dropout pattern that leaves at least t clients at every round, and
the session aborts (never a wrong sum) otherwise."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from securefl import ClientStatus, Round, SecAggConfig, SecurityMode, secure_sum
from securefl.errors import AbortError

ROUNDS = list(Round)


def expected_outcome(config: SecAggConfig, dropouts: dict[int, Round]) -> tuple[int, ...] | None:
    """The survivors (inputs included) if the session must succeed, else None."""
    t = config.t
    floor = config.floor

    def alive(c: int, rnd: Round) -> bool:
        return c not in dropouts or rnd < dropouts[c]

    ids = config.ids
    u1 = [c for c in ids if alive(c, Round.ADVERTISE_KEYS)]
    u2 = [c for c in u1 if alive(c, Round.SHARE_KEYS)]
    u3 = [c for c in u2 if alive(c, Round.MASKED_INPUT_COLLECTION)]
    if min(len(u1), len(u2), len(u3)) < floor:
        return None
    sizes = [len(u3)]
    if config.mode is SecurityMode.ACTIVE:
        u4 = [c for c in u3 if alive(c, Round.CONSISTENCY_CHECK)]
        sizes.append(len(u4))
        # [PARAM-7]: the masked inputs and the signatures must each reach the quorum
        if min(len(u3), len(u4)) < config.signature_quorum:
            return None
        u5 = [c for c in u4 if alive(c, Round.UNMASKING)]
    else:
        u5 = [c for c in u3 if alive(c, Round.UNMASKING) and alive(c, Round.CONSISTENCY_CHECK)]
    sizes.append(len(u5))
    return tuple(u3) if min(sizes) >= t else None


@st.composite
def sessions(draw: st.DrawFn) -> tuple[SecAggConfig, dict[int, np.ndarray], dict[int, Round]]:
    n = draw(st.integers(2, 40))
    mode = draw(st.sampled_from(list(SecurityMode)))
    low = n // 2 + 1 if mode is SecurityMode.ACTIVE else 1
    t = draw(st.integers(low, n))
    floor = draw(st.one_of(st.none(), st.integers(t, n)))
    bits = draw(st.integers(1, 64))
    m = draw(st.integers(1, 24))
    ids = draw(st.lists(st.integers(1, 2**31 - 2), min_size=n, max_size=n, unique=True))
    config = SecAggConfig(num_clients=n, vector_length=m, bits=bits, threshold=t, mode=mode,
                          client_ids=tuple(ids), min_survivors=floor)
    high = (1 << bits) - 1
    inputs = {c: np.array(draw(st.lists(st.integers(0, high), min_size=m, max_size=m)),
                          dtype=np.uint64) for c in ids}
    drop_rate = draw(st.sampled_from([0.0, 0.1, 0.3, 0.6]))
    dropouts = {}
    for c in ids:
        if draw(st.floats(0, 1)) < drop_rate:
            dropouts[c] = draw(st.sampled_from(ROUNDS))
    return config, inputs, dropouts


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                    HealthCheck.data_too_large])
@given(sessions())
def test_sum_is_exact_whenever_defined_and_aborts_otherwise(session) -> None:  # type: ignore[no-untyped-def]
    config, inputs, dropouts = session
    survivors = expected_outcome(config, dropouts)
    if survivors is None:
        with pytest.raises(AbortError):
            secure_sum(inputs, config, dropouts)
        event("aborted")
        return
    event("summed" + (" with dropouts" if len(survivors) < config.num_clients else ""))
    result = secure_sum(inputs, config, dropouts)
    assert result.survivors == survivors
    expected = np.zeros(config.vector_length, dtype=np.uint64)
    for c in survivors:
        expected += inputs[c]  # wraps mod 2^64, which 2^bits divides
    if config.bits < 64:
        expected &= np.uint64(config.modulus_mask)
    assert result.total.dtype == np.uint64
    assert np.array_equal(result.total, expected)
    for c in config.ids:
        assert result.statuses[c].included_in_sum == (c in survivors)


@pytest.mark.parametrize("mode", list(SecurityMode))
@pytest.mark.parametrize("stop", ROUNDS)
def test_every_dropout_stage_is_recovered_and_named(mode: SecurityMode, stop: Round) -> None:
    config = SecAggConfig(num_clients=6, vector_length=32, bits=32, threshold=4, mode=mode)
    inputs = {c: np.full(32, c * 1000, dtype=np.uint64) for c in config.ids}
    result = secure_sum(inputs, config, {3: stop})
    included = stop > Round.MASKED_INPUT_COLLECTION
    assert (3 in result.survivors) == included
    assert result.total.tolist() == [sum(c * 1000 for c in result.survivors)] * 32
    expected_status = {
        Round.ADVERTISE_KEYS: ClientStatus.DEAD_BEFORE_SENDING_ANYTHING,
        Round.SHARE_KEYS: ClientStatus.DEAD_AFTER_ADVERTISE_KEYS_RECEIVED,
        Round.MASKED_INPUT_COLLECTION: ClientStatus.DEAD_AFTER_SHARE_KEYS_RECEIVED,
        Round.CONSISTENCY_CHECK: ClientStatus.DEAD_AFTER_MASKED_INPUT_RESPONSE_RECEIVED,
        Round.UNMASKING: (ClientStatus.DEAD_AFTER_CONSISTENCY_CHECK_RECEIVED
                          if mode is SecurityMode.ACTIVE
                          else ClientStatus.DEAD_AFTER_MASKED_INPUT_RESPONSE_RECEIVED),
    }[stop]
    assert result.statuses[3] is expected_status
    assert all(result.statuses[c] is ClientStatus.UNMASKING_RESPONSE_RECEIVED
               for c in config.ids if c != 3)


@pytest.mark.parametrize("stop", ROUNDS)
def test_one_dropout_too_many_aborts_at_every_round(stop: Round) -> None:
    config = SecAggConfig(num_clients=5, vector_length=4, threshold=4,
                          mode=SecurityMode.ACTIVE)
    inputs = {c: np.ones(4, dtype=np.uint64) for c in config.ids}
    with pytest.raises(AbortError) as info:
        secure_sum(inputs, config, {1: stop, 2: stop})
    assert info.value.needed == 4 and info.value.available == 3
    assert info.value.round is stop


def test_the_sum_wraps_modulo_2_to_the_bits_exactly() -> None:
    config = SecAggConfig(num_clients=3, vector_length=2, bits=8)
    inputs = {c: np.array([255, 200], dtype=np.uint64) for c in config.ids}
    assert secure_sum(inputs, config).total.tolist() == [(3 * 255) % 256, (3 * 200) % 256]


def sparse_model(config: SecAggConfig, dropouts: dict[int, Round], nmap) -> tuple[int, ...] | None:  # type: ignore[no-untyped-def]
    """Survivors, or None for an abort, for a session whose roster is
    ``nmap``'s keys: the global thresholds plus the per-neighbourhood rules."""
    t = config.t
    floor = config.floor

    def alive(c: int, rnd: Round) -> bool:
        return c not in dropouts or rnd < dropouts[c]

    u1 = set(nmap)
    if len(u1) < floor:
        return None
    u2 = {c for c in u1 if alive(c, Round.SHARE_KEYS)}
    if len(u2) < floor:
        return None
    eligible = {v for v in u2 if len(nmap[v] & u2) + 1 >= t}
    u3 = {c for c in eligible if alive(c, Round.MASKED_INPUT_COLLECTION)}
    if len(u3) < floor:
        return None
    dropped = u2 - u3
    asked = {v for v in u3 if len(nmap[v] & u3) + 1 >= t}
    if config.mode is SecurityMode.ACTIVE:
        # [PARAM-7]: the survivor list needs signature_quorum signers
        if len(u3) < config.signature_quorum:
            return None
        asked = {c for c in asked if alive(c, Round.CONSISTENCY_CHECK)}
        if len(asked) < config.signature_quorum:
            return None
        u5 = {c for c in asked if alive(c, Round.UNMASKING)}
    else:
        u5 = {c for c in asked if alive(c, Round.UNMASKING) and alive(c, Round.CONSISTENCY_CHECK)}
    if len(u5) < t:
        return None
    for u in u3:
        if len((nmap[u] | {u}) & u5) < t:
            return None
    for u in dropped:
        if len(nmap[u] & u5) < t:
            return None
    return tuple(sorted(u3))


@st.composite
def sparse_sessions(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    from securefl.protocol.harary import HararyGraph

    n = draw(st.integers(6, 40))
    degree = draw(st.sampled_from([k for k in range(2, n - 1, 2)]))
    mode = draw(st.sampled_from(list(SecurityMode)))
    low = (degree + 1) // 2 + 1 if mode is SecurityMode.ACTIVE else 1
    t = draw(st.integers(min(low, degree + 1), degree + 1))
    floor = draw(st.one_of(st.none(), st.integers(t, n)))
    bits = draw(st.integers(1, 64))
    m = draw(st.integers(1, 8))
    config = SecAggConfig(num_clients=n, vector_length=m, bits=bits, threshold=t, mode=mode,
                          graph=HararyGraph(degree), min_survivors=floor)
    high = (1 << bits) - 1
    inputs = {c: np.array(draw(st.lists(st.integers(0, high), min_size=m, max_size=m)),
                          dtype=np.uint64) for c in config.ids}
    rate = draw(st.sampled_from([0.0, 0.1, 0.25]))
    dropouts = {c: draw(st.sampled_from(ROUNDS)) for c in config.ids
                if draw(st.floats(0, 1)) < rate}
    return config, inputs, dropouts


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.data_too_large])
@given(sparse_sessions())
def test_sparse_graphs_sum_exactly_or_abort_as_the_model_says(session) -> None:  # type: ignore[no-untyped-def]
    from securefl.protocol.graphs import neighbour_map
    from securefl.protocol.inmemory import SessionDriver

    config, inputs, dropouts = session
    driver = SessionDriver(config, inputs, dropouts=dropouts)
    server = driver.server
    roster = tuple(c for c in config.ids if driver.answers(c, Round.ADVERTISE_KEYS))
    try:
        driver.run()
    except AbortError:
        if len(roster) >= config.floor:
            assert server.session_id is not None
            nmap = neighbour_map(config.graph, roster, server.session_id)
            assert sparse_model(config, dropouts, nmap) is None
        event("aborted")
        return
    nmap = neighbour_map(config.graph, roster, server.session_id)
    survivors = sparse_model(config, dropouts, nmap)
    assert survivors is not None
    event("summed" + (" with dropouts" if len(survivors) < config.num_clients else ""))
    result = server.result
    assert result.survivors == survivors
    expected = np.zeros(config.vector_length, dtype=np.uint64)
    for c in survivors:
        expected += inputs[c]
    if config.bits < 64:
        expected &= np.uint64(config.modulus_mask)
    assert np.array_equal(result.total, expected)


def test_min_survivors_bounds_the_size_of_any_sum() -> None:
    config = SecAggConfig(num_clients=8, vector_length=4, threshold=3, min_survivors=6)
    inputs = {c: np.full(4, c, dtype=np.uint64) for c in config.ids}
    result = secure_sum(inputs, config, {1: Round.MASKED_INPUT_COLLECTION,
                                         2: Round.UNMASKING})
    assert len(result.survivors) == 7
    with pytest.raises(AbortError) as info:
        secure_sum(inputs, config, {1: Round.MASKED_INPUT_COLLECTION,
                                    2: Round.SHARE_KEYS, 3: Round.MASKED_INPUT_COLLECTION})
    assert info.value.needed == 6 and "minimum number of survivors" in str(info.value)


@pytest.mark.parametrize("mode", list(SecurityMode))
def test_multi_threaded_sessions_give_the_same_exact_sum(mode: SecurityMode) -> None:
    from concurrent.futures import ThreadPoolExecutor

    config = SecAggConfig(num_clients=12, vector_length=300_000, bits=20, threshold=8,
                          mode=mode)
    gen = np.random.default_rng(5)
    inputs = {c: gen.integers(0, 1 << 20, 300_000, dtype=np.uint64) for c in config.ids}
    dropouts = {2: Round.MASKED_INPUT_COLLECTION, 5: Round.SHARE_KEYS, 9: Round.UNMASKING}
    with ThreadPoolExecutor(3) as pool:
        result = secure_sum(inputs, config, dropouts, executor=pool)
    expected = sum(inputs[c] for c in result.survivors) & np.uint64((1 << 20) - 1)
    assert result.survivors == (1, 3, 4, 6, 7, 8, 9, 10, 11, 12)
    assert np.array_equal(result.total, expected)
