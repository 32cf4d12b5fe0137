"""securefl on a real Flower deployment: a SuperLink and five SuperNodes on
127.0.0.1 (insecure mode), the example app run with ``flwr run`` for three
rounds, one SuperNode stopped in the middle of round 2.

Checks: the run completes; every round's sum is exactly the survivors'
encoded updates (what each node's ``train`` returned is recorded on the node
by a test copy of the app; the rounding is each node's secret, so the check
allows each value to be rounded up or down); the in-process simulator on
the same seeds, told the same dropout, has the same survivors and the same
DP accounting; the ledger records the drop; every process the test started
is gone afterwards.  The SuperNodes run insecure, so they opt in to
semi-honest mode without authenticated channels (node config).

Select with ``-m flower_runtime`` (skip with ``-m "not flower_runtime"``).
Set SECUREFL_KEEP_FLOWER_LOGS=1 to keep the deployment's logs.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr", reason="flwr is not installed (pip install 'securefl[flower]')")
torch = pytest.importorskip("torch")

from flower_harness import (  # noqa: E402
    Deployment,
    check_exact_sum,
    load_recorded,
    recording_app_dir,
    simulate_reference,
)

from securefl.federation.simulation import preflight  # noqa: E402
from securefl.flower.federation import simulation_config  # noqa: E402
from securefl.privacy.ledger import read_ledger  # noqa: E402
from securefl.protocol import Round  # noqa: E402

pytestmark = [pytest.mark.flower_runtime]

RUN: dict[str, Any] = {"num-rounds": 3, "num-clients": 5, "seed": 3, "noise-multiplier": 1.1,
                       "hidden": 16, "batch-size": 32, "round-timeout": 60.0}
KILLED_PARTITION = 2  # protocol client 3


def _need_binaries() -> None:
    for name in ("flower-superlink", "flower-supernode", "flwr"):
        if shutil.which(name) is None and not (Path(__import__("sys").executable).parent
                                               / name).exists():
            pytest.skip(f"{name} is not on PATH")


def _events(out: Path) -> list[dict[str, Any]]:
    path = out / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _wait(predicate: Any, timeout: float, what: str, deployment: Deployment) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n--- flwr run ---\n"
                         f"{deployment.log('flwr-run.log')[-3000:]}")


def test_real_deployment_survives_a_killed_supernode(tmp_path: Path) -> None:
    _need_binaries()
    torch.set_num_threads(1)
    started = time.monotonic()
    out = tmp_path / "flower"
    run_config = {**RUN, "output-dir": str(out)}
    app_dir = recording_app_dir(tmp_path)
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    deployment = Deployment(5, node_configs=[
        f'partition-id={i} num-partitions=5 securefl-allow-unauthenticated-semi-honest=true'
        f' test-record-dir="{recorded}"' for i in range(5)])
    phases: dict[str, float] = {}
    with deployment:
        phases["deployment online"] = time.monotonic() - started
        run = deployment.run_app(app_dir, run_config)
        _wait(lambda: any(e["round"] == 2 and e["stage"] == "masked-input-collection"
                          for e in _events(out)), 150, "round 2's masked-input stage",
              deployment)
        deployment.kill_node(KILLED_PARTITION)  # SIGTERM to its process group
        phases["killed"] = time.monotonic() - started
        # normally about 60 s; 180 s leaves room for one round timeout if the
        # stopped node's "Node Unavailable" reply were lost
        _wait(lambda: run.poll() is not None, 180, "flwr run to finish", deployment)
        phases["run finished"] = time.monotonic() - started
        _wait(lambda: any(r.get("status", "").startswith("finished")
                          for r in deployment.runs()), 30, "the run to be settled",
              deployment)
        statuses = [r.get("status") for r in deployment.runs()]
        assert statuses == ["finished:completed"], (
            f"{statuses}\n{deployment.log('flwr-run.log')[-4000:]}")
    phases["stopped"] = time.monotonic() - started
    assert deployment.leftover == [], f"processes left running: {deployment.leftover}"
    assert not deployment.root.exists() or deployment.leftover == []

    metrics = json.loads((out / "metrics.json").read_text())
    survivors = [r["survivors"] for r in metrics["rounds"]]
    assert survivors[0] == [1, 2, 3, 4, 5]
    rows = {(r.round, r.client_id): r for r in read_ledger(out / "ledger.jsonl")}
    killed = KILLED_PARTITION + 1
    drop = rows[2, killed]
    assert drop.dropped_at is not None, "the ledger must show the drop in round 2"
    assert drop.status == ("included" if drop.entered_sum else "dropped")
    assert rows[3, killed].dropped_at == "ADVERTISE_KEYS" and not rows[3, killed].entered_sum
    assert survivors[2] == [1, 2, 4, 5]
    assert metrics["final"]["rounds_completed"] == 3

    schedule: list[dict[int, Round]] = [{}, {}, {}]
    for row in rows.values():
        if row.dropped_at is not None:
            schedule[row.round - 1][row.client_id] = Round[row.dropped_at]
    _, codec = preflight(simulation_config(run_config))
    trained = load_recorded(recorded)
    sums = np.load(out / "sums.npz")
    for r in (1, 2, 3):
        check_exact_sum(sums[f"round_{r}"], codec, [trained[c, r] for c in survivors[r - 1]])
    ref = simulate_reference(run_config, schedule, tmp_path / "simulator")
    phases["reference"] = time.monotonic() - started
    assert [r["survivors"] for r in ref.metrics["rounds"]] == survivors
    sim_rows = {(r.round, r.client_id): r for r in ref.ledger}
    for cid in (1, 2, 4, 5):
        assert rows[3, cid].history == sim_rows[3, cid].history
        assert rows[3, cid].epsilon_rdp == pytest.approx(sim_rows[3, cid].epsilon_rdp)
    print(f"real deployment test: {time.monotonic() - started:.1f} s,"
          f" round 2 drop of client {killed} at {drop.dropped_at}; phases {phases}")


def test_real_deployment_active_mode_with_pinned_keys(tmp_path: Path) -> None:
    """Active mode on real processes: each SuperNode gets its own identity key
    and the pinned file through its node config; one round with the
    consistency check completes and its sum is exactly the nodes' encoded
    updates.  No mode is set anywhere: the pinned keys make it active.  The
    sessions run over the SecAgg+ graph ``HararyGraph(2)`` (run config
    ``graph``, ``graph-degree``), which every node checks by its policy, with
    sparse (Merkle) roster delivery (run config ``roster-delivery``): each
    node process receives only its own and its neighbours' signed entries
    with inclusion proofs, and the sum is still exact."""
    _need_binaries()
    from securefl.flower import provision_identities

    keys = provision_identities(tmp_path / "keys", range(1, 5))
    pinned = tmp_path / "keys" / "pinned.json"
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    node_configs = [f'partition-id={i} num-partitions=4 securefl-identity-key="{keys[i + 1]}"'
                    f' securefl-pinned-keys="{pinned}" test-record-dir="{recorded}"'
                    for i in range(4)]
    out = tmp_path / "flower"
    run_config = {**RUN, "num-clients": 4, "num-rounds": 1, "graph": "harary",
                  "graph-degree": 2, "roster-delivery": "merkle", "pinned-keys": str(pinned),
                  "output-dir": str(out)}
    deployment = Deployment(4, node_configs=node_configs)
    with deployment:
        run = deployment.run_app(recording_app_dir(tmp_path), run_config)
        _wait(lambda: run.poll() is not None, 150, "flwr run to finish", deployment)
        _wait(lambda: any(r.get("status", "").startswith("finished")
                          for r in deployment.runs()), 30, "the run to be settled",
              deployment)
        statuses = [r.get("status") for r in deployment.runs()]
        assert statuses == ["finished:completed"], (
            f"{statuses}\n{deployment.log('flwr-run.log')[-4000:]}")
    assert deployment.leftover == [], f"processes left running: {deployment.leftover}"
    stages = [e["stage"] for e in _events(out)]
    assert "consistency-check" in stages
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["security_mode"] == "active"
    assert metrics["config"]["graph"] == "harary"
    assert metrics["config"]["graph_degree_used"] == 2
    assert metrics["config"]["roster_delivery"] == "merkle"
    assert metrics["rounds"][0]["roster_delivery"] == "merkle"
    assert metrics["rounds"][0]["survivors"] == [1, 2, 3, 4]
    _, codec = preflight(simulation_config(run_config))
    trained = load_recorded(recorded)
    check_exact_sum(np.load(out / "sums.npz")["round_1"], codec,
                    [trained[c, 1] for c in (1, 2, 3, 4)])
