"""The server cannot regenerate a client's DP noise (issue 10, item 1).

The test plays the server.  It knows everything the server knows: the run
configuration (in ``metrics.json`` and ``checkpoint.pt``, including the run
seed), the ledger, the model, and the decoded sum of every round.  It then
tries to regenerate client 1's DP-SGD noise the way the old code allowed
(Opacus's ``torch.normal`` calls on a ``torch.Generator`` seeded with
``(seed * 1000 + client_id) * 2 + 2``), and to remove every client's noise
from the decoded sums.

An oracle (the test harness, which records the noise and the clipped
gradient sums the clients really used) measures how far the server got:

* by default (noise from ``os.urandom``) the server's estimate of the noise is
  independent of the truth: the residual is of the noise's own size (about
  sqrt(2) times it), and the "denoised" sum is as noisy as before;
* with ``insecure_reproducible_noise=True`` the very same attack removes the
  noise down to the encoding's rounding: the test has the power to see it.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from opacus.optimizers.optimizer import _generate_noise

import securefl.federation.server as server_module
from securefl.federation.checkpoint import load_checkpoint
from securefl.federation.simulation import SimulationConfig, SimulationResult, run_simulation
from securefl.privacy.client import DPConfig, PrivateClient, _ClientDPOptimizer
from securefl.privacy.ledger import LEDGER_FILENAME, read_ledger
from securefl.privacy.noise import OsRandomness, SeededRandomness

torch.set_num_threads(1)

ROUNDS = 2
CLIENTS = 3


class Recorder:
    """The oracle: every noise tensor and every clipped gradient sum each
    client's optimizer used, and every round's secure-aggregation total."""

    def __init__(self) -> None:
        self.noise: dict[int, list[torch.Tensor]] = defaultdict(list)  # id(randomness)
        self.signal: dict[int, list[list[torch.Tensor]]] = defaultdict(list)  # id(optimizer)
        self.totals: dict[int, np.ndarray] = {}


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, insecure: bool
         ) -> tuple[SimulationResult, Recorder]:
    rec = Recorder()
    for cls in (OsRandomness, SeededRandomness):
        original = cls.gaussian

        def gaussian(self: Any, std: float, shape: tuple[int, ...], dtype: torch.dtype,
                     _original: Any = original) -> torch.Tensor:
            noise = _original(self, std, shape, dtype)
            rec.noise[id(self)].append(noise.clone())
            return noise

        monkeypatch.setattr(cls, "gaussian", gaussian)
    original_add_noise = _ClientDPOptimizer.add_noise

    def add_noise(self: _ClientDPOptimizer) -> None:
        rec.signal[id(self)].append([p.summed_grad.detach().clone() for p in self.params])
        original_add_noise(self)

    monkeypatch.setattr(_ClientDPOptimizer, "add_noise", add_noise)
    original_sum = server_module.secure_sum

    def recording_sum(inputs: Any, cfg: Any, dropouts: Any = None, **kw: Any) -> Any:
        result = original_sum(inputs, cfg, dropouts, **kw)
        rec.totals[int(cfg.context.decode().rsplit(" ", 1)[1])] = np.array(result.total)
        return result

    monkeypatch.setattr(server_module, "secure_sum", recording_sum)
    config = SimulationConfig(num_clients=CLIENTS, rounds=ROUNDS, dropout=0.0,
                              noise_multiplier=1.0, hidden=8, seed=7,
                              insecure_reproducible_noise=insecure)
    result = run_simulation(config, tmp_path / ("insecure" if insecure else "secure"))
    return result, rec


# -- the server's side: only what it knows ----------------------------------------------


def _server_knowledge(run_dir: Path) -> dict[str, Any]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    checkpoint = load_checkpoint(run_dir / "checkpoint.pt")
    config = metrics["config"]
    assert checkpoint["extra"]["config"]["seed"] == config["seed"]  # the seed is public
    rows = read_ledger(run_dir / LEDGER_FILENAME)
    shapes = [tuple(v.shape) for v in checkpoint["model"].values()]
    return {"seed": int(config["seed"]), "lr": float(config["lr"]),
            "divisor": float(config["batch_size"]), "clip": float(config["max_grad_norm"]),
            "rows": rows, "shapes": shapes}


def _server_regenerates(know: dict[str, Any], client_id: int, seed_formula: Any
                        ) -> list[list[torch.Tensor]]:
    """The old code's noise for ``client_id``, round by round: the per-step
    noise tensors, as the server regenerates them."""
    rows = [r for r in know["rows"] if r.client_id == client_id]
    generator = torch.Generator().manual_seed(seed_formula(know["seed"], client_id))
    per_round = []
    for row in rows:
        std = row.noise_multiplier * know["clip"]
        per_round.append([
            _generate_noise(std=std, reference=torch.zeros(shape), generator=generator)
            for _ in range(row.local_steps) for shape in know["shapes"]])
    return per_round


def _contribution(steps: list[torch.Tensor], know: dict[str, Any]) -> np.ndarray:
    """What per-step gradient terms add to an update: SGD at rate lr on
    term / divisor, summed over the round's steps (flattened)."""
    shapes = know["shapes"]
    total = [np.zeros(s) for s in shapes]
    for i, t in enumerate(steps):
        total[i % len(shapes)] += t.double().numpy()
    scale = -know["lr"] / know["divisor"]
    return np.concatenate([scale * t.ravel() for t in total])


OLD_SEED = (lambda seed, cid: (seed * 1000 + cid) * 2 + 2)  # noqa: E731
OTHER_GUESSES = [lambda seed, cid: seed, lambda seed, cid: seed * 1000 + cid,
                 lambda seed, cid: cid, lambda seed, cid: 0]


def _attack(result: SimulationResult, rec: Recorder) -> dict[str, float]:
    know = _server_knowledge(result.output_dir)
    steps = result.clients[0].steps_per_round
    n_params = len(know["shapes"])
    # -- 1. one client's noise, all rounds together
    client = result.clients[0]
    truth = torch.cat([t.ravel() for t in rec.noise[id(client.randomness)]]).double()
    guess = torch.cat([t.ravel() for rnd in _server_regenerates(know, 1, OLD_SEED)
                       for t in rnd]).double()
    assert truth.shape == guess.shape
    out = {"noise_norm": float(truth.norm()), "noise_residual": float((truth - guess).norm()),
           "correlation": float(truth @ guess / (truth.norm() * guess.norm()))}
    out["other_guesses_best"] = min(
        float((truth - torch.cat([t.ravel() for rnd in _server_regenerates(know, 1, f)
                                  for t in rnd]).double()).norm())
        for f in OTHER_GUESSES)
    # -- 2. every client's noise, removed from each round's decoded sum
    codec = _codec_of(result)
    worst = 0.0
    noise_size = math.inf
    for rnd in range(1, ROUNDS + 1):
        decoded = codec.decode_sum(rec.totals[rnd])
        assert decoded.weight_total == CLIENTS  # uniform weights: 1 each
        summed = np.concatenate([t.ravel() for t in decoded.tensors])
        guessed_noise = sum(_contribution(_server_regenerates(know, c.client_id, OLD_SEED)
                                          [rnd - 1], know) for c in result.clients)
        denoised = summed - guessed_noise  # the server's estimate of the noiseless sum
        # the oracle: the clients' true noiseless sum and true noise in the sum
        chunk = slice((rnd - 1) * steps, rnd * steps)
        signal = sum(_contribution([t for step in rec.signal[id(c._optimizer)][chunk]
                                    for t in step], know) for c in result.clients)
        true_noise = sum(
            _contribution(rec.noise[id(c.randomness)][chunk.start * n_params:
                                                      chunk.stop * n_params], know)
            for c in result.clients)
        worst = max(worst, float(np.linalg.norm(denoised - signal)))
        noise_size = min(noise_size, float(np.linalg.norm(true_noise)))
        # sanity of the oracle: the sum is the signal plus the noise, to the encoding step
        assert np.linalg.norm(summed - signal - true_noise) < 1e-3 * np.linalg.norm(true_noise)
    out["sum_residual"] = worst
    out["sum_noise_norm"] = noise_size
    return out


def _codec_of(result: SimulationResult) -> Any:
    from securefl.federation.simulation import preflight

    metrics = result.metrics
    config = SimulationConfig(**{k: v for k, v in metrics["config"].items()
                                 if k in SimulationConfig.__dataclass_fields__})
    _, codec = preflight(config)
    return codec


def test_the_server_cannot_regenerate_the_noise(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    result, rec = _run(tmp_path, monkeypatch, insecure=False)
    rows = read_ledger(result.output_dir / LEDGER_FILENAME)
    assert {r.noise_source for r in rows} == {"os-csprng"}
    out = _attack(result, rec)
    # Independent N(0, s^2) vectors in ~6000 dimensions: |truth - guess| is
    # sqrt(2) |truth| within a few percent; 1.2 leaves a wide margin, and the
    # correlation's standard deviation is 1/sqrt(6000) ~ 0.013.
    assert out["noise_residual"] > 1.2 * out["noise_norm"], out
    assert abs(out["correlation"]) < 0.1, out
    assert out["other_guesses_best"] > 1.2 * out["noise_norm"], out
    # removing the server's guess from the decoded sums leaves them as noisy as before
    assert out["sum_residual"] > 0.8 * out["sum_noise_norm"], out


def test_the_attack_succeeds_against_insecure_reproducible_noise(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result, rec = _run(tmp_path, monkeypatch, insecure=True)
    rows = read_ledger(result.output_dir / LEDGER_FILENAME)
    assert {r.noise_source for r in rows} == {"insecure-seeded"}
    out = _attack(result, rec)
    assert out["noise_residual"] == 0.0, out  # regenerated bit for bit
    assert out["correlation"] == pytest.approx(1.0)
    # the decoded sums are denoised down to the encoding's rounding
    assert out["sum_residual"] < 1e-4 * out["sum_noise_norm"], out


def test_seeding_every_global_generator_does_not_reproduce_the_noise() -> None:
    """Nothing is drawn from torch's, numpy's or Python's global generators
    either: seeding all of them identically still gives other noise."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    start = [p.detach().clone() for p in model.parameters()]
    updates = []
    for _ in range(2):
        torch.manual_seed(1)
        np.random.seed(1)
        random.seed(1)
        client = PrivateClient(1, model, x, y, DPConfig(noise_multiplier=1.0), seed=1)
        updates.append(client.train_round(start).update)
    assert not any(np.array_equal(a, b) for a, b in zip(*updates, strict=True))


def test_os_randomness_draws_the_right_distributions() -> None:
    """The Gaussian noise has mean 0 and the requested std (and is normal by
    a Kolmogorov-Smirnov test); the Poisson mask keeps each record with the
    requested probability; uniforms lie in [0, 1).  Thresholds are many
    standard errors wide."""
    from scipy import stats

    source = OsRandomness()
    noise = source.gaussian(0.7, (400, 500), torch.float64).numpy().ravel()
    assert noise.shape == (200_000,)
    assert abs(noise.mean()) < 5 * 0.7 / math.sqrt(noise.size)
    assert noise.std() == pytest.approx(0.7, rel=0.01)
    assert stats.kstest(noise / 0.7, "norm").pvalue > 1e-6
    assert source.gaussian(0.0, (3,), torch.float32).abs().sum() == 0
    mask = source.poisson_mask(100_000, 0.2).numpy()
    assert mask.dtype == bool and abs(mask.mean() - 0.2) < 5 * math.sqrt(0.16 / mask.size)
    u = source.random(100_000)
    assert u.min() >= 0.0 and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.005
    assert not np.array_equal(source.random(64), source.random(64))
    assert "seed" not in repr(source)


def test_no_warning_is_silenced_because_none_is_raised() -> None:
    """No Opacus ``PrivacyEngine`` is created, so its secure-RNG warning
    (about its own torch generator) cannot arise; and building and training
    a client raises no warning at all, with every warning an error."""
    import warnings

    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = torch.nn.Sequential(torch.nn.Linear(6, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        client = PrivateClient(1, model, x, y, DPConfig(target_epsilon=3.0))
        client.train_round([p.detach().clone() for p in model.parameters()])
    assert client.noise_source.value == "os-csprng"
