"""The conformance runner: securefl passes every case, and deliberately
broken implementations are caught, reported and fail the exit status."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from securefl.cli import main
from securefl.conformance.adapters import (
    ClientSpec,
    ClientUnderTest,
    SecureFLClient,
    SecureFLServer,
    ServerSpec,
    ServerUnderTest,
    load_factory,
)
from securefl.conformance.cases import Outcome, Target
from securefl.conformance.runner import all_cases, run, summarize
from securefl.errors import ConfigurationError, ProtocolError, RemoteProtocolError, Rule
from securefl.protocol.messages import MaskedInput, UnmaskingRequest
from securefl.wire import decode


class AnswersTwice(SecureFLClient):
    """Broken: answers a second unmasking request (with its first answer's
    shares and whatever the new request adds)."""

    def __init__(self, spec: ClientSpec) -> None:
        super().__init__(spec)
        self._last: bytes | None = None

    def handle(self, data: bytes) -> bytes:
        if self._last is not None and isinstance(decode(data), UnmaskingRequest):
            return self._last
        reply = super().handle(data)
        if isinstance(decode(data), UnmaskingRequest):
            self._last = reply
        return reply


class AbortsOnDuplicates(SecureFLClient):
    """Broken (the old behaviour): a repeated server message aborts the client."""

    def __init__(self, spec: ClientSpec) -> None:
        super().__init__(spec)
        self._seen: set[bytes] = set()

    def handle(self, data: bytes) -> bytes:
        if data in self._seen:
            self._broken = True
            raise RemoteProtocolError(Rule.WRONG_ROUND, "seen this before")
        self._seen.add(data)
        return super().handle(data)


class AbortsOnBadCiphertext(SecureFLClient):
    """Broken (the old behaviour): one undecryptable share aborts the client."""

    def handle(self, data: bytes) -> bytes:
        reply = super().handle(data)
        message = decode(reply)
        if isinstance(message, MaskedInput) and message.excluded:
            self._broken = True
            raise RemoteProtocolError(Rule.DECRYPTION_FAILED, "ciphertext did not decrypt",
                                      peer=message.excluded[0])
        return reply


class WrongRules(SecureFLClient):
    """Broken: refuses the right things but reports every refusal as MALFORMED."""

    def handle(self, data: bytes) -> bytes:
        try:
            return super().handle(data)
        except RemoteProtocolError as exc:
            raise RemoteProtocolError(Rule.MALFORMED, str(exc)) from None


class Lenient(SecureFLServer):
    """Broken: silently drops what it should refuse (accepts without error)."""

    def receive(self, data: bytes) -> None:
        try:
            super().receive(data)
        except ProtocolError:
            return


def answers_twice(spec: ClientSpec) -> ClientUnderTest:
    """Factory for :class:`AnswersTwice`."""
    return AnswersTwice(spec)


def wrong_rules(spec: ClientSpec) -> ClientUnderTest:
    """Factory for :class:`WrongRules`."""
    return WrongRules(spec)


def lenient(spec: ServerSpec) -> ServerUnderTest:
    """Factory for :class:`Lenient`."""
    return Lenient(spec)


def by_id(results: list) -> dict:  # type: ignore[type-arg]
    return {r.case.id: r for r in results}


def test_securefl_passes_every_case(capsys: pytest.CaptureFixture[str]) -> None:
    cases = all_cases()
    results = run(cases, Target())
    out = capsys.readouterr().out.splitlines()
    summary = summarize(results)
    assert summary.failed == 0 and summary.skipped == 0 and summary.passed == len(cases)
    assert out[-1] == f"{len(cases)} tests, {len(cases)} passed, 0 skipped, 0 failed"
    assert len(out) == len(cases) + 1 and all(line.startswith("[PASS] ") for line in out[:-1])
    kinds = {c.kind for c in cases}
    assert kinds == {"vectors", "client", "server"}
    assert len({c.id for c in cases}) == len(cases)


def test_cli_runs_lists_and_writes_reports(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["conformance", "--list", "-k", "10.5"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[-1] == f"{len(listed) - 1} cases" and listed[0].startswith("10.5/1 ")
    report, junit = tmp_path / "r.json", tmp_path / "r.xml"
    status = main(["conformance", "--only", "scenarios", "-k", "10.1", "--json", str(report),
                   "--junit", str(junit)])
    assert status == 0
    data = json.loads(report.read_text())
    assert data["summary"]["failed"] == 0 and data["summary"]["tests"] == 29
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "29" and suite.get("failures") == "0"


def test_a_client_answering_a_second_unmasking_request_is_reported(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["conformance", "--only", "scenarios", "--client",
                   "tests.test_conformance:answers_twice", "--junit", str(tmp_path / "j.xml")])
    out = capsys.readouterr().out.splitlines()
    assert status != 0
    failed = [line for line in out if line.startswith("[FAIL]")]
    assert any(line.startswith("[FAIL] 10.5/2 ") for line in failed), failed
    assert any(line.startswith("[FAIL] 10.5/3 ") and "accepted" in line for line in failed)
    assert out[-1].endswith(f"{len(failed)} failed") and len(failed) == 2
    suite = ET.parse(tmp_path / "j.xml").getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "2"


def test_refusing_for_the_wrong_rule_is_a_failure() -> None:
    cases = [c for c in all_cases() if c.kind == "client"]
    results = by_id(run(cases, Target(client=wrong_rules)))
    assert results["10.1/7"].outcome is Outcome.FAILED
    assert "expected 'duplicate-advertised-key'" in results["10.1/7"].detail
    assert results["11/1"].outcome is Outcome.PASSED  # honest rounds still work


def test_a_server_that_swallows_bad_messages_fails_and_state_is_checked() -> None:
    cases = [c for c in all_cases() if c.kind == "server" or "/server" in c.id]
    results = by_id(run(cases, Target(server=lenient)))
    assert results["10.1/2"].outcome is Outcome.FAILED  # duplicate advertisement accepted
    assert results["10.3/5"].outcome is Outcome.FAILED
    assert results["14.3/round_semi_honest_dropouts/server"].outcome is Outcome.FAILED
    assert results["11/3"].outcome is Outcome.PASSED


def test_without_fixed_randomness_client_replays_are_skipped() -> None:
    def no_fixed(spec: ClientSpec) -> ClientUnderTest:
        return SecureFLClient(spec)

    cases = [c for c in all_cases() if c.id.endswith("/clients")]
    results = run(cases, Target(client=no_fixed, primitives=None))
    assert {r.outcome for r in results} == {Outcome.SKIPPED}
    assert summarize(results).line().endswith(f"{len(cases)} skipped, 0 failed")
    prim = [c for c in all_cases() if c.id.startswith("4/")]
    assert {r.outcome for r in run(prim, Target(primitives=None))} == {Outcome.SKIPPED}


def test_adapter_loading_errors_are_clear() -> None:
    with pytest.raises(ConfigurationError):
        load_factory("no_colon")
    with pytest.raises(ConfigurationError):
        load_factory("securefl.no_such_module:x")
    with pytest.raises(ConfigurationError):
        load_factory("securefl.conformance.adapters:KDF_LABEL_PREFIX")
    factory = load_factory("tests.test_conformance:lenient")
    assert factory.__name__ == "lenient" and callable(factory)


def test_clients_with_the_old_abort_everything_behaviour_fail_the_new_cases() -> None:
    cases = [c for c in all_cases() if c.kind == "client"]
    dup = by_id(run(cases, Target(client=AbortsOnDuplicates)))
    assert dup["10/1"].outcome is Outcome.FAILED and dup["10/2"].outcome is Outcome.FAILED
    assert dup["11/1"].outcome is Outcome.PASSED
    bad = by_id(run(cases, Target(client=AbortsOnBadCiphertext)))
    assert bad["10.3/1"].outcome is Outcome.FAILED and bad["10.3/2"].outcome is Outcome.FAILED
    assert bad["11/1"].outcome is Outcome.PASSED


def test_a_server_that_does_not_check_commitments_fails_the_forged_share_cases(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from securefl.hazmat import shamir

    original = shamir.Reconstructor.reconstruct_verified

    def trusting(self, shares, verify, rng, suspects=None):  # type: ignore[no-untyped-def]
        return original(self, shares, lambda i, v: True, rng, suspects)
    monkeypatch.setattr(shamir.Reconstructor, "reconstruct_verified", trusting)
    cases = [c for c in all_cases() if c.id.startswith("10.5/1")]
    results = by_id(run(cases, Target()))
    assert results["10.5/12"].outcome is Outcome.FAILED  # a wrong sum at exactly t
    assert results["10.5/13"].outcome is Outcome.FAILED  # an honest holder blamed
