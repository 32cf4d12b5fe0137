"""An empirical privacy audit with one training run (Steinke, Nasr and
Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023).

The accountant *proves* an upper bound: "this client's DP-SGD is
(epsilon, delta)-DP".  This module *measures* a lower bound, by attacking one
client's training exactly as the run configured it:

1. ``m`` canaries are drawn, each one a *white-box gradient canary*: a record
   whose per-sample gradient is a Dirac vector (``2C`` on one model
   coordinate, 0 elsewhere), each on its own coordinate, chosen among the
   coordinates the client's own data moves least (so that the data's
   gradients blur the canaries least).  Each canary is included in the
   client's data independently with probability 1/2.
2. The client trains once with its real Opacus DP-SGD
   (:class:`~securefl.privacy.client.PrivateClient`, its ``train_round``,
   its DPOptimizer and accountant): at every step each included canary is
   Poisson-sampled at the client's sample rate, and its per-sample gradient is
   appended to the batch's per-sample gradients *before* Opacus clips them,
   so Opacus clips it (to norm C), sums it with the batch and adds its noise.
3. Each canary's score is the total model change along its coordinate,
   ``-sum(updates)[j] * B / (lr * C)`` (roughly: how many times it was
   sampled, plus noise of standard deviation ``sigma * sqrt(steps)``).  The
   auditor guesses "in" for the ``k`` highest scores, "out" for the ``k``
   lowest, and abstains on the rest.
4. The number ``v`` of correct guesses among ``r = 2k`` is turned into an
   epsilon lower bound with the paper's bound for (epsilon, delta)-DP
   (:func:`p_value`, :func:`epsilon_lower_bound`).

What the lower bound means: if the audited training is (epsilon, delta)-DP
with respect to adding or removing any one canary (the adjacency of the
accountant's claim), then the probability, over the canaries' inclusion and
the training's own randomness, that the reported lower bound exceeds epsilon
is at most ``1 - confidence`` (5% by default).  So a lower bound above the
accountant's epsilon refutes the accountant's claim, or its implementation,
at that confidence.  A lower bound below the claim proves nothing about the
claim: it is one attack on one client in one run, and one-run audits are far
from tight.  With ``m`` canaries no outcome can give more than
:func:`epsilon_ceiling` (about 5.3 for m = 1000 at delta 1e-5 here), so a
claim above the ceiling cannot be refuted at all by such an audit.

Why gradient canaries and not input canaries: they are the strongest
canaries the paper found for DP-SGD (white-box), they need no model-specific
crafting, and they go through the client's own Opacus clipping and noise.
The hook that adds them is installed on the one client object the audit
builds, by :func:`run_canary_audit`; ``securefl.privacy.client`` is not
changed and production clients carry no hook.

Randomness: canary choice and inclusion (the auditor's) and the canaries'
sampling into batches (the mechanism's) come from two independent numpy
streams (they protect nothing: the audit is an attack); the DP noise and the
Poisson sampling of the real data are the client's own.
"""

from __future__ import annotations

import copy
import inspect
import math
import os
import secrets
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats
from scipy.special import expit

from securefl.errors import SecureFLError

if TYPE_CHECKING:  # torch and Opacus load only when an audit runs
    from torch import nn

    from securefl.privacy.client import DPConfig, PrivateClient

__all__ = [
    "DEFAULT_CANARIES",
    "DEFAULT_CONFIDENCE",
    "GUESS_FRACTIONS",
    "EmpiricalAuditError",
    "EmpiricalAuditResult",
    "GuessOutcome",
    "epsilon_ceiling",
    "epsilon_lower_bound",
    "p_value",
    "plot_empirical_audit",
    "run_canary_audit",
]

DEFAULT_CONFIDENCE = 0.95
"""The confidence of every lower bound reported (``beta = 0.05``)."""

DEFAULT_CANARIES = 1000
"""Canaries per audit (bounded by the model's number of parameters)."""

GUESS_FRACTIONS = (0.1, 0.2, 0.4, 0.7, 1.0)
"""The fractions of the canaries the auditor guesses on (half "in" from the
top scores, half "out" from the bottom).  Fixed before the run; every
fraction is tested at ``beta / len(GUESS_FRACTIONS)`` (Bonferroni), so the
largest of their bounds holds at the stated confidence."""

CANARY_GRADIENT_NORM = 2.0
"""A canary's per-sample gradient norm, in units of the clipping norm C.
Above 1, so that Opacus's clipping visibly acts on it (to exactly C)."""


class EmpiricalAuditError(SecureFLError):
    """The empirical audit cannot run: a run it cannot reproduce, a client
    with no DP claim to test (zero noise, no training), or parameters out of
    range."""


# -- the bound --------------------------------------------------------------------


def _check_counts(m: int, r: int, v: int) -> None:
    if not (isinstance(m, int | np.integer) and isinstance(r, int | np.integer)
            and isinstance(v, int | np.integer)):
        raise EmpiricalAuditError(f"m, r, v must be integers, got {m!r}, {r!r}, {v!r}")
    if not 0 <= v <= r <= m:
        raise EmpiricalAuditError(f"need 0 <= correct <= guesses <= canaries, got {v}, {r}, {m}")


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """The approximate-DP bound of Steinke, Nasr and Jagielski (2023), as
    their paper's reference code computes it: an upper bound on the
    probability of ``v`` or more correct guesses out of ``r`` (the rest
    abstentions), with ``m`` canaries each included with probability 1/2, when
    the mechanism is (``epsilon``, ``delta``)-DP for each canary::

        f(u) = P[Binomial(r, e^eps / (1 + e^eps)) >= u]
        p    = f(v) + 2 m delta * max_{1 <= i <= v} (f(v - i) - f(v)) / i

    capped at 1.  ``f(v - i) - f(v) = P[v - i <= Binomial < v]`` is summed from
    the binomial's probability masses (no cancellation), ``f(v)`` is scipy's
    survival function, so tiny p-values keep their relative precision.

    Raises:
        EmpiricalAuditError: unless ``0 <= v <= r <= m``, ``epsilon >= 0``
            and ``0 <= delta <= 1``.
    """
    _check_counts(m, r, v)
    if not (epsilon >= 0 and math.isfinite(epsilon)):
        raise EmpiricalAuditError(f"epsilon must be finite and >= 0, got {epsilon}")
    if not 0 <= delta <= 1:
        raise EmpiricalAuditError(f"delta must be in [0, 1], got {delta}")
    if v == 0:
        return 1.0
    q = float(expit(epsilon))  # accuracy of epsilon-DP randomized response
    tail = float(stats.binom.sf(v - 1, r, q))  # f(v) = P[B >= v]
    if delta == 0:
        return min(tail, 1.0)
    # masses of B = v-1, v-2, ..., 0; their running sums are f(v-i) - f(v)
    below = stats.binom.pmf(np.arange(v - 1, -1, -1), r, q)
    windows = np.cumsum(below) / np.arange(1, v + 1)
    return min(tail + 2.0 * m * delta * float(windows.max()), 1.0)


def epsilon_lower_bound(m: int, r: int, v: int, delta: float, *,
                        confidence: float = DEFAULT_CONFIDENCE,
                        tolerance: float = 1e-6) -> float:
    """The empirical epsilon lower bound of ``v`` correct guesses out of ``r``
    with ``m`` canaries: the largest epsilon whose :func:`p_value` is still
    below ``beta = 1 - confidence`` (found by doubling, then bisection to
    ``tolerance``), or 0 when even epsilon 0 is not rejected.

    Meaning: if the mechanism is (epsilon, delta)-DP for every canary, then
    the returned value exceeds epsilon with probability at most ``beta``.
    The value returned always has ``p_value < beta`` (the bisection keeps the
    rejected end), which is all soundness needs, even where the p-value is not
    monotone in epsilon: a mechanism that is (e, delta)-DP is also
    (e', delta)-DP for every e' >= e, so ``inf over e' >= e of p_value(e')``
    bounds its tail too, and returning any rejected e' >= e happens with
    probability at most ``beta``.

    Raises:
        EmpiricalAuditError: on counts or parameters out of range.
    """
    if not 0 < confidence < 1:
        raise EmpiricalAuditError(f"confidence must be in (0, 1), got {confidence}")
    beta = 1.0 - confidence
    if p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    low, high = 0.0, 1.0  # p(low) < beta <= p(high)
    while p_value(m, r, v, high, delta) < beta:
        low, high = high, 2.0 * high
        if high > 1e3:  # p -> f(v) -> 1 as epsilon grows: unreachable for v <= r
            raise EmpiricalAuditError("epsilon search diverged")
    while high - low > tolerance:
        middle = (low + high) / 2.0
        if p_value(m, r, v, middle, delta) < beta:
            low = middle
        else:
            high = middle
    return low


def epsilon_ceiling(m: int, r: int, delta: float, *,
                    confidence: float = DEFAULT_CONFIDENCE) -> float:
    """The largest lower bound ``r`` guesses among ``m`` canaries can ever
    give: :func:`epsilon_lower_bound` with every guess correct.  A claimed
    epsilon above it cannot be refuted with these counts, whatever the
    training does (about 5.81 for r = m = 1000, delta = 0, 95%)."""
    return epsilon_lower_bound(m, r, r, delta, confidence=confidence)


# -- the canary audit --------------------------------------------------------------


@dataclass(frozen=True)
class GuessOutcome:
    """One guessing rule: ``k`` "in" guesses on the top scores and ``k``
    "out" guesses on the bottom, ``correct`` of the ``guesses`` right, and
    the lower bound they give at the per-rule (Bonferroni) confidence."""

    k: int
    guesses: int
    correct: int
    confidence: float
    epsilon_lower_bound: float
    epsilon_ceiling: float


@dataclass(frozen=True)
class EmpiricalAuditResult:
    """The outcome of one canary audit of one client.

    Attributes:
        client_id: the audited client.
        canaries: ``m``; ``included`` of them were in the training data.
        rounds, steps: rounds trained and DP-SGD steps in all.
        noise_multiplier, sample_rate, max_grad_norm, delta: the client's
            DP-SGD parameters (as recorded; the training used them).
        claimed_epsilon: the accountant's epsilon for exactly this training,
            per accountant (``rdp``, ``prv``; ``prv`` may be absent).
        epsilon_lower_bound: the empirical lower bound at ``confidence``
            (the largest over :attr:`guesses`, each tested at its Bonferroni
            share).
        epsilon_ceiling: the largest lower bound this audit could have found.
        violation: ``epsilon_lower_bound`` exceeds the smallest claimed
            epsilon: the claim is refuted at ``confidence``.
        guesses: one :class:`GuessOutcome` per fraction of
            :data:`GUESS_FRACTIONS`.
        canary_samples: how many times an included canary was in a batch
            (over all steps).
        scores, membership: per canary, its score and whether it was included
            (for the plot).
        seconds: wall time of the audit.
    """

    client_id: int
    canaries: int
    included: int
    rounds: int
    steps: int
    noise_multiplier: float
    sample_rate: float
    max_grad_norm: float
    delta: float
    confidence: float
    claimed_epsilon: dict[str, float]
    epsilon_lower_bound: float
    epsilon_ceiling: float
    violation: bool
    guesses: tuple[GuessOutcome, ...]
    canary_samples: int
    scores: np.ndarray = field(repr=False)
    membership: np.ndarray = field(repr=False)
    seconds: float = 0.0

    @property
    def claimed(self) -> float:
        """The smallest epsilon any accountant claims for this training."""
        return min(self.claimed_epsilon.values())

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values (strict JSON: an infinite claim becomes null);
        the per-canary scores are omitted."""
        data = asdict(self)
        data.pop("scores")
        data.pop("membership")
        data["claimed_epsilon"] = {k: v if math.isfinite(v) else None
                                   for k, v in self.claimed_epsilon.items()}
        data["claimed_epsilon_min"] = self.claimed if math.isfinite(self.claimed) else None
        data["guesses"] = [asdict(g) for g in self.guesses]
        data["seconds"] = round(self.seconds, 3)
        return data


class _CanaryInjector:
    """Appends the sampled canaries' per-sample gradients to a DPOptimizer's
    per-sample gradients right before it clips them (one instance, one
    optimizer: installed by wrapping that optimizer's ``clip_and_accumulate``),
    once per DP-SGD step: a step made of several passes (Opacus's virtual
    steps, :data:`~securefl.privacy.client.PHYSICAL_BATCH_SIZE`) gets them in
    its last pass, the one after which the noise is added.
    """

    def __init__(self, optimizer: Any, params: Sequence[Any], coordinates: np.ndarray,
                 included: np.ndarray, sample_rate: float, magnitude: float,
                 rng: np.random.Generator) -> None:
        import torch

        self._torch = torch
        self.optimizer = optimizer
        self.sample_rate = sample_rate
        self.magnitude = magnitude
        self.rng = rng
        self.members = coordinates[included]
        sizes = [int(p.numel()) for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)])
        self.params = list(params)
        self.injected = 0
        self.steps = 0
        original = optimizer.clip_and_accumulate

        def clip_and_accumulate_with_canaries() -> None:
            if not optimizer._check_skip_next_step(pop_next=False):
                self._inject()
            original()

        optimizer.clip_and_accumulate = clip_and_accumulate_with_canaries

    def _inject(self) -> None:
        torch = self._torch
        self.steps += 1
        sampled = self.members[self.rng.random(len(self.members)) < self.sample_rate]
        self.injected += len(sampled)
        if len(sampled) == 0:
            return
        rows = np.arange(len(sampled))
        for index, p in enumerate(self.params):
            start, stop = self.offsets[index], self.offsets[index + 1]
            mine = (sampled >= start) & (sampled < stop)
            grads = torch.zeros((len(sampled), int(p.numel())), dtype=p.dtype)
            grads[torch.as_tensor(rows[mine]), torch.as_tensor(sampled[mine] - start)] = (
                self.magnitude)
            existing = getattr(p, "grad_sample", None)
            if existing is None:  # an empty Poisson batch
                existing = torch.zeros((0, *p.shape), dtype=p.dtype)
            if isinstance(existing, list):
                existing = torch.cat(existing, dim=0)
            p.grad_sample = torch.cat([existing, grads.view(len(sampled), *p.shape)], dim=0)


def _weaken_noise(optimizer: Any, factor: float) -> None:
    """TEST-ONLY sabotage: make ``optimizer`` add ``factor`` times its noise
    while its accountant (which reads ``noise_multiplier`` after the noise is
    added) keeps recording the full noise multiplier: a silent bug of the
    kind the audit must catch."""
    original = optimizer.add_noise

    def add_weakened_noise() -> None:
        sigma = optimizer.noise_multiplier
        optimizer.noise_multiplier = sigma * factor
        try:
            original()
        finally:
            optimizer.noise_multiplier = sigma

    optimizer.add_noise = add_weakened_noise


def _make_client(client_id: int, model: nn.Module, features: np.ndarray, labels: np.ndarray,
                 config: DPConfig) -> PrivateClient:
    """The client exactly as production builds it, with whatever secret
    randomness its constructor draws (a ``seed`` argument, where the
    constructor still takes one, is fresh from the OS)."""
    from securefl.privacy.client import PrivateClient

    kwargs: dict[str, Any] = {}
    parameters = inspect.signature(PrivateClient).parameters
    if "seed" in parameters:
        kwargs["seed"] = secrets.randbits(31)
    return PrivateClient(client_id, model, features, labels, config, **kwargs)


def run_canary_audit(
    model: nn.Module,
    features: np.ndarray,
    labels: np.ndarray,
    config: DPConfig,
    *,
    rounds: int,
    client_id: int = 1,
    canaries: int = DEFAULT_CANARIES,
    confidence: float = DEFAULT_CONFIDENCE,
    seed: int | None = None,
    expected_history: Sequence[Sequence[float]] | None = None,
    _noise_factor: float = 1.0,
) -> EmpiricalAuditResult:
    """Audit one client's DP-SGD with ``canaries`` white-box gradient
    canaries and one training run (see the module docstring).

    The client is a :class:`~securefl.privacy.client.PrivateClient` built
    from ``model``, its data and ``config`` (a ``DPConfig`` with an explicit
    noise multiplier), trained for ``rounds`` rounds through its own
    ``train_round``; the audit acts as the server and starts every round from
    the previous round's local model (the global model a server sends is
    arbitrary: DP composes adaptively).

    Args:
        model: the federation's model (not modified).
        features: the client's training data, one row per example; labels: their labels.
        config: its ``DPConfig``; ``noise_multiplier`` must be set (> 0).
        rounds: rounds to train, as recorded.
        client_id: the client's id (for reports).
        canaries: m, at most the model's number of parameters.
        confidence: of the lower bound (default 95%).
        seed: seeds the audit's own generator (canaries, inclusion, canary
            sampling); default: fresh from the OS.  The DP noise is never
            seeded by it.
        expected_history: the client's recorded ``[[sigma, q, steps], ...]``;
            when given, the audited training's accountant history must equal
            it (the audit trained exactly what was recorded).
        _noise_factor: TEST ONLY.  Makes the training add this fraction of
            its recorded noise while recording the full noise, to show the
            audit catches such a bug.  Never set it outside tests.

    Memory: every step appends (canaries sampled) x (model parameters)
    floats to the per-sample gradients; meant for models of up to a few
    hundred thousand parameters.

    Raises:
        EmpiricalAuditError: zero noise or no rounds (nothing to audit), more
            canaries than parameters, or a training whose accountant history
            differs from ``expected_history``.
        ConfigurationError: from the client, on a bad configuration.
    """
    import torch

    from securefl.privacy.accounting import AccountantKind, epsilon

    started = time.perf_counter()
    if config.noise_multiplier is None or not config.noise_multiplier > 0:
        raise EmpiricalAuditError(
            f"client {client_id}: noise multiplier {config.noise_multiplier}: no DP claim to"
            " audit (epsilon is infinite)")
    if rounds < 1:
        raise EmpiricalAuditError(f"client {client_id} trained in no round: nothing to audit")
    if not 0 < _noise_factor <= 1:
        raise EmpiricalAuditError(f"noise factor must be in (0, 1], got {_noise_factor}")
    # two independent streams: the auditor's (canaries, inclusion) and the
    # mechanism's own coins for sampling the canaries into batches
    rng, sampling = np.random.default_rng(
        seed if seed is not None else int.from_bytes(os.urandom(16), "little")).spawn(2)
    client = _make_client(client_id, copy.deepcopy(model), features, labels, config)
    optimizer = getattr(client, "_optimizer", None)
    if optimizer is None or not hasattr(optimizer, "clip_and_accumulate"):
        raise EmpiricalAuditError("the PrivateClient exposes no Opacus DPOptimizer to audit")
    params = [p for p in client.parameters() if p.requires_grad]
    optimizer_ids = {id(p) for p in optimizer.params}
    if any(id(p) not in optimizer_ids for p in params):
        raise EmpiricalAuditError("the client's optimizer does not train every parameter")
    dimension = sum(int(p.numel()) for p in params)
    if not 2 <= canaries <= dimension:
        raise EmpiricalAuditError(
            f"need 2 <= canaries <= {dimension} (one model coordinate each), got {canaries}")
    clip = float(config.max_grad_norm)
    coordinates = _quiet_coordinates(model, features, labels, clip, canaries, rng)
    included = rng.random(canaries) < 0.5
    injector = _CanaryInjector(optimizer, params, coordinates, included,
                               float(client.sample_rate), CANARY_GRADIENT_NORM * clip, sampling)
    if _noise_factor != 1.0:
        _weaken_noise(optimizer, _noise_factor)

    with torch.no_grad():
        start = [p.detach().clone() for p in client.parameters()]
    current = [p.clone() for p in start]
    torch.set_num_threads(1)
    for _ in range(rounds):
        result = client.train_round(current)
        current = [c + torch.as_tensor(u) for c, u in zip(current, result.update, strict=True)]
    history = client.history
    if expected_history is not None:
        expected = [(float(s), float(q), int(n)) for s, q, n in expected_history]
        got = [(float(s), float(q), int(n)) for s, q, n in history]
        if _merge(expected) != _merge(got):
            raise EmpiricalAuditError(
                f"client {client_id}: the audited training's history {got} differs from the"
                f" recorded {expected}: the run cannot be reproduced")

    total = torch.cat([(c - s).reshape(-1) for c, s, p in
                       zip(current, start, client.parameters(), strict=True) if p.requires_grad])
    scale = float(optimizer.expected_batch_size) / (float(config.lr) * clip)
    scores = -total.numpy().astype(np.float64)[coordinates] * scale
    steps = sum(int(n) for _, _, n in history)
    if injector.steps != steps:
        raise EmpiricalAuditError(
            f"client {client_id}: the canaries reached {injector.steps} clipping steps, the"
            f" accountant counted {steps}: the training bypassed the audited optimizer")
    delta = float(config.delta)
    claimed = {"rdp": epsilon(history, delta, AccountantKind.RDP)}
    prv = epsilon(history, delta, AccountantKind.PRV)
    if math.isfinite(prv):
        claimed["prv"] = prv
    outcomes = _guess(scores, included, delta, confidence)
    best = max(o.epsilon_lower_bound for o in outcomes)
    ceiling = max(o.epsilon_ceiling for o in outcomes)
    return EmpiricalAuditResult(
        client_id=int(client_id), canaries=int(canaries), included=int(included.sum()),
        rounds=int(rounds), steps=steps, noise_multiplier=float(client.noise_multiplier),
        sample_rate=float(client.sample_rate), max_grad_norm=clip, delta=delta,
        confidence=confidence, claimed_epsilon=claimed, epsilon_lower_bound=best,
        epsilon_ceiling=ceiling, violation=best > min(claimed.values()),
        guesses=tuple(outcomes), canary_samples=injector.injected, scores=scores,
        membership=included,
        seconds=time.perf_counter() - started,
    )


def _quiet_coordinates(model: nn.Module, features: np.ndarray, labels: np.ndarray, clip: float,
                       count: int, rng: np.random.Generator) -> np.ndarray:
    """The ``count`` model coordinates the client's own data moves least: its
    clipped per-sample gradients at the starting model, summed in absolute
    value per coordinate (ties broken at random).  Canaries there compete
    with the least data signal (e.g. first-layer weights of pixels that are
    always blank get none).  The choice uses the data, never the canaries'
    inclusion, so it does not affect the audit's soundness."""
    import torch
    from torch.func import functional_call, grad, vmap

    module = copy.deepcopy(model)
    names = [name for name, p in module.named_parameters() if p.requires_grad]
    values = {name: p.detach() for name, p in module.named_parameters() if p.requires_grad}
    criterion = torch.nn.CrossEntropyLoss()

    def loss(weights: dict[str, Any], x: Any, y: Any) -> Any:
        out = functional_call(module, weights, (x.unsqueeze(0),))
        return criterion(out, y.unsqueeze(0))

    per_sample_grad = vmap(grad(loss), in_dims=(None, 0, 0))
    activity = np.zeros(sum(int(values[name].numel()) for name in names))
    for start in range(0, len(features), 256):  # chunks bound the memory: 256 x params
        x = torch.as_tensor(features[start:start + 256], dtype=torch.float32)
        y = torch.as_tensor(labels[start:start + 256], dtype=torch.long)
        per_sample = per_sample_grad(values, x, y)
        flat = torch.cat([per_sample[name].reshape(len(x), -1) for name in names], dim=1)
        norms = flat.norm(dim=1, keepdim=True)
        clipped = flat * (clip / (norms + 1e-6)).clamp(max=1.0)
        activity += clipped.abs().sum(dim=0).numpy().astype(np.float64)
    tiebreak = rng.random(len(activity))
    return np.lexsort((tiebreak, activity))[:count]


def _merge(history: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    """Consecutive rows with the same (sigma, q) merged (Opacus merges them)."""
    merged: list[tuple[float, float, int]] = []
    for sigma, q, steps in history:
        if steps == 0:
            continue
        if merged and merged[-1][0] == sigma and merged[-1][1] == q:
            merged[-1] = (sigma, q, merged[-1][2] + steps)
        else:
            merged.append((sigma, q, steps))
    return merged


def _guess(scores: np.ndarray, included: np.ndarray, delta: float,
           confidence: float) -> list[GuessOutcome]:
    """Guess with every rule of :data:`GUESS_FRACTIONS` (Bonferroni share of
    ``1 - confidence`` each) and convert each count of correct guesses."""
    m = len(scores)
    order = np.argsort(-scores, kind="stable")  # highest score first
    share = 1.0 - (1.0 - confidence) / len(GUESS_FRACTIONS)
    outcomes = []
    for fraction in GUESS_FRACTIONS:
        k = max(1, int(fraction * m) // 2)
        top, bottom = order[:k], order[m - k:]
        correct = int(included[top].sum() + (~included[bottom]).sum())
        outcomes.append(GuessOutcome(
            k=k, guesses=2 * k, correct=correct, confidence=share,
            epsilon_lower_bound=epsilon_lower_bound(m, 2 * k, correct, delta, confidence=share),
            epsilon_ceiling=epsilon_ceiling(m, 2 * k, delta, confidence=share),
        ))
    return outcomes


# -- the plot -----------------------------------------------------------------------


def plot_empirical_audit(result: EmpiricalAuditResult, path: str | os.PathLike[str], *,
                         title: str = "") -> None:
    """Write a PNG: the canaries' scores (included vs excluded) with the
    guessing thresholds of the best rule, and the empirical lower bound of
    every rule beside the claimed epsilons and the audit's ceiling."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=110)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    scores, member = result.scores, result.membership
    bins = np.linspace(float(scores.min()), float(scores.max()), 50)
    left.hist(scores[member], bins=bins, alpha=0.6, color="tab:red", label="included")
    left.hist(scores[~member], bins=bins, alpha=0.6, color="tab:blue", label="excluded")
    best = max(result.guesses, key=lambda g: g.epsilon_lower_bound)
    ranked = np.sort(scores)[::-1]
    left.axvline(ranked[best.k - 1], color="k", linestyle="--", linewidth=1,
                 label=f"guess 'in' above, 'out' below (k={best.k})")
    left.axvline(ranked[len(ranked) - best.k], color="k", linestyle="--", linewidth=1)
    left.set_xlabel("canary score (~ times sampled; noise sd = sigma * sqrt(steps))")
    left.set_ylabel("canaries")
    left.legend(fontsize=7)
    left.set_title(f"client {result.client_id}: {result.canaries} gradient canaries,"
                   f" {result.steps} DP-SGD steps", fontsize=9)
    labels = [f"r={g.guesses}" for g in result.guesses]
    right.bar(labels, [g.epsilon_lower_bound for g in result.guesses], color="tab:green",
              label=f"empirical lower bound ({result.confidence:.0%} overall)")
    right.plot(labels, [g.epsilon_ceiling for g in result.guesses], "k_", markersize=20,
               label="ceiling (all guesses right)")
    for name, value in sorted(result.claimed_epsilon.items()):
        right.axhline(value, linestyle="--", color="tab:red" if name == "rdp" else "tab:orange",
                      label=f"claimed ({name}) {value:.2f}")
    top = max([g.epsilon_ceiling for g in result.guesses] + list(result.claimed_epsilon.values()))
    right.set_ylim(0, 1.45 * top)  # room for the legend above the bars
    right.set_ylabel(f"epsilon (delta {result.delta:g})")
    right.tick_params(axis="x", labelsize=7)
    right.legend(fontsize=7, loc="upper left")
    verdict = "VIOLATION" if result.violation else "no violation found"
    right.set_title(f"lower bound {result.epsilon_lower_bound:.2f} vs claimed"
                    f" {result.claimed:.2f}: {verdict}", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)


