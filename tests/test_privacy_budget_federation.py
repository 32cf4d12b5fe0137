"""In a federation, a client that would exceed its budget refuses the round
(and says so), a client whose update the encoder refuses drops out cleanly,
and no client ever ends over budget."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from securefl.cli.simulate import format_round
from securefl.federation.simulation import SimulationConfig, run_simulation
from securefl.privacy.client import PrivateClient
from securefl.privacy.ledger import LEDGER_FILENAME, Participation, read_ledger

torch.set_num_threads(1)

BASE = SimulationConfig(num_clients=3, rounds=4, dropout=0.0, noise_multiplier=1.0,
                        epsilon_budget=4.5, seed=0, hidden=16)


def test_budget_guard_in_a_federation(tmp_path: Path) -> None:
    result = run_simulation(BASE, tmp_path / "run")
    refusals = [(r.round, c.client_id) for r in result.rounds for c in r.clients
                if c.status is Participation.REFUSED_BUDGET]
    assert refusals, "the budget should run out within four rounds"
    rows = read_ledger(tmp_path / "run" / LEDGER_FILENAME)
    for row in rows:
        assert row.epsilon_rdp <= 4.5
        if row.status == Participation.REFUSED_BUDGET.value:
            assert row.local_steps == 0 and not row.entered_sum
    for client in result.clients:
        assert client.epsilon() <= 4.5
        # once refused, a client never trains again (its budget only shrinks)
        mine = [r for r in rows if r.client_id == client.client_id]
        statuses = [r.status == Participation.REFUSED_BUDGET.value for r in mine]
        assert statuses == sorted(statuses)
    first_round, first_client = refusals[0]
    report = result.rounds[first_round - 1]
    assert "refuses the round" in report.refused[first_client]
    assert f"{first_client}:refused(budget)" in format_round(report, 3)


def test_an_update_the_encoder_refuses_drops_out_cleanly(tmp_path: Path, monkeypatch) -> None:
    original = PrivateClient.train_round

    def poisoned(self: PrivateClient, global_params):  # type: ignore[no-untyped-def]
        result = original(self, global_params)
        if self.client_id == 2:
            update = [u.copy() for u in result.update]
            update[0][0, 0] = np.nan
            return replace(result, update=update)
        return result

    monkeypatch.setattr(PrivateClient, "train_round", poisoned)
    config = replace(BASE, rounds=2, epsilon_budget=None)
    result = run_simulation(config, tmp_path / "run")
    for report in result.rounds:
        assert not report.aborted and report.survivors == (1, 3)
        client = report.clients[1]
        assert client.status is Participation.ENCODING_ERROR and not client.entered_sum
        assert "NaN or infinite" in client.detail
        assert "2:refused(encoding)" in format_round(report, 3)
    rows = [r for r in read_ledger(tmp_path / "run" / LEDGER_FILENAME) if r.client_id == 2]
    # it trained, so it spent privacy, and the ledger says so
    assert all(r.local_steps > 0 and r.epsilon_rdp > 0 and not r.entered_sum for r in rows)
    assert all(np.isfinite(p.detach().numpy()).all() for p in result.model.parameters())
