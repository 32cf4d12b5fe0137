"""The Flower ServerApp's run directory, exit status and resume.

* The example app runs with its own defaults: its run config has every key
  the ServerApp reads, and with no ``output-dir`` the ServerApp picks a fresh
  directory (never an existing one) and says which.
* ``python -m securefl.flower.runner`` exits non-zero when the run did not
  finish completed (``flwr run`` itself exits 0 when the ServerApp raised),
  played with a stand-in ``flwr`` executable.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import stat
import sys
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import tomllib

pytest.importorskip("flwr", reason="flwr is not installed (pip install 'securefl[flower]')")

from flower_harness import APP_DIR, Deployment, InProcessGrid
from flwr.app import Context, RecordDict

from securefl.cli.audit import audit_run
from securefl.errors import ConfigurationError
from securefl.federation.runstore import ResumeMismatchError
from securefl.flower.runner import RUNS_DIR_ENV, main, resolve_output_dir
from securefl.privacy.ledger import load_ledger

torch = pytest.importorskip("torch")

NOW = datetime(2026, 12, 2, 3, 4, 5, tzinfo=timezone.utc)


def _app_config() -> dict[str, Any]:
    data = tomllib.loads((APP_DIR / "pyproject.toml").read_text())
    return dict(data["tool"]["flwr"]["app"]["config"])


def test_example_run_config_has_defaults_for_output_and_resume() -> None:
    config = _app_config()
    assert config["output-dir"] == "" and config["resume"] is False
    assert config["federation-id"] == ""
    from securefl.flower.federation import simulation_config

    simulation_config(config)  # every value the federation reads is valid as shipped


def test_no_output_dir_picks_a_fresh_directory_under_the_runs_root(tmp_path: Path) -> None:
    env = {RUNS_DIR_ENV: str(tmp_path / "runs")}
    out, resume = resolve_output_dir(_app_config(), 17, now=NOW, environ=env)
    assert (out, resume) == (tmp_path / "runs" / "20261202-030405-run17", False)
    out.mkdir(parents=True)  # the same second and run id again: never the same directory
    again, _ = resolve_output_dir(_app_config(), 17, now=NOW, environ=env)
    assert again != out and not again.exists() and again.parent == out.parent


def test_default_runs_root_is_relative_to_the_working_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    out, _ = resolve_output_dir({"output-dir": ""}, 3, now=NOW, environ={})
    assert out == tmp_path / "securefl-runs" / "20261202-030405-run3"


def test_resume_needs_the_directory_of_an_existing_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="needs output-dir"):
        resolve_output_dir({"resume": True, "output-dir": ""}, 1)
    with pytest.raises(ConfigurationError, match="does not exist"):
        resolve_output_dir({"resume": True, "output-dir": str(tmp_path / "nope")}, 1)
    assert resolve_output_dir({"resume": True, "output-dir": str(tmp_path)}, 1) == (
        tmp_path, True)


def test_example_serverapp_without_output_dir_writes_to_a_fresh_printed_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    import importlib

    if str(APP_DIR) not in sys.path:
        sys.path.insert(0, str(APP_DIR))
    server_app = importlib.import_module("securefl_app.server_app")
    seen: list[Context] = []
    monkeypatch.setattr(server_app, "run_federation", lambda grid, ctx: seen.append(ctx))
    monkeypatch.setenv(RUNS_DIR_ENV, str(tmp_path / "runs"))
    existing = tmp_path / "runs" / "old"
    existing.mkdir(parents=True)
    context = Context(run_id=99, node_id=0, node_config={}, state=RecordDict(),
                      run_config=_app_config())
    server_app.main(None, context)
    (ctx,) = seen
    out = Path(str(ctx.run_config["output-dir"]))
    assert out.parent == tmp_path / "runs" and out.name.endswith("-run99")
    assert not out.exists()  # fresh: run_federation creates it
    assert context.run_config["output-dir"] == ""  # the caller's context is untouched
    assert f"writing to {out}" in capsys.readouterr().out


_FAKE_FLWR = '''#!{python}
import json, os, sys
args = sys.argv[1:]
if args[0] == "run":
    print("Loading project configuration...")
    if os.environ.get("FAKE_NO_RUN"):
        sys.exit(0)
    print("Successfully started run 4242")
    print("ServerApp output line")
    sys.exit(0)  # flwr run --stream exits 0 whatever the run's fate
if args[0] == "list":
    assert args[1:] == ["it", "--run-id", "4242", "--format", "json"], args
    if os.environ["FAKE_STATUS"] == "unreachable":  # what flwr list says, exit 0
        print(json.dumps({{"success": False, "error-message": "Connection to the SuperLink"
                                                              " is unavailable."}}))
        sys.exit(0)
    print(json.dumps({{"success": True, "runs": [{{"run-id": "4242",
          "status": os.environ["FAKE_STATUS"], "status-details": "ServerApp raised"}}]}}))
'''


@pytest.mark.parametrize(("status", "no_run", "code"), [
    ("finished:completed", False, 0),
    ("finished:failed", False, 1),
    ("finished:stopped", False, 1),
    ("finished:completed", True, 1),
    ("unreachable", False, 1),
])
def test_runner_exits_non_zero_unless_the_run_completed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        status: str, no_run: bool, code: int) -> None:
    fake = tmp_path / "flwr"
    fake.write_text(_FAKE_FLWR.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("FAKE_STATUS", status)
    if no_run:
        monkeypatch.setenv("FAKE_NO_RUN", "1")
    else:
        monkeypatch.delenv("FAKE_NO_RUN", raising=False)
    assert main(["app", "it", "--stream"], flwr=str(fake), poll_seconds=0.01) == code
    captured = capsys.readouterr()
    if not no_run:
        assert "ServerApp output line" in captured.out  # the stream is passed through
    if code:
        expected = {"unreachable": "Connection to the SuperLink is unavailable"}.get(
            status, status)
        assert ("started no run" if no_run else expected) in captured.err


def test_runner_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--stream"]) == 2
    assert main(["app"]) == 2
    assert "usage" in capsys.readouterr().err


# -- resume in process: the ServerApp dies mid-run, a new run continues it -------------


class _Killed(BaseException):
    """Stands for a SIGKILL of the ServerApp: nothing in it catches this."""


class _DyingGrid(InProcessGrid):
    """Raises :class:`_Killed` when the ServerApp is about to send ``stage``
    of federation round ``fl_round`` (the event, and so the in-flight rows
    of the masked-input stage, is already written)."""

    def __init__(self, *args: Any, die_at: tuple[int, str], **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._die_at = die_at

    def _deliver(self, msg: Any) -> str:
        from securefl.flower.setup import RECORD, Key

        record = msg.content.config_records[RECORD]
        if (int(record[Key.FL_ROUND]), str(record[Key.STAGE])) == self._die_at:
            raise _Killed
        return super()._deliver(msg)


RESUME_RUN: dict[str, Any] = {"num-rounds": 3, "num-clients": 3, "seed": 4,
                              "noise-multiplier": 1.1, "hidden": 8, "batch-size": 32,
                              "round-timeout": 30.0, "allow-unauthenticated-semi-honest": True,
                              "federation-id": "resume-test"}


def _server_context(run_config: dict[str, Any], run_id: int = 7) -> Context:
    return Context(run_id=run_id, node_id=0, node_config={}, state=RecordDict(),
                   run_config=run_config)


def _settled(out: Path) -> list[Any]:
    return [r for r in load_ledger(out / "ledger.jsonl").records if not r.in_flight]


@pytest.mark.parametrize(("stage", "interrupted"), [
    ("masked-input-collection", True),   # in-flight rows written: the round is settled
    ("advertise-keys", False),           # nothing of round 2 written yet
])
def test_serverapp_killed_in_round_2_resumes_to_the_end(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], stage: str,
        interrupted: bool) -> None:
    from flower_harness import example_app, node_configs, server_task_identity

    from securefl.flower.federation import run_federation

    torch.set_num_threads(1)
    out = tmp_path / "run"
    run_config = {**RESUME_RUN, "output-dir": str(out)}
    with server_task_identity():
        grid = _DyingGrid(example_app(), node_configs(3), run_config, die_at=(2, stage))
        with pytest.raises(_Killed):
            run_federation(grid, _server_context(run_config))
        assert [r.round for r in _settled(out)] == [1, 1, 1]
        # a new Flower run (new run id, fresh node contexts) into the same directory
        with pytest.raises(ConfigurationError, match="resume"):
            run_federation(InProcessGrid(example_app(), node_configs(3), run_config),
                           _server_context(run_config, 8))
        with pytest.raises(ConfigurationError, match="seed"):
            run_federation(InProcessGrid(example_app(), node_configs(3), run_config),
                           _server_context({**run_config, "seed": 5, "resume": True}, 8))
        with pytest.raises(ConfigurationError, match="federation-id"):
            run_federation(InProcessGrid(example_app(), node_configs(3), run_config),
                           _server_context({**run_config, "federation-id": "other",
                                            "resume": True}, 8))
        if interrupted:  # once is enough: another security mode is refused too
            from securefl.flower import provision_identities

            provision_identities(tmp_path / "keys", range(1, 4))
            with pytest.raises(ResumeMismatchError, match="security mode"):
                run_federation(InProcessGrid(example_app(), node_configs(3), run_config),
                               _server_context({**run_config, "resume": True, "mode": "active",
                                                "pinned-keys": str(tmp_path / "keys"
                                                                   / "pinned.json")}, 8))
        capsys.readouterr()
        resumed = {**run_config, "resume": True}
        run_federation(InProcessGrid(example_app(), node_configs(3), resumed),
                       _server_context(resumed, 9))
    table = capsys.readouterr().out
    audit = audit_run(out)
    assert audit["verified"], audit["violations"]
    settled = _settled(out)
    last = 4 if interrupted else 3
    assert sorted({r.round for r in settled}) == list(range(1, last + 1))  # no gap
    for number in range(1, last + 1):  # no duplicate: one settled row per client per round
        assert sorted(r.client_id for r in settled if r.round == number) == [1, 2, 3]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final"]["rounds_completed"] == 3
    rounds = metrics["rounds"]
    assert [r["aborted"] for r in rounds] == ([False, True, False, False] if interrupted
                                              else [False, False, False])
    by = {(r.round, r.client_id): r for r in settled}
    steps = by[1, 1].local_steps
    for cid in (1, 2, 3):
        if interrupted:  # trained, maybe, before the kill: the charge is kept
            assert by[2, cid].status == "round-aborted" and by[2, cid].local_steps == steps
        # the history composes every charged round: nothing reset on resume
        total = steps * (4 if interrupted else 3)
        assert sum(h[2] for h in by[last, cid].history) == total
    assert "max eps" in table  # the resumed run prints its rounds, the interrupted one too
    starts = {line.split()[0] for line in table.splitlines() if line.split()}
    assert {str(n) for n in range(2, last + 1)} <= starts


def test_a_run_started_without_federation_id_is_not_resumed(tmp_path: Path) -> None:
    """Its nodes keep their accountants under the Flower run id, which the
    resumed run does not have: the ServerApp refuses before any round."""
    from flower_harness import example_app, node_configs, server_task_identity

    from securefl.flower.federation import run_federation

    out = tmp_path / "run"
    run_config = {**RESUME_RUN, "federation-id": "", "output-dir": str(out)}
    with server_task_identity():
        grid = _DyingGrid(example_app(), node_configs(3), run_config,
                          die_at=(1, "advertise-keys"))
        with pytest.raises(_Killed):
            run_federation(grid, _server_context(run_config))
        with pytest.raises(ConfigurationError, match="without run config federation-id"):
            run_federation(InProcessGrid(example_app(), node_configs(3), run_config),
                           _server_context({**run_config, "resume": True}, 8))
    assert not _settled(out)


# -- a real deployment: SIGKILL the SuperLink mid-run, restart it, resume ---------------


def _need_binaries() -> None:
    for name in ("flower-superlink", "flower-supernode", "flwr"):
        if shutil.which(name) is None and not (Path(sys.executable).parent / name).exists():
            pytest.skip(f"{name} is not on PATH")


def _settled_rounds(out: Path) -> int:
    try:
        return len(json.loads((out / "metrics.json").read_text())["rounds"])
    except (OSError, ValueError, KeyError):
        return 0


def _wait(predicate: Callable[[], bool], timeout: float, what: str,
          deployment: Deployment, log: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{deployment.log(log)[-3000:]}")


@pytest.mark.flower_runtime
def test_superlink_killed_mid_run_restarts_on_its_database_and_the_run_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SuperLink with a persistent database, three SuperNodes, a 3-round run
    through ``python -m securefl.flower.runner`` with no output-dir (the
    ServerApp picks and prints a fresh directory under the SuperLink's
    working directory); after round 1 is committed
    the SuperLink and everything it started (SuperExec, ServerApp) get
    SIGKILL.  The first command exits non-zero; the SuperLink restarts on the
    same database, the SuperNodes (never restarted) are still registered and
    online, and ``resume = true`` into the same directory finishes the run:
    one settled block per round, no gap, no duplicate, the audit verifies,
    every client's history covers every round it was charged for; the
    resumed run's table shows in the stream; the documented stop (SIGTERM to
    each SuperNode, then the SuperLink) leaves no process."""
    _need_binaries()
    torch.set_num_threads(1)
    monkeypatch.delenv(RUNS_DIR_ENV, raising=False)
    run_config: dict[str, Any] = {
        "num-rounds": 3, "num-clients": 3, "seed": 5, "noise-multiplier": 1.1, "hidden": 8,
        "batch-size": 32, "round-timeout": 60.0, "allow-unauthenticated-semi-honest": True,
        "federation-id": "resume-runtime-test"}
    # the resumed run charges the interrupted round again (and, rarely, an
    # aborted one): up to five charges at sigma 1.1 may pass the nodes' default
    # budget (epsilon 10), so they allow more, explicitly
    deployment = Deployment(3, database=tmp_path / "superlink.db", node_configs=[
        f"partition-id={i} num-partitions=3 securefl-allow-unauthenticated-semi-honest=true"
        " securefl-max-epsilon=20.0" for i in range(3)])
    deployment.cwd = tmp_path / "superlink-cwd"
    deployment.cwd.mkdir()
    written = re.compile(r"securefl: writing to (\S+)")
    with deployment:
        # no output-dir: the ServerApp picks a fresh directory and says which
        first = deployment.run_app(APP_DIR, run_config, runner=True)
        _wait(lambda: written.search(deployment.log("flwr-run.log")) is not None, 300,
              "the ServerApp to name its run directory", deployment, "flwr-run.log")
        found = written.search(deployment.log("flwr-run.log"))
        assert found is not None
        out = Path(found.group(1))
        assert out.parent == deployment.cwd / "securefl-runs"
        _wait(lambda: _settled_rounds(out) >= 1, 400, "round 1 to be committed", deployment,
              "flwr-run.log")
        deployment.kill_superlink()
        assert first.wait(timeout=120) != 0, deployment.log("flwr-run.log")[-3000:]
        deployment.start_superlink()
        assert [p.poll() for p in deployment.supernodes] == [None, None, None]
        _wait(lambda: deployment.online_nodes() == 3, 120, "the nodes online again",
              deployment, "superlink-2.log")
        second = deployment.run_app(APP_DIR, {**run_config, "resume": True,
                                              "output-dir": str(out)},
                                    log="resume.log", runner=True)
        _wait(lambda: second.poll() is not None, 900, "the resumed run", deployment,
              "resume.log")
        stream = deployment.log("resume.log")
        assert second.returncode == 0, stream[-4000:]
        lingering, left = deployment.terminate()
    if lingering:  # orphaned flwr-clientapps, seen in 3 of 6 runs: they must go on SIGTERM
        print(f"needed a SIGTERM of their own: {lingering}")
    assert left == [], f"left running after SIGTERM: {deployment.describe(left)}"
    assert deployment.leftover == []

    assert f"resuming the run in {out}" in stream
    assert "max eps" in stream  # the per-round table, streamed from the ServerApp
    audit = audit_run(out)
    assert audit["verified"], audit["violations"]
    chain = load_ledger(out / "ledger.jsonl")
    settled = [r for r in chain.records if not r.in_flight]
    numbers = sorted({r.round for r in settled})
    assert numbers == list(range(1, len(numbers) + 1))  # no gap
    for number in numbers:  # no duplicate: one settled row per client per round
        assert sorted(r.client_id for r in settled if r.round == number) == [1, 2, 3]
    metrics = json.loads((out / "metrics.json").read_text())
    rounds = metrics["rounds"]
    why = f"{[(r['round'], r.get('abort_reason', '')) for r in rounds]}\n{stream[-3000:]}"
    assert [r["round"] for r in rounds] == numbers, why
    interrupted = [r["round"] for r in rounds if r.get("abort_reason", "")
                   .startswith("interrupted")]
    # Once in five clean-clone CI runs (never in four runs under load since)
    # a round of the resumed run was aborted for too few answers.  The likely
    # cause: SuperNodes that had pulled a message of the killed run wait for
    # that message's reply before they pull again (flwr 1.42's
    # _push_messages), or the restarted SuperLink still delivers the killed
    # run's pending messages; the wait can outlast the round's timeout.  The
    # ServerApp is right to abort that round (an ordinary abort, which counts
    # against num-rounds).  The test accepts exactly that: the first round of
    # the resumed run, aborted for too few answers after a stage waited the
    # whole round-timeout (so no node answered with a refusal or an error,
    # which would end the wait early), with no refused reply in the stream.
    too_few = re.compile(r"aggregation aborted in [A-Z_]+: only \d+ ")
    ordinary = [r for r in rounds if r["aborted"] and r["round"] not in interrupted]
    first_resumed = max(interrupted, default=1) + 1
    assert [r["round"] for r in ordinary] in ([], [first_resumed]), why
    if ordinary:
        reason = ordinary[0].get("abort_reason", "")
        assert too_few.match(reason), why
        events = [json.loads(line) for line in (out / "events.jsonl").read_text().splitlines()]
        mine = [e for e in events if e["round"] == first_resumed]
        # the resumed run's attempt: from its last advertise-keys event (the
        # killed run may have begun a round of the same number)
        start = max(i for i, e in enumerate(mine) if e["stage"] == "advertise-keys")
        times = [e["time"] for e in mine[start:]]
        assert max(b - a for a, b in itertools.pairwise(times)) >= run_config["round-timeout"], (
            f"the round did not wait out its timeout: {why}")
        assert "refused" not in stream and "dropped at" not in stream, why
        warnings.warn(f"the first resumed round was aborted for too few answers: {reason}",
                      stacklevel=1)
    assert len(numbers) == 3 + len(interrupted), why
    assert metrics["final"]["rounds_completed"] == 3 - len(ordinary), why
    assert not rounds[-1]["aborted"], why  # the resumed run completed work of its own
    last = {r.client_id: r for r in settled if r.round == numbers[-1]}
    for cid, row in last.items():  # each history composes every charged round's steps
        charged = sum(r.local_steps for r in settled if r.client_id == cid)
        assert sum(h[2] for h in row.history) == charged > 0


@pytest.mark.flower_runtime
def test_superlink_restarted_without_database_forgets_its_supernodes(tmp_path: Path) -> None:
    """Why the database matters (flwr 1.41/1.42): a SuperLink that keeps its
    state in memory is restarted; the SuperNodes' next calls get HTTP 401
    and they shut themselves down, exit status 0, although nothing stopped
    them."""
    _need_binaries()
    deployment = Deployment(2)
    with deployment:
        deployment.kill_superlink()
        deployment.start_superlink()
        _wait(lambda: all(p.poll() is not None for p in deployment.supernodes), 120,
              "the SuperNodes to exit", deployment, "supernode-0.log")
        codes = [p.returncode for p in deployment.supernodes]
        log = deployment.log("superlink-2.log")
    assert codes == [0, 0]
    assert '" 401' in log  # the restarted SuperLink refused the nodes' calls
