"""Sparse (Merkle) roster delivery over Flower, in process.

The session setup carries ``roster_delivery`` (bound into the configuration
digest, written only when ``"merkle"``), every node rebuilds the same
:class:`~securefl.protocol.SecAggConfig` from it, and the ServerApp sends
each node its own :class:`~securefl.protocol.messages.SparseKeyRoster`: a
round's sum is exactly the survivors' (the same as full delivery on the same
inputs), each node receives its ``k + 1`` proven entries in O(k log n)
bytes instead of the whole roster, a session whose registered nodes are too
few for the graph to be sparse falls back to full delivery, the ServerApp
takes ``roster-delivery`` from the run config and records it per round, a
resume with another delivery is refused, and the setup parser refuses any
other ``roster_delivery`` with a typed error.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
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
)
from flwr.app import ArrayRecord, Context, Message, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from securefl.encoding import FixedPointCodec  # noqa: E402
from securefl.errors import ConfigurationError  # noqa: E402
from securefl.federation.runstore import ResumeMismatchError  # noqa: E402
from securefl.flower import (  # noqa: E402
    SecureAggregationSettings,
    SecureAggregationWorkflow,
    securefl_mod,
)
from securefl.flower.federation import run_federation, simulation_config  # noqa: E402
from securefl.flower.mod import ENCODE_RECORD, ENCODED_RECORD, node_client_id  # noqa: E402
from securefl.flower.setup import RECORD, Key, SessionSetup, Stage  # noqa: E402
from securefl.protocol import Round, SecAggConfig, secure_sum  # noqa: E402
from securefl.protocol.graphs import CompleteGraph  # noqa: E402
from securefl.protocol.harary import HararyGraph  # noqa: E402
from securefl.protocol.messages import KeyRoster, SparseKeyRoster  # noqa: E402
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


class PayloadGrid(InProcessGrid):
    """An in-process grid that keeps, for every message the server sends,
    ``(node, stage, payload bytes)``: the bytes each node is sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.payloads: list[tuple[int, str, bytes]] = []

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        for msg in messages:
            record = msg.content.config_records[RECORD]
            payload = record.get(Key.PAYLOAD, b"")
            self.payloads.append((msg.metadata.dst_node_id, str(record[Key.STAGE]),
                                  bytes(payload)))  # type: ignore[arg-type]
        return super().push_messages(messages)

    def rosters(self) -> dict[int, bytes]:
        """Node -> the roster bytes it was sent (the share-keys stage's payload)."""
        return {node: raw for node, stage, raw in self.payloads
                if stage == Stage.SHARE_KEYS.value}


def _round(n: int, k: int, delivery: str, vectors: dict[int, np.ndarray],
           deaths: dict[int, tuple[int, str]] | None = None) -> tuple[Any, PayloadGrid]:
    # nodes whose operators assume no dropouts: their policy takes a ring of
    # degree 2 on 40 clients (the default 10% dropouts could cut it)
    grid = PayloadGrid(_fixed_input_app(vectors),
                       node_configs(n, **{"securefl-graph-dropout": 0.0}), dict(RUN),
                       deaths=deaths)
    workflow = SecureAggregationWorkflow(SecureAggregationSettings(
        graph=HararyGraph(k), roster_delivery=delivery), CODEC)
    result = workflow.run_round(grid, 1, ArrayRecord([np.zeros(3, dtype=np.float32)]))
    assert workflow.last_session is not None
    assert workflow.last_session.roster_delivery == result.roster_delivery
    return result, grid


def test_a_merkle_round_is_exact_and_each_node_gets_an_o_k_roster() -> None:
    """Forty nodes on ``HararyGraph(2)``, node 5 dies at the masked-input
    stage.  Merkle and full delivery give the same exact sum of the other
    39 inputs (as :func:`secure_sum`); with merkle each node was sent a
    :class:`SparseKeyRoster` addressed to it with its own and its 2
    neighbours' entries, far fewer bytes than the whole roster, within the
    O(k log n) bound of its entries and proofs."""
    n, k = 40, 2
    vectors = _vectors(n)
    deaths = {1004: (1, Stage.MASKED_INPUT_COLLECTION.value)}
    merkle, merkle_grid = _round(n, k, "merkle", vectors, deaths)
    full, full_grid = _round(n, k, "full", vectors, deaths)
    assert (merkle.roster_delivery, full.roster_delivery) == ("merkle", "full")
    survivors = tuple(c for c in range(1, n + 1) if c != 5)
    assert merkle.survivors == full.survivors == survivors
    expected = np.zeros(CODEC.vector_length, dtype=np.uint64)
    for c in survivors:
        expected = (expected + vectors[c]) & np.uint64(2**BITS - 1)
    assert np.array_equal(merkle.total, expected)
    assert np.array_equal(full.total, expected)
    reference = secure_sum(vectors, SecAggConfig(
        num_clients=n, vector_length=CODEC.vector_length, bits=BITS, threshold=2,
        graph=HararyGraph(k)), {5: Round.MASKED_INPUT_COLLECTION})
    assert np.array_equal(merkle.total, reference.total)

    # what the server sent each node in the roster round
    sparse, whole = merkle_grid.rosters(), full_grid.rosters()
    assert set(sparse) == set(whole) == set(range(1000, 1000 + n))
    full_size = len(whole[1000])
    assert all(len(raw) == full_size for raw in whole.values())  # one roster, n entries
    assert len(wire.decode(whole[1000], expect=KeyRoster).entries) == n
    entry_size = full_size / n
    proof_bytes = 32 * math.ceil(math.log2(n))
    bound = (k + 1) * (entry_size + proof_bytes + 16) + math.ceil(n / 8) + 128
    for node, raw in sparse.items():
        roster = wire.decode(raw, expect=SparseKeyRoster)
        assert roster.recipient == node - 999  # addressed to this node's client
        assert len(roster.entries) == k + 1  # itself and its k neighbours
        assert node - 999 in {e.entry.sender for e in roster.entries}
        assert len(raw) <= bound, (len(raw), bound)
        assert 4 * len(raw) < full_size, (len(raw), full_size)


def test_too_few_nodes_for_a_sparse_graph_fall_back_to_full_rosters() -> None:
    """Five registered nodes on ``HararyGraph(4)``: the graph is complete for
    them, so the session uses (and the result records) full delivery and
    every node gets the whole roster; the sum is still exact."""
    vectors = _vectors(5)
    result, grid = _round(5, 4, "merkle", vectors)
    assert result.roster_delivery == "full"
    for raw in grid.rosters().values():
        assert len(wire.decode(raw, expect=KeyRoster).entries) == 5
    expected = sum(vectors[c] for c in range(1, 6)) & np.uint64(2**BITS - 1)
    assert np.array_equal(result.total, expected)


def test_merkle_over_the_complete_graph_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="roster_delivery merkle needs a sparse"):
        SecureAggregationSettings(graph=CompleteGraph(), roster_delivery="merkle")
    with pytest.raises(ConfigurationError, match="roster_delivery must be one of"):
        SecureAggregationSettings(graph=HararyGraph(2), roster_delivery="sparse")


# -- the session setup -----------------------------------------------------------------


def _setup(delivery: str) -> SessionSetup:
    config = SecAggConfig(num_clients=8, vector_length=CODEC.vector_length, bits=BITS,
                          threshold=3, graph=HararyGraph(4), context=b"setup",
                          roster_delivery=delivery)
    return SessionSetup.create(1, config, CODEC)


def test_the_setup_carries_roster_delivery_into_the_digest() -> None:
    merkle, full = _setup("merkle"), _setup("full")
    assert SessionSetup.from_bytes(merkle.to_bytes()) == merkle
    assert SessionSetup.from_bytes(full.to_bytes()) == full
    assert json.loads(merkle.to_bytes())["roster_delivery"] == "merkle"
    # full delivery: the setup bytes are those of a setup from before the field
    assert "roster_delivery" not in json.loads(full.to_bytes())
    assert merkle.secagg_config().roster_delivery == "merkle"
    assert full.secagg_config().roster_delivery == "full"
    assert merkle.secagg_config().digest() != full.secagg_config().digest()


@pytest.mark.parametrize("value", ["full", "sparse", "Merkle", "merkle ", "", None, 1, True,
                                   ["merkle"], {"merkle": 1}, "m" * 5000])
def test_the_setup_parser_refuses_any_other_roster_delivery(value: Any) -> None:
    data = json.loads(_setup("merkle").to_bytes())
    with pytest.raises(ConfigurationError, match="roster_delivery"):
        SessionSetup.from_bytes(json.dumps({**data, "roster_delivery": value}).encode())


def test_the_setup_parser_refuses_merkle_over_a_graph_that_is_not_sparse() -> None:
    data = json.loads(_setup("merkle").to_bytes())
    for graph, threshold in (("complete", 5), ("harary:k=6", 4)):
        # the complete graph, and HararyGraph(6) over 7 clients (complete too)
        changed = {**data, "graph": graph, "threshold": threshold}
        if graph != "complete":
            changed.update(num_clients=7, client_ids=list(range(1, 8)))
        with pytest.raises(ConfigurationError, match="roster_delivery='merkle' needs a sparse"):
            SessionSetup.from_bytes(json.dumps(changed).encode())


# -- the ServerApp ----------------------------------------------------------------------


def _server_context(run_config: dict[str, Any], run_id: int = 7) -> Context:
    return Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(),
                   run_config=run_config)


def test_the_serverapp_takes_roster_delivery_from_the_run_config(tmp_path: Path) -> None:
    """``roster-delivery = "merkle"`` with ``graph = "harary"``: the sum is
    exact, every node was sent a sparse roster, metrics.json records the
    delivery of the run and of the round, and a resume with full delivery is
    refused naming ``roster_delivery``."""
    torch.set_num_threads(1)
    out = tmp_path / "flower"
    run_config = {"num-rounds": 1, "num-clients": 6, "seed": 3, "noise-multiplier": 1.1,
                  "hidden": 8, "batch-size": 32, "round-timeout": 30.0, "graph": "harary",
                  "graph-degree": 2, "roster-delivery": "merkle", "federation-id": "merkle",
                  "output-dir": str(out)}
    trained: dict[tuple[int, int], Trained] = {}
    grid = PayloadGrid(recording_app(trained), node_configs(6), run_config)
    run_federation(grid, _server_context(run_config))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["roster_delivery"] == "merkle"
    assert metrics["rounds"][0]["roster_delivery"] == "merkle"
    assert metrics["rounds"][0]["survivors"] == [1, 2, 3, 4, 5, 6]
    rosters = grid.rosters()
    assert len(rosters) == 6
    assert all(len(wire.decode(raw, expect=SparseKeyRoster).entries) == 3
               for raw in rosters.values())
    from securefl.federation.simulation import preflight

    _, codec = preflight(simulation_config(run_config))
    check_exact_sum(np.load(out / "sums.npz")["round_1"], codec,
                    [trained[999 + c, 1] for c in range(1, 7)])
    with pytest.raises(ResumeMismatchError) as info:
        run_federation(InProcessGrid(example_app(), node_configs(6), run_config),
                       _server_context({**run_config, "roster-delivery": "full",
                                        "resume": True}, 8))
    assert "roster_delivery" in info.value.keys
    # a bad value is refused before anything runs, naming the option
    with pytest.raises(ConfigurationError, match="roster_delivery"):
        simulation_config({**run_config, "roster-delivery": "sparse"})
    with pytest.raises(ConfigurationError, match="roster_delivery merkle"):
        simulation_config({**run_config, "graph": "complete", "graph-degree": 0})
