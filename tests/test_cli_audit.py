"""``securefl audit`` cannot be fooled.  Each test takes a real run directory
(a tiny federation), performs one fooling against it (often as an adversary
who re-computes the hash chain and moves the checkpoint's and metrics'
anchors, so that only recomputation can catch it) and checks the exit code
and the message.  Exit codes: 0 ok, 1 violation or tampering, 2 unreadable,
3 no budget."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from opacus.accountants.utils import get_noise_multiplier

from securefl.cli import main
from securefl.cli.audit import audit_run
from securefl.federation.simulation import SimulationConfig, run_simulation
from securefl.privacy.accounting import (
    ACCOUNTANTS,
    REPLACE_ONE_ACCOUNTANTS,
    AccountantKind,
    epsilon,
    epsilon_dp_accounting,
    epsilons,
    noise_multiplier_for,
)
from securefl.privacy.ledger import LedgerEntry, PrivacyLedger, load_ledger
from tests.ledger_tools import Record, records, set_anchors, tampered_copy

torch.set_num_threads(1)

TINY = SimulationConfig(num_clients=3, rounds=2, dropout=0.3, noise_multiplier=1.0,
                        epsilon_budget=50.0, seed=0, hidden=16)


def _strict(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"non-strict JSON token {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("audit") / "run"
    run_simulation(TINY, out)
    return out


def _audit(path: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    code = main(["audit", str(path), "--no-plot", *flags])
    return code, capsys.readouterr().out


def _rows(recs: list[Record], **match: Any) -> list[Record]:
    return [r for r in recs if r.get("type") == "row"
            and all(r.get(k) == v for k, v in match.items())]


def test_a_real_run_verifies(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, text = _audit(run, capsys)
    assert code == 0, text
    assert "OK: the chain and the cross-checks hold" in text
    code, out = _audit(run, capsys, "--json")
    report = _strict(out)
    assert code == 0 and report["ok"] and report["exit_code"] == 0
    assert report["cross_check"] == {"ledger_round": 2, "checkpoint_round": 2,
                                     "metrics_round": 2}
    for client in report["clients"]:
        assert set(client["epsilon"]) == set(ACCOUNTANTS)
        assert all(0 < v < 50 for v in client["epsilon"].values())
    # every client that trained was in flight before it trained
    recs = records(run)
    assert len(_rows(recs, status="in-flight")) == 6
    assert [c["stage"] for c in recs if c.get("type") == "commit"] == [
        "in-flight", "settled", "in-flight", "settled"]


def test_zero_noise_fails_in_text_and_json(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "noise0"
    config = SimulationConfig(**{**TINY.__dict__, "noise_multiplier": 0.0,
                                 "epsilon_budget": None})
    run_simulation(config, out)
    # every artefact is strict JSON although every epsilon is infinite
    metrics = _strict((out / "metrics.json").read_text())
    assert metrics["final"]["epsilon_max"] == "inf"
    rows = [_strict(line) for line in (out / "ledger.jsonl").read_text().splitlines()]
    assert {r["epsilon_rdp"] for r in rows if r["type"] == "row"} == {"inf"}
    code, text = _audit(out, capsys)
    assert code == 1
    assert "no noise, infinite epsilon" in text and "infinite by every accountant" in text
    assert "OK" not in text.splitlines()[-1]
    code, raw = _audit(out, capsys, "--json")
    report = _strict(raw)
    assert code == 1 and report["ok"] is False and report["exit_code"] == 1
    assert report["clients"][0]["epsilon"]["opacus-rdp"] == "inf"


def test_a_run_without_a_budget_has_its_own_exit_code(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "nobudget"
    run_simulation(SimulationConfig(**{**TINY.__dict__, "epsilon_budget": None}), out)
    code, text = _audit(out, capsys)
    assert code == 3
    assert "NO BUDGET" in text and "nothing bounds the spend" in text
    assert "stayed within its budget" not in text
    assert _strict(_audit(out, capsys, "--json")[1])["no_budget"] is True


def test_a_round_one_epsilon_divided_by_three_fails(
        run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def shrink(recs: list[Record]) -> list[Record]:
        for row in _rows(recs, round=1, client_id=1):
            row["epsilon_rdp"] /= 3  # the in-flight and the settled row alike
        return recs

    bad = tampered_copy(run, tmp_path / "bad", shrink)
    assert load_ledger(bad / "ledger.jsonl").ok  # the chain itself is consistent
    code, text = _audit(bad, capsys)
    assert code == 1
    assert "round 1, client 1: recorded epsilon" in text and "does not match its history" in text


def test_a_nan_recorded_epsilon_fails(run: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    def unbounded(recs: list[Record]) -> list[Record]:
        for row in _rows(recs, round=2):
            row["epsilon_rdp"] = None  # how the ledger writes NaN
        return recs

    code, text = _audit(tampered_copy(run, tmp_path / "nan", unbounded), capsys)
    assert code == 1
    assert "round 2, client 1: recorded epsilon n/a by opacus-rdp does not match" in text


def test_truncation_at_every_line_boundary_fails(run: Path, tmp_path: Path) -> None:
    lines = (run / "ledger.jsonl").read_bytes().splitlines(keepends=True)
    assert len(lines) == 17
    for keep in range(len(lines)):
        cut = tmp_path / f"cut{keep}"
        shutil.copytree(run, cut)
        (cut / "ledger.jsonl").write_bytes(b"".join(lines[:keep]))
        report = audit_run(cut)
        assert report["exit_code"] == 1, (keep, report["violations"])
        # and a cut inside the next line (a torn write) is no better
        (cut / "ledger.jsonl").write_bytes(b"".join(lines[:keep]) + lines[keep][:20])
        report = audit_run(cut)
        assert report["exit_code"] == 1, (keep, report["violations"])


def test_a_whole_round_removed_fails(run: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    def drop_round(number: int):  # type: ignore[no-untyped-def]
        def change(recs: list[Record]) -> list[Record]:
            return [r for r in recs if r.get("round") != number]
        return change

    first = tampered_copy(run, tmp_path / "no1", drop_round(1))
    code, text = _audit(first, capsys)
    assert code == 1
    assert "round 2 in flight after round 0 settled" in text
    last = tampered_copy(run, tmp_path / "no2", drop_round(2))
    code, text = _audit(last, capsys)
    assert code == 1
    assert "the ledger's last settled round 1 is behind the checkpoint's round 2" in text


def test_a_ledger_ahead_of_the_checkpoint_fails(run: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    ahead = tmp_path / "ahead"
    shutil.copytree(run, ahead)
    heads = {c.round: c.digest for c in load_ledger(ahead / "ledger.jsonl").commits
             if c.stage == "settled"}
    set_anchors(ahead, heads, round_number=1)  # a checkpoint of round 1, well anchored
    # with the run store: no crash exports the metrics before the checkpoint
    code, text = _audit(ahead, capsys)
    assert code == 1
    assert ("metrics.json (round 2) is ahead of checkpoint.pt (round 1), which is exported"
            " before it") in text
    # without it (a run directory of files alone): the ledger is ahead
    (ahead / "run.sqlite").unlink()
    code, text = _audit(ahead, capsys)
    assert code == 1
    assert "the ledger's last settled round 2 is ahead of the checkpoint's round 1" in text


def test_an_export_that_disagrees_with_the_run_store_fails(run: Path, tmp_path: Path) -> None:
    """ledger.jsonl is appended from the store: after a crash it may lack
    (part of) the last block, nothing else; an edit or a deeper truncation
    fails even when the chain and the anchors are rebuilt around it."""
    data = (run / "ledger.jsonl").read_bytes()
    lines = data.splitlines(keepends=True)
    lagging = tmp_path / "lagging"
    shutil.copytree(run, lagging)
    (lagging / "ledger.jsonl").write_bytes(b"".join(lines[:-2]) + lines[-2][:30])
    report = audit_run(lagging)  # the last block's export cut short: still no spend lost
    assert any("lags run.sqlite" in note for note in report["notes"]), report["notes"]
    assert not any("prefix" in v or "truncated" in v for v in report["violations"])
    cut = tmp_path / "cut"
    shutil.copytree(run, cut)
    (cut / "ledger.jsonl").write_bytes(b"".join(lines[:-5]))  # a whole block more
    assert any("truncated" in v for v in audit_run(cut)["violations"])
    edited = tmp_path / "edited"
    shutil.copytree(run, edited)
    (edited / "ledger.jsonl").write_bytes(data.replace(b'"status":"included"',
                                                       b'"status":"dropped"', 1))
    report = audit_run(edited)
    assert report["exit_code"] == 1
    assert any("not a prefix of the ledger in run.sqlite" in v for v in report["violations"])


def test_a_removed_commit_or_in_flight_block_fails(run: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    def no_last_commit(recs: list[Record]) -> list[Record]:
        return recs[:-1]

    code, text = _audit(tampered_copy(run, tmp_path / "nocommit", no_last_commit), capsys)
    assert code == 1 and "row(s) after the last commit" in text

    def no_in_flight(recs: list[Record]) -> list[Record]:
        kept = [r for r in recs if not (r.get("round") == 2 and (
            r.get("status") == "in-flight" or r.get("stage") == "in-flight"))]
        return kept

    code, text = _audit(tampered_copy(run, tmp_path / "noflight", no_in_flight), capsys)
    assert code == 1 and "without an in-flight row before it" in text


def test_an_insecure_noise_source_fails(run: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    included = _rows(records(run), round=2, status="included")[0]["client_id"]

    def seeded(recs: list[Record]) -> list[Record]:
        _rows(recs, round=2, client_id=included, status="included")[0]["noise_source"] = \
            "insecure-seeded"
        return recs

    def replace_one(recs: list[Record]) -> list[Record]:
        for row in _rows(recs, client_id=2):
            row["adjacency"] = "replace-one"
        return recs

    code, text = _audit(tampered_copy(run, tmp_path / "seeded", seeded), capsys)
    assert code == 1
    assert f"round 2, client {included}: noise_source 'insecure-seeded'" in text
    code, text = _audit(tampered_copy(run, tmp_path / "r1", replace_one), capsys)
    assert code == 1
    # recomputed under replace-one, the recorded add/remove epsilon is too low
    assert "round 1, client 2: recorded epsilon" in text
    assert "by replace-one-rdp does not match its history" in text
    assert "weighting 'uniform' needs adjacency 'add-remove-one'" in text


def test_an_insecure_reproducible_noise_run_fails(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the whole run, as the simulator writes it: every row says where its
    # noise came from, and the audit names the option that made it insecure
    out = tmp_path / "insecure"
    run_simulation(dataclasses.replace(TINY, insecure_reproducible_noise=True), out)
    code, text = _audit(out, capsys)
    assert code == 1
    assert "noise_source 'insecure-seeded': insecure reproducible noise" \
        " (--insecure-reproducible-noise)" in text
    report = audit_run(out)
    seeded = [v for v in report["violations"] if "noise_source 'insecure-seeded'" in v]
    assert len(seeded) == len([r for r in records(out) if r.get("type") == "row"])


@pytest.fixture(scope="module")
def examples_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # calibrated (replace-one) to a target, so the budget is that target
    out = tmp_path_factory.mktemp("audit") / "examples"
    run_simulation(dataclasses.replace(TINY, noise_multiplier=None, target_epsilon=8.0,
                                       epsilon_budget=None, weighting="examples"), out)
    return out


def test_a_run_weighted_by_examples_verifies_by_the_replace_one_accountants(
        examples_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    code, text = _audit(examples_run, capsys)
    assert code == 0, text
    assert "ro-rdp" in text and "replace-one" in text
    report = audit_run(examples_run)
    rows = [r for r in load_ledger(examples_run / "ledger.jsonl").committed]
    assert {(r.weighting, r.adjacency) for r in rows} == {("examples", "replace-one")}
    last = {r.client_id: r for r in rows if not r.in_flight}
    for client in report["clients"]:
        eps = client["epsilon"]
        assert set(eps) == set(REPLACE_ONE_ACCOUNTANTS)
        assert all(0 < v <= 8.0 for v in eps.values())
        # what the simulator recorded is what the audit recomputed
        row = last[client["client_id"]]
        assert row.epsilon_rdp == pytest.approx(eps["replace-one-rdp"], rel=1e-12)
        assert row.epsilon_dpa_pld == pytest.approx(eps["replace-one-pld"], rel=1e-12)
        # and it is more than the add/remove-one epsilon of the same history
        assert eps["replace-one-pld"] > max(epsilons(row.history, row.delta).values())


def test_a_run_weighted_by_examples_cannot_claim_add_remove_epsilons(
        examples_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A server that weights by record counts relabels its rows
    # add-or-remove-one and records correct add/remove epsilons (re-chained,
    # re-anchored): every epsilon recomputes, yet the count was public
    def relabel(recs: list[Record]) -> list[Record]:
        for row in _rows(recs):
            eps = epsilons(row["history"], row["delta"])
            row.update(adjacency="add-remove-one", epsilon_rdp=eps["opacus-rdp"],
                       epsilon_prv=eps["opacus-prv"],
                       epsilon_dpa_rdp=eps["dp-accounting-rdp"],
                       epsilon_dpa_pld=eps["dp-accounting-pld"])
        return recs

    code, text = _audit(tampered_copy(examples_run, tmp_path / "relabel", relabel), capsys)
    assert code == 1
    assert "weighting 'examples' needs adjacency 'replace-one'" in text
    assert "does not match its history" not in text  # only the relabelling gives it away

    # ... or keeps the label and records the lower add/remove epsilons
    def lower(recs: list[Record]) -> list[Record]:
        for row in _rows(recs):
            eps = epsilons(row["history"], row["delta"])
            row.update(epsilon_rdp=eps["opacus-rdp"], epsilon_prv=eps["opacus-prv"])
        return recs

    code, text = _audit(tampered_copy(examples_run, tmp_path / "lower", lower), capsys)
    assert code == 1
    assert "by replace-one-rdp does not match its history" in text
    assert "records epsilon_prv" in text


def _one_client_ledger(path: Path, sigma: float, q: float, steps: int,
                       budget: float | None) -> None:
    history = [[sigma, q, steps]]
    eps = epsilons(history, 1e-5)
    common: dict[str, Any] = dict(
        round=1, client_id=1, noise_multiplier=sigma, sample_rate=q, local_steps=steps,
        delta=1e-5, epsilon_rdp=eps["opacus-rdp"], epsilon_prv=eps["opacus-prv"],
        accountant="rdp", epsilon_budget=budget, history=history)
    ledger = PrivacyLedger(path)
    ledger.begin_round(1, [LedgerEntry(status="in-flight", entered_sum=False, survivors=0,
                                       **common)])
    ledger.settle_round(1, [LedgerEntry(status="included", entered_sum=True, survivors=1,
                                        **common)])


def test_one_accountant_over_the_budget_is_enough_to_fail(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Opacus's own calibration to 7.5: Opacus RDP is within, dp-accounting's
    # RDP is not (the recorded Opacus epsilons are all correct)
    q, steps = 1 / 6, 60
    sigma = get_noise_multiplier(target_epsilon=7.5, target_delta=1e-5, sample_rate=q,
                                 steps=steps, accountant="rdp")
    history = [(sigma, q, steps)]
    assert epsilon(history, 1e-5, AccountantKind.RDP) <= 7.5 < epsilon_dp_accounting(
        history, 1e-5)
    path = tmp_path / "ledger.jsonl"
    _one_client_ledger(path, sigma, q, steps, 7.5)
    code, text = _audit(path, capsys)
    assert code == 1
    assert "round 1, client 1: epsilon 7.50" in text
    assert "by dp-accounting-rdp exceeds the budget 7.5" in text
    assert "by opacus-rdp exceeds" not in text
    # the calibration securefl uses holds by all four
    fixed = noise_multiplier_for(7.5, 1e-5, q, steps)
    assert max(epsilons([(fixed, q, steps)], 1e-5).values()) <= 7.5
    good = tmp_path / "good.jsonl"
    _one_client_ledger(good, fixed, q, steps, 7.5)
    code, text = _audit(good, capsys)
    assert code == 0, text


def test_the_chain_breaks_on_any_edit_removal_or_swap(run: Path) -> None:
    lines = (run / "ledger.jsonl").read_bytes().splitlines(keepends=True)
    path = run.parent / "scratch.jsonl"
    for i in range(len(lines)):
        edited = lines[i].replace(b'"round":', b'"round": ', 1)  # not canonical
        edited2 = lines[i].replace(b"e", b"E", 1)
        variants = [lines[:i] + lines[i + 1:], [*lines[:i], edited, *lines[i + 1:]],
                    [*lines[:i], edited2, *lines[i + 1:]]]
        if i + 1 < len(lines):
            variants.append([*lines[:i], lines[i + 1], lines[i], *lines[i + 2:]])
        for variant in variants:
            if variant == lines:
                continue
            path.write_bytes(b"".join(variant))
            assert not load_ledger(path).ok, i


def test_audit_without_a_ledger(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", str(tmp_path)]) == 2
    assert "no ledger" in capsys.readouterr().err


def test_exit_codes_are_documented(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["audit", "--help"])
    text = capsys.readouterr().out
    for line in ("0  verified", "1  FAIL", "2  usage error", "3  verified, but no privacy"):
        assert line in text
    doc = (Path(__file__).parent.parent / "docs" / "privacy-ledger.md").read_text()
    for code in ("| 0 |", "| 1 |", "| 2 |", "| 3 |"):
        assert code in doc
