"""The user-level benchmark harness runs each mechanism on the same cohorts
(a smoke test of the code behind benchmarks/user_level_dp.py; no timing)."""

from __future__ import annotations

import numpy as np

from securefl.bench.user_level import (
    UserLevelSetting,
    digits_federation,
    generic_gaussian_multiplier,
    plan_for,
    run_federation,
)


def test_every_mechanism_trains_a_small_federation() -> None:
    setting = UserLevelSetting(num_clients=40, q=0.5, rounds=2, epsilon=20.0)
    data = digits_federation(40)
    assert data.num_clients == 40 and sum(len(y) for y in data.client_y) == 1797 - 359
    plan = plan_for(setting, 16, 650)
    results = [run_federation(setting, data, mechanism="skellam", bits=16, seed=3, plan=plan),
               run_federation(setting, data, mechanism="gaussian", seed=3,
                              sigma=generic_gaussian_multiplier(setting)),
               run_federation(setting, data, mechanism="none", seed=3)]
    for result in results:
        assert 0.0 <= result["accuracy"] <= 1.0
    assert results[0]["variance"] == plan.variance and results[0]["gamma"] == plan.codec.gamma
    # without noise, training learns something even in two rounds
    assert results[2]["accuracy"] > 0.3
    assert np.isclose(generic_gaussian_multiplier(setting) ** 2 * plan.codec.l2_sensitivity ** 2,
                      plan.variance, rtol=0.05)


def test_the_central_baselines_are_ordered_by_their_accountants() -> None:
    """dp-accounting's PLD alone allows the least noise; within epsilon by
    every accountant more; the Skellam mechanism's accountant (integer
    orders) more still; the legacy general bound the most."""
    from securefl.bench.user_level import gaussian_multiplier, pld_gaussian_multiplier
    from securefl.privacy.distributed import LEGACY_ACCOUNTANT

    setting = UserLevelSetting(num_clients=300, q=0.3, rounds=40, epsilon=8.0)
    pld = pld_gaussian_multiplier(setting)
    every = gaussian_multiplier(setting)
    ours = generic_gaussian_multiplier(setting)
    legacy = generic_gaussian_multiplier(setting, LEGACY_ACCOUNTANT)
    assert pld < every < ours < legacy
