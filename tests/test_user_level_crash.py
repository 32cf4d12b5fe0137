"""The user-level release is charged before it happens.

A federation with user-level DP is killed (SIGKILL, ``after-release``)
after the server unmasked round 2's sum and before the round settled.  The
ledger it leaves must charge that release (the round's in-flight user-level
row, at the target variance, counted in the epsilon the audit reports);
before the in-flight charge existed, the user-level row was written only at
settlement, and the killed run's ledger stated the epsilon of round 1 alone.
Resumed, the interrupted round keeps its charge (``round-aborted``), the
user-level budget guard refuses the round that no longer fits, and the audit
passes.  Forged ledgers that drop or shrink a charge fail the audit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from securefl.cli.audit import audit_run
from securefl.federation.simulation import SimulationConfig
from securefl.privacy.distributed import plan_user_level, user_level_entry, user_level_epsilon
from securefl.privacy.ledger import LedgerError, PrivacyLedger, load_ledger

ROOT = Path(__file__).resolve().parent.parent
CONFIG = SimulationConfig(num_clients=4, rounds=3, dropout=0.0, noise_multiplier=1.0,
                          epsilon_budget=200.0, seed=0, hidden=8, local_epochs=1,
                          privacy="both", bits=24, user_epsilon=30.0)

# 24 clients at q = 1/2: round 2 samples some and leaves some out, except
# with probability below 1e-6
SAMPLED = SimulationConfig(**{**CONFIG.to_json(), "num_clients": 24, "bits": 16,
                              "client_sample_rate": 0.5, "rounds": 2})

# privacy user-level alone: the in-flight block holds the user-level charge only
ALONE = SimulationConfig(num_clients=4, rounds=3, dropout=0.0, seed=0, hidden=8,
                         local_epochs=1, privacy="user-level", bits=16, user_epsilon=30.0)


@pytest.fixture(scope="module")
def killed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("ulcrash")
    jobs = [{"dir": str(base / "run"), "config": CONFIG.to_json(), "crash": "after-release:2",
             "snapshot": str(base / "killed"), "resume": "library"},
            {"dir": str(base / "sampled"), "config": SAMPLED.to_json(),
             "crash": "after-in-flight:2", "snapshot": None, "resume": "library"},
            {"dir": str(base / "alone"), "config": ALONE.to_json(), "crash": "mid-training:2",
             "snapshot": str(base / "alone-killed"), "resume": "cli"}]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SECUREFL_TEST_CRASH_AT", None)
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "crash_driver.py"),
                           json.dumps({"jobs": jobs})], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcomes = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"run": base / "run", "killed": base / "killed", "outcome": outcomes[0],
            "sampled": base / "sampled", "sampled_outcome": outcomes[1],
            "alone": base / "alone", "alone_outcome": outcomes[2],
            "stderr": proc.stderr}


def test_the_killed_release_is_in_the_ledger(killed: dict[str, Any]) -> None:
    assert killed["outcome"]["first"] == {"signal": signal.SIGKILL, "exit": None}, \
        killed["stderr"][-2000:]
    chain = load_ledger(killed["killed"] / "ledger.jsonl")
    assert chain.ok, chain.problems
    assert chain.last_settled_round == 1  # round 2 released its sum, never settled
    rows = chain.effective_user_level()
    assert [(r.round, r.status) for r in rows] == [(1, "released"), (2, "in-flight")]
    charge = rows[-1]
    assert charge.released_variance == charge.target_variance and charge.survivors == 0
    assert charge.history[:-1] == rows[0].history
    report = audit_run(killed["killed"])
    assert report["exit_code"] == 0, report["violations"]
    last = report["user_level"][-1]
    assert last["round"] == 2 and last["status"] == "in-flight"
    # the reported epsilon composes both rounds: more than round 1's alone
    both = user_level_epsilon(charge.history, CONFIG.delta)
    assert last["epsilon"] == pytest.approx(both)
    assert both > report["user_level"][0]["epsilon"]
    assert any("round 2, user level: in flight" in n for n in report["notes"])


def test_resume_keeps_the_charge_and_the_budget_guard_holds(killed: dict[str, Any]) -> None:
    assert killed["outcome"]["resume"] == {"signal": None, "exit": 0}, killed["stderr"][-2000:]
    chain = load_ledger(killed["run"] / "ledger.jsonl")
    assert chain.ok, chain.problems
    rows = chain.effective_user_level()
    statuses = [(r.round, r.status) for r in rows]
    # round 2 keeps its charge; its work re-runs as round 3; the third
    # schedule entry (round 4) would exceed the user-level budget: refused
    assert statuses == [(1, "released"), (2, "round-aborted"), (3, "released")], statuses
    kept = rows[1]
    assert kept.released_variance == kept.target_variance and kept.survivors == 0
    assert rows[-1].history[1] == kept.history[1]
    assert rows[-1].epsilon <= CONFIG.user_epsilon
    assert chain.last_settled_round == 4
    round4 = [r for r in chain.committed if r.round == 4 and not r.in_flight]
    assert round4 and all(r.status == "refused-budget" and r.local_steps == 0 for r in round4)
    metrics = json.loads((killed["run"] / "metrics.json").read_text())
    assert "user-level budget" in metrics["rounds"][3]["abort_reason"]
    report = audit_run(killed["run"])
    assert report["exit_code"] == 0, report["violations"]
    assert report["user_level"][-1]["epsilon"] == pytest.approx(
        user_level_epsilon(rows[-1].history, CONFIG.delta))


def test_resume_restores_who_was_sampled(killed: dict[str, Any]) -> None:
    """Killed with round 2 in flight under client sampling: on resume, the
    clients the round charged keep their charge, the others are recorded as
    not sampled (from the cohort committed with the in-flight block), not
    as refused."""
    assert killed["sampled_outcome"]["first"] == {"signal": signal.SIGKILL, "exit": None}
    assert killed["sampled_outcome"]["resume"] == {"signal": None, "exit": 0}, \
        killed["stderr"][-2000:]
    chain = load_ledger(killed["sampled"] / "ledger.jsonl")
    assert chain.ok, chain.problems
    charged = {r.client_id for r in chain.committed if r.round == 2 and r.in_flight}
    settled = {r.client_id: r for r in chain.committed if r.round == 2 and not r.in_flight}
    assert charged and len(settled) == SAMPLED.num_clients and set(settled) - charged
    for cid, row in settled.items():
        assert row.status == ("round-aborted" if cid in charged else "not-sampled"), row
    assert [(u.round, u.status) for u in chain.effective_user_level()
            if u.round == 2] == [(2, "round-aborted")]
    report = audit_run(killed["sampled"])
    assert report["exit_code"] == 0, report["violations"]


def test_user_level_alone_killed_mid_training(killed: dict[str, Any]) -> None:
    outcome = killed["alone_outcome"]
    assert outcome["first"] == {"signal": signal.SIGKILL, "exit": None}
    # exit 1 (incomplete): the interrupted round kept its charge, so the
    # budget guard refuses the last schedule entry (every client refused)
    assert outcome["resume"] == {"signal": None, "exit": 1}, killed["stderr"][-2000:]
    snapshot = load_ledger(killed["killed"].parent / "alone-killed" / "ledger.jsonl")
    assert not snapshot.records  # no record-level row, ever
    assert [(u.round, u.status) for u in snapshot.effective_user_level()] == [
        (1, "released"), (2, "in-flight")]
    assert audit_run(killed["killed"].parent / "alone-killed")["exit_code"] == 0
    chain = load_ledger(killed["alone"] / "ledger.jsonl")
    assert chain.ok and not chain.records
    statuses = [(u.round, u.status) for u in chain.effective_user_level()]
    assert statuses == [(1, "released"), (2, "round-aborted"), (3, "released")], statuses
    report = audit_run(killed["alone"])
    assert report["exit_code"] == 0, report["violations"]
    assert report["clients"] == []


def _plan():  # type: ignore[no-untyped-def]
    return plan_user_level(num_values=100, clip=1.0, bits=24, cohort=4, q=1.0, rounds=3,
                           target_epsilon=30.0, delta=1e-5)


def _charge(plan, number, previous=None):  # type: ignore[no-untyped-def]
    return replace(user_level_entry(plan, round_number=number,
                                    released_variance=plan.variance, survivors=0,
                                    previous=previous, epsilon_budget=30.0), status="in-flight")


def test_a_dropped_charge_fails_the_audit(tmp_path: Path) -> None:
    """Attack: settle a charged round without its user-level row (the charge
    silently disappears, the epsilon drops by that round)."""
    plan = _plan()
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    ledger.begin_round(1, [], [_charge(plan, 1)])
    ledger.settle_round(1, [])
    report = audit_run(tmp_path / "ledger.jsonl")
    assert not report["verified"]
    assert any("charge was dropped" in v for v in report["violations"]), report["violations"]


def test_a_shrunk_charge_fails_the_audit(tmp_path: Path) -> None:
    """Attack: an in-flight charge that states more noise than the target
    (a smaller epsilon than the round can cost)."""
    plan = _plan()
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    forged = replace(user_level_entry(plan, round_number=1,
                                      released_variance=plan.variance * 4, survivors=0,
                                      epsilon_budget=30.0), status="in-flight")
    ledger.begin_round(1, [], [forged])
    report = audit_run(tmp_path / "ledger.jsonl")
    assert any("must state the target variance" in v for v in report["violations"])


def test_charges_that_supersede_verify(tmp_path: Path) -> None:
    """A charged, released round and a charged round kept after an abort
    verify; the kept charge counts in the next round's history."""
    plan = _plan()
    ledger = PrivacyLedger(tmp_path / "ledger.jsonl")
    charge = _charge(plan, 1)
    ledger.begin_round(1, [], [charge])
    released = user_level_entry(plan, round_number=1, released_variance=plan.variance * 1.2,
                                survivors=4, epsilon_budget=30.0)
    ledger.settle_round(1, [], [released])
    charge2 = _charge(plan, 2, released)
    ledger.begin_round(2, [], [charge2])
    kept = replace(charge2, status="round-aborted")
    ledger.settle_round(2, [], [kept])
    charge3 = _charge(plan, 3, kept)
    ledger.begin_round(3, [], [charge3])
    report = audit_run(tmp_path / "ledger.jsonl")
    assert report["verified"], report["violations"]
    assert [u["status"] for u in report["user_level"]] == ["released", "round-aborted",
                                                           "in-flight"]
    assert len(charge3.history) == 3
    with pytest.raises(LedgerError):  # a settled row cannot go into an in-flight block
        ledger.begin_round(4, [], [released])
