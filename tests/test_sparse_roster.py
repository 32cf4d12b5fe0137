"""Sparse (Merkle) roster delivery, SPEC.md [MRK-1]..[MRK-9].

The Merkle tree against an RFC 6962 reference; a malicious server driving
real ClientSessions with chosen sparse rosters (each attack refused with its
rule, naming the peer); the session id every client derives equal to the
server's; the round's sum equal to the full-roster round's."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefl.conformance.adapters import SecureFLPrimitives
from securefl.conformance.cases import Outcome, Target
from securefl.conformance.runner import all_cases, run
from securefl.errors import ConfigurationError, RemoteProtocolError, Rule, WireFormatError
from securefl.hazmat.agreement import KeyPair
from securefl.hazmat.randomness import default_random
from securefl.protocol import SecAggConfig, secure_sum
from securefl.protocol.config import Round
from securefl.protocol.graphs import neighbour_map, neighbours_of
from securefl.protocol.harary import HararyGraph
from securefl.protocol.merkle import (
    RosterTree,
    bitmap_of,
    ids_of_bitmap,
    leaf_hash,
    merkle_session_id,
    node_hash,
    verify_inclusion,
)
from securefl.protocol.messages import (
    AdvertiseKeys,
    EncryptedShares,
    KeyRoster,
    ProvenEntry,
    ShareDelivery,
    SparseKeyRoster,
)
from securefl.protocol.noise import NoisePlan
from securefl.wire import WireIssue, decode, encode
from securefl.wire import secagg_pb2 as pb
from tests.protocol_harness import Federation

# -- the tree against RFC 6962 section 2.1 -------------------------------------


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 MTH, recursively (leaves are already leaf hashes)."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return node_hash(_mth(leaves[:k]), _mth(leaves[k:]))


def _path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 PATH(m, D[n]), recursively."""
    if len(leaves) == 1:
        return []
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    if m < k:
        return [*_path(m, leaves[:k]), _mth(leaves[k:])]
    return [*_path(m - k, leaves[k:]), _mth(leaves[:k])]


def _leaves(n: int) -> list[bytes]:
    return [hashlib.sha256(b"leaf %d" % i).digest() for i in range(n)]


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 70))
def test_tree_is_rfc6962s_and_every_proof_verifies(n: int) -> None:
    leaves = _leaves(n)
    tree = RosterTree(leaves)
    assert tree.root == _mth(leaves)
    for i in range(n):
        assert list(tree.proof(i)) == _path(i, leaves)
        assert verify_inclusion(leaves[i], i, n, tree.proof(i), tree.root)
        # the same leaf and proof at any other index of the same tree fails
        for j in range(n):
            if j != i:
                assert not verify_inclusion(leaves[i], j, n, tree.proof(i), tree.root)
    # index >= size fails, and the proof must be exactly the path's length
    assert not verify_inclusion(leaves[-1], n, n, tree.proof(n - 1), tree.root)
    assert not verify_inclusion(leaves[0], n, n + 1, tree.proof(0), tree.root)
    assert not verify_inclusion(leaves[0], 0, n, (*tree.proof(0), leaves[0]), tree.root)
    if n > 1:
        assert not verify_inclusion(leaves[0], 0, n, tree.proof(0)[:-1], tree.root)


def _flip(data: bytes, bit: int) -> bytes:
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 300), st.data())
def test_every_single_bit_flip_fails(n: int, data: st.DataObject) -> None:
    leaves = _leaves(n)
    tree = RosterTree(leaves)
    i = data.draw(st.integers(0, n - 1))
    proof = tree.proof(i)
    assert verify_inclusion(leaves[i], i, n, proof, tree.root)
    for bit in range(256):
        assert not verify_inclusion(_flip(leaves[i], bit), i, n, proof, tree.root)
        assert not verify_inclusion(leaves[i], i, n, proof, _flip(tree.root, bit))
        for level in range(len(proof)):
            bad = list(proof)
            bad[level] = _flip(bad[level], bit)
            assert not verify_inclusion(leaves[i], i, n, bad, tree.root)


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    # a node read as a leaf: the 64 bytes of two children are no leaf's hash
    entry = AdvertiseKeys(1, bytes(32), bytes(32), None, bytes(32))
    assert leaf_hash(entry) != node_hash(bytes(32), bytes(32))
    left, right = _leaves(2)
    assert node_hash(left, right) != hashlib.sha256(left + right).digest()


def test_bitmap_round_trips_and_refuses_padding_and_length() -> None:
    invited = np.array([3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377], dtype=np.uint32)
    ids = np.array([5, 13, 377], dtype=np.uint32)
    bitmap = bitmap_of(invited, ids)
    assert len(bitmap) == 2
    assert ids_of_bitmap(invited, bitmap).tolist() == [5, 13, 377]
    assert ids_of_bitmap(invited, bitmap + b"\0") is None
    assert ids_of_bitmap(invited, bytes([bitmap[0], bitmap[1] | 1])) is None  # a padding bit
    with pytest.raises(ValueError):
        bitmap_of(invited, np.array([4], dtype=np.uint32))


# -- configuration -------------------------------------------------------------


def test_merkle_delivery_needs_a_sparse_graph_and_changes_the_digest() -> None:
    with pytest.raises(ConfigurationError):
        SecAggConfig(12, 2, roster_delivery="merkle")
    with pytest.raises(ConfigurationError):
        SecAggConfig(12, 2, graph=HararyGraph(4), roster_delivery="partial")
    full = SecAggConfig(12, 2, graph=HararyGraph(4), threshold=3)
    sparse = dataclasses.replace(full, roster_delivery="merkle")
    assert full.digest() != sparse.digest()
    # the default digest is unchanged by the new field
    assert full.digest() == dataclasses.replace(full, roster_delivery="full").digest()


# -- a malicious server against real clients -----------------------------------


def _config(n: int = 21, **kw: object) -> SecAggConfig:
    kw.setdefault("threshold", 3)
    return SecAggConfig(n, 3, graph=HararyGraph(8), roster_delivery="merkle", **kw)


def _fresh_key() -> bytes:
    return KeyPair.generate(default_random(None)).public_bytes


def _adverts(fed: Federation) -> dict[int, AdvertiseKeys]:
    return dict(fed.sent[Round.ADVERTISE_KEYS])


def _forge(config: SecAggConfig, recipient: int, entries: list[AdvertiseKeys],
           ) -> tuple[SparseKeyRoster, bytes]:
    """What a malicious server can always build: a self-consistent sparse
    roster (tree, bitmap, proofs) over entries of its choice."""
    entries = sorted(entries, key=lambda e: e.sender)
    ids = tuple(e.sender for e in entries)
    tree = RosterTree([leaf_hash(e) for e in entries])
    bitmap = bitmap_of(config.id_array, np.array(ids, dtype=np.uint32))
    sid = merkle_session_id(config.digest(), bitmap, len(ids), tree.root)
    graph = neighbour_map(config.graph, ids, sid)
    proven = tuple(ProvenEntry(entries[ids.index(u)], tree.proof(ids.index(u)))
                   for u in sorted(graph[recipient] | {recipient}))
    return SparseKeyRoster(recipient, config.digest(), bitmap, tree.root, proven), sid


def _refused(fed: Federation, cid: int, message: object, rule: Rule,
             peer: int | str = "server") -> None:
    with pytest.raises(RemoteProtocolError) as info:
        fed.clients[cid].handle(message)
    assert info.value.rule is rule, info.value
    assert info.value.peer == peer
    assert info.value.round is Round.SHARE_KEYS
    assert fed.clients[cid].state.name == "ABORTED"


def _honest(seed: int = 0) -> tuple[Federation, dict[int, SparseKeyRoster]]:
    fed = Federation(_config())
    rosters = fed.advertise()
    assert all(type(m) is SparseKeyRoster for m in rosters.values())
    return fed, rosters  # type: ignore[return-value]


def _replace_entry(msg: SparseKeyRoster, sender: int, new: ProvenEntry | None,
                   ) -> SparseKeyRoster:
    entries = [p for p in msg.entries if p.entry.sender != sender]
    if new is not None:
        entries.append(new)
    entries.sort(key=lambda p: p.entry.sender)
    return dataclasses.replace(msg, entries=tuple(entries))


def _neighbour(msg: SparseKeyRoster) -> int:
    return next(p.entry.sender for p in msg.entries if p.entry.sender != msg.recipient)


def test_honest_sparse_roster_is_accepted_and_sid_is_the_servers() -> None:
    fed, rosters = _honest()
    replies = fed.answer()
    assert all(isinstance(r, EncryptedShares) for r in replies.values())
    assert {r.session_id for r in replies.values()} == {fed.server.session_id}
    # O(k) entries per client, never the whole roster
    assert all(len(m.entries) == 9 for m in rosters.values())


def test_bad_proof_is_refused() -> None:
    fed, rosters = _honest()
    msg = rosters[1]
    v = _neighbour(msg)
    p = next(p for p in msg.entries if p.entry.sender == v)
    bad = ProvenEntry(p.entry, (_flip(p.inclusion_path[0], 3), *p.inclusion_path[1:]))
    _refused(fed, 1, _replace_entry(msg, v, bad), Rule.ROSTER_PROOF_INVALID, v)


def test_proof_of_another_index_is_refused() -> None:
    fed, rosters = _honest()
    msg = rosters[1]
    v = _neighbour(msg)
    p = next(p for p in msg.entries if p.entry.sender == v)
    other = next(q for q in msg.entries if q.entry.sender not in (v,))
    _refused(fed, 1, _replace_entry(msg, v, ProvenEntry(p.entry, other.inclusion_path)),
             Rule.ROSTER_PROOF_INVALID, v)


def test_neighbour_entry_replaced_by_other_keys_is_refused() -> None:
    # the server puts a non-neighbour's (or fresh) keys under a neighbour's id
    fed, rosters = _honest()
    msg = rosters[1]
    v = _neighbour(msg)
    p = next(p for p in msg.entries if p.entry.sender == v)
    fresh = _fresh_key()
    forged = dataclasses.replace(p.entry, masking_key=fresh)
    _refused(fed, 1, _replace_entry(msg, v, ProvenEntry(forged, p.inclusion_path)),
             Rule.ROSTER_PROOF_INVALID, v)


def test_non_neighbour_leaf_substituted_is_refused() -> None:
    fed, rosters = _honest()
    msg = rosters[1]
    v = _neighbour(msg)
    mine = {p.entry.sender for p in msg.entries}
    # w's genuine entry and proof, from w's own roster
    pw = next(p for m in rosters.values() for p in m.entries if p.entry.sender not in mine)
    w = pw.entry.sender
    swapped = _replace_entry(_replace_entry(msg, v, None), w, pw)
    _refused(fed, 1, swapped, Rule.ROSTER_NOT_NEIGHBOURS, w)


def test_neighbour_omitted_is_refused() -> None:
    fed, rosters = _honest()
    msg = rosters[1]
    v = _neighbour(msg)
    _refused(fed, 1, _replace_entry(msg, v, None), Rule.ROSTER_NOT_NEIGHBOURS, v)


def test_extra_entry_is_refused() -> None:
    fed, rosters = _honest()
    msg = rosters[1]
    mine = {p.entry.sender for p in msg.entries}
    pw = next(p for m in rosters.values() for p in m.entries if p.entry.sender not in mine)
    w = pw.entry.sender
    _refused(fed, 1, _replace_entry(msg, w, pw), Rule.ROSTER_NOT_NEIGHBOURS, w)


def test_bitmap_with_an_uninvited_id_is_refused() -> None:
    fed, rosters = _honest()
    msg = rosters[1]
    # n = 21: 3 bytes, bits 21..23 are past the invited ids
    bitmap = msg.id_bitmap[:-1] + bytes([msg.id_bitmap[-1] | 0x01])
    _refused(fed, 1, dataclasses.replace(msg, id_bitmap=bitmap), Rule.ROSTER_ID_SET_INVALID)
    fed, rosters = _honest()
    _refused(fed, 1, dataclasses.replace(rosters[1], id_bitmap=rosters[1].id_bitmap + b"\0"),
             Rule.ROSTER_ID_SET_INVALID)


def test_bitmap_below_the_floor_is_refused() -> None:
    # a consistent roster over 14 clients while the configuration needs 15
    config = _config(min_survivors=15)
    fed = Federation(config)
    fed.advertise()
    adverts = _adverts(fed)
    msg, _ = _forge(config, 1, [adverts[c] for c in range(1, 15)])
    _refused(fed, 1, msg, Rule.BELOW_THRESHOLD)


def test_own_entry_missing_from_the_id_set_is_refused() -> None:
    fed, _ = _honest()
    adverts = _adverts(fed)
    msg, _ = _forge(fed.config, 2, [adverts[c] for c in range(2, 22)])
    _refused(fed, 1, dataclasses.replace(msg, recipient=1), Rule.OWN_KEY_ALTERED)


def test_own_key_altered_is_refused() -> None:
    fed, _ = _honest()
    adverts = _adverts(fed)
    forged = dataclasses.replace(adverts[1], encryption_key=_fresh_key())
    msg, _ = _forge(fed.config, 1, [forged] + [adverts[c] for c in range(2, 22)])
    _refused(fed, 1, msg, Rule.OWN_KEY_ALTERED)


def test_duplicate_key_between_two_neighbours_is_refused() -> None:
    fed, _ = _honest()
    adverts = _adverts(fed)
    # copy a's masking key into b; keep the forgery whose graph makes a and b
    # both neighbours of client 1 (the roster, hence the graph, changes with it)
    for a in range(2, 22):
        for b in range(a + 1, 22):
            entries = dict(adverts)
            entries[b] = dataclasses.replace(adverts[b], masking_key=adverts[a].masking_key)
            msg, _ = _forge(fed.config, 1, list(entries.values()))
            got = {p.entry.sender for p in msg.entries}
            if {a, b} <= got:
                _refused(fed, 1, msg, Rule.DUPLICATE_KEY, b)
                return
    pytest.fail("no forgery put both holders of the key next to client 1")


def test_a_full_roster_is_refused_in_merkle_mode() -> None:
    fed, _ = _honest()
    adverts = _adverts(fed)
    full = KeyRoster(fed.config.digest(), tuple(adverts[c] for c in sorted(adverts)))
    _refused(fed, 1, full, Rule.WRONG_ROUND)


def test_a_roster_for_another_recipient_is_refused() -> None:
    fed, rosters = _honest()
    with pytest.raises(RemoteProtocolError) as info:
        fed.clients[1].handle(rosters[2])
    assert info.value.rule is Rule.MALFORMED


def test_active_mode_signature_of_a_neighbour_is_checked() -> None:
    config = _config(threshold=6, mode="active")
    fed = Federation(config)
    rosters = fed.advertise()
    msg = rosters[1]
    v = _neighbour(msg)
    p = next(p for p in msg.entries if p.entry.sender == v)
    # the signature is not in the leaf: only the signature check catches this
    unsigned = ProvenEntry(dataclasses.replace(p.entry, signature=bytes(64)), p.inclusion_path)
    _refused(fed, 1, _replace_entry(msg, v, unsigned), Rule.INVALID_SIGNATURE, v)


# -- equivocation: two clients shown different rosters -------------------------


def _equivocate(fed: Federation, victim: int, commitment: bytes = bytes(32),
                ) -> tuple[SparseKeyRoster, bytes]:
    """A roster for ``victim`` that differs from everyone else's in one
    other client's seed commitment (self-consistent: its proofs verify)."""
    adverts = _adverts(fed)
    other = next(c for c in sorted(adverts) if c != victim)
    entries = dict(adverts)
    entries[other] = dataclasses.replace(adverts[other], seed_commitment=commitment)
    return _forge(fed.config, victim, list(entries.values()))


def test_equivocation_gives_another_session_id_which_the_server_refuses() -> None:
    """Shown another roster, the victim accepts it (its proofs verify) but
    derives another session id: its shares carry it, and the server refuses
    them (session-id-mismatch); the victim counts as dropped and the round
    ends with the exact sum of the others."""
    fed, _ = _honest()
    victim = 5
    forged, sid = _equivocate(fed, victim)
    assert sid != fed.server.session_id
    replies = fed.answer(replace={victim: forged}, send=False)
    assert replies[victim].session_id == sid
    with pytest.raises(RemoteProtocolError) as info:
        fed.server.receive(replies[victim])
    assert info.value.rule is Rule.WRONG_SESSION and info.value.peer == victim
    fed.send({c: r for c, r in replies.items() if c != victim})
    fed.close()
    while not fed.finished:
        fed.step()
    assert victim not in fed.result.survivors
    np.testing.assert_array_equal(fed.result.total, fed.expected_sum())


def test_equivocation_relayed_anyway_makes_the_victim_abort() -> None:
    """A server that relays across the two session ids anyway: every pair
    key and associated data binds the session id, so none of the shares the
    victim receives decrypts; below t - 1 usable senders it aborts
    (share-ciphertext-failed-authentication), before masking anything."""
    fed, _ = _honest()
    victim = 5
    # the graph depends on the session id: pick a forgery under which at
    # least t - 1 of the victim's neighbours also have the victim as a
    # neighbour under the honest id (so enough shares can be relayed)
    ids = tuple(sorted(_adverts(fed)))
    honest = neighbour_map(fed.config.graph, ids, fed.server.session_id)
    for tweak in range(256):
        forged, sid = _equivocate(fed, victim, bytes([tweak]) * 32)
        relayers = {u for u in neighbour_map(fed.config.graph, ids, sid)[victim]
                    if victim in honest[u]}
        if len(relayers) + 1 >= fed.config.t:
            break
    replies = fed.answer(replace={victim: forged}, send=False)
    mine = set(replies[victim].ciphertexts)  # the victim's neighbours under its sid
    relayed = {u: r.ciphertexts[victim] for u, r in replies.items()
               if u in mine and victim in r.ciphertexts}
    assert len(relayed) + 1 >= fed.config.t
    fed.clients[victim].provide_input(fed.inputs[victim])
    with pytest.raises(RemoteProtocolError) as info:
        fed.clients[victim].handle(ShareDelivery(victim, sid, relayed))
    assert info.value.rule is Rule.DECRYPTION_FAILED
    assert info.value.round is Round.MASKED_INPUT_COLLECTION


# -- whole rounds ----------------------------------------------------------------


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(6, 300), st.data())
def test_every_client_derives_the_servers_sid_and_the_sum_is_exact(
        n: int, data: st.DataObject) -> None:
    config = SecAggConfig(n, 2, graph=HararyGraph(4), threshold=3, roster_delivery="merkle")
    absent = data.draw(st.sets(st.integers(1, n), max_size=n - 3))
    fed = Federation(config)
    fed.advertise(skip=absent)
    replies = fed.answer()
    assert {r.session_id for r in replies.values()} == {fed.server.session_id}
    fed.close()
    while not fed.finished:
        fed.step()
    assert set(fed.result.survivors) == set(config.ids) - absent
    np.testing.assert_array_equal(fed.result.total, fed.expected_sum())


@pytest.mark.parametrize("mode, noise", [("semi-honest", None), ("active", None),
                                         ("active", NoisePlan(0.0, tolerance=0.05))])
def test_full_and_sparse_delivery_give_the_same_sum(mode: str, noise: NoisePlan | None) -> None:
    # (a noise plan of variance 0: every noise-seed commitment is in the leaves,
    # shared and removed for real, and the sum stays exact)
    full = SecAggConfig(24, 4, graph=HararyGraph(8), threshold=6, mode=mode, noise=noise)
    sparse = dataclasses.replace(full, roster_delivery="merkle")
    gen = np.random.default_rng(7)
    inputs = {c: gen.integers(0, 2**32, 4, dtype=np.uint64) for c in full.ids}
    dropouts = {3: Round.MASKED_INPUT_COLLECTION, 9: Round.SHARE_KEYS}
    a = secure_sum(inputs, full, dropouts=dropouts)
    b = secure_sum(inputs, sparse, dropouts=dropouts)
    np.testing.assert_array_equal(a.total, b.total)
    assert a.survivors == b.survivors
    plain = sum(inputs[c] for c in a.survivors) % np.uint64(2**32)
    np.testing.assert_array_equal(b.total, plain)


# -- wire ---------------------------------------------------------------------------


def test_sparse_roster_round_trips_on_the_wire_and_is_small() -> None:
    config = _config(n=200)
    fed = Federation(config)
    rosters = fed.advertise()
    adverts = _adverts(fed)
    full = encode(KeyRoster(config.digest(), tuple(adverts[c] for c in sorted(adverts))))
    for c in (1, 100, 200):
        data = encode(rosters[c])
        assert decode(data, config=config, expect=SparseKeyRoster) == rosters[c]
        assert len(data) < len(full) / 3


@pytest.mark.parametrize("mutation, reason", [
    ("path", WireIssue.TRUNCATED_FIELD),
    ("order", WireIssue.NON_CANONICAL),
    ("twice", WireIssue.DUPLICATE_ID),
    ("root", WireIssue.TRUNCATED_FIELD),
])
def test_malformed_sparse_rosters_are_refused_by_the_codec(mutation: str,
                                                          reason: WireIssue) -> None:
    _, rosters = _honest()
    msg = rosters[1]
    wire = pb.SecAggMessage.FromString(encode(msg))
    inner = wire.sparse_key_roster
    if mutation == "path":
        inner.entries[1].inclusion_path = inner.entries[1].inclusion_path[:-1]
    elif mutation == "order":
        first, second = (pb.ProvenRosterEntry(), pb.ProvenRosterEntry())
        first.CopyFrom(inner.entries[0])
        second.CopyFrom(inner.entries[1])
        inner.entries[0].CopyFrom(second)
        inner.entries[1].CopyFrom(first)
    elif mutation == "twice":
        inner.entries[1].CopyFrom(inner.entries[0])
    else:
        inner.root = inner.root[:31]
    with pytest.raises(WireFormatError) as info:
        decode(wire.SerializeToString(deterministic=True))
    assert info.value.reason == reason.value


def test_a_repeated_sparse_roster_is_answered_again_and_a_sparse_roster_is_refused_in_full_mode(
        ) -> None:
    fed, rosters = _honest()
    first = fed.clients[1].handle(rosters[1])
    assert fed.clients[1].handle(rosters[1]) is first  # [CLI-2]
    full = Federation(SecAggConfig(21, 3, graph=HararyGraph(8), threshold=3))
    full.advertise()
    _refused(full, 1, rosters[1], Rule.WRONG_ROUND)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 8).map(lambda h: 2 * h), st.integers(1, 120), st.binary(min_size=32,
                                                                              max_size=32),
       st.data())
def test_one_clients_neighbours_equal_the_whole_maps(degree: int, r: int, sid: bytes,
                                                     data: st.DataObject) -> None:
    roster = tuple(sorted(data.draw(st.sets(st.integers(1, 10_000), min_size=r, max_size=r))))
    graph = HararyGraph(degree)
    whole = graph.neighbours(roster, sid)
    for u in roster:
        assert neighbours_of(graph, roster, sid, u) == whole[u]
    with pytest.raises(KeyError):
        graph.neighbours_of(roster, sid, 10_001)


# -- conformance vectors of the Merkle commitment --------------------------------


def test_merkle_vectors_catch_a_verifier_without_the_rfc_9162_checks() -> None:
    cases = [c for c in all_cases() if "/merkle_test/" in c.id]
    assert len(cases) > 30
    assert {r.outcome for r in run(cases, Target())} == {Outcome.PASSED}

    class Lax(SecureFLPrimitives):
        """Recomputes the root but skips the index and path-length checks."""

        def roster_inclusion(self, leaf: bytes, index: int, tree_size: int,
                             path: list[bytes], root: bytes) -> bool:
            fn, r = index, leaf
            for p in path:
                r = node_hash(p, r) if fn & 1 else node_hash(r, p)
                fn >>= 1
            return r == root or verify_inclusion(leaf, index, tree_size, path, root)

    class Unlabelled(SecureFLPrimitives):
        def roster_leaf(self, sender: int, encryption_key: bytes, masking_key: bytes,
                        seed_commitment: bytes, noise_commitments: list[bytes]) -> bytes:
            return hashlib.sha256(b"\0" + sender.to_bytes(4, "big") + encryption_key
                                  + masking_key + seed_commitment
                                  + b"".join(noise_commitments)).digest()

    for broken in (Lax, Unlabelled):
        outcomes = {r.outcome for r in run(cases, Target(primitives=broken))}
        assert Outcome.FAILED in outcomes, broken.__name__
    # an adapter without the optional methods skips these cases
    assert {r.outcome for r in run(cases, Target(primitives=lambda: object()))} == {
        Outcome.SKIPPED}


def test_a_sparse_roster_carrying_every_entry_is_refused() -> None:
    # every genuine entry with its genuine proof: the full roster smuggled in
    fed, rosters = _honest()
    everything = {p.entry.sender: p for m in rosters.values() for p in m.entries}
    assert len(everything) == 21
    msg = dataclasses.replace(rosters[1], entries=tuple(everything[c]
                                                        for c in sorted(everything)))
    mine = {p.entry.sender for p in rosters[1].entries}
    first_extra = min(set(everything) - mine)
    _refused(fed, 1, msg, Rule.ROSTER_NOT_NEIGHBOURS, first_extra)


def test_active_mode_a_forged_entry_is_caught_by_a_neighbour_and_harmless_to_others() -> None:
    """Active mode: the server alters one client's seed commitment (it cannot
    re-sign it).  A client whose neighbour it is refuses the roster
    (signature-invalid); a client for which it is not a neighbour accepts it
    (it checks only its neighbours' signatures, [MRK-9]) but derives another
    session id, so its shares are refused (session-id-mismatch) and the round
    ends with the exact sum of the others."""
    config = _config(threshold=6, mode="active")
    caught = harmless = False
    for victim in range(1, 8):
        fed = Federation(config)
        fed.advertise()
        adverts = _adverts(fed)
        for other in (c for c in adverts if c != victim):
            entries = dict(adverts)
            entries[other] = dataclasses.replace(adverts[other], seed_commitment=bytes(32))
            forged, sid = _forge(config, victim, list(entries.values()))
            if other in {p.entry.sender for p in forged.entries}:
                if caught:
                    continue
                _refused(fed, victim, forged, Rule.INVALID_SIGNATURE, other)
                caught = True
                break  # this victim aborted: the next round uses another
            if harmless:
                continue
            replies = fed.answer(replace={victim: forged}, send=False)
            assert replies[victim].session_id == sid != fed.server.session_id
            with pytest.raises(RemoteProtocolError) as info:
                fed.server.receive(replies[victim])
            assert info.value.rule is Rule.WRONG_SESSION
            fed.send({c: r for c, r in replies.items() if c != victim})
            fed.close()
            while not fed.finished:
                fed.step()
            assert victim not in fed.result.survivors
            np.testing.assert_array_equal(fed.result.total, fed.expected_sum())
            harmless = True
            break
        if caught and harmless:
            return
    pytest.fail(f"caught={caught} harmless={harmless}")
