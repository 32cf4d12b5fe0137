"""The same federation through Flower's simulation engine (Ray): a SuperLink
in simulation mode with five simulated SuperNodes, ``flwr run`` for three
rounds; the sums, final model and ledger equal the in-process simulator's.

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

from flower_harness import APP_DIR, Deployment, simulate_reference  # noqa: E402

from securefl.privacy.ledger import read_ledger  # noqa: E402

pytestmark = [pytest.mark.flower_runtime]

RUN: dict[str, Any] = {"num-rounds": 3, "num-clients": 5, "seed": 3, "noise-multiplier": 1.1,
                       "hidden": 16, "batch-size": 32, "reproducible-rounding": True,
                       "insecure-reproducible-noise": True,
                       "round-timeout": 60.0}


def test_simulation_engine_matches_the_in_process_simulator(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "flower"
    run_config = {**RUN, "output-dir": str(out)}
    deployment = Deployment(0, simulation=True)
    with deployment:
        run = deployment.run_app(APP_DIR, run_config, federation_config="num-supernodes=5")
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
    ref = simulate_reference(run_config, [{}, {}, {}], tmp_path / "simulator")
    sums = np.load(out / "sums.npz")
    for r in (1, 2, 3):
        assert np.array_equal(sums[f"round_{r}"], ref.sums[r]), f"round {r}: sums differ"
    final = torch.load(out / "checkpoint.pt", weights_only=False)["model"]
    for key, value in ref.model_state.items():
        assert torch.equal(final[key], value), key
    rows = {(r.round, r.client_id): r for r in read_ledger(out / "ledger.jsonl")}
    sim_rows = {(r.round, r.client_id): r for r in ref.ledger}
    assert set(rows) == set(sim_rows)
    for key, row in rows.items():
        assert row.history == sim_rows[key].history
        assert row.status == sim_rows[key].status == "included"
