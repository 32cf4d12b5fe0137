"""Every JSON securefl writes is strict (RFC 8259: no NaN, Infinity or
-Infinity tokens).  A scan of the source finds every ``json.dump`` and
``json.dumps`` call and requires ``allow_nan=False``, so a non-finite float
that was not converted fails loudly instead of writing invalid JSON; the
conversion itself (:mod:`securefl.strictjson`) is checked on arbitrary
nested values."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.strictjson import dumps, sanitize

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["securefl", "scripts", "examples", "benchmarks"]


EXEMPT = "# strict-json: fuzz input"
"""Marks a ``json.dumps`` that builds a deliberately malformed *input* for the
decoder fuzzer (it never writes a file); allowed only in the fuzzer."""


def _json_writers() -> list[tuple[str, int, bool]]:
    found = []
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            text = path.read_text(encoding="utf-8")
            lines = text.splitlines()
            tree = ast.parse(text)
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                if (isinstance(func, ast.Attribute) and func.attr in ("dump", "dumps")
                        and isinstance(func.value, ast.Name) and func.value.id == "json"):
                    strict = any(k.arg == "allow_nan" and isinstance(k.value, ast.Constant)
                                 and k.value.value is False for k in node.keywords)
                    rel = str(path.relative_to(ROOT))
                    if lines[node.lineno - 1].rstrip().endswith(EXEMPT):
                        assert rel == "scripts/fuzz_decoders.py", f"{rel}: only fuzz inputs"
                        continue
                    found.append((str(path.relative_to(ROOT)), node.lineno, strict))
    return found


def test_every_json_writer_refuses_nan_and_infinity() -> None:
    writers = _json_writers()
    # the scan really finds the writers (the ledger, metrics, bench, vectors...)
    files = {path for path, _, _ in writers}
    assert {"securefl/privacy/ledger.py", "securefl/federation/reporting.py",
            "securefl/strictjson.py", "securefl/cli/audit.py",
            "securefl/conformance/jsonio.py", "securefl/bench/suite.py"} <= files
    loose = [f"{path}:{line}" for path, line, strict in writers if not strict]
    assert loose == [], f"json.dump(s) without allow_nan=False: {loose}"


def _refuse(name: str) -> Any:
    raise ValueError(f"non-strict token {name}")


nested = st.recursive(
    st.floats(allow_nan=True, allow_infinity=True) | st.integers() | st.text(max_size=3)
    | st.none() | st.booleans(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=3), children, max_size=4),
    max_leaves=20)


def _expected(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: _expected(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expected(v) for v in value]
    return value


@settings(max_examples=100, deadline=None)
@given(nested)
def test_sanitized_values_are_strict_json_with_the_documented_meaning(value: Any) -> None:
    text = dumps(value)
    assert json.loads(text, parse_constant=_refuse) == _expected(value)
    assert sanitize(value) == _expected(value)
