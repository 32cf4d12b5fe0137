"""Conformance cases, their outcomes, and the target they run against."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass

from securefl.conformance.adapters import (
    ClientFactory,
    Primitives,
    ServerFactory,
    securefl_client,
    securefl_primitives,
    securefl_server,
)
from securefl.errors import ProtocolError, Rule


class CaseFailedError(Exception):
    """The implementation under test did not behave as the spec requires."""


class CaseSkippedError(Exception):
    """The case cannot run against this target (e.g. it lacks a capability)."""


class Outcome(str, enum.Enum):
    """A case's outcome."""

    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class Target:
    """The implementation under test: a client factory, a server factory and
    optionally its primitives (None: primitive vectors are skipped)."""

    client: ClientFactory = securefl_client
    server: ServerFactory = securefl_server
    primitives: Callable[[], Primitives] | None = securefl_primitives
    description: str = "securefl (built-in)"

    @property
    def client_fixed_randomness(self) -> bool:
        """True when client transcripts can be compared byte for byte."""
        return bool(getattr(self.client, "fixed_randomness", False))


@dataclass(frozen=True)
class Case:
    """One conformance case.

    Attributes:
        id: ``<spec section>/<n>`` for scenarios, ``<section>/<file>/<n>``
            for vectors (h2spec style).
        section: the SPEC.md section the case checks.
        title: one line saying what is expected.
        kind: ``"vectors"``, ``"client"`` (the runner plays the server) or
            ``"server"`` (the runner plays the clients).
        run: the check; raises :class:`CaseFailedError` or :class:`CaseSkippedError`.
    """

    id: str
    section: str
    title: str
    kind: str
    run: Callable[[Target], None]


@dataclass(frozen=True)
class CaseResult:
    """What happened when a case ran."""

    case: Case
    outcome: Outcome
    detail: str = ""
    seconds: float = 0.0


def run_case(case: Case, target: Target) -> CaseResult:
    """Run one case; any unexpected exception is a failure (with its text)."""
    start = time.perf_counter()
    try:
        case.run(target)
    except CaseSkippedError as exc:
        return CaseResult(case, Outcome.SKIPPED, str(exc), time.perf_counter() - start)
    except CaseFailedError as exc:
        return CaseResult(case, Outcome.FAILED, str(exc), time.perf_counter() - start)
    except Exception as exc:  # the implementation under test may raise anything
        return CaseResult(case, Outcome.FAILED, f"unexpected {type(exc).__name__}: {exc}",
                          time.perf_counter() - start)
    return CaseResult(case, Outcome.PASSED, "", time.perf_counter() - start)


def expect_refusal(action: Callable[[], object], rule: Rule, what: str) -> ProtocolError:
    """Run ``action``; it must raise a ProtocolError with ``rule``.

    Raises:
        CaseFailedError: it was accepted, or refused for another rule.
    """
    try:
        action()
    except ProtocolError as exc:
        if exc.rule is not rule:
            raise CaseFailedError(f"{what}: refused with rule '{exc.rule.value}', expected"
                             f" '{rule.value}' ({exc})") from None
        return exc
    raise CaseFailedError(f"{what}: accepted, expected refusal with rule '{rule.value}'")
