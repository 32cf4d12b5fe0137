"""Review (skip-aware user-level accounting, the audit): a skipped row
costs nothing unsampled (``released`` 0), so turning a RELEASED round's
row into a skipped one lowers ``epsilon_unsampled`` (the epsilon against
the server).  ATTACK: the forger rewrites the row (status ``skipped``,
survivors 0, released variance = target, every later history and epsilon
recomputed, the chain redone) and makes ``metrics.json`` call the round
skipped (aborted, a ``skipped:`` reason, ``num_survivors`` 0), but leaves
the round's survivors list, which names the clients whose updates were
summed.  A skipped round has nobody who trained, so no survivors: the
audit must see the contradiction."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from securefl.cli.audit import audit_run
from securefl.federation.simulation import SimulationConfig, run_simulation
from tests.ledger_tools import records, write_chained
from tests.test_review_ul_skip_conditioning import _rechain


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from securefl.federation import simulation

    cohorts = iter([(3, 6), (1,), (2,), (1, 6)])
    patch = pytest.MonkeyPatch()
    patch.setattr(simulation, "poisson_cohort", lambda ids, q: next(cohorts))
    out = tmp_path_factory.mktemp("relskip") / "run"
    try:
        run_simulation(SimulationConfig(num_clients=6, rounds=4, dropout=0.0,
                                        privacy="user-level", bits=16, user_epsilon=8.0,
                                        seed=2, hidden=8, local_epochs=1,
                                        client_sample_rate=0.4), out)
    finally:
        patch.undo()
    return out


def test_a_released_round_forged_into_a_skipped_one_is_caught(run: Path,
                                                              tmp_path: Path) -> None:
    assert audit_run(run)["verified"]
    rows = [r for r in records(run) if r["type"] == "user-level" and r["status"] != "in-flight"]
    assert [r["status"] for r in rows] == ["released", "skipped", "skipped", "released"]
    honest = rows[-1]["epsilon_unsampled"]
    forged = tmp_path / "forged"
    shutil.copytree(run, forged)
    recs = records(forged)
    for rec in recs:
        if rec["type"] == "user-level" and rec["round"] == 1 and rec["status"] == "released":
            rec.update(status="skipped", survivors=0,
                       released_variance=rec["target_variance"])
    recs = _rechain(recs)
    write_chained(forged, recs)
    metrics = json.loads((forged / "metrics.json").read_text())
    entry = next(e for e in metrics["rounds"] if e["round"] == 1)
    assert entry["survivors"]  # the honest run summed these clients' updates
    entry.update(aborted=True, num_survivors=0,
                 abort_reason="skipped: 1 client(s) sampled, fewer than a user-level session")
    (forged / "metrics.json").write_text(json.dumps(metrics))
    lowered = [r for r in recs if r["type"] == "user-level"][-1]["epsilon_unsampled"]
    assert lowered < honest  # the forgery pays
    report = audit_run(forged)
    assert not report["verified"]
    assert any("skipped" in v and "survivor" in v for v in report["violations"]), \
        report["violations"]
