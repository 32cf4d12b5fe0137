"""With the same seed and reproducible (insecure) noise, secure aggregation
and plain summation end with the same model, up to the encoding's rounding
error, and the same privacy.  (With the default noise from os.urandom no two
runs share their noise: that is the point.)"""

from __future__ import annotations

from pathlib import Path

import torch

from securefl.federation.simulation import SimulationConfig, run_simulation
from securefl.privacy.ledger import LEDGER_FILENAME, read_ledger

torch.set_num_threads(1)


def test_secure_and_plain_runs_agree(tmp_path: Path) -> None:
    base = dict(num_clients=5, rounds=3, dropout=0.3, noise_multiplier=1.0,
                seed=4, hidden=16, frac_bits=20, insecure_reproducible_noise=True)
    secure = run_simulation(SimulationConfig(**base, secure=True), tmp_path / "secure")
    plain = run_simulation(SimulationConfig(**base, secure=False), tmp_path / "plain")
    assert [r.survivors for r in secure.rounds] == [r.survivors for r in plain.rounds]
    assert [r.aborted for r in secure.rounds] == [r.aborted for r in plain.rounds]
    assert any(len(r.survivors) < 5 for r in secure.rounds), "the seed should drop someone"
    # rounding moves each value by < 2^-20 per client and round; training then
    # propagates it smoothly, so the models differ by a few rounding steps only
    resolution = 2.0**-20
    with torch.no_grad():
        worst = max(float((a - b).abs().max()) for a, b in
                    zip(secure.model.parameters(), plain.model.parameters(), strict=True))
        scale = max(float(p.abs().max()) for p in secure.model.parameters())
    assert worst < 200 * resolution, worst
    assert scale > 1000 * worst
    # the privacy spent is identical: DP noise and sampling do not depend on the path
    rows_secure = read_ledger(tmp_path / "secure" / LEDGER_FILENAME)
    rows_plain = read_ledger(tmp_path / "plain" / LEDGER_FILENAME)
    assert [(r.client_id, r.epsilon_rdp, r.entered_sum) for r in rows_secure] == [
        (r.client_id, r.epsilon_rdp, r.entered_sum) for r in rows_plain]
    assert all(r.secure_aggregation for r in rows_secure)
    assert not any(r.secure_aggregation for r in rows_plain)
    assert abs(secure.final_accuracy - plain.final_accuracy) <= 1 / 360 + 1e-9
