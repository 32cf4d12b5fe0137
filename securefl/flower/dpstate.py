"""A Flower node's DP accountant, kept on the node's own disk.

Flower 1.4x runs every message in a fresh ClientApp process and keeps a
node's ``Context`` only in the SuperNode's memory: a SuperNode that dies
(SIGKILL, power loss, a reboot) would come back with an accountant at zero
and could then spend its privacy budget a second time.  So the node keeps
what it has spent in a file of its own, and no ClientApp trains without it.

Where
-----
One file per federation and client, ``<state-dir>/<federation
digest>/client-<id>.json``, and an index, ``<state-dir>/index.json``, naming
every such file the node has ever created.  ``<state-dir>`` is the node
config ``securefl-state-dir``, else the environment variable
``SECUREFL_STATE_DIR``, else ``securefl-state`` under the node's Flower home
(``$FLWR_HOME``, else ``~/.flwr``).  The federation is
:func:`federation_key`: the run config's ``federation-id`` if it sets one,
else the Flower run id with a digest of the run config: two runs never share
an accountant, and a restarted SuperNode rejoining the same run finds its own.

Format
------
Canonical JSON (sorted keys, no NaN): ``format``
(``securefl-node-accountant/1``), ``federation``, ``client_id``,
``charges`` (one object per round the node was asked to train in: ``round``,
``status``, ``rows``: the ``[noise multiplier, sample rate, steps]`` rows the
round added), ``generators`` (only with INSECURE reproducible noise: the
seeded generators' states, hex), and ``digest``: the hex SHA-256 of the
canonical JSON of everything else.  The accountant history is the composition
of every charge's rows in order; a charge's ``status`` is ``in-flight``
(written and fsynced before training: charged in full, whether or not the
node got to train), ``settled`` (trained: the rows are the steps taken) or
``refused-budget`` (the guard refused: no rows).  Every write replaces the
whole file atomically and durably (:func:`securefl.durable.atomic_write`),
under an exclusive ``flock`` held for the whole round, so a crash leaves the
old file or the new one and two ClientApp processes never train from the
same history.

When the node refuses
---------------------
Besides the disk, the node keeps a witness in its ``Context`` (record
``securefl.node``, alive as long as the SuperNode process): ``first-round``,
the first federation round in which the securefl mod of this SuperNode
process saw a session setup of the run, and ``charges``, how many charges the
state file held after this process last wrote it.
:meth:`NodeAccountantStore.load` raises :class:`NodeStateError` (the node
answers the server with an error and drops out of the round, spending
nothing) when:

* ``corrupt``: the index or the state file cannot be read, is not this
  format, fails its digest, or names another federation or client;
* ``lost``: the state file holds fewer charges than the witness says this
  process wrote (it was deleted or replaced by an older copy while the node
  ran); or there is no state file and (a) the index names it, or (b) the
  witness says this process charged before, or (c) this SuperNode process
  first saw the federation in a round after the first: it may have trained
  in an earlier life whose record is gone (a restarted SuperNode whose disk
  lost its state).  The node config ``securefl-state-allow-fresh=true``
  lifts (c) for an operator who knows the node never trained in the
  federation (it joins late); it must be removed afterwards, or a later
  loss of the whole state directory goes unseen.

A fresh accountant starts at zero only when none of these holds: the node's
first contact with the federation is round 1 (or the operator said so) and
nothing on its disk or in its memory says it ever charged.

Limits: a node cannot tell a wiped state directory (index included) from a
new node when its SuperNode restarts and the server then asks it to take
part in round 1 (a server that restarts a federation at round 1, or lies
about the round, gets a fresh accountant from a node that lost its
directory); nor a state directory wiped whole while the SuperNode was
stopped from one that never existed, if the operator set
``securefl-state-allow-fresh``; restoring an older copy of the directory (a
backup) while the SuperNode is stopped rolls the accountant back undetected.
Accountants are per federation: a server that starts a new run gets a new
budget on every node, as it would from a node that keeps no state.  Rounds
the server repeats (a resumed federation) are charged again: the accountant
only grows.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from securefl.durable import atomic_write
from securefl.errors import SecureFLError
from securefl.flower.policy import ALLOW_FRESH_STATE_CONFIG, STATE_DIR_CONFIG
from securefl.privacy.accounting import HistoryRow
from securefl.privacy.budget import compose

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "STATE_DIR_ENV",
    "STATE_FORMAT",
    "ChargeStatus",
    "NodeAccountantState",
    "NodeAccountantStore",
    "NodeStateError",
    "NodeStateRule",
    "RoundCharge",
    "federation_key",
    "state_dir",
]

STATE_FORMAT = "securefl-node-accountant/1"
"""The ``format`` of the state files this module writes."""
INDEX_FORMAT = "securefl-node-accountant-index/1"
STATE_DIR_ENV = "SECUREFL_STATE_DIR"
"""Environment variable naming the state directory when the node config does
not (runtimes that give nodes no node config: Flower's simulation engine)."""
FEDERATION_ID_RUN_CONFIG = "federation-id"
"""Run config key naming the federation (stable across a resumed run)."""
_MAX_STATE_BYTES = 16 << 20


class NodeStateRule(str, enum.Enum):
    """Why a node refuses to train with its on-disk state."""

    CORRUPT = "node-state-corrupt"
    """The index or the state file is unreadable, malformed, fails its
    digest, or belongs to another federation or client."""
    LOST = "node-state-lost"
    """The state file is missing although the node may have spent privacy in
    the federation before (the index names it, or the round is not the
    first)."""


class NodeStateError(SecureFLError):
    """The node refuses to train: its on-disk accountant is corrupt or lost,
    so it cannot know what it has spent.

    Attributes:
        rule: the :class:`NodeStateRule`.
        client_id: the node's protocol client id.
        fl_round: the federation round it was asked to train in.
        detail: what was found (a path, never a secret).
    """

    def __init__(self, rule: NodeStateRule, detail: str, *, client_id: int,
                 fl_round: int) -> None:
        self.rule = rule
        self.client_id = client_id
        self.fl_round = fl_round
        self.detail = detail
        super().__init__(f"client {client_id} refuses round {fl_round}: rule"
                         f" '{rule.value}': {detail}")


class ChargeStatus(str, enum.Enum):
    """The status of one round's charge in a node's state file."""

    IN_FLIGHT = "in-flight"
    """Written before training: charged in full (it may have trained)."""
    SETTLED = "settled"
    """Trained: the rows are the steps taken."""
    REFUSED_BUDGET = "refused-budget"
    """The budget guard refused the round: nothing trained, nothing spent."""


@dataclass(frozen=True)
class RoundCharge:
    """One round's entry in a node's state file."""

    round: int
    status: ChargeStatus
    rows: tuple[HistoryRow, ...]


@dataclass(frozen=True)
class NodeAccountantState:
    """What a node has spent in one federation (the content of a state file).

    Attributes:
        federation: the :func:`federation_key`.
        client_id: the node's protocol client id.
        charges: every round's charge, in order.
        generators: the seeded generators' states (INSECURE reproducible
            noise only), else empty.
    """

    federation: str
    client_id: int
    charges: tuple[RoundCharge, ...] = ()
    generators: Mapping[str, bytes] = field(default_factory=dict)

    @property
    def history(self) -> list[HistoryRow]:
        """The accountant history: every charge's rows composed in order
        (in-flight charges count in full)."""
        rows: list[HistoryRow] = []
        for charge in self.charges:
            rows = compose(rows, charge.rows)
        return rows

    @property
    def rounds(self) -> tuple[int, ...]:
        """The rounds with a charge, in order."""
        return tuple(c.round for c in self.charges)

    def to_bytes(self) -> bytes:
        """The file's canonical bytes, digest included."""
        body = self._body()
        body["digest"] = _digest(body)
        return _canonical(body)

    def _body(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT, "federation": self.federation,
            "client_id": self.client_id,
            "charges": [{"round": c.round, "status": c.status.value,
                         "rows": [[float(s), float(q), int(n)] for s, q, n in c.rows]}
                        for c in self.charges],
            "generators": {k: bytes(v).hex() for k, v in sorted(self.generators.items())},
        }

    @classmethod
    def from_bytes(cls, raw: bytes) -> NodeAccountantState:
        """Parse and verify :meth:`to_bytes` output.

        Raises:
            ValueError: anything but an intact state file of this format.
        """
        try:
            return cls._decode(raw)
        except (TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"malformed state: {exc}") from None

    @classmethod
    def _decode(cls, raw: bytes) -> NodeAccountantState:
        data = _parse(raw)
        if set(data) != {"format", "federation", "client_id", "charges", "generators",
                         "digest"}:
            raise ValueError("unexpected fields")
        if data["format"] != STATE_FORMAT:
            raise ValueError(f"format {data['format']!r} is not {STATE_FORMAT}")
        digest = data.pop("digest")
        if not isinstance(digest, str) or digest != _digest(data):
            raise ValueError("digest mismatch")
        federation, client_id = data["federation"], data["client_id"]
        if not isinstance(federation, str) or not _is_int(client_id) or client_id < 1:
            raise ValueError("bad federation or client id")
        charges = []
        for item in _list(data["charges"]):
            if not isinstance(item, dict) or set(item) != {"round", "status", "rows"}:
                raise ValueError("bad charge")
            if not _is_int(item["round"]) or item["round"] < 0:
                raise ValueError("bad round")
            rows = []
            for row in _list(item["rows"]):
                if (not isinstance(row, list) or len(row) != 3 or not _is_int(row[2])
                        or row[2] < 0 or not all(_is_number(v) and v >= 0 for v in row[:2])):
                    raise ValueError("bad history row")
                rows.append((float(row[0]), float(row[1]), int(row[2])))
            charges.append(RoundCharge(int(item["round"]), ChargeStatus(item["status"]),
                                       tuple(rows)))  # ChargeStatus raises ValueError
        generators = data["generators"]
        if not isinstance(generators, dict) or not all(
                isinstance(v, str) for v in generators.values()):
            raise ValueError("bad generators")
        return cls(federation=federation, client_id=int(client_id), charges=tuple(charges),
                   generators={k: bytes.fromhex(v) for k, v in generators.items()})


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(b"securefl/node-accountant/v1\x00" + _canonical(body)).hexdigest()


def _parse(raw: bytes) -> dict[str, Any]:
    if len(raw) > _MAX_STATE_BYTES:
        raise ValueError("too large")

    def refuse_constant(name: str) -> Any:
        raise ValueError(f"non-finite number {name}")

    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise ValueError("expected a list")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))


def state_dir(node_config: Mapping[str, Any]) -> Path:
    """The node's state directory (see the module docstring)."""
    configured = node_config.get(STATE_DIR_CONFIG) or os.environ.get(STATE_DIR_ENV)
    if configured:
        return Path(str(configured)).expanduser()
    home = os.environ.get("FLWR_HOME") or str(Path.home() / ".flwr")
    return Path(home).expanduser() / "securefl-state"


def federation_key(run_id: int, run_config: Mapping[str, Any]) -> str:
    """The federation a node's accountant belongs to: the run config's
    ``federation-id`` when set (the operator keeps it across a resumed run),
    else ``flower-run-<run id>-<digest of the run config>``."""
    named = run_config.get(FEDERATION_ID_RUN_CONFIG)
    if isinstance(named, str) and named:
        return named
    config = hashlib.sha256(_canonical(
        {str(k): v if isinstance(v, bool | int | float | str) else str(v)
         for k, v in run_config.items()})).hexdigest()[:16]
    return f"flower-run-{int(run_id)}-{config}"


class NodeAccountantStore:
    """A node's accountant files for one federation and client.

    Args:
        directory: the state directory (:func:`state_dir`).
        federation: the :func:`federation_key`.
        client_id: the node's protocol client id.
    """

    def __init__(self, directory: str | os.PathLike[str], federation: str,
                 client_id: int) -> None:
        self.directory = Path(directory)
        self.federation = str(federation)
        self.client_id = int(client_id)
        folder = hashlib.sha256(self.federation.encode()).hexdigest()[:32]
        self.name = f"{folder}/client-{self.client_id}.json"
        self.path = self.directory / self.name
        self.index_path = self.directory / "index.json"

    def __repr__(self) -> str:
        return f"NodeAccountantStore({str(self.path)!r})"

    # -- the refusal rule ---------------------------------------------------------------

    def load(self, fl_round: int, *, allow_fresh: bool = False, first_seen: int | None = None,
             witnessed: int = 0) -> NodeAccountantState:
        """The state, or a fresh one where the rule allows (module docstring).

        Args:
            fl_round: the federation round the node is asked to train in.
            allow_fresh: the operator's ``securefl-state-allow-fresh``.
            first_seen: the first round this SuperNode process saw in the
                federation (None: ``fl_round``).
            witnessed: how many charges this SuperNode process saw in the
                file after its last write.

        Raises:
            NodeStateError: ``corrupt`` or ``lost``.
        """
        def refuse(rule: NodeStateRule, detail: str) -> NodeStateError:
            return NodeStateError(rule, detail, client_id=self.client_id,
                                  fl_round=int(fl_round))

        listed = self._index(int(fl_round))
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            raw = None
        except OSError as exc:
            raise refuse(NodeStateRule.CORRUPT, f"cannot read {self.path}: {exc}") from None
        if raw is None:
            if self.name in listed:
                raise refuse(NodeStateRule.LOST, f"{self.path} is missing, but the node's"
                                                 f" index {self.index_path} names it")
            if witnessed > 0:
                raise refuse(NodeStateRule.LOST, f"{self.path} is missing, but this SuperNode"
                                                 f" wrote {witnessed} charges to it")
            first = int(fl_round) if first_seen is None else int(first_seen)
            if first > 1 and not allow_fresh:
                raise refuse(NodeStateRule.LOST,
                             f"no accountant in {self.path} for federation"
                             f" {self.federation!r}, and this SuperNode first saw the"
                             f" federation in round {first}: if it trained in an earlier"
                             f" round, its record is gone (set node config"
                             f" {ALLOW_FRESH_STATE_CONFIG}=true only if it never trained in"
                             " this federation)")
            return NodeAccountantState(self.federation, self.client_id)
        try:
            state = NodeAccountantState.from_bytes(raw)
        except ValueError as exc:
            raise refuse(NodeStateRule.CORRUPT, f"{self.path}: {exc}") from None
        if state.federation != self.federation or state.client_id != self.client_id:
            raise refuse(NodeStateRule.CORRUPT,
                         f"{self.path} is the accountant of client {state.client_id} in"
                         f" federation {state.federation!r}")
        if len(state.charges) < witnessed:
            raise refuse(NodeStateRule.LOST,
                         f"{self.path} holds {len(state.charges)} charges, but this SuperNode"
                         f" wrote {witnessed}: it was replaced by an older copy")
        return state

    def _index(self, fl_round: int) -> set[str]:
        try:
            raw = self.index_path.read_bytes()
        except FileNotFoundError:
            return set()
        except OSError as exc:
            raise NodeStateError(NodeStateRule.CORRUPT, f"cannot read {self.index_path}: {exc}",
                                 client_id=self.client_id, fl_round=fl_round) from None
        try:
            data = _parse(raw)
            if set(data) != {"format", "states", "digest"} or data["format"] != INDEX_FORMAT:
                raise ValueError("not an index of this format")
            digest = data.pop("digest")
            if digest != _digest(data):
                raise ValueError("digest mismatch")
            states = _list(data["states"])
            if not all(isinstance(s, str) for s in states):
                raise ValueError("bad entry")
        except ValueError as exc:
            raise NodeStateError(NodeStateRule.CORRUPT, f"{self.index_path}: {exc}",
                                 client_id=self.client_id, fl_round=fl_round) from None
        return set(states)

    # -- writing ------------------------------------------------------------------------

    def save(self, state: NodeAccountantState) -> None:
        """Write ``state`` atomically and durably, then list it in the index
        (file first: a crash in between leaves a file the index does not
        name, which loads; never an index naming a file that was never
        written)."""
        if state.federation != self.federation or state.client_id != self.client_id:
            raise ValueError("state of another federation or client")
        data = state.to_bytes()

        def write(handle: BinaryIO) -> None:
            handle.write(data)

        atomic_write(self.path, write)
        listed = self._index(state.charges[-1].round if state.charges else 0)
        if self.name not in listed:
            body: dict[str, Any] = {"format": INDEX_FORMAT,
                                    "states": sorted(listed | {self.name})}
            body["digest"] = _digest(body)
            index = _canonical(body)

            def write_index(handle: BinaryIO) -> None:
                handle.write(index)

            atomic_write(self.index_path, write_index)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an exclusive lock on this federation's folder (a ``flock``,
        released by the kernel if the process dies)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path.parent / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def charge(self, state: NodeAccountantState, fl_round: int,
               rows: Sequence[HistoryRow]) -> NodeAccountantState:
        """Durably charge ``rows`` for ``fl_round`` as in-flight (before
        training) and return the new state."""
        new = _with(state, RoundCharge(int(fl_round), ChargeStatus.IN_FLIGHT,
                                       tuple(_row(r) for r in rows)))
        self.save(new)
        return new

    def settle(self, state: NodeAccountantState, rows: Sequence[HistoryRow], *,
               generators: Mapping[str, bytes] | None = None) -> NodeAccountantState:
        """Settle the last charge (in-flight) with the rows actually trained.

        Raises:
            ValueError: the last charge is not in flight.
        """
        if not state.charges or state.charges[-1].status is not ChargeStatus.IN_FLIGHT:
            raise ValueError("no charge in flight to settle")
        last = state.charges[-1]
        new = NodeAccountantState(
            state.federation, state.client_id,
            (*state.charges[:-1], RoundCharge(last.round, ChargeStatus.SETTLED,
                                              tuple(_row(r) for r in rows))),
            dict(generators) if generators is not None else dict(state.generators))
        self.save(new)
        return new

    def refuse_budget(self, state: NodeAccountantState, fl_round: int) -> NodeAccountantState:
        """Record that the budget guard refused ``fl_round`` (nothing spent)."""
        new = _with(state, RoundCharge(int(fl_round), ChargeStatus.REFUSED_BUDGET, ()))
        self.save(new)
        return new


def _row(row: HistoryRow) -> HistoryRow:
    return (float(row[0]), float(row[1]), int(row[2]))


def _with(state: NodeAccountantState, charge: RoundCharge) -> NodeAccountantState:
    return NodeAccountantState(state.federation, state.client_id, (*state.charges, charge),
                               dict(state.generators))
