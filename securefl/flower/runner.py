"""Running the Flower ServerApp: where a run's artefacts go, and a ``flwr
run`` whose exit status says whether the run completed.

* :func:`resolve_output_dir`: the run directory the ServerApp writes to.
  Run config ``output-dir`` (absolute, or relative to the ServerApp
  process's working directory, i.e. where the SuperLink was started), or,
  when it is empty, a fresh directory ``<runs root>/<UTC time>-run<run id>``
  under ``$SECUREFL_RUNS_DIR`` (default ``./securefl-runs``).  With run
  config ``resume = true`` the directory must hold the run to resume.
* ``python -m securefl.flower.runner APP CONNECTION [flwr run options]``:
  runs ``flwr run APP CONNECTION ...`` (its output passed through, so
  ``--stream`` shows the ServerApp's per-round table), then asks the
  SuperLink for the run's final status and exits 0 only if it is
  ``finished:completed``.  ``flwr run`` itself (flwr 1.41/1.42) exits 0 when
  the ServerApp raised; this command exits 1 with the status and its
  details, and 1 when no run was started or its status cannot be read.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from securefl.errors import ConfigurationError

__all__ = [
    "DEFAULT_RUNS_DIR",
    "RUNS_DIR_ENV",
    "main",
    "resolve_output_dir",
    "run_status",
]

RUNS_DIR_ENV = "SECUREFL_RUNS_DIR"
DEFAULT_RUNS_DIR = "securefl-runs"
"""Where a ServerApp run without ``output-dir`` writes (relative to the
ServerApp process's working directory), unless ``$SECUREFL_RUNS_DIR`` says."""

_STARTED = re.compile(r"Successfully started run (\d+)")
_COMPLETED = "finished:completed"


def resolve_output_dir(run_config: Mapping[str, Any], run_id: int,
                       now: datetime | None = None,
                       environ: Mapping[str, str] | None = None) -> tuple[Path, bool]:
    """The run directory of a ServerApp run and whether it resumes one.

    Args:
        run_config: the run config (``output-dir``, ``resume``).
        run_id: the Flower run id (part of a default directory's name).
        now: the time a default directory is named after (default: now, UTC).
        environ: where ``SECUREFL_RUNS_DIR`` is read (default ``os.environ``).

    Returns:
        (absolute directory, resume).  A default directory does not exist
        yet: it is fresh.

    Raises:
        ConfigurationError: ``resume`` without ``output-dir``, or ``resume``
            of a directory that does not exist.
    """
    resume = bool(run_config.get("resume", False))
    given = str(run_config.get("output-dir", "") or "")
    if given:
        out = Path(given).expanduser().absolute()
        if resume and not out.is_dir():
            raise ConfigurationError(f"resume: {out} does not exist (output-dir must be the"
                                     " directory of the run to resume)")
        return out, resume
    if resume:
        raise ConfigurationError("resume = true needs output-dir: the directory of the run to"
                                 " resume")
    env = os.environ if environ is None else environ
    root = Path(env.get(RUNS_DIR_ENV) or DEFAULT_RUNS_DIR).expanduser().absolute()
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    out = root / f"{stamp}-run{run_id}"
    suffix = 1
    while out.exists():  # never reuse a directory: a ledger belongs to one run
        suffix += 1
        out = root / f"{stamp}-run{run_id}-{suffix}"
    return out, False


def _flwr() -> str:
    local = Path(sys.executable).parent / "flwr"
    return str(local) if local.exists() else (shutil.which("flwr") or "flwr")


def run_status(run_id: int, connection: str, flwr: str | None = None) -> tuple[str, str]:
    """(status, details) of Flower run ``run_id`` as the SuperLink reports
    it (``flwr list CONNECTION --run-id ID --format json``); ("", reason)
    when it cannot be read."""
    try:
        done = subprocess.run([flwr or _flwr(), "list", connection, "--run-id", str(run_id),
                               "--format", "json"], capture_output=True, text=True, timeout=60,
                              stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "", f"flwr list failed: {exc}"
    try:
        answer = json.loads(done.stdout)
        runs = answer.get("runs", [])
    except (json.JSONDecodeError, AttributeError):
        return "", f"flwr list failed: {(done.stdout + done.stderr).strip()[-500:]}"
    if answer.get("success") is False:
        error = " ".join(str(answer.get("error-message", "")).split())
        return "", f"flwr list failed: {error[-500:]}"
    for run in runs:
        if str(run.get("run-id")) == str(run_id):
            return str(run.get("status", "")), str(run.get("status-details", ""))
    return "", f"run {run_id} is not listed by the SuperLink"


def main(argv: Sequence[str] | None = None, *, flwr: str | None = None,
         poll_seconds: float = 2.0) -> int:
    """``flwr run APP CONNECTION [options]`` that exits 0 only when the run
    finished completed (see the module docstring).

    Args:
        argv: ``APP CONNECTION [flwr run options]`` (default ``sys.argv[1:]``).
        flwr: the ``flwr`` executable (default: next to this Python, or on
            ``PATH``).
        poll_seconds: pause between status queries while the run goes on.

    Returns:
        0 (finished:completed), 1 (any other end, or unknown), 2 (usage).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0].startswith("-") or args[1].startswith("-"):
        print("usage: python -m securefl.flower.runner APP CONNECTION [flwr run options]\n"
              "  runs `flwr run APP CONNECTION ...` and exits 0 only if the run finished"
              " completed", file=sys.stderr)
        return 2
    connection = args[1]
    proc = subprocess.Popen([flwr or _flwr(), "run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    run_id: int | None = None
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if run_id is None and (found := _STARTED.search(line)):
            run_id = int(found.group(1))
    code = proc.wait()
    if run_id is None:
        print(f"securefl: flwr run started no run (exit {code})", file=sys.stderr)
        return code or 1
    while True:  # without --stream, flwr run returns while the run goes on
        status, details = run_status(run_id, connection, flwr)
        if not status.startswith(("pending", "starting", "running")):
            break
        time.sleep(poll_seconds)
    if status == _COMPLETED:
        return 0
    print(f"securefl: run {run_id} {status or 'status unknown'}: {details}", file=sys.stderr)
    return 1


if __name__ == "__main__":  # pragma: no cover - exercised by the tests as a subprocess
    raise SystemExit(main())
