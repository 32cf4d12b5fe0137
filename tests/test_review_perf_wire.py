"""Adversarial review of the numpy fast path for survivor/dropped id lists
(``securefl.wire.codec._fast_list_decode``): hand-made encodings of an
``UnmaskingRequest`` / ``ConsistencyRequest`` that protobuf would parse but
that are not the canonical encoding (unpacked or split packed fields,
overlong and non-minimal varints, ids 0, above ``MAX_CLIENT_ID`` or above
2^32, fields out of order, empty packed fields, non-minimal lengths, trailing
bytes, a dropped list on a consistency request) are refused, with the same
reason whether or not the fast path runs, with and without a configuration.
(These held on main: the test pins them.)
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from securefl import SecAggConfig, wire
from securefl.errors import WireFormatError
from securefl.protocol.config import MAX_CLIENT_ID
from securefl.wire import codec

_v = codec._encode_varint
SID = b"s" * 32
CONFIG = SecAggConfig(num_clients=6, vector_length=4, bits=16, threshold=3)


def _packed(ids: list[int]) -> bytes:
    return b"".join(_v(u) for u in ids)


def _field(tag: int, payload: bytes) -> bytes:
    return bytes([tag]) + _v(len(payload)) + payload


def _head(recipient: bytes = b"\x05") -> bytes:
    return b"\x08\x01\x10" + recipient + b"\x1a\x20" + SID


def _request(body: bytes, tag: int = 0x42) -> bytes:
    return _field(tag, body)


def _nonminimal_envelope() -> bytes:
    body = _head() + _field(0x22, _packed([1]))
    assert len(body) < 0x80
    return b"\x42" + bytes([0x80 | len(body), 0x00]) + body


REFUSED: dict[str, tuple[Callable[[], bytes], str]] = {
    "unpacked": (lambda: _request(_head() + b"\x20\x01\x20\x02"), "non-canonical-encoding"),
    "split-packed": (lambda: _request(_head() + _field(0x22, _packed([1]))
                                      + _field(0x22, _packed([2]))), "non-canonical-encoding"),
    "overlong-varint": (lambda: _request(_head() + _field(0x22, b"\x81\x80\x80\x80\x80\x00")),
                        "non-canonical-encoding"),
    "non-minimal-id": (lambda: _request(_head() + _field(0x22, b"\x81\x00")),
                       "non-canonical-encoding"),
    "id-0": (lambda: _request(_head() + _field(0x22, _packed([0, 1]))), "invalid-id"),
    "id-above-max": (lambda: _request(_head() + _field(0x22, _packed([MAX_CLIENT_ID + 1]))),
                     "invalid-id"),
    "id-2^32": (lambda: _request(_head() + _field(0x22, b"\x80\x80\x80\x80\x10")),
                "non-canonical-encoding"),
    "id-negative": (lambda: _request(_head() + _field(0x22, b"\xff" * 9 + b"\x01")),
                    "non-canonical-encoding"),
    "dropped-first": (lambda: _request(_head() + _field(0x2A, _packed([4]))
                                       + _field(0x22, _packed([1]))), "non-canonical-encoding"),
    "empty-packed": (lambda: _request(_head() + _field(0x22, b"")), "non-canonical-encoding"),
    "non-minimal-length": (lambda: _request(_head() + b"\x22\x82\x00" + _packed([1, 2])),
                           "non-canonical-encoding"),
    "non-minimal-envelope": (_nonminimal_envelope, "non-canonical-encoding"),
    "non-minimal-recipient": (lambda: _request(_head(b"\x85\x00") + _field(0x22, _packed([1]))),
                              "non-canonical-encoding"),
    "duplicate-id": (lambda: _request(_head() + _field(0x22, _packed([2, 2]))), "duplicate-id"),
    "consistency-with-dropped": (lambda: _request(_head() + _field(0x22, _packed([1]))
                                                  + _field(0x2A, _packed([4])), tag=0x32),
                                 "non-canonical-encoding"),
}


def _decode(raw: bytes, fast: bool, config: SecAggConfig | None) -> object:
    saved = codec._fast_list_decode
    if not fast:
        codec._fast_list_decode = lambda raw, config: None  # type: ignore[assignment]
    try:
        return wire.decode(raw, config=config)
    except WireFormatError as exc:
        return exc
    finally:
        codec._fast_list_decode = saved  # type: ignore[assignment]


@pytest.mark.parametrize("config", [None, CONFIG], ids=["no-config", "config"])
@pytest.mark.parametrize("case", sorted(REFUSED))
def test_non_canonical_or_invalid_lists_are_refused_on_both_paths(
        case: str, config: SecAggConfig | None) -> None:
    make, reason = REFUSED[case]
    raw = make()
    assert codec._fast_list_decode(raw, config) is None
    for fast in (True, False):
        out = _decode(raw, fast, config)
        assert isinstance(out, WireFormatError), (case, fast, out)
        assert out.reason == reason


def test_more_ids_than_invited_clients_are_refused_with_a_config_on_both_paths() -> None:
    raw = _request(_head() + _field(0x22, _packed(list(range(1, 9)))))
    for fast in (True, False):
        out = _decode(raw, fast, CONFIG)
        assert isinstance(out, WireFormatError) and out.reason == "oversized-field"
        assert not isinstance(_decode(raw, fast, None), WireFormatError)
