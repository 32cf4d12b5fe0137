"""The same federation through Flower's simulation engine (Ray): a SuperLink
in simulation mode with five simulated SuperNodes, ``flwr run`` for three
rounds; every sum is exactly the nodes' encoded updates (recorded on the
nodes by a test copy of the app), and the survivors and ledger equal the
in-process simulator's.  Simulated nodes have no node config of their own,
so the operator's semi-honest opt-in comes from the nodes' environment.

Needs Ray (``pip install 'flwr[simulation]'``, ray 2.55.1 for flwr 1.41/1.42);
skipped without it.  Marker ``flower_runtime``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr", reason="flwr is not installed (pip install 'securefl[flower]')")
pytest.importorskip("ray", reason="Ray is not installed (pip install 'flwr[simulation]')")
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

pytestmark = [pytest.mark.flower_runtime]

RUN: dict[str, Any] = {"num-rounds": 3, "num-clients": 5, "seed": 3, "noise-multiplier": 1.1,
                       "hidden": 16, "batch-size": 32, "round-timeout": 60.0}


def test_simulation_engine_matches_the_in_process_simulator(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "flower"
    run_config = {**RUN, "output-dir": str(out)}
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    deployment = Deployment(0, simulation=True)
    deployment.env.update({"SECUREFL_ALLOW_UNAUTHENTICATED_SEMI_HONEST": "true",
                           "SECUREFL_TEST_RECORD_DIR": str(recorded)})
    with deployment:
        run = deployment.run_app(recording_app_dir(tmp_path), run_config,
                                 federation_config="num-supernodes=5")
        deadline = time.monotonic() + 150
        while run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert run.poll() is not None, deployment.log("flwr-run.log")[-3000:]
        statuses = [r.get("status") for r in deployment.runs()]
        assert statuses == ["finished:completed"], (
            f"{statuses}\n{deployment.log('flwr-run.log')[-4000:]}")
    assert deployment.leftover == [], f"processes left running: {deployment.leftover}"

    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["survivors"] for r in metrics["rounds"]] == [[1, 2, 3, 4, 5]] * 3
    _, codec = preflight(simulation_config(run_config))
    trained = load_recorded(recorded)
    sums = np.load(out / "sums.npz")
    for r in (1, 2, 3):
        check_exact_sum(sums[f"round_{r}"], codec, [trained[c, r] for c in range(1, 6)])
    ref = simulate_reference(run_config, [{}, {}, {}], tmp_path / "simulator")
    rows = {(r.round, r.client_id): r for r in read_ledger(out / "ledger.jsonl")}
    sim_rows = {(r.round, r.client_id): r for r in ref.ledger}
    assert set(rows) == set(sim_rows)
    for key, row in rows.items():
        assert row.history == sim_rows[key].history
        assert row.status == sim_rows[key].status == "included"
