"""The privacy ledger: a hash-chained, append-only JSON Lines file in which
every client's privacy spend is durable before its data can leave its
control.

A privacy officer reads it to answer: who spent how much privacy, when, with
which parameters, and did the noisy update actually reach the server's sum?
A client that trained but whose update did not enter the sum (it dropped
out, its update was refused by the encoder, or the round aborted) still spent
privacy, so it gets a row with ``entered_sum = false``.

Every round writes two blocks, each one ``os.write`` of whole lines followed
by ``fsync``:

1. before any client trains, one ``in-flight`` row per client about to train,
   charging it the steps it is about to take, then a ``commit`` record
   (``stage: in-flight``);
2. once the round's outcome is known (aggregated or aborted), one settled
   row per client, then a ``commit`` record (``stage: settled``).  A settled
   row supersedes the client's in-flight row of that round; an in-flight row
   that is never settled (the process was killed) stays charged in full.

Every record carries ``prev``, the hex SHA-256 of the previous record's
canonical bytes (domain-separated, see :func:`record_digest`); the first
record is a ``header``.  A commit counts the rows of its block, and its own
``prev`` is the chain head over them.  :func:`load_ledger` verifies all of
it and reports every break instead of raising.
"""

from __future__ import annotations

import enum
import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from securefl.crashpoints import crash_point, crash_requested
from securefl.durable import fsync_dir
from securefl.errors import LedgerError, SecureFLError
from securefl.privacy.options import Adjacency, NoiseSource, Weighting

__all__ = [
    "ADJACENCIES",
    "LEDGER_FILENAME",
    "LEDGER_FORMAT",
    "NOISE_SOURCES",
    "RECORD_LEVEL_DELTA_MAX",
    "USER_LEVEL_ADJACENCY",
    "USER_LEVEL_DELTA_MAX",
    "USER_LEVEL_MECHANISMS",
    "USER_LEVEL_RETIRED_ADJACENCIES",
    "USER_LEVEL_STATUSES",
    "WEIGHTINGS",
    "Commit",
    "LedgerChain",
    "LedgerEntry",
    "Participation",
    "PrivacyLedger",
    "UserLevelEntry",
    "encode_block",
    "entries_by_client",
    "header_line",
    "load_ledger",
    "parse_ledger",
    "read_ledger",
    "record_digest",
]

LEDGER_FILENAME = "ledger.jsonl"
LEDGER_FORMAT = "securefl-ledger/2"
"""The ``format`` of the header record of the ledgers this module writes."""
_DOMAIN = b"securefl/ledger/v2/record\x00"
NOISE_SOURCES = tuple(source.value for source in NoiseSource)
"""``noise_source`` values (:class:`~securefl.privacy.options.NoiseSource`):
DP noise and sampling from the OS CSPRNG, or from a seeded generator
(reproducible, hence no privacy against whoever knows the seed)."""
ADJACENCIES = tuple(adjacency.value for adjacency in Adjacency)
"""``adjacency`` values (:class:`~securefl.privacy.options.Adjacency`): the
neighbouring relation of a row's epsilons."""
WEIGHTINGS = tuple(weighting.value for weighting in Weighting)
"""``weighting`` values (:class:`~securefl.privacy.options.Weighting`): how
the client's update was weighted in the sum."""


USER_LEVEL_ADJACENCY = "zero-out-one-client"
"""The adjacency of every user-level row (zero-out adjacency): neighbouring
federations differ in one client's update (all of its data), replaced by
zero, with the same participation and the same noise share.  Adding or
removing a client would also add or remove its noise share, which the
Skellam shift bound does not cover (docs/user-level-dp.md)."""
USER_LEVEL_RETIRED_ADJACENCIES = ("add-remove-one-client",)
"""User-level adjacencies that earlier ledgers recorded and that the
accounting does not support: the audit flags a row that states one."""
USER_LEVEL_DELTA_MAX = 1e-3
"""The largest user-level delta the planner and the audit accept (a
delta near or above ``1 / number of clients`` permits releasing some
client's data outright); a row must also have ``delta < 1 / survivors``."""
RECORD_LEVEL_DELTA_MAX = USER_LEVEL_DELTA_MAX
"""The largest record-level delta ``securefl audit`` accepts (the same cap as
the user level's): a client's record count is private, so the audit cannot
check ``delta < 1 / records``, but an epsilon at a delta near ``1 /
records`` permits releasing some record outright (at delta 0.5 the default
run's epsilon of 10.3 reads 2.0).  Every row of a ledger must also state
the same delta, the run's configured one."""
USER_LEVEL_STATUSES = ("in-flight", "released", "round-aborted", "skipped")
"""``status`` values of user-level rows.  ``in-flight``: written in the
round's in-flight block, before any client's noisy data leaves its control,
charging the round at its target variance; ``released``: the settled row of
a round whose sum was released, at the variance it carries; ``round-aborted``:
the settled row of a round that aborted or was interrupted, which keeps the
in-flight charge (the target variance; the sum may have been released before
the process stopped); ``skipped``: the settled row of a round skipped because
fewer than ``skip_below`` clients were sampled (nothing trained or released),
charged at the target variance in the sampled epsilon (whether a round is
skipped depends on whether the client was sampled: docs/user-level-dp.md,
"Accounting").  Rows of older ledgers have no status: ``released``."""
USER_LEVEL_MECHANISMS = ("skellam",)
"""``mechanism`` values of user-level rows: the distributed Skellam mechanism
(:mod:`securefl.privacy.distributed`)."""
USER_LEVEL_ACCOUNTANT = "symmetric-binomial"
"""The ``accountant`` of the user-level rows written now: the Poisson
subsampling bound for a shift under symmetric noise
(:func:`securefl.privacy.distributed.poisson_subsampled_rdp`, docs/user-level-dp.md,
"Accounting")."""
USER_LEVEL_LEGACY_ACCOUNTANT = "zhu-wang-general"
"""The ``accountant`` of user-level rows written before the field existed
(Zhu and Wang's general subsampling bound, larger): a row without the field
is read as this one and audited under it."""
USER_LEVEL_ACCOUNTANTS = (USER_LEVEL_ACCOUNTANT, USER_LEVEL_LEGACY_ACCOUNTANT)
"""``accountant`` values of user-level rows: the subsampling bound its
sampled epsilon was computed with (both are upper bounds)."""


class Participation(str, enum.Enum):
    """What became of a client's participation in one round."""

    IN_FLIGHT = "in-flight"
    """It is about to train (written before it trains); charged in full until
    a settled row of the same round supersedes it."""
    INCLUDED = "included"
    """It trained and its update entered the sum."""
    DROPPED = "dropped"
    """It trained (or may have), then dropped out before its masked input
    reached the server."""
    ENCODING_ERROR = "encoding-error"
    """It trained, but its update was refused by the encoder (NaN, shape...)."""
    ROUND_ABORTED = "round-aborted"
    """It trained (or may have), but the round aborted: nothing entered any sum."""
    REFUSED_BUDGET = "refused-budget"
    """It refused to train: the round would have exceeded its budget."""
    NOT_SAMPLED = "not-sampled"
    """Poisson client sampling left it out of the round: it did not train
    and spent nothing."""


_NUMBER_FIELDS = ("epsilon_rdp", "epsilon_prv", "epsilon_dpa_rdp", "epsilon_dpa_pld")


def _encode_number(value: float | None) -> float | str | None:
    """Strict-JSON epsilon: ``"inf"`` for infinity, null for NaN or None."""
    if value is None or math.isnan(value):
        return None
    return value if math.isfinite(value) else "inf"


def _decode_number(value: Any) -> float | None:
    if value == "inf":
        return math.inf
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"not an epsilon: {value!r}")
    return float(value)


@dataclass(frozen=True)
class LedgerEntry:
    """One ledger row.

    Attributes:
        round: federation round (1-based).
        client_id: the client.
        status: a :class:`Participation` value.
        entered_sum: whether its update is part of the aggregate the server
            applied.
        noise_multiplier, sample_rate, local_steps: this round's DP-SGD
            parameters (``local_steps`` is 0 when it did not train; for an
            in-flight row, the steps it is about to take).
        delta: the delta at which the epsilons are stated.
        epsilon_rdp, epsilon_prv: epsilon spent so far (all rounds up to and
            including this one), per Opacus's RDP and PRV accountants
            (``epsilon_prv`` is None when PRV cannot bound it; ``epsilon_rdp``
            is NaN when read as null).
        accountant: the accountant whose epsilon the budget guard reports
            (the guard refuses when any accountant would exceed the budget).
        epsilon_budget: the client's budget, or None.
        survivors: how many clients' updates entered this round's sum (0 if
            the round aborted or is in flight).
        dropped_at: the protocol round at which it dropped, if it did.
        history: the client's full Opacus history ``[[sigma, q, steps], ...]``
            so far (for an in-flight row: including the steps it is about to
            take), so that anyone can recompute its epsilon.
        secure_aggregation: whether the sum was computed by secure aggregation.
        epsilon_dpa_rdp, epsilon_dpa_pld: epsilon so far per dp-accounting's
            RDP and PLD accountants (None when not recorded).  In a
            ``replace-one`` row ``epsilon_rdp`` is the replace-one RDP bound
            (:func:`~securefl.privacy.accounting.epsilon_replace_one_rdp`),
            ``epsilon_dpa_pld`` dp-accounting's replace-one PLD epsilon
            (:func:`~securefl.privacy.accounting.epsilon_replace_one_pld`),
            and ``epsilon_prv`` and ``epsilon_dpa_rdp`` are None (neither
            accountant supports replace-one).
        noise_source: one of :data:`NOISE_SOURCES`: where the client's DP
            noise, Poisson sampling and rounding came from: ``"os-csprng"``
            (``os.urandom``, secret to the client) or ``"insecure-seeded"``
            (generators seeded from a public seed: the server can regenerate
            the noise, so the epsilons do not hold against it).
        adjacency: one of :data:`ADJACENCIES`: the neighbouring relation
            every epsilon in the row is stated for: ``"add-remove-one"`` (the
            record count is private) or ``"replace-one"`` (the record count is
            public, as with weighting by examples).
        weighting: one of :data:`WEIGHTINGS`: how the client's update was
            weighted in the sum, ``"uniform"`` or ``"examples"``.
    """

    round: int
    client_id: int
    status: str
    entered_sum: bool
    noise_multiplier: float
    sample_rate: float
    local_steps: int
    delta: float
    epsilon_rdp: float
    epsilon_prv: float | None
    accountant: str
    epsilon_budget: float | None
    survivors: int
    dropped_at: str | None = None
    history: list[list[float]] = field(default_factory=list)
    secure_aggregation: bool = True
    epsilon_dpa_rdp: float | None = None
    epsilon_dpa_pld: float | None = None
    noise_source: str = NoiseSource.OS_CSPRNG.value
    adjacency: str = Adjacency.ADD_REMOVE_ONE.value
    weighting: str = Weighting.UNIFORM.value

    @property
    def epsilon(self) -> float:
        """Epsilon per the accountant the budget is checked with."""
        if self.accountant == "prv" and self.epsilon_prv is not None:
            return self.epsilon_prv
        return self.epsilon_rdp

    @property
    def in_flight(self) -> bool:
        """Whether this is an in-flight row (written before training)."""
        return self.status == Participation.IN_FLIGHT.value

    @property
    def over_budget(self) -> bool:
        """True when a recorded epsilon exceeds the budget (or is NaN)."""
        if self.epsilon_budget is None:
            return False
        recorded = [self.epsilon_rdp, self.epsilon_prv, self.epsilon_dpa_rdp,
                    self.epsilon_dpa_pld]
        return any(v is not None and not v <= self.epsilon_budget for v in recorded)

    def to_record(self) -> dict[str, Any]:
        """The row as strict-JSON values (``"inf"`` for an infinite epsilon,
        null for NaN), keys in field order."""
        data = asdict(self)
        for key in _NUMBER_FIELDS:
            data[key] = _encode_number(data[key])
        return data

    def to_json(self) -> str:
        """One line of strict JSON (no newline), keys in a stable order."""
        return json.dumps(self.to_record(), separators=(", ", ": "), allow_nan=False)

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> LedgerEntry:
        """Build a row from a parsed record (``type`` and ``prev`` ignored).

        Raises:
            SecureFLError: when it is not a valid ledger row.
        """
        try:
            data = {k: v for k, v in data.items() if k not in ("type", "prev")}
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(data) - known)
            if unknown:
                raise ValueError(f"unknown fields {unknown}")
            for key in _NUMBER_FIELDS:
                if key in data:
                    data[key] = _decode_number(data[key])
            if data.get("epsilon_rdp", 0.0) is None:
                data["epsilon_rdp"] = math.nan
            Participation(data["status"])
            entry = cls(**data)
            _check_types(entry)
            return entry
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            raise LedgerError(f"not a valid ledger row: {exc}") from None

    @classmethod
    def from_json(cls, line: str) -> LedgerEntry:
        """Parse one line.

        Every field must have its declared JSON type (an int is not a bool,
        a number is not a string) and every history row must be
        ``[sigma >= 0, 0 <= q <= 1, steps >= 0 integer]``, so that whatever
        reads a row (``securefl audit``) can rely on its types.

        Raises:
            SecureFLError: when the line is not a valid ledger row (including
                JSON nested too deeply to parse, or not a JSON object).
        """
        try:
            data = _parse_object(line)
        except ValueError as exc:
            raise LedgerError(f"not a valid ledger row: {exc}") from None
        return cls.from_record(data)


_USER_NUMBER_FIELDS = ("epsilon", "epsilon_unsampled", "epsilon_colluders")


@dataclass(frozen=True)
class UserLevelEntry:
    """One user-level row: the distributed-DP release of one round, written
    beside the round's record-level client rows (record type
    ``"user-level"``): charged at the target variance in the round's
    in-flight block (``status`` ``in-flight``), then superseded in its
    settled block (``released`` at the variance the sum carries, or
    ``round-aborted`` keeping the charge).

    A user-level epsilon is the same for every client (each joins a round
    independently with probability ``sample_rate``), so there is one row per
    round that released a sum, not one per client.

    Attributes:
        round: federation round (1-based).
        mechanism: one of :data:`USER_LEVEL_MECHANISMS`.
        adjacency: :data:`USER_LEVEL_ADJACENCY`.
        sample_rate: ``q``, the probability that a client takes part.
        released_variance: the per-coordinate variance of the Skellam noise
            the released sum actually carries (ring units; reported by the
            server session after removing the excess for the survivors).
        target_variance: ``V``, the variance it was calibrated to carry at
            least.
        gamma: the scale (ring units per unit of the update).
        clip: ``C``, the L2 bound of an update.
        dimension: ``d``, the padded (power-of-two) vector length.
        beta: conditional rounding's beta.
        bits: the ring size.
        l1_sensitivity, l2_sensitivity: ``Delta_1``, ``Delta_2`` of the sum
            in ring units (from ``gamma``, ``clip``, ``dimension``, ``beta``).
        survivors: how many clients' vectors entered the sum.
        delta: the delta of the epsilons.
        epsilon: the user-level epsilon so far (all released rounds up to
            this one), amplified by Poisson client sampling: it holds against
            whoever sees only the released sums or models.
        epsilon_unsampled: the same without amplification (``q = 1``): it
            holds against the server alone, which sees who took part, as
            long as every survivor adds its noise share (not against the
            server colluding with clients).
        epsilon_budget: the user-level budget (it bounds ``epsilon``), or
            None.
        history: ``[[mu, l1, l2, q, rounds], ...]`` so far, ``mu`` the
            released variance, so that anyone can recompute the epsilons.
        noise_source: where the clients' noise and rounding came from.
        colluders: ``c``, the number of survivors assumed to collude with
            the server in ``epsilon_colluders`` (0: none).
        colluder_history: for each row of ``history``, the variance that
            ``c`` colluding survivors' noise shares made up at most in that
            round's released sum (they can subtract it; all 0 when
            ``c = 0``).
        epsilon_colluders: the unsampled epsilon so far against the server
            and ``c`` colluding survivors: every round of ``history`` at its
            variance minus its ``colluder_history`` entry (equal to
            ``epsilon_unsampled`` when ``c = 0``).
        accountant: the subsampling bound of ``epsilon``, one of
            :data:`USER_LEVEL_ACCOUNTANTS` (rows without the field, written
            before it existed, are read as
            :data:`USER_LEVEL_LEGACY_ACCOUNTANT`).
        status: one of :data:`USER_LEVEL_STATUSES`; for ``in-flight``,
            ``round-aborted`` and ``skipped`` rows, ``released_variance`` is
            the charged target variance and ``survivors`` is 0.
        cohort_pool: ``n``, the number of clients each round's cohort is
            sampled from (0 in rows written before skips were charged).
        skip_below: ``k``, rounds with fewer than ``k`` sampled clients are
            skipped; every round, skipped or not, is charged with the
            skip-aware bound of ``n``, ``q``, ``k`` (0: never skipped, as in rows
            written before skips were charged).  The history's rows then
            read ``[mu, l1, l2, q, rounds, n, k, released]``.
    """

    round: int
    mechanism: str
    adjacency: str
    sample_rate: float
    released_variance: float
    target_variance: float
    gamma: float
    clip: float
    dimension: int
    beta: float
    bits: int
    l1_sensitivity: float
    l2_sensitivity: float
    survivors: int
    delta: float
    epsilon: float
    epsilon_unsampled: float
    epsilon_budget: float | None
    history: list[list[float]] = field(default_factory=list)
    noise_source: str = NoiseSource.OS_CSPRNG.value
    colluders: int = 0
    colluder_history: list[float] = field(default_factory=list)
    epsilon_colluders: float = math.nan
    accountant: str = USER_LEVEL_LEGACY_ACCOUNTANT
    status: str = "released"
    cohort_pool: int = 0
    skip_below: int = 0

    @property
    def in_flight(self) -> bool:
        """Whether this is an in-flight charge (written before the release)."""
        return self.status == "in-flight"

    def to_record(self) -> dict[str, Any]:
        """The row as strict-JSON values (``"inf"`` for an infinite epsilon,
        null for NaN), keys in field order."""
        data = asdict(self)
        for key in _USER_NUMBER_FIELDS:
            data[key] = _encode_number(data[key])
        return data

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> UserLevelEntry:
        """Build a row from a parsed record (``type`` and ``prev`` ignored).

        Raises:
            LedgerError: when it is not a valid user-level row (unknown or
                missing fields, wrong JSON types, a malformed history).
        """
        try:
            data = {k: v for k, v in data.items() if k not in ("type", "prev")}
            unknown = sorted(set(data) - {f.name for f in fields(cls)})
            if unknown:
                raise ValueError(f"unknown fields {unknown}")
            for key in _USER_NUMBER_FIELDS:
                data[key] = _decode_number(data[key])
                if data[key] is None:
                    data[key] = math.nan
            entry = cls(**data)
            for name in ("round", "dimension", "bits", "survivors", "colluders",
                         "cohort_pool", "skip_below"):
                if not _is_int(getattr(entry, name)):
                    raise ValueError(f"{name} must be an integer")
            if entry.cohort_pool < 0 or entry.skip_below < 0:
                raise ValueError("cohort_pool and skip_below must be >= 0")
            for name in ("sample_rate", "released_variance", "target_variance", "gamma", "clip",
                         "beta", "l1_sensitivity", "l2_sensitivity", "delta"):
                if not _is_number(getattr(entry, name)):
                    raise ValueError(f"{name} must be a number")
            if entry.epsilon_budget is not None and not _is_number(entry.epsilon_budget):
                raise ValueError("epsilon_budget must be a number or null")
            for name in ("mechanism", "adjacency", "noise_source", "accountant"):
                if not isinstance(getattr(entry, name), str):
                    raise ValueError(f"{name} must be a string")
            if entry.status not in USER_LEVEL_STATUSES:
                raise ValueError(f"status must be one of {', '.join(USER_LEVEL_STATUSES)}")
            if not isinstance(entry.history, list) or not all(
                    isinstance(r, list) and len(r) in (5, 8) and all(_is_number(v) for v in r[:4])
                    and all(math.isfinite(float(v)) and v >= 0 for v in r[:4])
                    and 0 < r[3] <= 1 and _is_int(r[4]) and r[4] >= 0
                    and (len(r) == 5 or (_is_int(r[5]) and r[5] >= 1 and _is_int(r[6])
                                         and r[6] >= 0 and r[7] in (0, 1) and _is_int(r[7])))
                    for r in entry.history):
                raise ValueError("history must be a list of [mu >= 0, l1 >= 0, l2 >= 0,"
                                 " 0 < q <= 1, rounds >= 0] or [mu, l1, l2, q, rounds, n >= 1,"
                                 " k >= 0, released 0 or 1] rows")
            if not isinstance(entry.colluder_history, list) or not all(
                    _is_number(v) and math.isfinite(float(v)) and v >= 0
                    for v in entry.colluder_history):
                raise ValueError("colluder_history must be a list of finite numbers >= 0")
            return entry
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            raise LedgerError(f"not a valid user-level row: {exc}") from None


def _parse_object(text: str) -> dict[str, Any]:
    """Parse one ledger line as a strict JSON object.

    The lists of a record are a row's history and its ``[sigma, q, steps]``
    rows of at least 7 characters (``[0,0,0]``): a line with denser brackets
    is refused before parsing, as json would allocate a Python list (about
    100 bytes) for each bracket (a 1 MB line of ``[`` would cost 100 MB), and
    deep nesting (RecursionError in json) is refused the same way.

    Raises:
        ValueError: not strict JSON, too many lists, nested too deeply, or
            not a JSON object.
    """
    if text.count("[") > 1 + len(text) // 7:
        raise ValueError("too many lists for a ledger record (history rows are"
                         " [sigma, q, steps])")
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError(f"not a JSON object but {type(data).__name__}")
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_types(entry: LedgerEntry) -> None:
    """Refuse a row whose fields have the wrong JSON types (ValueError)."""
    for name in ("round", "client_id", "local_steps", "survivors"):
        if not _is_int(getattr(entry, name)):
            raise ValueError(f"{name} must be an integer")
    for name in ("noise_multiplier", "sample_rate", "delta"):
        if not _is_number(getattr(entry, name)):
            raise ValueError(f"{name} must be a number")
    if entry.epsilon_budget is not None and not _is_number(entry.epsilon_budget):
        raise ValueError("epsilon_budget must be a number or null")
    for name in ("entered_sum", "secure_aggregation"):
        if not isinstance(getattr(entry, name), bool):
            raise ValueError(f"{name} must be a boolean")
    for name in ("status", "accountant", "noise_source", "adjacency", "weighting"):
        if not isinstance(getattr(entry, name), str):
            raise ValueError(f"{name} must be a string")
    if entry.dropped_at is not None and not isinstance(entry.dropped_at, str):
        raise ValueError("dropped_at must be a string or null")
    history = entry.history
    if not isinstance(history, list) or not all(
            isinstance(r, list) and len(r) == 3 and _is_number(r[0]) and _is_number(r[1])
            and math.isfinite(float(r[0])) and r[0] >= 0 and 0 <= r[1] <= 1
            and _is_int(r[2]) and r[2] >= 0 for r in history):
        raise ValueError("history must be a list of [sigma >= 0, 0 <= q <= 1, steps >= 0] rows")


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def canonical(record: dict[str, Any]) -> bytes:
    """The canonical bytes of a record: JSON with sorted keys, no spaces,
    ASCII only, no NaN or Infinity.  Ledger lines are exactly these bytes."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def record_digest(line: bytes) -> str:
    """Hex SHA-256 of ``b"securefl/ledger/v2/record\\0" || line`` (the
    record's canonical bytes, without the newline): what the next record's
    ``prev`` must be."""
    return hashlib.sha256(_DOMAIN + line).hexdigest()


@dataclass(frozen=True)
class Commit:
    """A commit record: ``rows`` rows of round ``round`` precede it, written
    as one block at ``stage`` (``in-flight`` or ``settled``); ``head`` is the
    chain head over them (the commit's ``prev``); ``digest`` its own digest."""

    round: int
    stage: str
    rows: int
    head: str
    digest: str
    line: int
    user_rows: int = 0


@dataclass
class LedgerChain:
    """A ledger as read and verified by :func:`load_ledger`.

    Attributes:
        path: the file.
        run_id: the header's run id ("" without a valid header).
        records: every row in file order (in-flight and settled), including
            rows after the last commit.
        commits: every commit record in file order.
        head: the digest of the last commit record ("" when nothing is
            committed); the checkpoint and metrics record the digest of the
            last *settled* commit.
        torn_tail: the last line has no newline: a block's write was cut
            short (a crash mid-write); that block (its complete rows too, as
            no commit covers them) is ignored.
        problems: every break of the chain or of the block structure found
            (empty when the ledger verifies).
        malformed: the first line that is not a parseable record, if any
            (reading stopped there; it is also among the problems).
        user_level: every user-level row (:class:`UserLevelEntry`) in file
            order, including rows after the last commit.
    """

    path: Path
    run_id: str = ""
    records: list[LedgerEntry] = field(default_factory=list)
    commits: list[Commit] = field(default_factory=list)
    head: str = ""
    torn_tail: bool = False
    problems: list[str] = field(default_factory=list)
    malformed: str | None = None
    user_level: list[UserLevelEntry] = field(default_factory=list)
    _committed_rows: int = 0
    _committed_user_rows: int = 0

    @property
    def committed_user_level(self) -> list[UserLevelEntry]:
        """The user-level rows covered by a commit (in-flight charges and
        settled rows), in file order."""
        return self.user_level[:self._committed_user_rows]

    def effective_user_level(self) -> list[UserLevelEntry]:
        """The user-level spend, round by round: each committed settled
        user-level row, and each committed in-flight charge that no settled
        user-level row of the same round supersedes (a round the process
        stopped in: charged at its target variance)."""
        rows = self.committed_user_level
        settled = {r.round for r in rows if not r.in_flight}
        return [r for r in rows if not r.in_flight or r.round not in settled]

    @property
    def ok(self) -> bool:
        """Whether the chain and its blocks verify."""
        return not self.problems

    @property
    def committed(self) -> list[LedgerEntry]:
        """The rows covered by a commit, in file order."""
        return self.records[:self._committed_rows]

    @property
    def last_settled_round(self) -> int:
        """The last round with a settled commit (0 if none)."""
        settled = [c.round for c in self.commits if c.stage == "settled"]
        return settled[-1] if settled else 0

    def effective(self) -> list[LedgerEntry]:
        """What every client spent, round by round: each committed settled
        row, and each committed in-flight row that no settled row of the same
        round and client supersedes (charged at its full steps)."""
        rows = self.committed
        settled = {(r.round, r.client_id) for r in rows if not r.in_flight}
        return [r for r in rows
                if not r.in_flight or (r.round, r.client_id) not in settled]


def load_ledger(path: str | os.PathLike[str]) -> LedgerChain:
    """Read a ledger and verify its hash chain and block structure.

    Checks: the first record is a header of :data:`LEDGER_FORMAT`; every
    record's ``prev`` is the digest of the record before it; every line is
    its record's canonical bytes; every block of rows ends with a commit
    whose ``rows`` and ``round`` match the block; in-flight blocks hold only
    in-flight rows and settled blocks none; no block holds two rows of one
    client; rounds are settled in order
    1, 2, 3... and a round is in flight at most once, before it settles; no
    row follows the last commit.  A last line without a newline is a torn
    write: it and the rows of its block before it are ignored
    (``torn_tail``); anything else is a problem.

    Raises:
        OSError: when the file cannot be read.
    """
    return parse_ledger(Path(path).read_bytes(), path)


def parse_ledger(data: bytes, path: str | os.PathLike[str] = "") -> LedgerChain:
    """Verify a ledger given as its bytes (what :func:`load_ledger` does for
    a file; ``path`` only names it in the result).  Never raises on bad
    content: every break is among the chain's problems."""
    chain = LedgerChain(path=Path(path))
    lines = data.split(b"\n")
    if lines.pop() != b"":  # the last element is b"" or the torn tail
        chain.torn_tail = True
    problems = chain.problems
    prev: str | None = None
    block: list[LedgerEntry] = []
    user_block: list[UserLevelEntry] = []
    in_flight_round = 0
    settled_round = 0
    if not lines:
        problems.append("the ledger holds no complete record (no header)")
        return chain
    for number, raw in enumerate(lines, start=1):
        where = f"line {number}"
        try:
            record = _parse_object(raw.decode("ascii"))
        except (ValueError, UnicodeDecodeError) as exc:
            chain.malformed = f"{where}: not a strict JSON object ({exc})"
            problems.append(chain.malformed)
            return chain
        try:
            is_canonical = canonical(record) == raw
        except ValueError:
            is_canonical = False
        if not is_canonical:
            problems.append(f"{where}: not in canonical form (edited?)")
        kind = record.get("type")
        if record.get("prev") != prev:
            problems.append(f"{where}: prev does not match the digest of the record before it"
                            " (a record was removed, reordered or edited)")
        digest = record_digest(raw)
        prev = digest
        if number == 1:
            if kind != "header" or record.get("format") != LEDGER_FORMAT:
                problems.append(f"{where}: not a {LEDGER_FORMAT} header (a ledger of an"
                                " older format, without a hash chain, cannot be verified)")
                return chain
            chain.run_id = str(record.get("run_id", ""))
            continue
        if kind == "row":
            try:
                entry = LedgerEntry.from_record(record)
            except SecureFLError as exc:
                chain.malformed = f"{where}: {exc}"
                problems.append(chain.malformed)
                return chain
            chain.records.append(entry)
            block.append(entry)
        elif kind == "user-level":
            try:
                user_entry = UserLevelEntry.from_record(record)
            except SecureFLError as exc:
                chain.malformed = f"{where}: {exc}"
                problems.append(chain.malformed)
                return chain
            chain.user_level.append(user_entry)
            user_block.append(user_entry)
        elif kind == "commit":
            try:
                if not (_is_int(record["round"]) and _is_int(record["rows"])
                        and isinstance(record["stage"], str)
                        and isinstance(record["prev"], str)):
                    raise TypeError("round and rows must be integers, stage and prev strings")
                user_rows = record.get("user_rows", 0)
                if not _is_int(user_rows) or ("user_rows" in record and user_rows < 1):
                    raise TypeError("user_rows must be a positive integer when present")
                commit = Commit(round=record["round"], stage=record["stage"],
                                rows=record["rows"], head=record["prev"],
                                digest=digest, line=number, user_rows=user_rows)
            except (KeyError, TypeError) as exc:
                chain.malformed = f"{where}: malformed commit ({exc})"
                problems.append(chain.malformed)
                return chain
            problems.extend(_check_block(commit, block, where, in_flight_round,
                                         settled_round))
            problems.extend(_check_user_block(commit, user_block, where))
            if commit.stage == "in-flight":
                in_flight_round = commit.round
            else:
                settled_round = commit.round
            chain.commits.append(commit)
            chain.head = digest
            chain._committed_rows = len(chain.records)
            chain._committed_user_rows = len(chain.user_level)
            block = []
            user_block = []
        else:
            problems.append(f"{where}: unknown record type {kind!r}")
    if (block or user_block) and not chain.torn_tail:
        problems.append(f"{len(block) + len(user_block)} row(s) after the last commit: the"
                        " ledger was truncated inside a block, or rows were appended without"
                        " a commit")
    return chain


def _check_block(commit: Commit, block: list[LedgerEntry], where: str,
                 in_flight_round: int, settled_round: int) -> list[str]:
    problems = []
    if commit.stage not in ("in-flight", "settled"):
        problems.append(f"{where}: unknown commit stage {commit.stage!r}")
    if commit.rows != len(block):
        problems.append(f"{where}: commit of round {commit.round} counts {commit.rows} rows,"
                        f" {len(block)} precede it (rows removed or added)")
    if any(r.round != commit.round for r in block):
        problems.append(f"{where}: a row of another round inside round {commit.round}'s block")
    ids = [r.client_id for r in block]
    if commit.stage == "in-flight":
        if any(not r.in_flight for r in block):
            problems.append(f"{where}: a settled row inside an in-flight block")
        if len(set(ids)) != len(ids):
            # one settled row supersedes every in-flight row of its client
            # and round: a second in-flight row (of 0 steps, say) would let a
            # settled row of 0 steps erase the first one's charge
            problems.append(f"{where}: a client has two in-flight rows in round"
                            f" {commit.round}")
        if commit.round != settled_round + 1 or in_flight_round == commit.round:
            problems.append(f"{where}: round {commit.round} in flight after round"
                            f" {settled_round} settled (out of order or repeated)")
    elif commit.stage == "settled":
        if any(r.in_flight for r in block):
            problems.append(f"{where}: an in-flight row inside a settled block")
        if commit.round != settled_round + 1:
            problems.append(f"{where}: round {commit.round} settled after round"
                            f" {settled_round} (a round is missing, repeated or reordered)")
        if len(set(ids)) != len(ids):
            problems.append(f"{where}: a client has two settled rows in round {commit.round}")
    return problems


def _check_user_block(commit: Commit, block: list[UserLevelEntry], where: str) -> list[str]:
    """The user-level rows of a block: counted by the commit's ``user_rows``,
    of the commit's round, at most one; an in-flight block holds only an
    in-flight charge, a settled block none."""
    problems = []
    if commit.user_rows != len(block):
        problems.append(f"{where}: commit of round {commit.round} counts {commit.user_rows}"
                        f" user-level rows, {len(block)} precede it (rows removed or added)")
    if commit.stage == "in-flight" and any(not r.in_flight for r in block):
        problems.append(f"{where}: a settled user-level row inside an in-flight block")
    if commit.stage == "settled" and any(r.in_flight for r in block):
        problems.append(f"{where}: an in-flight user-level row inside a settled block")
    if any(r.round != commit.round for r in block):
        problems.append(f"{where}: a user-level row of another round inside round"
                        f" {commit.round}'s block")
    if len(block) > 1:
        problems.append(f"{where}: round {commit.round} has {len(block)} user-level rows")
    return problems


def header_line(run_id: str) -> bytes:
    """The canonical bytes (no newline) of a ledger's header record."""
    return canonical({"type": "header", "format": LEDGER_FORMAT, "run_id": run_id,
                      "prev": None})


def encode_block(head: str, round_number: int, stage: str,
                 entries: Sequence[LedgerEntry],
                 user_level: Sequence[UserLevelEntry] = ()) -> list[bytes]:
    """The canonical lines (no newlines) of one block: a row per entry, then
    a ``user-level`` record per user-level entry (the round's in-flight
    charge in an in-flight block, its settled row in a settled one), then
    the commit record of ``stage`` (``in-flight`` or ``settled``; it counts
    the user-level records as ``user_rows`` when there are any), chained
    from ``head`` (the digest of the record before the block).  The digest
    of the last line is the new head.  This only encodes: the writer
    (:class:`PrivacyLedger`, or a run store) checks and stores."""
    lines = []
    prev = head
    for entry in entries:
        line = canonical({**entry.to_record(), "type": "row", "prev": prev})
        lines.append(line)
        prev = record_digest(line)
    for user_entry in user_level:
        line = canonical({**user_entry.to_record(), "type": "user-level", "prev": prev})
        lines.append(line)
        prev = record_digest(line)
    commit: dict[str, Any] = {"type": "commit", "stage": stage, "round": int(round_number),
                              "rows": len(entries), "prev": prev}
    if user_level:
        commit["user_rows"] = len(user_level)
    lines.append(canonical(commit))
    return lines


def _refuse_duplicates(round_number: int, entries: Sequence[LedgerEntry]) -> None:
    """Raise LedgerError when a client has two rows in one block."""
    ids = [e.client_id for e in entries]
    if len(set(ids)) != len(ids):
        raise LedgerError(f"round {round_number}: one row per client per block (client(s)"
                          f" {sorted({i for i in ids if ids.count(i) > 1})} repeated)")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class PrivacyLedger:
    """The writer of one hash-chained ledger file.

    The file is created (``O_EXCL``) with its header on the first write, and
    the directory is fsynced.  Every later write appends one block (rows and
    their commit) with a single ``O_APPEND`` write, then ``fsync``: a reader
    sees whole blocks, or a torn last line after a crash mid-write, which
    :func:`load_ledger` recognises.  Existing bytes are never changed.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._head: str | None = None
        self._settled = 0
        self._settled_head = ""
        self._rows = 0

    @property
    def head(self) -> str:
        """The digest of the last record written ("" before any)."""
        return self._head or ""

    @property
    def settled_round(self) -> int:
        """The last settled round (0 before any)."""
        return self._settled

    @property
    def settled_head(self) -> str:
        """The digest of the last settled commit ("" before any): the anchor
        the checkpoint and metrics record with :attr:`settled_round`."""
        return self._settled_head

    def create(self) -> None:
        """Create the file with its header record (fsynced, and the
        directory fsynced).

        Raises:
            LedgerError: when the file already exists.
            OSError: when it cannot be written.
        """
        if self.path.exists():
            raise LedgerError(f"{self.path} already exists; a ledger belongs to one federation")
        self._ensure_open()

    def _ensure_open(self) -> None:
        if self._head is not None:
            return
        if self.path.exists():
            chain = load_ledger(self.path)
            if chain.torn_tail or chain.problems or chain.records[len(chain.committed):]:
                raise LedgerError(f"{self.path} does not verify or ends in a torn write;"
                                  " refusing to append")
            self._head = chain.head or None
            self._settled = chain.last_settled_round
            settled = [c.digest for c in chain.commits if c.stage == "settled"]
            self._settled_head = settled[-1] if settled else ""
            if self._head is None:
                raise LedgerError(f"{self.path} holds no commit; refusing to append")
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = header_line(os.urandom(16).hex())
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, header + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(self.path.parent)
        self._head = record_digest(header)

    def _write_block(self, round_number: int, stage: str,
                     entries: Sequence[LedgerEntry],
                     user_level: Sequence[UserLevelEntry] = ()) -> None:
        self._ensure_open()
        assert self._head is not None
        lines = encode_block(self._head, round_number, stage, entries, user_level)
        commit = lines[-1]
        block = b"".join(line + b"\n" for line in lines)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        try:
            if stage == "settled" and crash_requested("ledger-torn", round_number):
                _write_all(fd, block[:len(block) // 2])
                os.fsync(fd)
                crash_point("ledger-torn", round_number)
            _write_all(fd, block)
            os.fsync(fd)
        except BaseException:
            # part of the block may be on disk: forget the head, so that the
            # next write re-reads the file and refuses a torn ledger
            self._head = None
            raise
        finally:
            os.close(fd)
        self._head = record_digest(commit)
        self._rows += len(entries)

    def begin_round(self, round_number: int, entries: Sequence[LedgerEntry],
                    user_level: Sequence[UserLevelEntry] = ()) -> None:
        """Durably charge the clients about to train in ``round_number``:
        write their in-flight rows, the round's in-flight user-level charge
        if it will release a distributed-DP sum, and an in-flight commit,
        fsynced, before any of them trains.

        Raises:
            LedgerError: a row that is not in flight or of another round,
                two rows of one client, more than one user-level charge, or a
                ledger that does not verify.
            OSError: when the file cannot be written.
        """
        if any(not e.in_flight or e.round != round_number for e in entries):
            raise LedgerError(f"round {round_number}: begin_round takes in-flight rows of"
                              " that round only")
        _refuse_duplicates(round_number, entries)
        if len(user_level) > 1 or any(u.round != round_number or not u.in_flight
                                      for u in user_level):
            raise LedgerError(f"round {round_number}: at most one in-flight user-level"
                              " charge, of that round")
        self._write_block(round_number, "in-flight", entries, user_level)

    def settle_round(self, round_number: int, entries: Sequence[LedgerEntry],
                     user_level: Sequence[UserLevelEntry] = ()) -> None:
        """Write the settled rows of ``round_number`` (one per client), its
        user-level row if it released a distributed-DP sum, and its settled
        commit, fsynced.

        Raises:
            LedgerError: an in-flight row, a row of another round, two rows
                of one client, more than one user-level row, or a ledger that
                does not verify.
            OSError: when the file cannot be written.
        """
        if any(e.in_flight or e.round != round_number for e in entries):
            raise LedgerError(f"round {round_number}: settle_round takes settled rows of"
                              " that round only")
        _refuse_duplicates(round_number, entries)
        if len(user_level) > 1 or any(u.round != round_number or u.in_flight
                                      for u in user_level):
            raise LedgerError(f"round {round_number}: at most one settled user-level row, of"
                              " that round")
        self._write_block(round_number, "settled", entries, user_level)
        self._settled = int(round_number)
        self._settled_head = self.head

    def append(self, entries: Sequence[LedgerEntry]) -> None:
        """Settle the rounds of ``entries`` in order (a convenience for
        writers whose clients charge themselves elsewhere; nothing happens
        when it is empty).

        Raises:
            LedgerError, OSError: see :meth:`settle_round`.
        """
        rounds: dict[int, list[LedgerEntry]] = {}
        for entry in entries:
            rounds.setdefault(entry.round, []).append(entry)
        for number in sorted(rounds):
            self.settle_round(number, rounds[number])

    def read(self) -> list[LedgerEntry]:
        """The effective rows (see :func:`read_ledger`; empty when the file
        does not exist)."""
        return read_ledger(self.path) if self.path.exists() else []


def read_ledger(path: str | os.PathLike[str]) -> list[LedgerEntry]:
    """The effective rows of a ledger (:meth:`LedgerChain.effective`): one
    settled row per client per settled round, and the in-flight rows of a
    round that never settled.  This reads; :func:`load_ledger` verifies.

    Raises:
        OSError: when it cannot be read.
        SecureFLError: naming the first malformed line (bytes that are not
            UTF-8 included).
    """
    chain = load_ledger(path)
    if chain.malformed is not None:
        raise LedgerError(f"{path}: {chain.malformed}")
    return chain.effective()


def entries_by_client(entries: Iterable[LedgerEntry]) -> dict[int, list[LedgerEntry]]:
    """Group rows by client id, keeping their order."""
    grouped: dict[int, list[LedgerEntry]] = {}
    for entry in entries:
        grouped.setdefault(entry.client_id, []).append(entry)
    return grouped
