"""Replace-one accounting, used when a client's record count is public
(weighting by examples): dp-accounting's PLD accountant with
``NeighboringRelation.REPLACE_ONE`` (tight), and an RDP bound from Opacus's
add/remove RDP through Mironov's weak triangle inequality (what the ledger
records, calibrates and guards with).  The bound must never be below the
tight value, and replace-one never below add/remove."""

from __future__ import annotations

import dp_accounting
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefl.errors import ConfigurationError, PrivacyBudgetExceededError
from securefl.privacy.accounting import (
    AccountantKind,
    epsilon,
    epsilon_replace_one_pld,
    epsilon_replace_one_rdp,
    noise_multiplier_for_replace_one,
)
from securefl.privacy.client import DPConfig, PrivateClient, Weighting, adjacency_for
from securefl.privacy.options import Adjacency

torch.set_num_threads(1)


def _pld_add_remove(history: list[tuple[float, float, int]], delta: float) -> float:
    accountant = dp_accounting.pld.PLDAccountant()
    for sigma, q, steps in history:
        accountant.compose(dp_accounting.PoissonSampledDpEvent(
            q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return float(accountant.get_epsilon(delta))


@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sigma=st.floats(1.0, 4.0), q=st.sampled_from([0.05, 0.2, 0.5, 1.0]),
       steps=st.integers(1, 60))
def test_replace_one_bound_dominates_the_tight_value_and_add_remove(
        sigma: float, q: float, steps: int) -> None:
    history = [(sigma, q, steps)]
    tight = epsilon_replace_one_pld(history, 1e-5)
    bound = epsilon_replace_one_rdp(history, 1e-5)
    assert np.isfinite(tight) and np.isfinite(bound)
    # the PLD discretisation rounds pessimistically by a small amount; the bound
    # is an RDP bound, never below the truth
    assert bound >= tight * (1 - 1e-3)
    assert tight >= _pld_add_remove(history, 1e-5) * (1 - 1e-3)
    assert bound >= epsilon(history, 1e-5, AccountantKind.RDP)


def test_replace_one_of_the_plain_gaussian_is_sensitivity_two() -> None:
    """With q = 1 a replaced record moves the sum by up to 2C: the
    replace-one epsilon is the add/remove epsilon at half the noise
    multiplier (dp-accounting's Gaussian mechanism, exactly)."""
    sigma, steps = 3.0, 4
    tight = epsilon_replace_one_pld([(sigma, 1.0, steps)], 1e-5)
    half = _pld_add_remove([(sigma / 2, 1.0, steps)], 1e-5)
    assert tight == pytest.approx(half, rel=2e-3)
    assert epsilon_replace_one_rdp([(sigma, 1.0, steps)], 1e-5) >= tight


def test_calibration_for_replace_one_is_safe_and_tight() -> None:
    sigma = noise_multiplier_for_replace_one(7.5, 1e-5, 0.2, 50)
    assert epsilon_replace_one_rdp([(sigma, 0.2, 50)], 1e-5) <= 7.5
    assert epsilon_replace_one_rdp([(sigma * 0.99, 0.2, 50)], 1e-5) > 7.5
    with pytest.raises(ConfigurationError, match="cannot reach replace-one"):
        noise_multiplier_for_replace_one(1e-6, 1e-5, 0.2, 50)
    assert epsilon_replace_one_rdp([], 1e-5) == 0.0 == epsilon_replace_one_pld([], 1e-5)
    with pytest.raises(ConfigurationError, match="delta"):
        epsilon_replace_one_rdp([(1.0, 0.2, 5)], 0.0)


def test_a_client_weighting_by_examples_accounts_and_guards_replace_one() -> None:
    assert adjacency_for(Weighting.UNIFORM) is Adjacency.ADD_REMOVE_ONE
    assert adjacency_for(Weighting.EXAMPLES) is Adjacency.REPLACE_ONE
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = torch.nn.Sequential(torch.nn.Linear(6, 2))
    start = [p.detach().clone() for p in model.parameters()]
    config = DPConfig(target_epsilon=4.0, planned_rounds=2)
    uniform = PrivateClient(1, model, x, y, config)
    examples = PrivateClient(2, model, x, y, config, weighting=Weighting.EXAMPLES)
    # the count is public under examples weighting, so more noise for the same target
    assert examples.noise_multiplier > uniform.noise_multiplier
    for _ in range(2):
        examples.check_budget()
        assert examples.train_round(start).weight == 50
    assert examples.epsilon() == epsilon_replace_one_rdp(examples.history, 1e-5) <= 4.0
    with pytest.raises(PrivacyBudgetExceededError, match=r"client 2 refuses.*replace-one"):
        examples.check_budget()


def test_a_hostile_history_cannot_exhaust_the_auditors_memory() -> None:
    # A ledger row may claim any step count; the grid accountants' memory
    # grows with it (terabytes at 2^40 steps).  Under a 3 GiB address-space
    # limit every accountant must answer at once: RDP with a number, the grid
    # accountants with NaN (unverifiable, which the audit fails), never a
    # MemoryError or an OOM kill.
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import math, resource
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
        from securefl.privacy import accounting as a
        for steps in (a.MAX_GRID_STEPS + 1, 2**40):
            h = [(1.0, 0.5, steps)]
            assert math.isfinite(a.epsilon(h, 1e-5, "rdp"))
            assert math.isnan(a.epsilon(h, 1e-5, "prv"))
            assert math.isnan(a.epsilon_pld(h, 1e-5))
            assert math.isnan(a.epsilon_replace_one_pld(h, 1e-5))
        print("bounded")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, check=False)
    assert out.returncode == 0 and "bounded" in out.stdout, out.stderr[-2000:]
