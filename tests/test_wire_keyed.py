"""The bytes paths for share maps (``securefl.wire.codec._fast_keyed_encode``
and ``_fast_keyed_decode``: EncryptedShares, ShareDelivery and plain
UnmaskingResponses, n k share ciphertexts through the server per round)
write exactly the bytes protobuf writes, read back an equal message, accept
only bytes the general decoder accepts as an equal message, and leave every
refusal to it: hand-made second encodings (non-minimal varints and lengths,
unsorted or repeated ids, a value of another size, trailing bytes) and
random mutations are refused with the same reason whether or not the fast
path runs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefl import SecAggConfig, wire
from securefl.errors import WireFormatError
from securefl.protocol.config import MAX_CLIENT_ID
from securefl.protocol.messages import (
    EncryptedShares,
    MaskedInput,
    ShareDelivery,
    UnmaskingResponse,
)
from securefl.wire import codec

FAST = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SID = b"s" * 32
_v = codec._encode_varint


def _general(call: Callable[[], object]) -> object:
    """``call()`` with the share-map paths switched off (protobuf only)."""
    saved = codec._fast_keyed_decode, codec._fast_keyed_encode
    codec._fast_keyed_decode = lambda raw, config: None  # type: ignore[assignment]
    codec._fast_keyed_encode = lambda message: None  # type: ignore[assignment]
    try:
        return call()
    except WireFormatError as exc:
        return exc
    finally:
        codec._fast_keyed_decode, codec._fast_keyed_encode = saved  # type: ignore[assignment]


def _decode(raw: bytes, config: SecAggConfig | None = None) -> object:
    try:
        return wire.decode(raw, config=config)
    except WireFormatError as exc:
        return exc


_ID = st.one_of(st.integers(1, 300), st.integers(1, 20_000), st.integers(1, MAX_CLIENT_ID))


def _share_map(size: int) -> st.SearchStrategy[dict[int, bytes]]:
    return st.dictionaries(_ID, st.binary(min_size=size, max_size=size), max_size=30)


@st.composite
def _messages(draw: st.DrawFn) -> object:
    who = draw(_ID)
    kind = draw(st.sampled_from(["shares", "delivery", "response"]))
    if kind == "response":
        noise = draw(st.dictionaries(st.tuples(_ID, st.integers(0, 3)),
                                     st.binary(min_size=64, max_size=64), max_size=3))
        # an insertion order that need not be sorted: written as given
        return UnmaskingResponse(who, SID, draw(_share_map(64)), draw(_share_map(64)), noise)
    size = 144 + 64 * draw(st.integers(0, 2))
    cls = EncryptedShares if kind == "shares" else ShareDelivery
    return cls(who, SID, draw(_share_map(size)))


@FAST
@given(message=_messages(), data=st.data())
def test_share_maps_are_written_and_read_exactly_as_protobuf_does(
        message: object, data: st.DataObject) -> None:
    raw = wire.encode(message)  # type: ignore[arg-type]
    assert raw == _general(lambda: wire.encode(message))  # type: ignore[arg-type]
    back = wire.decode(raw)
    general = _general(lambda: wire.decode(raw))
    if isinstance(general, WireFormatError):
        # an unsorted UnmaskingResponse map: not canonical, refused on both paths
        assert isinstance(_decode(raw), WireFormatError)
        assert _decode(raw).reason == general.reason  # type: ignore[attr-defined]
        return
    assert back == message and back == general
    mutated = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        at = data.draw(st.integers(0, len(mutated) - 1), label="at")
        op = data.draw(st.sampled_from(["set", "insert", "delete"]), label="op")
        if op == "set":
            mutated[at] = data.draw(st.integers(0, 255), label="byte")
        elif op == "insert":
            mutated.insert(at, data.draw(st.integers(0, 255), label="byte"))
        elif len(mutated) > 1:
            del mutated[at]
    for config in (None, SecAggConfig(num_clients=40, vector_length=4, bits=16, threshold=3)):
        fast = codec._fast_keyed_decode(bytes(mutated), config)
        general = _general(lambda config=config: wire.decode(bytes(mutated), config=config))
        if fast is not None:
            assert not isinstance(general, WireFormatError)
            assert fast == general and wire.encode(fast) == bytes(mutated)
        else:
            both = _decode(bytes(mutated), config)
            assert type(both) is type(general)
            if isinstance(general, WireFormatError):
                assert both.reason == general.reason  # type: ignore[attr-defined]
            else:
                assert both == general


def _entry(tag: int, ident: bytes, value: bytes, length: bytes | None = None) -> bytes:
    body = b"\x08" + ident + b"\x12" + _v(len(value)) + value
    return bytes([tag]) + (_v(len(body)) if length is None else length) + body


def _shares(*entries: bytes, envelope: int = 0x1A) -> bytes:
    body = b"\x08\x01\x10\x05\x1a\x20" + SID + b"".join(entries)
    return bytes([envelope]) + _v(len(body)) + body


CT = b"c" * 144
REFUSED: dict[str, tuple[Callable[[], bytes], str]] = {
    "non-minimal-id": (lambda: _shares(_entry(0x22, b"\x81\x00", CT)),
                       "non-canonical-encoding"),
    "non-minimal-entry-length": (lambda: _shares(_entry(
        0x22, b"\x01", CT, length=b"\x95\x81\x00")), "non-canonical-encoding"),
    "id-0": (lambda: _shares(_entry(0x22, b"\x00", CT)), "non-canonical-encoding"),
    "id-above-max": (lambda: _shares(_entry(0x22, _v(MAX_CLIENT_ID + 1), CT)), "invalid-id"),
    "unsorted": (lambda: _shares(_entry(0x22, b"\x02", CT), _entry(0x22, b"\x01", CT)),
                 "non-canonical-encoding"),
    "repeated": (lambda: _shares(_entry(0x22, b"\x02", CT), _entry(0x22, b"\x02", CT)),
                 "duplicate-id"),
    "short-ciphertext": (lambda: _shares(_entry(0x22, b"\x01", CT),
                                         _entry(0x22, b"\x02", CT[:-1])), "truncated-field"),
    "trailing-byte": (lambda: _shares(_entry(0x22, b"\x01", CT)) + b"\x00", "unparseable"),
    "wide-then-narrow": (lambda: _shares(_entry(0x22, _v(300), CT), _entry(0x22, b"\x05", CT)),
                         "non-canonical-encoding"),
    "response-key-before-self": (lambda: _shares(
        _entry(0x2A, b"\x01", b"k" * 64), _entry(0x22, b"\x02", b"s" * 64), envelope=0x4A),
        "non-canonical-encoding"),
    "response-short-share": (lambda: _shares(_entry(0x22, b"\x01", b"s" * 63), envelope=0x4A),
                             "truncated-field"),
}


@pytest.mark.parametrize("config", [None, SecAggConfig(num_clients=6, vector_length=4, bits=16,
                                                       threshold=3)], ids=["none", "config"])
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_second_encodings_of_share_maps_are_refused_on_both_paths(
        case: str, config: SecAggConfig | None) -> None:
    make, reason = REFUSED[case]
    raw = make()
    assert codec._fast_keyed_decode(raw, config) is None
    for out in (_decode(raw, config), _general(lambda: wire.decode(raw, config=config))):
        assert isinstance(out, WireFormatError), (case, out)
        assert out.reason == reason


def test_more_entries_than_invited_clients_are_refused_with_a_config() -> None:
    config = SecAggConfig(num_clients=6, vector_length=4, bits=16, threshold=3)
    raw = wire.encode(EncryptedShares(5, SID, {u: CT for u in range(1, 9)}))
    assert isinstance(codec._fast_keyed_decode(raw, None), EncryptedShares)
    assert codec._fast_keyed_decode(raw, config) is None
    out = _decode(raw, config)
    assert isinstance(out, WireFormatError) and out.reason == "oversized-field"


def test_ids_across_varint_widths_take_the_fast_path() -> None:
    ids = [1, 127, 128, 16383, 16384, 2**21, 2**28, MAX_CLIENT_ID]
    message = ShareDelivery(9, SID, {u: bytes([u % 251]) * 144 for u in ids})
    raw = wire.encode(message)
    assert raw == _general(lambda: wire.encode(message))
    assert codec._fast_keyed_decode(raw, None) == message


# -- long masked inputs read without protobuf (_fast_masked_decode) -------------


def _general_masked(raw: bytes, config: SecAggConfig | None) -> object:
    saved = codec._fast_masked_decode
    codec._fast_masked_decode = lambda raw, config: None  # type: ignore[assignment]
    try:
        return wire.decode(raw, config=config)
    except WireFormatError as exc:
        return exc
    finally:
        codec._fast_masked_decode = saved  # type: ignore[assignment]


def _same_masked(a: object, b: object) -> bool:
    if isinstance(a, WireFormatError) or isinstance(b, WireFormatError):
        return (type(a) is type(b) and a.reason == b.reason  # type: ignore[union-attr]
                and a.rule == b.rule)  # type: ignore[union-attr]
    assert isinstance(a, MaskedInput) and isinstance(b, MaskedInput)
    return (a.sender, a.session_id, a.excluded) == (b.sender, b.session_id, b.excluded) \
        and a.masked.dtype == b.masked.dtype and np.array_equal(a.masked, b.masked) \
        and not a.masked.flags.writeable and not b.masked.flags.writeable


@FAST
@given(bits=st.sampled_from([8, 12, 16, 24, 32, 40, 64]),
       length=st.integers(codec._SPLIT_MIN // 8, codec._SPLIT_MIN),
       excluded=st.lists(_ID, unique=True, max_size=6).map(sorted),
       sender=_ID, config_clients=st.sampled_from([None, 3, 50]), data=st.data())
def test_long_masked_inputs_are_read_as_the_general_decoder_reads_them(
        bits: int, length: int, excluded: list[int], sender: int, config_clients: int | None,
        data: st.DataObject) -> None:
    config = None if config_clients is None else SecAggConfig(
        num_clients=config_clients, vector_length=length, bits=bits, threshold=2)
    dtype = np.dtype(f"=u{max(1, -(-bits // 8)) if bits not in (24, 40) else 8}")
    vector = np.random.default_rng(length).integers(0, 1 << min(bits, 63), length,
                                                    dtype=np.uint64).astype(dtype)
    width = -(-bits // 8)
    raw = wire.encode(MaskedInput(sender, SID, vector, tuple(excluded)), element_bytes=width)
    mutated = bytearray(raw)
    for _ in range(data.draw(st.integers(0, 2), label="mutations")):
        # mutate the header or the excluded list, where structure lives
        at = data.draw(st.sampled_from([*range(min(50, len(mutated))),
                                        *range(max(0, len(mutated) - 30), len(mutated))]))
        op = data.draw(st.sampled_from(["set", "insert", "delete"]), label="op")
        if op == "set":
            mutated[at] = data.draw(st.integers(0, 255), label="byte")
        elif op == "insert":
            mutated.insert(at, data.draw(st.integers(0, 255), label="byte"))
        else:
            del mutated[at]
    blob = bytes(mutated)
    fast = codec._fast_masked_decode(blob, config)
    general = _general_masked(blob, config)
    if fast is not None:
        assert _same_masked(fast, general)
        assert wire.encode(fast, element_bytes=width) == blob
    assert _same_masked(_decode(blob, config), general)


def test_a_masked_input_that_breaks_a_rule_is_refused_as_before() -> None:
    config = SecAggConfig(num_clients=4, vector_length=codec._SPLIT_MIN, bits=12, threshold=2)
    too_big = np.full(codec._SPLIT_MIN, 1 << 12, dtype=np.uint16)  # not below 2^12
    raw = wire.encode(MaskedInput(3, SID, too_big, ()))
    assert codec._fast_masked_decode(raw, config) is None
    out = _decode(raw, config)
    assert isinstance(out, WireFormatError) and out.reason == "value-out-of-ring"
    many = wire.encode(MaskedInput(3, SID, too_big & 0xFFF, tuple(range(1, 7))))
    assert codec._fast_masked_decode(many, config) is None  # 6 excluded, 4 clients
    out = _decode(many, config)
    assert isinstance(out, WireFormatError) and out.reason == "oversized-field"
    fine = wire.encode(MaskedInput(3, SID, too_big & 0xFFF, (1, 2)))
    assert isinstance(codec._fast_masked_decode(fine, config), MaskedInput)
