"""The user-level ledger's adjacency, delta and colluder fields under the audit:
each test forges a ledger the way an attacker (or an old writer) would and
checks that ``securefl audit`` refuses it, and that the honest ledger verifies."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from securefl.cli.audit import audit_run
from securefl.errors import ConfigurationError
from securefl.privacy.distributed import (
    colluder_epsilon,
    plan_user_level,
    user_level_entry,
    user_level_epsilon,
)
from securefl.privacy.ledger import USER_LEVEL_DELTA_MAX, PrivacyLedger, UserLevelEntry


@pytest.fixture(scope="module")
def plan():
    return plan_user_level(num_values=100, clip=1.0, bits=16, cohort=10, q=1.0, rounds=3,
                           target_epsilon=4.0, delta=1e-5)


def _rows(plan, rounds: int = 3, **kwargs) -> list[UserLevelEntry]:
    rows: list[UserLevelEntry] = []
    for number in range(1, rounds + 1):
        rows.append(user_level_entry(plan, round_number=number, survivors=8,
                                     released_variance=plan.variance * 1.5,
                                     previous=rows[-1] if rows else None,
                                     epsilon_budget=100.0, **kwargs))
    return rows


def _audit(tmp_path: Path, rows: list[UserLevelEntry]) -> dict:
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    for row in rows:
        ledger.settle_round(row.round, [], [row])
    return audit_run(tmp_path / "ledger.jsonl")


def test_the_honest_ledger_verifies_under_zero_out(tmp_path: Path, plan) -> None:
    report = _audit(tmp_path, _rows(plan))
    assert report["verified"], report["violations"]
    assert {r["adjacency"] for r in report["user_level"]} == {"zero-out-one-client"}


def test_a_row_stating_add_remove_one_client_is_flagged(tmp_path: Path, plan) -> None:
    rows = _rows(plan)
    rows[1] = dataclasses.replace(rows[1], adjacency="add-remove-one-client")
    report = _audit(tmp_path, rows)
    assert not report["verified"]
    assert any("add-remove-one-client" in v and "round 2" in v for v in report["violations"])


@pytest.mark.parametrize("forged", [2e-5, 0.5])
def test_a_row_at_another_delta_is_flagged(tmp_path: Path, plan, forged: float) -> None:
    rows = _rows(plan)
    history = rows[2].history
    eps = user_level_epsilon(history, forged)
    rows[2] = dataclasses.replace(rows[2], delta=forged, epsilon=eps,
                                  epsilon_unsampled=eps,
                                  epsilon_colluders=colluder_epsilon(history, [0.0] * 3, forged))
    report = _audit(tmp_path, rows)
    assert not report["verified"]
    assert any("round 3" in v and "delta" in v for v in report["violations"])


def test_one_delta_above_the_cap_is_flagged_even_when_all_rows_agree(tmp_path: Path,
                                                                      plan) -> None:
    forged = 2 * USER_LEVEL_DELTA_MAX
    rows = []
    for row in _rows(plan):
        eps = user_level_epsilon(row.history, forged)
        rows.append(dataclasses.replace(
            row, delta=forged, epsilon=eps, epsilon_unsampled=eps, epsilon_colluders=eps))
    report = _audit(tmp_path, rows)
    assert not report["verified"]
    assert any("cap" in v for v in report["violations"])


def test_the_planner_refuses_a_delta_above_the_cap() -> None:
    with pytest.raises(ConfigurationError, match="delta"):
        plan_user_level(num_values=100, clip=1.0, bits=16, cohort=10, q=1.0, rounds=3,
                        target_epsilon=4.0, delta=2 * USER_LEVEL_DELTA_MAX)


def test_colluder_epsilon_recomputes_and_a_forged_one_is_flagged(tmp_path: Path, plan) -> None:
    share = plan.variance * 1.5 / 8  # each of 8 survivors' share of the released variance
    rows = _rows(plan, colluders=2, colluder_variance=2 * share)
    honest = user_level_epsilon([[r[0] - 2 * share, *r[1:3], 1.0, 1] for r in rows[-1].history],
                                plan.delta)
    assert math.isclose(rows[-1].epsilon_colluders, honest, rel_tol=1e-9)
    assert rows[-1].epsilon_colluders > rows[-1].epsilon_unsampled
    assert _audit(tmp_path / "a", rows)["verified"]
    forged = list(rows)
    forged[2] = dataclasses.replace(forged[2], epsilon_colluders=forged[2].epsilon_unsampled)
    report = _audit(tmp_path / "b", forged)
    assert not report["verified"]
    assert any("epsilon_colluders" in v for v in report["violations"])


def test_unsampled_epsilon_above_the_budget_is_a_note_not_a_violation(tmp_path: Path) -> None:
    sampled_plan = plan_user_level(num_values=100, clip=1.0, bits=16, cohort=10, q=0.1,
                                   rounds=3, target_epsilon=2.0, delta=1e-5)
    rows = []
    for number in (1, 2, 3):
        rows.append(user_level_entry(sampled_plan, round_number=number, survivors=8,
                                     released_variance=sampled_plan.variance,
                                     previous=rows[-1] if rows else None, epsilon_budget=2.0))
    assert rows[-1].epsilon <= 2.0 < rows[-1].epsilon_unsampled
    report = _audit(tmp_path, rows)
    assert report["verified"], report["violations"]
    assert any("epsilon_unsampled" in n and "budget" in n for n in report["notes"])
