"""Adversarial review of the privacy ledger and ``securefl audit`` (rev-ledger):
each test plays one attack that passed before its fix."""

from __future__ import annotations

import math
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


# -- record-level delta and budget, restated by a consistent rewriter ---------------


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from securefl.federation.simulation import SimulationConfig, run_simulation

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("rev-ledger") / "run"
    run_simulation(SimulationConfig(num_clients=3, rounds=2, dropout=0.3,
                                    noise_multiplier=1.0, epsilon_budget=50.0, seed=0,
                                    hidden=16), out)
    return out


def _restated(run: Path, tmp_path: Path, **fields: float) -> Path:
    """A copy of ``run`` whose every record-level row states ``fields``
    (delta, epsilon_budget), every epsilon recomputed at the row's delta,
    re-chained with the checkpoint's and metrics' anchors moved and the run
    store dropped (tests/ledger_tools.py): only metrics.json's configuration
    is left as it was."""
    import shutil

    from tests.ledger_tools import records, write_chained

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    recs = records(copy)
    for rec in recs:
        if rec.get("type") == "row":
            rec.update(fields)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                eps = epsilons(rec["history"], rec["delta"])
            rec.update(epsilon_rdp=eps["opacus-rdp"], epsilon_prv=eps["opacus-prv"],
                       epsilon_dpa_rdp=eps["dp-accounting-rdp"],
                       epsilon_dpa_pld=eps["dp-accounting-pld"])
    write_chained(copy, recs)
    return copy


def test_the_real_run_verifies(run: Path) -> None:
    report = audit_run(run)
    assert report["exit_code"] == 0, report["violations"]


def test_every_row_restated_at_delta_one_half_fails(run: Path, tmp_path: Path) -> None:
    """Attack: the rewriter restates every row at delta 0.5.  Every epsilon
    recomputes (10.33 at the run's 1e-5 becomes 1.99), and the audit said OK;
    now the cap and metrics.json's configured delta both fail it."""
    before = max(c["epsilon_max"] for c in audit_run(run)["clients"])
    report = audit_run(_restated(run, tmp_path, delta=0.5))
    after = max(c["epsilon_max"] for c in report["clients"])
    assert after < before / 4  # what the forgery would have bought
    assert report["exit_code"] == 1
    assert any("above the record-level cap" in v for v in report["violations"])
    assert any("metrics.json) gives delta = 1e-05, the row records 0.5" in v
               for v in report["violations"])


@pytest.mark.parametrize("fields", [{"delta": 1e-3}, {"epsilon_budget": 1e9}],
                         ids=["delta-within-the-cap", "budget"])
def test_a_row_that_disagrees_with_the_configuration_fails(run: Path, tmp_path: Path,
                                                           fields: dict[str, float]) -> None:
    report = audit_run(_restated(run, tmp_path, **fields))
    assert report["exit_code"] == 1
    key = next(iter(fields))
    assert any(f"the run configuration (metrics.json) gives {key}" in v
               for v in report["violations"]), report["violations"]


def test_one_ledger_states_one_delta(tmp_path: Path) -> None:
    """A ledger file alone (no configuration to compare with): round 2
    stated at a larger delta than round 1 fails."""
    import dataclasses

    path = tmp_path / "ledger.jsonl"
    ledger = PrivacyLedger(path)
    ledger.begin_round(1, [_row(1, 1, "in-flight", 2.0, 8.0)])
    ledger.settle_round(1, [_row(1, 1, "included", 2.0, 8.0)])
    second = _row(2, 1, "in-flight", 2.0, 8.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eps = epsilons(second.history, 1e-4)
    restated = {"delta": 1e-4, "epsilon_rdp": eps["opacus-rdp"],
                "epsilon_prv": eps["opacus-prv"], "epsilon_dpa_rdp": eps["dp-accounting-rdp"],
                "epsilon_dpa_pld": eps["dp-accounting-pld"]}
    ledger.begin_round(2, [dataclasses.replace(second, **restated)])
    ledger.settle_round(2, [dataclasses.replace(_row(2, 1, "included", 2.0, 8.0), **restated)])
    report = audit_run(path)
    assert report["exit_code"] == 1
    assert any("2 different deltas" in v for v in report["violations"])


# -- two in-flight rows of one client --------------------------------------------------


def _charge(steps: int) -> LedgerEntry:
    import dataclasses

    row = _row(1, 1, "in-flight", 1.0, 8.0, steps=max(steps, 1))
    if steps == 0:
        row = dataclasses.replace(row, local_steps=0, history=[], epsilon_rdp=0.0,
                                  epsilon_prv=0.0, epsilon_dpa_rdp=0.0, epsilon_dpa_pld=0.0)
    return row


def test_two_in_flight_rows_of_one_client_cannot_erase_a_charge(tmp_path: Path) -> None:
    """Attack: an in-flight block with the client's 4-step charge and a
    second in-flight row of 0 steps, then a settled row of 0 steps.  The
    audit took the last in-flight row as the charge, so the settled row
    superseded both: the 4 steps charged before training vanished (exit 0,
    0 steps).  The writer now refuses the block, and the reader flags it."""
    import dataclasses

    from securefl.errors import LedgerError
    from securefl.privacy.ledger import encode_block, header_line, load_ledger, record_digest

    with pytest.raises(LedgerError, match="one row per client per block"):
        PrivacyLedger(tmp_path / "refused.jsonl").begin_round(1, [_charge(4), _charge(0)])
    header = header_line("00" * 16)
    flight = encode_block(record_digest(header), 1, "in-flight", [_charge(4), _charge(0)])
    settled = encode_block(record_digest(flight[-1]), 1, "settled",
                           [dataclasses.replace(_charge(0), status="dropped")])
    path = tmp_path / "ledger.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in [header, *flight, *settled]))
    assert any("two in-flight rows" in p for p in load_ledger(path).problems)
    report = audit_run(path)
    assert report["exit_code"] == 1
    assert any("two in-flight rows in round 1" in v for v in report["violations"])


# -- the grid accountants' memory grows with the epsilon, not only the steps --------


def test_a_huge_epsilon_is_not_handed_to_the_grid_accountants(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Attack: a ledger row of 1000 steps at sigma 0.5 and sample rate 1 (far
    below MAX_GRID_STEPS).  Opacus's PRV grid spans the privacy loss: the
    audit took 8.4 GB and 42 s for it, and 2000 steps at sigma 0.3 more than
    24 GB (the OOM killer ended the process).  Beyond MAX_GRID_EPSILON by the
    cheap RDP bound the grid accountants are not run: NaN, which fails."""
    import opacus.accountants
    from dp_accounting.pld import PLDAccountant

    from securefl.privacy import accounting

    def refuse(*args: object, **kwargs: object) -> float:
        raise AssertionError("a grid accountant was run")

    monkeypatch.setattr(opacus.accountants.PRVAccountant, "get_epsilon", refuse)
    monkeypatch.setattr(PLDAccountant, "get_epsilon", refuse)
    for history in ([(0.5, 1.0, 1000)], [(0.3, 1.0, 2000)], [(0.05, 0.5, 3)]):
        values = accounting.epsilons(history, 1e-5)
        assert values["opacus-rdp"] > accounting.MAX_GRID_EPSILON
        assert math.isnan(values["opacus-prv"]) and math.isnan(values["dp-accounting-pld"])
        assert math.isnan(accounting.epsilon_replace_one_pld(history, 1e-5))

    path = tmp_path / "ledger.jsonl"
    PrivacyLedger(path).begin_round(1, [LedgerEntry(
        round=1, client_id=1, status="in-flight", entered_sum=False, noise_multiplier=0.5,
        sample_rate=1.0, local_steps=1000, delta=1e-5, epsilon_rdp=1.0, epsilon_prv=None,
        accountant="rdp", epsilon_budget=None, survivors=0, history=[[0.5, 1.0, 1000]])])
    report = audit_run(path)
    assert report["exit_code"] == 1
    assert any("opacus-prv cannot bound this history" in v for v in report["violations"])


def test_under_the_cap_the_grid_accountants_still_run() -> None:
    from securefl.privacy import accounting

    values = accounting.epsilons([(1.0, 0.5, 8)], 1e-5)
    assert all(math.isfinite(v) for v in values.values())
    assert values["opacus-prv"] <= values["opacus-rdp"]
    near = accounting.epsilons([(0.1, 1.0, 1)], 1e-5)  # RDP 96: just under the cap
    assert math.isfinite(near["opacus-prv"]) and math.isfinite(near["dp-accounting-pld"])


# -- per-client sample rates publish record counts ---------------------------------


def test_add_remove_one_rows_at_per_client_sample_rates_fail(tmp_path: Path) -> None:
    """Attack: securefl.federate with DataLoaders and no sample_rate gave
    each client q = B / n (Opacus's rule), published in the ledger, while
    its rows stated add/remove-one epsilons (5.38, 4.87, 3.79) and the audit
    passed.  federate now refuses it under uniform weighting
    (tests/test_federate.py); a ledger that has such rows fails the audit."""
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    import securefl
    from securefl.errors import ConfigurationError

    gen = torch.Generator().manual_seed(0)
    loaders = [DataLoader(TensorDataset(torch.randn(n, 4, generator=gen),
                                        torch.randint(0, 2, (n,), generator=gen)),
                          batch_size=10) for n in (20, 40)]
    with pytest.raises(ConfigurationError, match="publishes its record count"):
        securefl.federate(nn.Linear(4, 2), loaders, nn.CrossEntropyLoss(), rounds=1,
                          noise_multiplier=1.0)
    # a ledger written before the refusal: one client at q 0.5, one at 0.25
    path = tmp_path / "ledger.jsonl"
    ledger = PrivacyLedger(path)
    rows = [_row(1, 1, "in-flight", 2.0, 8.0), _row(1, 2, "in-flight", 2.0, 8.0)]
    import dataclasses

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eps = epsilons([[2.0, 0.25, 4]], 1e-5)
    quarter = {"sample_rate": 0.25, "history": [[2.0, 0.25, 4]],
               "epsilon_rdp": eps["opacus-rdp"], "epsilon_prv": eps["opacus-prv"],
               "epsilon_dpa_rdp": eps["dp-accounting-rdp"],
               "epsilon_dpa_pld": eps["dp-accounting-pld"]}
    rows[1] = dataclasses.replace(rows[1], **quarter)
    ledger.begin_round(1, rows)
    ledger.settle_round(1, [_row(1, 1, "included", 2.0, 8.0),
                            dataclasses.replace(_row(1, 2, "included", 2.0, 8.0), **quarter)])
    report = audit_run(path)
    assert report["exit_code"] == 1
    assert any("2 different sample rates" in v for v in report["violations"])
