"""SPEC.md [SEC-1] over Flower: a node that assumes corrupt clients refuses an
active-mode setup outside [SEC-1]'s conditions, and the setup can carry the
``min_survivors`` that satisfies them.

The attack (a reviewer's reproduction, here against real
:class:`~securefl.protocol.ClientSession` objects): a node whose policy
assumes ``securefl-graph-corrupt-fraction = 0.05`` (``c = 1`` of ``n = 20``)
used to accept active mode over ``HararyGraph(4)`` with ``t = 3``, and the
setup could not carry ``min_survivors``, so every node ran with the quorum
``q = n - k + 1 = 17``.  With one client colluding (its signature counts
towards ``q``), a malicious server that trims four views and lets those four
clients not sign gathers 17 signatures over the whole roster and learns the
sum of 6 of the 19 honest inputs.  [SEC-1] for ``c = 1`` needs ``2t > h +
c`` (``t >= 4``) and ``q >= n - k + 1 + c = 18``: the node now refuses the
weak setup (rule ``session-too-weak-for-assumed-corrupt-clients``), accepts
``t = 4, min_survivors = 18`` (carried by the setup, the same digest on both
sides), and the same attack on that configuration gets a refusal from every
honest client.

The module also checks SPEC.md [R3-1] (a client signs at most one survivor
list per session) on a real client.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.encoding import FixedPointCodec
from securefl.errors import LocalProtocolError, RemoteProtocolError, Rule
from securefl.flower.policy import (
    NodePolicy,
    PolicyRule,
    SetupRefusedError,
    sec1_failures,
    signature_quorum,
)
from securefl.flower.setup import SessionSetup
from securefl.hazmat import signing
from securefl.protocol import ClientState, Round, SecAggConfig, SecurityMode
from securefl.protocol import derivation as d
from securefl.protocol.graphs import CompleteGraph, NeighbourGraph, neighbour_map
from securefl.protocol.harary import HararyGraph
from securefl.protocol.messages import (
    ConsistencyRequest,
    ConsistencySignature,
    ShareDelivery,
    UnmaskingRequest,
    UnmaskingResponse,
)
from tests.protocol_harness import Federation
from tests.test_split_list_attack import Stage, arc_setup, sign_some, total_of, unmask

N, K = 20, 4
GAMMA = 0.05  # c = floor(0.05 * 20) = 1
CODEC = FixedPointCodec(shapes=((8,),), bits=32, frac_bits=8, clip=1.0, num_clients=N)
NODE = NodePolicy(mode=SecurityMode.ACTIVE, has_identity=True, graph_corrupt_fraction=GAMMA)


def _server_config(t: int, min_survivors: int | None) -> SecAggConfig:
    return SecAggConfig(num_clients=N, vector_length=CODEC.vector_length, bits=32, threshold=t,
                        mode=SecurityMode.ACTIVE, graph=HararyGraph(K),
                        context=b"fed run 1 round 1", min_survivors=min_survivors)


def _node_setup(server: SecAggConfig) -> SessionSetup:
    """What a node parses: the server's setup through its bytes."""
    return SessionSetup.from_bytes(SessionSetup.create(1, server, CODEC).to_bytes())


def _check(policy: NodePolicy, setup: SessionSetup) -> None:
    """What the mod does with a parsed setup (securefl.flower.mod._check_policy)."""
    config = setup.secagg_config()
    policy.check(fl_round=setup.fl_round, mode=SecurityMode(setup.mode),
                 num_clients=setup.num_clients, threshold=setup.threshold,
                 client_ids=setup.client_ids, vector_length=config.vector_length, my_id=1,
                 pinned_ids=setup.client_ids, graph=config.graph,
                 min_survivors=setup.min_survivors)


def _arc_attack(config: SecAggConfig) -> tuple[bool, dict[int, Rule], int]:
    """The reviewer's attack with one corrupt client (``ring[0]``): the arc
    ``ring[0..6]`` is closed by trimming the views of its four end clients,
    which do not sign; the 15 other honest clients and the corrupt one sign
    the whole roster.  Returns whether the server learned the sum of the
    honest clients of the arc exactly, and the rule with which each honest
    client that refused (at any stage) refused, and the corrupt client."""
    fed, sid, roster, ring, trim = arc_setup(config)
    corrupt = ring[0]
    arc = list(ring[:7])
    refused: dict[int, Rule] = {}
    replace, masked = {}, {}
    for c, msg in fed.pending.items():
        assert isinstance(msg, ShareDelivery)
        keep = trim.get(c, set(msg.ciphertexts))
        replace[c] = dataclasses.replace(
            msg, ciphertexts={u: ct for u, ct in msg.ciphertexts.items() if u in keep})
        fed.clients[c].provide_input(fed.inputs[c])
        try:
            masked[c] = fed.clients[c].handle(replace[c]).masked
        except RemoteProtocolError as err:  # too few peers' shares for its threshold
            if c != corrupt:  # the corrupt client's session is the server's puppet
                refused[c] = err.rule
    stage = Stage(fed, sid, neighbour_map(config.graph, roster, sid),
                  {c: frozenset(m.ciphertexts) for c, m in replace.items()}, masked)
    honest = [c for c in roster if c != corrupt]
    signers = [c for c in honest if c not in trim and c not in refused]
    sigs = sign_some(stage, signers, roster)
    assert len(sigs) == len(signers) == N - 4  # every honest signer signs the roster
    # the corrupt client signs too: the server holds its identity key
    sigs[corrupt] = signing.sign(fed.identities[corrupt], d.consistency_payload(sid, roster))
    responses = []
    for c in honest:
        if c in refused:
            continue
        try:
            reply = fed.clients[c].handle(UnmaskingRequest(c, sid, roster, (), sigs))
        except RemoteProtocolError as err:
            refused[c] = err.rule
            continue
        assert isinstance(reply, UnmaskingResponse)
        responses.append(reply)
    if not responses:
        return False, refused, corrupt
    partial = unmask(stage, arc, responses, {}).astype(np.uint64)
    honest_arc = [c for c in arc if c != corrupt]
    learned = (partial - fed.inputs[corrupt].astype(np.uint64)) & np.uint64(config.modulus_mask)
    assert len(honest_arc) == 6 < N - 1  # a strict subset of the honest clients on L
    return bool(np.array_equal(learned, total_of(fed, honest_arc))), refused, corrupt


# -- the attack and the refusal ----------------------------------------------------------


def test_known_attack_one_corrupt_client_learns_a_partial_sum_in_the_weak_setup() -> None:
    """What the refused setup would allow: the node config a Flower node
    built for ``t = 3`` (default ``min_survivors``) lets the server learn the
    sum of 6 of the 19 honest inputs with one corrupt client."""
    node = _node_setup(_server_config(3, None)).secagg_config()
    assert node.signature_quorum == N - K + 1 == 17
    learned, _, _ = _arc_attack(node)
    assert learned


def test_the_weak_setup_is_refused_naming_both_failing_conditions() -> None:
    setup = _node_setup(_server_config(3, None))
    assert setup.min_survivors is None
    with pytest.raises(SetupRefusedError) as info:
        _check(NODE, setup)
    err = info.value
    assert err.rule is PolicyRule.CORRUPT_CLIENTS and err.fl_round == 1
    assert err.rule.value == "session-too-weak-for-assumed-corrupt-clients"
    assert err.detail.startswith("[SEC-1] for c = 1 corrupt of n = 20 (gamma 0.05): ")
    # 2t > h + c fails (6 <= 5 + 1) and names the t that satisfies it
    assert "2t > h + c fails (t = 3, h = 5): needs threshold >= 4" in err.detail
    # q >= n - kappa + 1 + c fails (17 < 18) and names min_survivors
    assert ("q >= n - kappa + 1 + c fails (q = 17, kappa = 4): needs min_survivors >= 18"
            in err.detail)
    assert len(err.detail) <= 300  # what the server logs of a refusal's reason
    assert "2q > n + c" not in err.detail  # 34 > 21 holds


@pytest.mark.parametrize(("t", "min_survivors", "fails", "fix"), [
    (4, None, "q >= n - kappa + 1 + c", "needs min_survivors >= 18"),
    (3, 18, "2t > h + c", "threshold >= 4"),
])
def test_each_condition_alone_is_refused(t: int, min_survivors: int | None, fails: str,
                                         fix: str) -> None:
    with pytest.raises(SetupRefusedError) as info:
        _check(NODE, _node_setup(_server_config(t, min_survivors)))
    assert info.value.rule is PolicyRule.CORRUPT_CLIENTS
    assert fails in info.value.detail and fix in info.value.detail
    assert "; " not in info.value.detail  # one condition named, with its fix


def test_the_strong_setup_is_accepted_carried_and_the_attack_gets_only_refusals() -> None:
    server = _server_config(4, N - K + 2)
    setup = SessionSetup.create(1, server, CODEC)
    assert setup.min_survivors == 18
    raw = setup.to_bytes()
    assert b'"min_survivors":18' in raw
    parsed = SessionSetup.from_bytes(raw)
    assert parsed == setup
    node = parsed.secagg_config()
    # the node builds exactly the server's configuration: same digest, quorum
    assert node == server and node.digest() == server.digest()
    assert node.signature_quorum == server.signature_quorum == 18
    _check(NODE, parsed)  # accepted
    learned, refused, corrupt = _arc_attack(node)
    assert not learned
    # every honest client refused: those whose views were trimmed below t - 1
    # peers at the masked input, the others the unmasking request (17 < 18)
    assert set(refused) == set(node.ids) - {corrupt}
    assert Rule.NOT_ENOUGH_SIGNATURES in set(refused.values())


def test_t3_with_the_quorum_also_defeats_the_attack_but_the_node_still_refuses_it() -> None:
    """With ``min_survivors = 18`` the reviewer's attack fails even at ``t = 3``
    (the quorum alone stops it), yet ``2t > h + c`` fails, so [SEC-1] does
    not hold (corrupt clients may grind next to a victim): refused."""
    node = _node_setup(_server_config(3, 18)).secagg_config()
    learned, refused, corrupt = _arc_attack(node)
    assert not learned and set(refused) == set(node.ids) - {corrupt}
    # the signers: 17 signatures < 18; the unsigned ones: nothing signed to unmask for
    assert set(refused.values()) == {Rule.NOT_ENOUGH_SIGNATURES, Rule.WRONG_ROUND}
    with pytest.raises(SetupRefusedError):
        _check(NODE, _node_setup(_server_config(3, 18)))


def test_without_an_assumed_corrupt_client_nothing_changes() -> None:
    """gamma = 0 (the default): the weak setup is accepted as before."""
    _check(NodePolicy(mode=SecurityMode.ACTIVE, has_identity=True), _node_setup(
        _server_config(3, None)))
    # gamma below 1/n rounds to c = 0 as well
    _check(NodePolicy(has_identity=True, graph_corrupt_fraction=0.049),
           _node_setup(_server_config(3, None)))


def test_semi_honest_mode_is_unchanged() -> None:
    """[SEC-1] is the active-mode guarantee: a semi-honest setup is judged by
    fcp's bounds only, as before."""
    policy = NodePolicy(mode=SecurityMode.SEMI_HONEST, graph_corrupt_fraction=GAMMA,
                        allow_unauthenticated_semi_honest=True)
    setup = _node_setup(dataclasses.replace(_server_config(3, None),
                                            mode=SecurityMode.SEMI_HONEST))
    _check(policy, setup)


def test_the_setup_bytes_without_min_survivors_are_unchanged() -> None:
    """A setup with the default leaves the field out (byte for byte what it
    was before the field existed); an explicit threshold is the default."""
    setup = SessionSetup.create(1, _server_config(4, None), CODEC)
    assert b"min_survivors" not in setup.to_bytes()
    assert SessionSetup.create(1, _server_config(4, 4), CODEC) == setup


# -- the property: accepted iff [SEC-1]'s three conditions hold --------------------------


@st.composite
def sessions(draw: st.DrawFn) -> tuple[SecAggConfig, float, int]:
    n = draw(st.integers(4, 40))
    complete = draw(st.booleans())
    if complete:
        graph: NeighbourGraph = CompleteGraph()
    else:
        graph = HararyGraph(2 * draw(st.integers(1, (n - 2) // 2)))
    holders = graph.share_holders(n)
    t = draw(st.integers(holders // 2 + 1, holders if not complete else n))
    min_survivors = draw(st.integers(t, n))
    c = draw(st.integers(0, n - 1))
    gamma = (c + draw(st.floats(0, 0.999))) / n
    config = SecAggConfig(num_clients=n, vector_length=4, bits=32, threshold=t,
                          mode=SecurityMode.ACTIVE, graph=graph, min_survivors=min_survivors)
    return config, gamma, c


def _conditions(config: SecAggConfig, c: int) -> bool:
    """[SEC-1]'s conditions, from the protocol's own quorum."""
    n, t, q = config.num_clients, config.t, config.signature_quorum
    h = config.graph.share_holders(n)
    kappa = min(config.graph.connectivity(n), n - 1)
    return 2 * t > h + c and 2 * q > n + c and q >= n - kappa + 1 + c


@settings(max_examples=300, deadline=None)
@given(sessions())
def test_sec1_failures_are_exactly_the_conditions(case: tuple[SecAggConfig, float, int]) -> None:
    config, _, c = case
    kwargs = dict(num_clients=config.num_clients, threshold=config.t,
                  min_survivors=config.min_survivors, graph=config.graph)
    assert signature_quorum(**kwargs) == config.signature_quorum  # type: ignore[arg-type]
    failures = sec1_failures(corrupt=c, **kwargs)  # type: ignore[arg-type]
    assert (not failures) == _conditions(config, c)
    if c == 0:
        assert not failures  # every configuration active mode accepts
    # the fix each failure names really fixes it
    n, h = config.num_clients, config.graph.share_holders(config.num_clients)
    kappa = min(config.graph.connectivity(n), n - 1)
    need = max((n + c) // 2 + 1, n - kappa + 1 + c)
    if need <= n:
        fixed = dataclasses.replace(config, min_survivors=max(need, config.t))
        assert not any(f.startswith(("2q", "q >=")) for f in sec1_failures(
            corrupt=c, num_clients=n, threshold=config.t, min_survivors=fixed.min_survivors,
            graph=config.graph))
    if (h + c) // 2 + 1 <= h:
        assert not any(f.startswith("2t") for f in sec1_failures(
            corrupt=c, num_clients=n, threshold=max(config.t, (h + c) // 2 + 1),
            min_survivors=n, graph=config.graph))


@settings(max_examples=300, deadline=None)
@given(sessions())
def test_the_policy_accepts_iff_the_conditions_hold(case: tuple[SecAggConfig, float, int]
                                                    ) -> None:
    """Active mode, every other rule of the policy relaxed as far as it goes:
    the node accepts exactly the setups for which [SEC-1] holds against
    ``c = floor(gamma * n)``; in semi-honest mode the rule never fires."""
    config, gamma, c = case
    assert math.floor((gamma + 1e-14) * config.num_clients) == c
    n = config.num_clients
    args: dict[str, Any] = dict(fl_round=2, num_clients=n, threshold=config.t,
                                client_ids=config.ids, vector_length=4, my_id=config.ids[0],
                                pinned_ids=config.ids, graph=config.graph,
                                min_survivors=config.min_survivors)
    policy = NodePolicy(mode=SecurityMode.ACTIVE, has_identity=True, graph_dropout=0.0,
                        graph_corrupt_fraction=gamma, graph_security_bits=1,
                        allow_unauthenticated_semi_honest=True)
    try:
        policy.check(mode=SecurityMode.ACTIVE, **args)
        accepted, rule = True, None
    except SetupRefusedError as err:
        accepted, rule = False, err.rule
    if rule is not None and rule is not PolicyRule.CORRUPT_CLIENTS:
        # another rule (fcp's graph bounds under gamma): it does not look at
        # min_survivors, and semi-honest mode refuses the same way
        with pytest.raises(SetupRefusedError) as again:
            policy.check(mode=SecurityMode.ACTIVE, **{**args, "min_survivors": n})
        assert again.value.rule is rule
        return
    assert accepted == _conditions(config, c)
    # semi-honest: the [SEC-1] rule never fires
    semi = dataclasses.replace(policy, mode=SecurityMode.SEMI_HONEST)
    try:
        semi.check(mode=SecurityMode.SEMI_HONEST, **args)
    except SetupRefusedError as err:
        assert err.rule is not PolicyRule.CORRUPT_CLIENTS


# -- [R3-1]: a client signs at most one list per session ---------------------------------


def test_a_client_signs_at_most_one_survivor_list() -> None:
    """SPEC.md [R3-1], step (1) of [SEC-1]'s proof: after an honest client
    signed list L1, a different list L2 is refused (the client aborts); asked
    again with exactly L1 it returns the same signature (an exact duplicate
    of a message it answered)."""
    config = SecAggConfig(num_clients=6, vector_length=4, threshold=5,
                          mode=SecurityMode.ACTIVE)
    fed = Federation(config)
    fed.advertise()
    fed.step()
    fed.step()  # R0..R2: the consistency requests are pending
    sid = fed.server.session_id
    assert sid is not None
    l1 = tuple(config.ids)
    l2 = l1[:-1]  # another list, still at least the quorum
    assert len(l2) >= config.signature_quorum
    client = fed.clients[1]
    sig1 = client.handle(ConsistencyRequest(1, sid, l1))
    assert isinstance(sig1, ConsistencySignature)
    signing.verify(fed.identities[1].public_key(), sig1.signature,
                   d.consistency_payload(sid, l1))
    again = client.handle(ConsistencyRequest(1, sid, l1))
    assert again == sig1 and client.state is ClientState.CONSISTENCY_SIGNED
    with pytest.raises(RemoteProtocolError) as info:
        client.handle(ConsistencyRequest(1, sid, l2))
    # the state machine: after signing, only an unmasking request is expected
    assert info.value.rule is Rule.WRONG_ROUND and info.value.peer == "server"
    assert client.state is ClientState.ABORTED
    # and after the refusal it signs nothing more, not even L1
    with pytest.raises(LocalProtocolError) as after:
        client.handle(ConsistencyRequest(1, sid, l1))
    assert after.value.rule is Rule.SESSION_FINISHED
    # another client asked L2 first signs L2 and then refuses L1
    other = fed.clients[2]
    assert isinstance(other.handle(ConsistencyRequest(2, sid, l2)), ConsistencySignature)
    with pytest.raises(RemoteProtocolError):
        other.handle(ConsistencyRequest(2, sid, l1))
    assert other.state is ClientState.ABORTED


# -- over Flower, in process: the run config reaches every node --------------------------


def test_run_config_min_survivors_is_read_strictly() -> None:
    pytest.importorskip("flwr", reason="flwr is not installed")
    from securefl.errors import ConfigurationError
    from securefl.flower.federation import _min_survivors
    from securefl.flower.workflow import SecureAggregationSettings

    assert _min_survivors({}) is None and _min_survivors({"min-survivors": 0}) is None
    assert _min_survivors({"min-survivors": 18}) == 18
    for bad in (-1, True, 1.5, "18"):
        with pytest.raises(ConfigurationError):
            _min_survivors({"min-survivors": bad})
        with pytest.raises(ConfigurationError):
            SecureAggregationSettings(min_survivors=bad, allow_unauthenticated_semi_honest=True)


@pytest.mark.parametrize(("t", "min_survivors", "completes"), [
    pytest.param(3, None, False, id="weak-refused-by-every-node"),
    pytest.param(4, 18, True, id="sec1-setup-completes"),
])
def test_a_flower_round_with_nodes_assuming_a_corrupt_client(
        tmp_path: Any, t: int, min_survivors: int | None, completes: bool) -> None:
    """20 in-process nodes with identity keys and node config
    ``securefl-graph-corrupt-fraction = 0.05``: the workflow's weak setup is
    refused by every node (the round aborts before any key is sent); with
    ``SecureAggregationSettings(threshold=4, min_survivors=18)`` every node
    builds the server's configuration from the setup (the same digest, or
    the session ids would differ) and the round gives the exact sum."""
    pytest.importorskip("flwr", reason="flwr is not installed")
    pytest.importorskip("torch")
    from flower_harness import InProcessGrid, node_configs, server_task_identity
    from flwr.app import ArrayRecord
    from test_flower_sparse_graph import CODEC as FLOWER_CODEC
    from test_flower_sparse_graph import RUN, _fixed_input_app, _vectors

    from securefl.errors import AbortError
    from securefl.flower import (
        SecureAggregationSettings,
        SecureAggregationWorkflow,
        load_pinned_keys,
        provision_identities,
    )
    from securefl.flower.setup import RECORD, Key

    paths = provision_identities(tmp_path / "keys", range(1, N + 1))
    pinned_path = str(tmp_path / "keys" / "pinned.json")
    configs = node_configs(N, **{"securefl-graph-corrupt-fraction": GAMMA})
    for i, node in enumerate(sorted(configs)):
        configs[node].update({"securefl-identity-key": str(paths[i + 1]),
                              "securefl-pinned-keys": pinned_path})
    vectors = _vectors(N)
    with server_task_identity():
        grid = InProcessGrid(_fixed_input_app(vectors), configs, dict(RUN))
        workflow = SecureAggregationWorkflow(SecureAggregationSettings(
            mode=SecurityMode.ACTIVE, graph=HararyGraph(K), threshold=t,
            min_survivors=min_survivors, pinned_keys=load_pinned_keys(pinned_path)),
            FLOWER_CODEC)
        arrays = ArrayRecord([np.zeros(3, dtype=np.float32)])
        if not completes:
            with pytest.raises(AbortError) as info:
                workflow.run_round(grid, 1, arrays)
            assert info.value.round is Round.ADVERTISE_KEYS
            advertise = [r for (_, s, _, r) in grid.replies if s == "advertise-keys"]
            assert len(advertise) == N
            for reply in advertise:
                record = reply.content.config_records[RECORD]
                assert record[Key.REFUSED] == PolicyRule.CORRUPT_CLIENTS.value
                assert "min_survivors >=" in str(record[Key.REASON])
            return
        result = workflow.run_round(grid, 1, arrays)
    session = workflow.last_session
    assert session is not None and session.min_survivors == 18
    assert session.signature_quorum == 18
    assert result.survivors == tuple(range(1, N + 1)) and not result.refused
    expected = np.zeros(FLOWER_CODEC.vector_length, dtype=np.uint64)
    for c in result.survivors:
        expected = (expected + vectors[c]) & np.uint64(session.modulus_mask)
    assert np.array_equal(result.total, expected)
