"""Crash safety and resume, with real SIGKILLs.

The simulator is killed (SIGKILL, from ``securefl.crashpoints``) at every
crash point: with the in-flight rows committed, mid-training, inside the
store transaction that commits a round, after it and before any export, in
the middle of the ledger export (a torn write), between the ledger and the
checkpoint exports, between the checkpoint and the metrics exports, and
after the last round before the final block.  At each point the run
directory must pass ``securefl audit`` as it was left; resumed to the end,
its ledger must have no gap and no duplicate, keep every byte it had, pass
the audit, and charge every client exactly what an uninterrupted run with
the same participation charges (a round caught in flight: its charge kept,
re-run under the next number).  A client whose budget was exhausted before
the crash stays refused after it: its epsilon never resets.

One subprocess (``tests/crash_driver.py``) imports securefl once and forks
every simulator process, so the file runs in well under a minute.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from securefl.cli.audit import audit_run
from securefl.federation.round import INTERRUPTED
from securefl.federation.runstore import STORE_FILENAME, RunStore
from securefl.federation.simulation import SimulationConfig
from securefl.privacy.accounting import epsilons_for
from securefl.privacy.ledger import load_ledger

ROOT = Path(__file__).resolve().parent.parent
CONFIG = SimulationConfig(num_clients=3, rounds=3, dropout=0.3, noise_multiplier=1.0,
                          epsilon_budget=200.0, seed=0, hidden=8, local_epochs=1)
STEPS = CONFIG.dp_config().steps_per_round
# (crash point, round, whether a round is in flight when it fires)
POINTS = [
    ("after-in-flight", 1, True),
    ("mid-training", 2, True),
    ("mid-commit", 2, True),
    ("after-commit", 1, False),
    ("ledger-torn", 2, False),
    ("after-ledger", 2, False),
    ("mid-export", 3, False),
    ("after-commit", 3, False),
]


def _budget_config() -> SimulationConfig:
    """A budget that affords exactly two rounds by every accountant."""
    def worst(rounds: int) -> float:
        eps = epsilons_for([(1.0, CONFIG.sample_rate, rounds * STEPS)], CONFIG.delta,
                           "add-remove-one")
        return max(eps.values())

    two, three = worst(2), worst(3)
    assert two < three
    return SimulationConfig(**{**CONFIG.to_json(), "rounds": 4, "dropout": 0.0,
                               "epsilon_budget": (two + three) / 2})


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("crash")
    jobs = [{"dir": str(base / "reference"), "config": CONFIG.to_json(), "crash": None,
             "snapshot": None, "resume": None}]
    for name, number, _ in POINTS:
        key = f"{name}-{number}"
        jobs.append({"dir": str(base / key), "config": CONFIG.to_json(),
                     "crash": f"{name}:{number}", "snapshot": str(base / f"{key}-killed"),
                     "resume": "cli" if name == "mid-training" else "library"})
    jobs.append({"dir": str(base / "budget"), "config": _budget_config().to_json(),
                 "crash": "after-commit:2", "snapshot": str(base / "budget-killed"),
                 "resume": "cli"})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SECUREFL_TEST_CRASH_AT", None)
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "crash_driver.py"),
                           json.dumps({"jobs": jobs})], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    outcomes = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"base": base, "jobs": jobs, "outcomes": outcomes, "stderr": proc.stderr}


def _settled(path: Path) -> dict[int, dict[int, Any]]:
    """Round -> client id -> its settled row; asserting one settled block per
    round, in order, one row per client."""
    chain = load_ledger(path)
    assert chain.ok and not chain.torn_tail, chain.problems
    rounds = [c.round for c in chain.commits if c.stage == "settled"]
    assert rounds == list(range(1, len(rounds) + 1)), rounds  # no gap, no duplicate
    settled: dict[int, dict[int, Any]] = {}
    for row in chain.committed:
        if not row.in_flight:
            assert row.client_id not in settled.setdefault(row.round, {})
            settled[row.round][row.client_id] = row
    assert all(len(rows) == CONFIG.num_clients for rows in settled.values())
    return settled


def _final_histories(settled: dict[int, dict[int, Any]]) -> dict[int, list[list[float]]]:
    last = settled[max(settled)]
    return {cid: row.history for cid, row in last.items()}


@pytest.mark.parametrize(("name", "number", "interrupted"), POINTS,
                         ids=[f"{n}-{r}" for n, r, _ in POINTS])
def test_sigkill_then_resume(runs: dict[str, Any], name: str, number: int,
                             interrupted: bool) -> None:
    key = f"{name}-{number}"
    index = next(i for i, job in enumerate(runs["jobs"]) if job["dir"].endswith(key))
    outcome = runs["outcomes"][index]
    assert outcome["first"] == {"signal": signal.SIGKILL, "exit": None}, runs["stderr"][-2000:]
    assert outcome["resume"] == {"signal": None, "exit": 0}, runs["stderr"][-2000:]
    killed = Path(runs["jobs"][index]["snapshot"])
    out = Path(runs["jobs"][index]["dir"])

    # as the SIGKILL left it: the audit passes, no spend is lost
    report = audit_run(killed)
    assert report["exit_code"] == 0, report["violations"]
    assert load_ledger(killed / "ledger.jsonl").torn_tail == (name == "ledger-torn")

    # resumed to the end: one settled block per round, no gap, no duplicate
    settled = _settled(out / "ledger.jsonl")
    assert len(settled) == CONFIG.rounds + interrupted
    store = RunStore.open(out / STORE_FILENAME)
    try:
        # the exports agree with the store again, and the ledger kept every
        # byte it had (rounds committed before the crash are not repeated)
        assert (out / "ledger.jsonl").read_bytes() == store.ledger_bytes()
        assert (out / "checkpoint.pt").read_bytes() == store.committed().checkpoint
        before = (killed / "ledger.jsonl").read_bytes()
        before = before[:before.rfind(b"\n") + 1]  # without a torn last line
        assert store.ledger_bytes().startswith(before)
    finally:
        store.close()
    assert not list(out.glob(".*.tmp"))
    report = audit_run(out)
    assert report["exit_code"] == 0, report["violations"]
    assert not [n for n in report["notes"] if "lags" in n or "did not finish" in n]
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == sorted(settled)
    assert metrics["final"]["rounds_completed"] + metrics["final"]["rounds_aborted"] == len(
        settled)

    # the accounting: that of an uninterrupted run with the same participation
    reference = _final_histories(_settled(runs["base"] / "reference" / "ledger.jsonl"))
    final = _final_histories(settled)
    if interrupted:
        # the round in flight was settled as aborted, charging every client
        # the steps it was about to take, and re-run under the next number
        rows = settled[number]
        assert {r.status for r in rows.values()} == {"round-aborted"}
        assert all(r.local_steps == STEPS and not r.entered_sum for r in rows.values())
        aborted = next(r for r in metrics["rounds"] if r["round"] == number)
        assert aborted["aborted"] and aborted["abort_reason"] == INTERRUPTED
        assert final == {cid: [[h[0][0], h[0][1], h[0][2] + STEPS]]
                         for cid, h in reference.items()}
    else:
        assert final == reference
    summaries = {c["client_id"]: c for c in metrics["final"]["clients"]}
    for cid, history in final.items():
        eps = epsilons_for(history, CONFIG.delta, "add-remove-one")
        assert summaries[cid]["total_steps"] == sum(int(h[2]) for h in history)
        assert summaries[cid]["epsilon_rdp"] == pytest.approx(eps["opacus-rdp"], rel=1e-9)


def test_a_budget_exhausted_client_stays_refused_after_resume(runs: dict[str, Any]) -> None:
    """The adversarial resume: the budget affords two rounds; killed after
    round 2 committed, then resumed.  A resume that reset the accountants
    would let every client train in rounds 3 and 4 (a fresh budget affords
    two rounds); every client must refuse them, at the epsilon it had."""
    index = next(i for i, job in enumerate(runs["jobs"]) if job["dir"].endswith("budget"))
    outcome = runs["outcomes"][index]
    assert outcome["first"]["signal"] == signal.SIGKILL
    # every client refused rounds 3 and 4: the CLI exits 1 and says why
    assert outcome["resume"] == {"signal": None, "exit": 1}
    assert "every client refused round(s) 3, 4" in runs["stderr"]
    out = Path(runs["jobs"][index]["dir"])
    settled = _settled(out / "ledger.jsonl")
    assert sorted(settled) == [1, 2, 3, 4]
    for number in (3, 4):
        for row in settled[number].values():
            assert row.status == "refused-budget" and row.local_steps == 0
            # its epsilon continues from round 2: it never reset
            assert row.history == settled[2][row.client_id].history
            assert row.epsilon_rdp == settled[2][row.client_id].epsilon_rdp
    assert all(r.history == [[1.0, CONFIG.sample_rate, 2 * STEPS]]
               for r in settled[2].values())
    report = audit_run(out)
    assert report["exit_code"] == 0, report["violations"]
