"""The run store: one SQLite database per run directory (``run.sqlite``),
the one place that says which round of a federation is committed.

SQLite comes with Python; the store runs in WAL mode with
``synchronous=FULL``, so a transaction that returned is on disk and a
transaction cut short by a SIGKILL (or a power cut) is rolled back on the
next open: the store always holds whole commits.  Two kinds of transaction
change it:

* :meth:`RunStore.begin_round`: the round's in-flight ledger block (one row
  per client about to train, charging the steps it is about to take), and
  the mark that the round is in flight; committed before any client trains;
* :meth:`RunStore.commit_round`: the round's settled ledger block, the
  checkpoint (global model and server optimizer state, as bytes), every
  client's accountant state, the driver's state (e.g. the position in the
  dropout schedule), the round report and the cumulative wall time, in ONE
  transaction; it clears the in-flight mark.

Schema (``PRAGMA user_version`` 2)::

    meta(key TEXT PRIMARY KEY, value TEXT)      -- format, run config, metrics
                                                -- header, final block (JSON)
    ledger(seq INTEGER PRIMARY KEY, round INTEGER, stage TEXT, line BLOB)
                                                -- the hash-chained ledger,
                                                -- one canonical record a row
    rounds(round INTEGER PRIMARY KEY, report TEXT)   -- settled round reports
    state(id INTEGER PRIMARY KEY CHECK (id = 1), round INTEGER, in_flight
          INTEGER, checkpoint BLOB, clients TEXT, driver TEXT, wall REAL,
          head TEXT)                            -- head: the digest of the last
                                                -- ledger record, written with it

:func:`store_problems` checks the ``state`` row against the ledger (the
head, the settled round, the in-flight round, every client's history) and
the run configuration against the ledger's rows; :meth:`RoundRecorder.resume
<securefl.federation.round.RoundRecorder.resume>` refuses and ``securefl
audit`` fails on any disagreement.

``ledger.jsonl``, ``checkpoint.pt`` and ``metrics.json`` are exports of the
store (see :mod:`securefl.federation.round`): the ledger lines are appended
to ``ledger.jsonl`` in store order, so the file is always a byte prefix of
the store's ledger (a crash may leave it shorter, or with a torn last line;
:func:`sync_ledger_file` completes it).

This module is torch-free: the checkpoint is stored as the bytes the caller
serialised.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from securefl.crashpoints import crash_point, crash_requested
from securefl.durable import atomic_write, fsync_dir
from securefl.errors import ConfigurationError, SecureFLError
from securefl.privacy.ledger import parse_ledger, record_digest
from securefl.strictjson import sanitize

__all__ = [
    "STORE_FILENAME",
    "STORE_FORMAT",
    "Committed",
    "ResumeMismatchError",
    "RunStore",
    "RunStoreError",
    "StoreInconsistentError",
    "StoreLockedError",
    "StoreProblem",
    "StoreRule",
    "append_ledger_file",
    "clean_temporaries",
    "config_differences",
    "store_problems",
    "sync_ledger_file",
]

STORE_FILENAME = "run.sqlite"
STORE_FORMAT = "securefl-run/2"
"""The ``format`` recorded in the store's ``meta`` table."""
_USER_VERSION = 2

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE ledger (seq INTEGER PRIMARY KEY, round INTEGER NOT NULL, stage TEXT NOT NULL,
                     line BLOB NOT NULL);
CREATE TABLE rounds (round INTEGER PRIMARY KEY, report TEXT NOT NULL);
CREATE TABLE state (id INTEGER PRIMARY KEY CHECK (id = 1), round INTEGER NOT NULL,
                    in_flight INTEGER, checkpoint BLOB NOT NULL, clients TEXT NOT NULL,
                    driver TEXT NOT NULL, wall REAL NOT NULL, head TEXT NOT NULL);
"""


class RunStoreError(SecureFLError):
    """The run store is missing, unreadable, of another format, or disagrees
    with an exported artefact (``ledger.jsonl`` that is not a prefix of the
    store's ledger: edited)."""


class StoreRule(str, enum.Enum):
    """The rules a run store's ``state`` row and configuration must keep
    with the store's own hash-chained ledger (see :func:`store_problems`)."""

    CHAIN_BROKEN = "store-ledger-chain-broken"
    """The store's ledger does not verify (a record edited, removed or
    reordered, a block without its commit)."""
    HEAD_MISMATCH = "state-head-is-not-the-ledger-head"
    """``state.head`` (written with every ledger block) is not the digest of
    the ledger's last record: records were cut off or added."""
    ROUND_MISMATCH = "state-round-is-not-the-ledger-settled-round"
    """``state.round`` is not the ledger's last settled round."""
    IN_FLIGHT_MISMATCH = "state-in-flight-is-not-the-trailing-in-flight-block"
    """``state.in_flight`` is not the round of the ledger's trailing unsettled
    in-flight block (or one is empty and the other not)."""
    HISTORY_MISMATCH = "state-history-is-not-the-ledger-history"
    """A client's accountant history in ``state.clients`` is not the history
    of its last settled ledger row (empty: no settled row)."""
    CONFIG_MISMATCH = "run-config-disagrees-with-the-ledger-rows"
    """The run configuration (delta, budget, accountant, adjacency,
    weighting, noise source) is not the one the ledger's rows were written
    under."""


@dataclass(frozen=True)
class StoreProblem:
    """One disagreement between a run store's state and its ledger.

    Attributes:
        rule: the rule broken.
        round: the round concerned (None: not one round).
        client_id: the client concerned (None: not one client).
        detail: what differs.
    """

    rule: StoreRule
    round: int | None
    client_id: int | None
    detail: str

    def __str__(self) -> str:
        who = "" if self.client_id is None else f"client {self.client_id}, "
        when = "" if self.round is None else f"round {self.round}, "
        return f"{who}{when}rule {self.rule.value}: {self.detail}"


class StoreInconsistentError(RunStoreError):
    """The run store's state or configuration disagrees with its ledger
    (edited, or rolled back in part): a resume refuses it before any client
    trains.

    Attributes:
        problems: every disagreement found; ``rule``, ``round`` and
            ``client_id`` are those of the first.
    """

    def __init__(self, path: Path, problems: Sequence[StoreProblem]) -> None:
        self.problems = tuple(problems)
        first = self.problems[0]
        self.rule = first.rule
        self.round = first.round
        self.client_id = first.client_id
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(f"{path}: the run store disagrees with its ledger: {first}{more}")


class StoreLockedError(RunStoreError):
    """Another writer holds the run directory (one writer per run store)."""


class ResumeMismatchError(ConfigurationError):
    """A resume was asked with a configuration other than the run's own.

    Attributes:
        keys: the configuration keys whose values differ.
    """

    def __init__(self, message: str, keys: Sequence[str]) -> None:
        super().__init__(message)
        self.keys = tuple(keys)


def _dumps(value: Any) -> str:
    return json.dumps(sanitize(value), sort_keys=True, allow_nan=False)


def config_differences(stored: Mapping[str, Any], given: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ between two JSON configurations (a key
    present in only one of them counts), sorted."""
    keys = set(stored) | set(given)
    return sorted(k for k in keys if _dumps(stored.get(k)) != _dumps(given.get(k))
                  or (k in stored) != (k in given))


@dataclass(frozen=True)
class Committed:
    """What the store says is committed.

    Attributes:
        round: the last settled round (0: only the initial model).
        in_flight: the round whose in-flight rows are committed but which
            never settled (the process stopped), or None.
        checkpoint: the serialised checkpoint of ``round``.
        clients: client id -> its state (e.g. ``{"history": [[sigma, q,
            steps], ...]}``) after ``round``.
        driver: the driver's own state after ``round``.
        wall: wall-clock seconds spent by the run so far (all processes).
        head: the digest of the ledger's last record as written with it
            (must equal the ledger's head).
    """

    round: int
    in_flight: int | None
    checkpoint: bytes
    clients: dict[int, dict[str, Any]]
    driver: dict[str, Any]
    wall: float
    head: str = ""


class RunStore:
    """One run's store (see the module docstring).  Use :meth:`create` or
    :meth:`open`; a store is written by one writer at a time (an exclusive
    ``flock`` on the run directory, held until :meth:`close`).

    Raises:
        RunStoreError: from every method, when the database cannot be used.
    """

    def __init__(self, path: Path, connection: sqlite3.Connection,
                 lock: int | None = None) -> None:
        self.path = path
        self._db = connection
        self._lock = lock

    @staticmethod
    def _lock_dir(directory: Path) -> int:
        """An exclusive ``flock`` on the run directory, held until
        :meth:`close` (one writer per store; released by the kernel when the
        process dies).

        Raises:
            StoreLockedError: another writer holds it.
        """
        fd = os.open(directory, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLockedError(f"{directory}: another process is writing this run (its"
                                   " run store is locked); one writer per run store") from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    # -- opening -----------------------------------------------------------------------

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(path, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as exc:
            raise RunStoreError(f"{path}: cannot open the run store: {exc}") from None
        return db

    @staticmethod
    def is_initialised(path: str | os.PathLike[str]) -> bool:
        """Whether ``path`` holds a store with a committed initial round.

        Reads through :func:`_readonly_connection`: nothing is written into
        the run directory.  False only when there is no file, or when it opens cleanly as a
        SQLite database holding no ``state`` table (a store whose creation
        was cut short: nothing ran).

        Raises:
            RunStoreError: the file cannot be read as a database, or its
                ``state`` table is not one row (damaged): it is neither
                initialised nor safe to delete.
        """
        if not Path(path).exists():
            return False
        db = _readonly_connection(Path(path))
        try:
            (tables,) = db.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'"
                                   " AND name = 'state'").fetchone()
            if not tables:
                return False
            row = db.execute("SELECT count(*) FROM state").fetchone()
        except sqlite3.Error as exc:
            raise RunStoreError(f"{path}: cannot read the run store: {exc}") from None
        finally:
            db.close()
        if not row or row[0] != 1:
            raise RunStoreError(f"{path}: damaged run store (its state table holds"
                                f" {row[0] if row else 0} rows)")
        return True

    @classmethod
    def remove_uninitialised(cls, path: str | os.PathLike[str]) -> None:
        """Delete a store whose creation never committed (it holds nothing:
        no client trained) and its WAL files; leave an initialised one.

        Raises:
            RunStoreError: when ``path`` is an initialised store, or one that
                cannot be read (damaged: kept).
        """
        if cls.is_initialised(path):
            raise RunStoreError(f"{path} is an initialised run store")
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{path}{suffix}")
        fsync_dir(Path(path).parent)

    @classmethod
    def create(cls, path: str | os.PathLike[str], *, config: Mapping[str, Any],
               metrics_header: Mapping[str, Any], ledger_header: bytes, checkpoint: bytes,
               clients: Mapping[int, Mapping[str, Any]],
               driver: Mapping[str, Any],
               replace_uninitialised: bool = False) -> RunStore:
        """Create the store and commit round 0 (the initial model) in one
        transaction, holding the run directory's writer lock from before
        it looks at ``path``.  With ``replace_uninitialised``, a store whose
        creation never committed (a clean database without tables) is
        deleted first, under the lock.

        Raises:
            RunStoreError: when ``path`` already exists (and is not an
                uninitialised store to replace), or cannot be read.
            StoreLockedError: another writer holds the directory.
        """
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        lock = cls._lock_dir(target.parent)
        try:
            if target.exists() and replace_uninitialised:
                cls.remove_uninitialised(target)
            if target.exists():
                raise RunStoreError(f"{target} already exists: a run store belongs to one run")
            db = cls._connect(target)
        except BaseException:
            os.close(lock)
            raise
        store = cls(target, db, lock)
        with store._transaction() as cur:
            for statement in _SCHEMA.strip().split(";"):
                if statement.strip():
                    cur.execute(statement)
            cur.execute(f"PRAGMA user_version = {_USER_VERSION}")
            cur.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("format", _dumps(STORE_FORMAT)), ("config", _dumps(dict(config))),
                ("metrics_header", _dumps(dict(metrics_header))), ("final", "null")])
            cur.execute("INSERT INTO ledger VALUES (0, 0, 'header', ?)", (ledger_header,))
            cur.execute("INSERT INTO state VALUES (1, 0, NULL, ?, ?, ?, 0.0, ?)",
                        (checkpoint, _dumps(_clients_json(clients)), _dumps(dict(driver)),
                         record_digest(ledger_header)))
        fsync_dir(target.parent)
        return store

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RunStore:
        """Open an existing store (a transaction cut short is rolled back).

        Raises:
            RunStoreError: no store, a store whose creation never committed,
                or one of another format.
            StoreLockedError: another writer holds the directory.
        """
        target = Path(path)
        if not cls.is_initialised(target):
            raise RunStoreError(f"{target}: no initialised run store (nothing was committed)")
        lock = cls._lock_dir(target.parent)
        try:
            store = cls(target, cls._connect(target), lock)
        except BaseException:
            os.close(lock)
            raise
        fmt = store._meta("format")
        if fmt != STORE_FORMAT:
            store.close()
            raise RunStoreError(f"{target}: store format {fmt!r}, expected {STORE_FORMAT!r}")
        return store

    @classmethod
    def open_readonly(cls, path: str | os.PathLike[str]) -> RunStore:
        """Open a store for reading only (``securefl audit``): nothing is
        written into the run directory, not even a WAL checkpoint or the
        ``-shm``/``-wal`` side files SQLite leaves behind a read-only
        connection.  The store is read from a consistent copy held in
        memory (see :func:`_readonly_connection`), including the
        un-checkpointed frames a killed writer left in ``run.sqlite-wal``;
        while a writer holds the run it is read in place (its side files
        exist already).

        Raises:
            RunStoreError: when it cannot be read.
        """
        target = Path(path)
        if not cls.is_initialised(target):
            raise RunStoreError(f"{target}: no initialised run store (nothing was committed)")
        return cls(target, _readonly_connection(target))

    def close(self) -> None:
        """Close the database connection (and release the writer's lock)."""
        try:
            self._db.close()
        finally:
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Cursor]:
        cur = self._db.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE")
            yield cur
            cur.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                cur.execute("ROLLBACK")
            raise RunStoreError(f"{self.path}: transaction failed: {exc}") from None
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                cur.execute("ROLLBACK")
            raise

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise RunStoreError(f"{self.path}: cannot read the run store: {exc}") from None

    def _meta(self, key: str) -> Any:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else None

    # -- reading -----------------------------------------------------------------------

    @property
    def config(self) -> dict[str, Any]:
        """The run configuration the store was created with (JSON)."""
        return dict(self._meta("config") or {})

    @property
    def metrics_header(self) -> dict[str, Any]:
        """The fixed part of ``metrics.json`` (config and data blocks)."""
        return dict(self._meta("metrics_header") or {})

    @property
    def final(self) -> dict[str, Any] | None:
        """The ``final`` block of ``metrics.json`` once the run finished."""
        return self._meta("final")

    def committed(self) -> Committed:
        """The committed state (see :class:`Committed`)."""
        rows = self._query("SELECT round, in_flight, checkpoint, clients, driver, wall, head"
                           " FROM state WHERE id = 1")
        if not rows:
            raise RunStoreError(f"{self.path}: no committed state")
        rnd, in_flight, checkpoint, clients, driver, wall, head = rows[0]
        try:
            return Committed(
                round=int(rnd), in_flight=None if in_flight is None else int(in_flight),
                checkpoint=bytes(checkpoint),
                clients={int(k): v for k, v in json.loads(clients).items()},
                driver=json.loads(driver), wall=float(wall), head=str(head))
        except (TypeError, ValueError, AttributeError) as exc:
            raise RunStoreError(f"{self.path}: malformed state row: {exc}") from None

    def ledger_lines(self) -> list[bytes]:
        """The ledger's canonical records (no newlines), in chain order."""
        return [bytes(r[0]) for r in self._query("SELECT line FROM ledger ORDER BY seq")]

    def ledger_bytes(self) -> bytes:
        """The ledger as ``ledger.jsonl`` holds it: every record and a newline."""
        return b"".join(line + b"\n" for line in self.ledger_lines())

    def ledger_head(self) -> str:
        """The digest of the last ledger record."""
        rows = self._query("SELECT line FROM ledger ORDER BY seq DESC LIMIT 1")
        return record_digest(bytes(rows[0][0]))

    def reports(self) -> list[dict[str, Any]]:
        """The settled rounds' reports (JSON), in round order."""
        return [json.loads(r[0]) for r in self._query("SELECT report FROM rounds ORDER BY round")]

    # -- writing -----------------------------------------------------------------------

    def _append_ledger(self, cur: sqlite3.Cursor, round_number: int, stage: str,
                       lines: Sequence[bytes]) -> None:
        (last,) = cur.execute("SELECT max(seq) FROM ledger").fetchone()
        cur.executemany("INSERT INTO ledger VALUES (?, ?, ?, ?)",
                        [(last + 1 + i, int(round_number), stage, line)
                         for i, line in enumerate(lines)])

    def begin_round(self, round_number: int, lines: Sequence[bytes],
                    driver: Mapping[str, Any] | None = None) -> None:
        """Commit round ``round_number``'s in-flight ledger block (its
        canonical lines) and mark the round in flight, in one transaction
        (with ``driver``, the driver's state replaced by it in the same
        transaction: what a resume needs to know of the round in flight).

        Raises:
            RunStoreError: when the round is not the next one, or another is
                in flight.
        """
        with self._transaction() as cur:
            rnd, in_flight = cur.execute("SELECT round, in_flight FROM state").fetchone()
            if in_flight is not None or int(round_number) != rnd + 1:
                raise RunStoreError(f"round {round_number} cannot begin: round {rnd} is"
                                    f" committed, round {in_flight} in flight")
            self._append_ledger(cur, round_number, "in-flight", lines)
            cur.execute("UPDATE state SET in_flight = ?, head = ? WHERE id = 1",
                        (int(round_number), record_digest(lines[-1])))
            if driver is not None:
                cur.execute("UPDATE state SET driver = ? WHERE id = 1", (_dumps(dict(driver)),))

    def commit_round(self, round_number: int, lines: Sequence[bytes], *, checkpoint: bytes,
                     clients: Mapping[int, Mapping[str, Any]], driver: Mapping[str, Any],
                     report: Mapping[str, Any], wall: float) -> None:
        """Commit round ``round_number``: its settled ledger block, the
        checkpoint, the clients' and the driver's state, the report and the
        wall time, in one transaction (``mid-commit`` crash point: killed
        inside it, before ``COMMIT``: the store keeps the previous round).

        Raises:
            RunStoreError: when the round is not the next one.
        """
        with self._transaction() as cur:
            (rnd,) = cur.execute("SELECT round FROM state").fetchone()
            if int(round_number) != rnd + 1:
                raise RunStoreError(f"round {round_number} cannot commit after round {rnd}")
            self._append_ledger(cur, round_number, "settled", lines)
            cur.execute("INSERT INTO rounds VALUES (?, ?)", (int(round_number), _dumps(report)))
            cur.execute("UPDATE state SET round = ?, in_flight = NULL, checkpoint = ?,"
                        " clients = ?, driver = ?, wall = ?, head = ? WHERE id = 1",
                        (int(round_number), checkpoint, _dumps(_clients_json(clients)),
                         _dumps(dict(driver)), float(wall), record_digest(lines[-1])))
            crash_point("mid-commit", round_number)

    def finish(self, final: Mapping[str, Any]) -> None:
        """Record the ``final`` block of ``metrics.json`` (the run ended)."""
        with self._transaction() as cur:
            cur.execute("UPDATE meta SET value = ? WHERE key = 'final'", (_dumps(dict(final)),))


def _history_rows(history: Any) -> list[tuple[float, float, int]]:
    return [(float(r[0]), float(r[1]), int(r[2])) for r in history]


def _same(a: Any, b: Any) -> bool:
    return _dumps(a) == _dumps(b)


def store_problems(committed: Committed, ledger: bytes,
                   expected: Mapping[str, Any] | None = None) -> list[StoreProblem]:
    """Every disagreement between a store's committed state and its ledger.

    Checks that the ledger (``ledger``: the store's ledger bytes) verifies;
    that ``committed.head`` is the digest of its last record (written with
    every block: a block cut off or added shows); that ``committed.round`` is
    its last settled round; that ``committed.in_flight`` is the round of its
    trailing in-flight block (a commit of stage ``in-flight`` that no
    settled commit follows), or None when there is none; that every client's
    history in ``committed.clients`` is the history of its last settled row
    (empty when it has none) and every client with a row is in it; and, when
    ``expected`` is given (ledger row field -> the value the run's
    configuration prescribes, e.g. ``delta``, ``epsilon_budget``), that every
    committed row records those values.

    Returns:
        the problems (empty: consistent), each naming its rule, round and
        client.
    """
    chain = parse_ledger(ledger)
    problems: list[StoreProblem] = []
    if not chain.ok:
        problems.extend(StoreProblem(StoreRule.CHAIN_BROKEN, None, None, p)
                        for p in chain.problems)
        return problems
    lines = ledger.split(b"\n")[:-1]
    head = record_digest(lines[-1]) if lines else ""
    if committed.head != head:
        problems.append(StoreProblem(
            StoreRule.HEAD_MISMATCH, committed.in_flight or committed.round, None,
            f"state records head {committed.head!r}, the ledger's last record is {head!r}"
            " (ledger records were cut off or added)"))
    if committed.round != chain.last_settled_round:
        problems.append(StoreProblem(
            StoreRule.ROUND_MISMATCH, committed.round, None,
            f"state commits round {committed.round}, the ledger settles round"
            f" {chain.last_settled_round}"))
    last = chain.commits[-1] if chain.commits else None
    trailing = last.round if last is not None and last.stage == "in-flight" else None
    if committed.in_flight != trailing:
        problems.append(StoreProblem(
            StoreRule.IN_FLIGHT_MISMATCH, committed.in_flight or trailing, None,
            f"state marks round {committed.in_flight} in flight, the ledger's trailing"
            f" in-flight block is of round {trailing}"))
    settled: dict[int, Any] = {}
    for row in chain.committed:
        if not row.in_flight:
            settled[row.client_id] = row
    for cid in sorted(set(settled) | set(committed.clients)):
        row = settled.get(cid)
        want = _history_rows(row.history) if row is not None else []
        state = committed.clients.get(cid)
        if state is None:
            problems.append(StoreProblem(
                StoreRule.HISTORY_MISMATCH, row.round if row is not None else None, cid,
                "the ledger has settled rows of this client, the state has no accountant"
                " for it"))
            continue
        try:
            have = _history_rows(state.get("history", []))
        except (TypeError, ValueError, IndexError, AttributeError):
            have = None
        if have != want:
            problems.append(StoreProblem(
                StoreRule.HISTORY_MISMATCH, row.round if row is not None else 0, cid,
                f"state restores its accountant from {have} ({_steps(have)} steps), its last"
                f" settled ledger row records {want} ({_steps(want)} steps)"))
    for cid in sorted({r.client_id for r in chain.committed} - set(committed.clients)
                      - set(settled)):
        problems.append(StoreProblem(
            StoreRule.HISTORY_MISMATCH, committed.in_flight, cid,
            "the ledger charges this client, the state has no accountant for it"))
    if expected:
        seen: set[tuple[str, int]] = set()
        for row in chain.committed:
            for key, value in expected.items():
                recorded = getattr(row, key)
                if not _same(recorded, value) and (key, row.round) not in seen:
                    seen.add((key, row.round))
                    problems.append(StoreProblem(
                        StoreRule.CONFIG_MISMATCH, row.round, row.client_id,
                        f"the run configuration gives {key} = {value!r}, the ledger row"
                        f" records {recorded!r}"))
    return problems


def _steps(history: list[tuple[float, float, int]] | None) -> str:
    return "?" if history is None else str(sum(r[2] for r in history))


def _clients_json(clients: Mapping[int, Mapping[str, Any]]) -> dict[str, Any]:
    return {str(int(k)): dict(v) for k, v in sorted(clients.items())}


def clean_temporaries(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete the stray temporaries an interrupted atomic write
    (:func:`securefl.durable.atomic_write`: ``.<name>-*.tmp``) left in
    ``run_dir``; return them."""
    directory = Path(run_dir)
    removed = []
    for tmp in sorted(directory.glob(".*.tmp")):
        if tmp.is_file():
            tmp.unlink()
            removed.append(tmp)
    if removed:
        fsync_dir(directory)
    return removed


def _append(path: Path, data: bytes, *, torn_at: int | None = None) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        view = memoryview(data)
        if torn_at is not None:
            os.write(fd, view[:len(data) // 2])
            os.fsync(fd)
            crash_point("ledger-torn", torn_at)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_ledger_file(path: str | os.PathLike[str], expected: bytes) -> int:
    """Make the file ``path`` hold exactly ``expected`` (the store's ledger
    bytes) and return its length: a missing file is written atomically, a
    byte prefix of ``expected`` that ends with a whole line is completed by
    appending (one write, fsync), a torn last line (a crash in the middle of
    an append) is replaced atomically, and a file that is not a prefix
    refuses.

    Raises:
        RunStoreError: the file is not a prefix of the store's ledger
            (edited, or of another run); it is left as it is.
        OSError: when it cannot be written.
    """
    target = Path(path)
    current = target.read_bytes() if target.exists() else None
    if current is None or (current and not current.endswith(b"\n")
                           and expected.startswith(current)):
        atomic_write(target, lambda handle: handle.write(expected))
        return len(expected)
    if not expected.startswith(current):
        line = current[:_common_prefix(current, expected)].count(b"\n") + 1
        raise RunStoreError(f"{target} differs from the run store's ledger at line {line}:"
                            " it was edited, or belongs to another run")
    append_ledger_file(target, expected[len(current):])
    return len(expected)


def append_ledger_file(path: str | os.PathLike[str], block: bytes, *,
                       round_number: int = 0) -> None:
    """Append ``block`` (whole lines) to the ledger file ``path`` with one
    ``O_APPEND`` write and an fsync.  ``round_number`` names the round for
    the ``ledger-torn`` crash point (half of a settled block on disk, then
    SIGKILL); 0 for any other block.

    Raises:
        OSError: when it cannot be written.
    """
    if block:
        torn = round_number if crash_requested("ledger-torn", round_number) else None
        _append(Path(path), block, torn_at=torn)


def _common_prefix(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


_SNAPSHOT_ATTEMPTS = 3


def _file_stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _writer_active(directory: Path) -> bool:
    """Whether a writer holds the run directory's lock (probed with a shared
    ``flock`` released at once; a lock changes nothing on disk)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing releases the probe's lock
    return False


def _readonly_connection(target: Path) -> sqlite3.Connection:
    """A read-only view of the store ``target`` that writes nothing next to it.

    A SQLite connection, even one opened with ``mode=ro``, creates
    ``-shm``/``-wal`` files beside a WAL database and cannot delete them on
    close (deleting them needs a checkpoint, which is a write); and
    ``immutable=1`` would ignore the frames a killed writer left in the WAL.
    So, when no writer holds the directory's lock, the database and its
    ``-wal`` file (never the ``-shm`` index, which SQLite rebuilds from the
    WAL) are copied into a private temporary directory, the copy is opened
    there (SQLite replays the committed WAL frames and ignores a torn or
    uncommitted tail, as it would on the original), copied into an
    in-memory database, and the temporary directory is deleted.  The copy
    is taken again when either file changed while it was copied (a writer
    started); when a writer holds the lock, or the files keep changing,
    the original is opened ``mode=ro`` in place: the writer's own side
    files are there already.

    Raises:
        RunStoreError: when the store cannot be read.
    """
    wal = target.with_name(target.name + "-wal")
    for _ in range(_SNAPSHOT_ATTEMPTS):
        if _writer_active(target.parent):
            break
        before = (_file_stamp(target), _file_stamp(wal))
        with tempfile.TemporaryDirectory(prefix="securefl-store-") as tmp:
            copy = Path(tmp) / target.name
            try:
                shutil.copyfile(target, copy)
                if before[1] is not None:
                    shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
            except FileNotFoundError:
                continue  # the writer checkpointed and removed its WAL meanwhile
            except OSError as exc:
                raise RunStoreError(f"{target}: cannot read the run store: {exc}") from None
            if (_file_stamp(target), _file_stamp(wal)) != before:
                continue
            try:
                source = sqlite3.connect(copy, isolation_level=None)
                try:
                    memory = sqlite3.connect(":memory:", isolation_level=None)
                    source.backup(memory)
                finally:
                    source.close()
            except sqlite3.Error as exc:
                raise RunStoreError(f"{target}: cannot read the run store: {exc}") from None
            return memory
    try:
        return sqlite3.connect(f"{target.resolve().as_uri()}?mode=ro", uri=True,
                               isolation_level=None)
    except sqlite3.Error as exc:
        raise RunStoreError(f"{target}: cannot read the run store: {exc}") from None
