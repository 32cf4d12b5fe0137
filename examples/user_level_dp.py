"""User-level distributed DP over 300 clients, through the real secure
aggregation protocol.

Every round each of 300 clients (sklearn's digits, about 5 images each)
joins with probability q.  A sampled client trains a softmax regression
locally, then clips, rotates and conditionally rounds its update into
Z_2^16; its session adds its Skellam noise before masking (the protocol's
NoisePlan: a base share from the OS CSPRNG and removable excess components
whose seeds are secret-shared; active mode, as removable excess requires), so
that the released sum carries between V and V (1 + 1e-3) whatever the
dropouts.  The cohort is drawn from the OS CSPRNG and the session runs over
it alone, with the threshold its size prescribes
(securefl.federation.cohort, which the simulator's --client-sample-rate
uses too).  30% of the cohort drops out after
sharing keys; the server removes the excess the survivors do not need and
reports the variance left.  The server unmasks the sum, reads it modulo 2^16 in the
signed range, un-rotates it and divides by the expected cohort.  Each round
first charges its release in the privacy ledger (an in-flight user-level row
at the target variance, before any client sends), then settles it with the
variance released; ``securefl audit`` then verifies the ledger.

    python examples/user_level_dp.py [OUTPUT_DIR]
"""

from __future__ import annotations

import math
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from securefl.bench.user_level import digits_federation, evaluate_accuracy, softmax_gradient
from securefl.cli.audit import audit_run
from securefl.federation.cohort import cohort_bound, cohort_secagg_config, poisson_cohort
from securefl.privacy.distributed import plan_user_level, user_level_entry
from securefl.privacy.ledger import PrivacyLedger
from securefl.protocol import Round
from securefl.protocol.config import SecurityMode
from securefl.protocol.inmemory import secure_sum
from securefl.protocol.noise import NoisePlan

CLIENTS, Q, ROUNDS, EPSILON, DELTA, BITS = 300, 0.3, 20, 8.0, 1e-5, 16
DROPOUT = 0.3


def main(out: Path) -> None:
    data = digits_federation(CLIENTS)
    shape = (data.client_x[0].shape[1] + 1, data.num_classes)
    plan = plan_user_level(num_values=shape[0] * shape[1], clip=1.0, bits=BITS,
                           cohort=cohort_bound(CLIENTS, Q), q=Q, rounds=ROUNDS,
                           target_epsilon=EPSILON, delta=DELTA)
    codec = plan.codec
    multiplier = math.sqrt(plan.variance) / codec.l2_sensitivity
    print(f"gamma {codec.gamma:.1f}, d {codec.padded}, Delta_2 {codec.l2_sensitivity:.1f},"
          f" V {plan.variance:.4g} (noise multiplier {multiplier:.3f})")
    dropouts = np.random.default_rng()  # simulated dropouts: nothing secret
    weights, velocity = np.zeros(shape), np.zeros(shape)
    ledger = PrivacyLedger(out / "ledger.jsonl")
    previous = None
    for number in range(1, ROUNDS + 1):
        # Poisson sampling from the OS CSPRNG (the amplification needs a
        # cohort nobody can predict); client ids are 1-based
        cohort = [c - 1 for c in poisson_cohort(range(1, CLIENTS + 1), Q)]
        # removable excess noise needs active mode (SPEC [NZ-1b]); its default
        # threshold floor(2n/3) + 1 survives the 30% dropout below
        config = cohort_secagg_config([c + 1 for c in cohort], vector_length=codec.padded,
                                      bits=BITS, mode=SecurityMode.ACTIVE,
                                      noise=NoisePlan(plan.variance))
        round_seed = os.urandom(32)  # public per-round rotation seed
        # the release is charged (at the target variance) before anyone sends
        ledger.begin_round(number, [], [replace(user_level_entry(
            plan, round_number=number, released_variance=plan.variance, survivors=0,
            previous=previous, epsilon_budget=EPSILON), status="in-flight")])
        inputs = {}
        for client in cohort:
            local = weights.copy()
            for _ in range(5):
                local -= 0.5 * softmax_gradient(local, data.client_x[client], data.client_y[client])
            inputs[client + 1] = codec.encode((local - weights).reshape(-1), round_seed).vector
        dropped = dropouts.choice(cohort, size=int(DROPOUT * len(cohort)), replace=False)
        result = secure_sum(inputs, config,
                            {int(c) + 1: Round.MASKED_INPUT_COLLECTION for c in dropped})
        released = result.noise_variance  # reported by the server session, >= V
        assert released is not None
        summed = codec.decode_sum(result.total, round_seed)
        velocity = 0.9 * velocity + (summed / (Q * CLIENTS)).reshape(shape)
        weights = weights + velocity
        row = user_level_entry(plan, round_number=number, released_variance=released,
                               survivors=len(result.survivors), previous=previous,
                               epsilon_budget=EPSILON)
        ledger.settle_round(number, [], [row])
        previous = row
        print(f"round {number:2d}: {len(result.survivors)}/{len(cohort)} survivors, released"
              f" variance {released / plan.variance:.5f} V, accuracy"
              f" {evaluate_accuracy(weights, data):.3f}, user-level epsilon {row.epsilon:.2f}"
              f" ({row.epsilon_unsampled:.1f} against the server)")
    report = audit_run(out / "ledger.jsonl")
    print(report["verdict"])


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
