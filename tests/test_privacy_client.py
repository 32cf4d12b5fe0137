"""Opacus clients: one accountant across rounds, target epsilon turned into
a noise multiplier up front, the budget guard (models DP-SGD cannot train:
tests/test_model_compat.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from torch import nn

from securefl.errors import ConfigurationError, PrivacyBudgetExceededError
from securefl.privacy import (
    AccountantKind,
    DPConfig,
    PrivacyBudget,
    PrivateClient,
    Weighting,
    epsilon,
)

torch.set_num_threads(1)


def _data(n: int = 80, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    return x, y


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))


def test_one_accountant_composes_across_rounds() -> None:
    x, y = _data()
    config = DPConfig(noise_multiplier=1.2, sample_rate=0.25, batch_size=20, planned_rounds=3)
    client = PrivateClient(1, _model(), x, y, config)
    global_params = [p.detach().clone() for p in _model().parameters()]
    assert client.sample_rate == 0.25 and client.steps_per_round == 4
    accountant = client.accountant
    eps = []
    for _ in range(3):
        result = client.train_round(global_params)
        assert result.steps == 4
        eps.append(client.epsilon())
        assert client.accountant is accountant
    assert client.history == [(1.2, 0.25, 12)]
    assert eps[0] < eps[1] < eps[2]
    assert eps[-1] == pytest.approx(accountant.get_epsilon(delta=config.delta), rel=1e-12)


def test_update_is_local_minus_global_and_weighted() -> None:
    x, y = _data()
    global_model = _model()
    global_params = [p.detach().clone() for p in global_model.parameters()]
    for weighting, weight in ((Weighting.EXAMPLES, 80), (Weighting.UNIFORM, 1)):
        client = PrivateClient(1, _model(), x, y, DPConfig(noise_multiplier=1.0),
                               weighting=weighting)
        result = client.train_round(global_params)
        assert result.weight == weight
        for update, local, start in zip(result.update, client.parameters(), global_params,
                                        strict=True):
            assert update.shape == tuple(start.shape)
            np.testing.assert_allclose(update, (local - start).detach().numpy(), atol=1e-6)
        assert any(np.abs(u).max() > 0 for u in result.update)


def test_the_seed_reproduces_training_only_in_the_insecure_mode() -> None:
    x, y = _data()
    params = [p.detach().clone() for p in _model().parameters()]
    insecure = DPConfig(noise_multiplier=1.0, insecure_reproducible_noise=True)
    a = PrivateClient(1, _model(), x, y, insecure, seed=5)
    b = PrivateClient(1, _model(), x, y, insecure, seed=5)
    assert a.noise_source.value == "insecure-seeded"
    ua, ub = a.train_round(params).update, b.train_round(params).update
    assert all(np.array_equal(p, q) for p, q in zip(ua, ub, strict=True))
    # By default the same seed (and the same everything) gives other noise:
    # it comes from os.urandom, and the seed is ignored.
    c = PrivateClient(1, _model(), x, y, DPConfig(noise_multiplier=1.0), seed=5)
    d = PrivateClient(1, _model(), x, y, DPConfig(noise_multiplier=1.0), seed=5)
    assert c.noise_source.value == "os-csprng"
    uc, ud = c.train_round(params).update, d.train_round(params).update
    assert not any(np.array_equal(p, q) for p, q in zip(uc, ud, strict=True))
    with pytest.raises(ConfigurationError, match="needs a seed"):
        PrivateClient(1, _model(), x, y, insecure)


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
def test_target_epsilon_becomes_a_noise_multiplier_up_front() -> None:
    x, y = _data(100)
    config = DPConfig(target_epsilon=3.0, sample_rate=0.25, batch_size=25, planned_rounds=4)
    client = PrivateClient(1, _model(), x, y, config)
    expected = get_noise_multiplier(target_epsilon=3.0, target_delta=config.delta,
                                    sample_rate=0.25, steps=16, accountant="rdp")
    assert client.noise_multiplier == pytest.approx(expected)
    params = [p.detach().clone() for p in _model().parameters()]
    for _ in range(4):
        client.check_budget()
        client.train_round(params)
    assert 2.9 <= client.epsilon() <= 3.0
    # the budget defaults to the target: a fifth round is refused, and says why
    with pytest.raises(PrivacyBudgetExceededError, match=r"client 1 refuses.*> its budget 3"):
        client.check_budget()
    assert client.history == [(client.noise_multiplier, 0.25, 16)]


def test_budget_guard_refuses_before_training() -> None:
    x, y = _data()
    config = DPConfig(noise_multiplier=1.5, batch_size=20, epsilon_budget=4.0)
    client = PrivateClient(7, _model(), x, y, config)
    params = [p.detach().clone() for p in _model().parameters()]
    rounds = 0
    with pytest.raises(PrivacyBudgetExceededError) as info:
        for _ in range(100):
            projected = client.check_budget()
            assert projected is not None and projected <= 4.0
            client.train_round(params)
            rounds += 1
    assert rounds >= 1
    assert client.epsilon() <= 4.0
    message = str(info.value)
    assert "client 7" in message and "budget 4" in message and "delta 1e-05" in message
    # what it refused really would have crossed the budget
    assert epsilon(client.history + client.planned_round(), 1e-5) > 4.0


def test_budget_check_matches_opacus() -> None:
    budget = PrivacyBudget(epsilon=2.0, delta=1e-5)
    history = [(1.0, 0.1, 50)]
    accountant = RDPAccountant()
    accountant.history = [(1.0, 0.1, 60)]
    if accountant.get_epsilon(1e-5) <= 2.0:
        assert budget.check(history, [(1.0, 0.1, 10)]) == pytest.approx(
            accountant.get_epsilon(1e-5))
    else:
        with pytest.raises(PrivacyBudgetExceededError):
            budget.check(history, [(1.0, 0.1, 10)])
    with pytest.raises(ConfigurationError):
        PrivacyBudget(epsilon=0.0, delta=1e-5)
    with pytest.raises(ConfigurationError):
        PrivacyBudget(epsilon=1.0, delta=1.0)


def test_epsilon_matches_opacus_accountants() -> None:
    from opacus.accountants import PRVAccountant

    history = [(1.1, 0.2, 30), (1.5, 0.1, 7)]
    rdp = RDPAccountant()
    rdp.history = list(history)
    prv = PRVAccountant()
    prv.history = list(history)
    assert epsilon(history, 1e-5, AccountantKind.RDP) == pytest.approx(rdp.get_epsilon(1e-5),
                                                                       rel=1e-12)
    assert epsilon(history, 1e-5, AccountantKind.PRV) == pytest.approx(prv.get_epsilon(1e-5),
                                                                       rel=1e-12)
    assert epsilon([], 1e-5) == 0.0


def test_configuration_is_validated() -> None:
    with pytest.raises(ConfigurationError, match="exactly one"):
        DPConfig()
    with pytest.raises(ConfigurationError, match="exactly one"):
        DPConfig(noise_multiplier=1.0, target_epsilon=1.0)
    with pytest.raises(ConfigurationError, match="delta"):
        DPConfig(noise_multiplier=1.0, delta=0.0)
    # above the cap the audit holds every ledger row to: refused before training
    with pytest.raises(ConfigurationError, match=r"delta must be in \(0, 0.001\]"):
        DPConfig(noise_multiplier=1.0, delta=0.5)
    assert DPConfig(noise_multiplier=1.0, delta=1e-3).delta == 1e-3
    x, y = _data()
    with pytest.raises(ConfigurationError, match="matching non-empty"):
        PrivateClient(1, _model(), x, y[:-1], DPConfig(noise_multiplier=1.0))
    with pytest.raises(ConfigurationError, match="cannot reach epsilon"):
        PrivateClient(1, _model(), x, y, DPConfig(target_epsilon=1e-7, planned_rounds=100))
    with pytest.raises(ConfigurationError, match="sample rate"):
        DPConfig(noise_multiplier=1.0, sample_rate=0.0)
    with pytest.raises(ConfigurationError, match="must be a bool"):
        DPConfig(noise_multiplier=1.0, insecure_reproducible_noise="false")
