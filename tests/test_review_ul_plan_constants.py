"""Review (user-level DP): a charge forged to a larger target variance.

Every user-level row of a run comes from one plan (``plan_user_level``):
its target variance ``V``, ``gamma``, clip, dimension, ``beta``, bits and
sampling rate are constants of the run.  The audit checks that a charge
(``in-flight`` or ``round-aborted``) states ``released = target`` and no
survivors, and that ``released >= target``, but not that ``target`` is the
run's ``V``.  A ledger whose last round was killed after its sum was
released (the charge is all that accounts for it) is rewritten with that
charge at ``20 V`` (epsilon and history recomputed, re-chained): the audit
verifies a user-level epsilon that counts the released round at a twentieth
of its cost.  Likewise a ``released`` row can raise ``target`` with its
``released_variance``.  Only the rows' agreement on the plan's constants
(or the configuration) can catch it.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from securefl.cli.audit import audit_run
from securefl.privacy.distributed import plan_user_level, user_level_entry
from securefl.privacy.ledger import PrivacyLedger, load_ledger

ROUNDS = 4


@pytest.fixture(scope="module")
def plan():
    return plan_user_level(num_values=300, clip=1.0, bits=16, cohort=20, q=0.1,
                           rounds=ROUNDS, target_epsilon=3.0, delta=1e-5)


def _killed_after_release(path: Path, plan, charge_scale: float) -> float:
    """Rounds 1..3 settled, round 4 charged in flight (the process was killed
    after the release); the charge's variance scaled by ``charge_scale``.
    Returns the charge's epsilon."""
    ledger = PrivacyLedger(path)
    previous = None
    for number in range(1, ROUNDS):
        row = user_level_entry(plan, round_number=number, survivors=18,
                               released_variance=plan.variance, previous=previous,
                               epsilon_budget=3.0)
        ledger.settle_round(number, [], [row])
        previous = row
    forged = replace(plan, variance=plan.variance * charge_scale)
    charge = replace(user_level_entry(forged, round_number=ROUNDS, survivors=0,
                                      released_variance=forged.variance, previous=previous,
                                      epsilon_budget=3.0), status="in-flight")
    ledger.begin_round(ROUNDS, [], [charge])
    return charge.epsilon


def test_the_honest_charge_verifies(tmp_path: Path, plan) -> None:
    honest = _killed_after_release(tmp_path / "ledger.jsonl", plan, 1.0)
    report = audit_run(tmp_path / "ledger.jsonl")
    assert report["verified"], report["violations"]
    assert report["user_level"][-1]["epsilon"] == pytest.approx(honest)


def test_a_charge_at_a_forged_target_variance_is_caught(tmp_path: Path, plan) -> None:
    """HOLE (fails against main): the unsettled charge of a released round
    states 20 V; every other row states V."""
    honest = _killed_after_release(tmp_path / "honest.jsonl", plan, 1.0)
    forged = _killed_after_release(tmp_path / "ledger.jsonl", plan, 20.0)
    assert forged < honest
    chain = load_ledger(tmp_path / "ledger.jsonl")
    assert chain.ok and {u.target_variance for u in chain.committed_user_level} == {
        plan.variance, 20 * plan.variance}
    report = audit_run(tmp_path / "ledger.jsonl")
    assert not report["verified"], (
        f"audit verified user-level epsilon {report['user_level'][-1]['epsilon']:.4f} with"
        f" the released round charged at 20 V (at V: {honest:.4f})")
