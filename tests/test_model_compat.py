"""Layers DP-SGD cannot train are refused up front, naming the layer and the
fix; replacing them is an explicit opt-in that says what it replaced; and the
PRV accountant no longer prints numpy's ``divide by zero`` into the round
table."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.layers import DPLSTM
from opacus.validators import ModuleValidator
from torch import nn

from securefl.errors import ConfigurationError, ModelIncompatibleError, SecureFLError
from securefl.privacy import DPConfig, PrivateClient, make_private_compatible
from securefl.privacy.layers import incompatible_layers, prepare_model

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def _data(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


def test_a_batchnorm_is_refused_naming_its_path_class_and_the_fix() -> None:
    torch.manual_seed(0)
    with pytest.raises(ModelIncompatibleError) as info:
        make_private_compatible(Net())
    error = info.value
    assert isinstance(error, ConfigurationError) and isinstance(error, SecureFLError)
    text = str(error)
    assert "'encoder.1' (BatchNorm1d)" in text
    assert "nn.GroupNorm(1, 16) or nn.LayerNorm(16)" in text
    assert "replace_incompatible_layers=True" in text
    assert [(layer.path, layer.layer) for layer in error.layers] == [("encoder.1", "BatchNorm1d")]


def test_a_frozen_batchnorm_is_refused_although_opacus_accepts_it() -> None:
    # the client trains in train() mode, where even a frozen BatchNorm
    # normalizes with the batch's statistics: examples are no longer independent
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    model[1].requires_grad_(False)
    assert ModuleValidator.validate(model) == []
    assert [layer.path for layer in incompatible_layers(model)] == ["1"]
    with pytest.raises(ModelIncompatibleError, match=r"'1' \(BatchNorm1d\)"):
        make_private_compatible(model)


def test_the_client_itself_refuses_an_incompatible_model() -> None:
    x, y = _data()
    with pytest.raises(ModelIncompatibleError, match=r"client 4: 'encoder.1' \(BatchNorm1d\)"):
        PrivateClient(4, Net(), x, y, DPConfig(noise_multiplier=1.0))


def test_the_simulator_refuses_before_writing_anything(tmp_path) -> None:
    from securefl.federation.simulation import SimulationConfig, run_simulation

    model = nn.Sequential(nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    config = SimulationConfig(num_clients=3, rounds=1, dropout=0.0, noise_multiplier=1.0)
    with pytest.raises(ModelIncompatibleError, match=r"'1' \(BatchNorm1d\)"):
        run_simulation(config, tmp_path / "run", model=model)
    assert not (tmp_path / "run").exists()


def test_replacement_is_opt_in_logged_and_leaves_the_callers_model(caplog) -> None:
    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():
        model.encoder[1].weight.uniform_(0.5, 2.0)
        model.encoder[1].bias.uniform_(-1.0, 1.0)
    with caplog.at_level(logging.WARNING, logger="securefl.privacy.layers"):
        fixed, replaced = prepare_model(model, replace_incompatible_layers=True)
    assert [str(r) for r in replaced] == [
        "replaced layer 'encoder.1': BatchNorm1d(16) -> GroupNorm(1, 16)"]
    assert "replaced layer 'encoder.1': BatchNorm1d(16) -> GroupNorm(1, 16)" in caplog.text
    assert isinstance(model.encoder[1], nn.BatchNorm1d)  # the caller's model is untouched
    norm = fixed.encoder[1]
    assert isinstance(norm, nn.GroupNorm) and norm.num_groups == 1
    # the learned scale and shift survive
    assert torch.equal(norm.weight, model.encoder[1].weight)
    assert torch.equal(norm.bias, model.encoder[1].bias)
    x, y = _data()
    client = PrivateClient(1, fixed, x, y, DPConfig(noise_multiplier=1.0))
    result = client.train_round([p.detach().clone() for p in fixed.parameters()])
    assert result.steps == client.steps_per_round
    assert all(np.isfinite(u).all() for u in result.update)


def test_opacus_groupnorm_fix_predicts_a_constant_ours_does_not() -> None:
    # the "stays at the majority class": GroupNorm(gcd(32, C), C) on
    # (N, C) features has one feature per group and normalizes each to 0
    torch.manual_seed(0)
    model = Net()
    x = torch.as_tensor(_data()[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opacus_fixed = ModuleValidator.fix(model)
    ours, _ = prepare_model(model, replace_incompatible_layers=True)
    with torch.no_grad():
        assert torch.allclose(opacus_fixed(x), opacus_fixed(x)[:1].expand(len(x), -1), atol=1e-5)
        assert ours(x).std(dim=0).min() > 1e-3


@settings(max_examples=20, deadline=None)
@given(channels=st.integers(2, 40), two_d=st.booleans(), batch=st.integers(3, 6),
       seed=st.integers(0, 2**16))
def test_after_replacement_an_examples_output_ignores_the_rest_of_its_batch(
        channels: int, two_d: bool, batch: int, seed: int) -> None:
    # what DP-SGD needs: f(batch)[i] == f(example i alone), in train mode
    generator = torch.Generator().manual_seed(seed)
    if two_d:
        model = nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels))
        x = torch.randn(batch, 1, 5, 5, generator=generator)
    else:
        model = nn.Sequential(nn.Linear(3, channels), nn.BatchNorm1d(channels))
        x = torch.randn(batch, 3, generator=generator)
    fixed, _ = prepare_model(model, replace_incompatible_layers=True)
    fixed.train()
    together = fixed(x)
    alone = torch.cat([fixed(x[i:i + 1]) for i in range(batch)])
    assert torch.allclose(together, alone, atol=1e-5)
    model.train()  # the refused BatchNorm couples the examples of a batch
    assert not torch.allclose(model(x)[:2], model(x[:2]), atol=1e-4)


def test_an_lstm_is_replaced_by_opacus_drop_in_on_request() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.LSTM(3, 4, batch_first=True))
    with pytest.raises(ModelIncompatibleError, match=r"'0' \(LSTM\).*opacus.layers.DPLSTM"):
        make_private_compatible(model)
    fixed = make_private_compatible(model, replace_incompatible_layers=True)
    assert isinstance(fixed[0], DPLSTM)
    x = torch.randn(2, 5, 3)
    with torch.no_grad():
        assert torch.allclose(fixed(x)[0], model(x)[0], atol=1e-5)


def test_a_layer_without_replacement_is_refused_even_on_request() -> None:
    class Scaled(nn.Linear):
        def __init__(self) -> None:
            super().__init__(3, 3)
            self.register_buffer("scale", torch.ones(3))

    model = nn.Sequential(Scaled())
    for replace in (False, True):
        with pytest.raises(ModelIncompatibleError, match=r"'0' \(Scaled\).*buffers"):
            make_private_compatible(model, replace_incompatible_layers=replace)


def test_a_compatible_model_is_returned_as_is() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.GroupNorm(1, 4), nn.LayerNorm(4))
    assert make_private_compatible(model) is model
    assert incompatible_layers(model) == []


def test_prv_at_sample_rate_one_is_computed_without_numpy_warnings() -> None:
    # Opacus's PRV takes log(1 - q) = log(0) at q = 1: numpy used to print
    # "RuntimeWarning: divide by zero" into the round table
    from securefl.privacy.accounting import AccountantKind, epsilon, epsilon_pld

    history = [(1.0 + np.random.default_rng().random() * 1e-6, 1.0, 7)]  # not cached
    before = np.geterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prv = epsilon(history, 1e-5, AccountantKind.PRV)
    assert np.geterr() == before
    assert prv == pytest.approx(epsilon_pld(history, 1e-5), rel=0.02)


def test_a_full_batch_client_trains_without_numpy_warnings() -> None:
    x, y = _data(16)
    model = nn.Sequential(nn.Linear(6, 2))
    client = PrivateClient(1, model, x, y, DPConfig(noise_multiplier=1.3 + 1e-7, sample_rate=1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        client.train_round([p.detach().clone() for p in model.parameters()])
        from securefl.privacy.accounting import AccountantKind

        assert np.isfinite(client.epsilon(AccountantKind.PRV))


def _run_python(code: str, tmp_path) -> subprocess.CompletedProcess[str]:
    # a fresh interpreter with Python's default warning filters and no logging
    # configuration: what a user's script or terminal shows
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
                          capture_output=True, timeout=600, check=False)


def test_a_users_script_prints_the_replacement(tmp_path) -> None:
    proc = _run_python(textwrap.dedent("""
        import numpy as np, torch
        from torch import nn
        import securefl
        torch.set_num_threads(1)
        rng = np.random.default_rng(0)
        clients = [(x, (x[:, 0] > 0).astype(np.int64))
                   for x in (rng.normal(size=(20, 4)).astype(np.float32) for _ in range(3))]
        model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
        securefl.federate(model, clients, nn.CrossEntropyLoss(), rounds=1,
                          noise_multiplier=1.0, dropout=0.0,
                          replace_incompatible_layers=True)
    """), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "replaced layer '1': BatchNorm1d(8) -> GroupNorm(1, 8)" in proc.stderr


def test_the_simulate_round_table_gets_no_numpy_warning_at_sample_rate_one(tmp_path) -> None:
    # the run: PRV at q = 1 printed "RuntimeWarning: divide by zero"
    # between the rows of the round table
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "securefl.cli", "simulate", "--clients", "3", "--rounds", "2",
         "--sample-rate", "1", "--dropout", "0", "--no-progress", "-o", str(out)],
        cwd=ROOT, env={k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"},
        text=True, capture_output=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Warning" not in proc.stderr and "divide by zero" not in proc.stderr, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line[:5].strip().isdigit()]
    assert [line.split()[0] for line in rows] == ["1", "2"], proc.stdout
    assert "Opacus PRV" in proc.stdout  # the PRV epsilon was computed at q = 1
