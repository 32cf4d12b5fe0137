"""The privacy ledger: one JSON line per client per round, append-only,
written atomically, and only for rounds whose outcome is settled.

A privacy officer reads it to answer: who spent how much privacy, when, with
which parameters, and did the noisy update actually reach the server's sum?
A client that trained but whose update did not enter the sum (it dropped
out, its update was refused by the encoder, or the round aborted) still spent
privacy, so it gets a row with ``entered_sum = false``.
"""

from __future__ import annotations

import contextlib
import enum
import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from securefl.errors import LedgerError, SecureFLError

__all__ = [
    "LEDGER_FILENAME",
    "LedgerEntry",
    "Participation",
    "PrivacyLedger",
    "entries_by_client",
    "read_ledger",
]

LEDGER_FILENAME = "ledger.jsonl"


class Participation(str, enum.Enum):
    """What became of a client's participation in one round."""

    INCLUDED = "included"
    """It trained and its update entered the sum."""
    DROPPED = "dropped"
    """It trained, then dropped out before its masked input reached the server."""
    ENCODING_ERROR = "encoding-error"
    """It trained, but its update was refused by the encoder (NaN, shape...)."""
    ROUND_ABORTED = "round-aborted"
    """It trained, but the round aborted, so nothing entered any sum."""
    REFUSED_BUDGET = "refused-budget"
    """It refused to train: the round would have exceeded its budget."""


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
            parameters (``local_steps`` is 0 when it did not train).
        delta: the delta at which the epsilons are stated.
        epsilon_rdp, epsilon_prv: epsilon spent so far (all rounds up to and
            including this one), per Opacus's RDP and PRV accountants
            (``epsilon_prv`` is None when PRV cannot bound it).
        accountant: the accountant the budget is checked with.
        epsilon_budget: the client's budget, or None.
        survivors: how many clients' updates entered this round's sum (0 if
            the round aborted).
        dropped_at: the protocol round at which it dropped, if it did.
        history: the client's full Opacus history ``[[sigma, q, steps], ...]``
            so far, so that anyone can recompute its epsilon.
        secure_aggregation: whether the sum was computed by secure aggregation.
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

    @property
    def epsilon(self) -> float:
        """Epsilon per the accountant the budget is checked with."""
        if self.accountant == "prv" and self.epsilon_prv is not None:
            return self.epsilon_prv
        return self.epsilon_rdp

    @property
    def over_budget(self) -> bool:
        """True when the epsilon spent so far exceeds the budget."""
        return self.epsilon_budget is not None and not self.epsilon <= self.epsilon_budget

    def to_json(self) -> str:
        """One line of JSON (no newline), keys in a stable order."""
        data = asdict(self)
        for key in ("epsilon_rdp", "epsilon_prv"):
            value = data[key]
            if value is not None and not math.isfinite(value):
                data[key] = None if math.isnan(value) else "inf"
        return json.dumps(data, sort_keys=False, separators=(", ", ": "))

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
            # the lists of a row are the history and its rows of at least 7
            # characters ("[0,0,0]"): refuse denser brackets before parsing
            # allocates a Python list (about 100 bytes) for each
            if line.count("[") > 1 + len(line) // 7:
                raise LedgerError("too many lists for a ledger row (its history rows are"
                                  " [sigma, q, steps])")
            data: dict[str, Any] = json.loads(line)
            if not isinstance(data, dict):
                raise LedgerError(f"a row is a JSON object, got {type(data).__name__}")
            if data.get("epsilon_rdp") == "inf":
                data["epsilon_rdp"] = math.inf
            if data.get("epsilon_prv") == "inf":
                data["epsilon_prv"] = math.inf
            if data.get("epsilon_rdp") is None:
                data["epsilon_rdp"] = math.nan
            Participation(data["status"])
            _check_row_types(cls, data)
            return cls(**data)
        except (ValueError, TypeError, KeyError, RecursionError, SecureFLError) as exc:
            raise LedgerError(f"not a valid ledger row: {exc}") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_history(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(row, list) and len(row) == 3 and all(_is_number(x) for x in row)
        and math.isfinite(row[0]) and row[0] >= 0 and 0 <= row[1] <= 1
        and isinstance(row[2], int) and not isinstance(row[2], bool) and row[2] >= 0
        for row in value)


_JSON_TYPE_CHECKS = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": _is_number,
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "None": lambda v: v is None,
    "list[list[float]]": _is_history,
}


def _check_row_types(cls: type, data: dict[str, Any]) -> None:
    """Refuse a field whose JSON value is not of its annotated type."""
    for spec in fields(cls):
        if spec.name not in data or not isinstance(spec.type, str):
            continue  # a missing field is refused by the constructor
        checks = [_JSON_TYPE_CHECKS.get(part.strip()) for part in spec.type.split("|")]
        if None in checks:
            continue  # a type this check does not know: the constructor decides
        if not any(check(data[spec.name]) for check in checks if check is not None):
            raise LedgerError(f"field {spec.name!r} must be {spec.type}, got"
                              f" {type(data[spec.name]).__name__}")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class PrivacyLedger:
    """An append-only JSON Lines file.

    Every :meth:`append` writes the existing content plus the new rows to a
    temporary file in the same directory, fsyncs it and atomically replaces the
    ledger with it (``os.replace``), so a reader sees either the old ledger or
    the new one, never a torn line.  Existing bytes are never changed.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def append(self, entries: Sequence[LedgerEntry]) -> None:
        """Append ``entries`` atomically (nothing happens when it is empty).

        Raises:
            OSError: when the file cannot be written; the ledger is then
                unchanged.
        """
        if not entries:
            return
        old = self.path.read_bytes() if self.path.exists() else b""
        if old and not old.endswith(b"\n"):
            raise LedgerError(f"{self.path} does not end with a newline; refusing to append")
        new = "".join(entry.to_json() + "\n" for entry in entries).encode("utf-8")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".ledger-", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(old + new)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(self.path.parent)

    def read(self) -> list[LedgerEntry]:
        """All rows (empty when the file does not exist)."""
        return read_ledger(self.path) if self.path.exists() else []


def read_ledger(path: str | os.PathLike[str]) -> list[LedgerEntry]:
    """Parse a ledger file.

    Raises:
        OSError: when it cannot be read.
        SecureFLError: naming the first malformed line (bytes that are not
            UTF-8 included).
    """
    rows: list[LedgerEntry] = []
    with open(path, encoding="utf-8") as handle:
        number = 0
        try:
            for line in handle:
                number += 1
                if not line.strip():
                    continue
                rows.append(LedgerEntry.from_json(line))
        except UnicodeDecodeError:
            raise LedgerError(f"{path}: not UTF-8 text (at or after line {number + 1})"
                              ) from None
        except SecureFLError as exc:
            raise LedgerError(f"{path}, line {number}: {exc}") from None
    return rows


def entries_by_client(entries: Iterable[LedgerEntry]) -> dict[int, list[LedgerEntry]]:
    """Group rows by client id, keeping their order."""
    grouped: dict[int, list[LedgerEntry]] = {}
    for entry in entries:
        grouped.setdefault(entry.client_id, []).append(entry)
    return grouped
