"""Kill a tiny simulator at the Nth durable-write call and resume it; used by
``tests/test_review_crash_sweep.py``.

``python tests/review_crash_driver.py SPEC_JSON`` imports securefl once, then
for every job forks a simulator process that SIGKILLs itself just before the
Nth call (counting from the start of the process) of ``os.fsync`` or
``os.replace`` (the durable-write primitives of :mod:`securefl.durable` and
the ledger export) -- points the named crash points do not cover, such as
between the run store's creation and the first exports, inside an atomic
replace, or inside ``finish`` -- copies the directory it left, audits it,
then forks a process that resumes it (``resume_simulation``) and audits the
result.  Optionally the resume itself is killed at its Mth call and resumed
again (a crash during recovery).  Prints one JSON line.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from typing import Any

from crash_driver import _fork  # the one fork-and-report helper (same directory)


def _kill_at(n: int | None) -> None:
    """SIGKILL this process just before its ``n``-th fsync/replace call."""
    if n is None:
        return
    calls = [0]
    real_fsync, real_replace = os.fsync, os.replace

    def gate() -> None:
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)

    def fsync(fd: int) -> None:
        gate()
        real_fsync(fd)

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        gate()
        real_replace(src, dst, **kwargs)

    os.fsync = fsync  # type: ignore[assignment]
    os.replace = replace  # type: ignore[assignment]


def main(spec: dict[str, Any]) -> list[dict[str, Any]]:
    import torch

    import securefl.federation.round as recorder_module
    from securefl.cli.audit import audit_run
    from securefl.federation.simulation import (
        SimulationConfig,
        resume_simulation,
        run_simulation,
    )

    torch.set_num_threads(1)
    recorder_module.plot_accuracy = lambda *args, **kwargs: None  # type: ignore[assignment]
    config = SimulationConfig.from_json(spec["config"])
    results = []
    for job in spec["jobs"]:
        out = job["dir"]

        def first(job: dict[str, Any] = job) -> int:
            _kill_at(job.get("kill"))
            run_simulation(config, job["dir"])
            return 0

        outcome: dict[str, Any] = {"first": _fork(first)}
        if os.path.isdir(out):
            shutil.copytree(out, job["dir"] + "-killed")
            try:
                report = audit_run(__import__("pathlib").Path(job["dir"] + "-killed"))
                outcome["audit_killed"] = {"exit": report["exit_code"],
                                           "violations": report["violations"]}
            except Exception as exc:
                outcome["audit_killed"] = {"error": f"{type(exc).__name__}: {exc}"}
        for step, kill in enumerate([job.get("kill_resume"), None]):
            if step == 0 and kill is None:
                continue

            def resume(kill: int | None = kill, job: dict[str, Any] = job) -> int:
                _kill_at(kill)
                resume_simulation(job["dir"])
                return 0

            outcome[f"resume{step}"] = _fork(resume)
        try:
            report = audit_run(__import__("pathlib").Path(out))
            outcome["audit_resumed"] = {"exit": report["exit_code"],
                                        "violations": report["violations"],
                                        "clients": {c["client_id"]: c["steps"]
                                                    for c in report["clients"]}}
        except Exception as exc:
            outcome["audit_resumed"] = {"error": f"{type(exc).__name__}: {exc}"}
        results.append(outcome)
    return results


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    print(json.dumps(main(json.loads(sys.argv[1]))))
