"""``scripts/test_lanes.py`` (what ``make test`` and CI run): both lanes run,
a failure in either fails the whole with its status, and a stopped run stops
both lanes through their teardowns."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "test_lanes.py"


def _lanes(*args: str, tmp: Path | None = None) -> subprocess.Popen[str]:
    """The runner; with ``tmp``, its temporary files go there (TMPDIR)."""
    env = dict(os.environ)
    if tmp is not None:
        (tmp / "tmp").mkdir(exist_ok=True)
        env["TMPDIR"] = str(tmp / "tmp")
    return subprocess.Popen([sys.executable, str(SCRIPT), "-q", "-p", "no:cacheprovider",
                             *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)


@pytest.mark.parametrize("failing", ["suite", "flower-runtime"])
def test_a_failure_in_either_lane_fails_the_run_and_both_lanes_report(
        tmp_path: Path, failing: str) -> None:
    body = {lane: "assert False, 'boom'" if lane == failing else "pass"
            for lane in ("suite", "flower-runtime")}
    tests = tmp_path / "test_two_lanes.py"
    tests.write_text("import pytest\n\n"
                     "@pytest.mark.flower_runtime\n"
                     f"def test_in_the_runtime_lane():\n    {body['flower-runtime']}\n\n"
                     f"def test_in_the_suite_lane():\n    {body['suite']}\n")
    proc = _lanes(str(tests), tmp=tmp_path)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out
    # the runtime lane's output is printed whole, after the streamed lane's
    runtime = out.index("===== lane flower-runtime")
    outcome = {lane: "1 failed" if lane == failing else "1 passed" for lane in body}
    assert f"{outcome['suite']}, 1 deselected" in out[:runtime]
    assert f"{outcome['flower-runtime']}, 1 deselected" in out[runtime:]
    status = {lane: 1 if lane == failing else 0 for lane in body}
    assert f"flower-runtime: exit {status['flower-runtime']}, suite: exit {status['suite']}" \
        in out
    kept = re.search(rf"lane {failing}: its temporary files are kept in (\S+)", out)
    assert kept is not None, out
    assert Path(kept.group(1)).is_dir()  # kept for whoever debugs the failure
    passing = next(lane for lane in body if lane != failing)
    assert f"lane {passing}: its temporary files" not in out


def test_no_test_selected_in_either_lane_is_not_a_pass(tmp_path: Path) -> None:
    tests = tmp_path / "test_nothing.py"
    tests.write_text("def test_one():\n    pass\n")
    proc = _lanes(str(tests), "-k", "no_such_test")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 5, out


def test_arguments_that_would_undo_the_split_are_refused(tmp_path: Path) -> None:
    for args in (["-m", "slow"], ["-mslow"], ["--basetemp", "x"], [f"--basetemp={tmp_path}"]):
        proc = _lanes(*args)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 4 and "would undo the split" in out, (args, out)


def _slow_lanes(tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    """A runner whose two lanes each sit in a test with a fixture that marks
    its set-up and teardown; returned once both lanes are in their tests."""
    marks = tmp_path / "marks"
    marks.mkdir()
    tests = tmp_path / "test_slow.py"
    tests.write_text(
        "import time\nfrom pathlib import Path\nimport pytest\n\n"
        f"MARKS = Path({str(marks)!r})\n\n"
        "@pytest.fixture\n"
        "def deployment(request):\n"
        "    (MARKS / f'started-{request.node.name}').touch()\n"
        "    yield\n"
        "    (MARKS / f'stopped-{request.node.name}').touch()\n\n"
        "@pytest.mark.flower_runtime\n"
        "def test_runtime(deployment):\n    time.sleep(300)\n\n"
        "def test_suite(deployment):\n    time.sleep(300)\n")
    proc = _lanes(str(tests), tmp=tmp_path)
    deadline = time.monotonic() + 120
    while len(list(marks.glob("started-*"))) < 2:
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError(f"the lanes never started: {proc.communicate()[0]}")
        time.sleep(0.1)
    return proc, marks


def _torn_down(marks: Path, timeout: float = 60) -> list[str]:
    deadline = time.monotonic() + timeout
    while len(list(marks.glob("stopped-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    return sorted(p.name for p in marks.glob("stopped-*"))


def test_sigterm_stops_both_lanes_through_their_teardowns(tmp_path: Path) -> None:
    proc, marks = _slow_lanes(tmp_path)
    try:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, out
    # each lane's pytest ran its fixture's teardown, as on Ctrl-C
    assert _torn_down(marks) == ["stopped-test_runtime", "stopped-test_suite"]
    assert "===== lane flower-runtime" in out  # what the stopped lane got to is shown
    assert "stopped by signal 15" in out


def test_a_killed_runner_still_stops_its_lanes_through_their_teardowns(
        tmp_path: Path) -> None:
    """SIGKILL leaves the runner no handler: the lanes get SIGINT from the
    kernel (parent-death signal) and tear down as on Ctrl-C."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the parent-death signal is Linux's")
    proc, marks = _slow_lanes(tmp_path)
    proc.kill()
    proc.communicate(timeout=60)
    assert _torn_down(marks) == ["stopped-test_runtime", "stopped-test_suite"]
