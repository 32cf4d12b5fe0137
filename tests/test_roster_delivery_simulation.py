"""Sparse (Merkle) roster delivery through the simulator, ``securefl
simulate`` and ``securefl.federate``.

With ``roster_delivery="merkle"`` over a Harary graph every session sends
each client a :class:`~securefl.protocol.messages.SparseKeyRoster` (its own
and its neighbours' entries, SPEC.md section 10.1a) instead of the whole
roster, and the sums are exactly those of full delivery: a run with the
same (insecurely seeded) randomness ends with bit-identical models and the
same survivors.  Each round's report says which delivery its session used;
a session whose graph is not sparse for its roster (``HararyGraph(k)`` over
``k + 1`` clients) falls back to full delivery.  Configurations where merkle
has no sparse graph to use are refused up front, naming the option; a resume
with another delivery is refused, and runs recorded before the option
existed (no ``roster_delivery`` key) keep resuming.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from securefl.cli import main
from securefl.cli.simulate import ROSTER_DELIVERIES
from securefl.encoding import EncodedUpdate, FixedPointCodec
from securefl.errors import ConfigurationError
from securefl.federation.optimizers import ServerOptimizerConfig
from securefl.federation.round import RoundReport
from securefl.federation.runstore import STORE_FILENAME, ResumeMismatchError, RunStore
from securefl.federation.server import Server
from securefl.federation.simulation import SimulationConfig, run_simulation
from securefl.protocol import Round
from securefl.protocol import config as protocol_config
from securefl.protocol.config import session_roster_delivery
from securefl.protocol.graphs import CompleteGraph
from securefl.protocol.harary import HararyGraph
from securefl.schemas import load_schema

torch.set_num_threads(1)

jsonschema = pytest.importorskip("jsonschema")
METRICS = jsonschema.Draft202012Validator(load_schema("metrics"))

BASE: dict[str, Any] = dict(num_clients=8, rounds=2, dropout=0.3, noise_multiplier=1.0,
                            seed=3, hidden=8, frac_bits=20, insecure_reproducible_noise=True,
                            graph="harary", graph_degree=4)
"""Seed 3 drops clients in both rounds; the noise, sampling and rounding are
seeded (INSECURE, tests only), so two runs train on the same updates."""


def test_merkle_runs_are_bit_identical_to_full_runs(tmp_path: Path) -> None:
    full = run_simulation(SimulationConfig(**BASE), tmp_path / "full")
    merkle = run_simulation(SimulationConfig(**BASE, roster_delivery="merkle"),
                            tmp_path / "merkle")
    assert [r.survivors for r in merkle.rounds] == [r.survivors for r in full.rounds]
    assert not any(r.aborted for r in merkle.rounds)
    assert any(len(r.survivors) < BASE["num_clients"] for r in merkle.rounds), \
        "the seed should drop someone"
    # exact sums of the same encoded updates: the very same global model
    for a, b in zip(merkle.model.parameters(), full.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert [r.roster_delivery for r in merkle.rounds] == ["merkle", "merkle"]
    assert [r.roster_delivery for r in full.rounds] == [None, None]
    metrics = json.loads((tmp_path / "merkle" / "metrics.json").read_text())
    assert not list(METRICS.iter_errors(metrics))
    assert metrics["config"]["roster_delivery"] == "merkle"
    assert [r["roster_delivery"] for r in metrics["rounds"]] == ["merkle", "merkle"]
    # full delivery writes exactly what it wrote before the option existed
    full_metrics = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert "roster_delivery" not in full_metrics["config"]
    assert all("roster_delivery" not in r for r in full_metrics["rounds"])
    # the round report round-trips through the run store
    store = RunStore.open(tmp_path / "merkle" / STORE_FILENAME)
    try:
        assert store.config["roster_delivery"] == "merkle"
    finally:
        store.close()
    report = merkle.rounds[0]
    assert RoundReport.from_record(report.to_record()).roster_delivery == "merkle"
    assert RoundReport.from_record(full.rounds[0].to_record()).roster_delivery is None


def _codec() -> FixedPointCodec:
    return FixedPointCodec(shapes=((1, 3),), bits=32, frac_bits=16, clip=4.0, num_clients=8,
                           max_weight=1)


def test_the_servers_sessions_use_sparse_rosters_and_sum_exactly() -> None:
    """``Server.aggregate`` (the simulator's round) over the same encoded
    updates and dropouts: merkle and full delivery give the same exact sum,
    and the merkle session really ran with sparse rosters."""
    codec = _codec()
    rng = np.random.default_rng(5)  # test data, not secrets
    updates: dict[int, EncodedUpdate | None] = {}
    for cid in range(1, 9):
        vector = rng.integers(0, 2**20, codec.vector_length, dtype=np.uint64)
        vector[-1] = 1  # the weight
        updates[cid] = EncodedUpdate(vector=vector, num_clipped=0, num_values=3, weight=1)
    updates[8] = None  # does not take part
    drops = {3: Round.MASKED_INPUT_COLLECTION}
    outcomes = {}
    for delivery in ROSTER_DELIVERIES:
        server = Server(torch.nn.Linear(3, 1, bias=False), codec,
                        ServerOptimizerConfig(), tuple(range(1, 9)), threshold=3,
                        graph=HararyGraph(4), roster_delivery=delivery)
        outcomes[delivery] = server.aggregate(1, updates, drops)
        assert server.last_session is not None
        assert server.last_session.roster_delivery == delivery
    survivors = (1, 2, 4, 5, 6, 7)
    expected = sum(updates[c].vector for c in survivors) % 2**32  # type: ignore[union-attr]
    decoded = codec.decode_sum(expected.astype(np.uint64)).average()
    for outcome in outcomes.values():
        assert outcome.survivors == survivors
        for got, want in zip(outcome.average, decoded, strict=True):
            assert np.array_equal(got, want)


def test_a_session_whose_graph_is_not_sparse_for_its_roster_uses_full_rosters() -> None:
    graph = HararyGraph(4)
    assert session_roster_delivery("merkle", graph, 6) == "merkle"
    # k + 1 = 5 clients: HararyGraph(4) is the complete graph
    assert session_roster_delivery("merkle", graph, 5) == "full"
    assert session_roster_delivery("full", graph, 100) == "full"
    assert session_roster_delivery("merkle", CompleteGraph(), 100) == "full"
    with pytest.raises(ConfigurationError, match="roster_delivery"):
        session_roster_delivery("sparse", graph, 6)
    plan = SimulationConfig(num_clients=8, graph="harary", graph_degree=4,
                            roster_delivery="merkle").secagg_plan()
    assert plan.roster_delivery == "merkle"
    assert (plan.session_roster_delivery(8), plan.session_roster_delivery(5)) == (
        "merkle", "full")
    assert tuple(ROSTER_DELIVERIES) == protocol_config.ROSTER_DELIVERIES


@pytest.mark.parametrize(("changes", "match"), [
    ({"roster_delivery": "sparse"}, "roster_delivery must be one of full, merkle"),
    ({"roster_delivery": None}, "roster_delivery must be one of"),
    ({"roster_delivery": "merkle"}, "roster_delivery merkle .* add --graph harary"),
    ({"roster_delivery": "merkle", "secure": False}, "drop --no-secure-aggregation"),
    # client sampling runs every session on the complete graph
    ({"roster_delivery": "merkle", "privacy": "both", "client_sample_rate": 0.5,
      "num_clients": 300, "bits": 16}, "roster_delivery merkle needs a sparse graph"),
])
def test_merkle_without_a_sparse_graph_is_refused_naming_the_option(
        changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        SimulationConfig(**{"num_clients": 8, **changes})


def test_the_server_refuses_merkle_over_the_complete_graph() -> None:
    with pytest.raises(ConfigurationError, match="roster_delivery merkle needs a sparse"):
        Server(torch.nn.Linear(3, 1, bias=False), _codec(), ServerOptimizerConfig(),
               tuple(range(1, 9)), roster_delivery="merkle")


def test_resume_refuses_another_roster_delivery_and_old_runs_resume(tmp_path: Path) -> None:
    config = SimulationConfig(**{**BASE, "rounds": 1}, roster_delivery="merkle")
    run_simulation(config, tmp_path / "merkle")
    with pytest.raises(ResumeMismatchError) as info:
        run_simulation(replace(config, roster_delivery="full"), tmp_path / "merkle",
                       resume=True)
    assert info.value.keys == ("roster_delivery",)
    assert "roster_delivery: run 'merkle', given None" in str(info.value)
    run_simulation(config, tmp_path / "merkle", resume=True)  # its own configuration
    # a full-delivery run stores no roster_delivery key, as every run recorded
    # before the option existed: it resumes as full, and refuses merkle
    full = replace(config, roster_delivery="full")
    run_simulation(full, tmp_path / "full")
    store = RunStore.open(tmp_path / "full" / STORE_FILENAME)
    try:
        assert "roster_delivery" not in store.config
    finally:
        store.close()
    assert SimulationConfig.from_json(full.to_json()).roster_delivery == "full"
    run_simulation(full, tmp_path / "full", resume=True)
    with pytest.raises(ResumeMismatchError) as info:
        run_simulation(config, tmp_path / "full", resume=True)
    assert info.value.keys == ("roster_delivery",)


def test_securefl_simulate_roster_delivery(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    small = ["--clients", "8", "--rounds", "1", "--noise-multiplier", "1.0", "--seed", "0",
             "--no-progress", "--graph", "harary", "--graph-degree", "4"]
    out = tmp_path / "run"
    assert main(["simulate", *small, "--roster-delivery", "merkle", "-o", str(out)]) == 0
    assert "Harary graph k=4, Merkle rosters" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert not list(METRICS.iter_errors(metrics))
    assert metrics["config"]["roster_delivery"] == "merkle"
    assert metrics["rounds"][0]["roster_delivery"] == "merkle"
    # resume: the run's own delivery, given or left out, is accepted; another refused
    assert main(["simulate", "--resume", str(out), "--roster-delivery", "full"]) == 2
    assert "roster_delivery: run 'merkle', given 'full'" in capsys.readouterr().err
    assert main(["simulate", "--resume", str(out), "--roster-delivery", "merkle",
                 "--no-progress"]) == 0
    # full is the default, and an explicit --roster-delivery full resumes a full run
    out = tmp_path / "full"
    assert main(["simulate", *small, "-o", str(out)]) == 0
    assert main(["simulate", "--resume", str(out), "--roster-delivery", "full",
                 "--no-progress"]) == 0
    # refused before anything runs, naming the option
    capsys.readouterr()
    assert main(["simulate", "--clients", "8", "--rounds", "1", "--roster-delivery", "merkle",
                 "-o", str(tmp_path / "x")]) == 2
    assert "roster_delivery merkle" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):
        main(["simulate", "--roster-delivery", "sparse"])


def test_federate_passes_roster_delivery_on() -> None:
    from torch import nn

    import securefl

    rng = np.random.default_rng(0)  # test data
    clients = []
    for _ in range(6):
        x = rng.normal(size=(30, 4)).astype(np.float32)
        clients.append((x, (x[:, 0] > 0).astype(np.int64)))
    result = securefl.federate(nn.Linear(4, 2), clients, nn.CrossEntropyLoss(), rounds=1,
                               noise_multiplier=1.0, graph="harary", graph_degree=2,
                               roster_delivery="merkle")
    assert result.metrics["config"]["roster_delivery"] == "merkle"
    assert result.metrics["rounds"][0]["roster_delivery"] == "merkle"
    assert len(result.metrics["rounds"][0]["survivors"]) == 6
    with pytest.raises(ConfigurationError, match="roster_delivery merkle"):
        securefl.federate(nn.Linear(4, 2), clients, nn.CrossEntropyLoss(), rounds=1,
                          roster_delivery="merkle")


def test_a_user_level_session_over_k_plus_one_updates_falls_back_to_full_rosters() -> None:
    """The simulator's user-level sum runs its session over the encoded
    updates it got: over 8 the degree-4 Harary graph is sparse (merkle);
    over 5 = k + 1 it is the complete graph, where a sparse roster is
    refused, so the session runs with full rosters and still sums."""
    from securefl.federation.simulation import _user_level_sum, preflight, user_level_plan

    config = SimulationConfig(num_clients=8, rounds=1, privacy="user-level", graph="harary",
                              graph_degree=4, roster_delivery="merkle", hidden=4,
                              dropout=0.0, user_epsilon=50.0, bits=16)
    model, codec = preflight(config)
    plan = user_level_plan(config, model)
    assert plan is not None
    secagg = config.secagg_plan()
    server = Server(model, codec, ServerOptimizerConfig(), tuple(range(1, 9)),
                    threshold=secagg.threshold, graph=secagg.graph, roster_delivery="merkle")
    size = sum(int(p.numel()) for p in model.parameters())
    seed = bytes(32)  # the public rotation seed (public by design)
    for count, delivery in ((8, "merkle"), (5, "full")):
        vectors = {c: plan.codec.encode(np.zeros(size), seed).vector
                   for c in range(1, count + 1)}
        outcome, _ = _user_level_sum(config, server, plan, vectors, {}, seed, 8)
        assert server.last_session is not None
        assert (server.last_session.num_clients, server.last_session.roster_delivery) == (
            count, delivery)
        assert outcome.survivors == tuple(range(1, count + 1))
