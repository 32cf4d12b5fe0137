"""HararyGraph: the SecAgg+ ring graph keyed by the session id."""

from __future__ import annotations

import itertools
import math
import struct
from collections import Counter, deque

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.errors import ConfigurationError
from securefl.protocol import harary
from securefl.protocol.config import SecAggConfig
from securefl.protocol.graphs import CompleteGraph
from securefl.protocol.harary import PERMUTATION_INFO, HararyGraph, ring_order

rosters = st.lists(st.integers(1, 2**31 - 2), min_size=0, max_size=60, unique=True).map(sorted)
degrees = st.integers(1, 15).map(lambda h: 2 * h)
session_ids = st.binary(min_size=0, max_size=48)


# -- an independent, sequential reference of the documented derivation ------

def _reference_words(session_id: bytes):
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
               info=b"securefl/secagg/v1/graph-permutation").derive(session_id)
    enc = Cipher(algorithms.AES(key), modes.CTR(b"\0" * 16)).encryptor()
    while True:
        yield struct.unpack(">I", enc.update(b"\0" * 4))[0]


def _reference_shuffle(roster, words):
    order = list(roster)
    for i in range(len(order) - 1, 0, -1):
        bound = i + 1
        limit = 2**32 - (2**32 % bound)
        while True:
            w = next(words)
            if w < limit:
                break
        j = w % bound
        order[i], order[j] = order[j], order[i]
    return tuple(order)


def _ring_distance(a: int, b: int, r: int) -> int:
    d = abs(a - b) % r
    return min(d, r - d)


@settings(max_examples=150, deadline=None)
@given(roster=rosters, degree=degrees, session_id=session_ids)
def test_graph_properties(roster, degree, session_id):
    graph = HararyGraph(degree)
    nb = graph.neighbours(roster, session_id)
    assert list(nb) == roster
    r = len(roster)
    for cid, peers in nb.items():
        assert isinstance(peers, frozenset)
        assert cid not in peers  # no self loops
        assert peers <= set(roster)
        assert len(peers) == min(degree, r - 1)  # regular (complete when r <= k + 1)
        for peer in peers:
            assert cid in nb[peer]  # symmetric
    # deterministic, and independent of the object instance
    assert HararyGraph(degree).neighbours(list(roster), bytes(session_id)) == nb


@settings(max_examples=100, deadline=None)
@given(roster=rosters, degree=degrees, session_id=session_ids)
def test_graph_is_the_ring_over_the_session_permutation(roster, degree, session_id):
    nb = HararyGraph(degree).neighbours(roster, session_id)
    r = len(roster)
    if r <= degree + 1:
        assert nb == CompleteGraph().neighbours(roster, session_id)
        return
    order = ring_order(roster, session_id)
    position = {cid: p for p, cid in enumerate(order)}
    for a, b in itertools.combinations(roster, 2):
        linked = _ring_distance(position[a], position[b], r) <= degree // 2
        assert (b in nb[a]) == linked


@settings(max_examples=100, deadline=None)
@given(roster=rosters, session_id=session_ids)
def test_ring_order_matches_the_documented_derivation(roster, session_id):
    order = ring_order(roster, session_id)
    assert sorted(order) == roster  # a permutation of the roster
    assert order == _reference_shuffle(roster, _reference_words(session_id))
    assert PERMUTATION_INFO == b"securefl/secagg/v1/graph-permutation"


def test_rejected_words_are_skipped_exactly_like_the_sequential_algorithm(monkeypatch):
    # 0xFFFFFFFF is rejected for every bound that is not a power of two, so
    # this stream forces the rejection path many times, also back to back.
    words = [0xFFFFFFFF, 7, 0xFFFFFFFF, 0xFFFFFFFF, 123456789, 0xFFFFFFFE, 42] * 40

    class FakeStream:
        def __init__(self, key: bytes) -> None:
            import numpy as np
            self._words = np.array(words, dtype=np.uint64)

        def ensure(self, count: int):
            assert count <= len(self._words)
            return self._words

    monkeypatch.setattr(harary, "_WordStream", FakeStream)
    roster = list(range(1, 31))
    assert ring_order(roster, b"any") == _reference_shuffle(roster, iter(words))


def test_known_answer():
    # Pins the derivation: HKDF-SHA256 -> AES-256-CTR -> rejection-sampled
    # Fisher-Yates.  Any change here changes every deployed graph.
    sid = b"securefl test session"
    assert ring_order(list(range(1, 11)), sid) == (9, 8, 2, 6, 4, 1, 5, 10, 3, 7)
    assert HararyGraph(4).neighbours(list(range(1, 11)), sid)[1] == frozenset({4, 5, 6, 10})
    assert ring_order([], b"x") == ()
    assert ring_order([7], b"x") == (7,)


@settings(max_examples=60, deadline=None)
@given(a=session_ids, b=session_ids)
def test_different_session_ids_give_different_permutations(a, b):
    roster = list(range(1, 41))  # 40! orders: a collision would be a 2^-159 event
    if a != b:
        assert ring_order(roster, a) != ring_order(roster, b)
    else:
        assert ring_order(roster, a) == ring_order(roster, b)


def test_permutation_is_uniform():
    # 3 clients: all 6 orders equally likely.  6000 fixed session ids; the
    # chi-square statistic (5 degrees of freedom) stays far below the 0.1%
    # critical value 20.5 for an unbiased shuffle.
    counts = Counter(ring_order([1, 2, 3], i.to_bytes(4, "big")) for i in range(6000))
    assert len(counts) == 6
    chi2 = sum((c - 1000) ** 2 / 1000 for c in counts.values())
    assert chi2 < 20.5
    # 6 clients: each client lands in each ring position about equally often.
    hits = Counter()
    for i in range(3000):
        for pos, cid in enumerate(ring_order(list(range(1, 7)), b"u" + i.to_bytes(4, "big"))):
            hits[(cid, pos)] += 1
    assert max(abs(c - 500) for c in hits.values()) < 5 * math.sqrt(500 * 5 / 6)


def test_survivors_stay_connected_and_graph_is_k_connected():
    # A Harary graph H(k, n) is k-vertex-connected: removing any k-1 clients
    # (here: chosen adversarially as a contiguous run of the ring, the worst
    # case, plus scattered ones) leaves it connected.
    roster = list(range(1, 61))
    sid = b"connectivity"
    graph = HararyGraph(6)
    nb = graph.neighbours(roster, sid)
    order = ring_order(roster, sid)
    for removed in (set(order[10:15]), set(order[::12][:5]), {order[0], order[30]}):
        alive = [c for c in roster if c not in removed]
        seen = {alive[0]}
        queue = deque([alive[0]])
        while queue:
            for peer in nb[queue.popleft()]:
                if peer not in removed and peer not in seen:
                    seen.add(peer)
                    queue.append(peer)
        assert seen == set(alive)


def test_small_rosters_degenerate_to_the_complete_graph():
    graph = HararyGraph(10)
    for r in range(0, 12):
        roster = list(range(1, r + 1))
        assert graph.neighbours(roster, b"s") == CompleteGraph().neighbours(roster, b"s")
    assert all(len(v) == 10 for v in graph.neighbours(list(range(1, 13)), b"s").values())


@pytest.mark.parametrize("bad", [0, -2, 3, 1, 7, True, 2.0, "4", None])
def test_constructor_rejects_bad_degrees(bad):
    with pytest.raises(ConfigurationError):
        HararyGraph(bad)


def test_validate():
    graph = HararyGraph(30)
    graph.validate(1000, 17)
    graph.validate(31, 31)  # t = k + 1: every holder is needed, still possible
    with pytest.raises(ConfigurationError, match=r"degree \+ 1"):
        graph.validate(1000, 32)
    with pytest.raises(ConfigurationError, match="CompleteGraph"):
        graph.validate(30, 5)
    with pytest.raises(ConfigurationError, match="CompleteGraph"):
        graph.validate(20, 5)
    with pytest.raises(ConfigurationError):
        HararyGraph(0).validate(10, 2)


def test_bad_roster_or_session_id():
    graph = HararyGraph(2)
    with pytest.raises(ConfigurationError, match="sorted"):
        graph.neighbours([3, 1, 2, 4, 5], b"s")
    with pytest.raises(ConfigurationError, match="sorted"):
        graph.neighbours([1, 2, 2, 4, 5], b"s")
    with pytest.raises(ConfigurationError, match="bytes"):
        graph.neighbours([1, 2, 3, 4, 5], "s")  # type: ignore[arg-type]


def test_value_semantics():
    assert HararyGraph(30) == HararyGraph(30)
    assert HararyGraph(30) != HararyGraph(32)
    assert HararyGraph(30) != CompleteGraph()
    assert len({HararyGraph(30), HararyGraph(30), HararyGraph(4)}) == 2
    assert repr(HararyGraph(30)) == "HararyGraph(degree=30)"
    assert HararyGraph(30).describe() == "harary:k=30"
    assert HararyGraph(30).degree == 30


def test_secagg_config_integration():
    config = SecAggConfig(num_clients=100, vector_length=4, threshold=12, graph=HararyGraph(16))
    other = SecAggConfig(num_clients=100, vector_length=4, threshold=12, graph=HararyGraph(18))
    complete = SecAggConfig(num_clients=100, vector_length=4, threshold=12)
    assert len({config.digest(), other.digest(), complete.digest()}) == 3
    with pytest.raises(ConfigurationError, match=r"degree \+ 1"):
        SecAggConfig(num_clients=100, vector_length=4, threshold=18, graph=HararyGraph(16))
    with pytest.raises(ConfigurationError, match="CompleteGraph"):
        SecAggConfig(num_clients=10, vector_length=4, threshold=6, graph=HararyGraph(10))


def test_ten_thousand_clients_each_get_k_neighbours_symmetrically():
    # how long this takes is measured by benchmarks/scale_round.py, not here
    roster = list(range(1, 10_001))
    graph = HararyGraph(100)
    nb = graph.neighbours(roster, (7).to_bytes(32, "big"))
    assert sorted(nb) == roster
    assert all(len(peers) == 100 and u not in peers for u, peers in nb.items())
    assert all(u in nb[v] for u, peers in nb.items() for v in peers)
