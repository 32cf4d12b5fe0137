"""The Flower ServerApp's run directory, exit status and resume.

* The example app runs with its own defaults: its run config has every key
  the ServerApp reads, and with no ``output-dir`` the ServerApp picks a fresh
  directory (never an existing one) and says which.
* ``python -m securefl.flower.runner`` exits non-zero when the run did not
  finish completed (``flwr run`` itself exits 0 when the ServerApp raised),
  played with a stand-in ``flwr`` executable.
"""

from __future__ import annotations

import stat
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import tomllib

pytest.importorskip("flwr", reason="flwr is not installed (pip install 'securefl[flower]')")

from flower_harness import APP_DIR
from flwr.app import Context, RecordDict

from securefl.errors import ConfigurationError
from securefl.flower.runner import RUNS_DIR_ENV, main, resolve_output_dir

NOW = datetime(2026, 12, 2, 3, 4, 5, tzinfo=timezone.utc)


def _app_config() -> dict[str, Any]:
    data = tomllib.loads((APP_DIR / "pyproject.toml").read_text())
    return dict(data["tool"]["flwr"]["app"]["config"])


def test_example_run_config_has_defaults_for_output_and_resume() -> None:
    config = _app_config()
    assert config["output-dir"] == "" and config["resume"] is False
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
    print(json.dumps({{"success": True, "runs": [{{"run-id": "4242",
          "status": os.environ["FAKE_STATUS"], "status-details": "ServerApp raised"}}]}}))
'''


@pytest.mark.parametrize(("status", "no_run", "code"), [
    ("finished:completed", False, 0),
    ("finished:failed", False, 1),
    ("finished:stopped", False, 1),
    ("finished:completed", True, 1),
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
        assert ("started no run" if no_run else status) in captured.err


def test_runner_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--stream"]) == 2
    assert main(["app"]) == 2
    assert "usage" in capsys.readouterr().err
