"""The ``accountant`` of user-level ledger rows: new rows name the default
bound and audit under it; rows written before the field existed audit under
Zhu and Wang's general bound; relabelling a row's accountant is caught."""

from __future__ import annotations

from pathlib import Path

import pytest

from securefl.cli.audit import audit_run
from securefl.privacy.distributed import (
    ACCOUNTANT,
    LEGACY_ACCOUNTANT,
    plan_user_level,
    user_level_entry,
    user_level_epsilon,
)
from securefl.privacy.ledger import PrivacyLedger, load_ledger
from tests.ledger_tools import records, write_chained

ROUNDS = 3
DELTA = 1e-5


def _plan(accountant: str):
    return plan_user_level(num_values=300, clip=1.0, bits=16, cohort=20, q=0.1, rounds=ROUNDS,
                           target_epsilon=3.0, delta=DELTA, accountant=accountant)


@pytest.fixture(scope="module")
def plans():
    return {name: _plan(name) for name in (ACCOUNTANT, LEGACY_ACCOUNTANT)}


def _write(run: Path, plan) -> None:
    ledger = PrivacyLedger(run / "ledger.jsonl")
    previous = None
    for number in range(1, ROUNDS + 1):
        row = user_level_entry(plan, round_number=number, survivors=18,
                               released_variance=plan.variance, previous=previous,
                               epsilon_budget=3.0)
        ledger.settle_round(number, [], [row])
        previous = row


def _user_rows(run: Path) -> list[dict]:
    return [r for r in records(run) if r["type"] == "user-level"]


def test_new_rows_name_the_default_accountant_and_verify(tmp_path: Path, plans) -> None:
    plan = plans[ACCOUNTANT]
    _write(tmp_path, plan)
    assert {r["accountant"] for r in _user_rows(tmp_path)} == {ACCOUNTANT}
    report = audit_run(tmp_path / "ledger.jsonl")
    assert report["verified"], report["violations"]
    assert {u["accountant"] for u in report["user_level"]} == {ACCOUNTANT}
    history = load_ledger(tmp_path / "ledger.jsonl").committed_user_level[-1].history
    assert report["user_level"][-1]["epsilon"] == pytest.approx(
        user_level_epsilon(history, DELTA)) and report["user_level"][-1]["epsilon"] <= 3.0
    # the default calibrates less noise (relative to the sensitivity) than the
    # general bound for the same target; the ring then fits a larger scale
    legacy = plans[LEGACY_ACCOUNTANT]
    assert plan.variance ** 0.5 / plan.codec.l2_sensitivity \
        < legacy.variance ** 0.5 / legacy.codec.l2_sensitivity
    assert plan.codec.gamma > legacy.codec.gamma


def test_rows_written_before_the_field_audit_under_the_general_bound(tmp_path: Path,
                                                                     plans) -> None:
    """An old ledger: rows computed with Zhu-Wang's general bound and no
    ``accountant`` field.  They verify, recomputed under that bound."""
    _write(tmp_path, plans[LEGACY_ACCOUNTANT])
    recs = records(tmp_path)
    for r in recs:
        if r["type"] == "user-level":
            assert r.pop("accountant") == LEGACY_ACCOUNTANT
    write_chained(tmp_path, recs, anchors=False)
    chain = load_ledger(tmp_path / "ledger.jsonl")
    assert chain.ok and all(r.accountant == LEGACY_ACCOUNTANT
                            for r in chain.committed_user_level)
    report = audit_run(tmp_path / "ledger.jsonl")
    assert report["verified"], report["violations"]
    last = chain.committed_user_level[-1]
    assert report["user_level"][-1]["epsilon"] == pytest.approx(
        user_level_epsilon(last.history, DELTA, accountant=LEGACY_ACCOUNTANT))


def test_stripping_the_accountant_of_new_rows_is_caught(tmp_path: Path, plans) -> None:
    """Removing the field from new rows makes them old rows: their (smaller)
    recorded epsilons no longer recompute under the general bound."""
    _write(tmp_path, plans[ACCOUNTANT])
    recs = records(tmp_path)
    for r in recs:
        if r["type"] == "user-level":
            del r["accountant"]
    write_chained(tmp_path, recs, anchors=False)
    violations = audit_run(tmp_path / "ledger.jsonl")["violations"]
    assert any("round 2, user level: recorded epsilon" in v for v in violations)


def test_relabelling_old_rows_with_the_new_accountant_is_caught(tmp_path: Path,
                                                                 plans) -> None:
    """The label must match the epsilons: rows computed with the general
    bound and labelled with the default one do not recompute (an audit that
    trusted the label over the numbers would accept any pairing)."""
    _write(tmp_path, plans[LEGACY_ACCOUNTANT])
    recs = records(tmp_path)
    for r in recs:
        if r["type"] == "user-level":
            r["accountant"] = ACCOUNTANT
    write_chained(tmp_path, recs, anchors=False)
    violations = audit_run(tmp_path / "ledger.jsonl")["violations"]
    assert any("round 1, user level: recorded epsilon" in v for v in violations)


def test_an_unknown_accountant_is_refused(tmp_path: Path, plans) -> None:
    _write(tmp_path, plans[ACCOUNTANT])
    recs = records(tmp_path)
    next(r for r in recs if r["type"] == "user-level")["accountant"] = "pld-from-thin-air"
    write_chained(tmp_path, recs, anchors=False)
    report = audit_run(tmp_path / "ledger.jsonl")
    assert not report["verified"]
    assert any("unknown accountant 'pld-from-thin-air'" in v for v in report["violations"])


@pytest.mark.parametrize(("z", "q", "rounds"), [(20.0, 1.0, 1), (50.0, 1.0, 1), (20.0, 0.3, 10),
                                                (50.0, 0.3, 100), (20.0, 0.05, 100)])
def test_the_gaussian_floor_never_exceeds_a_valid_epsilon(z, q, rounds) -> None:
    """Small epsilons are attained at orders above 64, which dp-accounting's
    default orders skip (65..127, 136..248): a floor computed at those alone
    was above the valid Skellam epsilon (by up to 7% at z = 50) and the
    audit failed honest rows.  The floor is now computed at a superset of
    the accountant's orders."""
    from securefl.cli.audit import _gaussian_floor

    history = [[(z * 1e4) ** 2, 1e4, 1e4, q, rounds]]
    floor = _gaussian_floor(history, DELTA)
    for accountant in (ACCOUNTANT, LEGACY_ACCOUNTANT):
        assert floor <= user_level_epsilon(history, DELTA, accountant=accountant)
    assert floor > 0.98 * user_level_epsilon(history, DELTA)  # still a close check


def test_a_small_user_level_epsilon_audits(tmp_path: Path) -> None:
    plan = plan_user_level(num_values=300, clip=1.0, bits=24, cohort=20, q=1.0, rounds=1,
                           target_epsilon=0.2, delta=DELTA)
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    ledger.settle_round(1, [], [user_level_entry(plan, round_number=1, survivors=18,
                                                 released_variance=plan.variance,
                                                 epsilon_budget=0.2)])
    report = audit_run(tmp_path / "ledger.jsonl")
    assert report["verified"], report["violations"]
