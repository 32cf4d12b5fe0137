#!/usr/bin/env python3
"""Fuzz every decoder of untrusted bytes or JSON in securefl (docs/fuzzing.md).

Each *target* drives one decoder through its public functions with inputs
derived from real, valid encodings (a real in-memory secure aggregation round,
the shipped conformance vectors, real ledger rows) by structure-aware and
byte-level mutation, plus random bytes.  Per target the run reports:

* inputs: how many inputs were fed;
* untyped: how many raised anything that is not a ``SecureFLError`` (the
  property is: every input decodes or raises a ``SecureFLError`` subclass);
* other findings: a canonical decoder whose ``decode(encode(x))`` does not
  round-trip, or a refusal that changed a session's state;
* slowest: the slowest single input, in seconds (required < 1 s);
* alloc: the largest peak allocation traced by ``tracemalloc`` while decoding
  one input, divided by ``max(input bytes, FLOOR_BYTES)`` (required <= 10).
  It is measured on a sample: every ``--sample``-th input plus the largest
  inputs of every target.  ``tracemalloc`` sees every allocation made through
  Python's allocators and numpy's; it does not see memory protobuf's C
  runtime takes from its own arena (proportional to the wire size).

The inputs come from a PRNG seeded from the command line: they protect
nothing, they only make a run reproducible.

    nice -n 19 python scripts/fuzz_decoders.py --inputs 1000000 --seed 1 --out fuzz.json

Exit status 0 when every requirement holds, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import copyreg
import dataclasses
import enum
import json
import math
import os
import random
import signal
import sys
import tempfile
import time
import tracemalloc
import types
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from securefl.conformance import vectors as vectors_module  # noqa: E402
from securefl.conformance.adapters import (  # noqa: E402
    ClientSpec,
    SecureFLClient,
    SecureFLServer,
)
from securefl.conformance.cases import CaseFailedError, CaseSkippedError, Target  # noqa: E402
from securefl.conformance.jsonio import (  # noqa: E402
    DEFAULT_VECTOR_DIR,
    config_from_json,
    graph_from_text,
)
from securefl.encoding import FixedPointCodec, max_frac_bits, min_bits  # noqa: E402
from securefl.errors import SecureFLError  # noqa: E402
from securefl.hazmat import signing  # noqa: E402
from securefl.hazmat.randomness import default_random  # noqa: E402
from securefl.privacy.ledger import LedgerEntry, PrivacyLedger, read_ledger  # noqa: E402
from securefl.protocol.client import ClientSession  # noqa: E402
from securefl.protocol.config import SecAggConfig, SecurityMode  # noqa: E402
from securefl.protocol.harary import HararyGraph  # noqa: E402
from securefl.protocol.server import ServerSession  # noqa: E402
from securefl.wire import decode, encode  # noqa: E402

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*gencode version.*", category=UserWarning)
    from securefl.wire import secagg_pb2 as pb

FLOOR_BYTES = 4096
"""Allocation ratios are taken against at least this many input bytes: a
decoder's fixed cost (a protobuf message object, a dataclass, an exception
with its message) is a few KiB whatever the input."""
MAX_SECONDS = 1.0
MAX_ALLOC_RATIO = 10.0

# sessions hold read-only views of their maps; snapshots deep-copy them
copyreg.pickle(types.MappingProxyType, lambda m: (types.MappingProxyType, (dict(m),)))

# -- a real round: the seed corpus -------------------------------------------------

CONFIGS = {
    "semi-honest": SecAggConfig(num_clients=5, vector_length=6, bits=20, threshold=3),
    "active": SecAggConfig(num_clients=5, vector_length=4, bits=64, threshold=3,
                           mode=SecurityMode.ACTIVE),
    "harary": SecAggConfig(num_clients=6, vector_length=3, bits=12, threshold=3,
                           graph=HararyGraph(4)),
    "harary-merkle": SecAggConfig(num_clients=8, vector_length=3, bits=16, threshold=3,
                                  mode=SecurityMode.ACTIVE, graph=HararyGraph(4),
                                  roster_delivery="merkle"),
}


@dataclasses.dataclass
class RoundCorpus:
    """Everything one real round produced.

    Attributes:
        config: its configuration.
        pinned: the clients' pinned Ed25519 public keys (active mode).
        client_messages: every client -> server message, in order.
        server_messages: every server -> client message with its recipient.
        server_snapshots: (label, server, pending client messages): the
            server while collecting one round, having received all that
            round's messages but the pending ones.
        client_snapshots: (label, client adapter, the server message it is
            about to handle, encoded).
    """

    config: SecAggConfig
    pinned: dict[int, Any]
    client_messages: list[Any]
    server_messages: list[tuple[int, Any]]
    server_snapshots: list[tuple[str, ServerSession, list[Any]]]
    client_snapshots: list[tuple[str, SecureFLClient, bytes]]


def real_round(name: str, config: SecAggConfig) -> RoundCorpus:
    """Run one complete round with real sessions (OS randomness), recording
    every message and snapshotting both ends before each step."""
    identities: dict[int, Any] = {}
    pinned: dict[int, Any] = {}
    if config.mode is SecurityMode.ACTIVE:
        identities = {c: signing.generate_identity(default_random(None)) for c in config.ids}
        pinned = {c: k.public_key() for c, k in identities.items()}
    server = ServerSession(config, peer_identities=pinned or None)
    rng = np.random.default_rng(0)
    clients: dict[int, SecureFLClient] = {}
    for cid in config.ids:
        spec = ClientSpec(config, cid, tuple(int(x) for x in rng.integers(
            0, 1 << min(config.bits, 62), config.vector_length)))
        adapter = SecureFLClient.__new__(SecureFLClient)
        adapter.session = ClientSession(config, cid, input=np.asarray(spec.input, np.uint64),
                                        identity_key=identities.get(cid),
                                        peer_identities=pinned or None)
        adapter._element_bytes = config.wire_element_bytes
        adapter._config = config
        adapter._broken = False
        clients[cid] = adapter
    corpus = RoundCorpus(config, pinned, [], [], [], [])
    pending = [c.session.start() for c in clients.values()]
    step = 0
    while True:
        corpus.client_messages.extend(pending)
        for message in pending[:-1]:
            server.receive(message)
        corpus.server_snapshots.append((f"{name}/server/{step}", copy.deepcopy(server),
                                        pending[-1:]))
        server.receive(pending[-1])
        envelopes = server.close_round()
        if server.finished:
            break
        pending = []
        for envelope in envelopes:
            corpus.server_messages.append((envelope.recipient, envelope.message))
            client = clients[envelope.recipient]
            data = encode(envelope.message)
            corpus.client_snapshots.append((f"{name}/client{envelope.recipient}/{step}",
                                            copy.deepcopy(client), data))
            pending.append(decode(client.handle(data)))
        step += 1
    return corpus


_CORPORA: dict[str, RoundCorpus] = {}


def corpora() -> dict[str, RoundCorpus]:
    """The real rounds (built once per process)."""
    if not _CORPORA:
        for name, config in CONFIGS.items():
            _CORPORA[name] = real_round(name, config)
    return _CORPORA


def wire_seeds() -> list[bytes]:
    """Every message of every real round, encoded."""
    out = []
    for corpus in corpora().values():
        width = corpus.config.wire_element_bytes
        out += [encode(m, element_bytes=width) for m in corpus.client_messages]
        out += [encode(m) for _, m in corpus.server_messages]
    return out


# -- generic mutators ---------------------------------------------------------------

INTERESTING_INTS = [0, 1, 2, 3, 7, 8, 9, 127, 128, 255, 256, 65535, 65536, 2**24, 2**31 - 1,
                    2**31, 2**32 - 1]


def mutate_bytes(rng: random.Random, data: bytes, max_len: int = 1 << 16) -> bytes:
    """One to four byte-level mutations: flip, set, insert, delete, truncate,
    duplicate a slice, splice random bytes."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:
            buf[pos % len(buf)] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:
            buf[pos % len(buf)] = rng.choice([0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)])
        elif op == 2:
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 3 and buf:
            del buf[pos:pos + rng.randint(1, 16)]
        elif op == 4:
            del buf[pos:]
        elif op == 5 and buf:
            start = rng.randrange(len(buf))
            chunk = buf[start:start + rng.randint(1, 64)]
            buf[pos:pos] = chunk * rng.randint(1, 4)
        elif op == 6:
            buf[pos:pos + 4] = rng.choice([b"\xff\xff\xff\xff\x0f", b"\x80" * 10, b"\x00",
                                           b"\x0a\xff\xff\xff\xff\x07"])
        else:
            buf[pos:pos] = rng.randbytes(rng.randint(0, 3))
    return bytes(buf[:max_len])


def _pb_leaves(message: Any, out: list[tuple[Any, Any]]) -> None:
    for field in message.DESCRIPTOR.fields:
        out.append((message, field))
        if field.type == field.TYPE_MESSAGE:
            if field.label == field.LABEL_REPEATED:
                for item in getattr(message, field.name):
                    _pb_leaves(item, out)
            elif message.HasField(field.name):
                _pb_leaves(getattr(message, field.name), out)


def mutate_protobuf(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    """Parse a valid encoding, change one field (boundary ints, resized or
    random bytes, dropped/duplicated/reordered/added repeated entries, a
    cleared or swapped oneof body), and re-serialise, sometimes
    non-canonically (field order, a concatenated second message, an unknown
    field)."""
    envelope = pb.SecAggMessage.FromString(data)
    for _ in range(rng.randint(1, 3)):
        leaves: list[tuple[Any, Any]] = []
        _pb_leaves(envelope, leaves)
        message, field = rng.choice(leaves)
        name = field.name
        try:
            if field.label == field.LABEL_REPEATED:
                items = getattr(message, name)
                op = rng.randrange(5)
                if op == 0 and len(items):
                    del items[rng.randrange(len(items))]
                elif op == 1 and len(items):
                    if field.type == field.TYPE_MESSAGE:
                        items.add().CopyFrom(items[rng.randrange(len(items))])
                    else:
                        items.append(items[rng.randrange(len(items))])
                elif op == 2 and len(items) > 1:
                    values = list(items)
                    rng.shuffle(values)
                    del items[:]
                    if field.type == field.TYPE_MESSAGE:
                        for v in values:
                            items.add().CopyFrom(v)
                    else:
                        items.extend(values)
                elif op == 3 and field.type != field.TYPE_MESSAGE:
                    items.append(rng.choice(INTERESTING_INTS))
                elif field.type == field.TYPE_MESSAGE:
                    for _ in range(rng.choice([1, 1, 2, 50])):
                        items.add()
                else:
                    items.extend(rng.randrange(2**32) for _ in range(rng.choice([1, 2, 1000])))
            elif field.type == field.TYPE_MESSAGE:
                if field.containing_oneof is not None and rng.random() < 0.5:
                    other = rng.choice(field.containing_oneof.fields)
                    getattr(message, other.name).SetInParent()
                    getattr(message, other.name).version = 1
                else:
                    message.ClearField(name)
            elif field.type == field.TYPE_BYTES:
                value = getattr(message, name)
                setattr(message, name, rng.choice([
                    b"", value[:-1], value + b"\x00", value[: rng.randrange(len(value) + 1)],
                    rng.randbytes(len(value)), value * 2, rng.randbytes(rng.randint(0, 200)),
                    bytes(len(value)), b"\xff" * len(value)]))
            elif field.type in (field.TYPE_UINT32, field.TYPE_UINT64):
                setattr(message, name, rng.choice([*INTERESTING_INTS, rng.randrange(2 ** 32)]))
            elif rng.random() < 0.5 and field.has_presence:
                message.ClearField(name)
        except (ValueError, TypeError, IndexError):
            pass
    how = rng.randrange(10)
    if how == 0:
        return envelope.SerializeToString(deterministic=False)
    if how == 1:
        return envelope.SerializeToString(deterministic=True) + rng.choice(seeds)
    if how == 2:
        return envelope.SerializeToString(deterministic=True) + rng.choice(
            [b"\x50\x01", b"\xf8\x07\x01", b"\x0a\x00", bytes([rng.randrange(256)])])
    return envelope.SerializeToString(deterministic=True)


def random_json(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON-ish value, biased to the types and edges that break
    parsers (huge and negative ints, NaN, infinities, bools, nesting)."""
    kind = rng.randrange(12 if depth < 4 else 8)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, 1, -1, 2, 2**31, 2**63, 2**64 + 1, -(2**63), 10**30,
                           rng.randrange(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.0, -0.0, 0.5, 1e-300, 1e300, -1.5, math.nan, math.inf, -math.inf])
    if kind == 4:
        return rng.choice(["", "x", "inf", "nan", "1", "complete", "harary:k=4",
                           "harary:k=99999999999999999999", "00" * 32, "zz", "\u00e9",
                           "\ud800", "semi-honest", "active", "included", "round-aborted"])
    if kind == 5:
        return rng.randbytes(rng.randint(0, 40)).hex()
    if kind == 6:
        return [rng.random(), rng.random(), rng.randrange(100)]
    if kind == 7:
        return "9" * rng.choice([10, 5000])
    if kind in (8, 9):
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(["a", "tcId", "result", "0", "1"]): random_json(rng, depth + 1)
            for _ in range(rng.randint(0, 3))}


def _json_nodes(value: Any, path: tuple[Any, ...], out: list[tuple[Any, ...]]) -> None:
    out.append(path)
    if isinstance(value, dict):
        for k, v in value.items():
            _json_nodes(v, (*path, k), out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _json_nodes(v, (*path, i), out)


def mutate_json(rng: random.Random, value: Any) -> Any:
    """Change 1..3 random nodes of a parsed JSON document: replace with a
    random value, delete a key or element, duplicate an element, or add a key."""
    value = copy.deepcopy(value)
    for _ in range(rng.randint(1, 3)):
        nodes: list[tuple[Any, ...]] = []
        _json_nodes(value, (), nodes)
        path = rng.choice(nodes)
        if not path:
            if rng.random() < 0.05:
                value = random_json(rng)
            continue
        parent = value
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        op = rng.randrange(6)
        if (op == 0 and isinstance(parent, dict)) or (op == 0 and isinstance(parent, list)):
            del parent[key]
        elif op == 1 and isinstance(parent, list):
            parent.append(copy.deepcopy(parent[key]))
        elif op == 2 and isinstance(parent, dict):
            parent[rng.choice(["extra", "tcId", "x"])] = random_json(rng)
        elif op == 3 and isinstance(parent[key], str) and parent[key]:
            text = parent[key]
            cut = rng.randrange(len(text))
            parent[key] = rng.choice([text[:cut], text + "0", text[:cut] + "g" + text[cut + 1:],
                                      text.upper()])
        elif op == 4 and isinstance(parent[key], int) and not isinstance(parent[key], bool):
            parent[key] = rng.choice([parent[key] + 1, parent[key] - 1, -parent[key], 0,
                                      2**31, 2**64, float(parent[key]), str(parent[key]), True])
        else:
            parent[key] = random_json(rng)
    return value


def dump_json(rng: random.Random, value: Any) -> bytes:
    """Serialise, sometimes with a byte-level mutation on top."""
    dumped = json.dumps(value, allow_nan=True)  # strict-json: fuzz input
    text = dumped.encode("utf-8", "surrogatepass")
    if rng.random() < 0.15:
        text = mutate_bytes(rng, text, max_len=1 << 20)
    return text


# -- targets -------------------------------------------------------------------------


HANG_SECONDS = 20.0
"""An input still running after this long is stopped and counted as untyped."""


class Hang(Exception):  # noqa: N818 - reported by name in the table
    """The input ran longer than HANG_SECONDS."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise Hang(f"still running after {HANG_SECONDS} s")


class Finding(Exception):  # noqa: N818 - reported by name in the table
    """A property other than exception typing failed (round trip, state)."""


@dataclasses.dataclass
class FuzzTarget:
    """One decoder under fuzz.

    Attributes:
        name: the table row.
        weight: share of ``--inputs`` it gets.
        generate: ``generate(rng) -> input``.
        run: feeds one input; raises whatever the decoder raises.
        size: the input's size in bytes.
        largest: a few deliberately large inputs (measured for allocation).
    """

    name: str
    weight: float
    generate: Callable[[random.Random], Any]
    run: Callable[[Any], None]
    size: Callable[[Any], int]
    largest: Callable[[], list[Any]]
    measure: Callable[[Any], Any] | None = None
    """What is traced for allocation (default ``run``): the decode alone,
    without the fuzzer's own round-trip checks."""
    prepare: Callable[[Any], Any] | None = None
    """Untraced set-up for ``measure`` (e.g. copying a session)."""


# wire.decode ------------------------------------------------------------------------


def wire_generate(rng: random.Random) -> bytes:
    """A random, byte-mutated or structure-mutated encoding."""
    seeds = wire_seeds_cached()
    r = rng.random()
    if r < 0.1:
        return rng.randbytes(rng.randint(0, 300))
    if r < 0.45:
        return mutate_bytes(rng, rng.choice(seeds))
    if r < 0.5:
        return rng.choice(seeds)
    return mutate_protobuf(rng, rng.choice(seeds), seeds)


_WIRE_SEEDS: list[bytes] = []


def wire_seeds_cached() -> list[bytes]:
    """:func:`wire_seeds`, computed once."""
    if not _WIRE_SEEDS:
        _WIRE_SEEDS.extend(wire_seeds())
    return _WIRE_SEEDS


def wire_run(data: bytes) -> None:
    """decode without and with every configuration; a decoded message must
    re-encode to exactly the same bytes (the codec is canonical).  Raises
    the refusal when no decoding accepted the bytes."""
    refusal: SecureFLError | None = None
    decoded = False
    for config in (None, *CONFIGS.values()):
        try:
            message = decode(data, config=config)
        except SecureFLError as exc:
            refusal = exc
            continue
        decoded = True
        envelope = pb.SecAggMessage.FromString(data)
        width = (envelope.masked_input.element_bytes
                 if envelope.WhichOneof("body") == "masked_input" else None)
        if encode(message, element_bytes=width) != data:
            raise Finding(f"decode(encode(x)) does not round-trip: {type(message).__name__}")
    if not decoded and refusal is not None:
        raise refusal


def wire_largest() -> list[bytes]:
    """A 1 MiB masked vector at every width, a 20,000-entry roster, a
    20,000-peer share delivery and an unmasking response."""
    sid = bytes(32)
    out = []
    for width in (1, 3, 8):
        envelope = pb.SecAggMessage()
        body = envelope.masked_input
        body.version, body.sender, body.session_id = 1, 1, sid
        body.element_bytes, body.masked = width, os.urandom((1 << 20) // width * width)
        out.append(envelope.SerializeToString(deterministic=True))
    envelope = pb.SecAggMessage()
    roster = envelope.key_roster
    roster.version, roster.config_digest = 1, sid
    for i in range(1, 10_001):
        entry = roster.entries.add()
        entry.sender, entry.encryption_key, entry.masking_key = i, os.urandom(32), os.urandom(32)
        entry.signature = os.urandom(64)
    out.append(envelope.SerializeToString(deterministic=True))
    envelope = pb.SecAggMessage()
    delivery = envelope.share_delivery
    delivery.version, delivery.recipient, delivery.session_id = 1, 1, sid
    for i in range(1, 20_001):
        entry = delivery.ciphertexts.add()
        entry.peer, entry.ciphertext = i, os.urandom(144)
    out.append(envelope.SerializeToString(deterministic=True))
    envelope = pb.SecAggMessage()
    request = envelope.consistency_request
    request.version, request.recipient, request.session_id = 1, 1, sid
    request.survivors.extend(range(1, 200_001))
    out.append(envelope.SerializeToString(deterministic=True))
    envelope = pb.SecAggMessage()
    resp = envelope.unmasking_response
    resp.version, resp.sender, resp.session_id = 1, 1, sid
    for i in range(1, 10_001):
        entry = resp.self_mask_shares.add()
        entry.owner, entry.share = i, bytes(64)
    out.append(envelope.SerializeToString(deterministic=True))
    return out


# server.receive (decoded but adversarial) -------------------------------------------


class _Weird:
    """An object of no expected type."""


def adversarial_value(rng: random.Random, current: Any) -> Any:
    """A value of a wrong type, size or range for a message field."""
    choices: list[Any] = [
        True, False, None, 0, -1, 2**31, 2**64, 2**4000, 1.0, math.nan, "1", b"", b"\x00" * 31,
        b"\x00" * 33, bytearray(32), memoryview(b"\x00" * 32), np.int64(1), np.uint8(1), [],
        {}, (), (1, 1), (True,), ("1",), {1: b""}, {True: b"\x00" * 64}, {"1": b""},
        {2**70: b""}, {1: 5}, {1: None}, {1: "x" * 64}, np.zeros(3), np.zeros((2, 2), np.uint64),
        np.array(["a"]), np.array([2**63], dtype=np.uint64), np.array([-1], dtype=np.int64),
        np.array([1.5]), [1, 2, 3], object(), _Weird(), frozenset({1, 2}), set(),
    ]
    if isinstance(current, bytes):
        choices += [current[:-1], current + b"\x00", bytearray(current), current * 2,
                    current.decode("latin-1")]
    if isinstance(current, int) and not isinstance(current, bool):
        choices += [current + 1, current - 1, -current, float(current), str(current),
                    np.int64(current), bool(current)]
    if isinstance(current, tuple):
        choices += [current + current[:1], current[:-1], tuple(reversed(current)),
                    tuple(bool(x) for x in current), tuple(str(x) for x in current),
                    list(current), (*current, 2 ** 64)]
    if isinstance(current, np.ndarray):
        choices += [current[:-1], np.concatenate([current, current[:1]]), current.astype(np.int64),
                    current.astype(np.float64), current.astype(object), current.reshape(1, -1),
                    current.tolist(), current.astype(np.uint8), current.astype(np.uint16),
                    current[::-1].copy(), np.full_like(current, np.iinfo(current.dtype).max)]
    if hasattr(current, "items"):
        items = list(current.items())
        choices += [dict(items[:-1]), dict([*items, (max(current, default=0) + 1, b"")])]
        if items:
            k, v = rng.choice(items)
            for bad_key in (True, float(k), str(k), np.int64(k), -k, 2**64):
                changed = dict(items)
                changed.pop(k)
                changed[bad_key] = v
                choices.append(changed)
            for bad_value in (v[:-1], v + b"\x00", bytearray(v), v.hex(), None, 5, [v], b""):
                changed = dict(items)
                changed[k] = bad_value
                choices.append(changed)
            choices.append(tuple(current))
            choices.append([v])
    return rng.choice(choices)


def build_message(cls: type, values: dict[str, Any]) -> Any:
    """An instance of a (frozen) message dataclass with arbitrary field values,
    bypassing its constructor: what any decoder other than ours could hand
    the session."""
    obj = object.__new__(cls)
    for name, value in values.items():
        object.__setattr__(obj, name, value)
    return obj


def mutate_message(rng: random.Random, message: Any) -> Any:
    """Replace one to three fields of a message with adversarial values."""
    values = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
    for name in rng.sample(sorted(values), k=min(len(values), rng.randint(1, 3))):
        values[name] = adversarial_value(rng, values[name])
    return build_message(type(message), values)


def _summary(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tobytes()
    if isinstance(value, dict):
        return tuple((k, _summary(v)) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return len(value)
    if isinstance(value, bytes | int | str | float | enum.Enum) or value is None:
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # a record the session keeps per client (its _Peer): every field
        return (type(value).__name__, *((f.name, _summary(getattr(value, f.name)))
                                        for f in dataclasses.fields(value)))
    return type(value).__name__


def fingerprint(session: Any) -> dict[str, Any]:
    """A cheap summary of every attribute of a session (its state, every
    per-client record field by field, every collection's size, the running
    sum)."""
    return {k: _summary(v) for k, v in vars(session).items()}


class ServerPool:
    """Pristine servers at every round of every real round, and the messages
    that may be fed to them."""

    def __init__(self) -> None:
        self.snapshots: list[tuple[str, ServerSession, Any, list[Any]]] = []
        for corpus in corpora().values():
            for label, server, pending in corpus.server_snapshots:
                self.snapshots.append((label, server, fingerprint(server), pending))
        self.messages = [m for c in corpora().values() for m in c.client_messages]
        self.live: dict[int, ServerSession] = {}

    def session(self, index: int) -> ServerSession:
        """A live copy of snapshot ``index`` (unchanged since last refusal)."""
        if index not in self.live:
            self.live[index] = copy.deepcopy(self.snapshots[index][1])
        return self.live[index]


_SERVERS: list[ServerPool] = []


def servers() -> ServerPool:
    """The pool (built once per process)."""
    if not _SERVERS:
        _SERVERS.append(ServerPool())
    return _SERVERS[0]


def server_generate(rng: random.Random) -> tuple[int, Any]:
    """(snapshot index, an adversarial message based on a pending or any
    recorded message)."""
    pool = servers()
    index = rng.randrange(len(pool.snapshots))
    pending = pool.snapshots[index][3]
    base = rng.choice(pending) if pending and rng.random() < 0.7 else rng.choice(pool.messages)
    return index, mutate_message(rng, base)


def server_run(item: tuple[int, Any]) -> None:
    """Feed the message; a refusal must leave the session unchanged."""
    index, message = item
    pool = servers()
    session = pool.session(index)
    before = fingerprint(session)
    try:
        session.receive(message)
    except SecureFLError:
        if fingerprint(session) != before:
            pool.live.pop(index, None)
            raise Finding("a refused message changed the server's state") from None
        raise
    pool.live.pop(index, None)  # accepted: the next input starts from the snapshot


def server_prepare(item: tuple[int, Any]) -> tuple[ServerSession, Any]:
    """A fresh copy of the server at that snapshot, and the message."""
    index, message = item
    return copy.deepcopy(servers().snapshots[index][1]), message


def server_measure(prepared: tuple[ServerSession, Any]) -> None:
    """Feed the message to the prepared copy (traced)."""
    session, message = prepared
    session.receive(message)


def server_largest() -> list[tuple[int, Any]]:
    """Huge vectors and maps at every snapshot."""
    pool = servers()
    out = []
    for index, (_, _, _, pending) in enumerate(pool.snapshots):
        for message in pending:
            values = {f.name: getattr(message, f.name) for f in dataclasses.fields(message)}
            for name, value in values.items():
                if isinstance(value, np.ndarray):
                    out.append((index, build_message(type(message), {
                        **values, name: np.zeros(1 << 18, dtype=value.dtype)})))
                elif hasattr(value, "items"):
                    out.append((index, build_message(type(message), {
                        **values, name: {i: b"\x00" * 64 for i in range(1, 20_001)}})))
    return out


def object_size(item: Any, depth: int = 0) -> int:
    """The payload bytes of an object input, roughly its wire size: bytes and
    strings by length, arrays by ``nbytes``, containers by their items (plus
    8 bytes each), dataclasses by their fields, anything else 8."""
    if depth > 20:
        return 8
    if isinstance(item, bytes | bytearray | memoryview | str):
        return len(item)
    if isinstance(item, np.ndarray):
        return int(item.nbytes)
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return sum(object_size(getattr(item, f.name, None), depth + 1)
                   for f in dataclasses.fields(item))
    if hasattr(item, "items"):
        try:
            return sum(8 + object_size(k, depth + 1) + object_size(v, depth + 1)
                       for k, v in item.items())
        except Exception:
            return 8
    if isinstance(item, list | tuple | set | frozenset):
        return sum(8 + object_size(x, depth + 1) for x in item)
    return 8


# adapters: bytes into the conformance server and clients ----------------------------


class AdapterPool:
    """Conformance adapters (byte interface) at every step of the real rounds."""

    def __init__(self) -> None:
        self.servers: list[tuple[SecureFLServer, Any, list[bytes]]] = []
        for corpus in corpora().values():
            width = corpus.config.wire_element_bytes
            for _, server, pending in corpus.server_snapshots:
                adapter = SecureFLServer.__new__(SecureFLServer)
                adapter.session = copy.deepcopy(server)
                adapter.config = corpus.config
                self.servers.append((adapter, fingerprint(adapter.session),
                                     [encode(m, element_bytes=width) for m in pending]))
        self.clients = [(client, data) for corpus in corpora().values()
                        for _, client, data in corpus.client_snapshots]
        self.live: dict[int, SecureFLServer] = {}


_ADAPTERS: list[AdapterPool] = []


def adapters() -> AdapterPool:
    """The pool (built once per process)."""
    if not _ADAPTERS:
        _ADAPTERS.append(AdapterPool())
    return _ADAPTERS[0]


def adapter_generate(rng: random.Random) -> tuple[str, int, bytes]:
    """Bytes for a server adapter (mutated pending client messages) or a
    client adapter (mutated server messages)."""
    pool = adapters()
    seeds = wire_seeds_cached()
    if rng.random() < 0.5:
        index = rng.randrange(len(pool.servers))
        pending = pool.servers[index][2]
        base = rng.choice(pending) if pending and rng.random() < 0.8 else rng.choice(seeds)
        kind = "server"
    else:
        index = rng.randrange(len(pool.clients))
        base = pool.clients[index][1] if rng.random() < 0.8 else rng.choice(seeds)
        kind = "client"
    r = rng.random()
    if r < 0.05:
        data = base
    elif r < 0.4:
        data = mutate_bytes(rng, base)
    else:
        data = mutate_protobuf(rng, base, seeds)
    return kind, index, data


def adapter_run(item: tuple[str, int, bytes]) -> None:
    """Feed the bytes to a copy of the adapter at that step."""
    kind, index, data = item
    pool = adapters()
    if kind == "client":
        client = copy.deepcopy(pool.clients[index][0])
        client.handle(data)
        return
    server = pool.live.get(index)
    if server is None:
        server = pool.live[index] = copy.deepcopy(pool.servers[index][0])
    before = fingerprint(server.session)
    try:
        server.receive(data)
    except SecureFLError:
        if fingerprint(server.session) != before:
            pool.live.pop(index, None)
            raise Finding("a refused message changed the server adapter's state") from None
        raise
    pool.live.pop(index, None)


def adapter_prepare(item: tuple[str, int, bytes]) -> tuple[Any, bytes]:
    """A fresh copy of the adapter at that step, and the bytes."""
    kind, index, data = item
    pool = adapters()
    source = pool.clients[index][0] if kind == "client" else pool.servers[index][0]
    return copy.deepcopy(source), data


def adapter_measure(prepared: tuple[Any, bytes]) -> None:
    """Feed the bytes to the prepared copy (traced)."""
    adapter, data = prepared
    if isinstance(adapter, SecureFLClient):
        adapter.handle(data)
    else:
        adapter.receive(data)


def adapter_size(item: tuple[str, int, bytes]) -> int:
    """The byte input's length."""
    return len(item[2])


def adapter_largest() -> list[tuple[str, int, bytes]]:
    """Huge wire messages at every server and client step."""
    pool = adapters()
    big = wire_largest()
    return ([("server", i, big[0]) for i in range(len(pool.servers))]
            + [("client", i, big[i % len(big)]) for i in range(len(pool.clients))])


# ledger ------------------------------------------------------------------------------


def ledger_entries() -> list[LedgerEntry]:
    """Real-looking ledger rows of every status (as the simulator writes them)."""
    entries = []
    for i, status in enumerate(["included", "dropped", "encoding-error", "round-aborted",
                                "refused-budget"]):
        entries.append(LedgerEntry(
            round=i + 1, client_id=i + 1, status=status, entered_sum=status == "included",
            noise_multiplier=1.1, sample_rate=0.01,
            local_steps=0 if status == "refused-budget" else 50, delta=1e-5,
            epsilon_rdp=0.5 + i, epsilon_prv=None if i % 2 else 0.4,
            accountant="rdp" if i % 2 else "prv", epsilon_budget=None if i == 2 else 8.0,
            survivors=3, dropped_at="SHARE_KEYS" if status == "dropped" else None,
            history=[[1.1, 0.01, 50]] * (i + 1)))
    return entries


def ledger_rows() -> list[dict[str, Any]]:
    """The rows of :func:`ledger_entries` as the JSON objects ``to_json`` writes."""
    return [json.loads(entry.to_json()) for entry in ledger_entries()]


_LEDGER_DIR: list[Path] = []


def _scratch() -> Path:
    """A private scratch directory (in /dev/shm when there is one)."""
    if not _LEDGER_DIR:
        base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None
        _LEDGER_DIR.append(Path(tempfile.mkdtemp(prefix="securefl-fuzz-", dir=base)))
    return _LEDGER_DIR[0]


_LEDGER_FILE: list[bytes] = []


def _write_ledger(path: Path, entries: list[LedgerEntry]) -> None:
    """Write ``entries`` with the library's own writer, every round as the
    simulator does: an in-flight block (``begin_round``), then the settled
    block (``settle_round``)."""
    path.unlink(missing_ok=True)
    ledger = PrivacyLedger(path)
    rounds: dict[int, list[LedgerEntry]] = {}
    for entry in entries:
        rounds.setdefault(entry.round, []).append(entry)
    for number in sorted(rounds):
        ledger.begin_round(number, [dataclasses.replace(e, status="in-flight",
                                                        entered_sum=False)
                                    for e in rounds[number]])
        ledger.settle_round(number, rounds[number])


def ledger_file() -> bytes:
    """A whole ledger written by the library's own writer (header, in-flight
    and settled blocks of hash-chained rows, commits): the fuzzer follows the
    ledger format as it changes."""
    if not _LEDGER_FILE:
        path = _scratch() / "seed-ledger.jsonl"
        _write_ledger(path, ledger_entries())
        _LEDGER_FILE.append(path.read_bytes())
    return _LEDGER_FILE[0]


def ledger_generate(rng: random.Random) -> bytes:
    """A real ledger file with one line mutated (JSON-aware, byte-level or
    replaced by a hostile line), or random bytes."""
    r = rng.random()
    if r < 0.05:
        return rng.randbytes(rng.randint(0, 200))
    lines = ledger_file().splitlines()
    if rng.random() < 0.3:  # a prefix of the file
        lines = lines[:rng.randint(1, len(lines))]
    target = rng.randrange(len(lines))
    if r < 0.3:
        lines[target] = mutate_bytes(rng, lines[target])
    elif r < 0.35:
        lines[target] = rng.choice([b"[" * 100_000, b'{"a":' * 50_000, b"1e999999", b"-0",
                                    b"\xff\xfe", b"\x00", b"null", b"[]", b'"x"', b"9" * 5000])
    else:
        try:
            value = json.loads(lines[target])
        except ValueError:
            value = None
        lines[target] = (dump_json(rng, mutate_json(rng, value)) if value is not None
                         else mutate_bytes(rng, lines[target]))
    return b"\n".join(lines) + rng.choice([b"\n", b"", b"\r\n", b"\n\n"])


def ledger_run(data: bytes) -> None:
    """read_ledger on the bytes as a file; every row it returns (with a
    history under 1,000 rows: ``to_json`` deep-copies) must re-serialise and
    parse back to itself."""
    path = _scratch() / "ledger.jsonl"
    path.write_bytes(data)
    for entry in read_ledger(path):
        if len(entry.history) >= 1000:
            continue
        again = LedgerEntry.from_json(entry.to_json())
        if again.to_json() != entry.to_json():
            raise Finding("a ledger row does not round-trip")


def ledger_read(data: bytes) -> list[LedgerEntry]:
    """read_ledger alone (what is traced for allocation)."""
    path = _scratch() / "ledger.jsonl"
    path.write_bytes(data)
    return read_ledger(path)


def ledger_largest() -> list[bytes]:
    """A long ledger, a row with a 100,000-step history, deep nesting."""
    header = ledger_file().split(b"\n", 1)[0] + b"\n"  # the reader stops without one
    path = _scratch() / "largest-ledger.jsonl"
    _write_ledger(path, [dataclasses.replace(entry, round=1 + i // 5)
                         for i, entry in enumerate(ledger_entries() * 300)])
    many = path.read_bytes()
    row = {**ledger_rows()[0], "type": "row", "prev": None}
    row["history"] = [[1.1, 0.01, 50]] * 50_000
    long_history = header + json.dumps(row).encode() + b"\n"  # strict-json: fuzz input
    row["history"] = [[]] * 300_000
    empties = header + json.dumps(row).encode() + b"\n"  # strict-json: fuzz input
    row["history"] = [[0, 0, 0]] * 100_000
    packed = json.dumps(row, separators=(",", ":"))  # strict-json: fuzz input
    compact = header + packed.encode() + b"\n"
    return [many, long_history, empties, compact, header + b"[" * 1_000_000 + b"\n"]


def audit_run(data: bytes) -> None:
    """``securefl audit`` of the ledger file alone (chain verification, then the
    Opacus and dp-accounting recomputation of every row)."""
    from securefl.cli.audit import audit_run as audit

    path = _scratch() / "ledger.jsonl"
    path.write_bytes(data)
    audit(path)


# encoding parameters -----------------------------------------------------------------

CODEC_ARGS = {"shapes": ((3,), (2, 2)), "bits": 32, "frac_bits": 16, "clip": 4.0,
              "num_clients": 2, "max_weight": 1}


def codec_generate(rng: random.Random) -> tuple[dict[str, Any], Any]:
    """Codec parameters (some adversarial) and a sum vector to decode."""
    args = dict(CODEC_ARGS)
    for name in rng.sample(sorted(args), k=rng.randint(1, 3)):
        value = args[name]
        if name == "shapes" and rng.random() < 0.5:
            args[name] = rng.choice([(), ((),), ((0,),), ((-1,),), ((1.5,),), (("3",),), ((True,),),
                                     ((2**62, 2**62),), (3,), "abc", None, [[2, 2]], ((2**4000,),),
                                     ((np.int64(3),),), ((3,),) * 1000, (((3,),),),
                                     ((math.nan,),), ((math.inf,),)])
        elif name == "clip" and rng.random() < 0.5:
            args[name] = rng.choice([0.0, -1.0, math.nan, math.inf, 1e308, 1e-308, 5e-324,
                                     "4", None, True, 2**2000, np.float32(4), 10**400])
        else:
            args[name] = adversarial_value(rng, value) if rng.random() < 0.5 else rng.choice(
                [0, 1, 2, 63, 64, 65, -1, -2**63, 2**63, 10**6, -10**6, 2**4000, True])
    sums: list[Any] = [np.zeros(8, np.uint64), np.zeros(7, np.uint64), np.zeros(8, np.int64),
                       np.full(8, 2**64 - 1, np.uint64), [0] * 8, np.zeros(8, np.float64),
                       np.zeros(8, object), "x", None, np.zeros((8, 1), np.uint64),
                       np.arange(8, dtype=np.uint8), np.zeros(8, np.uint32)]
    return args, rng.choice(sums)


def codec_run(item: tuple[dict[str, Any], Any]) -> None:
    """Build the codec, decode the sum; also the bit-budget helpers."""
    args, total = item
    try:
        max_frac_bits(bits=args["bits"], clip=args["clip"], num_clients=args["num_clients"])
        min_bits(frac_bits=args["frac_bits"], clip=args["clip"], num_clients=args["num_clients"],
                 max_weight=args["max_weight"])
    finally:
        codec = FixedPointCodec(**args)
        codec.decode_sum(total)


def codec_largest() -> list[tuple[dict[str, Any], Any]]:
    """A long shape list and a large sum."""
    return [({**CODEC_ARGS, "shapes": ((1,),) * 20_000}, np.zeros(20_001, np.uint64)),
            ({**CODEC_ARGS, "shapes": ((1 << 18,),)}, np.zeros((1 << 18) + 1, np.uint64))]


# conformance vectors -------------------------------------------------------------------


def vector_seeds() -> list[tuple[str, Any]]:
    """(file name, document): every primitive test alone in a copy of its
    file, and every round transcript."""
    out = []
    for path in sorted(DEFAULT_VECTOR_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        if path.name.startswith("round_"):
            out.append((path.name, data))
            continue
        for group in data["testGroups"]:
            for test in group["tests"]:
                single = dict(data)
                single["testGroups"] = [{**group, "tests": [test]}]
                out.append((path.name, single))
    return out


_VECTOR_SEEDS: list[tuple[str, Any]] = []


def vectors_generate(rng: random.Random) -> tuple[str, bytes]:
    """(file name, bytes): a mutated vector file, or a mutated config."""
    if not _VECTOR_SEEDS:
        _VECTOR_SEEDS.extend(vector_seeds())
    name, data = rng.choice(_VECTOR_SEEDS)
    if rng.random() < 0.02:
        return name, rng.randbytes(rng.randint(0, 100))
    return name, dump_json(rng, mutate_json(rng, data))


_TARGET = Target()


def vectors_run(item: tuple[str, bytes]) -> None:
    """Load the file with the conformance loader, then run every case it
    yields against securefl; a case may pass, fail or skip (CaseFailedError,
    CaseSkippedError), nothing else."""
    name, data = item
    directory = _scratch() / "vectors"
    directory.mkdir(exist_ok=True)
    for old in directory.glob("*.json"):
        old.unlink()
    (directory / name).write_bytes(data)
    for case in vectors_module.vector_cases(directory):
        with contextlib.suppress(CaseFailedError, CaseSkippedError):
            case.run(_TARGET)


def config_generate(rng: random.Random) -> Any:
    """A mutated configuration JSON object (or graph text)."""
    if not _VECTOR_SEEDS:
        _VECTOR_SEEDS.extend(vector_seeds())
    rounds = [d for n, d in _VECTOR_SEEDS if n.startswith("round_")]
    config = rng.choice(rounds)["config"]
    if rng.random() < 0.2:
        return rng.choice(["complete", "harary:k=", "harary:k=3", "harary:k=٣", "harary:k=10",
                           "harary:k=" + "9" * 5000, None, 4, "harary:k=4 "])
    return mutate_json(rng, config)


def config_run(item: Any) -> None:
    """config_from_json (or graph_from_text for a bare string)."""
    if isinstance(item, dict):
        config_from_json(item)
    else:
        graph_from_text(item)


def config_largest() -> list[Any]:
    """A roster of 100,000 ids."""
    if not _VECTOR_SEEDS:
        _VECTOR_SEEDS.extend(vector_seeds())
    config = dict(next(d for n, d in _VECTOR_SEEDS if n.startswith("round_"))["config"])
    config["clientIds"] = list(range(1, 100_001))
    config["numClients"] = 100_000
    return [config]


def json_size(item: Any) -> int:
    """Bytes of the JSON text of an input."""
    try:
        return len(json.dumps(item, default=str))  # strict-json: fuzz input
    except (ValueError, TypeError, RecursionError):
        return 64


TARGETS: list[FuzzTarget] = [
    FuzzTarget("wire.decode", 0.6, wire_generate, wire_run, len, wire_largest,
               measure=decode),
    FuzzTarget("server.receive", 0.15, server_generate, server_run, object_size,
               server_largest, measure=server_measure, prepare=server_prepare),
    FuzzTarget("adapters (bytes)", 0.03, adapter_generate, adapter_run, adapter_size,
               adapter_largest, measure=adapter_measure, prepare=adapter_prepare),
    FuzzTarget("ledger.read_ledger", 0.08, ledger_generate, ledger_run, len, ledger_largest,
               measure=ledger_read),
    FuzzTarget("encoding params", 0.1, codec_generate, codec_run, object_size, codec_largest),
    FuzzTarget("jsonio.config_from_json", 0.06, config_generate, config_run, json_size,
               config_largest),
    FuzzTarget("vectors loader+cases", 0.015, vectors_generate, vectors_run,
               lambda item: len(item[1]), lambda: []),
    FuzzTarget("audit (audit_run)", 0.0005, ledger_generate, audit_run, len,
               lambda: []),
]


# -- the driver -------------------------------------------------------------------------


@dataclasses.dataclass
class Stats:
    """Per-target figures."""

    inputs: int = 0
    untyped: int = 0
    findings: int = 0
    typed: int = 0
    accepted: int = 0
    slowest: float = 0.0
    measured: int = 0
    max_ratio: float = 0.0
    max_peak: int = 0
    examples: list[str] = dataclasses.field(default_factory=list)


def run_one(target: FuzzTarget, item: Any, stats: Stats, measure: bool) -> None:
    """Feed one input (timed, untraced), classify its outcome; when
    ``measure``, feed it once more under ``tracemalloc`` for its peak
    allocation (tracing slows Python down several times, so it is never
    timed)."""
    start = time.perf_counter()
    outcome = None
    signal.setitimer(signal.ITIMER_REAL, HANG_SECONDS)
    try:
        target.run(item)
        stats.accepted += 1
    except Finding as exc:
        stats.findings += 1
        outcome = f"finding: {exc}"
    except SecureFLError:
        stats.typed += 1
    except Exception as exc:  # what the fuzzer is looking for
        stats.untyped += 1
        outcome = f"{type(exc).__name__}: {str(exc)[:200]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    elapsed = time.perf_counter() - start
    if measure:
        prepared = target.prepare(item) if target.prepare else item
        tracemalloc.start()
        tracemalloc.reset_peak()
        with contextlib.suppress(Exception):
            (target.measure or target.run)(prepared)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        stats.measured += 1
        stats.max_peak = max(stats.max_peak, peak)
        stats.max_ratio = max(stats.max_ratio, peak / max(target.size(item), FLOOR_BYTES))
    stats.inputs += 1
    stats.slowest = max(stats.slowest, elapsed)
    if outcome is not None and len(stats.examples) < 10:
        stats.examples.append(f"{outcome} <- {_describe(item)}")


def _describe(item: Any) -> str:
    try:
        text = item.hex() if isinstance(item, bytes) else repr(item)
    except Exception as exc:  # a message whose own repr breaks on its odd fields
        text = f"<{type(item).__name__}: repr raised {type(exc).__name__}>"
    return text if len(text) <= 300 else text[:297] + "..."


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, fuzz, print the table, write the JSON summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=1_000_000,
                        help="total inputs across all targets (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=1, help="PRNG seed for input generation")
    parser.add_argument("--sample", type=int, default=1000,
                        help="trace allocations of every N-th input (default 1000)")
    parser.add_argument("--only", action="append", default=[],
                        help="run only targets whose name contains this (repeatable)")
    parser.add_argument("--out", type=Path, help="write the strict-JSON summary here")
    parser.add_argument("--progress", type=int, default=0,
                        help="print a line every N inputs of a target")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    signal.signal(signal.SIGALRM, _on_alarm)
    targets = [t for t in TARGETS if not args.only or any(o in t.name for o in args.only)]
    total_weight = sum(t.weight for t in targets)
    results: dict[str, Stats] = {}
    started = time.perf_counter()
    for target in targets:
        rng = random.Random(f"{args.seed}/{target.name}")
        count = max(1, round(args.inputs * target.weight / total_weight))
        if target.name.startswith("audit"):
            count = max(count, 200)
        stats = results[target.name] = Stats()
        t0 = time.perf_counter()
        for item in target.largest():
            run_one(target, item, stats, measure=True)
        for i in range(count):
            item = target.generate(rng)
            run_one(target, item, stats, measure=args.sample > 0 and i % args.sample == 0)
            if args.progress and (i + 1) % args.progress == 0:
                print(f"  {target.name}: {i + 1}/{count}, untyped {stats.untyped},"
                      f" {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - started
    ok = True
    header = (f"{'decoder':<27} {'inputs':>9} {'untyped':>7} {'other':>5} {'refused':>9}"
              f" {'decoded':>9} {'slowest s':>9} {'traced':>6} {'alloc/in':>8} {'peak KiB':>9}")
    print(header)
    print("-" * len(header))
    for name, s in results.items():
        print(f"{name:<27} {s.inputs:>9} {s.untyped:>7} {s.findings:>5} {s.typed:>9}"
              f" {s.accepted:>9} {s.slowest:>9.4f} {s.measured:>6} {s.max_ratio:>8.2f}"
              f" {s.max_peak / 1024:>9.1f}")
        decode_bound = not name.startswith("audit")
        if s.untyped or s.findings or (decode_bound and (
                s.slowest >= MAX_SECONDS or s.max_ratio > MAX_ALLOC_RATIO)):
            ok = False
        for example in s.examples:
            print(f"    {example}")
    grand = sum(s.inputs for s in results.values())
    print(f"{grand} inputs in {seconds:.0f} s, seed {args.seed};"
          f" {'all requirements hold' if ok else 'REQUIREMENTS FAILED'}")
    if args.out:
        summary = {
            "seed": args.seed, "inputs": grand, "seconds": round(seconds, 1),
            "sample_every": args.sample, "floor_bytes": FLOOR_BYTES,
            "requirements": {"untyped": 0, "max_seconds": MAX_SECONDS,
                             "max_alloc_ratio": MAX_ALLOC_RATIO},
            "ok": ok,
            "decoders": {name: {
                "inputs": s.inputs, "untyped": s.untyped, "other_findings": s.findings,
                "refused_typed": s.typed, "decoded": s.accepted,
                "slowest_seconds": round(s.slowest, 6), "traced": s.measured,
                "max_alloc_ratio": round(s.max_ratio, 3), "max_peak_bytes": s.max_peak,
                "examples": s.examples} for name, s in results.items()},
        }
        args.out.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
