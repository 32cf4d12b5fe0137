"""Run conformance cases against a target and report (text, JSON, JUnit)."""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from securefl.conformance.cases import Case, CaseResult, Outcome, Target, run_case
from securefl.conformance.jsonio import DEFAULT_VECTOR_DIR
from securefl.conformance.scenarios import scenario_cases
from securefl.conformance.vectors import vector_cases

_MARK = {Outcome.PASSED: "PASS", Outcome.FAILED: "FAIL", Outcome.SKIPPED: "SKIP"}


def all_cases(vector_dir: Path = DEFAULT_VECTOR_DIR, *, vectors: bool = True,
              scenarios: bool = True) -> list[Case]:
    """The vector cases, then the scenario cases."""
    cases: list[Case] = []
    if vectors:
        cases.extend(vector_cases(vector_dir))
    if scenarios:
        cases.extend(scenario_cases())
    return cases


def matches(case: Case, pattern: str) -> bool:
    """Whether ``pattern`` (one ``-k`` option) selects ``case``.

    A pattern that starts with a digit names cases by id, component by
    component: ``10`` selects SPEC section 10 and its subsections (``10/1``,
    ``10.1/3``, ..., never ``11/1`` or ``12/1``); ``10.1`` selects section
    10.1 (and 10.1.x); ``4/kdf_test`` one vector file; ``10.1/3`` or
    ``4/kdf_test/12`` exactly one case.  Any other pattern is a
    case-insensitive substring of the id or the title (``aead``, ``active:``).
    """
    pattern = pattern.strip().rstrip("/")
    if not pattern:
        return False
    if pattern[0].isdigit():
        if case.id == pattern or case.id.startswith(pattern + "/"):
            return True
        return "/" not in pattern and case.section.startswith(pattern + ".")
    needle = pattern.lower()
    return needle in case.id.lower() or needle in case.title.lower()


def select(cases: Iterable[Case], patterns: Sequence[str]) -> list[Case]:
    """Cases that any pattern selects (see :func:`matches`); all cases when
    ``patterns`` is empty."""
    if not patterns:
        return list(cases)
    return [c for c in cases if any(matches(c, p) for p in patterns)]


@dataclass(frozen=True)
class Summary:
    """Counts of one run."""

    total: int
    passed: int
    skipped: int
    failed: int

    def line(self) -> str:
        """``N tests, N passed, N skipped, N failed``."""
        return (f"{self.total} tests, {self.passed} passed, {self.skipped} skipped,"
                f" {self.failed} failed")


def summarize(results: Sequence[CaseResult]) -> Summary:
    """Count outcomes."""
    count = {o: sum(r.outcome is o for r in results) for o in Outcome}
    return Summary(len(results), count[Outcome.PASSED], count[Outcome.SKIPPED],
                   count[Outcome.FAILED])


def format_result(result: CaseResult) -> str:
    """One line per case."""
    line = f"[{_MARK[result.outcome]}] {result.case.id} {result.case.title}"
    if result.detail:
        line += f" -- {result.detail}"
    return line


def run(cases: Sequence[Case], target: Target, out: TextIO | None = None) -> list[CaseResult]:
    """Run every case, printing one line each, then the summary line, to
    ``out`` (default: standard output)."""
    out = sys.stdout if out is None else out
    results = []
    for case in cases:
        result = run_case(case, target)
        results.append(result)
        print(format_result(result), file=out, flush=True)
    print(summarize(results).line(), file=out)
    return results


def write_json(path: Path, results: Sequence[CaseResult], target: Target) -> None:
    """The JSON report."""
    summary = summarize(results)
    data = {
        "protocol": "securefl/secagg/v1",
        "target": target.description,
        "summary": {"tests": summary.total, "passed": summary.passed,
                    "skipped": summary.skipped, "failed": summary.failed},
        "cases": [{"id": r.case.id, "section": r.case.section, "kind": r.case.kind,
                   "title": r.case.title, "outcome": r.outcome.value, "detail": r.detail,
                   "seconds": round(r.seconds, 6)} for r in results],
    }
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")


def write_junit(path: Path, results: Sequence[CaseResult], target: Target) -> None:
    """The JUnit XML report (one testsuite, one testcase per case)."""
    summary = summarize(results)
    suite = ET.Element("testsuite", {
        "name": "securefl-secagg-v1-conformance", "tests": str(summary.total),
        "failures": str(summary.failed), "skipped": str(summary.skipped), "errors": "0",
        "time": f"{sum(r.seconds for r in results):.6f}"})
    ET.SubElement(ET.SubElement(suite, "properties"), "property",
                  {"name": "target", "value": target.description})
    for r in results:
        case = ET.SubElement(suite, "testcase", {
            "classname": f"secagg.v1.{r.case.kind}.section_{r.case.section}",
            "name": f"{r.case.id} {r.case.title}", "time": f"{r.seconds:.6f}"})
        if r.outcome is Outcome.FAILED:
            ET.SubElement(case, "failure", {"message": r.detail}).text = r.detail
        elif r.outcome is Outcome.SKIPPED:
            ET.SubElement(case, "skipped", {"message": r.detail})
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    path.write_bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n")
