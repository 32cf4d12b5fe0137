"""The run store's state and configuration are checked against its ledger.

``RoundRecorder.resume`` restores every client's accountant from
``state.clients``, decides from ``state.in_flight`` whether a round was in
flight and runs under ``meta.config``; each must agree with the store's
hash-chained ledger (``state.head`` is the ledger head written with every
block), or the resume refuses (:class:`StoreInconsistentError` naming the
client, the round and the rule) and ``securefl audit`` fails.  These tests
perform the edits an operator wanting a lower spend could make, and check
the refusal and the audit violation; plus the writer lock, a damaged store
that a fresh run must keep, and truncation of the store's ledger at every
line boundary.

Runs are interrupted in-process (the crash point raises; every store commit
before it returned, so the store is what a SIGKILL leaves).
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import securefl.federation.round as recorder_module
import securefl.federation.runstore as runstore_module
import securefl.federation.simulation as simulation_module
from securefl.cli.audit import audit_run
from securefl.errors import SecureFLError
from securefl.federation.runstore import (
    STORE_FILENAME,
    Committed,
    RunStore,
    RunStoreError,
    StoreInconsistentError,
    StoreLockedError,
    StoreRule,
    store_problems,
)
from securefl.federation.simulation import SimulationConfig, resume_simulation, run_simulation
from securefl.privacy.ledger import LEDGER_FILENAME

CONFIG = SimulationConfig(num_clients=3, rounds=3, dropout=0.0, noise_multiplier=1.0,
                          epsilon_budget=200.0, seed=0, hidden=8, local_epochs=1)


class _Killed(BaseException):
    """Stands for the SIGKILL at a crash point."""


def _interrupted(out: Path, point: str) -> None:
    def crash_point(name: str, round_number: int) -> None:
        if f"{name}:{round_number}" == point:
            raise _Killed(point)

    with pytest.MonkeyPatch.context() as patch:
        for module in (recorder_module, runstore_module, simulation_module):
            patch.setattr(module, "crash_point", crash_point)
        patch.setattr(recorder_module, "plot_accuracy", lambda *a, **k: None)
        with pytest.raises(_Killed):
            run_simulation(CONFIG, out)


@pytest.fixture(scope="module")
def in_flight_two(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Round 1 settled, round 2 in flight (every client charged for it)."""
    out = tmp_path_factory.mktemp("consistency") / "in-flight-2"
    _interrupted(out, "mid-training:2")
    return out


@pytest.fixture
def run(in_flight_two: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(in_flight_two, dst)
    return dst


def _sql(out: Path, sql: str, args: tuple[Any, ...] = ()) -> None:
    db = sqlite3.connect(out / STORE_FILENAME)
    try:
        db.execute(sql, args)
        db.commit()
    finally:
        db.close()


def _read(out: Path) -> tuple[Committed, bytes]:
    store = RunStore.open_readonly(out / STORE_FILENAME)
    try:
        return store.committed(), store.ledger_bytes()
    finally:
        store.close()


def _refusal(out: Path, monkeypatch: pytest.MonkeyPatch) -> StoreInconsistentError:
    """Resume ``out``; it must refuse before writing anything."""
    monkeypatch.setattr(recorder_module, "plot_accuracy", lambda *a, **k: None)
    before = _read(out), (out / LEDGER_FILENAME).read_bytes()
    with pytest.raises(StoreInconsistentError) as caught:
        resume_simulation(out)
    assert (_read(out), (out / LEDGER_FILENAME).read_bytes()) == before
    return caught.value


def _violations(out: Path, rule: StoreRule) -> list[str]:
    report = audit_run(out)
    assert report["exit_code"] == 1, report["verdict"]
    return [v for v in report["violations"] if rule.value in v]


def test_untouched_run_is_consistent(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    committed, ledger = _read(run)
    assert store_problems(committed, ledger) == []
    assert committed.in_flight == 2
    assert audit_run(run)["exit_code"] == 0


def test_a_reset_accountant_is_refused_naming_client_round_rule(
        run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attack: zero client 2's history in ``state.clients``."""
    (clients,) = sqlite3.connect(run / STORE_FILENAME).execute(
        "SELECT clients FROM state").fetchone()
    state = json.loads(clients)
    assert state["2"]["history"]
    state["2"]["history"] = []
    _sql(run, "UPDATE state SET clients = ? WHERE id = 1", (json.dumps(state),))
    error = _refusal(run, monkeypatch)
    assert (error.rule, error.client_id, error.round) == (StoreRule.HISTORY_MISMATCH, 2, 1)
    assert any("client 2" in v for v in _violations(run, StoreRule.HISTORY_MISMATCH))


def test_a_cleared_in_flight_mark_is_refused_and_flagged(
        run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attack: clear ``state.in_flight`` so round 2's charge is not settled."""
    _sql(run, "UPDATE state SET in_flight = NULL WHERE id = 1")
    error = _refusal(run, monkeypatch)
    assert (error.rule, error.round) == (StoreRule.IN_FLIGHT_MISMATCH, 2)
    assert _violations(run, StoreRule.IN_FLIGHT_MISMATCH)


def test_an_in_flight_mark_without_a_block_is_refused(
        run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attack: cut round 2's in-flight block off the store's ledger (and
    ``ledger.jsonl``), keep everything else: the state head shows it."""
    _, ledger = _read(run)
    lines = ledger.split(b"\n")[:-1]
    keep = max(i for i, line in enumerate(lines) if b'"stage":"settled"' in line) + 1
    _sql(run, "DELETE FROM ledger WHERE seq >= ?", (keep,))
    (run / LEDGER_FILENAME).write_bytes(b"".join(x + b"\n" for x in lines[:keep]))
    error = _refusal(run, monkeypatch)
    assert {p.rule for p in error.problems} >= {StoreRule.HEAD_MISMATCH,
                                                StoreRule.IN_FLIGHT_MISMATCH}
    assert _violations(run, StoreRule.HEAD_MISMATCH)


def test_truncating_the_store_ledger_at_any_line_boundary_fails(run: Path) -> None:
    """Every proper prefix of whole lines of the store's ledger (a cut at
    each line boundary) disagrees with the state row."""
    committed, ledger = _read(run)
    lines = ledger.split(b"\n")[:-1]
    assert len(lines) > 8
    for keep in range(1, len(lines)):
        prefix = b"".join(x + b"\n" for x in lines[:keep])
        assert store_problems(committed, prefix), keep


@pytest.mark.parametrize(("key", "value", "rule_field"), [
    ("epsilon_budget", 2000.0, "epsilon_budget"),
    ("delta", 1e-3, "delta"),
    ("weighting", "examples", "weighting"),
    ("insecure_reproducible_noise", True, "noise_source"),
    ("noise_multiplier", 0.5, "noise_multiplier"),
    ("secure", False, "secure_aggregation"),
])
def test_a_run_config_that_disagrees_with_the_ledger_is_refused(
        run: Path, monkeypatch: pytest.MonkeyPatch, key: str, value: Any,
        rule_field: str) -> None:
    """Attack: edit ``meta.config`` (what a resume runs under)."""
    (raw,) = sqlite3.connect(run / STORE_FILENAME).execute(
        "SELECT value FROM meta WHERE key = 'config'").fetchone()
    config = json.loads(raw)
    assert config[key] != value
    config[key] = value
    _sql(run, "UPDATE meta SET value = ? WHERE key = 'config'", (json.dumps(config),))
    error = _refusal(run, monkeypatch)
    assert error.rule is StoreRule.CONFIG_MISMATCH
    assert any(rule_field in str(p) for p in error.problems)
    if rule_field not in ("noise_multiplier", "secure_aggregation"):  # resume-only checks
        assert _violations(run, StoreRule.CONFIG_MISMATCH)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(client=st.integers(1, 3), steps=st.integers(-5, 5).filter(bool),
       drop=st.booleans())
def test_any_edit_of_a_client_history_is_found(run: Path, client: int, steps: int,
                                              drop: bool) -> None:
    """Property: removing a client's history row or changing its steps by
    any non-zero amount is found, naming that client and the history rule."""
    committed, ledger = _read(run)
    clients = {cid: dict(state) for cid, state in committed.clients.items()}
    history = [list(r) for r in clients[client]["history"]]
    if drop:
        history = history[:-1]
    else:
        history[-1][2] = max(0, int(history[-1][2]) + steps)
        if history == committed.clients[client]["history"]:
            history[-1][2] += 1
    clients[client]["history"] = history
    edited = Committed(round=committed.round, in_flight=committed.in_flight,
                       checkpoint=committed.checkpoint, clients=clients,
                       driver=committed.driver, wall=committed.wall, head=committed.head)
    problems = store_problems(edited, ledger)
    assert [(p.rule, p.client_id) for p in problems] == [(StoreRule.HISTORY_MISMATCH, client)]


def test_a_damaged_store_is_kept_and_refused(run: Path) -> None:
    """A run.sqlite whose header is overwritten is neither 'uninitialised'
    (deletable) nor readable: a fresh run refuses and keeps it; the audit
    reports it instead of falling back to ledger.jsonl."""
    store = run / STORE_FILENAME
    for suffix in ("-wal", "-shm"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    raw = bytearray(store.read_bytes())
    raw[:16] = b"not a database!\x00"
    store.write_bytes(bytes(raw))
    with pytest.raises(RunStoreError):
        RunStore.is_initialised(store)
    with pytest.raises(RunStoreError):
        RunStore.remove_uninitialised(store)
    with pytest.raises(SecureFLError):
        run_simulation(CONFIG, run)
    assert store.read_bytes() == bytes(raw)
    report = audit_run(run)
    assert report["exit_code"] == 1
    assert any(STORE_FILENAME in v and "cannot be read" in v for v in report["violations"])


def test_an_empty_database_is_uninitialised_and_removable(tmp_path: Path) -> None:
    """A store whose creation never committed (a clean database with no
    table) is still recognised as uninitialised and may be removed."""
    path = tmp_path / STORE_FILENAME
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.close()
    assert RunStore.is_initialised(path) is False
    RunStore.remove_uninitialised(path)
    assert not path.exists()


def test_one_writer_per_store(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second writer (a resume while the store is open for writing) is
    refused with StoreLockedError; readers (the audit) are not blocked; the
    lock is released on close."""
    writer = RunStore.open(run / STORE_FILENAME)
    try:
        with pytest.raises(StoreLockedError):
            RunStore.open(run / STORE_FILENAME)
        monkeypatch.setattr(recorder_module, "plot_accuracy", lambda *a, **k: None)
        with pytest.raises(StoreLockedError):
            resume_simulation(run)
        assert audit_run(run)["exit_code"] == 0
    finally:
        writer.close()
    RunStore.open(run / STORE_FILENAME).close()


def test_a_deleted_store_that_the_exports_record_fails(run: Path) -> None:
    """Attack: delete run.sqlite (and its WAL) and cut round 2's trailing
    in-flight block off ledger.jsonl: the ledger alone verifies, but
    metrics.json and checkpoint.pt record that the run has a store."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{run / STORE_FILENAME}{suffix}").unlink(missing_ok=True)
    lines = (run / LEDGER_FILENAME).read_bytes().split(b"\n")[:-1]
    keep = max(i for i, line in enumerate(lines) if b'"stage":"settled"' in line) + 1
    (run / LEDGER_FILENAME).write_bytes(b"".join(x + b"\n" for x in lines[:keep]))
    report = audit_run(run)
    assert report["exit_code"] == 1, report["verdict"]
    assert any("metrics.json and checkpoint.pt" in v and "missing" in v
               for v in report["violations"]), report["violations"]


def test_an_edited_store_ledger_is_refused(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Attack: lower a settled row's steps in the store's ledger and in
    ledger.jsonl alike (no digest recomputed): the chain breaks, and the
    resume refuses before restoring anything."""
    _, ledger = _read(run)
    lines = ledger.split(b"\n")[:-1]
    seq = next(i for i, line in enumerate(lines)
               if b'"type":"row"' in line and b'"status":"included"' in line)
    edited = re.sub(rb'"local_steps":\d+', b'"local_steps":1', lines[seq], count=1)
    assert edited != lines[seq] and json.loads(edited)["local_steps"] == 1
    _sql(run, "UPDATE ledger SET line = ? WHERE seq = ?", (edited, seq))
    lines[seq] = edited
    (run / LEDGER_FILENAME).write_bytes(b"".join(x + b"\n" for x in lines))
    error = _refusal(run, monkeypatch)
    assert error.rule is StoreRule.CHAIN_BROKEN
    assert audit_run(run)["exit_code"] == 1


def test_the_command_line_resume_refuses_with_the_rule(
        run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``securefl simulate --resume`` of a store whose in-flight mark was
    cleared exits 2, naming the round and the rule, and trains nothing."""
    from securefl.cli import main

    _sql(run, "UPDATE state SET in_flight = NULL WHERE id = 1")
    before = _read(run)
    assert main(["simulate", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert StoreRule.IN_FLIGHT_MISMATCH.value in err and "round 2" in err
    assert _read(run) == before
