#!/usr/bin/env python3
"""Run the whole test suite as two pytest processes at once (``make test``).

The tests marked ``flower_runtime`` start real Flower processes (a SuperLink,
SuperNodes, a ClientApp process per message) and spend most of their time
waiting on Flower's fixed polling intervals (3 s between a SuperNode's pulls,
1 s between its SuperExec's) and on round timeouts; the rest of the suite is
CPU-bound.  Run one after the other they take about 16 minutes on a 2-core
machine; side by side about 10-11: the runtime lane's waits overlap the other
lane's work.

* lane ``flower-runtime``: ``pytest -m flower_runtime``, its output written
  (unbuffered) to a file whose path is printed at the start, and printed
  whole when the lane ends, so the two lanes' lines never interleave;
* lane ``suite``: ``pytest -m "not flower_runtime"``, its output streamed.

Every other argument is passed to both pytest processes, except ``-m`` and
``--basetemp``, which would undo the split (refused, exit status 4).  Each
lane has its own ``--basetemp`` (a fresh temporary directory, removed when
its lane passed, kept and named when it failed) and its own cache directory
(``.pytest_cache/lane-<name>``), so neither lane can clean up the other's
temporary files or overwrite its record of failed tests.

Stopping: SIGINT, SIGTERM or SIGHUP to this process sends SIGINT to each lane
(each runs in a session of its own, so a terminal's Ctrl-C reaches it once,
through here): pytest then runs its fixtures' teardowns, which stop the
processes their tests started; a lane's pytest still running a minute later
is killed.  If this process dies without running its handler (SIGKILL, or a
CI job's process group killed), each lane gets SIGINT from the kernel
(Linux's parent-death signal) and tears down the same way.

Exit status: 0 when both lanes pass (a lane that selects no test, pytest's
status 5, counts as passing only if the other lane ran tests), else the first
failing lane's status; 128 + the signal when stopped.

    python scripts/test_lanes.py -q
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

LANES = (("flower-runtime", "flower_runtime"), ("suite", "not flower_runtime"))
NO_TESTS = 5  # pytest's exit status when nothing was selected
USAGE = 4  # pytest's exit status for a usage error
HEARTBEAT = 60.0  # seconds between "still running" lines once only the kept lane runs
STOP_GRACE = 60.0  # seconds a stopped lane gets for its teardowns
_PR_SET_PDEATHSIG = 1


@dataclass
class _Lane:
    name: str
    marker: str
    basetemp: Path
    log: Path | None  # None: streamed
    proc: subprocess.Popen[bytes] | None = None


def _refused(argv: list[str]) -> str | None:
    for arg in argv:
        if arg == "-m" or (arg.startswith("-m") and not arg.startswith("--")) \
                or arg == "--basetemp" or arg.startswith("--basetemp="):
            return arg
    return None


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGINT when ``parent``
    dies (Linux ``prctl(PR_SET_PDEATHSIG)``); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None

    def preexec() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGINT))
        if os.getppid() != parent:  # the parent died before the prctl took effect
            os.kill(os.getpid(), signal.SIGINT)

    return preexec


def main(argv: list[str]) -> int:
    """Run both lanes; returns the exit status described in the module docstring."""
    refused = _refused(argv)
    if refused is not None:
        print(f"[test lanes] {refused!r} would undo the split into lanes: run pytest"
              " itself for that", file=sys.stderr)
        return USAGE
    root = Path(__file__).resolve().parent.parent
    lanes: list[_Lane] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        for sig in (signal.SIGINT, signal.SIGKILL):
            for lane in lanes:
                if lane.proc is not None and lane.proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        lane.proc.send_signal(sig)
            deadline = time.monotonic() + STOP_GRACE
            while time.monotonic() < deadline and any(
                    lane.proc is not None and lane.proc.poll() is None for lane in lanes):
                time.sleep(0.2)
        for lane in lanes:  # what the stopped lanes got to
            _print_lane(lane)
            shutil.rmtree(lane.basetemp, ignore_errors=True)
        print(f"[test lanes] stopped by signal {signum}", flush=True)
        raise SystemExit(128 + signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    started = time.monotonic()
    for name, marker in LANES:
        log = None
        if name != LANES[-1][0]:
            fd, path = tempfile.mkstemp(prefix=f"securefl-tests-{name}-", suffix=".log")
            os.close(fd)
            log = Path(path)
        lanes.append(_Lane(name, marker,
                           Path(tempfile.mkdtemp(prefix=f"securefl-tests-{name}-")), log))
    for lane in lanes:
        cmd = [sys.executable, "-m", "pytest", "-m", lane.marker,
               f"--basetemp={lane.basetemp}", "-o", f"cache_dir=.pytest_cache/lane-{lane.name}",
               *argv]
        if lane.log is not None:
            print(f"[test lanes] lane {lane.name} (pytest -m {lane.marker!r}) writes to"
                  f" {lane.log}; printed when it ends", flush=True)
            with open(lane.log, "wb") as out:
                lane.proc = subprocess.Popen(
                    cmd, cwd=root, stdout=out, stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
                    preexec_fn=_die_with_parent(os.getpid()))
        else:
            lane.proc = subprocess.Popen(cmd, cwd=root, start_new_session=True,
                                         preexec_fn=_die_with_parent(os.getpid()))

    statuses: dict[str, int] = {}
    last_beat = time.monotonic()
    streamed = lanes[-1].name
    while len(statuses) < len(lanes):
        for lane in lanes:
            assert lane.proc is not None
            if lane.name not in statuses and lane.proc.poll() is not None:
                statuses[lane.name] = lane.proc.returncode
                last_beat = time.monotonic()  # the heartbeat counts from a lane's end
        if streamed in statuses and len(statuses) < len(lanes) and \
                time.monotonic() - last_beat >= HEARTBEAT:
            waiting = [lane.name for lane in lanes if lane.name not in statuses]
            print(f"[test lanes] {time.monotonic() - started:.0f} s: still running:"
                  f" {', '.join(waiting)}", flush=True)
            last_beat = time.monotonic()
        time.sleep(0.5)

    for lane in lanes:
        _print_lane(lane)
        if statuses[lane.name] in (0, NO_TESTS):
            shutil.rmtree(lane.basetemp, ignore_errors=True)
        else:
            print(f"[test lanes] lane {lane.name}: its temporary files are kept in"
                  f" {lane.basetemp}")
    ran = [n for n, s in statuses.items() if s != NO_TESTS]
    summary = ", ".join(f"{n}: exit {s}" for n, s in statuses.items())
    print(f"[test lanes] {time.monotonic() - started:.0f} s; {summary}", flush=True)
    if not ran:
        return NO_TESTS
    for lane in lanes:
        if statuses[lane.name] not in (0, NO_TESTS):
            return statuses[lane.name]
    return 0


def _print_lane(lane: _Lane) -> None:
    """Print a kept lane's output under a header, then remove it (once)."""
    if lane.log is None or not lane.log.exists():
        return
    print(f"\n[test lanes] ===== lane {lane.name} (pytest -m {lane.marker!r}) =====",
          flush=True)
    sys.stdout.buffer.write(lane.log.read_bytes())
    sys.stdout.flush()
    lane.log.unlink()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
