"""Review (crash/resume): a run directory whose run store was tampered with.

The run store (``run.sqlite``) holds, besides the hash-chained ledger, a
``state`` row: the committed round, the round in flight and every client's
accountant history.  ``securefl simulate --resume`` restores each client's
accountant from ``state.clients`` and decides from ``state.in_flight``
whether a round was caught in flight; ``securefl audit`` verifies only the
store's ledger.  These tests edit the store the way an operator who wants a
lower spend could (small SQL edits, no hash recomputed) and check that the
audit detects it or the resume refuses it, before any client trains again
with a reset accountant.

Runs are interrupted in-process (the crash point raises instead of sending
SIGKILL: the store is exactly what a SIGKILL leaves, since every commit it
holds returned before the raise), so the file needs no subprocess.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import securefl.federation.round as recorder_module
import securefl.federation.runstore as runstore_module
import securefl.federation.simulation as simulation_module
from securefl.cli.audit import audit_run
from securefl.errors import SecureFLError
from securefl.federation.runstore import STORE_FILENAME, RunStore
from securefl.federation.simulation import SimulationConfig, resume_simulation, run_simulation
from securefl.privacy.accounting import epsilons_for
from securefl.privacy.ledger import LEDGER_FILENAME, load_ledger

BASE = SimulationConfig(num_clients=3, rounds=3, dropout=0.0, noise_multiplier=1.0,
                        epsilon_budget=200.0, seed=0, hidden=8, local_epochs=1)
STEPS = BASE.dp_config().steps_per_round


class _Killed(BaseException):
    """Stands for the SIGKILL at a crash point."""


def _budget_config() -> SimulationConfig:
    """Three rounds, a budget that affords exactly two by every accountant."""
    def worst(rounds: int) -> float:
        eps = epsilons_for([(1.0, BASE.sample_rate, rounds * STEPS)], BASE.delta,
                           "add-remove-one")
        return max(eps.values())

    return SimulationConfig(**{**BASE.to_json(),
                               "epsilon_budget": (worst(2) + worst(3)) / 2})


def _interrupted(monkeypatch: pytest.MonkeyPatch, out: Path, config: SimulationConfig,
                 point: str) -> None:
    """Run ``config`` in ``out`` until the crash point ``point``
    (``NAME:ROUND``), where the process 'dies'."""
    def crash_point(name: str, round_number: int) -> None:
        if f"{name}:{round_number}" == point:
            raise _Killed(point)

    with monkeypatch.context() as patch:
        for module in (recorder_module, runstore_module, simulation_module):
            patch.setattr(module, "crash_point", crash_point)
        patch.setattr(recorder_module, "plot_accuracy", lambda *a, **k: None)
        with pytest.raises(_Killed):
            run_simulation(config, out)


@pytest.fixture(scope="module")
def after_round_two(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run whose budget affords two rounds, killed right after round 2
    committed (every client's budget is now exhausted)."""
    out = tmp_path_factory.mktemp("tamper") / "after-round-2"
    with pytest.MonkeyPatch.context() as patch:
        _interrupted(patch, out, _budget_config(), "after-commit:2")
    return out


@pytest.fixture(scope="module")
def in_flight_two(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run killed with round 2 in flight (every client charged for it)."""
    out = tmp_path_factory.mktemp("tamper") / "in-flight-2"
    with pytest.MonkeyPatch.context() as patch:
        _interrupted(patch, out, BASE, "mid-training:2")
    return out


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


def _sql(out: Path, *statements: tuple[str, tuple[Any, ...]]) -> None:
    db = sqlite3.connect(out / STORE_FILENAME)
    try:
        for sql, args in statements:
            db.execute(sql, args)
        db.commit()
    finally:
        db.close()


def _resume_quietly(monkeypatch: pytest.MonkeyPatch, out: Path) -> None:
    monkeypatch.setattr(recorder_module, "plot_accuracy", lambda *a, **k: None)
    resume_simulation(out)


def _trained_after(out: Path, number: int) -> dict[int, int]:
    """Client id -> steps it trained in rounds after ``number`` (store ledger)."""
    store = RunStore.open_readonly(out / STORE_FILENAME)
    try:
        data = store.ledger_bytes()
    finally:
        store.close()
    chain = load_ledger_bytes(data)
    steps: dict[int, int] = {}
    for row in chain.committed:
        if row.round > number and not row.in_flight and row.local_steps > 0:
            steps[row.client_id] = steps.get(row.client_id, 0) + row.local_steps
    return steps


def load_ledger_bytes(data: bytes) -> Any:
    from securefl.privacy.ledger import parse_ledger

    return parse_ledger(data)


# -- sanity: untouched, the interrupted runs verify and the budget holds ----------------


def test_untouched_an_exhausted_client_stays_refused(after_round_two: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Confirms the claim: untouched, the killed run audits OK and the
    resume refuses every client in round 3 (their budget is spent)."""
    out = _copy(after_round_two, tmp_path)
    assert audit_run(out)["exit_code"] == 0
    _resume_quietly(monkeypatch, out)
    assert _trained_after(out, 2) == {}
    assert audit_run(out)["exit_code"] == 0


# -- HOLE: state.clients is trusted -----------------------------------------------------


def _reset_client_one(out: Path) -> None:
    """Zero client 1's accountant in ``state.clients`` (one UPDATE; the
    ledger, its chain and every export are left as they are)."""
    db = sqlite3.connect(out / STORE_FILENAME)
    try:
        (clients,) = db.execute("SELECT clients FROM state").fetchone()
    finally:
        db.close()
    state = json.loads(clients)
    assert state["1"]["history"], state
    state["1"]["history"] = []
    _sql(out, ("UPDATE state SET clients = ? WHERE id = 1", (json.dumps(state),)))


def test_audit_detects_a_client_history_in_the_store_that_the_ledger_contradicts(
        after_round_two: Path, tmp_path: Path) -> None:
    """HOLE (fails against 64e3bd0): ``state.clients`` (what resume restores
    every accountant from) says client 1 never spent anything, the ledger
    says it spent two rounds; ``securefl audit`` reads only the ledger and
    says OK, so a run directory primed to reset an accountant verifies."""
    out = _copy(after_round_two, tmp_path)
    _reset_client_one(out)
    report = audit_run(out)
    assert report["exit_code"] == 1, (
        "audit accepted a run store whose state.clients resets client 1's accountant"
        f" (verdict: {report['verdict']})")


def test_resume_refuses_a_client_history_in_the_store_that_the_ledger_contradicts(
        after_round_two: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HOLE (fails against 64e3bd0): the resume restores client 1's
    accountant from the edited ``state.clients`` (empty) instead of from the
    ledger, so client 1, whose budget was exhausted after round 2, trains
    again in round 3 -- its epsilon reset, its budget spent twice.  The
    resume must refuse before any client trains."""
    out = _copy(after_round_two, tmp_path)
    _reset_client_one(out)
    try:
        _resume_quietly(monkeypatch, out)
    except SecureFLError:
        assert _trained_after(out, 2) == {}
        return
    trained = _trained_after(out, 2)
    after = audit_run(out)
    pytest.fail(f"resume accepted the edited store: clients trained after round 2 with an"
                f" exhausted budget: {trained} steps; the audit now says {after['verdict']}")


# -- HOLE: state.in_flight is trusted ---------------------------------------------------


def test_resume_refuses_a_store_whose_in_flight_mark_was_cleared(
        in_flight_two: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HOLE (fails against 64e3bd0): round 2 is in flight (its rows charge
    every client); clearing ``state.in_flight`` (one UPDATE) makes the
    resume skip settling it and restore the accountants WITHOUT the charge,
    then train round 2 again from the lower history.  The audit of the
    edited directory said OK; only the audit after the fact sees two
    in-flight blocks of round 2.  The resume must refuse instead."""
    out = _copy(in_flight_two, tmp_path)
    _sql(out, ("UPDATE state SET in_flight = NULL WHERE id = 1", ()))
    before = audit_run(out)
    try:
        _resume_quietly(monkeypatch, out)
    except SecureFLError:
        return
    after = audit_run(out)
    pytest.fail("resume accepted a store whose in-flight mark was cleared (audit before:"
                f" {before['verdict']}; after: {after['verdict']}: {after['violations'][:1]})")


def _drop_in_flight_block(out: Path) -> None:
    """Delete round 2's in-flight rows and commit from the store's ledger and
    cut ``ledger.jsonl`` to the same prefix: a truncation at a line (and
    block) boundary; ``state`` is not touched."""
    store = RunStore.open_readonly(out / STORE_FILENAME)
    try:
        lines = store.ledger_lines()
    finally:
        store.close()
    last_settled = max(i for i, line in enumerate(lines)
                       if b'"type":"commit"' in line and b'"stage":"settled"' in line)
    assert len(lines) > last_settled + 1  # the in-flight block follows it
    _sql(out, ("DELETE FROM ledger WHERE seq > ?", (last_settled,)))
    (out / LEDGER_FILENAME).write_bytes(b"".join(x + b"\n" for x in lines[:last_settled + 1]))


def test_audit_detects_the_in_flight_block_cut_off_the_store(in_flight_two: Path,
                                                             tmp_path: Path) -> None:
    """HOLE (fails against 64e3bd0): docs/privacy-ledger.md says "Truncation
    at any line boundary ... fails".  Cutting the trailing in-flight block
    (the charge of a round whose clients trained) off the store's ledger and
    ``ledger.jsonl`` leaves a chain that ends in a settled commit, anchors
    that still match, and ``state.in_flight = 2`` pointing at nothing: the
    audit says OK and the charge is gone."""
    out = _copy(in_flight_two, tmp_path)
    assert audit_run(out)["clients"][0]["steps_in_flight_charged"] == STEPS
    _drop_in_flight_block(out)
    report = audit_run(out)
    assert report["exit_code"] == 1, (
        f"audit accepted a ledger whose in-flight block was cut off: {report['verdict']};"
        f" steps per client {[c['steps'] for c in report['clients']]}")


def test_resume_refuses_the_in_flight_block_cut_off_the_store(
        in_flight_two: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HOLE (fails against 64e3bd0): with the in-flight rows gone but the
    mark left, the resume settles round 2 as aborted with every client
    'refused-budget' and 0 steps: the round-2 charge vanishes from every
    accountant, and the final audit says OK."""
    out = _copy(in_flight_two, tmp_path)
    _drop_in_flight_block(out)
    try:
        _resume_quietly(monkeypatch, out)
    except SecureFLError:
        return
    chain = load_ledger(out / LEDGER_FILENAME)
    round_two = sorted({(r.status, r.local_steps) for r in chain.committed if r.round == 2})
    pytest.fail(f"resume accepted it: round 2 settled as {round_two}; final audit:"
                f" {audit_run(out)['verdict']}")


# -- confirmed claims -------------------------------------------------------------------


def test_a_store_rolled_back_under_a_newer_ledger_is_refused(
        in_flight_two: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Confirms: run.sqlite replaced by its state before round 2's in-flight
    block (the block deleted, the mark cleared) while ``ledger.jsonl`` keeps
    it: the audit fails (not a prefix) and the resume refuses."""
    out = _copy(in_flight_two, tmp_path)
    ledger = (out / LEDGER_FILENAME).read_bytes()
    _drop_in_flight_block(out)
    _sql(out, ("UPDATE state SET in_flight = NULL WHERE id = 1", ()))
    (out / LEDGER_FILENAME).write_bytes(ledger)
    assert audit_run(out)["exit_code"] == 1
    with pytest.raises(SecureFLError):
        _resume_quietly(monkeypatch, out)
    assert (out / LEDGER_FILENAME).read_bytes() == ledger


def test_resuming_a_finished_run_changes_no_spend(
        after_round_two: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Confirms: a finished run resumed again runs no round and keeps its
    ledger byte for byte; it still audits OK."""
    out = _copy(after_round_two, tmp_path)
    _resume_quietly(monkeypatch, out)
    ledger = (out / LEDGER_FILENAME).read_bytes()
    _resume_quietly(monkeypatch, out)
    assert (out / LEDGER_FILENAME).read_bytes() == ledger
    assert audit_run(out)["exit_code"] == 0


def test_resume_refuses_a_run_config_whose_budget_was_raised(
        after_round_two: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HOLE (fails against 64e3bd0): ``resume_simulation`` takes the run's
    configuration from the store's ``meta.config`` and checks it against
    nothing; raising ``epsilon_budget`` there (one UPDATE) lets every
    client, whose budget was exhausted after round 2, train round 3.  Every
    ledger row records the budget it was guarded by, so the resume can (and
    must) refuse a configuration whose budget disagrees with the ledger's."""
    out = _copy(after_round_two, tmp_path)
    db = sqlite3.connect(out / STORE_FILENAME)
    try:
        (raw,) = db.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()
    finally:
        db.close()
    config = json.loads(raw)
    config["epsilon_budget"] = config["epsilon_budget"] * 10
    _sql(out, ("UPDATE meta SET value = ? WHERE key = 'config'", (json.dumps(config),)))
    try:
        _resume_quietly(monkeypatch, out)
    except SecureFLError:
        assert _trained_after(out, 2) == {}
        return
    pytest.fail(f"resume accepted a raised budget: clients trained after round 2:"
                f" {_trained_after(out, 2)} steps; audit: {audit_run(out)['verdict']}")


def test_audit_notices_a_run_store_it_cannot_read(in_flight_two: Path, tmp_path: Path) -> None:
    """HOLE (fails against 64e3bd0): every commit of a tiny run lives in
    ``run.sqlite-wal`` (SQLite checkpoints it into ``run.sqlite`` only
    every 1000 pages), so a copy or backup without the ``-wal`` file holds
    an empty ``run.sqlite``.  The audit then silently falls back to
    ``ledger.jsonl`` alone, where cutting the trailing in-flight block (round
    2's charge) leaves a chain and anchors that verify: OK, with every
    client one round cheaper.  A run directory whose ``run.sqlite`` exists
    but holds no initialised store (or whose metrics say it has one) must not
    verify."""
    out = _copy(in_flight_two, tmp_path)
    lines = (out / LEDGER_FILENAME).read_bytes().split(b"\n")[:-1]
    last_settled = max(i for i, line in enumerate(lines)
                       if b'"type":"commit"' in line and b'"stage":"settled"' in line)
    # what a copy without the -wal of a SIGKILLed run holds (in-process, the
    # store was checkpointed when its connection closed): a WAL database
    # with no table
    (out / STORE_FILENAME).unlink()
    db = sqlite3.connect(out / STORE_FILENAME)
    db.execute("PRAGMA journal_mode=WAL")
    db.close()
    assert not RunStore.is_initialised(out / STORE_FILENAME)
    (out / LEDGER_FILENAME).write_bytes(b"".join(x + b"\n" for x in lines[:last_settled + 1]))
    report = audit_run(out)
    assert report["exit_code"] == 1, (
        f"audit ignored an unreadable run.sqlite and verified a ledger cut before its"
        f" in-flight block: {report['verdict']}")
