"""The ledger never under-reports: SIGKILL the simulator (a real subprocess,
killed by the test-only crash points of ``securefl.crashpoints``) after the
first client's training, in the middle of the export of a settled block to
ledger.jsonl and between the ledger and the checkpoint exports; ``securefl
audit`` must then pass and charge every client at least the steps it
actually trained.  (``tests/test_crash_resume.py`` kills at every point and
resumes.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from securefl.cli.audit import audit_run
from securefl.crashpoints import CRASH_ENV
from securefl.federation.simulation import SimulationConfig
from securefl.privacy.ledger import load_ledger

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--clients", "3", "--rounds", "2", "--noise-multiplier", "1.0", "--epsilon-budget",
        "50", "--dropout", "0.3", "--seed", "0", "--no-progress"]


def _steps_per_round() -> dict[int, int]:
    # the public steps per round, the same for every client
    config = SimulationConfig(num_clients=3, rounds=2, noise_multiplier=1.0, seed=0)
    return {cid: config.dp_config().steps_per_round for cid in range(1, 4)}


@pytest.mark.parametrize(("point", "round_number"), [
    ("mid-training", 2), ("ledger-torn", 2), ("after-ledger", 1)])
def test_sigkill_never_loses_spend(tmp_path: Path, point: str, round_number: int) -> None:
    out = tmp_path / "run"
    env = {**os.environ, CRASH_ENV: f"{point}:{round_number}"}
    proc = subprocess.run([sys.executable, "-m", "securefl.cli", "simulate", *ARGS,
                           "-o", str(out)], env=env, cwd=ROOT, capture_output=True,
                          timeout=900, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]

    per_round = _steps_per_round()
    # what the killed process had really trained, client by client
    done = round_number - 1
    trained = {cid: done * steps for cid, steps in per_round.items()}
    if point == "mid-training":
        trained[1] += per_round[1]  # the first client trained, then the kill
    elif point in ("ledger-torn", "after-ledger"):
        trained = {cid: round_number * steps for cid, steps in per_round.items()}

    chain = load_ledger(out / "ledger.jsonl")
    assert chain.ok, chain.problems
    assert chain.torn_tail == (point == "ledger-torn")
    report = audit_run(out)
    assert not [v for v in report["violations"] if v.startswith("ledger chain")]
    charged = {c["client_id"]: c["steps"] for c in report["clients"]}
    assert set(charged) == set(per_round)
    for cid, steps in trained.items():
        assert charged[cid] >= steps, (cid, charged[cid], steps)
    # the run store commits a round (its settled rows, checkpoint and report)
    # in one transaction; the exports may lag it, never disagree: the audit
    # passes at every point
    assert report["exit_code"] == 0, report["violations"]
    assert any("did not finish" in note for note in report["notes"])
    if point == "mid-training":
        # the round in flight is charged in full, trained or not
        assert charged == {cid: round_number * s for cid, s in per_round.items()}
        assert report["rounds"][-1]["in_flight"] == 3
    else:
        # the round is committed in the store; killed while exporting it
        assert report["cross_check"]["ledger_round"] == round_number
        assert report["cross_check"]["checkpoint_round"] == round_number - 1
        assert any("lags the run store" in note for note in report["notes"])
