"""Choosing the SecAgg+ graph degree ``k`` and Shamir threshold ``t``.

:func:`find_graph_parameters` is a port of Google's production parameter
finder (federated-compute, ``fcp/secagg/server/graph_parameter_finder.cc``).
Given ``n`` clients, an expected dropout rate ``delta`` and a corrupt-client
rate ``gamma``, it returns the smallest even ``k`` (and a threshold ``t``) for
which a random Harary graph gives statistical security ``2^-security_bits``
and fails (aborts for lack of shares) with probability at most
``2^-correctness_bits``:

1. Feasibility (else: complete graph): ``gamma + delta <= 0.9`` against a
   semi-honest server, ``gamma + 2*delta <= 0.9`` against a semi-malicious one.
2. For ``k = 2, 4, 6, ...`` while ``k < n - 1``:

   a. *Connectivity.*  Removing clients disconnects a Harary ring only if
      ``k/2`` consecutive clients are removed in two places; with at most
      ``B = floor(gamma n) + floor(delta n)`` bad clients a union bound over
      the ``n (n - k - 1) / 2`` pairs of gaps bounds the probability by
      ``n (n-k-1)/2 * B! (n-k)! / (n! (B-k)!)`` (zero when ``k > B``).  It
      must be below ``2^-(security_bits + 1)``.
   b. *Threshold.*  With ``A = floor(gamma n)`` corrupt and
      ``L = ceil((1 - delta) n)`` surviving clients, the corrupt (resp.
      surviving) neighbours of a client are hypergeometric
      ``H(n, A, k)`` (resp. ``H(n, L, k)``).  ``t1`` is the smallest value
      with ``P[corrupt neighbours > t1] < 2^-(security_bits+1) / n`` and
      ``t2`` the smallest with ``P[surviving neighbours <= t2] >=
      2^-correctness_bits / n``.  Against a semi-malicious server ``t1`` is
      first raised to ``ceil((t1 + k - 1.25) / 2)`` (so that ``2t`` exceeds
      ``k`` plus the corrupt neighbours and a lying server cannot obtain both
      shares of one client).  ``k`` is accepted when ``t1 < t2`` and then
      ``t = max(t1 + 1, 2)``.

3. If no ``k < n - 1`` works: complete graph.

fcp computes the hypergeometric tails with its own recurrences; this port
evaluates them exactly in log space (the log-pmf anchored with ``lgamma`` and
extended by the pmf ratio), summing each tail from its far end so that tail
probabilities near ``1e-19`` keep full relative precision.  (The generic
``scipy.stats.hypergeom.isf``/``ppf`` are *not* usable here: for ``n >= 10^4``
they return the support edge for such tiny tail probabilities, whereas
``hypergeom.sf``/``cdf``, which the tests check against, are accurate.)  For
every instance in fcp's test table this port returns fcp's ``(k, t)`` exactly.

Mapping onto securefl
---------------------
The returned ``degree`` is fcp's ``number_of_neighbors``: the number of
*other* clients each client is joined to.  Pass it unchanged to
:class:`~securefl.protocol.harary.HararyGraph` (``params.graph`` already is
that object) and pass ``params.threshold`` as ``SecAggConfig(threshold=...)``.
fcp's server instead builds its graph with degree ``k + 1`` because its graph
carries a self edge; in securefl the self edge is implicit (a client always
deals one share to itself), so the ``k + 1`` share holders are the same.

When the finder falls back to the complete graph, ``degree`` is ``n - 1`` and
the threshold follows Bonawitz et al. (``floor(n/2) + 1`` against a
semi-honest server, ``floor(2n/3) + 1`` against a semi-malicious/active one),
raised if needed so that the corrupt clients alone never reach it.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

from securefl.errors import ConfigurationError
from securefl.protocol.config import SecurityMode, default_threshold
from securefl.protocol.graphs import CompleteGraph, NeighbourGraph
from securefl.protocol.harary import HararyGraph

MAX_CLIENTS = 1_000_000
"""Largest cohort the finder accepts (fcp's bound; its tests stop there)."""

FEASIBLE_BAD_FRACTION = 0.9
"""fcp's feasibility margin on ``gamma + delta`` (``gamma + 2 delta`` when
the server is semi-malicious)."""

_SMALL = 1e-14  # fcp's kSmall: rounding guard before floor/ceil of rate * n


class ServerModel(str, enum.Enum):
    """What the server may do, in the vocabulary of Bell et al. / fcp."""

    SEMI_HONEST = "semi-honest"
    """Follows the protocol but tries to learn (fcp ``CURIOUS_SERVER``)."""
    SEMI_MALICIOUS = "semi-malicious"
    """May lie about who dropped out, e.g. ask for both kinds of share of one
    client (fcp ``SEMI_MALICIOUS_SERVER``).  In securefl this is what
    :attr:`SecurityMode.ACTIVE` defends against."""

    @property
    def security_mode(self) -> SecurityMode:
        """The :class:`SecurityMode` to run the session in."""
        if self is ServerModel.SEMI_MALICIOUS:
            return SecurityMode.ACTIVE
        return SecurityMode.SEMI_HONEST


@dataclass(frozen=True)
class GraphParameters:
    """What :func:`find_graph_parameters` recommends.

    Attributes:
        degree: ``k``, neighbours per client excluding itself (``n - 1`` for
            the complete graph).  Equal to fcp's ``number_of_neighbors``;
            fcp's server-side degree is ``k + 1``.
        threshold: ``t``, the Shamir threshold to pass to ``SecAggConfig``.
        graph: the :class:`NeighbourGraph` to pass to ``SecAggConfig``
            (``HararyGraph(degree)`` or ``CompleteGraph()``).
        complete: True when no sparse parameters were found and the complete
            graph (Bonawitz et al. 2017) is returned.
        explanation: a human-readable account of the choice, including why
            the complete graph was used when it was.
    """

    degree: int
    threshold: int
    graph: NeighbourGraph
    complete: bool
    explanation: str


def _lbinom(a: int, b: int) -> float:
    return math.lgamma(a + 1) - math.lgamma(b + 1) - math.lgamma(a - b + 1)


def _hypergeom_pmf(total: int, marked: int, sampled: int, lo: int, hi: int) -> np.ndarray:
    """``P[X = x]`` for ``x = lo..hi`` (within the support), X ~ H(total,
    marked, sampled): the number of marked items among ``sampled`` drawn
    without replacement from ``total``."""
    log_first = (_lbinom(marked, lo) + _lbinom(total - marked, sampled - lo)
                 - _lbinom(total, sampled))
    x = np.arange(lo, hi, dtype=np.float64)  # ratio P[x+1]/P[x] for x = lo..hi-1
    log_ratio = (np.log(marked - x) + np.log(sampled - x)
                 - np.log(x + 1) - np.log(total - marked - sampled + x + 1))
    log_pmf = np.empty(hi - lo + 1)
    log_pmf[0] = log_first
    np.cumsum(log_ratio, out=log_pmf[1:])
    log_pmf[1:] += log_first
    return np.exp(log_pmf)


def _support(total: int, marked: int, sampled: int) -> tuple[int, int]:
    return max(0, sampled - (total - marked)), min(sampled, marked)


def upper_tail_quantile(total: int, marked: int, sampled: int, prob: float) -> int:
    """The smallest ``t`` with ``P[X > t] < prob`` for X ~ H(total, marked,
    sampled) (fcp's ``FindQuantile(prob, complement=true)``).

    Raises:
        ConfigurationError: on parameters outside ``0 <= marked, sampled <=
            total`` or ``prob`` outside ``(0, 0.5]``.
    """
    _check_hypergeom(total, marked, sampled, prob)
    lo, hi = _support(total, marked, sampled)
    mean = marked * sampled / total
    # P[X > t] < prob <= 1/2 forces t >= median >= floor(mean) - 1; start there
    # and widen to the whole support if the window's tail mass says otherwise.
    for start in (max(lo, math.floor(mean) - 1), lo):
        pmf = _hypergeom_pmf(total, marked, sampled, start, hi)
        at_least = np.cumsum(pmf[::-1])[::-1]  # at_least[i] = P[X >= start + i]
        greater = np.append(at_least[1:], 0.0)  # greater[i] = P[X > start + i]
        if start == lo or at_least[0] >= prob:
            return start + int(np.argmax(greater < prob))
    raise AssertionError("unreachable")  # pragma: no cover


def lower_tail_quantile(total: int, marked: int, sampled: int, prob: float) -> int:
    """The smallest ``x`` with ``P[X <= x] >= prob`` for X ~ H(total, marked,
    sampled) (fcp's ``FindQuantile(prob)`` followed by its ``t2++`` step).

    Raises:
        ConfigurationError: on parameters outside ``0 <= marked, sampled <=
            total`` or ``prob`` outside ``(0, 0.5]``.
    """
    _check_hypergeom(total, marked, sampled, prob)
    lo, hi = _support(total, marked, sampled)
    mean = marked * sampled / total
    for stop in (min(hi, math.ceil(mean) + 1), hi):
        pmf = _hypergeom_pmf(total, marked, sampled, lo, stop)
        at_most = np.cumsum(pmf)  # at_most[i] = P[X <= lo + i]
        if stop == hi or at_most[-1] >= prob:
            reached = at_most >= prob
            return lo + (int(np.argmax(reached)) if bool(reached.any()) else stop - lo)
    raise AssertionError("unreachable")  # pragma: no cover


def _check_hypergeom(total: int, marked: int, sampled: int, prob: float) -> None:
    if not (0 <= marked <= total and 0 <= sampled <= total and total >= 1):
        raise ConfigurationError(
            f"hypergeometric parameters out of range: total={total}, marked={marked},"
            f" sampled={sampled}"
        )
    if not 0.0 < prob <= 0.5:
        raise ConfigurationError(f"tail probability must be in (0, 0.5], got {prob}")


def log_disconnection_bound(num_clients: int, corrupt_rate: float, dropout_rate: float,
                            degree: int) -> float:
    """Natural log of fcp's union bound on the probability that the random
    Harary graph of degree ``degree`` is disconnected once the
    ``floor(gamma n) + floor(delta n)`` corrupt and dropped clients are
    removed (``-inf`` when ``degree`` exceeds that number)."""
    n = num_clients
    bad = math.floor((corrupt_rate + _SMALL) * n) + math.floor((dropout_rate + _SMALL) * n)
    if degree > bad:
        return -math.inf
    return (math.log(n) + math.log(n - degree - 1) - math.log(2)
            + math.lgamma(bad + 1) + math.lgamma(n - degree + 1)
            - math.lgamma(n + 1) - math.lgamma(bad - degree + 1))


_lgamma = np.vectorize(math.lgamma, otypes=[np.float64])
"""``log Gamma`` elementwise (the standard library's; the core install has no
scipy)."""


def _log_disconnection_bounds(n: int, bad: int, degrees: np.ndarray) -> np.ndarray:
    k = degrees.astype(np.float64)
    out = np.full(k.shape, -np.inf)
    ok = degrees <= bad
    kk = k[ok]
    out[ok] = (np.log(n) + np.log(n - kk - 1) - np.log(2) + math.lgamma(bad + 1)
               + _lgamma(n - kk + 1) - math.lgamma(n + 1) - _lgamma(bad - kk + 1))
    return out


def _threshold_for(n: int, degree: int, corrupt: int, survivors: int, model: ServerModel,
                   security_tail: float, correctness_tail: float) -> int | None:
    t1 = upper_tail_quantile(n, corrupt, degree, security_tail)
    t2 = lower_tail_quantile(n, survivors, degree, correctness_tail)
    if model is ServerModel.SEMI_MALICIOUS:
        t1 = math.ceil((t1 + degree - 1.25) / 2)
    if t2 <= t1:
        return None
    return max(t1 + 1, 2)


def _check_rate(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        raise ConfigurationError(f"{name} must be a number, got {type(value).__name__}")
    rate = float(value)
    if not (math.isfinite(rate) and 0.0 <= rate < 1.0):
        raise ConfigurationError(f"{name} must be in [0, 1), got {value!r}")
    return rate


def _check_bits(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 256:
        raise ConfigurationError(f"{name} must be an int in 1..256, got {value!r}")
    return value


def find_graph_parameters(
    num_clients: int,
    dropout_rate: float,
    corrupt_rate: float,
    model: ServerModel,
    security_bits: int = 40,
    correctness_bits: int = 20,
) -> GraphParameters:
    """Choose the graph and threshold for ``num_clients`` clients of which a
    fraction ``dropout_rate`` may drop out and a fraction ``corrupt_rate`` may
    collude with the server.

    Promises: when ``complete`` is False, ``graph`` is ``HararyGraph(degree)``
    with ``degree`` even and ``< num_clients - 1``, ``2 <= threshold <=
    degree``, and (fcp's analysis) the sum reveals nothing beyond itself
    except with probability ``< 2^-security_bits`` while at most
    ``floor(dropout_rate * n)`` dropouts make the round fail with probability
    ``< 2^-correctness_bits`` (unless the floor ``t >= 2``, which fcp keeps
    because Shamir sharing needs it, is what set ``t``; that happens only for
    tiny ``k``).  The search and its result are exactly fcp's
    for ``security_bits=40, correctness_bits=20``.  For a sparse
    semi-malicious result the explanation also gives the active-mode signature
    quorum (SPEC.md [PARAM-7]) and either the ``threshold`` and
    ``min_survivors`` under which the deterministic guarantee of SPEC.md
    [SEC-1] covers the ``floor(corrupt_rate * n)`` corrupt clients (the
    returned ``threshold`` does not ensure ``2t > k + 1 + c`` by itself),
    with a WARNING when that leaves room for fewer missing clients than the
    requested dropouts (fcp's ``k`` is chosen for its probabilistic model, not
    for the quorum), or that no threshold achieves it with this ``k`` (when
    ``c >= k``).  When ``complete`` is True
    the complete graph is returned with a Bonawitz threshold, and
    ``explanation`` says why and which of the requested rates that threshold
    does or does not meet.  Deterministic; no randomness is used.

    Args:
        num_clients: n, 2..10^6.
        dropout_rate: delta in [0, 1), expected fraction of dropouts.
        corrupt_rate: gamma in [0, 1), fraction of clients that may collude
            with the server.
        model: :class:`ServerModel` (or its string value).
        security_bits: statistical security parameter (1..256, default 40).
        correctness_bits: correctness parameter (1..256, default 20).

    Raises:
        ConfigurationError: if an argument is of the wrong type or out of
            range.  Infeasible rates are *not* an error: they yield the
            complete graph.
    """
    if isinstance(num_clients, bool) or not isinstance(num_clients, int):
        raise ConfigurationError(
            f"num_clients must be an int, got {type(num_clients).__name__}"
        )
    if not 2 <= num_clients <= MAX_CLIENTS:
        raise ConfigurationError(
            f"num_clients must be in 2..{MAX_CLIENTS} (the range fcp's finder is"
            f" validated on), got {num_clients}"
        )
    delta = _check_rate("dropout_rate", dropout_rate)
    gamma = _check_rate("corrupt_rate", corrupt_rate)
    try:
        model = ServerModel(model)
    except ValueError:
        raise ConfigurationError(
            f"model must be one of {[m.value for m in ServerModel]}, got {model!r}"
        ) from None
    security_bits = _check_bits("security_bits", security_bits)
    correctness_bits = _check_bits("correctness_bits", correctness_bits)
    n = num_clients

    if model is ServerModel.SEMI_MALICIOUS:
        load, load_text = gamma + 2 * delta, "corrupt_rate + 2*dropout_rate"
    else:
        load, load_text = gamma + delta, "corrupt_rate + dropout_rate"
    if load > FEASIBLE_BAD_FRACTION:
        return _complete(n, delta, gamma, model,
                         f"{load_text} = {load:.4g} exceeds {FEASIBLE_BAD_FRACTION} against a"
                         f" {model.value} server, so no sparse graph meets the targets")

    corrupt = math.floor((gamma + _SMALL) * n)
    dropped = math.floor((delta + _SMALL) * n)
    survivors = math.ceil((1 - delta - _SMALL) * n)
    security_tail = 2.0 ** -(security_bits + 1) / n
    correctness_tail = 2.0 ** -correctness_bits / n
    degrees = np.arange(2, n - 1, 2, dtype=np.int64)
    log_bounds = _log_disconnection_bounds(n, corrupt + dropped, degrees)
    connected = log_bounds < -(security_bits + 1) * math.log(2)
    for degree in degrees[connected].tolist():
        threshold = _threshold_for(n, degree, corrupt, survivors, model,
                                   security_tail, correctness_tail)
        if threshold is None:
            continue
        graph = HararyGraph(degree)
        explanation = (
            f"SecAgg+ Harary graph: each of the n={n} clients masks with and deals"
            f" Shamir shares to k={degree} neighbours ({degree // 2} on each side of a"
            f" ring permuted by the session id) plus itself; threshold t={threshold}."
            f" Chosen as the smallest even k for which, with up to {corrupt} corrupt"
            f" clients and {dropped} dropouts against a {model.value} server, the"
            f" survivors stay connected and no client's secrets leak except with"
            f" probability < 2^-{security_bits}, and a client has fewer than t surviving"
            f" neighbours with probability < 2^-{correctness_bits} (fcp's parameter"
            f" finder; fcp's server degree is k+1={degree + 1} counting the self edge)."
            f" Use SecAggConfig(num_clients={n}, threshold={threshold},"
            f" graph=HararyGraph({degree}), mode=SecurityMode.{model.security_mode.name})."
        )
        if model is ServerModel.SEMI_MALICIOUS:
            explanation += _active_quorum_note(n, degree, threshold, corrupt, dropped)
        return GraphParameters(degree, threshold, graph, False, explanation)
    return _complete(n, delta, gamma, model,
                     f"no even degree k < n-1 = {n - 1} meets the targets (cohort too small"
                     " for these rates)")


def _sec1_parameters(n: int, degree: int, corrupt: int) -> tuple[int, int] | None:
    """The smallest ``(threshold, min_survivors)`` for which SPEC.md [SEC-1]
    holds on ``HararyGraph(degree)`` over ``n`` clients against ``corrupt``
    clients (``2t > h + c``, ``2q > n + c``, ``q >= n - kappa + 1 + c`` with
    ``h = min(n, k + 1)`` holders and ``kappa = min(k, n - 1)``), or None when
    no ``t <= h`` and ``q <= n`` satisfy them (exactly when ``c >= min(h,
    kappa)``, i.e. ``c >= k`` for ``k < n``)."""
    holders, kappa = min(n, degree + 1), min(degree, n - 1)
    threshold, quorum = sec1_minimums(n, holders, kappa, corrupt)
    survivors = max(quorum, threshold)
    if threshold > holders or survivors > n:
        return None
    return threshold, survivors


def sec1_minimums(num_clients: int, holders: int, kappa: int, corrupt: int) -> tuple[int, int]:
    """The smallest threshold and signature quorum for which SPEC.md [SEC-1]
    holds against ``corrupt`` (``c``) clients: ``t = floor((h + c)/2) + 1``
    (the least ``t`` with ``2t > h + c``) and ``q = max(floor((n + c)/2) + 1,
    n - kappa + 1 + c)`` (the least ``q`` with ``2q > n + c`` and ``q >= n -
    kappa + 1 + c``), for ``h`` share holders per client and a graph of
    connectivity ``kappa``.  They may exceed ``h`` and ``n``: then no
    threshold, or no quorum, gives [SEC-1] for that ``c``.  The one statement
    of the conditions in code (the parameter finder's advice, a Flower node's
    :attr:`~securefl.flower.policy.PolicyRule.CORRUPT_CLIENTS` rule)."""
    n, c = num_clients, corrupt
    return (holders + c) // 2 + 1, max((n + c) // 2 + 1, n - kappa + 1 + c)


def _active_quorum_note(n: int, degree: int, threshold: int, corrupt: int,
                        dropped: int) -> str:
    """What SPEC.md [PARAM-7]/[SEC-1] add to a sparse result in active mode:
    the quorum and its cost, then either the ``threshold`` and
    ``min_survivors`` (from :func:`_sec1_parameters`, never below the
    finder's ``threshold``) under which [SEC-1] covers ``corrupt`` clients,
    with a WARNING when that quorum leaves room for fewer missing clients than
    ``dropped``, or a statement that no threshold achieves it with this
    ``k``."""
    note = (
        f" In active mode clients unmask only for a survivor list signed by the quorum"
        f" n-k+1 = {n - degree + 1} or more (SPEC.md [PARAM-7]), so at most k-1 ="
        f" {degree - 1} invited clients may be missing when the survivors sign."
    )
    advice = _sec1_parameters(n, degree, corrupt)
    if advice is None:
        note += (
            f" The deterministic guarantee of SPEC.md [SEC-1] cannot cover {corrupt}"
            f" corrupt clients with k={degree}: it needs 2t > k+1+c = {degree + 1 + corrupt}"
            f" with t <= k+1 (no t achieves that once c >= k+1 = {degree + 1}) and a quorum"
            f" n-k+1+c = {n - degree + 1 + corrupt} <= n (so c <= k-1 = {degree - 1})."
            " Against them only the probabilistic SecAgg+ bound above applies, and a"
            " server that grinds session ids weakens it (docs/graphs.md); [SEC-1] needs"
            f" an even k >= c+1 = {corrupt + 1} (k < n)."
        )
        return note
    need_t, need_s = advice
    use_t = max(threshold, need_t)
    use_s = max(need_s, use_t)
    raised = f" (a threshold above the t={threshold} chosen here)" if use_t > threshold else ""
    note += (
        f" For the deterministic guarantee of SPEC.md [SEC-1] against {corrupt} corrupt"
        f" clients (it needs 2t > k+1+c = {degree + 1 + corrupt} and a quorum of at least"
        f" max(floor((n+c)/2)+1, n-k+1+c)) use threshold={use_t} and"
        f" min_survivors={use_s}{raised}."
    )
    if n - use_s < dropped:
        note += (f" WARNING: that quorum leaves room for {n - use_s} missing clients,"
                 f" fewer than the {dropped} dropouts requested: rounds with more abort;"
                 " choose a larger k for active mode")
    return note


def _complete(n: int, delta: float, gamma: float, model: ServerModel,
              reason: str) -> GraphParameters:
    corrupt = math.floor((gamma + _SMALL) * n)
    dropped = math.floor((delta + _SMALL) * n)
    mode = model.security_mode
    # Semi-honest: the corrupt clients alone never hold t shares.  Semi-malicious:
    # a lying server splits the honest clients, so any two sets of t must share
    # an honest client: 2t > n + corrupt.
    secure_from = (n + corrupt) // 2 + 1 if model is ServerModel.SEMI_MALICIOUS else corrupt + 1
    threshold = min(n, max(default_threshold(n, mode), secure_from))
    notes = []
    if threshold < secure_from:
        notes.append(f"WARNING: t={threshold} does not exceed what {corrupt} corrupt clients"
                     " can gather; no threshold gives the requested security")
    if n - threshold < dropped:
        notes.append(f"WARNING: t={threshold} tolerates only {n - threshold} dropouts, fewer"
                     f" than the {dropped} requested; rounds with more dropouts abort")
    explanation = (
        f"Complete graph (Bonawitz et al. 2017): {reason}. Every one of the n={n} clients"
        f" masks with and deals shares to all others; threshold t={threshold} (Bonawitz"
        f" default {default_threshold(n, mode)} for SecurityMode.{mode.name}, at least"
        f" {secure_from} so that {corrupt} corrupt clients cannot reconstruct); it tolerates"
        f" up to {n - threshold} dropouts."
    )
    if notes:
        explanation += " " + " ".join(notes) + "."
    return GraphParameters(n - 1, threshold, CompleteGraph(), True, explanation)
