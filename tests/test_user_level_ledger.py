"""User-level rows in the privacy ledger and their audit: recomputed,
cross-checked against dp-accounting's Gaussian, and tamper-evident."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from securefl.cli.audit import audit_run
from securefl.errors import ConfigurationError
from securefl.privacy.distributed import plan_user_level, user_level_entry, user_level_epsilon
from securefl.privacy.ledger import PrivacyLedger, load_ledger
from tests.ledger_tools import records, write_chained

ROUNDS = 4


@pytest.fixture(scope="module")
def plan():
    return plan_user_level(num_values=300, clip=1.0, bits=16, cohort=20, q=0.1,
                           rounds=ROUNDS, target_epsilon=3.0, delta=1e-5)


def _write(run: Path, plan, *, budget: float | None = 3.0) -> None:
    ledger = PrivacyLedger(run / "ledger.jsonl")
    previous = None
    for number in range(1, ROUNDS + 1):
        # the released variance is at least V (removable excess noise leaves <= 0.1% more)
        row = user_level_entry(plan, round_number=number, survivors=18,
                               released_variance=plan.variance * (1 + 2e-4 * number),
                               previous=previous, epsilon_budget=budget)
        ledger.settle_round(number, [], [row])
        previous = row


def test_user_level_rows_verify_and_report_both_epsilons(tmp_path: Path, plan) -> None:
    _write(tmp_path, plan)
    chain = load_ledger(tmp_path / "ledger.jsonl")
    assert chain.ok and len(chain.committed_user_level) == ROUNDS
    report = audit_run(tmp_path / "ledger.jsonl")
    assert report["verified"], report["violations"]
    last = report["user_level"][-1]
    assert last["epsilon"] <= 3.0 < last["epsilon_unsampled"]
    assert last["epsilon_gaussian_floor"] <= last["epsilon"]
    assert last["epsilon"] == pytest.approx(
        user_level_epsilon(chain.committed_user_level[-1].history, 1e-5))
    json.dumps(report, allow_nan=False)


def test_a_lowered_recorded_epsilon_fails_even_with_a_valid_chain(tmp_path: Path, plan) -> None:
    _write(tmp_path, plan)
    recs = records(tmp_path)
    target = next(r for r in recs if r["type"] == "user-level" and r["round"] == 3)
    target["epsilon"] /= 3
    write_chained(tmp_path, recs, anchors=False)
    report = audit_run(tmp_path / "ledger.jsonl")
    assert not report["verified"]
    assert any("round 3, user level: recorded epsilon" in v for v in report["violations"])


def test_a_released_variance_below_the_target_fails(tmp_path: Path, plan) -> None:
    """A server that reports less noise than calibrated (or removes more than
    the excess) is caught: the row's history is recomputed at what was
    released, and released < target is itself a violation."""
    _write(tmp_path, plan)
    recs = records(tmp_path)
    target = next(r for r in recs if r["type"] == "user-level" and r["round"] == 2)
    target["released_variance"] = target["target_variance"] / 2
    write_chained(tmp_path, recs, anchors=False)
    violations = audit_run(tmp_path / "ledger.jsonl")["violations"]
    assert any("below the calibrated" in v for v in violations)
    assert any("history does not follow" in v for v in violations)
    with pytest.raises(ConfigurationError, match="below the calibrated"):
        user_level_entry(plan, round_number=1, survivors=3, released_variance=plan.variance / 2)


def test_a_removed_user_level_row_fails(tmp_path: Path, plan) -> None:
    _write(tmp_path, plan)
    recs = [r for r in records(tmp_path) if not (r["type"] == "user-level" and r["round"] == 4)]
    write_chained(tmp_path, recs, anchors=False)
    assert any("counts 1 user-level rows, 0 precede it" in p
               for p in load_ledger(tmp_path / "ledger.jsonl").problems)


def test_forged_sensitivities_fail(tmp_path: Path, plan) -> None:
    """Claiming a smaller sensitivity than gamma x clip gives would lower the
    epsilon; the audit recomputes it from gamma, clip, d and beta."""
    _write(tmp_path, plan)
    recs = records(tmp_path)
    previous = None
    for r in recs:
        if r["type"] == "user-level":
            r["l2_sensitivity"] /= 2
            r["history"] = [*(previous or []), [r["released_variance"], r["l1_sensitivity"],
                                                r["l2_sensitivity"], r["sample_rate"], 1]]
            previous = r["history"]
    write_chained(tmp_path, recs, anchors=False)
    violations = audit_run(tmp_path / "ledger.jsonl")["violations"]
    assert any("do not follow from gamma" in v for v in violations)


def test_over_the_user_level_budget_fails(tmp_path: Path, plan) -> None:
    _write(tmp_path, plan, budget=1.0)
    violations = audit_run(tmp_path / "ledger.jsonl")["violations"]
    assert any("exceeds the budget 1" in v for v in violations)


def test_no_user_level_budget_is_reported(tmp_path: Path, plan) -> None:
    _write(tmp_path, plan, budget=None)
    report = audit_run(tmp_path / "ledger.jsonl")
    assert report["verified"] and report["no_budget"] and report["exit_code"] == 3


def test_the_command_line_reports_user_level_rows(tmp_path: Path, plan,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from securefl.cli import main

    _write(tmp_path, plan)
    code = main(["audit", str(tmp_path / "ledger.jsonl")])
    text = capsys.readouterr().out
    assert code == 0
    assert "user level, skellam, zero-out-one-client; accountant symmetric-binomial" in text
    assert "every user-level row recomputes and stays within its budget" in text
    assert "client   budget" not in text  # no empty record-level table
