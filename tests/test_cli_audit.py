"""``securefl audit``: catches clients over budget and ledgers whose recorded
epsilon does not match the recorded history; cross-checks with dp-accounting."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from securefl.cli import main
from securefl.privacy.accounting import AccountantKind, epsilon, epsilon_dp_accounting
from securefl.privacy.ledger import LedgerEntry, PrivacyLedger


def _row(round_: int, cid: int, sigma: float, budget: float | None = 8.0) -> LedgerEntry:
    history = [[sigma, 0.2, 5 * round_]]
    return LedgerEntry(
        round=round_, client_id=cid, status="included", entered_sum=True,
        noise_multiplier=sigma, sample_rate=0.2, local_steps=5, delta=1e-5,
        epsilon_rdp=epsilon(history, 1e-5, AccountantKind.RDP),
        epsilon_prv=epsilon(history, 1e-5, AccountantKind.PRV), accountant="rdp",
        epsilon_budget=budget, survivors=2, history=history)


def _write(tmp_path: Path, rows: list[LedgerEntry]) -> Path:
    PrivacyLedger(tmp_path / "ledger.jsonl").append(rows)
    return tmp_path


def test_audit_passes_and_cross_checks(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    run = _write(tmp_path, [_row(r, c, 1.5) for r in (1, 2) for c in (1, 2)])
    assert main(["audit", str(run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["over_budget"] == [] and report["inconsistent"] == []
    for client in report["clients"]:
        history = [[1.5, 0.2, 10]]
        assert client["epsilon_dp_accounting"] == pytest.approx(
            epsilon_dp_accounting(history, 1e-5))
        assert client["epsilon_rdp"] == pytest.approx(client["epsilon_rdp_recomputed"])
        # two independent accountants agree closely
        assert client["epsilon_dp_accounting"] == pytest.approx(client["epsilon_rdp"], rel=0.02)
    assert [r["survivors"] for r in report["rounds"]] == [2, 2]
    assert (run / "epsilon_per_round.png").exists()


def test_audit_fails_on_a_client_over_budget(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    rows = [_row(1, 1, 1.5), _row(1, 2, 0.5), _row(2, 1, 1.5), _row(2, 2, 0.5)]
    assert rows[-1].epsilon_rdp > 8.0
    run = _write(tmp_path, rows)
    assert main(["audit", str(run), "--no-plot"]) == 1
    text = capsys.readouterr().out
    assert "FAIL: clients over budget: [2]" in text
    assert "OVER BUDGET" in text


def test_audit_fails_when_a_recorded_epsilon_was_altered(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [_row(1, 1, 1.5), _row(1, 2, 1.5)]
    rows[1] = replace(rows[1], epsilon_rdp=rows[1].epsilon_rdp / 2)
    run = _write(tmp_path, rows)
    assert main(["audit", str(run), "--json", "--no-plot"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["inconsistent"] == [2] and report["over_budget"] == []


def test_audit_without_a_ledger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", str(tmp_path)]) == 2
    assert "no ledger" in capsys.readouterr().err
