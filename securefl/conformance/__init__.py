"""The secagg v1 conformance suite: test vectors and adversarial scenarios
run against any client and server behind the byte-level adapter interface
of :mod:`securefl.conformance.adapters`.  Command line: ``securefl
conformance`` (see ``securefl conformance --help``)."""

from securefl.conformance.adapters import (
    ClientSpec,
    ClientUnderTest,
    Primitives,
    RoundResult,
    ServerSpec,
    ServerUnderTest,
)
from securefl.conformance.cases import Case, CaseResult, Outcome, Target
from securefl.conformance.runner import all_cases, run, summarize

__all__ = [
    "Case",
    "CaseResult",
    "ClientSpec",
    "ClientUnderTest",
    "Outcome",
    "Primitives",
    "RoundResult",
    "ServerSpec",
    "ServerUnderTest",
    "Target",
    "all_cases",
    "run",
    "summarize",
]
