"""A round that aborts leaves the global model and the server optimizer
exactly as they were, and the federation goes on; the privacy spent in it is
settled in the ledger at once, with entered_sum = false."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from securefl.encoding import FixedPointCodec
from securefl.errors import AbortError
from securefl.federation.checkpoint import CHECKPOINT_FILENAME, load_checkpoint
from securefl.federation.model import make_mlp
from securefl.federation.optimizers import ServerOptimizerConfig, ServerOptimizerKind
from securefl.federation.server import AggregationMode, Server
from securefl.federation.simulation import (
    METRICS_FILENAME,
    RoundReport,
    SimulationConfig,
    dropout_schedule,
    run_simulation,
)
from securefl.privacy.ledger import LEDGER_FILENAME, read_ledger
from securefl.protocol import Round

torch.set_num_threads(1)

# seed 18: round 2 and round 4 each lose one client, and with threshold = n
# that aborts them; rounds 1 and 3 succeed.
CONFIG = SimulationConfig(num_clients=4, rounds=4, dropout=0.15, threshold=4,
                          noise_multiplier=1.0, seed=18, hidden=16)


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


@pytest.mark.parametrize("secure", [True, False])
def test_aborted_rounds_leave_model_ledger_checkpoint_intact(tmp_path: Path, monkeypatch,
                                                             secure: bool) -> None:
    config = SimulationConfig(**{**CONFIG.__dict__, "secure": secure})
    assert [bool(d) for d in dropout_schedule(config)] == [False, True, False, True]
    starts: list[list[torch.Tensor]] = []
    original = Server.global_parameters

    def recording(self: Server) -> list[torch.Tensor]:
        params = original(self)
        starts.append([p.clone() for p in params])
        return params

    monkeypatch.setattr(Server, "global_parameters", recording)
    snapshots: dict[int, tuple[bytes | None, bytes | None, bytes | None]] = {}
    out = tmp_path / "run"

    def on_round(report: RoundReport) -> None:
        snapshots[report.round] = (_read(out / LEDGER_FILENAME),
                                   _read(out / CHECKPOINT_FILENAME),
                                   _read(out / METRICS_FILENAME))

    result = run_simulation(config, out, on_round=on_round)
    assert [r.aborted for r in result.rounds] == [False, True, False, True]
    assert all("aggregation aborted" in r.abort_reason for r in result.rounds if r.aborted)
    # after an aborted round the ledger grew by that round only, settled at once
    assert snapshots[1][0] is not None and snapshots[1][1] is not None
    assert snapshots[2][0] is not None and snapshots[2][0].startswith(snapshots[1][0])
    grown = snapshots[2][0][len(snapshots[1][0]):].decode().splitlines()
    assert {json.loads(line)["round"] for line in grown} == {2}
    assert sum('"status":"round-aborted"' in line for line in grown) == 4
    # the checkpoint of an aborted round holds the same model and optimizer state
    assert load_checkpoint(out / CHECKPOINT_FILENAME)["round"] == 4
    before, after = (torch.load(io.BytesIO(snapshots[n][1]), weights_only=False)
                     for n in (1, 2))
    assert (before["round"], after["round"]) == (1, 2)
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])
    assert before["server_optimizer"]["t"] == after["server_optimizer"]["t"]
    # the global model (what round 3 and the end start from) is unchanged
    for before, after in zip(starts[1], starts[2], strict=True):
        assert torch.equal(before, after)
    for before, after in zip(starts[3], result.model.parameters(), strict=True):
        assert torch.equal(before, after.detach())
    # and the federation went on: round 3 changed it
    assert any(not torch.equal(a, b) for a, b in zip(starts[2], starts[3], strict=True))

    # the privacy spent in aborted rounds is recorded, never hidden
    rows = read_ledger(out / LEDGER_FILENAME)
    assert [(r.round, r.client_id) for r in rows] == [
        (rnd, cid) for rnd in (1, 2, 3, 4) for cid in (1, 2, 3, 4)]
    for row in rows:
        if row.round in (2, 4):
            assert row.status == "round-aborted" and not row.entered_sum
            assert row.survivors == 0 and row.local_steps > 0
        else:
            assert row.entered_sum and row.survivors == 4
    final = {r.client_id: r for r in rows if r.round == 4}
    for client in result.clients:
        assert final[client.client_id].epsilon_rdp == pytest.approx(
            client.accountant.get_epsilon(delta=config.delta))
    assert result.metrics["final"]["rounds_aborted"] == 2


def test_server_abort_changes_nothing() -> None:
    model = make_mlp(3, 2, 4, seed=0)
    shapes = tuple(tuple(p.shape) for p in model.parameters())
    codec = FixedPointCodec(shapes=shapes, bits=32, frac_bits=16, clip=4.0, num_clients=3)
    server = Server(model, codec, ServerOptimizerConfig(kind=ServerOptimizerKind.FEDAVGM),
                    (1, 2, 3), mode=AggregationMode.SECURE, threshold=3)
    rng = np.random.default_rng(0)
    updates = {cid: codec.encode([np.full(s, 0.1 * cid) for s in shapes], rng)
               for cid in (1, 2, 3)}
    server.apply(server.aggregate(1, updates, {}))
    params = [p.detach().clone() for p in model.parameters()]
    state = server.optimizer.state_dict()
    with pytest.raises(AbortError):
        server.aggregate(2, updates, {2: Round.SHARE_KEYS})
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters(), strict=True))
    after = server.optimizer.state_dict()
    assert after["t"] == state["t"] == 1
    assert all(np.array_equal(a, b) for a, b in zip(after["m"], state["m"], strict=True))
