"""The one round recorder: the run store is the one place that says which
round is committed, and ledger.jsonl, checkpoint.pt and metrics.json are its
exports; a semi-honest run never reports a round that mode does not have."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from securefl.errors import ConfigurationError
from securefl.federation.round import RoundRecorder
from securefl.federation.runstore import (
    STORE_FILENAME,
    ResumeMismatchError,
    RunStore,
    RunStoreError,
)
from securefl.federation.simulation import (
    SimulationConfig,
    SimulationResult,
    dropout_schedule,
    resume_simulation,
    run_simulation,
)
from securefl.privacy.ledger import load_ledger
from securefl.protocol import Round, SecAggConfig, SecurityMode, secure_sum

torch.set_num_threads(1)

CONFIG = SimulationConfig(num_clients=3, rounds=2, dropout=0.3, noise_multiplier=1.0,
                          epsilon_budget=50.0, seed=0, hidden=8)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> SimulationResult:
    return run_simulation(CONFIG, tmp_path_factory.mktemp("round") / "run")


def test_the_exports_are_the_store(run: SimulationResult) -> None:
    out = run.output_dir
    store = RunStore.open(out / STORE_FILENAME)
    try:
        committed = store.committed()
        assert committed.round == CONFIG.rounds and committed.in_flight is None
        assert (out / "ledger.jsonl").read_bytes() == store.ledger_bytes()
        assert (out / "checkpoint.pt").read_bytes() == committed.checkpoint
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["ledger"] == {"round": CONFIG.rounds,
                                     "head": load_ledger(out / "ledger.jsonl").head}
        assert [r["round"] for r in metrics["rounds"]] == [1, 2]
        assert metrics["final"] == json.loads(json.dumps(store.final))
        # every client's accountant history is committed with the round
        for client in run.clients:
            assert committed.clients[client.client_id]["history"] == [
                list(r) for r in client.history]
        assert committed.driver == {"schedule_position": CONFIG.rounds}
        assert store.config == CONFIG.to_json()
    finally:
        store.close()
    assert not list(out.glob(".*.tmp"))


def test_a_run_directory_belongs_to_one_run(run: SimulationResult) -> None:
    with pytest.raises(ConfigurationError, match="resume it"):
        run_simulation(CONFIG, run.output_dir)
    with pytest.raises(RunStoreError):
        RoundRecorder.stored_config(run.output_dir / "nowhere")


def test_a_resume_with_another_configuration_is_refused(run: SimulationResult) -> None:
    other = replace(CONFIG, rounds=5, seed=1)
    with pytest.raises(ResumeMismatchError) as caught:
        run_simulation(other, run.output_dir, resume=True)
    assert caught.value.keys == ("rounds", "seed")
    assert "rounds: run 2, given 5" in str(caught.value)
    # nothing was touched: the run is still at its last round
    store = RunStore.open(run.output_dir / STORE_FILENAME)
    try:
        assert store.committed().round == CONFIG.rounds
    finally:
        store.close()


@pytest.mark.parametrize("seed", range(6))
def test_semi_honest_schedules_have_no_consistency_round(seed: int) -> None:
    config = SimulationConfig(num_clients=8, rounds=4, dropout=1.0, noise_multiplier=1.0,
                              seed=seed)
    semi = dropout_schedule(config)
    active = dropout_schedule(config, SecurityMode.ACTIVE)
    assert all(where is not Round.CONSISTENCY_CHECK for drops in semi
               for where in drops.values())
    # the same draws: a drop drawn at CONSISTENCY_CHECK is one at UNMASKING
    for s, a in zip(semi, active, strict=True):
        assert s == {cid: Round.UNMASKING if where is Round.CONSISTENCY_CHECK else where
                     for cid, where in a.items()}


def test_a_semi_honest_drop_at_consistency_is_a_drop_at_unmasking() -> None:
    """Why the mapping changes no figure: secure_sum gives the same
    survivors and the same sum for either."""
    config = SecAggConfig(num_clients=4, vector_length=3, bits=16)
    rng = np.random.default_rng(3)
    inputs = {c: rng.integers(0, 2**16, size=3, dtype=np.uint64) for c in range(1, 5)}
    results = [secure_sum(inputs, config, {2: where})
               for where in (Round.CONSISTENCY_CHECK, Round.UNMASKING)]
    assert results[0].survivors == results[1].survivors
    assert np.array_equal(results[0].total, results[1].total)


def test_a_semi_honest_run_reports_no_consistency_drop(run: SimulationResult) -> None:
    dropped = [where for report in run.rounds for where in report.dropped.values()]
    assert dropped and "CONSISTENCY_CHECK" not in dropped


def test_start_up_cleans_what_a_crash_left(run: SimulationResult, tmp_path: Path) -> None:
    """A store whose creation never committed (killed while creating it:
    nothing ran) is replaced, and stray temporaries of interrupted atomic
    writes are deleted, at start-up and on resume."""
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / STORE_FILENAME).write_bytes(b"")  # created, never committed
    (fresh / ".checkpoint.pt-x1y2.tmp").write_bytes(b"half a checkpoint")
    result = run_simulation(replace(CONFIG, rounds=1), fresh)
    assert [r.round for r in result.rounds] == [1]
    assert not list(fresh.glob(".*.tmp"))
    # on resume (of a finished run: nothing left to run) the same, and the
    # exports are rewritten from the store
    copy = tmp_path / "copy"
    shutil.copytree(run.output_dir, copy)
    (copy / ".metrics.json-abcd.tmp").write_bytes(b"{")
    (copy / "metrics.json").unlink()
    resumed = resume_simulation(copy)
    assert [r.round for r in resumed.rounds] == [1, 2]
    assert not list(copy.glob(".*.tmp"))
    metrics = json.loads((copy / "metrics.json").read_text())
    assert [r["round"] for r in metrics["rounds"]] == [1, 2] and metrics["final"] is not None


def test_resume_refuses_a_ledger_export_that_was_edited(run: SimulationResult,
                                                        tmp_path: Path) -> None:
    """ledger.jsonl may lag the store after a crash, never differ from it: a
    resume does not paper over an edit by re-exporting."""
    copy = tmp_path / "edited"
    shutil.copytree(run.output_dir, copy)
    data = (copy / "ledger.jsonl").read_bytes()
    (copy / "ledger.jsonl").write_bytes(data.replace(b'"status":"included"',
                                                     b'"status":"dropped"', 1))
    with pytest.raises(RunStoreError, match="differs from the run store's ledger at line"):
        resume_simulation(copy)
    assert (copy / "ledger.jsonl").read_bytes() != data  # left as found, for the auditor
