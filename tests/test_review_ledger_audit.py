"""Adversarial review of the privacy ledger and ``securefl audit`` (rev-ledger):
each test plays one attack that passed before its fix."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from securefl.cli.audit import EXIT_NO_BUDGET, audit_run
from securefl.privacy.accounting import epsilons
from securefl.privacy.ledger import LedgerEntry, PrivacyLedger


def _row(round_: int, cid: int, status: str, sigma: float, budget: float | None,
         steps: int = 4) -> LedgerEntry:
    history = [[sigma, 0.5, steps * round_]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eps = epsilons(history, 1e-5)
    return LedgerEntry(
        round=round_, client_id=cid, status=status, entered_sum=status == "included",
        noise_multiplier=sigma, sample_rate=0.5, local_steps=steps, delta=1e-5,
        epsilon_rdp=eps["opacus-rdp"], epsilon_prv=eps["opacus-prv"],
        epsilon_dpa_rdp=eps["dp-accounting-rdp"], epsilon_dpa_pld=eps["dp-accounting-pld"],
        accountant="rdp", epsilon_budget=budget,
        survivors=0 if status == "in-flight" else 2, history=history)


def test_one_client_without_a_budget_is_not_ok(tmp_path: Path) -> None:
    """Attack: a ledger written with the library's PrivacyLedger in which
    client 1 has a budget and client 2 none.  The audit said "OK ... every
    client stayed within its budget" (exit 0) while client 2's epsilon was
    45.6 with nothing bounding it; it must exit 3 and name client 2."""
    path = tmp_path / "ledger.jsonl"
    ledger = PrivacyLedger(path)
    ledger.begin_round(1, [_row(1, 1, "in-flight", 2.0, 8.0),
                           _row(1, 2, "in-flight", 0.3, None)])
    ledger.settle_round(1, [_row(1, 1, "included", 2.0, 8.0),
                            _row(1, 2, "included", 0.3, None)])
    report = audit_run(path)
    assert report["verified"] and not report["violations"]
    assert report["exit_code"] == EXIT_NO_BUDGET, report["verdict"]
    assert report["no_budget"]
    assert "1 of 2 clients had no privacy budget (client(s) 2)" in report["verdict"]
    worst = next(c for c in report["clients"] if c["client_id"] == 2)["epsilon_max"]
    assert worst > 40
    assert f"{worst:.3f}" in report["verdict"]


@pytest.mark.parametrize("budgets", [(8.0, 8.0), (None, None)])
def test_uniform_budgets_keep_their_verdicts(tmp_path: Path,
                                             budgets: tuple[float | None, float | None]
                                             ) -> None:
    path = tmp_path / "ledger.jsonl"
    ledger = PrivacyLedger(path)
    ledger.begin_round(1, [_row(1, 1, "in-flight", 2.0, budgets[0]),
                           _row(1, 2, "in-flight", 2.0, budgets[1])])
    ledger.settle_round(1, [_row(1, 1, "included", 2.0, budgets[0]),
                            _row(1, 2, "included", 2.0, budgets[1])])
    report = audit_run(path)
    if budgets[0] is None:
        assert report["exit_code"] == EXIT_NO_BUDGET
        assert "no client had a privacy budget" in report["verdict"]
    else:
        assert report["exit_code"] == 0, report["verdict"]
