#!/usr/bin/env python3
"""Run the whole test suite as two pytest processes at once (``make test``).

The tests marked ``flower_runtime`` start real Flower processes (a SuperLink,
SuperNodes, a ClientApp process per message) and spend most of their time
waiting on Flower's fixed polling intervals (3 s between a SuperNode's pulls,
1 s between its SuperExec's) and on round timeouts; the rest of the suite is
CPU-bound.  Run one after the other they take about 16 minutes on a 2-core
machine; side by side about 10: the runtime lane's waits overlap the other
lane's work.

* lane ``flower-runtime``: ``pytest -m flower_runtime``, its output kept in a
  file and printed when it ends (so the two lanes' lines never interleave);
* lane ``suite``: ``pytest -m "not flower_runtime"``, its output streamed.

Every other argument is passed to both pytest processes.  Each lane has its
own ``--basetemp`` (a fresh temporary directory, removed when its lane
passed, kept and named when it failed), so neither lane's temporary files can
be cleaned up under the other.  SIGINT or SIGTERM stops both lanes: each lane's
pytest (in a process group of its own) gets SIGINT, so its fixtures stop the
processes their tests started, and what is left after a minute is killed.

Exit status: 0 when both lanes pass (a lane that selects no test, pytest's
status 5, counts as passing only if the other lane ran tests), else the first
failing lane's status.

    python scripts/test_lanes.py -q
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

LANES = (("flower-runtime", "flower_runtime"), ("suite", "not flower_runtime"))
NO_TESTS = 5  # pytest's exit status when nothing was selected
HEARTBEAT = 60.0  # seconds between "still running" lines once one lane waits
STOP_GRACE = 60.0  # seconds a stopped lane gets for its teardowns


def main(argv: list[str]) -> int:
    """Run both lanes; returns the exit status described in the module docstring."""
    root = Path(__file__).resolve().parent.parent
    procs: list[tuple[str, subprocess.Popen[bytes], Path, Path | None]] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        # SIGINT, as Ctrl-C would: pytest then runs the fixtures' teardowns,
        # which stop the Flower processes a test started in sessions of their
        # own; whatever is left of a lane after STOP_GRACE seconds is killed
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for sig in (signal.SIGINT, signal.SIGKILL):
            for _, proc, _, _ in procs:
                if proc.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, sig)
            deadline = time.monotonic() + STOP_GRACE
            while time.monotonic() < deadline and any(p.poll() is None for _, p, _, _ in procs):
                time.sleep(0.2)
        for name, _, basetemp, log in procs:  # what the stopped lanes got to
            if log is not None:
                _print_lane(name, log)
            shutil.rmtree(basetemp, ignore_errors=True)
        print(f"[test lanes] stopped by signal {signum}", flush=True)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    started = time.monotonic()
    for name, marker in LANES:
        basetemp = Path(tempfile.mkdtemp(prefix=f"securefl-tests-{name}-"))
        log = None
        if name != LANES[-1][0]:
            log = Path(tempfile.mkstemp(prefix=f"securefl-tests-{name}-", suffix=".log")[1])
        cmd = [sys.executable, "-m", "pytest", "-m", marker, f"--basetemp={basetemp}", *argv]
        out = open(log, "wb") if log is not None else None  # noqa: SIM115 (closed below)
        try:
            proc = subprocess.Popen(cmd, cwd=root, stdout=out, stderr=subprocess.STDOUT
                                    if out is not None else None, start_new_session=True)
        finally:
            if out is not None:
                out.close()
        procs.append((name, proc, basetemp, log))

    statuses: dict[str, int] = {}
    last_beat = time.monotonic()
    while len(statuses) < len(procs):
        for name, proc, _, _ in procs:
            if name not in statuses and proc.poll() is not None:
                statuses[name] = proc.returncode
                last_beat = time.monotonic()  # the heartbeat counts from a lane's end
        if statuses and len(statuses) < len(procs) and \
                time.monotonic() - last_beat >= HEARTBEAT:
            waiting = [n for n, _, _, _ in procs if n not in statuses]
            print(f"[test lanes] {time.monotonic() - started:.0f} s: still running:"
                  f" {', '.join(waiting)}", flush=True)
            last_beat = time.monotonic()
        time.sleep(0.5)

    for name, _, basetemp, log in procs:
        if log is not None:
            _print_lane(name, log)
        if statuses[name] in (0, NO_TESTS):
            shutil.rmtree(basetemp, ignore_errors=True)
        else:
            print(f"[test lanes] lane {name}: its temporary files are kept in {basetemp}")
    ran = [n for n, s in statuses.items() if s != NO_TESTS]
    summary = ", ".join(f"{n}: exit {s}" for n, s in statuses.items())
    print(f"[test lanes] {time.monotonic() - started:.0f} s; {summary}", flush=True)
    if not ran:
        return NO_TESTS
    for name, _, _, _ in procs:
        if statuses[name] not in (0, NO_TESTS):
            return statuses[name]
    return 0


def _print_lane(name: str, log: Path) -> None:
    """Print lane ``name``'s kept output under a header, then remove it."""
    print(f"\n[test lanes] ===== lane {name} (pytest -m {dict(LANES)[name]!r}) =====",
          flush=True)
    sys.stdout.buffer.write(log.read_bytes())
    sys.stdout.flush()
    log.unlink()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
