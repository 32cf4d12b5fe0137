"""Helpers for the securefl-on-Flower tests.

* :class:`InProcessGrid`: a Flower ``Grid`` that runs ClientApps in this
  process (messages go through Flower's protobuf serde and every call gets a
  copy of the node's Context, as a fresh ClientApp process would), with
  scheduled node deaths, and a log of every reply the nodes sent.
* :data:`SEMI_HONEST_OPT_IN`: the node config by which a test node's
  operator opts in to semi-honest mode over unauthenticated (in-process)
  channels; :func:`node_configs` adds it to every node.
* :func:`recording_app`: the example ClientApp with a recorder behind the
  securefl mod (what ``train`` returned, per node and round), and
  :func:`check_exact_sum`: the server's sum is exactly the survivors'
  encoded updates, whatever their secret rounding was.
* :class:`Deployment`: a real SuperLink and SuperNodes on 127.0.0.1 in
  insecure mode, every process in its own session, all stopped (SIGTERM then
  SIGKILL by process group) when the context exits, with a /proc check for
  leftovers by the unique FLWR_HOME.  The SuperLink may keep its state in a
  database file (``database=``), be killed with everything it started
  (:meth:`Deployment.kill_superlink`, as a crash of the server machine) and
  started again on the same database (:meth:`Deployment.start_superlink`);
  :meth:`Deployment.terminate` stops it all as docs/flower.md says (SIGTERM
  to each PID) and reports what is left; :attr:`Deployment.cwd` sets the
  processes' working directory.
* :func:`simulate_reference`: the in-process simulator on the same seeds with
  a given dropout schedule, returning its metrics, final model and the exact
  integer sums.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import numpy as np
from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=E0611
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from securefl.flower.setup import RECORD, Key, Stage

REPO = Path(__file__).resolve().parents[1]
APP_DIR = REPO / "examples" / "flower_app"
_STAGES = [s.value for s in Stage]
SEMI_HONEST_OPT_IN = {"securefl-allow-unauthenticated-semi-honest": True}
"""Node config: run semi-honest mode although no channel is authenticated
(in-process tests and the insecure local deployments of the tests)."""


def node_configs(n: int, first: int = 1000, **extra: Any) -> dict[int, dict[str, Any]]:
    """Node id -> node config of ``n`` nodes that opt in to semi-honest mode
    over unauthenticated channels."""
    return {first + i: {"partition-id": i, "num-partitions": n, **SEMI_HONEST_OPT_IN, **extra}
            for i in range(n)}


def example_app() -> ClientApp:
    """The example app's ClientApp (``examples/flower_app``)."""
    import importlib

    app_dir = str(APP_DIR)
    if app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    return importlib.import_module("securefl_app.client_app").app  # type: ignore[no-any-return]


@dataclass
class Trained:
    """What one node's ``train`` returned in one round (seen behind the mod)."""

    global_arrays: list[np.ndarray]
    local_arrays: list[np.ndarray]
    metrics: dict[str, Any]


def recording_app(record: dict[tuple[int, int], Trained]) -> ClientApp:
    """The example's ClientApp (securefl_mod, then Opacus training) with a
    recorder between the mod and ``train``: ``record[(node id, round)]``."""
    from securefl.flower.client_train import train_private_client
    from securefl.flower.mod import securefl_mod

    def recorder(msg: Message, ctxt: Context, call_next: Any) -> Message:
        out = call_next(msg, ctxt)
        if not out.has_error():
            fl_round = int(msg.content.config_records[RECORD][Key.FL_ROUND])  # type: ignore[call-overload]
            metrics: dict[str, Any] = {}
            for rec in out.content.metric_records.values():
                metrics.update(rec)
            record[ctxt.node_id, fl_round] = Trained(
                msg.content.array_records["arrays"].to_numpy_ndarrays(),
                next(iter(out.content.array_records.values())).to_numpy_ndarrays(), metrics)
        return out

    app = ClientApp(mods=[securefl_mod, recorder])
    app.train()(train_private_client)
    return app


_RECORDING_CLIENT_APP = '''"""Test-only ClientApp: the example's, with a recorder between
the securefl mod and ``train`` that saves what ``train`` returned to the directory in the
node config ``test-record-dir`` (or the environment variable
SECUREFL_TEST_RECORD_DIR; written by tests/flower_harness.py)."""

import os

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from securefl.flower.mod import securefl_mod
from securefl.flower.setup import RECORD, Key


def _recorder(msg: Message, ctxt: Context, call_next) -> Message:
    out = call_next(msg, ctxt)
    directory = ctxt.node_config.get("test-record-dir",
                                     os.environ.get("SECUREFL_TEST_RECORD_DIR"))
    if directory and not out.has_error():
        fl_round = int(msg.content.config_records[RECORD][Key.FL_ROUND])
        cid = int(ctxt.node_config["partition-id"]) + 1
        metrics = {}
        for rec in out.content.metric_records.values():
            metrics.update(rec)
        arrays = {f"global_{i}": a for i, a in
                  enumerate(msg.content.array_records["arrays"].to_numpy_ndarrays())}
        local = next(iter(out.content.array_records.values())).to_numpy_ndarrays()
        arrays.update({f"local_{i}": a for i, a in enumerate(local)})
        path = os.path.join(directory, f"client-{cid}-round-{fl_round}.npz")
        np.savez(path + ".tmp.npz", weight=int(metrics.get("num-examples", 1)), **arrays)
        os.replace(path + ".tmp.npz", path)
    return out


app = ClientApp(mods=[securefl_mod, _recorder])


@app.train()
def train(msg: Message, context: Context) -> Message:
    from securefl.flower.client_train import train_private_client

    return train_private_client(msg, context)
'''


def recording_app_dir(root: Path) -> Path:
    """A copy of the example app whose ClientApp records what ``train``
    returned on each node (node config ``test-record-dir``), for
    :func:`load_recorded`; the ServerApp is the example's."""
    target = root / "recording_app"
    shutil.copytree(APP_DIR, target, ignore=shutil.ignore_patterns("__pycache__"))
    (target / "securefl_app" / "recording_client_app.py").write_text(_RECORDING_CLIENT_APP)
    pyproject = target / "pyproject.toml"
    text = pyproject.read_text()
    assert '"securefl_app.client_app:app"' in text
    pyproject.write_text(text.replace('"securefl_app.client_app:app"',
                                      '"securefl_app.recording_client_app:app"'))
    return target


def load_recorded(directory: Path) -> dict[tuple[int, int], Trained]:
    """(client id, round) -> what the node's ``train`` returned, as saved by
    the :func:`recording_app_dir` app."""
    out = {}
    for path in directory.glob("client-*-round-*.npz"):
        _, cid, _, fl_round = path.stem.split("-")
        with np.load(path) as data:
            count = sum(1 for k in data.files if k.startswith("global_"))
            out[int(cid), int(fl_round)] = Trained(
                [data[f"global_{i}"] for i in range(count)],
                [data[f"local_{i}"] for i in range(count)], {"num-examples": int(data["weight"])})
    return out


class _Constant:
    def __init__(self, value: float) -> None:
        self.value = value

    def random(self, size: int) -> np.ndarray:
        return np.full(size, self.value)


def check_exact_sum(total: np.ndarray, codec: Any, trained: Iterable[Trained]) -> None:
    """Assert that ``total`` is exactly the sum mod 2^bits of the encodings of
    ``trained`` updates, each rounded up or down as stochastic rounding may
    (the rounding is the nodes' secret): coordinate-wise, ``total - sum of
    rounded-down encodings`` lies in ``[0, number of updates rounded up
    there]``, and the weight slot is exact."""
    mask = np.uint64((1 << codec.bits) - 1) if codec.bits < 64 else np.uint64(2**64 - 1)
    low = np.zeros(codec.vector_length, dtype=np.uint64)
    span = np.zeros(codec.vector_length, dtype=np.uint64)
    count = 0
    for t in trained:
        update = [np.subtract(lo, gl.astype(lo.dtype)) for lo, gl in
                  zip(t.local_arrays, t.global_arrays, strict=True)]
        weight = int(t.metrics.get("num-examples", 1))
        down = codec.encode(update, _Constant(1.0), weight=weight).vector
        up = codec.encode(update, _Constant(0.0), weight=weight).vector
        low = (low + down) & mask
        span = span + ((up - down) & mask)
        count += 1
    assert count >= 1
    assert int(span.max()) <= count and int(span[-1]) == 0
    diff = (np.asarray(total, dtype=np.uint64) - low) & mask
    assert np.all(diff <= span), "the sum is not the survivors' encoded updates"


def _roundtrip(msg: Message) -> Message:
    proto = ProtoMessage()
    proto.ParseFromString(message_to_proto(msg).SerializeToString())
    return message_from_proto(proto)


class InProcessGrid(Grid):
    """Calls each node's ClientApp in process.

    Args:
        app: the ClientApp.
        node_configs: node id -> node config (e.g. ``{"partition-id": 0}``).
        run_config: the run config every Context carries.
        deaths: node id -> (federation round, stage value): from that message
            on the node never answers and is no longer listed.
        silent: (node id, federation round, stage value) messages that get
            no reply (the node stays online).
        answer_for_dead: a dead or silent node's message gets an error reply
            at once, as the SuperLink gives for a SuperNode stopped with
            SIGTERM ("Node Unavailable"); False: no reply at all (SIGKILL,
            the round waits for its timeout).
    """

    def __init__(self, app: ClientApp, node_configs: Mapping[int, dict[str, Any]],
                 run_config: dict[str, Any],
                 deaths: Mapping[int, tuple[int, str]] | None = None,
                 silent: Iterable[tuple[int, int, str]] = (),
                 answer_for_dead: bool = True) -> None:
        self._run = Run.create_empty(7)
        self._app = app
        self._contexts = {n: Context(run_id=7, node_id=n, node_config=dict(c),
                                     state=RecordDict(), run_config=dict(run_config))
                          for n, c in node_configs.items()}
        self._deaths = dict(deaths or {})
        self._dead: set[int] = set()
        self._silent = set(silent)
        self._answer_for_dead = answer_for_dead
        self._replies: dict[str, Message] = {}
        self.sent: list[tuple[int, str, int]] = []
        self.replies: list[tuple[int, str, int, Message]] = []
        """(node, stage, federation round, reply) of every reply a ClientApp
        sent, as the SuperLink received it (after the protobuf round trip)."""

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return [n for n in self._contexts if n not in self._dead]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return [self._deliver(m) for m in messages]

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(m) for m in list(message_ids) if m in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def _deliver(self, msg: Message) -> str:
        msg.metadata.__dict__["_message_id"] = str(uuid4())
        mid = msg.metadata.message_id
        node = msg.metadata.dst_node_id
        record = msg.content.config_records[RECORD]
        stage, fl_round = str(record[Key.STAGE]), int(record[Key.FL_ROUND])
        self.sent.append((node, stage, fl_round))
        death = self._deaths.get(node)
        if death is not None and (fl_round, _STAGES.index(stage)) >= (
                death[0], _STAGES.index(death[1])):
            self._dead.add(node)
        if node in self._dead or (node, fl_round, stage) in self._silent:
            if self._answer_for_dead:
                self._replies[mid] = Message(Error(code=ErrorCode.NODE_UNAVAILABLE,
                                                   reason="Node Unavailable"), reply_to=msg)
            return mid
        delivered = _roundtrip(msg)
        context = copy.deepcopy(self._contexts[node])  # a fresh process sees a copy
        try:
            reply = self._app(delivered, context)
        except Exception as exc:  # a SuperNode turns exceptions into error replies
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                  reason=f"{type(exc).__name__}: {exc}"), reply_to=delivered)
        self._contexts[node] = context
        self._replies[mid] = _roundtrip(reply)
        self.replies.append((node, stage, fl_round, _roundtrip(reply)))
        return mid

    def state_of(self, node: int) -> RecordDict:
        return self._contexts[node].state


# -- the in-process simulator as the reference ------------------------------------------


@dataclass
class Reference:
    metrics: dict[str, Any]
    sums: dict[int, np.ndarray]
    model_state: dict[str, Any]
    ledger: list[Any] = field(default_factory=list)


def simulate_reference(run_config: Mapping[str, Any], schedule: list[dict[int, Any]],
                       out: Path) -> Reference:
    """``run_simulation`` on the config the Flower run used, with the given
    dropout schedule, recording the exact integer sum of every round."""
    import torch  # noqa: F401  (loaded by the simulator anyway)

    import securefl.federation.server as server_module
    import securefl.federation.simulation as sim
    from securefl.federation.checkpoint import load_checkpoint
    from securefl.flower.federation import simulation_config
    from securefl.privacy.ledger import read_ledger

    config = simulation_config(run_config)
    sums: dict[int, np.ndarray] = {}
    original_sum = server_module.secure_sum
    original_schedule = sim.dropout_schedule

    def recording_sum(inputs: Any, cfg: Any, dropouts: Any = None, **kw: Any) -> Any:
        result = original_sum(inputs, cfg, dropouts, **kw)
        round_number = int(cfg.context.decode().rsplit(" ", 1)[1])
        sums[round_number] = np.array(result.total, copy=True)
        return result

    server_module.secure_sum = recording_sum  # type: ignore[assignment]
    sim.dropout_schedule = lambda _cfg: [dict(s) for s in schedule]  # type: ignore[assignment]
    try:
        result = sim.run_simulation(config, out)
    finally:
        server_module.secure_sum = original_sum  # type: ignore[assignment]
        sim.dropout_schedule = original_schedule  # type: ignore[assignment]
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    return Reference(metrics=result.metrics, sums=sums,
                     model_state=checkpoint["model"],
                     ledger=read_ledger(out / "ledger.jsonl"))


# -- a real deployment ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _bin(name: str) -> str:
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(name)
    return found


def leftovers(marker: str) -> list[int]:
    """PIDs of live processes whose environment holds ``marker``."""
    found = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                status = (entry / "status").read_text()
                if "\nState:\tZ" not in status:
                    found.append(int(entry.name))
        except OSError:
            continue
    return found


def descendants(pid: int) -> list[int]:
    """PIDs of every live descendant of ``pid`` (by parent PID, /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Deployment:
    """A SuperLink and ``num_nodes`` SuperNodes on 127.0.0.1 (insecure).

    Use as a context manager; every process it started is stopped on exit,
    also on failure; :attr:`leftover` lists any process that survived.
    """

    def __init__(self, num_nodes: int, *, node_configs: list[str] | None = None,
                 simulation: bool = False, database: Path | None = None) -> None:
        self.num_nodes = num_nodes
        self.simulation = simulation
        self.database = database
        """The SuperLink's persistent state (``--database``); None: in memory."""
        self.node_configs = [] if simulation else (node_configs or [
            f"partition-id={i} num-partitions={num_nodes}"
            " securefl-allow-unauthenticated-semi-honest=true" for i in range(num_nodes)])
        self.root = Path(tempfile.mkdtemp(prefix="securefl-flwr-"))
        self.home = self.root / f"flwr-home-{uuid4().hex}"
        self.home.mkdir()
        self.superlink: subprocess.Popen[bytes] | None = None
        self.supernodes: list[subprocess.Popen[bytes]] = []
        self._others: list[subprocess.Popen[bytes]] = []
        self._stopped_superlinks: list[subprocess.Popen[bytes]] = []
        self.leftover: list[int] = []
        self.env = {**os.environ, "FLWR_HOME": str(self.home), "FLWR_TELEMETRY_ENABLED": "0",
                    "FLWR_DISABLE_UPDATE_CHECK": "1", "PYTHONUNBUFFERED": "1",
                    "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                    # SuperExec launches ClientApp/ServerApp processes; default poll 1 s
                    "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.5"}
        self.env["PATH"] = f"{Path(sys.executable).parent}:{self.env.get('PATH', '')}"
        # the processes import securefl from this checkout, whatever is installed
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
        self.port = free_port()
        self.logs = self.root / "logs"
        self.logs.mkdir()
        self.cwd: Path | None = None
        """The working directory of every process started (None: this one's)."""

    # lifecycle
    def __enter__(self) -> Deployment:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        handle = open(self.logs / log, "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(args, env=self.env, stdout=handle, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.cwd)
        handle.close()
        return proc

    def start(self, ready_timeout: float = 60.0) -> None:
        (self.home / "config.toml").write_text(
            '[superlink]\ndefault = "it"\n\n[superlink.it]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n')
        self.start_superlink(ready_timeout)
        for i, node_config in enumerate(self.node_configs):
            port = free_port()
            self.supernodes.append(self._spawn(
                [_bin("flower-supernode"), "--insecure", "--superlink",
                 f"127.0.0.1:{self.port}", "--host", "127.0.0.1", "--port", str(port),
                 "--node-config", node_config], f"supernode-{i}.log"))
        deadline = time.monotonic() + ready_timeout
        while self.node_configs and time.monotonic() < deadline:
            if self.online_nodes() >= len(self.node_configs):
                return
            time.sleep(1.0)  # each `flwr supernode list` costs about 1 s of CPU
        if self.node_configs:
            raise TimeoutError(f"SuperNodes not online after {ready_timeout} s;"
                               f" logs in {self.logs}")

    def start_superlink(self, ready_timeout: float = 60.0) -> None:
        """Start the SuperLink (on its ``database`` if set) and wait until it
        answers ``/health``; each start logs to ``superlink-<n>.log``."""
        self._superlink_starts = getattr(self, "_superlink_starts", 0) + 1
        if self.superlink is not None:
            self._stopped_superlinks.append(self.superlink)
        database = ["--database", str(self.database)] if self.database is not None else []
        self.superlink = self._spawn(
            [_bin("flower-superlink"), "--insecure", "--disable-runtime-dependency-installation",
             *(["--simulation"] if self.simulation else []), *database,
             "--host", "127.0.0.1", "--port", str(self.port)],
            "superlink.log" if self._superlink_starts == 1
            else f"superlink-{self._superlink_starts}.log")
        self._wait_health(self.port, ready_timeout)

    def kill_superlink(self, sig: int = signal.SIGKILL) -> list[int]:
        """Send ``sig`` at once to the SuperLink and every process it started
        (its SuperExec, which Flower starts in a session of its own, and the
        ServerApp process), as a crash of the server machine would, and reap
        the SuperLink.  Returns the PIDs signalled."""
        assert self.superlink is not None
        pids = [self.superlink.pid, *descendants(self.superlink.pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        self.superlink.wait(timeout=30)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.superlink.pid, signal.SIGKILL)
        return pids

    def _wait_health(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.superlink is not None
            if self.superlink.poll() is not None:
                raise RuntimeError(f"SuperLink exited: {self.log('superlink.log')[-2000:]}")
            with contextlib.suppress(OSError), urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/health", timeout=1) as response:
                if response.status == 200:
                    return
            time.sleep(0.2)
        raise TimeoutError("SuperLink not healthy")

    def flwr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([_bin("flwr"), *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def online_nodes(self) -> int:
        done = self.flwr("supernode", "list", "it", "--format", "json", timeout=30)
        try:
            data = json.loads(done.stdout)
        except json.JSONDecodeError:
            return 0
        nodes = data.get("nodes", data if isinstance(data, list) else [])
        return sum(1 for n in nodes if "online" in json.dumps(n).lower())

    def run_app(self, app_dir: Path, run_config: Mapping[str, Any],
                log: str = "flwr-run.log",
                federation_config: str | None = None,
                runner: bool = False) -> subprocess.Popen[bytes]:
        """Start ``flwr run APP it --stream --run-config ...`` (in its own
        session; stopped with the deployment); ``runner``: through
        ``python -m securefl.flower.runner``, which exits non-zero unless the
        run finished completed."""
        items = []
        for key, value in run_config.items():
            if isinstance(value, bool):
                items.append(f"{key}={'true' if value else 'false'}")
            elif isinstance(value, str):
                items.append(f'{key}="{value}"')
            else:
                items.append(f"{key}={value}")
        extra = ["--federation-config", federation_config] if federation_config else []
        command = ([sys.executable, "-m", "securefl.flower.runner"] if runner
                   else [_bin("flwr"), "run"])
        proc = self._spawn([*command, str(app_dir), "it", "--stream",
                            "--run-config", " ".join(items), *extra], log)
        self._others.append(proc)
        return proc

    def runs(self) -> list[dict[str, Any]]:
        done = self.flwr("list", "it", "--format", "json", timeout=30)
        try:
            return list(json.loads(done.stdout).get("runs", []))
        except (json.JSONDecodeError, AttributeError):
            return []

    def kill_node(self, index: int, sig: int = signal.SIGTERM) -> None:
        """Stop SuperNode ``index`` (its whole process group) and reap it."""
        proc = self.supernodes[index]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)

    def terminate(self, timeout: float = 30.0) -> tuple[list[str], list[int]]:
        """Stop the deployment as docs/flower.md says: SIGTERM to each
        SuperNode's PID, then to the SuperLink's (not to their process
        groups), and wait for them; processes of the deployment still alive
        ``timeout`` seconds later (their SuperExecs and app processes should
        exit by themselves) get SIGTERM by PID too.  Returns (the processes
        that needed it, described; the processes still alive after that)."""
        for proc in [*self.supernodes, *([self.superlink] if self.superlink else [])]:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=timeout)
        marker = str(self.home)
        deadline = time.monotonic() + timeout
        while (left := leftovers(marker)) and time.monotonic() < deadline:
            time.sleep(0.3)
        lingering = self.describe(left)
        for pid in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while (left := leftovers(marker)) and time.monotonic() < deadline:
            time.sleep(0.3)
        return lingering, left

    @staticmethod
    def describe(pids: list[int]) -> list[str]:
        """``pid ppid(state) command line`` of each process, for failure messages."""
        out = []
        for pid in pids:
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                status = Path(f"/proc/{pid}/status").read_text()
                ppid = int(status.split("\nPPid:\t", 1)[1].split()[0])
                parent = Path(f"/proc/{ppid}/status").read_text().split("\nState:\t", 1)[1][:1]
            except (OSError, IndexError, ValueError):
                out.append(f"{pid} (gone)")
                continue
            out.append(f"{pid} {ppid}({parent}) {cmd.decode(errors='replace')[:160]}")
        return out

    def log(self, name: str) -> str:
        path = self.logs / name
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM every process group (runs, SuperNodes, then the SuperLink),
        SIGKILL after a grace period, check /proc, delete the temp dir."""
        groups = [*getattr(self, "_others", []), *self.supernodes,
                  *getattr(self, "_stopped_superlinks", [])]
        if self.superlink is not None:
            groups.append(self.superlink)
        for proc in groups:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in groups:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in groups:
            # the group may outlive its leader: always sweep it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        marker = str(self.home)
        deadline = time.monotonic() + 10
        while (left := leftovers(marker)) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        self.leftover = leftovers(marker)
        if os.environ.get("SECUREFL_KEEP_FLOWER_LOGS"):
            return
        shutil.rmtree(self.root, ignore_errors=True)


def server_task_identity(run_id: int = 7) -> contextlib.AbstractContextManager[None]:
    """Set the process identity a ServerApp process has (Message() needs it)."""
    from securefl.bench.flower import server_task_identity as identity

    return identity(run_id)
