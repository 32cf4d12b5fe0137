"""Review (crash/resume): kills the named crash points do not cover.

A sweep that SIGKILLed a tiny run just before each of its ``os.fsync`` /
``os.replace`` calls (``tests/review_crash_driver.py``;
``tests/test_review_crash_sweep.py`` keeps a sample) found every kill
resumable and every resumed run auditable, but every kill between the run
store's creation and round 1's in-flight block (the exports of round 0)
leaves a run directory that ``securefl audit`` FAILS, although nothing was
spent and docs/privacy-ledger.md says "A run killed at any point (before it
finished) verifies, with notes".  These tests reproduce that window
in-process: the recorder 'dies' (an exception standing for the SIGKILL) at
the first export, or after the exports and before round 1 begins; the store
is exactly what a SIGKILL there leaves (its one commit returned).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import securefl.federation.round as recorder_module
from securefl.cli.audit import audit_run
from securefl.federation.round import RoundRecorder
from securefl.federation.simulation import SimulationConfig, resume_simulation, run_simulation

CONFIG = SimulationConfig(num_clients=3, rounds=1, dropout=0.0, noise_multiplier=1.0,
                          epsilon_budget=200.0, seed=0, hidden=8, local_epochs=1)


class _Killed(BaseException):
    """Stands for the SIGKILL."""


def _die(*args: object, **kwargs: object) -> None:
    raise _Killed


@pytest.mark.parametrize("where", ["export", "begin"])
def test_a_run_killed_before_round_one_verifies(where: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """HOLE (fails against 64e3bd0): killed at round 0's first export
    (``export``: ``run.sqlite`` committed, no ``ledger.jsonl``,
    ``checkpoint.pt`` or ``metrics.json`` yet) or after the exports and
    before round 1 (``begin``), the directory holds a store that commits the
    initial model and no spend.  The audit says FAIL ("no checkpoint.pt",
    "no metrics.json", "the ledger commits no row") instead of verifying
    with notes, as it does for every later kill; resuming the same directory
    then works."""
    out = tmp_path / "run"
    monkeypatch.setattr(recorder_module, "plot_accuracy", lambda *a, **k: None)
    with monkeypatch.context() as patch:
        patch.setattr(RoundRecorder, where, _die)
        with pytest.raises(_Killed):
            run_simulation(CONFIG, out)
    assert (out / "run.sqlite").exists()
    report = audit_run(out)
    resume_simulation(out)  # the directory is a resumable run
    assert audit_run(out)["exit_code"] == 0
    assert report["exit_code"] == 0, (
        f"a run killed before round 1 (at RoundRecorder.{where}) audits as"
        f" {report['verdict']}: {report['violations']}")


def test_a_fresh_run_does_not_delete_an_unreadable_run_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HOLE (fails against 64e3bd0): ``RunStore.is_initialised`` answers
    False for a store it cannot read (any ``sqlite3.Error``), and
    ``RoundRecorder.create`` then treats it as a store whose creation never
    committed: ``remove_uninitialised`` unlinks it, and the new run starts
    every accountant from zero in the directory of the old one.  A damaged
    ``run.sqlite`` (here: its header overwritten) next to a deleted
    ``ledger.jsonl`` (an export) must be refused, not erased."""
    from securefl.errors import SecureFLError

    out = tmp_path / "run"
    monkeypatch.setattr(recorder_module, "plot_accuracy", lambda *a, **k: None)
    run_simulation(CONFIG, out)
    (out / "ledger.jsonl").unlink()
    store = out / "run.sqlite"
    raw = bytearray(store.read_bytes())
    raw[:16] = b"not a database!\x00"
    store.write_bytes(bytes(raw))
    try:
        run_simulation(CONFIG, out)
    except SecureFLError:
        assert store.read_bytes() == bytes(raw)
        return
    pytest.fail("a fresh run deleted an unreadable run.sqlite (holding a finished run's"
                " spend) and started over in its directory")
