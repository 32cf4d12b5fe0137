"""Review (crash/resume): SIGKILL at durable-write calls no crash point names.

``tests/review_crash_driver.py`` forks a tiny run (3 clients, 2 rounds) that
SIGKILLs itself just before its Nth ``os.fsync``/``os.replace`` call, audits
what it left, resumes it (in one job the resume is itself killed, then
resumed again) and audits the result.  The full sweep (N = 1..30, every
durable write of the run; 2026-12-02) found every resumed run verifying and
charging at least what an uninterrupted run charges; this test keeps a
sample of it (kills inside round 1's exports, inside round 2, and a crash
during the recovery of a round caught in flight).  The window before
round 1 is ``tests/test_review_crash_points.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from securefl.federation.simulation import SimulationConfig

ROOT = Path(__file__).resolve().parent.parent
CONFIG = SimulationConfig(num_clients=3, rounds=2, dropout=0.0, noise_multiplier=1.0,
                          epsilon_budget=200.0, seed=0, hidden=8, local_epochs=1)
STEPS = CONFIG.dp_config().steps_per_round


def test_kills_at_sampled_durable_writes_resume_and_verify(tmp_path: Path) -> None:
    """Confirms the claims (passes against 64e3bd0): after a SIGKILL at
    any sampled fsync/replace, and after a second SIGKILL during the resume,
    the resumed run verifies and no client is charged less than in an
    uninterrupted run (2 rounds) or more than one extra round per crash."""
    jobs = [{"dir": str(tmp_path / "k12"), "kill": 12},
            {"dir": str(tmp_path / "k19"), "kill": 19, "kill_resume": 4},
            {"dir": str(tmp_path / "k26"), "kill": 26}]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SECUREFL_TEST_CRASH_AT", None)
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "review_crash_driver.py"),
                           json.dumps({"config": CONFIG.to_json(), "jobs": jobs})],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcomes = json.loads(proc.stdout.strip().splitlines()[-1])
    for job, outcome in zip(jobs, outcomes, strict=True):
        assert outcome["first"] == {"signal": signal.SIGKILL, "exit": None}, outcome
        if "kill_resume" in job:
            assert outcome["resume0"] == {"signal": signal.SIGKILL, "exit": None}, outcome
        assert outcome["resume1"] == {"signal": None, "exit": 0}, proc.stderr[-3000:]
        assert outcome["audit_killed"]["exit"] == 0, outcome
        resumed = outcome["audit_resumed"]
        assert resumed["exit"] == 0, resumed
        crashes = 1 + ("kill_resume" in job)
        for steps in resumed["clients"].values():
            assert CONFIG.rounds * STEPS <= steps <= (CONFIG.rounds + crashes) * STEPS
