"""Adversarial review of sparse (Merkle) roster delivery, SPEC.md [MRK-1]..[MRK-9].

Attacks the tree (second preimages: inner nodes read as leaves, a duplicated
last leaf as in CVE-2012-2459, proofs of malformed length), the codec (a
bitmap sized for another session), the intake (an entry reused under another
sender id, a root of the wrong length) and, in active mode, a forged entry
of a non-neighbour (whose signature only the forged client's neighbours
check): each attack is performed against real code."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.errors import RemoteProtocolError, Rule, WireFormatError
from securefl.hazmat.agreement import KeyPair
from securefl.hazmat.randomness import default_random
from securefl.protocol import SecAggConfig
from securefl.protocol.config import Round
from securefl.protocol.graphs import neighbour_map
from securefl.protocol.harary import HararyGraph
from securefl.protocol.merkle import (
    RosterTree,
    bitmap_of,
    leaf_hash,
    merkle_session_id,
    node_hash,
    verify_inclusion,
)
from securefl.protocol.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    MaskedInput,
    ProvenEntry,
    ShareDelivery,
    SparseKeyRoster,
    UnmaskingRequest,
)
from securefl.wire import WireIssue, decode, encode
from tests.protocol_harness import Federation


def _leaves(n: int) -> list[bytes]:
    return [hashlib.sha256(b"review leaf %d" % i).digest() for i in range(n)]


def _levels(leaves: list[bytes]) -> list[list[bytes]]:
    """Every level of the bottom-up tree (the unpaired last node promoted)."""
    levels = [leaves]
    while len(levels[-1]) > 1:
        below = levels[-1]
        above = [node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)]
        if len(below) % 2:
            above.append(below[-1])
        levels.append(above)
    return levels


# -- the tree: second preimages ------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 40))
def test_no_inner_node_verifies_as_a_leaf_at_the_committed_size(n: int) -> None:
    """The classic second preimage: present an inner node as a leaf with the
    rest of its audit path.  The size the bitmap fixes fixes every leaf's
    depth (RFC 9162 verification fails on a path of the wrong length), so no
    inner node verifies at any index of a tree of that size, even before the
    leaf label (which the client applies itself) is taken into account."""
    leaves = _leaves(n)
    tree = RosterTree(leaves)
    levels = _levels(leaves)
    for height, level in enumerate(levels[1:-1], start=1):
        for j, node in enumerate(level):
            if node in leaves:
                continue  # a promoted leaf is that leaf, at its own index
            # the path above this node: the proof of any leaf below it, minus the
            # steps inside its subtree
            below = j << height
            upper = tree.proof(below)[_steps_inside(below, n, height):]
            for index in range(n):
                assert not verify_inclusion(node, index, n, upper, tree.root)


def test_an_inner_node_does_verify_at_another_size_which_is_why_the_size_is_bound() -> None:
    """At the primitive level RFC 9162 verification does not fix the size:
    the inner node node(l0, l1) of a 3-leaf tree verifies as leaf 0 of a
    2-leaf tree with the same root.  The intake is safe only because (a)
    the client hashes each leaf itself under the leaf label, so no entry's
    leaf equals an inner node, and (b) the size is the bitmap's count, which
    the session id binds ([MRK-3]): another bitmap gives another session."""
    leaves = _leaves(3)
    tree = RosterTree(leaves)
    inner = node_hash(leaves[0], leaves[1])
    assert verify_inclusion(inner, 0, 2, (leaves[2],), tree.root)
    config = _config()
    three = bitmap_of(config.id_array, np.array([1, 2, 3], dtype=np.uint32))
    two = bitmap_of(config.id_array, np.array([1, 2], dtype=np.uint32))
    digest = config.digest()
    assert merkle_session_id(digest, three, 3, tree.root) != \
        merkle_session_id(digest, two, 2, tree.root)


def _steps_inside(index: int, n: int, height: int) -> int:
    """How many audit-path steps of leaf ``index`` lie below height ``height``
    (a promoted node has no sibling at that level, so no step)."""
    steps, i, size = 0, index, n
    for _ in range(height):
        if (i ^ 1) < size:
            steps += 1
        i >>= 1
        size = (size + 1) // 2
    return steps


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 64))
def test_a_duplicated_last_leaf_changes_the_root_cve_2012_2459(n: int) -> None:
    """Bitcoin's tree duplicates an unpaired node, so [a, b, c] and
    [a, b, c, c] share a root (CVE-2012-2459).  This tree promotes it
    unchanged: appending a copy of the last leaf always changes the root, and
    the last leaf's proof does not verify at the copy's index."""
    leaves = _leaves(n)
    tree, longer = RosterTree(leaves), RosterTree([*leaves, leaves[-1]])
    assert tree.root != longer.root
    assert not verify_inclusion(leaves[-1], n, n + 1, tree.proof(n - 1), longer.root)


def test_malformed_proof_inputs_fail_and_never_raise() -> None:
    leaves = _leaves(13)
    tree = RosterTree(leaves)
    good = tree.proof(6)
    assert verify_inclusion(leaves[6], 6, 13, good, tree.root)
    for index, size, proof in [
        (13, 13, good), (-1, 13, good), (6, 0, good), (0, 1, good), (6, 13, good[:-1]),
        (6, 13, (*good, good[0])), (6, 13, (good[0] + b"\0", *good[1:])),
        (6, 13, (good[0][:31], *good[1:])), (6, 13, (bytearray(good[0]), *good[1:])),
        (6, 13, (None, *good[1:])), (6, 2**40, good),
    ]:
        assert not verify_inclusion(leaves[6], index, size, proof, tree.root)
    assert not verify_inclusion(leaves[6], 6, 13, good, tree.root[:31])
    assert not verify_inclusion(leaves[6], 6, 13, good, tree.root + b"\0")
    # one leaf: the root is the leaf, with an empty path only
    single = RosterTree(leaves[:1])
    assert verify_inclusion(leaves[0], 0, 1, (), single.root)
    assert not verify_inclusion(leaves[0], 0, 1, (leaves[0],), single.root)
    with pytest.raises(ValueError):
        RosterTree([])


# -- the codec ------------------------------------------------------------------------


def _config(n: int = 21, **kw: object) -> SecAggConfig:
    kw.setdefault("threshold", 3)
    return SecAggConfig(n, 3, graph=HararyGraph(8), roster_delivery="merkle", **kw)


@pytest.mark.parametrize("length, reason", [(1 << 20, WireIssue.OVERSIZED_FIELD),
                                            (4, WireIssue.OVERSIZED_FIELD),
                                            (2, WireIssue.TRUNCATED_FIELD),
                                            (0, WireIssue.TRUNCATED_FIELD)])
def test_decode_with_config_refuses_a_bitmap_sized_for_another_session(
        length: int, reason: WireIssue) -> None:
    """decode(config=...) promises memory bounded by the session size; a
    1 MiB id bitmap for a 21-client session (3 bytes) was decoded and kept
    (the client refused it only later, [MRK-4])."""
    config = _config()
    fed = Federation(config)
    rosters = fed.advertise()
    msg = rosters[1]
    assert isinstance(msg, SparseKeyRoster)
    assert decode(encode(msg), config=config) == msg
    data = encode(dataclasses.replace(msg, id_bitmap=bytes(length)))
    with pytest.raises(WireFormatError) as info:
        decode(data, config=config)
    assert info.value.reason == reason.value
    assert info.value.field == "id_bitmap"


# -- the intake -----------------------------------------------------------------------


def _refused(client: object, message: object, rule: Rule, peer: int | str = "server") -> None:
    with pytest.raises(RemoteProtocolError) as info:
        client.handle(message)  # type: ignore[attr-defined]
    assert info.value.rule is rule, info.value
    assert info.value.peer == peer
    assert info.value.round is Round.SHARE_KEYS


def test_a_neighbours_entry_reused_under_another_neighbours_id_is_refused() -> None:
    """The leaf hashes the sender id, so v's genuine entry, relabelled as
    neighbour w's, verifies neither with v's proof nor with w's."""
    for use_w_path in (False, True):
        fed = Federation(_config())
        msg = fed.advertise()[1]
        assert isinstance(msg, SparseKeyRoster)
        others = [p for p in msg.entries if p.entry.sender != 1]
        pv, pw = others[0], others[1]
        w = pw.entry.sender
        path = pw.inclusion_path if use_w_path else pv.inclusion_path
        reused = ProvenEntry(dataclasses.replace(pv.entry, sender=w), path)
        entries = tuple(reused if p.entry.sender == w else p for p in msg.entries)
        # v and w now carry the same keys: the proof check comes first
        _refused(fed.clients[1], dataclasses.replace(msg, entries=entries),
                 Rule.ROSTER_PROOF_INVALID, w)


@pytest.mark.parametrize("root", [b"", bytes(31), bytes(33), bytes(64)])
def test_a_root_that_is_not_32_bytes_is_refused(root: bytes) -> None:
    fed = Federation(_config())
    msg = fed.advertise()[1]
    _refused(fed.clients[1], dataclasses.replace(msg, root=root), Rule.MALFORMED)


# -- active mode: a forged entry that only its neighbours can check ------------------


def _forge_all(config: SecAggConfig, entries: list[AdvertiseKeys],
               ) -> tuple[dict[int, SparseKeyRoster], bytes, dict[int, frozenset[int]]]:
    """A malicious server's self-consistent view over ``entries``: one tree,
    one bitmap, every client's sparse roster, the session id and graph."""
    entries = sorted(entries, key=lambda e: e.sender)
    ids = tuple(e.sender for e in entries)
    tree = RosterTree([leaf_hash(e) for e in entries])
    bitmap = bitmap_of(config.id_array, np.array(ids, dtype=np.uint32))
    sid = merkle_session_id(config.digest(), bitmap, len(ids), tree.root)
    graph = neighbour_map(config.graph, ids, sid)
    rosters = {c: SparseKeyRoster(c, config.digest(), bitmap, tree.root, tuple(
        ProvenEntry(entries[ids.index(u)], tree.proof(ids.index(u)))
        for u in sorted(graph[c] | {c}))) for c in ids}
    return rosters, sid, dict(graph)


@pytest.mark.parametrize("signature", [None, bytes(64)])
def test_a_forged_non_neighbour_entry_costs_more_signers_than_the_quorum_spares(
        signature: bytes | None) -> None:
    """Active mode, [MRK-9]: a client checks only its neighbours'
    signatures, so the server can put an unsigned (or forged-signature)
    entry with keys it made under client x's id, and every client that is
    not x's neighbour accepts the roster.  It gains nothing: x refuses (its
    own entry is altered) and each of x's k neighbours refuses (the
    signature), so k + 1 clients never sign, while the signature quorum
    n - k + 1 ([PARAM-7]) spares only k - 1; an accepting client that gets
    as far as the consistency round refuses to sign the survivor list the
    server can offer (fewer than the quorum), so nothing is ever unmasked.
    (With the full roster every client would refuse: no weaker.)"""
    config = _config(threshold=6, mode="active")
    fed = Federation(config)
    fed.advertise()
    adverts = dict(fed.sent[Round.ADVERTISE_KEYS])
    x = 7
    fresh = [KeyPair.generate(default_random(None)).public_bytes for _ in range(2)]
    entries = dict(adverts)
    entries[x] = dataclasses.replace(adverts[x], encryption_key=fresh[0],
                                     masking_key=fresh[1], signature=signature)
    rosters, sid, graph = _forge_all(config, list(entries.values()))
    refusals: dict[int, Rule] = {}
    replies = {}
    for c in config.ids:
        try:
            replies[c] = fed.clients[c].handle(rosters[c])
        except RemoteProtocolError as exc:
            refusals[c] = exc.rule
            assert exc.peer == x or (c == x and exc.peer == "server")
    assert refusals[x] is Rule.OWN_KEY_ALTERED
    sig_rule = Rule.MISSING_SIGNATURE if signature is None else Rule.INVALID_SIGNATURE
    assert {c: r for c, r in refusals.items() if c != x} == dict.fromkeys(graph[x], sig_rule)
    accepted = sorted(replies)
    assert len(accepted) == config.num_clients - config.graph.degree - 1  # type: ignore[attr-defined]
    assert len(accepted) < config.signature_quorum
    # a client away from x runs on: its neighbours' shares decrypt under the forged sid
    v = next(c for c in accepted if not (graph[c] | {c}) & (graph[x] | {x}))
    delivery = ShareDelivery(v, sid, {u: replies[u].ciphertexts[v] for u in graph[v]})
    fed.clients[v].provide_input(fed.inputs[v])
    assert isinstance(fed.clients[v].handle(delivery), MaskedInput)
    with pytest.raises(RemoteProtocolError) as info:
        fed.clients[v].handle(ConsistencyRequest(v, sid, tuple(accepted)))
    assert info.value.rule is Rule.BELOW_THRESHOLD
    assert info.value.round is Round.CONSISTENCY_CHECK


# -- active mode: two consistent views of genuine entries ------------------------------


@pytest.mark.parametrize("offer_other_view", [False, True])
def test_a_victim_isolated_in_its_own_view_is_never_unmasked(offer_other_view: bool) -> None:
    """Active mode, [MRK-9]/[R4-6]: the server splits the clients between two
    rosters of genuine, signed entries (view A omits one advertiser, view B
    keeps everyone), gives the victim v and v's view-A neighbours view A,
    and runs v through to unmasking: its neighbours' shares decrypt, v masks
    and signs a survivor list.  Every signature over v's session id comes
    from view A's 10 clients, below the quorum of 14 (NOT_ENOUGH_SIGNATURES);
    the view-B clients' signatures bind the other session id
    (INVALID_SIGNATURE).  v refuses either way, revealing no share."""
    # the two graphs depend on the session ids, hence on the clients' fresh
    # keys: in about 1 run in 6 no view-B client gets t - 1 shares, and
    # there is no other view's signature to offer; a fresh federation then
    assert any(_isolate_victim(offer_other_view) for _ in range(12))


def _isolate_victim(offer_other_view: bool) -> bool:
    """One try of the test above; False when view B has no signer to offer."""
    config = _config(threshold=6, mode="active")
    assert config.signature_quorum == 14
    fed = Federation(config)
    fed.advertise()
    adverts = dict(fed.sent[Round.ADVERTISE_KEYS])
    v = 1
    view_a, sid_a, graph_a = _forge_all(config, [adverts[c] for c in config.ids if c != 21])
    view_b, sid_b, graph_b = _forge_all(config, list(adverts.values()))
    assert sid_a != sid_b
    extra = next(c for c in view_a if c not in graph_a[v] | {v})
    group_a = sorted(graph_a[v] | {v, extra})
    group_b = [c for c in config.ids if c not in group_a]
    assert len(group_a) == 10 and len(group_b) == 11
    sent_a = {c: fed.clients[c].handle(view_a[c]) for c in group_a}
    sent_b = {c: fed.clients[c].handle(view_b[c]) for c in group_b}
    # everyone who got t - 1 of its neighbours' shares in its view masks and signs
    survivors_a, survivors_b = tuple(sorted(view_a)), tuple(config.ids)
    signatures: dict[int, bytes] = {}
    for group, graph, sid, sent, survivors in (
            (group_a, graph_a, sid_a, sent_a, survivors_a),
            (group_b, graph_b, sid_b, sent_b, survivors_b)):
        for c in group:
            got = {u: sent[u].ciphertexts[c] for u in graph[c] if u in sent}
            if len(got) + 1 < config.t:
                continue
            fed.clients[c].provide_input(fed.inputs[c])
            assert isinstance(fed.clients[c].handle(ShareDelivery(c, sid, got)), MaskedInput)
            if c not in group_a:  # view B: leave off the neighbours that never shared
                survivors = tuple(u for u in survivors_b if u in sent or u not in graph[c])
            try:
                reply = fed.clients[c].handle(ConsistencyRequest(c, sid, survivors))
            except RemoteProtocolError as exc:  # a listed neighbour never shared with c
                assert exc.rule is Rule.LISTS_CONTRADICT_VIEW
                continue
            signatures[c] = reply.signature
    assert v in signatures
    signed_a = [c for c in signatures if c in group_a]
    assert len(signed_a) <= len(group_a) < config.signature_quorum
    if offer_other_view and not any(c in group_b for c in signatures):
        return False  # the graphs (from the keys' session ids) left view B no signer
    offered = {c: sig for c, sig in signatures.items() if offer_other_view or c in group_a}
    # v signed survivors_a; the request must carry that list
    with pytest.raises(RemoteProtocolError) as info:
        fed.clients[v].handle(UnmaskingRequest(v, sid_a, survivors_a, (),
                                               dict(sorted(offered.items()))))
    assert info.value.rule is (Rule.INVALID_SIGNATURE if offer_other_view
                               else Rule.NOT_ENOUGH_SIGNATURES), info.value
    assert info.value.round is Round.UNMASKING
    assert fed.clients[v].state.name == "ABORTED"
    return True


# -- in-process objects: a bytes subclass must not stand in for the root ---------------


class _AgreeingRoot(bytes):
    """A 32-byte root that says it equals anything (an in-process server can
    hand a client any Python object; the codec only ever builds bytes)."""

    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False

    __hash__ = bytes.__hash__


def test_a_root_object_that_equals_everything_does_not_bypass_the_proofs() -> None:
    """Before the fix an in-process server could pass a root of a bytes
    subclass whose ``==`` always holds: every inclusion proof then
    "verified", so the server replaced a neighbour's keys with its own
    (garbage proof) while the client derived the honest session id (the
    hash reads the root's real bytes): an equivocation the session id does
    not reveal, and the neighbour's shares of the client's secrets encrypted
    to the server.  The intake now takes only exact bytes."""
    fed = Federation(_config())
    msg = fed.advertise()[1]
    assert isinstance(msg, SparseKeyRoster)
    v = next(p.entry.sender for p in msg.entries if p.entry.sender != 1)
    fresh = [KeyPair.generate(default_random(None)).public_bytes for _ in range(2)]
    entries = tuple(
        ProvenEntry(dataclasses.replace(p.entry, encryption_key=fresh[0], masking_key=fresh[1]),
                    (bytes(32),) * len(p.inclusion_path))
        if p.entry.sender == v else p for p in msg.entries)
    forged = dataclasses.replace(msg, root=_AgreeingRoot(msg.root), entries=entries)
    _refused(fed.clients[1], forged, Rule.MALFORMED)
    assert not verify_inclusion(bytes(32), 0, 2, (bytes(32),), _AgreeingRoot(bytes(32)))


# -- [MRK-7] and "later rounds check ids against the bitmap" ------------------------------


def test_a_committed_non_canonical_neighbour_key_is_refused() -> None:
    """[MRK-7]/[R0-5]: a neighbour's key with the top bit set, committed in
    the tree (so its proof verifies), is refused by the size/encoding check,
    naming that neighbour."""
    config = _config()
    fed = Federation(config)
    fed.advertise()
    adverts = dict(fed.sent[Round.ADVERTISE_KEYS])
    for x in sorted(adverts)[1:]:
        entries = dict(adverts)
        bad = bytes([*adverts[x].masking_key[:31], adverts[x].masking_key[31] | 0x80])
        entries[x] = dataclasses.replace(adverts[x], masking_key=bad)
        rosters, _, graph = _forge_all(config, list(entries.values()))
        if x in graph[1]:
            with pytest.raises(RemoteProtocolError) as info:
                fed.clients[1].handle(rosters[1])
            assert info.value.rule is Rule.INVALID_PUBLIC_KEY and info.value.peer == x
            return
    pytest.fail("no forgery made the altered client a neighbour of client 1")


@pytest.mark.parametrize("where", ["survivors", "dropped"])
def test_an_unmasking_request_naming_an_id_outside_the_bitmap_is_refused(where: str) -> None:
    """[MRK-4] ff.: later rounds check ids against the roster ids the bitmap
    names; client 21 never advertised, so it is not in the bitmap."""
    fed = Federation(_config())
    fed.advertise(skip={21})
    fed.answer()
    fed.close()
    fed.answer()
    requests = fed.close()
    msg = requests[1]
    assert 21 not in msg.survivors and 21 not in msg.dropped
    listed = tuple(sorted((*getattr(msg, where), 21)))
    with pytest.raises(RemoteProtocolError) as info:
        fed.clients[1].handle(dataclasses.replace(msg, **{where: listed}))
    assert info.value.rule is Rule.UNKNOWN_PEER and info.value.peer == 21
    assert info.value.round is Round.UNMASKING
