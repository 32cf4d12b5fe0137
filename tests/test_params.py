"""The SecAgg+ parameter finder against fcp's published values and bounds."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from scipy.stats import hypergeom

from securefl.errors import ConfigurationError
from securefl.protocol.config import SecAggConfig, SecurityMode, default_threshold
from securefl.protocol.graphs import CompleteGraph
from securefl.protocol.harary import HararyGraph
from securefl.protocol.params import (
    GraphParameters,
    ServerModel,
    _active_quorum_note,
    find_graph_parameters,
    log_disconnection_bound,
    lower_tail_quantile,
    upper_tail_quantile,
)

SH = ServerModel.SEMI_HONEST
SM = ServerModel.SEMI_MALICIOUS

# (corrupt rate gamma, dropout rate delta, model) -> {n: (k, t)}.
# The first five rows are the table of /work/shared/SECAGG-PLUS-PARAMS.md; the
# rest are the other rows of fcp's graph_parameter_finder_test.cc.
PUBLISHED = {
    (0.05, 0.05, SH): {10**3: (30, 17), 10**4: (34, 20), 10**6: (38, 22)},
    (0.05, 0.05, SM): {10**3: (52, 37), 10**4: (62, 44), 10**6: (74, 52)},
    (0.05, 0.33, SH): {10**3: (72, 24), 10**4: (86, 29), 10**6: (102, 34)},
    (0.33, 0.33, SH): {10**3: (286, 150), 10**4: (422, 221), 10**6: (518, 270)},
    (0.45, 0.45, SH): {10**3: (822, 417), 10**4: (3494, 1771), 10**6: (6240, 3156)},
}
FCP_TEST_TABLE = {
    (0.45, 0.45, SH): {100: (92, 46), 10**5: (5508, 2788)},
    (0.33, 0.33, SH): {10: (8, 4), 100: (68, 34), 10**5: (480, 251)},
    (0.30, 0.30, SM): {100: (92, 62), 1000: (872, 584), 10**4: (4822, 3230),
                       10**5: (9388, 6286), 10**6: (11136, 7454)},
    (0.05, 0.33, SH): {10: (4, 2), 100: (28, 6), 10**5: (96, 32)},
    (0.05, 0.33, SM): {10: (8, 5), 100: (72, 39), 1000: (398, 223), 10**4: (746, 420),
                       10**5: (882, 496), 10**6: (970, 545)},
    (0.33, 0.05, SH): {10: (4, 4), 100: (34, 29), 1000: (78, 60), 10**4: (92, 70),
                       10**5: (102, 77), 10**6: (110, 83)},
    (0.33, 0.05, SM): {10: (4, 4), 100: (42, 37), 1000: (132, 109), 10**4: (178, 146),
                       10**5: (196, 160), 10**6: (212, 173)},
    (0.05, 0.05, SH): {10: (2, 2), 100: (12, 6), 10**5: (36, 21)},
    (0.05, 0.05, SM): {10: (2, 2), 100: (16, 11), 10**5: (68, 48)},
    (0.33, 0.0, SH): {10: (4, 4), 100: (26, 25), 1000: (38, 36), 10**4: (42, 40),
                      10**5: (46, 44), 10**6: (50, 47)},
    (0.33, 0.0, SM): {10: (4, 4), 100: (26, 26), 1000: (38, 37), 10**4: (42, 41),
                      10**5: (46, 45), 10**6: (50, 49)},
    (0.0, 0.33, SH): {10: (4, 2), 100: (26, 2), 1000: (38, 2), 10**4: (42, 2),
                      10**5: (46, 2), 10**6: (50, 2)},
    (0.0, 0.33, SM): {10: (8, 5), 100: (68, 35), 1000: (228, 115), 10**4: (326, 164),
                      10**5: (372, 187), 10**6: (410, 206)},
    (0.0, 0.0, SH): {n: (2, 2) for n in (10, 100, 1000, 10**4, 10**5, 10**6)},
    (0.0, 0.0, SM): {n: (2, 2) for n in (10, 100, 1000, 10**4, 10**5, 10**6)},
}
# Cells that take more than ~0.3 s each (large k: thousands of candidate degrees).
SLOW = {(0.45, 0.45, SH, 10**5), (0.45, 0.45, SH, 10**6), (0.30, 0.30, SM, 10**4),
        (0.30, 0.30, SM, 10**5), (0.30, 0.30, SM, 10**6)}


def _cases(table):
    for (gamma, delta, model), row in table.items():
        for n, (k, t) in row.items():
            marks = [pytest.mark.slow] if (gamma, delta, model, n) in SLOW else []
            yield pytest.param(n, gamma, delta, model, k, t, marks=marks,
                               id=f"n={n}-g={gamma}-d={delta}-{model.value}")


@pytest.mark.parametrize(("n", "gamma", "delta", "model", "k", "t"), list(_cases(PUBLISHED)))
def test_published_table(n, gamma, delta, model, k, t):
    params = find_graph_parameters(n, delta, gamma, model)
    assert not params.complete
    # The brief asks for k +- 2 and t +- 2; the port is exact.
    assert abs(params.degree - k) <= 2 and abs(params.threshold - t) <= 2
    assert (params.degree, params.threshold) == (k, t)
    assert params.graph == HararyGraph(k)


@pytest.mark.parametrize(("n", "gamma", "delta", "model", "k", "t"),
                         list(_cases(FCP_TEST_TABLE)))
def test_rest_of_fcp_test_table(n, gamma, delta, model, k, t):
    params = find_graph_parameters(n, delta, gamma, model)
    assert (params.degree, params.threshold, params.complete) == (k, t, False)


def test_published_table_every_row_is_found():
    # the values are compared in the tests above; time belongs in benchmarks
    for (gamma, delta, model), row in PUBLISHED.items():
        for n in row:
            params = find_graph_parameters(n, delta, gamma, model)
            assert params.complete or 0 < params.threshold <= params.degree + 1 <= n


def _analytic_bounds(n, gamma, delta, model, k, t, alpha):
    """fcp's ComputesParametersWithinExpectedRange, in floating point."""
    unconstrained = gamma == 0 and delta == 0
    lower = 1.0 if unconstrained or n < 20 else math.log(n) + 40 * math.log(2) / 5
    beta = t / k
    a = math.log(n) + 20 * math.log(2)
    b = 2 * (alpha * (1 - delta) - beta) ** 2
    c = min(2 * (beta - alpha * gamma) ** 2,
            -math.log(gamma + delta) if gamma + delta > 0 else math.inf)
    upper = 3.0 if unconstrained else max(
        (lower / c if c else math.inf) + 1, a / b if b else math.inf)
    if model is SM:
        upper += upper / 5
    return lower, upper


@pytest.mark.parametrize(("n", "gamma", "delta", "model", "k", "t"),
                         [c for c in _cases({**PUBLISHED, **FCP_TEST_TABLE})
                          if not c.marks])
def test_analytic_bounds(n, gamma, delta, model, k, t):
    params = find_graph_parameters(n, delta, gamma, model)
    # alpha = n/(n-1) as written; fcp's C++ divides two ints, i.e. alpha = 1.
    for alpha in (n / (n - 1), 1.0):
        lower, upper = _analytic_bounds(n, gamma, delta, model, params.degree,
                                        params.threshold, alpha)
        assert lower < params.degree < upper
    assert params.degree >= params.threshold > 0


@pytest.mark.parametrize(("n", "gamma", "delta", "model"), [
    (1000, 0.5, 0.5, SH),     # gamma + delta > 0.9
    (1000, 0.5, 0.5, SM),
    (1000, 0.33, 0.33, SM),   # gamma + 2 delta > 0.9
    (1000, 0.1, 0.45, SM),
    (10, 0.45, 0.45, SH),     # feasible rates, but no k < n - 1 works
    (10, 0.30, 0.30, SM),
    (2, 0.0, 0.0, SH),        # no even k < n - 1 at all
    (3, 0.1, 0.1, SM),
])
def test_infeasible_falls_back_to_complete_graph(n, gamma, delta, model):
    params = find_graph_parameters(n, delta, gamma, model)
    assert params.complete
    assert params.graph == CompleteGraph()
    assert params.degree == n - 1
    assert "Complete graph" in params.explanation
    corrupt = math.floor(gamma * n + 1e-9)
    mode = model.security_mode
    secure_from = (n + corrupt) // 2 + 1 if model is SM else corrupt + 1
    assert params.threshold == min(n, max(default_threshold(n, mode), secure_from))
    # The fallback can be used as is.
    SecAggConfig(num_clients=n, vector_length=1, threshold=params.threshold,
                 mode=mode, graph=params.graph)


def test_fallback_explains_why_and_warns_when_rates_cannot_be_met():
    params = find_graph_parameters(1000, 0.5, 0.5, SH)
    assert "exceeds 0.9" in params.explanation
    assert "WARNING" in params.explanation  # t = 501 tolerates 499 < 500 dropouts
    params = find_graph_parameters(10, 0.45, 0.45, SH)
    assert "no even degree" in params.explanation
    assert "WARNING" not in params.explanation  # t = 6 tolerates the 4 dropouts


def test_sparse_result_explains_the_degree_mapping():
    params = find_graph_parameters(1000, 0.05, 0.05, SH)
    assert isinstance(params, GraphParameters)
    assert "k=30" in params.explanation and "k+1=31" in params.explanation
    config = SecAggConfig(num_clients=1000, vector_length=8, threshold=params.threshold,
                          graph=params.graph)
    assert config.graph.describe() == "harary:k=30"


@settings(max_examples=60, deadline=None)
@given(n=st.integers(20, 3000), gamma=st.floats(0, 0.4), delta=st.floats(0, 0.4),
       model=st.sampled_from(list(ServerModel)))
def test_results_are_usable_and_meet_the_tail_conditions(n, gamma, delta, model):
    params = find_graph_parameters(n, delta, gamma, model)
    if params.complete:
        assert params.degree == n - 1 and params.graph == CompleteGraph()
        return
    k, t = params.degree, params.threshold
    assert k % 2 == 0 and 2 <= k < n - 1 and 2 <= t <= k
    params.graph.validate(n, t)
    if model is SH:
        SecAggConfig(num_clients=n, vector_length=1, threshold=t, graph=params.graph)
    # Connectivity bound below 2^-41.
    assert log_disconnection_bound(n, gamma, delta, k) < -41 * math.log(2)
    corrupt = math.floor((gamma + 1e-14) * n)
    survivors = math.ceil((1 - delta - 1e-14) * n)
    # Security: more than t - 1 corrupt neighbours is a < 2^-41/n event
    # (semi-honest; the semi-malicious t is larger still).
    assert hypergeom.sf(t - 1, n, corrupt, k) < 2.0**-41 / n * (1 + 1e-6)
    # Correctness: fewer than t surviving neighbours is a < 2^-20/n event
    # (unless fcp's floor t >= 2 for Shamir overrode a smaller admissible t).
    assert t == 2 or hypergeom.cdf(t - 1, n, survivors, k) < 2.0**-20 / n * (1 + 1e-6)
    if model is SM:
        # The semi-malicious raise: 2t > k + t1.
        assert 2 * t > k + upper_tail_quantile(n, corrupt, k, 2.0**-41 / n)


@settings(max_examples=200, deadline=None)
@given(total=st.integers(1, 20000), data=st.data(),
       log2_prob=st.floats(-70, -1))
def test_quantiles_agree_with_scipy_tails(total, data, log2_prob):
    marked = data.draw(st.integers(0, total))
    sampled = data.draw(st.integers(0, min(total, 3000)))
    prob = 2.0**log2_prob
    lo, hi = max(0, sampled - (total - marked)), min(sampled, marked)
    rel = 1e-7
    t = upper_tail_quantile(total, marked, sampled, prob)
    assert lo <= t <= hi
    assert hypergeom.sf(t, total, marked, sampled) < prob * (1 + rel)
    if t > lo:
        assert hypergeom.sf(t - 1, total, marked, sampled) >= prob * (1 - rel)
    x = lower_tail_quantile(total, marked, sampled, prob)
    assert lo <= x <= hi
    assert hypergeom.cdf(x, total, marked, sampled) >= prob * (1 - rel)
    if x > lo:
        assert hypergeom.cdf(x - 1, total, marked, sampled) < prob * (1 + rel)


def test_semi_malicious_parameters_are_accepted_by_active_mode_and_run():
    from securefl import secure_sum
    from securefl.protocol import SecAggConfig

    params = find_graph_parameters(1000, 0.05, 0.05, SM)
    config = SecAggConfig(num_clients=1000, vector_length=1, threshold=params.threshold,
                          graph=params.graph, mode=SecurityMode.ACTIVE)
    assert 2 * config.t > params.degree + 1
    # a smaller federation with the same rule runs end to end in active mode
    small = SecAggConfig(num_clients=40, vector_length=3, threshold=7,
                         graph=params.graph.__class__(10), mode=SecurityMode.ACTIVE)
    inputs = {c: np.full(3, c, dtype=np.uint64) for c in small.ids}
    assert secure_sum(inputs, small).total.tolist() == [sum(range(1, 41))] * 3
    with pytest.raises(ConfigurationError, match="active mode needs threshold"):
        SecAggConfig(num_clients=40, vector_length=3, threshold=5,
                     graph=params.graph.__class__(10), mode=SecurityMode.ACTIVE)


def test_model_accepts_its_string_value():
    assert find_graph_parameters(1000, 0.05, 0.05, "semi-malicious").degree == 52
    assert ServerModel.SEMI_MALICIOUS.security_mode is SecurityMode.ACTIVE
    assert ServerModel.SEMI_HONEST.security_mode is SecurityMode.SEMI_HONEST


@pytest.mark.parametrize(("args", "match"), [
    ((1, 0.1, 0.1, SH), "num_clients"),
    ((10**6 + 1, 0.1, 0.1, SH), "num_clients"),
    ((True, 0.1, 0.1, SH), "num_clients"),
    ((100.0, 0.1, 0.1, SH), "num_clients"),
    ((100, -0.1, 0.1, SH), "dropout_rate"),
    ((100, 1.0, 0.1, SH), "dropout_rate"),
    ((100, float("nan"), 0.1, SH), "dropout_rate"),
    ((100, "0.1", 0.1, SH), "dropout_rate"),
    ((100, 0.1, 1.5, SH), "corrupt_rate"),
    ((100, 0.1, False, SH), "corrupt_rate"),
    ((100, 0.1, 0.1, "malicious"), "model"),
    ((100, 0.1, 0.1, SH, 0), "security_bits"),
    ((100, 0.1, 0.1, SH, 40, 2.5), "correctness_bits"),
])
def test_invalid_inputs(args, match):
    with pytest.raises(ConfigurationError, match=match):
        find_graph_parameters(*args)


def test_quantile_argument_checks():
    with pytest.raises(ConfigurationError):
        upper_tail_quantile(10, 11, 3, 0.01)
    with pytest.raises(ConfigurationError):
        lower_tail_quantile(10, 3, 3, 0.9)


def _sec1_holds(config: SecAggConfig, corrupt: int) -> bool:
    """SPEC.md [SEC-1]'s conditions for ``corrupt`` clients on ``config``."""
    n, t, q = config.num_clients, config.t, config.signature_quorum
    holders = config.graph.share_holders(n)
    kappa = config.graph.connectivity(n)
    return 2 * t > holders + corrupt and 2 * q > n + corrupt and q >= n - kappa + 1 + corrupt


def test_semi_malicious_sparse_result_states_the_active_quorum_and_its_cost():
    """SPEC.md [PARAM-7]/[SEC-1]: the explanation gives the quorum n-k+1, the
    threshold and min_survivors the deterministic guarantee needs against c
    corrupt clients (the finder's own t=37 gives 2t = 74, not above
    k+1+c = 103), and warns when that leaves fewer missing clients than the
    dropouts."""
    params = find_graph_parameters(1000, 0.05, 0.05, SM)
    assert params.degree == 52 and params.threshold == 37
    assert "quorum n-k+1 = 949" in params.explanation
    assert "threshold=52 and min_survivors=999" in params.explanation
    assert "WARNING" in params.explanation  # room for 1 missing client, 50 requested
    as_found = SecAggConfig(num_clients=1000, vector_length=1, threshold=params.threshold,
                            graph=params.graph, mode=SecurityMode.ACTIVE, min_survivors=999)
    assert not _sec1_holds(as_found, 50)
    config = SecAggConfig(num_clients=1000, vector_length=1, threshold=52,
                          graph=params.graph, mode=SecurityMode.ACTIVE, min_survivors=999)
    assert config.signature_quorum == 999 and _sec1_holds(config, 50)
    # no corrupt clients, few dropouts: the quorum leaves room for them
    params = find_graph_parameters(1000, 0.01, 0.0, SM)
    assert "quorum" in params.explanation and "WARNING" not in params.explanation
    # semi-honest results say nothing about it
    assert "quorum" not in find_graph_parameters(1000, 0.05, 0.05, SH).explanation


def test_finder_note_says_sec1_cannot_cover_c_at_least_k():
    """Bell et al.'s example (10^4 clients, 5 % corrupt, 5 % dropouts): the
    finder's k=62 is below c=500, and the note says that no threshold gives
    [SEC-1] there (only the probabilistic bound applies)."""
    params = find_graph_parameters(10_000, 0.05, 0.05, SM)
    assert params.degree == 62
    assert "cannot cover 500 corrupt clients with k=62" in params.explanation
    assert "no t achieves that once c >= k+1 = 63" in params.explanation
    assert "min_survivors=" not in params.explanation
    for t in range(params.degree // 2 + 1, params.degree + 2):
        config = SecAggConfig(num_clients=10_000, vector_length=1, threshold=t,
                              graph=params.graph, mode=SecurityMode.ACTIVE, min_survivors=10_000)
        assert not _sec1_holds(config, 500)


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_following_the_active_quorum_note_satisfies_sec1(data):
    """Property: whenever the note gives a threshold and min_survivors,
    SecAggConfig accepts them and [SEC-1]'s conditions hold for the c corrupt
    clients; whenever it says it cannot, no accepted (t, min_survivors) on
    that graph satisfies them (checked exhaustively over t)."""
    # what the finder can return: even k < n-1, an active-valid t <= k+1
    k = 2 * data.draw(st.integers(1, 20))
    n = data.draw(st.integers(k + 2, 70))
    threshold = data.draw(st.integers(k // 2 + 1, k + 1))
    corrupt = data.draw(st.integers(0, 2 * k))
    dropped = data.draw(st.integers(0, n // 2))
    note = _active_quorum_note(n, k, threshold, corrupt, dropped)
    match = re.search(r"use threshold=(\d+) and min_survivors=(\d+)", note)
    if match:
        t, s = int(match[1]), int(match[2])
        assert t >= threshold
        config = SecAggConfig(num_clients=n, vector_length=1, threshold=t,
                              graph=HararyGraph(k), mode=SecurityMode.ACTIVE, min_survivors=s)
        assert _sec1_holds(config, corrupt)
        assert ("WARNING" in note) == (n - config.signature_quorum < dropped)
        event("note advises threshold and min_survivors")
        # and its threshold is the smallest at or above the finder's that works
        for smaller in range(threshold, t):
            assert 2 * smaller <= k + 1 + corrupt
        return
    assert "cannot cover" in note and corrupt >= k
    event("note says SEC-1 cannot cover c")
    for t in range(k // 2 + 1, k + 2):  # min_survivors=n: the largest quorum
        config = SecAggConfig(num_clients=n, vector_length=1, threshold=t,
                              graph=HararyGraph(k), mode=SecurityMode.ACTIVE, min_survivors=n)
        assert not _sec1_holds(config, corrupt)
