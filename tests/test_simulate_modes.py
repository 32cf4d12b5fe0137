"""Active mode and SecAgg+ (Harary) graphs through the simulator, the
library configuration and ``securefl simulate``: the secure sum of a run is
the sum the clients sent (the run matches a plain-summation run with the
same seeds), metrics.json records the mode, the graph and the threshold, and
configurations no session accepts are refused before any training."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from securefl.cli import main
from securefl.cli.simulate import GRAPHS, SECURITY_MODES
from securefl.errors import ConfigurationError
from securefl.federation.simulation import GraphKind, SimulationConfig, run_simulation
from securefl.privacy.ledger import LEDGER_FILENAME, load_ledger, read_ledger
from securefl.protocol import SecurityMode
from securefl.protocol.harary import HararyGraph
from securefl.protocol.params import find_graph_parameters
from securefl.schemas import load_schema

torch.set_num_threads(1)

jsonschema = pytest.importorskip("jsonschema")
_SCHEMA = load_schema("metrics")
CONFIG = jsonschema.Draft202012Validator({"$defs": _SCHEMA["$defs"], "$ref": "#/$defs/config"})
"""metrics.json's config block (the part of the schema this feature adds to)."""

BASE: dict[str, Any] = dict(num_clients=8, rounds=3, dropout=0.3, noise_multiplier=1.0,
                            seed=3, hidden=16, frac_bits=20, insecure_reproducible_noise=True)
"""Seed 3 drops clients in every round; only the active complete graph's
threshold (6 of 8) aborts a round, in plain summation too."""

MODES = {
    "active, complete graph": dict(security_mode="active"),
    "semi-honest, Harary graph from the finder": dict(graph="harary"),
    "active, Harary graph from the finder": dict(security_mode="active", graph="harary"),
    "active, Harary graph of degree 4": dict(security_mode="active", graph="harary",
                                             graph_degree=4),
}


@pytest.mark.parametrize("name", sorted(MODES))
def test_the_secure_sum_is_what_the_clients_sent(tmp_path: Path, name: str) -> None:
    config = SimulationConfig(**BASE, **MODES[name])
    plan = config.secagg_plan()
    secure = run_simulation(config, tmp_path / "secure")
    # plain summation with the same threshold and the same dropout schedule
    plain = run_simulation(SimulationConfig(**BASE, secure=False, threshold=plan.threshold),
                           tmp_path / "plain")
    assert [r.survivors for r in secure.rounds] == [r.survivors for r in plain.rounds]
    assert [r.aborted for r in secure.rounds] == [r.aborted for r in plain.rounds]
    completed = [r for r in secure.rounds if not r.aborted]
    assert len(completed) >= 2
    assert any(len(r.survivors) < BASE["num_clients"] for r in completed), \
        "the seed should drop someone"
    # each round's average is the decoded sum of what the survivors sent:
    # the models differ by the encoding's rounding (< 2^-20 a value) only
    with torch.no_grad():
        worst = max(float((a - b).abs().max()) for a, b in
                    zip(secure.model.parameters(), plain.model.parameters(), strict=True))
        scale = max(float(p.abs().max()) for p in secure.model.parameters())
    assert worst < 200 * 2.0**-20, worst
    assert scale > 1000 * worst
    rows = read_ledger(tmp_path / "secure" / LEDGER_FILENAME)
    assert all(r.secure_aggregation for r in rows)
    # metrics.json records what the sessions ran with, and follows its schema
    recorded = json.loads((tmp_path / "secure" / "metrics.json").read_text())["config"]
    assert not list(CONFIG.iter_errors(recorded))
    assert list(CONFIG.iter_errors({**recorded, "graph": "ring"}))
    assert recorded["security_mode"] == config.security_mode.value
    assert recorded["graph"] == config.graph.value
    assert recorded["graph_degree"] == config.graph_degree
    assert recorded["threshold_used"] == plan.threshold
    if config.graph is GraphKind.HARARY:
        assert recorded["graph_degree_used"] == plan.degree
        assert plan.graph == HararyGraph(plan.degree)
    else:
        assert recorded["graph_degree_used"] is None
    assert SimulationConfig.from_json({k: v for k, v in recorded.items()
                                       if k in config.to_json()}) == config


def test_the_finder_chooses_k_and_t_for_the_dropout_rate_and_the_mode() -> None:
    for mode, model in (("semi-honest", "semi-honest"), ("active", "semi-malicious")):
        config = SimulationConfig(num_clients=20, dropout=0.2, graph="harary",
                                  security_mode=mode)
        found = find_graph_parameters(20, 0.2, 0.0, model)
        plan = config.secagg_plan()
        assert not found.complete
        assert (plan.degree, plan.threshold, plan.graph) == (
            found.degree, found.threshold, found.graph)
    explicit = SimulationConfig(num_clients=8, graph="harary", graph_degree=4,
                                security_mode="active").secagg_plan()
    assert (explicit.degree, explicit.threshold) == (4, 3)  # a majority of the 5 holders
    assert SimulationConfig(num_clients=9, security_mode="active").secagg_plan().threshold == 7


def test_active_sparse_sessions_need_the_signature_quorum(tmp_path: Path) -> None:
    """Seed 1, round 2: 5 of 8 clients send their masked input and 4 sign the
    survivor list.  The threshold t=4 is met, but active mode over a degree-4
    Harary graph needs n - k + 1 = 5 signatures (SPEC.md [PARAM-7]), so the
    round aborts where plain summation (which models only the threshold)
    completes."""
    base = {**BASE, "seed": 1}
    secure = run_simulation(SimulationConfig(**base, security_mode="active", graph="harary"),
                            tmp_path / "secure")
    plain = run_simulation(SimulationConfig(**base, secure=False, threshold=4),
                           tmp_path / "plain")
    assert secure.metrics["config"]["threshold_used"] == 4
    assert not plain.rounds[1].aborted and len(plain.rounds[1].survivors) == 5
    assert secure.rounds[1].aborted
    assert "signature quorum ([PARAM-7]) is 5" in secure.rounds[1].abort_reason
    # the other rounds agree
    assert [r.survivors for r in secure.rounds][::2] == [r.survivors for r in plain.rounds][::2]


@pytest.mark.parametrize(("changes", "match"), [
    ({"security_mode": "malicious"}, "security_mode must be one of semi-honest, active"),
    ({"graph": "ring"}, "graph must be one of complete, harary"),
    ({"graph_degree": 4}, "needs graph harary"),
    ({"graph": "harary", "graph_degree": 3}, "must be an even int in 2..6"),
    ({"graph": "harary", "graph_degree": 8}, "for k >= n - 1 use graph complete"),
    ({"graph": "harary", "graph_degree": 0}, "must be an even int"),
    ({"graph": "harary", "graph_degree": 2, "num_clients": 3},
     "no Harary graph is sparser than the complete graph for 3 clients"),
    ({"security_mode": "active", "secure": False}, "drop --no-secure-aggregation"),
    ({"graph": "harary", "secure": False}, "drop --no-secure-aggregation"),
    ({"graph": "harary", "dropout": 1.0}, "give --graph-degree K"),
    ({"graph": "harary", "num_clients": 5, "security_mode": "active"},
     "found no sparse graph .* use --graph complete"),
    # active mode needs 2t > k + 1 (the server could otherwise isolate a client)
    ({"graph": "harary", "graph_degree": 4, "security_mode": "active", "threshold": 2},
     r"active mode needs threshold > 5/2"),
    ({"graph": "harary", "graph_degree": 2, "threshold": 4}, "exceeds degree"),
    ({"security_mode": "active", "threshold": 4}, r"active mode needs threshold > 8/2"),
])
def test_bad_values_are_refused_up_front(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        SimulationConfig(**{"num_clients": 8, "rounds": 1, **changes})


def test_user_level_noise_is_removable_in_active_mode(tmp_path: Path) -> None:
    """privacy both: active sessions use the removable noise plan, so the
    released variance stays within 1.001 V though clients drop; semi-honest
    sessions calibrate to the threshold (up to n/t V)."""
    config = SimulationConfig(num_clients=6, rounds=2, dropout=0.3, privacy="both", bits=24,
                              user_epsilon=50.0, target_epsilon=50.0, seed=0,
                              security_mode="active")
    result = run_simulation(config, tmp_path / "run")
    rows = [r for r in load_ledger(tmp_path / "run" / LEDGER_FILENAME).effective_user_level()
            if r.status == "released"]
    assert len(rows) == sum(not r.aborted for r in result.rounds) >= 1
    assert any(r.survivors < config.num_clients for r in rows), "the seed should drop someone"
    for row in rows:
        assert row.target_variance <= row.released_variance <= 1.001 * row.target_variance


def test_the_flags_reach_the_federation(tmp_path: Path) -> None:
    assert [m.value for m in SecurityMode] == SECURITY_MODES
    assert [g.value for g in GraphKind] == GRAPHS
    small = ["--clients", "8", "--rounds", "1", "--noise-multiplier", "1.0", "--seed", "0",
             "--no-progress"]
    out = tmp_path / "run"
    assert main(["simulate", *small, "--mode", "active", "--graph", "harary",
                 "--graph-degree", "4", "-o", str(out)]) == 0
    recorded = json.loads((out / "metrics.json").read_text())["config"]
    assert (recorded["security_mode"], recorded["graph"], recorded["graph_degree"],
            recorded["graph_degree_used"], recorded["threshold_used"]) == (
        "active", "harary", 4, 4, 3)
    out = tmp_path / "finder"
    assert main(["simulate", *small, "--mode", "active", "--graph", "harary",
                 "-o", str(out)]) == 0
    recorded = json.loads((out / "metrics.json").read_text())["config"]
    assert recorded["graph_degree"] is None and recorded["graph_degree_used"] == 4
    # refused before anything runs, naming the fix
    assert main(["simulate", *small, "--graph-degree", "4", "-o", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):
        main(["simulate", "--mode", "malicious"])


def test_federate_passes_the_mode_and_the_graph_on() -> None:
    import numpy as np
    from torch import nn

    import securefl

    rng = np.random.default_rng(0)
    clients = []
    for _ in range(6):
        x = rng.normal(size=(30, 4)).astype(np.float32)
        clients.append((x, (x[:, 0] > 0).astype(np.int64)))
    result = securefl.federate(nn.Linear(4, 2), clients, nn.CrossEntropyLoss(), rounds=1,
                               noise_multiplier=1.0, security_mode="active", graph="harary",
                               graph_degree=2)
    recorded = result.metrics["config"]
    assert (recorded["security_mode"], recorded["graph"], recorded["graph_degree_used"],
            recorded["threshold_used"]) == ("active", "harary", 2, 2)
    assert len(result.metrics["rounds"][0]["survivors"]) == 6  # dropout 0: everyone
    with pytest.raises(ConfigurationError, match="must be an even int"):
        securefl.federate(nn.Linear(4, 2), clients, nn.CrossEntropyLoss(), rounds=1,
                          graph="harary", graph_degree=5)
