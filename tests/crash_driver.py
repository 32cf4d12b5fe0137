"""Run simulator processes that SIGKILL themselves at crash points, then
resume them; used by ``tests/test_crash_resume.py``.

``python tests/crash_driver.py JOBS_JSON`` imports securefl once, then for
every job forks a simulator process with ``SECUREFL_TEST_CRASH_AT`` set to
the job's crash point (the process kills itself with SIGKILL there: no
clean-up, as with ``kill -9``), copies the run directory it left (for the
test to audit as it was), and forks a second process that resumes it
(library ``resume_simulation`` or ``securefl simulate --resume``); two jobs
run at a time.  Forking after the imports saves the 5-15 s that importing
torch and Opacus costs per process.  Prints one JSON line: per job, how each
process ended.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import traceback
from typing import Any

from securefl.crashpoints import CRASH_ENV


def _fork(work: Any) -> dict[str, Any]:
    """Run ``work()`` in a child process; its exit status or signal."""
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 3
        try:
            code = int(work() or 0)
        except BaseException:  # reported to the parent as exit status 3
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return {"signal": os.WTERMSIG(status), "exit": None}
    return {"signal": None, "exit": os.WEXITSTATUS(status)}


def main(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Run every job of ``spec["jobs"]``: ``dir``, ``config`` (a
    SimulationConfig as JSON), ``crash`` (``NAME:ROUND`` or None),
    ``snapshot`` (where to copy the killed run) and ``resume`` (None,
    ``"library"`` or ``"cli"``)."""
    import torch

    import securefl.federation.round as recorder_module
    from securefl.cli import main as cli_main
    from securefl.federation.simulation import (
        SimulationConfig,
        resume_simulation,
        run_simulation,
    )

    torch.set_num_threads(1)
    # the accuracy plot is a third of a tiny run's CPU time and nothing here
    # looks at it: skip drawing it
    recorder_module.plot_accuracy = lambda *args, **kwargs: None  # type: ignore[assignment]

    def pipeline(job: dict[str, Any]) -> dict[str, Any]:
        config = SimulationConfig.from_json(job["config"])

        def first(job: dict[str, Any] = job, config: SimulationConfig = config) -> int:
            if job["crash"]:
                os.environ[CRASH_ENV] = job["crash"]
            run_simulation(config, job["dir"])
            return 0

        outcome: dict[str, Any] = {"first": _fork(first)}
        if job.get("snapshot"):
            shutil.copytree(job["dir"], job["snapshot"])

        def resume(job: dict[str, Any] = job) -> int:
            os.environ.pop(CRASH_ENV, None)
            if job["resume"] == "cli":
                return cli_main(["simulate", "--resume", job["dir"], "--no-progress"])
            resume_simulation(job["dir"])
            return 0

        if job.get("resume"):
            outcome["resume"] = _fork(resume)
        return outcome

    # the jobs run two at a time (one per core), each in its own process
    workers = int(spec.get("workers", 2))
    running: dict[int, int] = {}
    results: list[dict[str, Any]] = [{} for _ in spec["jobs"]]
    files = [f"{job['dir']}.outcome.json" for job in spec["jobs"]]

    def reap() -> None:
        pid, _ = os.wait()
        index = running.pop(pid)
        with open(files[index], encoding="utf-8") as handle:
            results[index] = json.load(handle)

    for index, job in enumerate(spec["jobs"]):
        while len(running) >= workers:
            reap()
        pid = os.fork()
        if pid == 0:
            try:
                try:
                    outcome = pipeline(job)
                except BaseException:
                    outcome = {"error": traceback.format_exc()}
                with open(files[index], "w", encoding="utf-8") as handle:
                    json.dump(outcome, handle)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(0)
        running[pid] = index
    while running:
        reap()
    return results


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    print(json.dumps(main(json.loads(sys.argv[1]))))
