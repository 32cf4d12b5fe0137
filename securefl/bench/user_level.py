"""Benchmarks of user-level distributed DP (the Skellam mechanism inside the
secure sum): accuracy against bits per coordinate, compared with the same
federation with continuous Gaussian noise added centrally at the same
epsilon; and a client's cost of clipping, rotation, rounding and noise
against its masking time.

The accuracy runs use a federation of :func:`digits_federation` (sklearn's
bundled digits, split finely over hundreds of clients) and a softmax
regression trained in numpy, so that a whole sweep takes seconds.  The
secure sum is replaced by its result: the modular sum of the encoded
vectors (the masks cancel exactly) plus Skellam noise of the calibrated
variance ``V`` (the released noise of the protocol with removable excess is
Skellam of variance in ``[V, V (1 + 1e-3)]``; the benchmark draws the lower
end, the one that is accounted).  Client sampling and data use numpy
generators seeded from the run seed (the benchmark protects nobody); the
noise and the rounding come from the OS CSPRNG as in a real client.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from securefl.errors import ConfigurationError
from securefl.privacy.distributed import UserLevelPlan, plan_user_level
from securefl.privacy.distributed_encoding import RotatedCodec

__all__ = [
    "FederationData",
    "UserLevelSetting",
    "accuracy_sweep",
    "client_cost",
    "digits_federation",
    "evaluate_accuracy",
    "run_federation",
    "softmax_gradient",
]


@dataclass(frozen=True)
class FederationData:
    """Clients' training sets and a common test set.

    Attributes:
        client_x, client_y: one feature matrix and label vector per client.
        test_x, test_y: the held-out test set.
        num_classes: the number of labels.
    """

    client_x: list[np.ndarray]
    client_y: list[np.ndarray]
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int

    @property
    def num_clients(self) -> int:
        """How many clients hold data."""
        return len(self.client_x)


def digits_federation(num_clients: int = 300, *, test_fraction: float = 0.2,
                      seed: int = 0) -> FederationData:
    """sklearn's bundled digits (1797 8x8 images, features scaled to [0, 1]),
    shuffled with ``seed``, ``test_fraction`` held out, the rest split into
    ``num_clients`` near-equal shards (about 4.8 images each for 300)."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    held = round(test_fraction * len(y))
    shards = np.array_split(np.arange(held, len(y)), num_clients)
    return FederationData(client_x=[x[s] for s in shards], client_y=[y[s] for s in shards],
                          test_x=x[:held], test_y=y[:held], num_classes=10)


def softmax_gradient(weights: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The mean cross-entropy gradient of a softmax regression whose
    ``weights`` stack the coefficient matrix and the bias row."""
    logits = x @ weights[:-1] + weights[-1]
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    return np.vstack([x.T @ p, p.sum(axis=0)]) / len(y)


def evaluate_accuracy(weights: np.ndarray, data: FederationData) -> float:
    """The softmax regression's accuracy on the test set."""
    predicted = (data.test_x @ weights[:-1] + weights[-1]).argmax(axis=1)
    return float((predicted == data.test_y).mean())


@dataclass(frozen=True)
class UserLevelSetting:
    """One federation's hyper-parameters (softmax regression, FedAvg with
    server momentum, user-level DP over Poisson-sampled clients).

    Attributes:
        num_clients: clients in the federation.
        q: the probability that a client takes part in a round.
        rounds: federation rounds.
        epsilon: the user-level target epsilon (amplified by sampling).
        delta: delta.
        clip: ``C``, the L2 bound of a client's update.
        local_steps: full-batch gradient steps of a client per round.
        lr: the client's learning rate.
        server_lr: the server's learning rate.
        momentum: the server's momentum.
        stddevs: the margin of the ring, in standard deviations of the sum
            (:func:`~securefl.privacy.distributed.plan_user_level`).
    """

    num_clients: int = 300
    q: float = 0.3
    rounds: int = 40
    epsilon: float = 8.0
    delta: float = 1e-5
    clip: float = 1.0
    local_steps: int = 5
    lr: float = 0.5
    server_lr: float = 1.0
    momentum: float = 0.9
    stddevs: float = 3.0

    @property
    def cohort_bound(self) -> int:
        """The cohort the ring is sized for: the expected cohort plus four
        standard deviations of the Poisson-sampled count."""
        n, q = self.num_clients, self.q
        return math.ceil(n * q + 4.0 * math.sqrt(n * q * (1.0 - q)))


def plan_for(setting: UserLevelSetting, bits: int, num_values: int) -> UserLevelPlan:
    """The user-level plan of ``setting`` at ``bits`` bits per coordinate."""
    return plan_user_level(num_values=num_values, clip=setting.clip, bits=bits,
                           cohort=setting.cohort_bound, q=setting.q, rounds=setting.rounds,
                           target_epsilon=setting.epsilon, delta=setting.delta,
                           stddevs=setting.stddevs)


def gaussian_multiplier(setting: UserLevelSetting) -> float:
    """The noise multiplier of the Poisson-sampled Gaussian at the setting's
    epsilon by every accountant of :mod:`securefl.privacy.accounting` (tight
    accountants: the central baseline's best case)."""
    from securefl.privacy.accounting import noise_multiplier_for

    return noise_multiplier_for(setting.epsilon, setting.delta, setting.q, setting.rounds)


def pld_gaussian_multiplier(setting: UserLevelSetting) -> float:
    """The smallest noise multiplier (relative precision 1e-4, on the safe
    side) of the Poisson-sampled Gaussian whose epsilon by dp-accounting's
    privacy loss distribution alone is within the setting's epsilon: the
    tightest central baseline (the Skellam mechanism's accountant, at
    integer Rényi orders, cannot use a PLD)."""
    import dp_accounting

    def epsilon(sigma: float) -> float:
        accountant = dp_accounting.pld.PLDAccountant()
        event = dp_accounting.GaussianDpEvent(sigma)
        if setting.q < 1:
            event = dp_accounting.PoissonSampledDpEvent(setting.q, event)
        accountant.compose(event, setting.rounds)
        return float(accountant.get_epsilon(setting.delta))

    high = gaussian_multiplier(setting)  # within the target by every accountant
    low = high / 2.0
    while high / low - 1.0 > 1e-4:
        middle = math.sqrt(low * high)
        if epsilon(middle) <= setting.epsilon:
            high = middle
        else:
            low = middle
    return high


def torch_float64() -> Any:
    """``torch.float64`` (torch is imported only for the Gaussian baseline,
    whose CSPRNG sampler returns torch tensors)."""
    import torch

    return torch.float64


def generic_gaussian_multiplier(setting: UserLevelSetting,
                                accountant: str | None = None) -> float:
    """The noise multiplier of the Gaussian at the setting's epsilon by the
    accounting the Skellam mechanism gets (:mod:`securefl.privacy.distributed`
    with ``Delta_1 = 0``, at the same integer orders, by ``accountant``,
    default :data:`~securefl.privacy.distributed.ACCOUNTANT`): the same
    accountant, so comparing with it isolates the cost of discretisation,
    rounding and the ring."""
    from securefl.privacy.distributed import ACCOUNTANT, calibrate_variance

    return math.sqrt(calibrate_variance(setting.epsilon, setting.delta, 0.0, 1.0, setting.q,
                                        setting.rounds, accountant or ACCOUNTANT))


def _skellam(variance: float, size: int) -> np.ndarray:
    from securefl.hazmat.noise import skellam_fresh

    return skellam_fresh(variance, size)


def run_federation(setting: UserLevelSetting, data: FederationData, *, mechanism: str,
                   bits: int | None = None, seed: int = 1, plan: UserLevelPlan | None = None,
                   sigma: float | None = None) -> dict[str, Any]:
    """Train one federation and return its final test accuracy.

    Args:
        mechanism: ``"skellam"`` (clip, rotate, round, ring of ``bits``
            bits, Skellam noise of the plan's variance in the ring, modular
            clipping and decoding), ``"gaussian"`` (clip, sum in floats,
            Gaussian noise of ``sigma C`` per coordinate added centrally) or
            ``"none"`` (clip only).
        seed: the seed of the client sampling and the per-round public
            rotation seeds (the same seed gives every mechanism the same
            cohorts).
        plan, sigma: precomputed calibrations (computed when None).

    Returns:
        ``accuracy``, ``mechanism``, ``bits``, ``seed``, and ``gamma`` and
        ``variance`` (Skellam) or ``sigma`` (Gaussian).
    """
    num_features = data.client_x[0].shape[1]
    shape = (num_features + 1, data.num_classes)
    size = shape[0] * shape[1]
    info: dict[str, Any] = {"mechanism": mechanism, "bits": bits, "seed": seed}
    codec: RotatedCodec | None = None
    if mechanism == "skellam":
        if bits is None:
            raise ValueError("the skellam mechanism needs bits")
        plan = plan or plan_for(setting, bits, size)
        codec = plan.codec
        info.update(gamma=codec.gamma, variance=plan.variance)
    elif mechanism == "gaussian":
        sigma = gaussian_multiplier(setting) if sigma is None else sigma
        info["sigma"] = sigma
    elif mechanism != "none":
        raise ValueError(f"unknown mechanism {mechanism!r}")
    rng = np.random.default_rng(seed)
    weights = np.zeros(shape)
    velocity = np.zeros(shape)
    denominator = setting.q * setting.num_clients  # fixed: the cohort size is not released
    for _ in range(setting.rounds):
        chosen = np.flatnonzero(rng.random(data.num_clients) < setting.q)
        round_seed = rng.bytes(32)
        updates = []
        for client in chosen:
            local = weights.copy()
            for _ in range(setting.local_steps):
                local -= setting.lr * softmax_gradient(local, data.client_x[client],
                                                data.client_y[client])
            updates.append((local - weights).reshape(-1))
        if codec is not None and plan is not None:
            total = np.zeros(codec.padded, dtype=np.uint64)
            for update in updates:
                total += codec.encode(update, round_seed).vector
            noise = _skellam(plan.variance, codec.padded)
            total += codec.to_ring(noise)
            total &= np.uint64((1 << codec.bits) - 1)
            summed = codec.decode_sum(total, round_seed)
        else:
            summed = np.zeros(size)
            for update in updates:
                norm = float(np.linalg.norm(update))
                summed += update * min(1.0, setting.clip / norm) if norm > 0 else update
            if sigma:
                from securefl.privacy.noise import OsRandomness

                noise = OsRandomness().gaussian(sigma * setting.clip, (size,), torch_float64())
                summed += noise.numpy()
        velocity = setting.momentum * velocity + (summed / denominator).reshape(shape)
        weights = weights + setting.server_lr * velocity
    info["accuracy"] = evaluate_accuracy(weights, data)
    return info


def accuracy_sweep(setting: UserLevelSetting, bits_list: Sequence[int], seeds: Sequence[int],
                   *, data: FederationData | None = None,
                   progress: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Mean final accuracy over ``seeds`` for the Skellam mechanism at every
    ``bits`` of ``bits_list``, for the central Gaussian at the same epsilon
    (within it by every accountant of :mod:`securefl.privacy.accounting`,
    ``gaussian``; by the Skellam mechanism's own accountant,
    ``gaussian_generic``; by dp-accounting's PLD alone, ``gaussian_pld``) and
    for no noise, the same cohorts for all (same seeds)."""
    data = data or digits_federation(setting.num_clients)
    size = (data.client_x[0].shape[1] + 1) * data.num_classes
    from securefl.privacy.distributed import ACCOUNTANT, LEGACY_ACCOUNTANT

    sigma = gaussian_multiplier(setting)
    generic = generic_gaussian_multiplier(setting)
    pld = pld_gaussian_multiplier(setting)
    results: dict[str, Any] = {
        "setting": asdict(setting), "num_values": size, "seeds": list(seeds),
        "accountant": ACCOUNTANT, "gaussian_sigma": sigma, "gaussian_generic_sigma": generic,
        "gaussian_pld_sigma": pld,
        "gaussian_legacy_sigma": generic_gaussian_multiplier(setting, LEGACY_ACCOUNTANT),
        "skellam": []}
    for name, mechanism, kwargs in (("gaussian", "gaussian", {"sigma": sigma}),
                                    ("gaussian_generic", "gaussian", {"sigma": generic}),
                                    ("gaussian_pld", "gaussian", {"sigma": pld}),
                                    ("none", "none", {})):
        accs = [run_federation(setting, data, mechanism=mechanism, seed=s,
                               **kwargs)["accuracy"] for s in seeds]
        results[name] = {"accuracy_mean": float(np.mean(accs)), "accuracies": accs}
        progress(f"{name}: {np.mean(accs):.4f}")
    for bits in bits_list:
        try:
            plan = plan_for(setting, bits, size)
        except ConfigurationError as exc:
            results["skellam"].append({"bits": bits, "refused": str(exc)})
            progress(f"skellam {bits} bits: refused ({exc})")
            continue
        accs = [run_federation(setting, data, mechanism="skellam", bits=bits, seed=s,
                               plan=plan)["accuracy"] for s in seeds]
        codec = plan.codec
        results["skellam"].append({
            "bits": bits, "accuracy_mean": float(np.mean(accs)), "accuracies": accs,
            "gamma": codec.gamma, "variance": plan.variance,
            "noise_multiplier": math.sqrt(plan.variance) / codec.l2_sensitivity,
            "rounding_inflation": codec.l2_sensitivity / (codec.gamma * codec.clip),
            "gap_to_gaussian_pp": 100 * (results["gaussian"]["accuracy_mean"]
                                         - float(np.mean(accs))),
            "gap_to_gaussian_generic_pp": 100 * (results["gaussian_generic"]["accuracy_mean"]
                                                 - float(np.mean(accs))),
            "gap_to_gaussian_pld_pp": 100 * (results["gaussian_pld"]["accuracy_mean"]
                                             - float(np.mean(accs)))})
        progress(f"skellam {bits} bits: {np.mean(accs):.4f}")
    return results


def client_cost(*, m: int = 1_000_000, peers: int = 100, bits: int = 20,
                repeat: int = 3) -> dict[str, Any]:
    """One client's seconds for clip + rotate + round (+ reduce into the
    ring) and for drawing its Skellam noise at ``m`` values (the base
    component and the removable excess components of a
    :class:`~securefl.protocol.noise.NoisePlan`, as the client session does),
    and, in the same process, the same client's masked-input round with
    ``peers`` peers (key agreements and ``peers + 1`` mask expansions, one
    worker thread; BLAS is held to one thread for the rotation likewise).
    Best of ``repeat``."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # one core for the client, as its masking uses one worker
        return _client_cost(m=m, peers=peers, bits=bits, repeat=repeat)


def _client_cost(*, m: int, peers: int, bits: int, repeat: int) -> dict[str, Any]:
    from securefl.bench.core import best_of, client_masking_time

    codec = RotatedCodec(num_values=m, clip=1.0, gamma=2.0 ** (bits - 10), bits=bits + 8)
    update = np.random.default_rng(0).normal(size=m)
    seed = os.urandom(32)
    from securefl.hazmat.noise import skellam, skellam_fresh
    from securefl.protocol.noise import NoisePlan

    # the removable-excess plan of a noise multiplier of 1 among peers + 1
    # clients of which two thirds are guaranteed: base V / n plus J excess
    # components, each a Skellam vector, as the client session draws them
    layout = NoisePlan(codec.l2_sensitivity ** 2).layout(peers + 1, (2 * (peers + 1)) // 3)
    keys = [os.urandom(32) for _ in layout.excess]

    def plan_noise() -> np.ndarray:
        total = skellam_fresh(layout.base, codec.padded)
        for key, variance in zip(keys, layout.excess, strict=True):
            total += skellam(variance, codec.padded, key)
        return total

    timings = {
        "clip": best_of(lambda: codec.clip_values(update), repeat),
        "rotate": best_of(lambda: codec.rotate(update, seed), repeat),
    }
    scaled = codec.gamma * codec.rotate(codec.clip_values(update)[0], seed)
    timings["round"] = best_of(lambda: codec.to_ring(codec.round_scaled(scaled)[0]), repeat)
    timings["encode_total"] = best_of(lambda: codec.encode(update, seed), repeat)
    timings["noise"] = best_of(plan_noise, repeat)
    start = time.perf_counter()
    masking = client_masking_time(peers + 1, codec.padded, bits=codec.bits, workers=1,
                                  repeat=repeat)
    timings["masking"] = masking
    timings["masking_wall"] = time.perf_counter() - start
    dp_total = timings["encode_total"] + timings["noise"]
    return {"m": m, "padded": codec.padded, "peers": peers, "bits": codec.bits,
            "noise_components": 1 + len(layout.excess), "seconds": timings,
            "dp_total": dp_total,
            "ratio_dp_to_masking": dp_total / masking}
