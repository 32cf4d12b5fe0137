"""Review (user-level DP): user-level rows forged against the run's own
configuration.

The audit checks every record-level row against the run configuration
(``ledger_expectations``: delta, budget, accountant...), but a user-level
row's ``sample_rate``, ``delta`` and ``epsilon_budget`` are checked only
against the other user-level rows.  A run of ``--privacy user-level
--client-sample-rate 0.6`` whose ledger is rewritten with ``sample_rate``
0.05 (every history and epsilon recomputed, the chain and the anchors
redone) states a user-level epsilon several times too small while
``metrics.json`` still says ``client_sample_rate: 0.6``; in a run without
record-level rows the same holds for ``delta`` (raised to the cap 1e-3:
nothing ties it to the configured 1e-5).  Each forgery changes only fields
the audit recomputes from, so only a comparison with the configuration
(the run store's or the exported metrics') can catch it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from securefl.cli.audit import audit_run
from securefl.federation.simulation import SimulationConfig, run_simulation
from securefl.privacy.distributed import colluder_epsilon, user_level_epsilons
from tests.ledger_tools import records, write_chained

CONFIG = dict(num_clients=12, rounds=3, dropout=0.0, privacy="user-level", bits=16,
              user_epsilon=40.0, seed=2, hidden=8, local_epochs=1, client_sample_rate=0.6)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ulconfig") / "run"
    run_simulation(SimulationConfig(**CONFIG), out)  # type: ignore[arg-type]
    assert audit_run(out)["verified"]
    return out


def _rewrite(recs: list[dict], **fields: float) -> list[dict]:
    """Set ``fields`` in every user-level row and recompute what the audit
    recomputes (histories, both epsilons, the colluders' epsilon)."""
    previous: list[list[float]] = []
    previous_colluders: list[float] = []
    for rec in recs:
        if rec["type"] != "user-level":
            continue
        rec.update(fields)
        history = [*previous, [rec["released_variance"], rec["l1_sensitivity"],
                               rec["l2_sensitivity"], rec["sample_rate"], 1]]
        rec["history"] = history
        eps = user_level_epsilons(history, rec["delta"], accountant=rec["accountant"])
        rec["epsilon"], rec["epsilon_unsampled"] = eps["sampled"], eps["unsampled"]
        rec["colluder_history"] = [*previous_colluders, 0.0]
        rec["epsilon_colluders"] = colluder_epsilon(history, rec["colluder_history"],
                                                    rec["delta"])
        if rec["status"] != "in-flight":  # a settled row is what the next one extends
            previous, previous_colluders = history, rec["colluder_history"]
    return recs


def _forged(run: Path, dest: Path, **fields: float) -> tuple[Path, float, float]:
    shutil.copytree(run, dest)
    before = [r for r in records(dest) if r["type"] == "user-level"][-1]["epsilon"]
    recs = _rewrite(records(dest), **fields)
    write_chained(dest, recs)
    after = [r for r in recs if r["type"] == "user-level"][-1]["epsilon"]
    return dest, before, after


def test_a_lowered_client_sample_rate_is_caught(run: Path, tmp_path: Path) -> None:
    """HOLE (fails against main): sample_rate 0.6 -> 0.05 in every user-level
    row, everything recomputed; metrics.json still records the configured 0.6."""
    forged, before, after = _forged(run, tmp_path / "q", sample_rate=0.05)
    assert after < before / 1.5  # the forgery pays: a far smaller epsilon
    metrics = json.loads((forged / "metrics.json").read_text())
    assert metrics["config"]["client_sample_rate"] == 0.6
    report = audit_run(forged)
    assert not report["verified"], (
        f"audit verified user-level epsilon {report['user_level'][-1]['epsilon']:.3f} at"
        f" sample_rate 0.05 (the run's is 0.6, which gives {before:.3f})")


def test_a_raised_user_level_delta_is_caught(run: Path, tmp_path: Path) -> None:
    """HOLE (fails against main): with no record-level rows, delta 1e-5 ->
    1e-3 in every user-level row (one delta for the ledger, at the cap, below
    1 / survivors): nothing ties it to the configured delta."""
    forged, before, after = _forged(run, tmp_path / "delta", delta=1e-3)
    assert after < before
    assert json.loads((forged / "metrics.json").read_text())["config"]["delta"] == 1e-5
    report = audit_run(forged)
    assert not report["verified"], (
        f"audit verified user-level epsilon {report['user_level'][-1]['epsilon']:.3f} at"
        f" delta 1e-3 (the run's delta is 1e-5: {before:.3f})")


def test_a_raised_user_level_budget_is_caught(run: Path, tmp_path: Path) -> None:
    """HOLE (fails against main): the user-level budget 40 -> 1e9 in every
    row: the audit's budget check reads the row's own budget."""
    forged, _, _ = _forged(run, tmp_path / "budget", epsilon_budget=1e9)
    assert json.loads((forged / "metrics.json").read_text())["config"]["user_epsilon"] == 40.0
    report = audit_run(forged)
    assert not report["verified"]


def test_a_released_round_erased_from_the_ledger_is_caught(run: Path, tmp_path: Path) -> None:
    """HOLE (fails against main): round 2's charge and release are deleted
    (the commits' user_rows removed, later histories recomputed, chain and
    anchors redone), as if round 2 had been skipped; metrics.json still
    reports round 2 as a completed round with its survivors.  The audit
    must not verify a ledger that omits a round the run says it released."""
    dest = tmp_path / "erased"
    shutil.copytree(run, dest)
    recs = [r for r in records(dest) if not (r["type"] == "user-level" and r["round"] == 2)]
    for rec in recs:
        if rec["type"] == "commit" and rec["round"] == 2:
            rec.pop("user_rows", None)
    recs = _rewrite(recs)
    write_chained(dest, recs)
    metrics = json.loads((dest / "metrics.json").read_text())
    second = next(r for r in metrics["rounds"] if r["round"] == 2)
    assert not second["aborted"] and second["num_survivors"] > 0
    before = [r for r in records(run) if r["type"] == "user-level"][-1]["epsilon"]
    after = [r for r in recs if r["type"] == "user-level"][-1]["epsilon"]
    assert after < before
    report = audit_run(dest)
    assert not report["verified"], (
        f"audit verified user-level epsilon {report['user_level'][-1]['epsilon']:.3f} with"
        f" released round 2 erased (the run's: {before:.3f})")


def test_an_inflated_released_variance_is_caught(run: Path, tmp_path: Path) -> None:
    """HOLE (fails against main): a released row claims 10 V (the server
    session reports at most ``survivors V / t`` in semi-honest sessions, t
    the mode's threshold of the cohort, at least that of the survivors; at
    most ``V (1 + tolerance)`` with removable excess), everything after it
    recomputed: the audit checked only ``released >= target``."""
    dest = tmp_path / "inflated"
    shutil.copytree(run, dest)
    recs = records(dest)
    target = next(r for r in recs if r["type"] == "user-level" and r["round"] == 2
                  and r["status"] == "released")
    target["released_variance"] = 10 * target["target_variance"]
    recs = _rewrite(recs)
    write_chained(dest, recs)
    before = [r for r in records(run) if r["type"] == "user-level"][-1]["epsilon"]
    after = [r for r in recs if r["type"] == "user-level"][-1]["epsilon"]
    assert after < before
    report = audit_run(dest)
    assert not report["verified"], (
        f"audit verified user-level epsilon {report['user_level'][-1]['epsilon']:.3f} with"
        f" round 2's released variance inflated to 10 V (the run's: {before:.3f})")


def test_inflated_survivors_and_variance_are_caught(run: Path, tmp_path: Path) -> None:
    """HOLE (fails against main): a released row claims 11 survivors and the
    variance they would add (``11 V / t(11) = 11 V / 6``, the most any
    semi-honest session of at most 12 clients can add), everything after it
    recomputed; metrics.json reports the real survivors."""
    from securefl.protocol.config import SecurityMode, default_threshold

    dest = tmp_path / "survivors"
    shutil.copytree(run, dest)
    recs = records(dest)
    released = [r for r in recs if r["type"] == "user-level" and r["status"] == "released"]
    target = min(released, key=lambda r: r["released_variance"] / r["target_variance"])
    forged = 11
    target["survivors"] = forged
    target["released_variance"] = (target["target_variance"] * forged
                                   / default_threshold(forged, SecurityMode.SEMI_HONEST))
    recs = _rewrite(recs)
    write_chained(dest, recs)
    before = [r for r in records(run) if r["type"] == "user-level"][-1]["epsilon"]
    assert [r for r in recs if r["type"] == "user-level"][-1]["epsilon"] < before
    assert not audit_run(dest)["verified"]
