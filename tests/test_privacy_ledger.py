"""The privacy ledger: its rows agree with Opacus's own accountants, record
every client that spent privacy (entered_sum or not), and are written
append-only and atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from opacus.accountants import PRVAccountant, RDPAccountant

from securefl.errors import SecureFLError
from securefl.federation.simulation import SimulationConfig, SimulationResult, run_simulation
from securefl.privacy.ledger import (
    LEDGER_FILENAME,
    LedgerEntry,
    Participation,
    PrivacyLedger,
    read_ledger,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> SimulationResult:
    out = tmp_path_factory.mktemp("ledger-run")
    config = SimulationConfig(num_clients=4, rounds=3, dropout=0.4, noise_multiplier=1.1,
                              seed=1, hidden=16)
    return run_simulation(config, out)


def test_one_row_per_client_per_round(run: SimulationResult) -> None:
    rows = read_ledger(run.output_dir / LEDGER_FILENAME)
    assert [(r.round, r.client_id) for r in rows] == [
        (rnd, cid) for rnd in (1, 2, 3) for cid in (1, 2, 3, 4)]
    lines = (run.output_dir / LEDGER_FILENAME).read_text().splitlines()
    assert all(json.loads(line)["delta"] == 1e-5 for line in lines)


def test_rows_agree_with_opacus_accountants(run: SimulationResult) -> None:
    rows = read_ledger(run.output_dir / LEDGER_FILENAME)
    for client in run.clients:
        mine = [r for r in rows if r.client_id == client.client_id]
        steps = 0
        for row in mine:
            steps += row.local_steps
            assert row.noise_multiplier == client.noise_multiplier
            assert row.sample_rate == client.sample_rate
            assert row.history == [[client.noise_multiplier, client.sample_rate, steps]]
            rdp = RDPAccountant()
            rdp.history = [tuple(h) for h in row.history]
            prv = PRVAccountant()
            prv.history = [tuple(h) for h in row.history]
            assert row.epsilon_rdp == pytest.approx(rdp.get_epsilon(row.delta), rel=1e-9)
            assert row.epsilon_prv == pytest.approx(prv.get_epsilon(row.delta), rel=1e-9)
        # the final row is exactly what the client's own PrivacyEngine says
        assert mine[-1].epsilon_rdp == pytest.approx(
            client.accountant.get_epsilon(delta=1e-5), rel=1e-9)
        assert [tuple(h) for h in mine[-1].history] == client.history
        # epsilon never decreases
        eps = [r.epsilon_rdp for r in mine]
        assert eps == sorted(eps)


def test_entered_sum_matches_the_survivors(run: SimulationResult) -> None:
    rows = read_ledger(run.output_dir / LEDGER_FILENAME)
    for report in run.rounds:
        mine = [r for r in rows if r.round == report.round]
        assert {r.client_id for r in mine if r.entered_sum} == set(report.survivors)
        for row in mine:
            assert row.survivors == len(report.survivors)
            # every client trained this round and spent privacy, in the sum or not
            assert row.local_steps > 0
            if not row.entered_sum:
                assert row.status in (Participation.DROPPED.value,
                                      Participation.ROUND_ABORTED.value)
                assert row.dropped_at is not None or row.status == "round-aborted"
    assert any(not r.entered_sum for r in rows), "the fixture should include a dropout"


def _entry(round_: int, cid: int, eps: float = 1.0) -> LedgerEntry:
    return LedgerEntry(round=round_, client_id=cid, status="included", entered_sum=True,
                       noise_multiplier=1.0, sample_rate=0.1, local_steps=10, delta=1e-5,
                       epsilon_rdp=eps, epsilon_prv=eps * 0.9, accountant="rdp",
                       epsilon_budget=8.0, survivors=2, history=[[1.0, 0.1, 10 * round_]])


def test_append_only_and_atomic(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / LEDGER_FILENAME)
    ledger.append([_entry(1, 1), _entry(1, 2)])
    first = ledger.path.read_bytes()
    ledger.append([])
    assert ledger.path.read_bytes() == first
    ledger.append([_entry(2, 1, 2.0)])
    second = ledger.path.read_bytes()
    assert second.startswith(first) and second.count(b"\n") == 3
    assert [e.round for e in ledger.read()] == [1, 1, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == [LEDGER_FILENAME]  # no temp files


def test_a_failed_write_leaves_the_ledger_unchanged(tmp_path: Path, monkeypatch) -> None:
    ledger = PrivacyLedger(tmp_path / LEDGER_FILENAME)
    ledger.append([_entry(1, 1)])
    before = ledger.path.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("securefl.privacy.ledger.os.replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        ledger.append([_entry(2, 1)])
    assert ledger.path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [LEDGER_FILENAME]


def test_round_trip_and_malformed_rows(tmp_path: Path) -> None:
    entry = _entry(3, 9, math.inf)
    assert LedgerEntry.from_json(entry.to_json()) == entry
    assert entry.over_budget
    path = tmp_path / "bad.jsonl"
    path.write_text(_entry(1, 1).to_json() + "\n{\"round\": 2}\n")
    with pytest.raises(SecureFLError, match="line 2"):
        read_ledger(path)
