"""The privacy ledger: its rows agree with Opacus's own accountants, record
every client that spent privacy (entered_sum or not), charge every client
before it trains, and are written as fsynced, hash-chained blocks."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant

from securefl.errors import SecureFLError
from securefl.federation.simulation import SimulationConfig, SimulationResult, run_simulation
from securefl.privacy.ledger import (
    LEDGER_FILENAME,
    LedgerEntry,
    Participation,
    PrivacyLedger,
    load_ledger,
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
    assert all(json.loads(line)["delta"] == 1e-5 for line in lines
               if json.loads(line)["type"] == "row")
    chain = load_ledger(run.output_dir / LEDGER_FILENAME)
    assert chain.ok and not chain.torn_tail
    # each round: an in-flight block (everyone trains here), then a settled one
    assert [(c.round, c.stage, c.rows) for c in chain.commits] == [
        (rnd, stage, 4) for rnd in (1, 2, 3) for stage in ("in-flight", "settled")]
    for flight, settled in zip([r for r in chain.records if r.in_flight],
                               [r for r in chain.records if not r.in_flight], strict=True):
        assert (flight.round, flight.client_id) == (settled.round, settled.client_id)
        assert flight.history == settled.history and flight.local_steps == settled.local_steps


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


def _entry(round_: int, cid: int, eps: float = 1.0, status: str = "included") -> LedgerEntry:
    return LedgerEntry(round=round_, client_id=cid, status=status,
                       entered_sum=status == "included", noise_multiplier=1.0, sample_rate=0.1,
                       local_steps=10, delta=1e-5, epsilon_rdp=eps, epsilon_prv=eps * 0.9,
                       accountant="rdp", epsilon_budget=8.0, survivors=2,
                       history=[[1.0, 0.1, 10 * round_]])


def test_blocks_are_appended_and_chained(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / LEDGER_FILENAME)
    ledger.begin_round(1, [_entry(1, 1, status="in-flight"), _entry(1, 2, status="in-flight")])
    first = ledger.path.read_bytes()
    ledger.settle_round(1, [_entry(1, 1), _entry(1, 2)])
    second = ledger.path.read_bytes()
    assert second.startswith(first) and second.count(b"\n") == 1 + 3 + 3
    chain = load_ledger(ledger.path)
    assert chain.ok and chain.head == ledger.head and chain.last_settled_round == 1
    assert [e.status for e in ledger.read()] == ["included", "included"]
    # a new writer continues the chain of an existing ledger
    PrivacyLedger(ledger.path).append([_entry(2, 1, 2.0)])
    assert load_ledger(ledger.path).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == [LEDGER_FILENAME]  # no temp files
    with pytest.raises(SecureFLError, match="in-flight rows"):
        ledger.begin_round(3, [_entry(3, 1)])
    with pytest.raises(SecureFLError, match="already exists"):
        PrivacyLedger(ledger.path).create()


def test_an_unsettled_in_flight_row_is_charged(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / LEDGER_FILENAME)
    ledger.settle_round(1, [_entry(1, 1)])
    ledger.begin_round(2, [_entry(2, 1, 2.0, status="in-flight")])
    rows = read_ledger(ledger.path)
    assert [(r.round, r.status, r.local_steps) for r in rows] == [
        (1, "included", 10), (2, "in-flight", 10)]


def test_a_torn_write_is_recognised_and_never_appended_to(tmp_path: Path) -> None:
    ledger = PrivacyLedger(tmp_path / LEDGER_FILENAME)
    ledger.settle_round(1, [_entry(1, 1)])
    whole = ledger.path.read_bytes()
    with open(ledger.path, "ab") as handle:
        handle.write(b'{"type":"row","round":2,"cli')
    chain = load_ledger(ledger.path)
    assert chain.torn_tail and chain.ok and chain.last_settled_round == 1
    assert read_ledger(ledger.path) == [_entry(1, 1)]
    with pytest.raises(SecureFLError, match="torn write"):
        PrivacyLedger(ledger.path).append([_entry(2, 1)])
    assert ledger.path.read_bytes().startswith(whole)


def test_a_failed_write_is_never_continued(tmp_path: Path, monkeypatch) -> None:
    ledger = PrivacyLedger(tmp_path / LEDGER_FILENAME)
    ledger.settle_round(1, [_entry(1, 1)])
    real_write = os.write

    def half_then_full_disk(fd: int, data: bytes) -> int:
        real_write(fd, bytes(data[:len(data) // 2]))
        raise OSError("no space left on device")

    monkeypatch.setattr("securefl.privacy.ledger.os.write", half_then_full_disk)
    with pytest.raises(OSError, match="no space"):
        ledger.settle_round(2, [_entry(2, 1, 2.0)])
    monkeypatch.undo()
    assert load_ledger(ledger.path).torn_tail
    with pytest.raises(SecureFLError, match="torn write"):  # the same writer refuses too
        ledger.settle_round(2, [_entry(2, 1, 2.0)])


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_any_truncation_edit_removal_or_swap_is_detected(data: st.DataObject) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ledger = PrivacyLedger(Path(tmp) / LEDGER_FILENAME)
        for rnd in (1, 2):
            ledger.begin_round(rnd, [_entry(rnd, c, status="in-flight") for c in (1, 2)])
            ledger.settle_round(rnd, [_entry(rnd, c, float(rnd)) for c in (1, 2)])
        lines = ledger.path.read_bytes().splitlines(keepends=True)
        i = data.draw(st.integers(0, len(lines) - 1))
        op = data.draw(st.sampled_from(["truncate", "remove", "swap", "edit"]))
        if op == "truncate":  # keep lines[:i]: the last commit is always lost
            variant = lines[:i]
        elif op == "remove":
            variant = lines[:i] + lines[i + 1:]
        elif op == "swap":
            j = data.draw(st.integers(0, len(lines) - 1).filter(lambda j: lines[j] != lines[i]))
            variant = list(lines)
            variant[i], variant[j] = variant[j], variant[i]
        else:
            position = data.draw(st.integers(0, len(lines[i]) - 2))
            byte = data.draw(st.integers(32, 126).filter(lambda b: b != lines[i][position]))
            variant = list(lines)
            variant[i] = lines[i][:position] + bytes([byte]) + lines[i][position + 1:]
        ledger.path.write_bytes(b"".join(variant))
        chain = load_ledger(ledger.path)
        if op == "truncate":
            # a prefix that ends at a commit verifies as a chain: what exposes it
            # is the settled round, which the audit checks against the checkpoint
            assert not chain.ok or chain.last_settled_round < 2
        else:
            assert not chain.ok


def test_round_trip_and_malformed_rows(tmp_path: Path) -> None:
    entry = _entry(3, 9, math.inf)
    assert LedgerEntry.from_json(entry.to_json()) == entry
    assert '"inf"' in entry.to_json() and "Infinity" not in entry.to_json()
    assert entry.over_budget
    with pytest.raises(SecureFLError, match="not a valid ledger row"):
        LedgerEntry.from_json('{"round": 2}')
    with pytest.raises(SecureFLError, match="not a valid ledger row"):
        LedgerEntry.from_json(entry.to_json().replace('"inf"', "Infinity"))
    with pytest.raises(SecureFLError, match="local_steps must be an integer"):
        LedgerEntry.from_json(entry.to_json().replace('"local_steps": 10', '"local_steps": "10"'))
    with pytest.raises(SecureFLError, match="history must be"):
        LedgerEntry.from_json(entry.to_json().replace("[[1.0, 0.1, 30]]", "[[1.0, 0.1]]"))
    path = tmp_path / "bad.jsonl"
    ledger = PrivacyLedger(path)
    ledger.settle_round(1, [_entry(1, 1)])
    with open(path, "ab") as handle:
        handle.write(b"{not json\n")
    with pytest.raises(SecureFLError, match="line 4"):
        read_ledger(path)
