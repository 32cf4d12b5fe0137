"""The README's two commands stay two, and CI runs what they run (issue 13:
"the examples run in CI; the docs build in CI").

CI is ``.ci/run``, which runs ``make test``; ``make test`` installs the
extras that the docs build and the examples need, so their tests are not
skipped there, and runs the whole suite (no marker or keyword filter)."""

from __future__ import annotations

import re
import runpy
import shlex
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def _section(markdown: str, heading: str) -> str:
    start = markdown.index(f"\n## {heading}")
    end = markdown.find("\n## ", start + 1)
    return markdown[start:end if end >= 0 else None]


def _shell_blocks(markdown: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```(?:sh|bash|console)\n(.*?)```", markdown,
                                          flags=re.DOTALL)]


def _make_target(makefile: str, target: str) -> list[str]:
    match = re.search(rf"^{re.escape(target)}:[^\n]*\n((?:\t[^\n]*\n)*)", makefile,
                      flags=re.MULTILINE)
    assert match, f"Makefile has no target {target}"
    return [line.strip() for line in match.group(1).splitlines()]


def test_the_quick_start_is_two_commands() -> None:
    quick = _section((ROOT / "README.md").read_text(), "Quick start")
    assert _shell_blocks(quick) == ["make demo", "make test"]
    assert "this is what CI runs" in quick


def test_ci_runs_make_test() -> None:
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert lines[-1] == "make test"


def test_make_test_installs_every_extra_the_suite_needs_and_runs_all_of_it() -> None:
    makefile = (ROOT / "Makefile").read_text()
    installs = [shlex.split(line) for line in makefile.splitlines()
                if "pip install" in line and "-e" in line]
    assert len(installs) == 1, installs
    spec = installs[0][-1]
    match = re.fullmatch(r"\.\[([\w,-]+)\]", spec)
    assert match, spec
    extras = set(match.group(1).split(","))
    # docs: tests/test_docs.py builds the site instead of skipping; train: the
    # examples; flower: the Flower tests (tests skip without these)
    assert {"dev", "train", "docs", "flower", "flower-simulation"} <= extras
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    assert extras <= set(declared)
    assert {"mkdocs-material", "mkdocstrings[python]"} == {
        re.split(r"[<>=]", r, maxsplit=1)[0] for r in declared["docs"]}
    test = _make_target(makefile, "test")
    assert "$(BIN)/ruff check ." in test
    runs = [line for line in test if "pytest" in line or "test_lanes" in line]
    assert runs == ["$(BIN)/python scripts/test_lanes.py -q"]  # no -m, -k or path filter
    # its two lanes split the suite by one marker: together they run all of it
    lanes = runpy.run_path(str(ROOT / "scripts" / "test_lanes.py"))["LANES"]
    (_, marker), (_, rest) = lanes
    assert re.fullmatch(r"\w+", marker) and rest == f"not {marker}"
    assert "$(STAMP)" in re.search(r"^test:(.*)$", makefile, flags=re.MULTILINE).group(1)
    assert "$(STAMP)" in re.search(r"^demo:(.*)$", makefile, flags=re.MULTILINE).group(1)


def test_the_suite_collects_the_examples_and_the_docs_build() -> None:
    # the configured test paths cover the files that run the examples and
    # build the site, and pytest's default options skip nothing by marker
    options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"][
        "ini_options"]
    assert options["testpaths"] == ["tests"]
    assert "-m" not in shlex.split(options.get("addopts", ""))
    tests = ROOT / "tests"
    runs = "".join((tests / name).read_text() for name in (
        "test_examples.py", "test_examples_domains.py"))
    examples = sorted(p.stem for p in (ROOT / "examples").glob("*.py"))
    not_run = [name for name in examples if f'"{name}"' not in runs]
    assert not_run == [], not_run
    assert "mkdocs\", \"build\", \"--strict\"" in (tests / "test_docs.py").read_text()
