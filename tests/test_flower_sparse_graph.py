"""SecAgg+ sparse graphs over Flower, in process.

The session setup carries the graph (``harary:k=<k>``, the text the
configuration digest binds); every node builds the graph itself and checks
it against its own policy.  A round over ``HararyGraph(k)`` gives exactly
the survivors' sum (the same as :func:`secure_sum` on the same inputs and
dropouts), each node deals shares to its ``k`` neighbours only, a whole
federation with ``graph = "harary"`` accounts as the simulator does, a
server announcing a graph weaker than a node's policy gets a refusal naming
the rule (the attack: before, a node had no rule on graphs), and a resumed
run refuses another graph.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr", reason="flwr is not installed (pip install 'securefl[flower]')")
torch = pytest.importorskip("torch")

from flower_harness import (  # noqa: E402
    InProcessGrid,
    Trained,
    check_exact_sum,
    example_app,
    node_configs,
    recording_app,
    server_task_identity,
    simulate_reference,
)
from flwr.app import (  # noqa: E402
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    RecordDict,
)
from flwr.clientapp import ClientApp  # noqa: E402

from securefl.encoding import FixedPointCodec  # noqa: E402
from securefl.errors import AbortError, ConfigurationError  # noqa: E402
from securefl.federation.runstore import ResumeMismatchError  # noqa: E402
from securefl.flower import (  # noqa: E402
    SecureAggregationSettings,
    SecureAggregationWorkflow,
    load_pinned_keys,
    provision_identities,
    securefl_mod,
)
from securefl.flower.federation import _check_resumable, run_federation  # noqa: E402
from securefl.flower.mod import ENCODE_RECORD, ENCODED_RECORD, node_client_id  # noqa: E402
from securefl.flower.policy import NodePolicy, PolicyRule, SetupRefusedError  # noqa: E402
from securefl.flower.setup import (  # noqa: E402
    RECORD,
    STATE_RECORD,
    Key,
    SessionSetup,
    Stage,
    parse_graph,
)
from securefl.privacy.ledger import read_ledger  # noqa: E402
from securefl.protocol import Round, SecAggConfig, SecurityMode, secure_sum  # noqa: E402
from securefl.protocol.graphs import CompleteGraph, NeighbourGraph  # noqa: E402
from securefl.protocol.harary import HararyGraph, ring_order  # noqa: E402
from securefl.protocol.messages import EncryptedShares  # noqa: E402
from securefl.protocol.params import ServerModel, find_graph_parameters  # noqa: E402
from securefl.wire import codec as wire  # noqa: E402

BITS = 32
CODEC = FixedPointCodec(shapes=((3, 2), (5,)), bits=BITS, frac_bits=16, clip=4.0,
                        num_clients=64, max_weight=1000)
RUN = {"num-rounds": 1, "num-clients": 6, "seed": 3, "noise-multiplier": 1.1, "hidden": 8,
       "batch-size": 32, "round-timeout": 30.0}


@pytest.fixture(autouse=True)
def _server_identity():
    with server_task_identity():
        yield


def _vectors(n: int, seed: int = 11) -> dict[int, np.ndarray]:
    gen = np.random.default_rng(seed)  # test data, not secrets
    return {c: gen.integers(0, 2**BITS, CODEC.vector_length, dtype=np.uint64)
            for c in range(1, n + 1)}


def _fixed_input_app(vectors: dict[int, np.ndarray]) -> ClientApp:
    """securefl_mod in front of a ``train`` that returns a fixed encoded
    vector per client (so that the exact sum is known)."""
    app = ClientApp(mods=[securefl_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        raw = msg.content.config_records[ENCODE_RECORD][Key.SETUP]
        setup = SessionSetup.from_bytes(bytes(raw))  # type: ignore[arg-type]
        vector = vectors[node_client_id(context)][:setup.codec().vector_length]
        return Message(RecordDict({ENCODED_RECORD: ArrayRecord([vector])}), reply_to=msg)

    return app


def _announce(node_config: dict[str, Any], setup: SessionSetup) -> tuple[Message, InProcessGrid]:
    """The server announces ``setup`` to one node (node id 1000)."""
    grid = InProcessGrid(example_app(), {1000: node_config}, dict(RUN))
    msg = Message(RecordDict({RECORD: ConfigRecord({
        Key.STAGE: Stage.ADVERTISE_KEYS.value, Key.FL_ROUND: setup.fl_round,
        Key.SETUP: setup.to_bytes()})}),
        dst_node_id=1000, message_type=MessageType.TRAIN, group_id="1")
    (reply,) = grid.pull_messages(grid.push_messages([msg]))
    return reply, grid


def _sparse_setup(n: int, k: int, t: int, mode: SecurityMode = SecurityMode.SEMI_HONEST
                  ) -> SessionSetup:
    config = SecAggConfig(num_clients=n, vector_length=CODEC.vector_length, bits=BITS,
                          threshold=t, mode=mode, graph=HararyGraph(k), context=b"adversary")
    return SessionSetup.create(1, config, CODEC)


def _refused_rule(reply: Message, grid: InProcessGrid) -> str:
    assert not reply.has_error(), reply.error.reason
    record = reply.content.config_records[RECORD]
    assert set(record) == {Key.REFUSED, Key.REASON}  # no key, nothing of the session
    assert STATE_RECORD not in grid.state_of(1000).config_records
    return str(record[Key.REFUSED])


# -- the setup carries the graph --------------------------------------------------------


def test_the_setup_carries_the_graph_into_the_digest() -> None:
    setup = _sparse_setup(8, 4, 3)
    again = SessionSetup.from_bytes(setup.to_bytes())
    assert again == setup and again.graph == "harary:k=4"
    config = again.secagg_config()
    assert config.graph == HararyGraph(4)
    # the digest every signature and the session id bind differs per graph
    other = SecAggConfig(num_clients=8, vector_length=CODEC.vector_length, bits=BITS,
                         threshold=3, graph=HararyGraph(2), context=b"adversary")
    complete = SecAggConfig(num_clients=8, vector_length=CODEC.vector_length, bits=BITS,
                            threshold=3, context=b"adversary")
    assert len({config.digest(), other.digest(), complete.digest()}) == 3
    assert parse_graph("complete") == CompleteGraph()
    for bad in ("harary:k=3", "harary:k=02", "harary:k=-2", "Harary:k=2", "harary:k=2 ",
                "harary", "star", "", "harary:k=" + "9" * 11):
        with pytest.raises(ConfigurationError):
            parse_graph(bad)


def test_a_graph_flower_cannot_carry_is_refused_by_the_server() -> None:
    class Star(NeighbourGraph):
        def neighbours(self, roster: Any, session_id: bytes) -> Any:
            hub = roster[0]
            return {c: (frozenset(roster) - {hub} if c == hub else frozenset({hub}))
                    for c in roster}

        def describe(self) -> str:
            return "star"

    config = SecAggConfig(num_clients=4, vector_length=CODEC.vector_length, bits=BITS,
                          threshold=3, graph=Star())
    with pytest.raises(ConfigurationError, match="carries CompleteGraph and HararyGraph"):
        SessionSetup.create(1, config, CODEC)


# -- whole rounds over a sparse graph -----------------------------------------------------


@pytest.mark.parametrize("mode", [SecurityMode.SEMI_HONEST, SecurityMode.ACTIVE])
def test_a_sparse_round_is_exact_and_equals_secure_sum(mode: SecurityMode,
                                                       tmp_path: Path) -> None:
    """Six nodes on ``HararyGraph(2)``; node 4 dies at the masked-input
    stage.  The sum is exactly the other five inputs mod 2^bits, as
    :func:`secure_sum` computes it over the same graph and dropout, and each
    node dealt encrypted shares to exactly its 2 neighbours."""
    n, k = 6, 2
    vectors = _vectors(n)
    configs = node_configs(n)
    pinned = None
    if mode is SecurityMode.ACTIVE:
        paths = provision_identities(tmp_path / "keys", range(1, n + 1))
        pinned_path = str(tmp_path / "keys" / "pinned.json")
        pinned = load_pinned_keys(pinned_path)
        for i, node in enumerate(sorted(configs)):
            configs[node].update({"securefl-identity-key": str(paths[i + 1]),
                                  "securefl-pinned-keys": pinned_path})
    grid = InProcessGrid(_fixed_input_app(vectors), configs, dict(RUN),
                         deaths={1003: (1, Stage.MASKED_INPUT_COLLECTION.value)})
    workflow = SecureAggregationWorkflow(
        SecureAggregationSettings(mode=mode, graph=HararyGraph(k), pinned_keys=pinned), CODEC)
    result = workflow.run_round(grid, 1, ArrayRecord([np.zeros(3, dtype=np.float32)]))
    survivors = (1, 2, 3, 5, 6)
    assert result.survivors == survivors
    expected = np.zeros(CODEC.vector_length, dtype=np.uint64)
    for c in survivors:
        expected = (expected + vectors[c]) & np.uint64(2**BITS - 1)
    assert np.array_equal(result.total, expected)
    reference = secure_sum(vectors, SecAggConfig(
        num_clients=n, vector_length=CODEC.vector_length, bits=BITS, threshold=2, mode=mode,
        graph=HararyGraph(k)), {4: Round.MASKED_INPUT_COLLECTION})
    assert np.array_equal(result.total, reference.total)
    shares = [wire.decode(bytes(r.content.config_records[RECORD][Key.PAYLOAD]),
                          expect=EncryptedShares)
              for (_, stage, _, r) in grid.replies if stage == Stage.SHARE_KEYS.value]
    assert len(shares) == n
    assert all(len(s.ciphertexts) == k for s in shares)  # O(k), not n - 1 = 5


def test_too_few_nodes_for_the_graph_abort_before_anything_is_sent() -> None:
    grid = InProcessGrid(_fixed_input_app(_vectors(4)), node_configs(4), dict(RUN))
    workflow = SecureAggregationWorkflow(SecureAggregationSettings(graph=HararyGraph(4)), CODEC)
    with pytest.raises(AbortError) as info:
        workflow.run_round(grid, 1, ArrayRecord([np.zeros(3, dtype=np.float32)]))
    assert info.value.round is Round.ADVERTISE_KEYS and info.value.needed == 5
    assert [s for (_, s, _) in grid.sent if s != Stage.REGISTER.value] == []


# -- the node's policy on graphs ----------------------------------------------------------

_OPTED_IN = {"partition-id": 0, "securefl-allow-unauthenticated-semi-honest": True}


@pytest.mark.parametrize(("node_config", "setup", "rule"), [
    pytest.param({**_OPTED_IN, "securefl-allow-sparse-graph": False},
                 lambda: _sparse_setup(8, 4, 3), PolicyRule.SPARSE_GRAPH, id="sparse-refused"),
    pytest.param({**_OPTED_IN, "securefl-min-graph-degree": 6},
                 lambda: _sparse_setup(10, 4, 3), PolicyRule.GRAPH_DEGREE, id="degree"),
    # 40 clients, k = 2: the node's default 10% dropouts (4 clients) may cut the ring
    pytest.param(_OPTED_IN, lambda: _sparse_setup(40, 2, 2), PolicyRule.GRAPH_CONNECTIVITY,
                 id="may-disconnect"),
    # 20 clients, 5 corrupt assumed: 5 of a client's 6 neighbours can be corrupt
    pytest.param({**_OPTED_IN, "securefl-graph-corrupt-fraction": 0.25,
                  "securefl-graph-dropout": 0.0},
                 lambda: _sparse_setup(20, 6, 5), PolicyRule.GRAPH_THRESHOLD,
                 id="threshold-below-corrupt-neighbours"),
    # the threshold fraction applies to the k + 1 holders of a client's shares
    pytest.param(_OPTED_IN, lambda: _sparse_setup(10, 4, 2), PolicyRule.MIN_THRESHOLD,
                 id="threshold-below-half-the-holders"),
])
def test_a_weak_graph_is_refused_by_rule(node_config: dict[str, Any], setup: Any,
                                         rule: PolicyRule) -> None:
    """The attack: the server announces a graph weaker than the node's
    policy.  The node refuses before it generates a key."""
    reply, grid = _announce(node_config, setup())
    assert _refused_rule(reply, grid) == rule.value


def test_a_graph_within_the_policy_is_accepted_and_the_same_weak_one_is_not() -> None:
    # fcp's finder for 40 clients and 10% dropouts: its graph passes the
    # defaults; its semi-honest threshold (2 of 7 holders) is below the node's
    # majority-of-holders rule until the server raises it
    found = find_graph_parameters(40, 0.1, 0.0, ServerModel.SEMI_HONEST)
    assert not found.complete and found.degree > 2
    majority = (found.degree + 1) // 2 + 1
    assert found.threshold < majority
    reply, grid = _announce(_OPTED_IN, _sparse_setup(40, found.degree, found.threshold))
    assert _refused_rule(reply, grid) == PolicyRule.MIN_THRESHOLD.value
    reply, grid = _announce(_OPTED_IN, _sparse_setup(40, found.degree, majority))
    assert Key.REFUSED not in reply.content.config_records[RECORD]
    assert STATE_RECORD in grid.state_of(1000).config_records
    # against a semi-malicious server (active mode) the finder's pick passes as it is
    active = find_graph_parameters(40, 0.1, 0.0, ServerModel.SEMI_MALICIOUS)
    NodePolicy(has_identity=True).check(
        fl_round=1, mode=SecurityMode.ACTIVE, num_clients=40, threshold=active.threshold,
        client_ids=range(1, 41), vector_length=10, my_id=1, pinned_ids=range(1, 41),
        graph=active.graph)
    # the weak graph really can be cut by 4 removed clients: two pieces
    graph, sid = HararyGraph(2), b"\x01" * 32
    roster = tuple(range(1, 41))
    order = ring_order(roster, sid)
    removed = {order[0], order[1], order[20], order[21]}
    pieces = _components(graph.neighbours(roster, sid), removed)
    assert len(pieces) == 2


def _components(adjacency: Any, removed: set[int]) -> list[set[int]]:
    left = set(adjacency) - removed
    pieces = []
    while left:
        stack, piece = [left.pop()], set()
        while stack:
            c = stack.pop()
            piece.add(c)
            for d in adjacency[c]:
                if d in left:
                    left.discard(d)
                    stack.append(d)
        pieces.append(piece)
    return pieces


def test_a_whole_round_over_a_weak_graph_gets_refusals_and_no_key() -> None:
    """Eight nodes whose operators assume 30% dropouts; the server runs
    ``HararyGraph(2)``: every node refuses naming the rule, none advertises
    a key, the round aborts at ADVERTISE_KEYS."""
    configs = node_configs(8, **{"securefl-graph-dropout": 0.3})
    grid = InProcessGrid(_fixed_input_app(_vectors(8)), configs, dict(RUN))
    workflow = SecureAggregationWorkflow(SecureAggregationSettings(graph=HararyGraph(2)), CODEC)
    with pytest.raises(AbortError) as info:
        workflow.run_round(grid, 1, ArrayRecord([np.zeros(3, dtype=np.float32)]))
    assert info.value.round is Round.ADVERTISE_KEYS
    advertise = [r for (_, s, _, r) in grid.replies if s == Stage.ADVERTISE_KEYS.value]
    assert len(advertise) == 8
    for reply in advertise:
        record = reply.content.config_records[RECORD]
        assert record[Key.REFUSED] == PolicyRule.GRAPH_CONNECTIVITY.value
        assert Key.PAYLOAD not in record


def test_active_mode_refuses_a_graph_stating_no_connectivity() -> None:
    class Unstated(HararyGraph):
        def connectivity(self, num_clients: int) -> int:
            return 0

    with pytest.raises(SetupRefusedError) as info:
        NodePolicy(has_identity=True).check(
            fl_round=3, mode=SecurityMode.ACTIVE, num_clients=8, threshold=3,
            client_ids=range(1, 9), vector_length=10, my_id=1, pinned_ids=range(1, 9),
            graph=Unstated(4))
    assert info.value.rule is PolicyRule.GRAPH_CONNECTIVITY and info.value.fl_round == 3
    assert "graph-connectivity-below-policy" in str(info.value)


def test_the_graph_policy_reads_only_the_nodes_own_config() -> None:
    policy = NodePolicy.from_node_config({}, has_identity=False)
    assert (policy.allow_sparse_graph, policy.min_graph_degree, policy.graph_dropout,
            policy.graph_corrupt_fraction, policy.graph_security_bits) == (True, 2, 0.1, 0.0, 40)
    for bad in ({"securefl-allow-sparse-graph": "no"}, {"securefl-min-graph-degree": 1},
                {"securefl-graph-dropout": 1.0}, {"securefl-graph-dropout": "x"},
                {"securefl-graph-corrupt-fraction": -0.1},
                {"securefl-graph-security-bits": 0}):
        with pytest.raises(ConfigurationError):
            NodePolicy.from_node_config(bad, has_identity=False)
    # a lax graph policy in the run config (the server's) changes nothing
    grid = InProcessGrid(example_app(), {1000: _OPTED_IN},
                         {**RUN, "securefl-graph-dropout": 0.0})
    msg = Message(RecordDict({RECORD: ConfigRecord({
        Key.STAGE: Stage.ADVERTISE_KEYS.value, Key.FL_ROUND: 1,
        Key.SETUP: _sparse_setup(40, 2, 2).to_bytes()})}),
        dst_node_id=1000, message_type=MessageType.TRAIN, group_id="1")
    (reply,) = grid.pull_messages(grid.push_messages([msg]))
    assert _refused_rule(reply, grid) == PolicyRule.GRAPH_CONNECTIVITY.value


# -- the ServerApp: run config graph, the simulator as reference, resume ------------------


def _server_context(run_config: dict[str, Any], run_id: int = 7) -> Context:
    return Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(),
                   run_config=run_config)


def test_federation_over_the_finders_graph_is_exact_as_the_simulator_and_resumes_only_on_it(
        tmp_path: Path) -> None:
    """``graph = "harary"`` without a degree: the ServerApp takes the
    degree and threshold from ``SimulationConfig.secagg_plan`` (fcp's
    finder), as ``securefl simulate --graph harary`` does; every round's sum
    is exact, the accounting equals the simulator's on the same config, and
    a resume with another graph is refused naming it."""
    torch.set_num_threads(1)
    out = tmp_path / "flower"
    run_config = {"num-rounds": 2, "num-clients": 5, "seed": 3, "noise-multiplier": 1.1,
                  "hidden": 8, "batch-size": 32, "round-timeout": 30.0, "graph": "harary",
                  "federation-id": "sparse", "output-dir": str(out)}
    trained: dict[tuple[int, int], Trained] = {}
    grid = InProcessGrid(recording_app(trained), node_configs(5), run_config)
    run_federation(grid, _server_context(run_config))
    found = find_graph_parameters(5, 0.0, 0.0, ServerModel.SEMI_HONEST)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["graph"] == "harary"
    assert metrics["config"]["graph_degree_used"] == found.degree
    assert metrics["config"]["threshold_used"] == found.threshold
    assert [r["survivors"] for r in metrics["rounds"]] == [[1, 2, 3, 4, 5]] * 2
    # the sessions ran over the graph: 2 shares dealt per node, not 4
    shares = [wire.decode(bytes(r.content.config_records[RECORD][Key.PAYLOAD]),
                          expect=EncryptedShares)
              for (_, stage, _, r) in grid.replies if stage == Stage.SHARE_KEYS.value]
    assert len(shares) == 10 and all(len(s.ciphertexts) == found.degree for s in shares)
    sums = np.load(out / "sums.npz")
    from securefl.federation.simulation import preflight
    from securefl.flower.federation import simulation_config

    _, codec = preflight(simulation_config(run_config))
    for r in (1, 2):
        check_exact_sum(sums[f"round_{r}"], codec, [trained[999 + c, r] for c in range(1, 6)])
    ref = simulate_reference(run_config, [{}, {}], tmp_path / "sim")
    rows = {(r.round, r.client_id): r for r in read_ledger(out / "ledger.jsonl")}
    sim_rows = {(r.round, r.client_id): r for r in ref.ledger}
    for cid in range(1, 6):
        assert rows[2, cid].history == sim_rows[2, cid].history
        assert rows[2, cid].epsilon_rdp == pytest.approx(sim_rows[2, cid].epsilon_rdp)

    # resume with another graph, given or implied: refused, naming it
    for changed, key in (({"graph": "complete"}, "graph"),
                         ({"graph-degree": found.degree}, "graph_degree")):
        with pytest.raises(ResumeMismatchError) as info:
            run_federation(InProcessGrid(example_app(), node_configs(5), run_config),
                           _server_context({**run_config, **changed, "resume": True}, 8))
        assert key in info.value.keys


def test_resume_refuses_a_run_whose_sessions_used_another_graph(tmp_path: Path) -> None:
    """The sessions' graph is checked on its own too (as recorded in the
    run's metrics header), so that a plan that changed under an identical
    configuration is refused as well."""
    check: Any = _check_resumable
    recorder = SimpleNamespace(
        out=tmp_path, driver_state={"federation_id": "f"},
        store=SimpleNamespace(metrics_header={"config": {"security_mode": "semi-honest",
                                                         "graph_degree_used": 4}}))
    with pytest.raises(ResumeMismatchError) as info:
        check(recorder, SecurityMode.SEMI_HONEST, "f", 2)
    assert info.value.keys == ("graph",) and "harary:k=4" in str(info.value)
    with pytest.raises(ResumeMismatchError):
        check(recorder, SecurityMode.SEMI_HONEST, "f", None)
    check(recorder, SecurityMode.SEMI_HONEST, "f", 4)
    # a run from before sparse graphs over Flower recorded no degree: complete
    recorder.store.metrics_header["config"].pop("graph_degree_used")
    check(recorder, SecurityMode.SEMI_HONEST, "f", None)
    with pytest.raises(ResumeMismatchError):
        check(recorder, SecurityMode.SEMI_HONEST, "f", 2)
