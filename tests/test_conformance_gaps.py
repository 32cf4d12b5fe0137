"""Broken implementations that passed the whole conformance suite before the
cases of the adversarial review (10.1/17-18, 10.2/8, 10.3/10-12, 10.4/4-7,
10.5/16-21, the blame check of 10.3/8-9) now fail it, each on the case for
the SPEC rule it breaks, and securefl's own client and server pass them.
So do clients whose refusals carry secret key material (every client
refusal is now searched for the secrets the runner can compute).

Most broken implementations are securefl's own session with one check
edited out of its source (exactly one occurrence, so a refactoring of the
reference that moves the check makes the test fail loudly rather than test
nothing); the others wrap the adapters.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

import securefl.protocol.client as client_module
import securefl.protocol.server as server_module
from securefl.conformance import adapters
from securefl.conformance.adapters import (
    ClientSpec,
    ClientUnderTest,
    RoundResult,
    SecureFLClient,
    SecureFLServer,
    ServerSpec,
    ServerUnderTest,
)
from securefl.conformance.cases import Outcome, Target
from securefl.conformance.runner import all_cases, run
from securefl.errors import ProtocolError, RemoteProtocolError, Rule
from securefl.hazmat import signing
from securefl.protocol import derivation
from securefl.protocol.client import ClientState
from securefl.protocol.messages import (
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShares,
    KeyRoster,
    UnmaskingResponse,
)
from securefl.wire import decode, encode
from securefl.wire import secagg_pb2 as pb

NEW_CASES = ("10.1/17", "10.1/18", "10.2/8", "10.3/10", "10.3/11", "10.3/12", "10.4/4",
             "10.4/5", "10.4/6", "10.4/7", "10.5/16", "10.5/17", "10.5/18", "10.5/19",
             "10.5/20", "10.5/21", "10.3/8", "10.3/9", "10.1/19", "10.1/20", "10.1/26",
             "10.1/27", "10.1/28", "10.5/22", "10.5/23", "12/2", "12/3",
             "10.1/29", "9.2/7")


def _edited(module: types.ModuleType, old: str, new: str) -> types.ModuleType:
    """A copy of ``module`` whose source has ``old`` replaced by ``new``."""
    path = Path(module.__file__ or "")
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {path.name}"
    name = f"{module.__name__}_broken_{abs(hash(old))}"
    copy = types.ModuleType(name)
    copy.__file__ = str(path)
    sys.modules[name] = copy  # dataclasses and typing resolve names through it
    exec(compile(text.replace(old, new), str(path), "exec"), copy.__dict__)
    return copy


def _client_from(module: types.ModuleType) -> Callable[[ClientSpec], ClientUnderTest]:
    """A client factory over ``module``'s ClientSession (only the client under
    test is broken: the runner's reference peers are built with the real one)."""
    def factory(spec: ClientSpec) -> ClientUnderTest:
        original = adapters.ClientSession
        adapters.ClientSession = module.ClientSession  # type: ignore[misc]
        try:
            return SecureFLClient(spec)
        finally:
            adapters.ClientSession = original  # type: ignore[misc]
    return factory


def _server_from(module: types.ModuleType) -> Callable[[ServerSpec], ServerUnderTest]:
    """A server factory over ``module``'s ServerSession."""
    def factory(spec: ServerSpec) -> ServerUnderTest:
        original = adapters.ServerSession
        adapters.ServerSession = module.ServerSession  # type: ignore[misc]
        try:
            return SecureFLServer(spec)
        finally:
            adapters.ServerSession = original  # type: ignore[misc]
    return factory


def _broken_client(old: str, new: str) -> Target:
    return Target(client=_client_from(_edited(client_module, old, new)))


def _broken_server(old: str, new: str) -> Target:
    return Target(server=_server_from(_edited(server_module, old, new)))


# -- broken implementations --------------------------------------------------


def roster_without_itself() -> Target:
    """Checks its own entry only when the roster has one ([R0-6])."""
    return _broken_client("if own is None or (own.encryption_key",
                          "if own is not None and (own.encryption_key")


def delivery_below_threshold() -> Target:
    """Masks with however few peers the delivery names ([R2-1])."""
    return _broken_client("self._fail(Rule.BELOW_THRESHOLD, f\"shares from",
                          "(lambda *_: None)(Rule.BELOW_THRESHOLD, f\"shares from")


def signs_list_without_itself() -> Target:
    """Signs (and unmasks for) a survivor list that leaves it out ([R3-1], [R4-2])."""
    return _broken_client("if not bool(_in_sorted(arr, np.array([self.client_id]))[0]):",
                          "if False:")


def counts_outsider_signatures() -> Target:
    """Counts every valid signature of the list, also a non-survivor's ([R4-6])."""
    return _broken_client("if signer not in survivor_set:", "if False:")


def stranger_in_dropped() -> Target:
    """Ignores dropped clients outside the roster ([R4-3])."""
    return _broken_client("strangers = drop_arr[~_in_sorted(self._roster_ids, drop_arr)]",
                          "strangers = drop_arr[:0]")


class _SignsEveryList(SecureFLClient):
    """Signs every consistency request it gets, also a second one with
    another survivor list ([R3-1]: at most one list per session)."""

    def __init__(self, spec: ClientSpec) -> None:
        super().__init__(spec)
        assert spec.identity_private_key is not None or spec.config.mode.value != "active"
        self._identity = spec.identity_private_key

    def handle(self, data: bytes) -> bytes:
        message = decode(data)
        if isinstance(message, ConsistencyRequest) and self._identity is not None and \
                self.session.state is ClientState.CONSISTENCY_SIGNED:
            key = Ed25519PrivateKey.from_private_bytes(self._identity)
            payload = derivation.consistency_payload(message.session_id, message.survivors)
            return encode(ConsistencySignature(message.recipient, message.session_id,
                                               signing.sign(key, payload)))
        return super().handle(data)


NOOP = "(lambda *_, **__: None)("
"""What a deleted refusal call becomes: its arguments are still evaluated."""


def _client_without(call: str) -> Target:
    """The reference client with the refusal ``self._fail(<call>`` made a no-op."""
    return _broken_client("self._fail(" + call, NOOP + call)


def _server_without(exception: str, arguments: str) -> Target:
    """The reference server with ``raise <exception>(<arguments>...)`` made a no-op."""
    return _broken_server(f"raise {exception}(" + arguments, NOOP + arguments)


EDITED: dict[str, tuple[Callable[[], Target], set[str]]] = {
    "client accepts a roster entry from outside the configuration": (
        lambda: _client_without('Rule.UNKNOWN_PEER, "roster lists a client outside'), {"10.1/19"}),
    "client accepts a low-order encryption key": (
        lambda: _client_without('Rule.INVALID_PUBLIC_KEY, "encryption key is of low order"'),
        {"10.1/20"}),
    "client accepts a non-canonical key": (
        lambda: _broken_client('                self._fail(Rule.INVALID_PUBLIC_KEY, "advertised'
                               ' keys must be canonically"', '                ' + NOOP
                               + 'Rule.INVALID_PUBLIC_KEY, "advertised keys must be'
                               ' canonically"'), {"10.1/26"}),
    "client accepts a sparse id set without itself": (
        lambda: _client_without("Rule.OWN_KEY_ALTERED, \"the roster's id set leaves out"),
        {"10.1/27"}),
    "client accepts a sparse roster for another configuration": (
        lambda: _client_without('Rule.WRONG_CONFIG, "roster was made for another'
                                ' configuration", rnd)\n        # exactly bytes'),
        {"10.1/28"}),
    "client answers a sparse roster addressed to another client": (
        lambda: _client_without('Rule.MALFORMED, "message addressed to client"'), {"10.1/29"}),
    "client accepts a survivor outside the roster": (
        lambda: _client_without('Rule.UNKNOWN_PEER, "survivor list names a client outside'),
        {"10.5/22"}),
    "server accepts a share outside the field": (
        lambda: _broken_server("shamir.check_shares(shares)", "pass"), {"10.5/23"}),
    "server goes on (or aborts untyped) when complaints leave too few": (
        lambda: _server_without("AbortError",
                                '\n                    f"{received} masked inputs'),
        {"12/2"}),
    "server unmasks with fewer than t holders of a seed": (
        lambda: _server_without("AbortError",
                                '\n                f"only {len(holders)} holders answered'),
        {"12/3"}),
}


class _KeyReuse(SecureFLClient):
    """Derives its 'randomness' from its id: the same keys and seed in every
    session ([R0-1])."""

    def __init__(self, spec: ClientSpec) -> None:
        seed = hashlib.sha256(b"reused" + spec.client_id.to_bytes(4, "big")).digest()
        super().__init__(dataclasses.replace(spec, random_seed=seed))


def key_reuse() -> Target:
    return Target(client=_KeyReuse)


def no_key_check() -> Target:
    """Checks reconstructed seeds against their commitments, but takes any
    reconstructed masking key ([R4-11])."""
    return _broken_server("return matches_public(value, advert.masking_key)", "return True")


def ignores_contradiction() -> Target:
    """Unmasks although a complaint's sender revealed a share of the client it
    reported ([R4-12])."""
    return _broken_server("if self._contradicted:", "if False:")


def excluded_never_delivered() -> Target:
    """Accepts a complaint about a client whose shares it never delivered ([R2-3])."""
    return _broken_server("if strays:", "if False:")


def excluded_below_threshold() -> Target:
    """Accepts a complaint list that leaves fewer than t - 1 peers ([R2-3])."""
    return _broken_server("if len(peer.delivered) - len(excluded) + 1 < self.config.t:",
                          "if False:")


class _NoComplaintBlame(SecureFLServer):
    """Removes both ends of a matched complaint but does not report them ([R2-6])."""

    def result(self) -> RoundResult:
        res = super().result()
        kept = {b.peer for b in self.session.result.blame if b.rule is not Rule.SHARES_REFUSED}
        return dataclasses.replace(res, blamed=tuple(sorted(kept)))


class _DropsDuplicates(SecureFLServer):
    """Silently ignores a second share message, consistency signature or
    unmasking response from one client instead of refusing it."""

    def receive(self, data: bytes) -> None:
        try:
            super().receive(data)
        except ProtocolError as exc:
            if exc.rule is not Rule.DUPLICATE_MESSAGE or not isinstance(
                    decode(data), (EncryptedShares, ConsistencySignature, UnmaskingResponse)):
                raise


BROKEN: dict[str, tuple[Callable[[], Target], set[str]]] = {
    "client accepts a roster without its own entry": (roster_without_itself, {"10.1/17"}),
    "client reuses keys and seed across sessions": (key_reuse, {"10.1/18"}),
    "client masks with fewer than t - 1 peers": (delivery_below_threshold, {"10.3/10"}),
    "client signs a list without itself": (signs_list_without_itself, {"10.4/4"}),
    "client signs a second list": (lambda: Target(client=_SignsEveryList), {"10.4/6"}),
    "client ignores a stranger in the dropped list": (stranger_in_dropped, {"10.5/16"}),
    "client counts a non-survivor's signature": (counts_outsider_signatures, {"10.5/17"}),
    "server skips the masking-key check": (no_key_check, {"10.5/18", "10.5/19"}),
    "server ignores a contradicted complaint": (ignores_contradiction, {"10.5/20"}),
    "server accepts a complaint about an undelivered client": (
        excluded_never_delivered, {"10.3/11"}),
    "server accepts a complaint list below t - 1 peers": (
        excluded_below_threshold, {"10.3/12"}),
    "server reports no complaint blame": (lambda: Target(server=_NoComplaintBlame),
                                          {"10.3/8", "10.3/9"}),
    "server ignores duplicate messages": (lambda: Target(server=_DropsDuplicates),
                                          {"10.2/8", "10.4/7", "10.5/21"}),
}


@pytest.mark.parametrize("name", sorted(BROKEN) + sorted(EDITED))
def test_the_broken_implementation_fails_the_suite(name: str) -> None:
    make, expected = {**BROKEN, **EDITED}[name]
    results = run(all_cases(vectors=False), make(), out=io.StringIO())
    failed = {r.case.id for r in results if r.outcome is Outcome.FAILED}
    assert expected <= failed, f"{name}: failed {sorted(failed)}, expected {sorted(expected)}"


def test_securefl_passes_the_new_cases() -> None:
    cases = [c for c in all_cases(vectors=False) if c.id in NEW_CASES]
    assert {c.id for c in cases} == set(NEW_CASES)
    results = run(cases, Target(), out=io.StringIO())
    assert all(r.outcome is Outcome.PASSED for r in results), [
        (r.case.id, r.detail) for r in results if r.outcome is not Outcome.PASSED]


class _LeaksOwnKey(SecureFLClient):
    """Appends its masking private key to every refusal (a 'debugging aid')."""

    def handle(self, data: bytes) -> bytes:
        key = self.session._s.private_bytes() if hasattr(self.session, "_s") else b""
        try:
            return super().handle(data)
        except RemoteProtocolError as exc:
            raise RemoteProtocolError(exc.rule, f"{exc.detail} (s_u={key.hex()})",
                                      peer=exc.peer, round=exc.round) from None


def _leaks_own_key(spec: ClientSpec) -> ClientUnderTest:
    return _LeaksOwnKey(spec)


_leaks_own_key.fixed_randomness = True  # type: ignore[attr-defined]


class _LeaksPairSecret(SecureFLClient):
    """Puts its raw X25519 agreement with client 2's masking key, as a bytes
    repr, into every refusal (it uses its own CSPRNG: no fixed randomness)."""

    _pair = b""

    def handle(self, data: bytes) -> bytes:
        message = decode(data)
        if isinstance(message, KeyRoster) and hasattr(self.session, "_s"):
            key = next(e.masking_key for e in message.entries if e.sender == 2)
            self._pair = self.session._s.private.exchange(X25519PublicKey.from_public_bytes(key))
        try:
            return super().handle(data)
        except RemoteProtocolError as exc:
            raise RemoteProtocolError(exc.rule, f"{exc.detail} [{self._pair!r}]",
                                      peer=exc.peer, round=exc.round) from None


@pytest.mark.parametrize("factory", [_leaks_own_key, _LeaksPairSecret])
def test_a_client_whose_refusals_carry_secrets_fails(
        factory: Callable[[ClientSpec], ClientUnderTest]) -> None:
    results = run([c for c in all_cases(vectors=False) if c.id.startswith("10.1/")],
                  Target(client=factory), out=io.StringIO())
    leaked = {r.case.id for r in results if "carries secret key material" in r.detail}
    assert {"10.1/7", "10.1/9", "10.1/17"} <= leaked, sorted(leaked)


class _EmptyResult(SecureFLServer):
    """Runs the protocol, then reports no survivors and their (zero) sum."""

    def result(self) -> RoundResult:
        res = super().result()
        return dataclasses.replace(res, total=(0,) * len(res.total), survivors=())


def test_a_server_reporting_no_survivors_fails_the_whole_round_cases() -> None:
    cases = [c for c in all_cases(vectors=False) if c.id.startswith(("11/", "10.5/13"))]
    results = run(cases, Target(server=_EmptyResult), out=io.StringIO())
    passed = {r.case.id for r in results if r.outcome is Outcome.PASSED}
    assert passed <= {"11/1", "11/2", "11/6"}, sorted(passed)  # client cases: reference server


class _DeduplicatesRoster(SecureFLClient):
    """Decodes leniently: a roster listing a sender twice loses the later
    repeats (order kept) instead of being refused ([WIRE-5])."""

    def handle(self, data: bytes) -> bytes:
        try:
            envelope = pb.SecAggMessage.FromString(data)
        except Exception:  # the strict decoder below refuses it
            return super().handle(data)
        if envelope.WhichOneof("body") == "key_roster":
            entries = envelope.key_roster.entries
            senders = [e.sender for e in entries]
            if len(set(senders)) < len(senders):
                kept: dict[int, pb.RosterEntry] = {}
                for entry in entries:
                    kept.setdefault(entry.sender, pb.RosterEntry.FromString(
                        entry.SerializeToString()))
                del entries[:]
                entries.extend(kept.values())
                data = envelope.SerializeToString()
        return super().handle(data)


def test_a_client_accepting_a_roster_with_a_repeated_sender_fails() -> None:
    results = run(all_cases(), Target(client=_DeduplicatesRoster), out=io.StringIO())
    assert [r.case.id for r in results if r.outcome is Outcome.FAILED] == ["9.2/7"]
