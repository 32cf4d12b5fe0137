"""No client secret in anything a refusal leaves behind.

Real sessions are driven to every round and fed malicious server messages
with every logger at DEBUG.  Every secret a client makes is recorded as it
is made (its randomness draws: private keys, the self-mask seed, excess-noise
seeds, Shamir coefficients; its pairwise agreements and derived keys; its
own Shamir shares; the shares it holds of peers; its raw input), and
everything the refusal leaves is scanned for them in raw, hex, base64,
``repr`` and integer forms: the log, the exception's message, ``repr``,
``args``, notes and attributes along its whole ``__cause__``/``__context__``
chain, the formatted traceback, and the traceback **with its frames'
local variables** (what ``TracebackException(capture_locals=True)``, error
trackers and ``loguru``'s ``diagnose`` write out), plus the ``repr`` of the
session afterwards.  Before the fix, a low-order key in a semi-honest roster
left the victim's shares of its own masking key and self-mask seed for every
holder in a frame of the exception (enough to rebuild both), and garbled
share ciphertexts left peers' decrypted shares there.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import logging
import os
import traceback
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pytest

from securefl import SecAggConfig, SecurityMode
from securefl.errors import RemoteProtocolError, SecureFLError, clear_traceback_locals
from securefl.hazmat import shamir
from securefl.protocol import client as client_module
from securefl.protocol import derivation as d
from securefl.protocol.harary import HararyGraph
from securefl.protocol.messages import ProvenEntry
from tests.protocol_harness import Federation

SEMI = SecAggConfig(num_clients=5, vector_length=8, threshold=3)
ACTIVE = SecAggConfig(num_clients=5, vector_length=8, threshold=3, mode=SecurityMode.ACTIVE)
# a sparse graph with per-client Merkle rosters (the other roster handler)
SPARSE = SecAggConfig(num_clients=12, vector_length=8, threshold=3, graph=HararyGraph(4),
                      roster_delivery="merkle", mode=SecurityMode.ACTIVE)


class Secrets:
    """Every secret value recorded while the sessions run."""

    def __init__(self) -> None:
        self.values: dict[bytes, str] = {}

    def note(self, value: bytes, kind: str) -> None:
        value = bytes(value)
        # (a value of few distinct bytes, e.g. all zeros, would match anything)
        if len(value) >= 16 and len(set(value[:16])) >= 10:
            self.values[value] = kind

    def token_source(self) -> Any:
        secrets = self

        class Recording:
            def token_bytes(self, n: int) -> bytes:
                out = os.urandom(n)
                secrets.note(out, "randomness")
                return out

        return Recording()


@pytest.fixture
def secrets(monkeypatch: pytest.MonkeyPatch) -> Secrets:
    """Record the agreements, derived keys and own shares every client makes."""
    found = Secrets()
    exchange = client_module.exchange

    def recording_exchange(private: Any, public: bytes) -> bytes:
        out = exchange(private, public)
        found.note(out, "agreement")
        return out

    monkeypatch.setattr(client_module, "exchange", recording_exchange)
    for name in ("share_key", "mask_key"):
        original = getattr(d.PeerDerivations, name)

        def derived(self: Any, secret: bytes, peer: int, _original: Any = original,
                    _name: str = name) -> bytes:
            out = _original(self, secret, peer)
            found.note(out, _name)
            return out

        monkeypatch.setattr(d.PeerDerivations, name, derived)
    to_bytes = shamir.shares_to_bytes

    def recording_shares(shares: np.ndarray) -> bytes:
        blob = to_bytes(shares)
        for i in range(0, len(blob), shamir.SHARE_BYTES):
            found.note(blob[i:i + shamir.SHARE_BYTES], "own share")
        return blob

    monkeypatch.setattr(shamir, "shares_to_bytes", recording_shares)
    return found


def forms(secret: bytes) -> Iterator[tuple[str, str]]:
    """The ways 12 or more bytes of ``secret`` could be written in text."""
    head = secret[:12]
    yield "hex", head.hex()
    yield "HEX", head.hex().upper()
    yield "repr", repr(head)[2:-1]
    for offset in range(3):
        chunk = secret[offset:offset + 15]
        yield "base64", base64.b64encode(chunk).decode()[:16]
        yield "base64url", base64.urlsafe_b64encode(chunk).decode()[:16]
    yield "int", str(int.from_bytes(secret, "little"))[:20]
    yield "int-be", str(int.from_bytes(secret, "big"))[:20]
    yield "list", repr(list(secret[:8]))[:-1]
    words = np.frombuffer(secret[:len(secret) // 4 * 4], dtype="<u4").tolist()
    if len(words) >= 3:
        yield "u32 words", f"{words[0]}, {words[1]}, {words[2]}"


def exception_texts(exc: BaseException) -> list[str]:
    """Everything an exception shows, along its whole chain, and its
    traceback with the frames' locals."""
    texts = ["".join(traceback.format_exception(exc)),
             "".join(traceback.TracebackException.from_exception(
                 exc, capture_locals=True).format())]
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), repr(current.args),
                  repr(getattr(current, "__notes__", None)), repr(vars(current))]
        current = current.__cause__ or current.__context__
    return texts


def leaks(secrets: Secrets, texts: list[str]) -> list[tuple[str, str, str]]:
    """(secret kind, form, surrounding text) of every secret found."""
    text = "\n".join(texts)
    out = []
    for secret, kind in secrets.values.items():
        for form, needle in forms(secret):
            at = text.find(needle)
            if at >= 0:
                out.append((kind, form, text[max(0, at - 200):at + 60]))
    return out


def federation(config: SecAggConfig, secrets: Secrets) -> Federation:
    gen = np.random.default_rng()
    inputs = {c: gen.integers(2**31, 2**32, config.vector_length, dtype=np.uint64)
              for c in config.ids}
    fed = Federation(config, inputs)
    for c, session in fed.clients.items():
        session._rng = secrets.token_source()
        secrets.note(inputs[c].tobytes(), "raw input")
    return fed


def note_state(fed: Federation, secrets: Secrets) -> None:
    """Record what the clients hold now (read from the sessions)."""
    for session in fed.clients.values():
        for name in ("_c", "_s"):
            if hasattr(session, name):
                secrets.note(getattr(session, name).private_bytes(), "private key")
        if hasattr(session, "_seed"):
            secrets.note(session._seed, "self-mask seed")
        for held in (session._held_key_shares, session._held_seed_shares):
            for share in held.values():
                secrets.note(share, "held share")


def at_round(config: SecAggConfig, secrets: Secrets, rounds: int) -> Federation:
    """A federation whose clients answered ``rounds`` server messages;
    client 5 drops before its masked input."""
    fed = federation(config, secrets)
    fed.advertise()
    note_state(fed, secrets)
    skips: list[set[int]] = [set(), {5}, set(), set()]
    for i in range(rounds):
        fed.step(skip=skips[i])
        note_state(fed, secrets)
    return fed


_BAD: tuple[Any, ...] = (None, b"", bytes(32), b"\xff" * 64, 0, -1, 2**40, "x", (), (1, 1),
                         {}, {1: b"\x00"}, 3.5)


def malicious(message: Any) -> Iterator[Any]:
    """Malformed and malicious variants of one server message."""
    for field in dataclasses.fields(message):
        current = getattr(message, field.name)
        for value in _BAD:
            try:
                yield dataclasses.replace(message, **{field.name: value})
            except Exception:
                continue
        if isinstance(current, Mapping) and current:
            for garble in (lambda c: bytes(len(c)), lambda c: c[:-1], lambda c: c[::-1]):
                yield dataclasses.replace(message, **{field.name: {
                    u: garble(c) if i else c for i, (u, c) in enumerate(current.items())}})
        if field.name == "entries":
            entries = list(current)
            for key in ("encryption_key", "masking_key"):
                for low_order in (bytes(32), b"\x01" + bytes(31)):
                    bad = list(entries)
                    last = bad[-1]
                    if isinstance(last, ProvenEntry):  # a Merkle roster's entry
                        bad[-1] = dataclasses.replace(last, entry=dataclasses.replace(
                            last.entry, **{key: low_order}))
                    else:
                        bad[-1] = dataclasses.replace(last, **{key: low_order})
                    yield dataclasses.replace(message, entries=tuple(bad))


def stages(config: SecAggConfig) -> int:
    return 4 if config.mode is SecurityMode.ACTIVE else 3


@pytest.mark.parametrize("config", [SEMI, ACTIVE, SPARSE],
                         ids=["semi-honest", "active", "active-sparse-merkle"])
def test_no_secret_in_what_malicious_messages_leave_behind(
        config: SecAggConfig, secrets: Secrets, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    refused = 0
    for rounds in range(stages(config)):
        count = sum(1 for _ in malicious(at_round(config, secrets, rounds).pending[1]))
        for index in range(count):
            # each variant of this federation's own message (its keys, its session)
            fed = at_round(config, secrets, rounds)
            victim = fed.clients[1]
            evil = next(itertools.islice(malicious(fed.pending[1]), index, None))
            texts: list[str] = []
            try:
                victim.handle(evil)
            except SecureFLError as exc:  # (anything else fails the test)
                refused += 1
                texts += exception_texts(exc)
            texts += [repr(victim), str(victim), caplog.text]
            found = leaks(secrets, texts)
            assert not found, f"{type(evil).__name__}: {found[:3]}"
            secrets.values.clear()
            caplog.clear()
    assert refused > 50


def test_the_refusals_that_leaked_before_leave_no_locals(secrets: Secrets) -> None:
    # semi-honest: a low-order encryption key in the roster is refused after
    # the victim split its masking key and seed into shares for every holder
    fed = at_round(SEMI, secrets, 0)
    roster = fed.pending[1]
    entries = list(roster.entries)
    entries[-1] = dataclasses.replace(entries[-1], encryption_key=bytes(32))
    with pytest.raises(RemoteProtocolError) as info:
        fed.clients[1].handle(dataclasses.replace(roster, entries=tuple(entries)))
    assert not leaks(secrets, exception_texts(info.value))
    assert _library_locals(info.value) <= {"self", "message", "keep"}
    # active: garbled ciphertexts, refused after one peer's shares decrypted
    fed = at_round(ACTIVE, secrets, 1)
    delivery = fed.pending[1]
    first = min(delivery.ciphertexts)
    garbled = {u: c if u == first else bytes(len(c)) for u, c in delivery.ciphertexts.items()}
    with pytest.raises(RemoteProtocolError) as info:
        fed.clients[1].handle(dataclasses.replace(delivery, ciphertexts=garbled))
    assert not leaks(secrets, exception_texts(info.value))
    assert _library_locals(info.value) <= {"self", "message", "keep"}


def _library_locals(exc: BaseException) -> set[str]:
    names: set[str] = set()
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        tb = current.__traceback__
        while tb is not None:
            if f"{os.sep}securefl{os.sep}" in tb.tb_frame.f_code.co_filename:
                names |= set(tb.tb_frame.f_locals)
            tb = tb.tb_next
        current = current.__cause__ or current.__context__
    return names


class _Box:
    """Holds a value out of sight of ``repr`` (so the test's own frame,
    which cannot be cleared, shows none)."""

    value = ""

    def __repr__(self) -> str:
        return "_Box()"


def _shows(box: _Box, exc: BaseException) -> bool:
    """Does ``exc``'s traceback with locals show ``box.value``?  (Computed
    here: pytest keeps an assertion's operands in the test's own frame.)"""
    return box.value in "".join(traceback.TracebackException.from_exception(
        exc, capture_locals=True).format())


def test_clear_traceback_locals_leaves_the_callers_exception_alone() -> None:
    secret, own = _Box(), _Box()

    def inner(box: _Box) -> None:
        value = box.value = os.urandom(16).hex()  # noqa: F841 - a local of this frame
        raise ValueError("refused")

    def caller_frame(box: _Box) -> None:
        value = box.value = os.urandom(16).hex()  # noqa: F841 - a local of this frame
        raise KeyError("earlier")

    try:
        caller_frame(own)
    except KeyError as earlier:
        try:
            try:
                inner(secret)
            except ValueError as first:
                raise RuntimeError("wrapped") from first
        except RuntimeError as exc:
            before = _shows(secret, exc)
            clear_traceback_locals(exc, keep=earlier)
            after = _shows(secret, exc)  # cause and context cleared
            frames_kept = "in inner" in "".join(traceback.format_exception(exc))
            callers_kept = _shows(own, earlier)  # the caller's exception is left alone
    assert (before, after, frames_kept, callers_kept) == (True, False, True, True)


class _BrokenExecutor:
    """An executor that fails when the client masks its input (after the
    pair keys and mask keys were derived)."""

    def map(self, fn: Any, *iterables: Any) -> Iterator[Any]:
        raise RuntimeError("the pool is shut down")

    def submit(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the pool is shut down")


def test_an_executor_failure_while_masking_leaves_no_mask_key(secrets: Secrets) -> None:
    # enough peers (8 mask keys) that two workers split the keys
    fed = at_round(SecAggConfig(num_clients=9, vector_length=8, threshold=5), secrets, 1)
    victim = fed.clients[1]
    victim._executor, victim._workers = _BrokenExecutor(), 2
    with pytest.raises(RuntimeError, match="shut down") as info:
        victim.handle(fed.pending[1])
    assert any(kind == "mask_key" for kind in secrets.values.values())
    assert not leaks(secrets, exception_texts(info.value))
    assert _library_locals(info.value) <= {"self", "message", "keep"}


def _value_texts(values: np.ndarray) -> list[str]:
    """How a few of ``values`` would be written by numpy's or Python's repr."""
    flat = np.asarray(values).reshape(-1)[:3]
    out = [np.array2string(flat, separator=", ")[1:-1]]
    for v in flat.tolist():
        text = repr(v)
        if len(text) >= 6:  # (a short value, like 0 or 1.5, may be anywhere)
            out.append(text)
    return out


def test_a_clients_update_is_in_no_repr() -> None:
    pytest.importorskip("torch")
    from torch import nn

    from securefl.encoding import FixedPointCodec
    from securefl.federation.client_update import client_update
    from securefl.federation.server import AggregationMode
    from securefl.privacy import DPConfig, PrivateClient

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    client = PrivateClient(2, model, x, y, DPConfig(noise_multiplier=1.0, sample_rate=0.25,
                                                    batch_size=15))
    shapes = tuple(tuple(p.shape) for p in client.parameters())
    params = [p.detach().clone() for p in client.parameters()]
    for mode, max_weight in ((AggregationMode.SECURE, 1000), (AggregationMode.PLAIN, 1000)):
        codec = FixedPointCodec(shapes=shapes, bits=32, frac_bits=16, clip=0.01,
                                num_clients=5, max_weight=max_weight)
        update = client_update(client, params, codec, 1, mode)
        assert update.result is not None and update.encoded is not None
        encoded = getattr(update.encoded, "vector", getattr(update.encoded, "values", None))
        assert encoded is not None and update.encoded.num_clipped > 0
        secret_texts = [t for a in update.result.update for t in _value_texts(a)]
        secret_texts += _value_texts(np.asarray(encoded)[:-1])
        shown = " ".join(f(o) for o in (update, update.result, update.encoded)
                         for f in (repr, str))
        assert not [t for t in secret_texts if t in shown], shown
        assert "num_clipped" not in shown and "weight=" not in shown


def test_reconstructed_secrets_are_in_no_repr() -> None:
    from securefl.hazmat.randomness import SystemRandom

    values = [os.urandom(32), os.urandom(32)]
    values[0] = values[0][:31] + bytes([values[0][31] & 0x3F])  # below the field's bound
    values[1] = values[1][:31] + bytes([values[1][31] & 0x3F])
    holders = [1, 2, 3, 4]
    shares = shamir.split(values, holders, 3, SystemRandom())
    found = shamir.Reconstructor(holders, 3).reconstruct_verified(
        shares, lambda index, secret: secret == values[index], SystemRandom())
    assert found.secrets == values
    secrets = Secrets()
    for value in values:
        secrets.note(value, "reconstructed secret")
    assert not leaks(secrets, [repr(found), str(found)])
