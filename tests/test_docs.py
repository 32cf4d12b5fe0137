"""The documentation site builds with warnings as errors, and its API
reference leaves no module out.

``mkdocs build --strict`` fails on a broken link or anchor, a page missing
from the navigation, or a docstring that names a parameter the signature does
not have.  It needs the ``docs`` extra (``make test`` installs it); without
mkdocs the build test is skipped.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference"
DOCUMENTED = ["protocol", "hazmat", "wire", "conformance", "privacy", "federation"]


def _documented_modules() -> set[str]:
    names: set[str] = set()
    for page in REFERENCE.glob("*.md"):
        names.update(re.findall(r"^::: ([\w.]+)\s*$", page.read_text(), flags=re.MULTILINE))
    return names


@pytest.mark.parametrize("package", DOCUMENTED)
def test_every_public_module_has_a_reference_entry(package: str) -> None:
    directory = ROOT / "securefl" / package
    modules = {f"securefl.{package}.{p.stem}" for p in directory.glob("*.py")
               if not p.stem.startswith("_") and not p.stem.endswith("_pb2")}
    assert modules, package
    missing = sorted(modules - _documented_modules())
    assert not missing, f"add these to docs/reference/{package}.md: {missing}"


def test_encoding_and_errors_have_reference_pages() -> None:
    assert {"securefl.encoding", "securefl.errors", "securefl.schemas"} <= _documented_modules()


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None
                    or importlib.util.find_spec("mkdocstrings_handlers") is None
                    or importlib.util.find_spec("material") is None,
                    reason="the docs extra is not installed: pip install -e '.[docs]'")
def test_the_site_builds_strictly(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                           "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(site)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-5000:]
    assert "WARNING" not in log, log[-5000:]
    # the generated reference documents what the docstrings say
    protocol = (site / "reference" / "protocol" / "index.html").read_text()
    assert "secure_sum" in protocol and "ClientSession" in protocol
    # the three kinds of users, bring-your-own, and the finance and NLP domains
    for tutorial in ("ml-engineer", "byo", "implementer", "privacy-officer"):
        assert (site / "tutorials" / tutorial / "index.html").is_file()
    domains = (site / "domains" / "index.html").read_text()
    assert "finance_credit.py" in domains and "nlp_topics.py" in domains and "AUC" in domains
    # pages and the plot that live outside docs/ (scripts/mkdocs_hooks.py)
    assert (site / "security" / "index.html").is_file()
    assert (site / "spec" / "index.html").is_file()
    assert (site / "benchmarks" / "results" / "time_vs_n.png").read_bytes()[:4] == b"\x89PNG"
    # the published JSON Schemas: downloadable, and shown inline on their page
    for name in ("ledger-record", "metrics"):
        served = site / "securefl" / "schemas" / f"{name}.schema.json"
        assert served.read_bytes() == (ROOT / "securefl" / "schemas" / served.name).read_bytes()
    assert "securefl-ledger/2" in (site / "schemas" / "index.html").read_text()
