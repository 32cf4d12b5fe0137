"""``securefl audit`` writes nothing into the run directory it audits.

A SQLite connection opened ``mode=ro`` on a WAL database creates
``run.sqlite-shm``/``run.sqlite-wal`` next to it and cannot remove them on
close; ``immutable=1`` would avoid that but ignore the frames a killed writer
left in the WAL.  Both kinds of run are audited here: one closed cleanly (no
WAL) and one SIGKILLed in round 2 (a live WAL holding committed frames that
were never checkpointed into ``run.sqlite``).  The directory listing (names,
sizes, mtimes) must be identical before and after, and the audit must read
the WAL's frames.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
from pathlib import Path

import pytest
import torch

from securefl.cli import main
from securefl.crashpoints import CRASH_ENV
from securefl.federation.runstore import STORE_FILENAME, RunStore
from securefl.federation.simulation import SimulationConfig, run_simulation

torch.set_num_threads(1)

CONFIG = SimulationConfig(num_clients=3, rounds=2, dropout=0.0, noise_multiplier=1.0,
                          epsilon_budget=200.0, seed=0, hidden=8, local_epochs=1)


def _listing(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.iterdir()}


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("clean") / "run"
    run_simulation(CONFIG, out)
    return out


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run whose process got SIGKILL while round 2 was in flight."""
    out = tmp_path_factory.mktemp("killed") / "run"
    pid = os.fork()
    if pid == 0:  # the child: killed by the crash point, never returns
        try:
            os.environ[CRASH_ENV] = "mid-training:2"
            run_simulation(CONFIG, out)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    return out


def _audit(run: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["audit", str(run), "--no-plot"])
    return code, capsys.readouterr().out


def test_audit_of_a_cleanly_closed_run_leaves_the_directory_as_it_was(
        clean_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _listing(clean_run)
    assert f"{STORE_FILENAME}-wal" not in before and f"{STORE_FILENAME}-shm" not in before
    code, text = _audit(clean_run, capsys)
    assert code == 0, text
    assert _listing(clean_run) == before
    store = RunStore.open_readonly(clean_run / STORE_FILENAME)
    try:
        assert store.committed().round == 2
    finally:
        store.close()
    assert _listing(clean_run) == before


def test_audit_of_a_killed_run_reads_its_live_wal_and_leaves_it_as_it_was(
        killed_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store_path = killed_run / STORE_FILENAME
    wal = killed_run / f"{STORE_FILENAME}-wal"
    assert wal.stat().st_size > 0
    # the WAL matters: run.sqlite alone (what immutable=1 reads) misses commits
    alone = sqlite3.connect(f"{store_path.as_uri()}?immutable=1", uri=True)
    try:
        without_wal = alone.execute("SELECT count(*) FROM sqlite_master WHERE name = 'state'"
                                    ).fetchone()[0] and alone.execute(
                                        "SELECT round, in_flight FROM state").fetchone()
    finally:
        alone.close()
    # what a writer would find: a private copy opened read-write replays the WAL
    copy = tmp_path / "copy"
    shutil.copytree(killed_run, copy)
    reference = RunStore.open(copy / STORE_FILENAME)
    try:
        expected = reference.committed(), reference.ledger_bytes()
    finally:
        reference.close()
    assert expected[0].round == 1 and expected[0].in_flight == 2
    assert without_wal != (expected[0].round, expected[0].in_flight)

    before = _listing(killed_run)
    store = RunStore.open_readonly(store_path)
    try:
        assert (store.committed(), store.ledger_bytes()) == expected
    finally:
        store.close()
    assert RunStore.is_initialised(store_path)
    assert _listing(killed_run) == before
    code, text = _audit(killed_run, capsys)
    assert code in (0, 1), text
    assert "cannot be read" not in text
    assert _listing(killed_run) == before


def test_a_store_held_by_a_writer_is_read_in_place(clean_run: Path, tmp_path: Path) -> None:
    """While a writer holds the run (its lock), the reader opens the store
    in place and sees what the writer committed."""
    run = tmp_path / "run"
    shutil.copytree(clean_run, run)
    writer = RunStore.open(run / STORE_FILENAME)
    try:
        reader = RunStore.open_readonly(run / STORE_FILENAME)
        try:
            assert reader.committed() == writer.committed()
        finally:
            reader.close()
    finally:
        writer.close()
