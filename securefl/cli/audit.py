"""``securefl audit RUN_DIR``: verify a run's privacy ledger.

Verifies the ledger's hash chain and its per-round commits, cross-checks its
last settled round and chain head against checkpoint.pt and metrics.json
(with a run store, run.sqlite: the store's ledger is the one audited,
ledger.jsonl must be a byte prefix of it, an export that lags the store
after a crash is noted, not failed, the store's state -- ledger head,
committed and in-flight rounds, every client's accountant history -- and
its run configuration must agree with its ledger, and a run.sqlite that
cannot be read fails),
and recomputes the epsilon of EVERY row from its recorded history with
every accountant of the row's adjacency: add-or-remove-one rows (uniform
weighting) with four (Opacus RDP and PRV, dp-accounting RDP and PLD);
replace-one rows (weighting by examples, record counts public) with two
(the replace-one RDP bound from Opacus's RDP, recorded as epsilon_rdp, and
dp-accounting's replace-one PLD, recorded as epsilon_dpa_pld).  A row fails
when its history does not follow from the client's earlier rows, a recorded
epsilon differs from the recomputed one, an epsilon is infinite or NaN, a
step was taken without noise, its noise was not drawn from the OS CSPRNG
(``--insecure-reproducible-noise``: noise_source insecure-seeded), its
adjacency does not match its weighting, or any accountant exceeds its
budget; the ledger fails when its rows state more than one delta or one
above 1e-3, add-or-remove-one rows train at more than one sample rate, or
a row states a delta, budget, accountant, noise source, adjacency or
weighting other than metrics.json's run configuration.  An in-flight
row that no settled row supersedes is charged in full.  Prints per round
and per client.  With --plot FILE it also draws every client's epsilon per
round to FILE; no plot is drawn by default, and never into RUN_DIR unless
FILE is there.

Exit status:
  0  verified: every row recomputes, the chain and the cross-checks hold,
     every client stayed within its budget by every accountant
  1  FAIL: a violation (budget exceeded by any accountant, infinite or NaN
     epsilon, zero noise, insecure noise source, an adjacency that does not
     match the weighting) or tampering (broken chain, missing commit,
     truncation, a ledger ahead of or behind the checkpoint or metrics, an
     export that disagrees with the run store, a run store whose state or
     configuration disagrees with its ledger or that cannot be read, a
     recorded epsilon or history that does not recompute)
  2  usage error, or the ledger cannot be read
  3  verified, but no privacy budget was set for some client (or some
     user-level row): nothing bounds that spend
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from securefl.cli import help_text
from securefl.cli.audit_empirical import add_arguments as add_empirical_arguments
from securefl.cli.audit_empirical import run_empirical
from securefl.errors import LedgerError, SecureFLError
from securefl.privacy.ledger import (
    ADJACENCIES,
    LEDGER_FILENAME,
    NOISE_SOURCES,
    RECORD_LEVEL_DELTA_MAX,
    USER_LEVEL_ACCOUNTANTS,
    USER_LEVEL_ADJACENCY,
    USER_LEVEL_DELTA_MAX,
    USER_LEVEL_MECHANISMS,
    USER_LEVEL_RETIRED_ADJACENCIES,
    WEIGHTINGS,
    LedgerChain,
    LedgerEntry,
    UserLevelEntry,
    load_ledger,
    parse_ledger,
)
from securefl.privacy.options import Adjacency, NoiseSource, adjacency_for

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.json"
RECOMPUTE_TOLERANCE = 1e-6
"""Relative difference allowed between a recorded epsilon and the epsilon
recomputed from the recorded history with the same accountant."""

MAX_PRINTED = 20
"""Violations printed in the text report (``--json`` lists all)."""

EXIT_OK = 0
EXIT_FAIL = 1
EXIT_UNREADABLE = 2
EXIT_NO_BUDGET = 3

_RECORDED = {"opacus-rdp": "epsilon_rdp", "opacus-prv": "epsilon_prv",
             "dp-accounting-rdp": "epsilon_dpa_rdp", "dp-accounting-pld": "epsilon_dpa_pld",
             "replace-one-rdp": "epsilon_rdp", "replace-one-pld": "epsilon_dpa_pld"}
"""The ledger field that records each accountant's epsilon."""


_NOT_RECORDED = {"replace-one": ("epsilon_prv", "epsilon_dpa_rdp")}
"""Fields a row of that adjacency must leave null: their accountants state
add-or-remove-one epsilons only, which do not hold when record counts are
public."""


def _epsilons_for(adjacency: str, history: list[list[float]],
                  delta: float) -> dict[str, float] | None:
    """Every accountant's epsilon of ``history`` under ``adjacency``
    (:func:`securefl.privacy.accounting.epsilons_for`: the four
    :data:`~securefl.privacy.accounting.ACCOUNTANTS` for add-or-remove-one,
    the two :data:`~securefl.privacy.accounting.REPLACE_ONE_ACCOUNTANTS` for
    replace-one), or None for an adjacency it does not know (then the row
    cannot be verified and fails).  A history whose arithmetic an accountant
    cannot carry out (Opacus's RDP raises OverflowError for sigma = 1e300,
    ZeroDivisionError for sigma = 1e-300) gets NaN from every accountant: the
    row cannot be verified and fails, the audit goes on."""
    from securefl.privacy import accounting

    if adjacency not in ADJACENCIES:
        return None
    try:
        return accounting.epsilons_for(history, delta, adjacency)
    except ArithmeticError:
        names = (accounting.ACCOUNTANTS if adjacency == "add-remove-one"
                 else accounting.REPLACE_ONE_ACCOUNTANTS)
        return dict.fromkeys(names, math.nan)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the ``audit`` sub-command."""
    p = sub.add_parser("audit", help="verify a run's privacy ledger",
                       description=help_text(__doc__),
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                   help=f"a run directory holding {LEDGER_FILENAME}, {CHECKPOINT_NAME} and"
                        f" {METRICS_NAME} (or a ledger file alone: then not cross-checked)")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print the audit as strict JSON")
    plot = out.add_mutually_exclusive_group()
    plot.add_argument("--plot", type=Path, default=None, metavar="FILE",
                      help="write a PNG to FILE: every client's epsilon per round (with"
                           " --empirical: the canary audit, by default"
                           " ./empirical-audit-client<ID>.png or next to --output); the ledger"
                           " audit writes no plot unless asked, and neither writes into RUN_DIR"
                           " unless FILE is there")
    plot.add_argument("--no-plot", action="store_true", help="write no plot")
    add_empirical_arguments(p)
    p.set_defaults(func=run)


def _fmt(value: float | str | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if value == "inf" or (isinstance(value, float) and math.isinf(value)):
        return "inf"
    return f"{float(value):.3f}"


def _json_number(value: float | None) -> float | str | None:
    """Strict JSON: ``"inf"`` for infinity, null for NaN or None."""
    if value is None or math.isnan(value):
        return None
    return value if math.isfinite(value) else "inf"


@dataclass
class _Client:
    base: list[list[float]] = field(default_factory=list)
    pending: LedgerEntry | None = None
    budgets: set[float | None] = field(default_factory=set)
    rows: list[LedgerEntry] = field(default_factory=list)
    charged_in_flight: int = 0


def _history(rows: Any) -> list[list[float]]:
    return [[float(r[0]), float(r[1]), int(r[2])] for r in rows]


def _compose(base: list[list[float]], sigma: float, q: float, steps: int) -> list[list[float]]:
    from securefl.privacy.budget import compose

    return _history(compose([tuple(r) for r in base], [(sigma, q, steps)]))  # type: ignore[misc]


def _verify_rows(chain: LedgerChain, violations: list[str]) -> tuple[
        dict[int, _Client], dict[tuple[str, ...], dict[str, float] | None]]:
    """Recompute and verify every committed row; return per-client state and
    the epsilons computed per history."""
    computed: dict[tuple[str, ...], dict[str, float] | None] = {}
    clients: dict[int, _Client] = {}

    def eps_of(history: list[list[float]], delta: float,
               adjacency: str) -> dict[str, float] | None:
        key = (repr(history), repr(delta), adjacency)
        if key not in computed:
            computed[key] = _epsilons_for(adjacency, history, delta)
        return computed[key]

    for row in chain.committed:
        who = f"round {row.round}, client {row.client_id}" + (
            " (in-flight row)" if row.in_flight else "")
        state = clients.setdefault(row.client_id, _Client())
        state.rows.append(row)
        state.budgets.add(row.epsilon_budget)
        if row.noise_source != NoiseSource.OS_CSPRNG.value:
            detail = ("insecure reproducible noise (--insecure-reproducible-noise): noise and"
                      " sampling from a generator seeded with the public seed; whoever knows"
                      " the seed regenerates the noise, so there is no privacy against the"
                      " server" if row.noise_source == NoiseSource.INSECURE_SEEDED.value
                      else f"unknown noise source (known: {', '.join(NOISE_SOURCES)})")
            violations.append(f"{who}: noise_source {row.noise_source!r}: {detail}")
        if row.adjacency not in ADJACENCIES:
            violations.append(f"{who}: unknown adjacency {row.adjacency!r}")
        if row.weighting not in WEIGHTINGS:
            violations.append(f"{who}: unknown weighting {row.weighting!r}")
        elif (row.adjacency in ADJACENCIES
              and Adjacency(row.adjacency) is not adjacency_for(row.weighting)):
            violations.append(f"{who}: weighting {row.weighting!r} needs adjacency"
                              f" {adjacency_for(row.weighting).value!r}, the row states its"
                              f" epsilons for {row.adjacency!r}")
        for name in _NOT_RECORDED.get(row.adjacency, ()):
            if getattr(row, name) is not None:
                violations.append(f"{who}: records {name} = {_fmt(getattr(row, name))}, an"
                                  f" add-or-remove-one epsilon, in a {row.adjacency} row")
        if not 0.0 < row.delta < 1.0:
            violations.append(f"{who}: delta {row.delta!r} is not in (0, 1)")
            continue
        if row.local_steps < 0:
            violations.append(f"{who}: negative local_steps {row.local_steps}")
            continue
        if row.status == "not-sampled" and row.local_steps > 0:
            violations.append(f"{who}: not sampled, yet {row.local_steps} steps recorded")
        if row.local_steps > 0 and not row.noise_multiplier > 0:
            violations.append(f"{who}: {row.local_steps} steps with noise multiplier"
                              f" {row.noise_multiplier}: no noise, infinite epsilon")
        # the history must follow from the client's earlier rows
        if row.in_flight:
            if state.pending is not None and state.pending.round != row.round:
                state.base = _history(state.pending.history)  # never settled: charged
                state.charged_in_flight += state.pending.local_steps
            expected = _compose(state.base, row.noise_multiplier, row.sample_rate,
                                row.local_steps)
            state.pending = row
        else:
            pending = state.pending
            if pending is not None and pending.round != row.round:
                state.base = _history(pending.history)
                state.charged_in_flight += pending.local_steps
                pending = None
            if row.local_steps > 0 and pending is None:
                violations.append(f"{who}: trained {row.local_steps} steps without an"
                                  " in-flight row before it (the spend was not durable"
                                  " before training)")
            if pending is not None and (
                    row.local_steps > pending.local_steps
                    or (row.local_steps > 0 and (row.noise_multiplier, row.sample_rate)
                        != (pending.noise_multiplier, pending.sample_rate))):
                violations.append(f"{who}: settled {row.local_steps} steps at sigma"
                                  f" {row.noise_multiplier}, q {row.sample_rate}; its in-flight"
                                  f" row charged {pending.local_steps} at sigma"
                                  f" {pending.noise_multiplier}, q {pending.sample_rate}")
            expected = _compose(state.base, row.noise_multiplier, row.sample_rate,
                                row.local_steps)
            state.pending = None
        try:
            recorded_history = _history(row.history)
        except (TypeError, ValueError, IndexError):
            violations.append(f"{who}: malformed history")
            continue
        if recorded_history != expected:
            violations.append(f"{who}: recorded history {recorded_history} does not follow from"
                              f" the client's earlier rows and this round's steps ({expected})")
        if not row.in_flight:
            state.base = recorded_history
        # every epsilon recomputed from the recorded history
        computed_eps = eps_of(recorded_history, row.delta, row.adjacency)
        if computed_eps is None:
            continue  # unknown adjacency: reported above
        eps = computed_eps
        infinite = [name for name, value in eps.items() if math.isinf(value)]
        if infinite:
            by = "every accountant" if len(infinite) == len(eps) else ", ".join(infinite)
            violations.append(f"{who}: epsilon is infinite by {by}")
        for name, value in eps.items():
            if math.isnan(value):
                violations.append(f"{who}: {name} cannot bound this history (NaN epsilon)")
            recorded = getattr(row, _RECORDED[name])
            if recorded is not None and not (
                    recorded == value or math.isclose(recorded, value,
                                                      rel_tol=RECOMPUTE_TOLERANCE,
                                                      abs_tol=1e-9)):
                violations.append(f"{who}: recorded epsilon {_fmt(recorded)} by {name} does"
                                  f" not match its history ({_fmt(value)})")
            if (row.epsilon_budget is not None and math.isfinite(value)
                    and not value <= row.epsilon_budget):
                violations.append(f"{who}: epsilon {value:.4f} by {name} exceeds the budget"
                                  f" {row.epsilon_budget:g}")
    for state in clients.values():
        if state.pending is not None:
            state.charged_in_flight += state.pending.local_steps
        if len(state.budgets) > 1:
            violations.append(f"client {state.rows[0].client_id}: its rows disagree on its"
                              f" budget ({sorted(state.budgets, key=str)})")
    return clients, computed


def _record_delta_problems(chain: LedgerChain) -> list[str]:
    """Why the record-level rows' deltas do not verify (empty when they do):
    every committed row states the same delta (each epsilon is recomputed at
    its row's own delta, so rows restated at a larger delta would recompute
    to a smaller epsilon), and it is at most :data:`RECORD_LEVEL_DELTA_MAX`
    (an epsilon at a delta near ``1 / records`` means nothing)."""
    deltas = sorted({row.delta for row in chain.committed if 0.0 < row.delta < 1.0})
    found = []
    if len(deltas) > 1:
        found.append(f"the record-level rows state their epsilons at {len(deltas)} different"
                     f" deltas ({', '.join(f'{d:g}' for d in deltas[:5])}): one delta for the"
                     " whole ledger, the run's")
    for delta in deltas:
        if delta > RECORD_LEVEL_DELTA_MAX:
            first = next(r for r in chain.committed if r.delta == delta)
            found.append(f"round {first.round}, client {first.client_id}: delta {delta:g} is"
                         f" above the record-level cap {RECORD_LEVEL_DELTA_MAX:g} (an epsilon"
                         " at a delta near 1 / records permits releasing a record outright)")
    return found


def _record_rate_problems(chain: LedgerChain) -> list[str]:
    """Why the add-or-remove-one rows do not share one public sample rate
    (empty when they do).  Their epsilons hold only when nothing published
    depends on a client's record count; a rate per client (a DataLoader's
    ``batch_size / len(dataset)``) publishes it, and a record added or
    removed would change it: such rows need replace-one adjacency."""
    rates: dict[float, LedgerEntry] = {}
    for row in chain.committed:
        if row.adjacency == Adjacency.ADD_REMOVE_ONE.value and row.local_steps > 0:
            rates.setdefault(row.sample_rate, row)
    if len(rates) < 2:
        return []
    shown = ", ".join(f"{q:g} (round {r.round}, client {r.client_id})"
                      for q, r in list(rates.items())[:5])
    return [f"the add-or-remove-one rows train at {len(rates)} different sample rates"
            f" ({shown}): a rate that differs between clients or rounds can publish a"
            " record count (a DataLoader's batch_size / len(dataset)), and a record added or"
            " removed would change it; add-or-remove-one epsilons need one public rate"
            " (otherwise the rows must state replace-one epsilons)"]


def _record_config_expectations(config: dict[str, Any]) -> dict[str, Any]:
    """Ledger row field -> the value a run configuration (as exported to
    ``metrics.json``) prescribes, for the keys it has: what
    :func:`~securefl.federation.round.ledger_expectations` gives the run
    store's check (the budget is ``epsilon_budget``, else ``target_epsilon``,
    as :class:`~securefl.privacy.client.DPConfig` defaults it)."""
    expected: dict[str, Any] = {}
    if isinstance(config.get("delta"), int | float):
        expected["delta"] = float(config["delta"])
    if "epsilon_budget" in config or "target_epsilon" in config:
        budget = config.get("epsilon_budget")
        if budget is None:
            budget = config.get("target_epsilon")
        expected["epsilon_budget"] = None if budget is None else float(budget)
    if isinstance(config.get("accountant"), str):
        expected["accountant"] = config["accountant"]
    if isinstance(config.get("insecure_reproducible_noise"), bool):
        expected["noise_source"] = (NoiseSource.INSECURE_SEEDED.value
                                    if config["insecure_reproducible_noise"]
                                    else NoiseSource.OS_CSPRNG.value)
    if config.get("weighting") in WEIGHTINGS:
        expected["weighting"] = config["weighting"]
        expected["adjacency"] = adjacency_for(config["weighting"]).value
    return expected


def _record_config_problems(chain: LedgerChain, config: Any, source: str) -> list[str]:
    """Why the record-level rows disagree with a run configuration
    (``source`` names where it was read, ``metrics.json``); empty when they
    agree, when the ledger has no record-level row or ``config`` is not a
    dict.  A row's delta and budget are what its epsilon is recomputed at
    and checked against: taken from the rows alone, a ledger rewritten at
    delta 0.5 (re-chained, the anchors moved) verified with every epsilon
    about five times smaller.  Compared: delta, budget, accountant, noise
    source, adjacency and weighting (:func:`_record_config_expectations`)."""
    if not isinstance(config, dict) or not chain.committed:
        return []
    try:
        expected = _record_config_expectations(config)
    except (TypeError, ValueError, OverflowError):
        return [f"the run configuration in {source} cannot be read: the ledger rows cannot"
                " be checked against it"]
    found = []
    seen: set[str] = set()
    for row in chain.committed:
        for key, value in expected.items():
            recorded = getattr(row, key)
            if recorded != value and key not in seen:
                seen.add(key)
                found.append(f"round {row.round}, client {row.client_id}: the run"
                             f" configuration ({source}) gives {key} = {value!r}, the row"
                             f" records {recorded!r}")
    return found


def _user_row_problems(row: UserLevelEntry, previous: list[list[float]],
                       computed: dict[str, float]) -> list[str]:
    """Why a user-level row does not verify (empty when it does)."""
    from securefl.privacy.distributed_encoding import rounded_norm_bound_sq

    where = f"round {row.round}, user level"
    found = []
    if row.mechanism not in USER_LEVEL_MECHANISMS:
        found.append(f"{where}: unknown mechanism {row.mechanism!r}: cannot be accounted")
    if row.accountant not in USER_LEVEL_ACCOUNTANTS:
        found.append(f"{where}: unknown accountant {row.accountant!r}: cannot be recomputed")
    if row.adjacency in USER_LEVEL_RETIRED_ADJACENCIES:
        found.append(f"{where}: adjacency {row.adjacency!r} is not what the Skellam bound"
                     " covers (adding a client also adds its noise share); the epsilons hold"
                     f" under {USER_LEVEL_ADJACENCY!r} only")
    elif row.adjacency != USER_LEVEL_ADJACENCY:
        found.append(f"{where}: adjacency {row.adjacency!r} is not {USER_LEVEL_ADJACENCY!r}")
    if row.noise_source != NoiseSource.OS_CSPRNG.value:
        found.append(f"{where}: noise source {row.noise_source!r}: the server can regenerate"
                     " the noise, the user-level epsilon does not hold against it")
    if not row.released_variance >= row.target_variance:
        found.append(f"{where}: the released sum carries variance {row.released_variance:.6g},"
                     f" below the calibrated {row.target_variance:.6g}")
    try:
        bound = math.sqrt(rounded_norm_bound_sq(row.gamma * row.clip, row.dimension, row.beta))
        l1 = min(bound * bound, math.sqrt(row.dimension) * bound)
    except (SecureFLError, ValueError, OverflowError):
        bound = l1 = math.nan
    if not (math.isclose(bound, row.l2_sensitivity, rel_tol=RECOMPUTE_TOLERANCE)
            and math.isclose(l1, row.l1_sensitivity, rel_tol=RECOMPUTE_TOLERANCE)):
        found.append(f"{where}: recorded sensitivities ({row.l1_sensitivity:.6g},"
                     f" {row.l2_sensitivity:.6g}) do not follow from gamma {row.gamma:.6g},"
                     f" clip {row.clip:.6g}, d {row.dimension}, beta {row.beta:.6g}"
                     f" (recomputed {l1:.6g}, {bound:.6g})")
    from securefl.privacy.distributed import SkellamRound

    expected = [*previous, SkellamRound(
        row.released_variance, row.l1_sensitivity, row.l2_sensitivity, row.sample_rate, 1,
        row.cohort_pool, row.skip_below, 0 if row.status == "skipped" else 1).as_list()]
    if row.history != expected:
        found.append(f"{where}: the history does not follow from the earlier user-level rows"
                     " and this round's released variance")
    for name, recorded in (("epsilon", row.epsilon), ("epsilon_unsampled",
                                                       row.epsilon_unsampled)):
        key = "sampled" if name == "epsilon" else "unsampled"
        value = computed.get(key, math.nan)
        if not math.isfinite(value):
            found.append(f"{where}: {name} is {value} (infinite or unbounded)")
        elif not math.isclose(recorded, value, rel_tol=RECOMPUTE_TOLERANCE):
            found.append(f"{where}: recorded {name} {recorded!r} but the history gives {value!r}")
        if row.epsilon_budget is not None and not value <= row.epsilon_budget \
                and name == "epsilon":
            found.append(f"{where}: user-level epsilon {value:.4f} exceeds the budget"
                         f" {row.epsilon_budget:g}")
    gaussian = computed.get("gaussian", math.nan)
    if not computed.get("sampled", math.nan) >= gaussian * (1 - RECOMPUTE_TOLERANCE):
        found.append(f"{where}: epsilon {computed.get('sampled')} is below {gaussian}, the"
                     " dp-accounting epsilon of the Poisson-sampled Gaussian of the same"
                     " variance (a lower bound of the Skellam mechanism's)")
    return found


def _gaussian_floor(history: list[list[float]], delta: float) -> float:
    """dp-accounting's RDP epsilon of the Poisson-sampled Gaussian with the
    history's variances: never above the Skellam mechanism's (an independent
    cross-check of the recomputation).  Rows with a skip threshold ``k >= 2``
    are mixed as the Skellam charge is (``skip_mixture_rdp``), from
    dp-accounting's sampled and unsampled Gaussian RDP.  It is evaluated at dp-accounting's
    default orders and at every order of the Skellam accountant
    (:data:`~securefl.privacy.distributed.ORDERS`): at each of those the
    Gaussian's RDP is at most the Skellam bound, so the floor's minimum over
    a superset of orders is at most the Skellam epsilon (with dp-accounting's
    default orders alone, which lack 65..127 and 136..248, the floor could
    exceed a valid epsilon attained at one of those orders)."""
    import dp_accounting
    import numpy as np
    from dp_accounting.rdp.rdp_privacy_accountant import (
        DEFAULT_RDP_ORDERS,
        _compute_rdp_poisson_subsampled_gaussian,
        compute_epsilon,
    )

    from securefl.privacy.accounting import _quiet_absl
    from securefl.privacy.distributed import ORDERS, skip_mixture_rdp

    orders = sorted({float(o) for o in DEFAULT_RDP_ORDERS} | {float(o) for o in ORDERS})
    accountant = dp_accounting.rdp.RdpAccountant(orders=orders)
    with _quiet_absl():
        skip_rdp = np.zeros(len(orders))
        for mu, _, l2, q, rounds, *skip in history:
            n, k = (int(skip[0]), int(skip[1])) if skip else (0, 0)
            if rounds and l2 > 0 and k >= 1:
                # the same skip mixture as the Skellam charge, of the
                # Gaussian's sampled and unsampled RDP (dp-accounting's)
                sigma = math.sqrt(mu) / l2
                sampled = np.asarray(_compute_rdp_poisson_subsampled_gaussian(q, sigma, orders)
                                     if q < 1 else np.asarray(orders) / (2 * sigma ** 2))
                unsampled = np.asarray(orders) / (2 * sigma ** 2)
                skip_rdp += int(rounds) * skip_mixture_rdp(orders, sampled, unsampled, q, n, k)
            elif rounds and l2 > 0:
                event: Any = dp_accounting.GaussianDpEvent(math.sqrt(mu) / l2)
                if q < 1:
                    event = dp_accounting.PoissonSampledDpEvent(q, event)
                accountant.compose(event, int(rounds))
        if not skip_rdp.any():
            return float(accountant.get_epsilon(delta))
        total = skip_rdp + np.asarray(accountant._rdp)
        return float(compute_epsilon(orders, total, delta)[0])


def _user_delta_problems(rows: list[UserLevelEntry], record_deltas: set[float]) -> list[str]:
    """Why the user-level deltas of a ledger do not verify (empty when they
    do): every row must state the ledger's one user-level delta, the run's
    configured delta (the record-level rows' delta when there are any and
    they agree), at most :data:`USER_LEVEL_DELTA_MAX` and below ``1 /
    survivors`` (a delta of ``1 / n`` permits publishing one of ``n``
    clients' data outright; an epsilon at such a delta means nothing)."""
    if not rows:
        return []
    found = []
    expected = rows[0].delta
    if len(record_deltas) == 1:
        expected = next(iter(record_deltas))
    for row in rows:
        where = f"round {row.round}, user level"
        if row.delta != expected:
            found.append(f"{where}: delta {row.delta!r} is not the run's user-level delta"
                         f" {expected!r} (one delta for the whole ledger)")
        if not 0.0 < row.delta <= USER_LEVEL_DELTA_MAX:
            found.append(f"{where}: delta {row.delta!r} is above the user-level cap"
                         f" {USER_LEVEL_DELTA_MAX:g}")
        elif row.survivors > 0 and not row.delta < 1.0 / row.survivors:
            found.append(f"{where}: delta {row.delta!r} is not below 1 / {row.survivors}"
                         " (the survivors)")
    return found


def _colluder_problems(row: UserLevelEntry, first: UserLevelEntry,
                       previous: list[float], computed: float) -> list[str]:
    """Why a user-level row's colluder fields do not verify (empty when
    they do): one ``colluders`` for the ledger, a ``colluder_history`` that
    extends the previous row's by one variance within this round's released
    variance (all 0 without colluders), and an ``epsilon_colluders`` that
    recomputes."""
    where = f"round {row.round}, user level"
    found = []
    if row.colluders != first.colluders:
        found.append(f"{where}: colluders {row.colluders} differs from the ledger's"
                     f" {first.colluders}")
    ch = row.colluder_history
    if len(ch) != len(row.history) or ch[:-1] != previous or not ch \
            or not 0 <= ch[-1] <= row.released_variance \
            or (row.colluders == 0 and any(v != 0 for v in ch)):
        found.append(f"{where}: colluder_history does not follow from the earlier rows, or its"
                     " last entry is not within this round's released variance (0 without"
                     " colluders)")
    elif not (math.isfinite(computed)
              and math.isclose(row.epsilon_colluders, computed, rel_tol=RECOMPUTE_TOLERANCE)) \
            and not (computed == math.inf and row.epsilon_colluders == math.inf):
        found.append(f"{where}: recorded epsilon_colluders {row.epsilon_colluders!r} but the"
                     f" histories give {computed!r}")
    return found


def _user_charge_problems(chain: LedgerChain) -> list[str]:
    """Why the user-level charges of a ledger do not verify (empty when they
    do): an in-flight charge or a ``round-aborted`` row states the target
    variance and no survivors, a ``released`` row at least one survivor, and
    a round charged in flight settles with a user-level row (the charge is
    superseded by the release or kept, never dropped)."""
    found = []
    settled_rounds = {c.round for c in chain.commits if c.stage == "settled"}
    settled_users = {u.round for u in chain.committed_user_level if not u.in_flight}
    for row in chain.committed_user_level:
        where = f"round {row.round}, user level ({row.status})"
        if row.status in ("in-flight", "round-aborted", "skipped") and not (
                row.released_variance == row.target_variance and row.survivors == 0):
            found.append(f"{where}: a charge must state the target variance"
                         f" {row.target_variance:.6g} and no survivors, it states"
                         f" {row.released_variance:.6g} and {row.survivors}")
        if row.status == "released" and row.survivors < 1:
            found.append(f"{where}: a released sum with no survivors")
        if row.cohort_pool >= 1 and not 1 <= row.skip_below <= row.cohort_pool:
            found.append(f"{where}: skip threshold {row.skip_below} is not in 1..{row.cohort_pool}"
                         " (the clients sampled from)")
        if row.cohort_pool == 0 and (row.skip_below > 0 or row.status == "skipped"):
            found.append(f"{where}: a skip threshold or a skipped round without the pool size")
        if row.status == "skipped" and row.skip_below < 1:
            found.append(f"{where}: a round skipped with skip threshold {row.skip_below}"
                         " (a round is skipped only below a threshold >= 1)")
        if row.in_flight and row.round in settled_rounds and row.round not in settled_users:
            found.append(f"{where}: the round settled without a user-level row: its in-flight"
                         " user-level charge was dropped instead of kept or superseded")
    return found


_USER_PLAN_FIELDS = ("target_variance", "gamma", "clip", "dimension", "beta", "bits",
                     "sample_rate", "cohort_pool", "skip_below")
"""User-level row fields that are constants of the run's one plan
(``plan_user_level``): every row, charge or release, states the same."""


def _user_plan_problems(chain: LedgerChain) -> list[str]:
    """Why the committed user-level rows do not share one plan (empty when
    they do): a charge states ``released = target``, so a charge at a larger
    ``target_variance`` than the other rows' would count its round (whose sum
    may have been released at the plan's variance) at a fraction of its
    cost."""
    rows = chain.committed_user_level
    found = []
    for row in rows[1:]:
        differ = [name for name in _USER_PLAN_FIELDS
                  if getattr(row, name) != getattr(rows[0], name)]
        if differ:
            found.append(f"round {row.round}, user level ({row.status}): "
                         + ", ".join(f"{n} {getattr(row, n)!r}" for n in differ)
                         + f" differ(s) from round {rows[0].round}'s plan"
                         + " (one plan per run: "
                         + ", ".join(f"{n} {getattr(rows[0], n)!r}" for n in differ) + ")")
    return found


def _verify_user_level(chain: LedgerChain, violations: list[str],
                       notes: list[str] | None = None) -> list[dict[str, Any]]:
    """Recompute and cross-check every effective user-level row (settled
    rows, and in-flight charges no settled row supersedes: they count in the
    epsilon); return the report's ``user_level`` rows.  The budget bounds the sampled epsilon
    (``epsilon``); an ``epsilon_unsampled`` above it is a note in ``notes``,
    not a violation (docs/user-level-dp.md, "Two epsilons")."""
    from securefl.privacy.distributed import colluder_epsilon, user_level_epsilons

    out: list[dict[str, Any]] = []
    previous: list[list[float]] = []
    previous_colluders: list[float] = []
    record_deltas = {r.delta for r in chain.effective()}
    effective = chain.effective_user_level()
    violations.extend(_user_delta_problems(effective, record_deltas))
    violations.extend(_user_charge_problems(chain))
    violations.extend(_user_plan_problems(chain))
    for row in effective:
        try:
            computed = dict(user_level_epsilons(row.history, row.delta,
                                                accountant=row.accountant))
            computed["gaussian"] = _gaussian_floor(row.history, row.delta)
        except (SecureFLError, ArithmeticError, ValueError):
            computed = {"sampled": math.nan, "unsampled": math.nan, "gaussian": math.nan}
        violations.extend(_user_row_problems(row, previous, computed))
        try:
            against = colluder_epsilon(row.history, row.colluder_history, row.delta)
        except (SecureFLError, ArithmeticError, ValueError):
            against = math.nan
        violations.extend(_colluder_problems(row, effective[0],
                                             previous_colluders, against))
        previous_colluders = list(row.colluder_history)
        unsampled = computed["unsampled"]
        if notes is not None and row.epsilon_budget is not None \
                and not unsampled <= row.epsilon_budget:
            notes.append(f"round {row.round}, user level: epsilon_unsampled {unsampled:.4f}"
                         f" (against the server, which sees who took part) is above the"
                         f" budget {row.epsilon_budget:g}, which bounds the sampled epsilon")
        if notes is not None and row.in_flight:
            notes.append(f"round {row.round}, user level: in flight, never settled (the process"
                         " stopped; its sum may have been released): charged at the target"
                         f" variance {row.target_variance:.6g}")
        previous = row.history
        out.append({"round": row.round, "status": row.status, "mechanism": row.mechanism,
                    "adjacency": row.adjacency, "accountant": row.accountant,
                    "sample_rate": row.sample_rate, "cohort_pool": row.cohort_pool,
                    "skip_below": row.skip_below,
                    "released_variance": row.released_variance,
                    "target_variance": row.target_variance, "gamma": row.gamma,
                    "clip": row.clip, "bits": row.bits, "survivors": row.survivors,
                    "delta": row.delta, "epsilon": _json_number(computed["sampled"]),
                    "epsilon_unsampled": _json_number(computed["unsampled"]),
                    "colluders": row.colluders,
                    "epsilon_colluders": _json_number(against),
                    "epsilon_gaussian_floor": _json_number(computed["gaussian"]),
                    "epsilon_budget": row.epsilon_budget})
    return out


_USER_CONFIG_FIELDS = (("sample_rate", "client_sample_rate"), ("delta", "delta"),
                       ("epsilon_budget", "user_epsilon"), ("clip", "user_clip"),
                       ("bits", "bits"))
"""User-level row field -> the run configuration's key that prescribes it."""


def _user_config_problems(chain: LedgerChain, config: Any, source: str) -> list[str]:
    """Why the user-level rows disagree with a run configuration (``source``
    names where it was read: the run store, ``metrics.json``); empty when
    they agree or ``config`` is not a configuration with user-level DP.  A
    row's ``sample_rate``, ``delta`` and budget are what its epsilon is
    recomputed from and checked against: taken from the row alone, a
    rewrite of every row (recomputed, re-chained) would verify."""
    if not isinstance(config, dict) or config.get("privacy") not in ("user-level", "both"):
        return []
    found = []
    seen: set[tuple[str, int]] = set()
    for row in chain.committed_user_level:
        for name, key in _USER_CONFIG_FIELDS:
            if key not in config:
                continue
            want, have = config[key], getattr(row, name)
            try:
                same = float(want) == float(have)
            except (TypeError, ValueError):
                same = False
            if not same and (name, row.round) not in seen:
                seen.add((name, row.round))
                found.append(f"round {row.round}, user level: the run configuration"
                             f" ({source}) gives {key} = {want!r}, the row records"
                             f" {name} = {have!r}")
        found.extend(_user_skip_config_problems(row, config, source))
    return found


def _user_skip_config_problems(row: UserLevelEntry, config: dict[str, Any],
                               source: str) -> list[str]:
    """Why a user-level row's pool ``n`` and skip threshold ``k`` disagree
    with the run configuration (rows written before skips were charged,
    ``cohort_pool`` 0, are not checked): ``n`` is the configured number of
    clients; with client sampling, ``k`` is a session size the simulator can
    pick (``MIN_COHORT <= k <= cohort_bound(n, q)``,
    ``user_level_min_cohort``), without it ``k = n``.  A forged smaller
    ``k`` (or larger ``n``) lowers the recomputed skip-aware charge."""
    from securefl.federation.cohort import MIN_COHORT, cohort_bound

    if row.cohort_pool == 0:
        return []
    where = f"round {row.round}, user level"
    n, q = config.get("num_clients"), config.get("client_sample_rate", 1.0)
    if not isinstance(n, int) or isinstance(n, bool) or not isinstance(q, int | float):
        return []
    if row.cohort_pool != n:
        return [f"{where}: the run configuration ({source}) gives num_clients = {n}, the row"
                f" records cohort_pool = {row.cohort_pool}"]
    try:
        low, high = (n, n) if q == 1.0 else (MIN_COHORT, cohort_bound(n, float(q)))
    except (SecureFLError, ValueError, ArithmeticError):
        return []
    if not low <= row.skip_below <= max(high, low):
        return [f"{where}: skip_below = {row.skip_below} is not a cohort size the run's"
                f" sessions can have ({low}..{max(high, low)}, {source}: num_clients {n},"
                f" client_sample_rate {q})"]
    return []


def _user_release_problems(chain: LedgerChain, metrics: dict[str, Any]) -> list[str]:
    """Why the ledger's user-level rows disagree with the rounds
    ``metrics.json`` reports (empty when they agree or the run has no
    user-level DP): a round the metrics report as completed released a
    user-level sum, so the ledger must settle it with a ``released`` row.
    Without this, a ledger rewritten without a round's charge and release
    (the later histories recomputed) verifies as if the round was skipped."""
    config = metrics.get("config")
    if not isinstance(config, dict) or config.get("privacy") not in ("user-level", "both"):
        return []
    released = {u.round: u for u in chain.committed_user_level if u.status == "released"}
    skipped = {u.round for u in chain.committed_user_level if u.status == "skipped"}
    found = []
    for entry in metrics.get("rounds") or []:
        number = entry.get("round") if isinstance(entry, dict) else None
        if isinstance(entry, dict) and entry.get("aborted") is True \
                and str(entry.get("abort_reason", "")).startswith("skipped:") \
                and isinstance(number, int) and number <= chain.last_settled_round \
                and number not in skipped:
            found.append(f"round {number}, user level: {METRICS_NAME} reports the round skipped"
                         " (a small cohort), the ledger settles it without a skipped"
                         " user-level row (a skipped round is charged)")
        if isinstance(entry, dict) and isinstance(number, int) and number in skipped \
                and (entry.get("aborted") is not True or entry.get("survivors")
                     or entry.get("num_survivors")):
            # nobody trains in a skipped round: a round with survivors (whose
            # updates were summed) settled as skipped is a released round
            # whose charge against the server was dropped
            said = "aborted" if entry.get("aborted") else "completed"
            found.append(f"round {number}, user level: the ledger settles the round skipped,"
                         f" {METRICS_NAME} reports it {said}"
                         f" with survivor(s) {entry.get('survivors')!r} (a skipped round has"
                         " none; its released charge would be missing)")
        if not isinstance(entry, dict) or entry.get("aborted") is not False:
            continue
        number = entry.get("round")
        row = released.get(number) if isinstance(number, int) else None
        if row is not None and row.survivors != entry.get("num_survivors"):
            found.append(f"round {number}, user level: the released row states"
                         f" {row.survivors} survivors, {METRICS_NAME}"
                         f" {entry.get('num_survivors')!r}")
        if isinstance(number, int) and number <= chain.last_settled_round \
                and number not in released:
            found.append(f"round {number}, user level: {METRICS_NAME} reports the round"
                         " completed (a user-level sum released), the ledger settles it"
                         " without a released user-level row")
    return found


def _user_variance_problems(chain: LedgerChain, config: Any) -> list[str]:
    """Why a released user-level row claims more noise than its session can
    have carried (empty when none does or ``config``, the exported run
    configuration, has no user-level DP or no security mode).  Active
    sessions use removable excess noise: at most ``V (1 + 10^-3)``.
    Semi-honest sessions calibrate to the threshold ``t``: each survivor
    adds ``V / t``, so at most ``survivors V / t``, with ``t`` the run's
    ``threshold_used`` without client sampling and, with it, the mode's
    threshold of the cohort, at least that of the survivors (thresholds
    grow with the cohort).  Only a lower bound was checked before: an
    inflated variance lowered the recomputed epsilon."""
    from securefl.protocol.config import SecurityMode, default_threshold
    from securefl.protocol.noise import NoisePlan

    if not isinstance(config, dict) or config.get("privacy") not in ("user-level", "both"):
        return []
    try:
        mode = SecurityMode(config.get("security_mode"))
    except ValueError:
        return []
    sampled = config.get("client_sample_rate", 1.0) != 1.0
    found = []
    for row in chain.committed_user_level:
        if row.status != "released" or row.survivors < 1:
            continue
        if mode is SecurityMode.ACTIVE:
            most = row.target_variance * (1 + NoisePlan.tolerance)
        else:
            t = (default_threshold(row.survivors, mode) if sampled
                 else config.get("threshold_used"))
            if not isinstance(t, int) or isinstance(t, bool) or t < 1:
                continue
            most = row.target_variance * row.survivors / t
        if not row.released_variance <= most * (1 + RECOMPUTE_TOLERANCE):
            found.append(f"round {row.round}, user level: released variance"
                         f" {row.released_variance:.6g} is more than {row.survivors} survivors"
                         f" of a {mode.value} session can add ({most:.6g})")
    return found


def _load_checkpoint_anchor(path: Path) -> dict[str, Any]:
    """The round and ledger anchor of a checkpoint, loaded with torch's
    ``weights_only`` unpickler (a checkpoint is untrusted input)."""
    import numpy as np
    import torch

    core = getattr(np, "_core", None) or np.core
    allowed = [np.ndarray, np.dtype, core.multiarray._reconstruct]
    allowed += [type(np.dtype(t)) for t in ("float32", "float64", "int64")]
    with torch.serialization.safe_globals(allowed):
        data = torch.load(path, map_location="cpu", weights_only=True)
    extra = data.get("extra") or {}
    return {"round": int(data["round"]), "ledger": extra.get("ledger"),
            "run_store": extra.get("run_store")}


def _store_ledger(run_dir: Path, ledger: Path, violations: list[str],
                  notes: list[str]) -> tuple[LedgerChain, int, bool] | None:
    """The ledger of the run store in ``run_dir``, verified, the last round
    ``ledger.jsonl`` settles, and whether the store is at round 0 with
    nothing in flight (killed before round 1: missing exports and a ledger
    without rows are notes); None without a run store.

    ``ledger.jsonl`` is appended from the store after each store commit, so
    a crash can leave it without (part of) the store's LAST block only: it
    must be a byte prefix of the store's ledger holding every block before
    the last (anything shorter was truncated, anything else edited).  The
    store's state (its ledger head, settled and in-flight rounds, every
    client's accountant history) and its run configuration must agree with
    its ledger.  A ``run.sqlite`` that exists but cannot be read, or holds no
    initialised store next to a ledger (e.g. copied without its ``-wal``
    file), is a violation: the audit then falls back to ``ledger.jsonl``,
    which alone cannot show a cut-off trailing block."""
    from securefl.federation.round import stored_run_problems
    from securefl.federation.runstore import STORE_FILENAME, RunStore, RunStoreError, StoreRule

    path = run_dir / STORE_FILENAME
    try:
        initialised = RunStore.is_initialised(path)
    except RunStoreError as exc:
        violations.append(f"{STORE_FILENAME} exists but cannot be read ({exc}): the ledger"
                          " cannot be checked against the run store")
        return None
    if not initialised and not path.exists():
        claims = _exports_claiming_a_store(run_dir)
        if claims:
            violations.append(f"{' and '.join(claims)} record(s) that the run has a run store"
                              f" ({STORE_FILENAME}), which is missing (deleted?): the ledger"
                              " cannot be checked against it, and a cut-off trailing block"
                              " would not show")
        return None
    if not initialised:
        if path.exists() and ledger.exists():
            violations.append(f"{STORE_FILENAME} exists but holds no initialised run store"
                              f" while {LEDGER_FILENAME} does (copied without its -wal file,"
                              " or replaced): the ledger cannot be checked against the run"
                              " store, and a cut-off trailing block would not show")
        return None
    try:
        store = RunStore.open_readonly(path)
        try:
            data = store.ledger_bytes()
            state = store.committed()
            problems = stored_run_problems(store)
            run_config = store.config
        finally:
            store.close()
    except RunStoreError as exc:
        violations.append(f"{STORE_FILENAME} cannot be read: {exc}")
        return None
    violations.extend(_user_config_problems(parse_ledger(data, ledger), run_config,
                                            STORE_FILENAME))
    for problem in problems:
        if isinstance(problem, str):
            violations.append(f"{STORE_FILENAME}: {problem}")
        elif problem.rule is not StoreRule.CHAIN_BROKEN:  # reported as ledger chain problems
            violations.append(f"{STORE_FILENAME} state disagrees with its ledger: {problem}")
    committed = state.round
    exported = ledger.read_bytes() if ledger.exists() else b""
    last_block = _last_block_start(data)
    if not data.startswith(exported):
        violations.append(f"{LEDGER_FILENAME} is not a prefix of the ledger in {STORE_FILENAME}"
                          " (edited, or of another run)")
    elif len(exported) < last_block:
        violations.append(f"{LEDGER_FILENAME} lacks records {STORE_FILENAME} committed before"
                          " its last block (truncated: a crash loses at most the last block's"
                          " export)")
    elif len(exported) < len(data):
        behind = data.count(b"\n") - exported.count(b"\n")
        notes.append(f"{LEDGER_FILENAME} lags {STORE_FILENAME} by {behind} record(s) (killed"
                     " while exporting); the store's ledger is audited, and resuming the run"
                     " re-exports it")
    chain = parse_ledger(data, ledger)
    if chain.last_settled_round != committed:
        violations.append(f"{STORE_FILENAME} commits round {committed}, its ledger settles round"
                          f" {chain.last_settled_round}")
    fresh = committed == 0 and state.in_flight is None and not problems
    return chain, parse_ledger(exported).last_settled_round, fresh


def _exports_claiming_a_store(run_dir: Path) -> list[str]:
    """The exports in ``run_dir`` (``metrics.json``, ``checkpoint.pt``) that
    record a run store (every run recorded by the round recorder has one)."""
    claims = []
    try:
        metrics = json.loads((run_dir / METRICS_NAME).read_text(encoding="utf-8"))
        if isinstance(metrics, dict) and metrics.get("run_store"):
            claims.append(METRICS_NAME)
    except (OSError, ValueError):
        pass  # missing or unreadable: the cross-check reports it
    if (run_dir / CHECKPOINT_NAME).exists():
        try:
            if _load_checkpoint_anchor(run_dir / CHECKPOINT_NAME).get("run_store"):
                claims.append(CHECKPOINT_NAME)
        except Exception:  # untrusted input: the cross-check reports it
            pass
    return claims


def _last_block_start(data: bytes) -> int:
    """The offset of the last block of a ledger's bytes: just after the
    record before it (the previous commit, or the header)."""
    lines = data.split(b"\n")[:-1]
    end = offset = 0
    for line in lines[:-1]:
        offset += len(line) + 1
        if b'"type":"commit"' in line or b'"type":"header"' in line:
            end = offset
    return end


def _cross_check(chain: LedgerChain, run_dir: Path, violations: list[str],
                 notes: list[str], *, exported: int | None = None,
                 fresh: bool = False) -> dict[str, Any]:
    """Ledger versus checkpoint and metrics: the last settled round and the
    chain head at it must agree.

    With a run store (``exported``: the last round ``ledger.jsonl`` settles;
    ``chain`` is the store's ledger), the exports are written after each
    store commit in the order ledger, checkpoint, metrics, so a crash can
    leave them one round behind the store, in that order: the checkpoint's
    round must be the store's or the one before and not ahead of
    ``ledger.jsonl``, the metrics' not ahead of the checkpoint's; a lagging
    export is a note, and its anchor at its own round must still match.
    ``fresh`` (the store is at round 0, nothing in flight: killed before
    round 1): a missing checkpoint or metrics file is a note."""
    ledger_round = chain.last_settled_round
    heads = {c.round: c.digest for c in chain.commits if c.stage == "settled"}
    result: dict[str, Any] = {"ledger_round": ledger_round, "checkpoint_round": None,
                              "metrics_round": None}

    def anchored(source: str, anchor: Any, round_number: int) -> None:
        if not isinstance(anchor, dict):
            violations.append(f"{source} records no ledger anchor")
            return
        if anchor.get("round") != round_number:
            violations.append(f"{source} anchors ledger round {anchor.get('round')}, its own"
                              f" round is {round_number}")
        expected = heads.get(round_number, "") if round_number else ""
        if anchor.get("head") != expected:
            violations.append(f"{source} records ledger head {anchor.get('head')!r} at round"
                              f" {round_number}; the ledger's is {expected!r} (the ledger was"
                              " rewritten)")

    def compare(source: str, label: str, round_number: int, anchor: Any,
                ceiling: tuple[str, int] | None) -> None:
        if exported is None:
            if round_number != ledger_round:
                side = "ahead of" if ledger_round > round_number else "behind"
                violations.append(f"the ledger's last settled round {ledger_round} is {side}"
                                  f" {label}")
                return
        else:
            if not ledger_round - 1 <= round_number <= ledger_round:
                violations.append(f"{source} is at round {round_number}, the run store at round"
                                  f" {ledger_round}: a crash leaves an export at most one round"
                                  " behind the store")
                return
            if ceiling is not None and round_number > ceiling[1]:
                violations.append(f"{source} (round {round_number}) is ahead of {ceiling[0]}"
                                  f" (round {ceiling[1]}), which is exported before it")
                return
            if round_number < ledger_round:
                notes.append(f"{source} (round {round_number}) lags the run store (round"
                             f" {ledger_round}): killed while exporting; resuming the run"
                             " re-exports it")
        anchored("checkpoint" if source == CHECKPOINT_NAME else source, anchor, round_number)

    checkpoint = run_dir / CHECKPOINT_NAME
    if not checkpoint.exists() and fresh:
        notes.append(f"no {CHECKPOINT_NAME} in {run_dir}: killed before round 1 while"
                     " exporting round 0 (nothing was spent); resuming the run exports it")
    elif not checkpoint.exists():
        violations.append(f"no {CHECKPOINT_NAME} in {run_dir}: the ledger cannot be"
                          " cross-checked")
    else:
        try:
            ck = _load_checkpoint_anchor(checkpoint)
        except Exception as exc:  # any unpickling failure: untrusted, unreadable
            violations.append(f"{checkpoint} cannot be read safely: {type(exc).__name__}")
        else:
            result["checkpoint_round"] = ck["round"]
            compare(CHECKPOINT_NAME, f"the checkpoint's round {ck['round']}", ck["round"],
                    ck["ledger"], None if exported is None else (LEDGER_FILENAME, exported))
    metrics_path = run_dir / METRICS_NAME
    if not metrics_path.exists() and fresh:
        notes.append(f"no {METRICS_NAME} in {run_dir}: killed before round 1 while"
                     " exporting round 0 (nothing was spent); resuming the run exports it")
    elif not metrics_path.exists():
        violations.append(f"no {METRICS_NAME} in {run_dir}: the ledger cannot be cross-checked")
    else:
        try:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
            rounds = metrics.get("rounds") or []
            metrics_round = int(rounds[-1]["round"]) if rounds else 0
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            violations.append(f"{metrics_path} cannot be read: {exc}")
        else:
            result["metrics_round"] = metrics_round
            if isinstance(metrics, dict):
                violations.extend(_record_config_problems(chain, metrics.get("config"),
                                                          METRICS_NAME))
                violations.extend(_user_config_problems(chain, metrics.get("config"),
                                                        METRICS_NAME))
                violations.extend(_user_release_problems(chain, metrics))
                violations.extend(_user_variance_problems(chain, metrics.get("config")))
            ceiling = None
            if exported is not None:
                ceiling = ((CHECKPOINT_NAME, result["checkpoint_round"])
                           if result["checkpoint_round"] is not None
                           else (LEDGER_FILENAME, exported))
            compare(METRICS_NAME, f"the last round in {METRICS_NAME} ({metrics_round})",
                    metrics_round, metrics.get("ledger"), ceiling)
            if metrics.get("final") is None:
                notes.append(f"{METRICS_NAME} has no final block: the run did not finish"
                             " (killed, or still running); unsettled in-flight rows are"
                             " charged in full")
    return result


def audit_run(path: Path) -> dict[str, Any]:
    """Audit a run directory (or a ledger file alone, without cross-checks).

    Returns:
        a strict-JSON-ready dict: ``chain`` (its problems), ``cross_check``,
        ``rounds``, ``clients`` (every accountant's epsilon, recomputed),
        ``violations`` (each naming the round, client and rule), ``notes``,
        ``no_budget``, ``verified`` (no violation), ``ok`` (exit code 0),
        ``exit_code`` and ``verdict``.

    Raises:
        LedgerError: when there is no ledger.
        OSError: when it cannot be read.
    """
    ledger = path / LEDGER_FILENAME if path.is_dir() else path
    found: list[str] = []
    notes: list[str] = []
    stored = _store_ledger(path, ledger, found, notes) if path.is_dir() else None
    if stored is None and not ledger.exists():
        raise LedgerError(f"no ledger at {ledger}")
    chain = stored[0] if stored is not None else load_ledger(ledger)
    found[:0] = [f"ledger chain: {p}" for p in chain.problems]
    if chain.torn_tail:
        notes.append("the last line is a torn write (the process was killed mid-write);"
                     " it is ignored, and the in-flight rows before it are charged")
    clients_state, computed = _verify_rows(chain, found)
    found.extend(_record_delta_problems(chain))
    found.extend(_record_rate_problems(chain))
    user_level = _verify_user_level(chain, found, notes)
    if path.is_dir():
        cross = _cross_check(chain, path, found, notes,
                             exported=stored[1] if stored is not None else None,
                             fresh=stored is not None and stored[2])
    else:
        cross = {"skipped": "a ledger file was given, not a run directory"}
        notes.append("not cross-checked against a checkpoint and metrics: give the run"
                     " directory to have it")
    nothing = not chain.committed and not chain.committed_user_level
    if nothing and stored is not None and stored[2]:
        notes.append("the ledger commits no row: the run store is at round 0 with nothing in"
                     " flight (killed before round 1; nothing was spent)")
    elif nothing:
        found.append("the ledger commits no row")
    violations = list(dict.fromkeys(found))  # each distinct violation once, in order

    def eps_of(row: LedgerEntry) -> dict[str, float]:
        try:
            key = (repr(_history(row.history)), repr(row.delta), row.adjacency)
        except (TypeError, ValueError, IndexError):
            return {}
        return computed.get(key) or {}

    effective = chain.effective()
    rounds: dict[int, list[LedgerEntry]] = {}
    for row in effective:
        rounds.setdefault(row.round, []).append(row)
    round_rows = []
    for number in sorted(rounds):
        rows = rounds[number]
        maxima = [max(eps_of(r).values(), default=math.nan) for r in rows]
        finite = [m for m in maxima if not math.isnan(m)]
        round_rows.append({
            "round": number,
            "epsilon_max": _json_number(max(finite) if finite else math.nan),
            "epsilon_median": _json_number(statistics.median(finite) if finite else math.nan),
            "survivors": max(r.survivors for r in rows),
            "trained": sum(1 for r in rows if r.local_steps > 0),
            "entered_sum": sum(1 for r in rows if r.entered_sum),
            "aborted": any(r.status == "round-aborted" for r in rows),
            "refused": sum(1 for r in rows if r.status == "refused-budget"),
            "in_flight": sum(1 for r in rows if r.in_flight),
        })
    clients = []
    for cid in sorted(clients_state):
        state = clients_state[cid]
        mine = [r for r in effective if r.client_id == cid]
        last = mine[-1] if mine else state.rows[-1]
        eps = eps_of(last)
        budget = last.epsilon_budget
        over = [name for name, v in eps.items() if budget is not None and not v <= budget]
        clients.append({
            "client_id": cid,
            "rounds_trained": sum(1 for r in mine if r.local_steps > 0),
            "rounds_in_sum": sum(1 for r in mine if r.entered_sum),
            "steps": sum(int(h[2]) for h in last.history),
            "steps_in_flight_charged": state.charged_in_flight,
            "delta": last.delta,
            "adjacency": last.adjacency,
            "epsilon": {name: _json_number(v) for name, v in eps.items()},
            "epsilon_max": _json_number(max(eps.values(), default=math.nan)),
            "epsilon_budget": budget,
            "over_budget_by": over,
        })
    # one client (or user-level row) without a budget is enough: the OK
    # verdict says that every client stayed within its budget
    unbudgeted = [c for c in clients if c["epsilon_budget"] is None]
    user_unbudgeted = [u["round"] for u in user_level if u["epsilon_budget"] is None]
    no_budget = bool(unbudgeted) or bool(user_unbudgeted)
    ok = not violations
    if not ok:
        code, verdict = EXIT_FAIL, f"FAIL: {len(violations)} violation(s)"
    elif no_budget:
        code = EXIT_NO_BUDGET
        worst = max((c["epsilon_max"] for c in unbudgeted
                     if isinstance(c["epsilon_max"], float)), default=None)
        if unbudgeted and len(unbudgeted) == len(clients):
            who = "no client had a privacy budget"
        elif unbudgeted:
            ids = ", ".join(str(c["client_id"]) for c in unbudgeted[:MAX_PRINTED])
            more = "..." if len(unbudgeted) > MAX_PRINTED else ""
            who = (f"{len(unbudgeted)} of {len(clients)} clients had no privacy budget"
                   f" (client(s) {ids}{more})")
        else:
            who = "no user-level budget was set"
        if user_unbudgeted and unbudgeted:
            who += ", and no user-level budget was set"
        verdict = f"NO BUDGET: the ledger verifies, but {who}, so nothing bounds the spend"
        if unbudgeted:
            verdict += (f" (max epsilon {_fmt(worst)} of a client without a budget, by the"
                        " loosest accountant)")
    else:
        code = EXIT_OK
        four = all(c["adjacency"] == Adjacency.ADD_REMOVE_ONE.value for c in clients)
        verdict = ("OK: the chain and the cross-checks hold, every row recomputes, and every"
                   " client stayed within its budget by "
                   + ("all four accountants" if four else "every accountant of its adjacency"))
        if not clients:
            verdict = ("OK: the chain and the cross-checks hold, and every user-level row"
                       " recomputes and stays within its budget")
        elif user_level:
            verdict += "; every user-level row recomputes and stays within its budget"
    return {
        "ledger": str(ledger),
        "run_id": chain.run_id,
        "head": chain.head,
        "ledger_rows": len(chain.records),
        "chain": {"ok": chain.ok, "problems": chain.problems, "torn_tail": chain.torn_tail,
                  "commits": len(chain.commits)},
        "cross_check": cross,
        "rounds": round_rows,
        "clients": clients,
        "user_level": user_level,
        "violations": violations,
        "notes": notes,
        "no_budget": no_budget,
        "verified": ok,
        "ok": code == EXIT_OK,
        "exit_code": code,
        "verdict": verdict,
    }


def _print_report(report: dict[str, Any]) -> None:
    print(f"privacy audit of {report['ledger']} ({report['ledger_rows']} rows,"
          f" {report['chain']['commits']} commits, head {report['head'][:16] or '-'})")
    print()
    if report["rounds"]:
        print(f"{'round':>5}  {'max eps':>7}  {'median':>7}  {'survivors':>9}  {'trained':>7}"
              "  note")
        for r in report["rounds"]:
            notes = []
            if r["aborted"]:
                notes.append("aborted")
            if r["refused"]:
                notes.append(f"{r['refused']} refused (budget)")
            if r["in_flight"]:
                notes.append(f"{r['in_flight']} in flight, never settled: charged in full")
            print(f"{r['round']:>5}  {_fmt(r['epsilon_max']):>7}  {_fmt(r['epsilon_median']):>7}"
                  f"  {r['survivors']:>9}  {r['trained']:>7}  {', '.join(notes)}")
        print()
    if report["clients"]:  # record-level rows (a user-level-only ledger has none)
        columns = {Adjacency.ADD_REMOVE_ONE.value: (
            ("op-rdp", "opacus-rdp"), ("op-prv", "opacus-prv"), ("dpa-rdp", "dp-accounting-rdp"),
            ("dpa-pld", "dp-accounting-pld")),
            Adjacency.REPLACE_ONE.value: (("ro-rdp", "replace-one-rdp"),
                                          ("ro-pld", "replace-one-pld"))}
        adjacencies = sorted({c["adjacency"] for c in report["clients"]})
        shown_columns = columns.get(adjacencies[0], ()) if len(adjacencies) == 1 else ()
        header = "".join(f"  {label:>7}" for label, _ in shown_columns)
        print(f"{'client':>6}{header}  {'budget':>7}  {'in sum':>6}  {'steps':>5}  status")
        for c in report["clients"]:
            e = c["epsilon"]
            status = ("OVER BUDGET by " + ", ".join(c["over_budget_by"])) if c["over_budget_by"] \
                else "ok"
            if any(v is None or v == "inf" for v in e.values()):
                status = "INFINITE OR UNBOUNDED EPSILON"
            budget = "-" if c["epsilon_budget"] is None else f"{c['epsilon_budget']:g}"
            in_sum = f"{c['rounds_in_sum']}/{c['rounds_trained']}"
            if shown_columns:
                values = "".join(f"  {_fmt(e.get(name)):>7}" for _, name in shown_columns)
            else:  # mixed adjacencies (a ledger no federation writes): name every value
                values = "  " + ", ".join(f"{name} {_fmt(v)}" for name, v in e.items())
            print(f"{c['client_id']:>6}{values}  {budget:>7}  {in_sum:>6}  {c['steps']:>5}"
                  f"  {status}")
        print()
        delta = report["clients"][0]["delta"] if report["clients"] else math.nan
        legend = {Adjacency.ADD_REMOVE_ONE.value: "add-or-remove-one",
                  Adjacency.REPLACE_ONE.value: "replace-one: ro-rdp is the RDP bound, ro-pld"
                                               " dp-accounting's PLD"}
        print(f"epsilons recomputed from the recorded histories at delta {delta:g}"
              f" ({'; '.join(legend.get(a, a) for a in adjacencies)}); 'in sum' = rounds whose"
              " sum included the client / rounds it trained in (every trained round spends"
              " privacy)")
    if report.get("user_level"):
        print()
        kinds = ", ".join(sorted({u["mechanism"] for u in report["user_level"]})
                          + sorted({u["adjacency"] for u in report["user_level"]}))
        accountants = ", ".join(sorted({u["accountant"] for u in report["user_level"]}))
        print(f"{'round':>5}  {'user eps':>8}  {'vs server':>9}  {'gauss lb':>8}  {'q':>6}"
              f"  {'variance':>10}  {'target':>10}  survivors  (user level, {kinds};"
              f" accountant {accountants})")
        for u in report["user_level"]:
            print(f"{u['round']:>5}  {_fmt(u['epsilon']):>8}  {_fmt(u['epsilon_unsampled']):>9}"
                  f"  {_fmt(u['epsilon_gaussian_floor']):>8}  {u['sample_rate']:>6.3g}"
                  f"  {u['released_variance']:>10.4g}  {u['target_variance']:>10.4g}"
                  f"  {u['survivors']:>9}"
                  + (f"  {u['status']}" if u.get("status", "released") != "released" else ""))
        print("user eps is amplified by Poisson client sampling (holds against whoever sees"
              " only the released sums); 'vs server' is without amplification (the server"
              " sees who took part)")
    cross = report["cross_check"]
    if "skipped" not in cross:
        print(f"ledger settled through round {cross['ledger_round']}; checkpoint round"
              f" {cross['checkpoint_round']}; metrics round {cross['metrics_round']}")
    for note in report["notes"]:
        print(f"note: {note}")
    shown = report["violations"][:MAX_PRINTED]
    for violation in shown:
        print(f"violation: {violation}")
    if len(report["violations"]) > len(shown):
        print(f"... and {len(report['violations']) - len(shown)} more violations (--json lists"
              " all)")
    print(report["verdict"])


def run(args: argparse.Namespace) -> int:
    """Audit a run; the exit status is documented in the module docstring."""
    if args.empirical:
        return run_empirical(args)
    try:
        report = audit_run(args.run_dir)
    except OSError as exc:
        raise LedgerError(f"cannot read the run at {args.run_dir}: {exc}") from None
    if args.plot is not None:
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        _plot(report, args.plot)
    if args.json:
        print(json.dumps(report, indent=2, allow_nan=False))
    else:
        _print_report(report)
        if "plot" in report:
            print(f"wrote {report['plot']}")
    return int(report["exit_code"])


def _plot(report: dict[str, Any], path: Path) -> None:
    from securefl.federation.plots import plot_epsilon

    ledger = Path(report["ledger"])
    stored = _store_ledger(ledger.parent, ledger, [], []) if ledger.name == LEDGER_FILENAME \
        else None
    chain = stored[0] if stored is not None else load_ledger(ledger)
    per_client: dict[int, list[tuple[int, float]]] = {}
    unsettled = "in flight, never settled (charged in full)"
    outside = "trained, not in the sum (spent all the same)"
    markers: dict[str, list[tuple[int, float]]] = {unsettled: [], outside: []}
    for row in chain.effective():
        try:
            eps = _epsilons_for(row.adjacency, _history(row.history), row.delta)
        except (TypeError, ValueError, IndexError, SecureFLError):
            continue
        value = max(eps.values(), default=math.nan) if eps else math.nan
        if math.isfinite(value):
            per_client.setdefault(row.client_id, []).append((row.round, value))
            if row.in_flight:
                markers[unsettled].append((row.round, value))
            elif row.local_steps > 0 and not row.entered_sum:
                markers[outside].append((row.round, value))
    budgets = [c["epsilon_budget"] for c in report["clients"] if c["epsilon_budget"] is not None]
    delta = report["clients"][0]["delta"] if report["clients"] else math.nan
    plot_epsilon(path, per_client, budget=min(budgets) if budgets else None, markers=markers,
                 title=f"epsilon per round, max over the accountants (delta {delta:g})")
    report["plot"] = str(path)
