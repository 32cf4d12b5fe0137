"""``securefl simulate --privacy both``: record-level DP-SGD and user-level
Skellam noise in the secure sum, both epsilons in the ledger, audited."""

from __future__ import annotations

from pathlib import Path

import pytest

from securefl.cli.audit import audit_run
from securefl.errors import ConfigurationError
from securefl.federation.simulation import SimulationConfig, preflight, run_simulation
from securefl.privacy.distributed import user_level_epsilon
from securefl.privacy.ledger import load_ledger


def test_both_layers_run_and_audit(tmp_path: Path) -> None:
    config = SimulationConfig(num_clients=4, rounds=2, dropout=0.25, privacy="both", bits=24,
                              user_epsilon=50.0, target_epsilon=50.0, seed=3)
    result = run_simulation(config, tmp_path / "run")
    chain = load_ledger(tmp_path / "run" / "ledger.jsonl")
    rows = chain.effective_user_level()
    completed = [r for r in result.rounds if not r.aborted]
    # one settled user-level row per round: released, or the in-flight charge kept
    assert [r.round for r in rows] == [r.round for r in result.rounds]
    assert [r.status == "released" for r in rows] == [not r.aborted for r in result.rounds]
    assert len(completed) >= 1
    last = [r for r in rows if r.status == "released"][-1]
    assert last.mechanism == "skellam" and last.sample_rate == 1.0 and last.bits == 24
    assert last.released_variance >= last.target_variance
    assert last.epsilon == pytest.approx(user_level_epsilon(last.history, config.delta))
    assert last.epsilon <= 50.0 and last.epsilon_budget == 50.0
    assert chain.committed  # the record-level rows are there too
    report = audit_run(tmp_path / "run")
    assert report["verified"], report["violations"]
    assert len(report["user_level"]) == len(rows)
    assert SimulationConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(("changes", "match"), [
    ({"privacy": "user-level", "noise_multiplier": 1.0}, "noise_multiplier has nothing"),
    ({"privacy": "user-level", "epsilon_budget": 3.0}, "epsilon_budget has nothing"),
    ({"privacy": "user-level", "secure": False}, "needs secure aggregation"),
    ({"privacy": "both", "secure": False}, "needs secure aggregation"),
    ({"privacy": "both", "weighting": "examples"}, "use --weighting uniform"),
    ({"privacy": "both", "user_clip": 0.0}, r"user_clip\) must be > 0"),
    ({"privacy": "both", "user_epsilon": -1.0}, "target epsilon must be > 0"),
    ({"privacy": "unknown"}, "privacy must be one of"),
])
def test_bad_user_level_configurations_are_refused(changes, match) -> None:
    with pytest.raises(ConfigurationError, match=match):
        SimulationConfig(num_clients=4, rounds=2, **changes)


def test_a_ring_too_small_is_refused_before_training() -> None:
    config = SimulationConfig(num_clients=10, rounds=5, privacy="both", bits=8,
                              user_epsilon=1.0)
    with pytest.raises(ConfigurationError, match=r"bits=8 are too few .* use bits >= \d+"):
        preflight(config)
