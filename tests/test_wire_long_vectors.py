"""Long masked vectors take the codec's structural path (the payload is
spliced in on encode and viewed in place on decode, not re-encoded): it must
accept exactly the canonical encodings the protobuf path accepts."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.errors import WireFormatError
from securefl.protocol.messages import MaskedInput
from securefl.wire import WireIssue, decode, encode
from securefl.wire import secagg_pb2 as pb
from securefl.wire.codec import _SPLIT_MIN


def _message(length: int, width: int, excluded: tuple[int, ...], seed: int) -> MaskedInput:
    gen = np.random.default_rng(seed)
    vector = gen.integers(0, 1 << (8 * width), length, dtype=np.uint64)
    dtype = {1: np.uint8, 2: np.uint16, 3: np.uint32, 4: np.uint32}.get(width, np.uint64)
    return MaskedInput(7, bytes(range(32)), vector.astype(dtype), excluded)


def _protobuf_encoding(message: MaskedInput, width: int) -> bytes:
    """The reference encoding, made field by field through protobuf."""
    env = pb.SecAggMessage()
    inner = env.masked_input
    inner.version = 1
    inner.sender = message.sender
    inner.session_id = message.session_id
    inner.element_bytes = width
    words = np.asarray(message.masked).astype("<u8").view(np.uint8).reshape(-1, 8)[:, :width]
    inner.masked = words.tobytes()
    inner.excluded.extend(message.excluded)
    return env.SerializeToString(deterministic=True)


@settings(max_examples=25, deadline=None)
@given(length=st.integers(1, 3 * _SPLIT_MIN), width=st.sampled_from([1, 2, 3, 4, 5, 8]),
       excluded=st.lists(st.integers(1, 1000), unique=True, max_size=5).map(
           lambda x: tuple(sorted(x))), seed=st.integers(0, 2**32 - 1))
def test_long_vectors_encode_like_protobuf_and_round_trip(
        length: int, width: int, excluded: tuple[int, ...], seed: int) -> None:
    message = _message(length, width, excluded, seed)
    data = encode(message, element_bytes=width)
    assert data == _protobuf_encoding(message, width)
    back = decode(data)
    assert isinstance(back, MaskedInput)
    assert np.array_equal(np.asarray(back.masked, dtype=np.uint64),
                          np.asarray(message.masked, dtype=np.uint64))
    assert back.excluded == excluded and back.sender == 7
    assert encode(back, element_bytes=width) == data


def _frame(inner: bytes) -> bytes:
    return bytes([0x2A]) + _varint(len(inner)) + inner


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _padded(value: int) -> bytes:
    """A varint of ``value`` one byte longer than needed (a trailing zero group)."""
    minimal = bytearray(_varint(value))
    minimal[-1] |= 0x80
    return bytes(minimal) + b"\x00"


def _long_inner() -> tuple[bytes, bytes, bytes]:
    """(fields 1-4, the masked payload, field 6) of a long masked input."""
    env = pb.SecAggMessage()
    inner = env.masked_input
    inner.version, inner.sender, inner.session_id, inner.element_bytes = 1, 7, b"s" * 32, 4
    head = inner.SerializeToString(deterministic=True)
    tail = pb.MaskedInput(excluded=[3, 9]).SerializeToString(deterministic=True)
    return head, bytes(range(256)) * (_SPLIT_MIN // 64), tail


def test_the_canonical_long_encoding_decodes() -> None:
    head, payload, tail = _long_inner()
    data = _frame(head + b"\x2a" + _varint(len(payload)) + payload + tail)
    assert encode(decode(data)) == data


@pytest.mark.parametrize("variant", [
    "non-minimal-length", "masked-twice", "excluded-first", "unknown-field-after",
    "unknown-field-before", "non-minimal-envelope", "version-after-masked"])
def test_second_encodings_of_long_vectors_are_refused(variant: str) -> None:
    """Each variant parses as the same message in protobuf (or one with an
    unknown field) but is not the canonical bytes: the structural check must
    refuse it exactly as the re-encoding check does for short vectors."""
    head, payload, tail = _long_inner()
    field = b"\x2a" + _varint(len(payload)) + payload
    if variant == "non-minimal-length":
        data = _frame(head + b"\x2a" + _padded(len(payload)) + payload + tail)
    elif variant == "masked-twice":
        data = _frame(head + b"\x2a\x04abcd" + field + tail)
    elif variant == "excluded-first":
        data = _frame(head + tail + field)
    elif variant == "unknown-field-after":
        data = _frame(head + field + tail + b"\x78\x01")
    elif variant == "unknown-field-before":
        data = _frame(b"\x78\x01" + head + field + tail)
    elif variant == "non-minimal-envelope":
        inner = head + field + tail
        data = b"\x2a" + _padded(len(inner)) + inner
    else:
        data = _frame(head[2:] + field + head[:2] + tail)
        assert head[:2] == b"\x08\x01"
    # protobuf itself accepts each variant: only canonicality refuses it
    pb.SecAggMessage.FromString(data)
    with pytest.raises(WireFormatError) as info:
        decode(data)
    assert info.value.reason == WireIssue.NON_CANONICAL.value


def _long_roster_bytes() -> bytes:
    from securefl.protocol.messages import AdvertiseKeys, KeyRoster

    rng = np.random.default_rng(3)
    ids = [1, 2, 100, 127, 128, 200, 16383, 16384, 16385, *range(20000, 20070), 2**21, 2**28]
    return encode(KeyRoster(b"d" * 32, tuple(
        AdvertiseKeys(i, rng.bytes(32), rng.bytes(32), None, rng.bytes(32)) for i in ids)))


_SEEDS = {"masked": encode(_message(3 * _SPLIT_MIN, 4, (3, 9), 1), element_bytes=4),
          "masked3": encode(_message(2 * _SPLIT_MIN, 3, (), 2), element_bytes=3),
          "roster": _long_roster_bytes()}


@settings(max_examples=150, deadline=None)
@given(seed=st.sampled_from(sorted(_SEEDS)), data=st.data())
def test_mutated_long_messages_decode_only_to_their_own_bytes(seed: str,
                                                              data: st.DataObject) -> None:
    """Byte mutations (set, insert, delete, near the framing and anywhere) of a
    long masked input and a 90-client roster, both on the structural paths:
    whatever still decodes re-encodes to exactly the bytes received."""
    raw = bytearray(_SEEDS[seed])
    for _ in range(data.draw(st.integers(1, 3))):
        near = data.draw(st.booleans())
        limit = min(len(raw) - 1, 300) if near else len(raw) - 1
        at = data.draw(st.integers(0, limit))
        op = data.draw(st.sampled_from(["set", "insert", "delete"]))
        if op == "set":
            raw[at] = data.draw(st.integers(0, 255))
        elif op == "insert":
            raw.insert(at, data.draw(st.integers(0, 255)))
        elif len(raw) > 1:
            del raw[at]
    mutated = bytes(raw)
    try:
        message = decode(mutated)
    except WireFormatError:
        return
    width = (pb.SecAggMessage.FromString(mutated).masked_input.element_bytes
             if isinstance(message, MaskedInput) else None)
    assert encode(message, element_bytes=width) == mutated
