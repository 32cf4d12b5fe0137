"""The strict v1 codec: every message round-trips, and malformed bytes are
refused with a typed error naming the reason."""

from __future__ import annotations

import numpy as np
import pytest

from securefl import SecAggConfig, SecurityMode
from securefl.errors import RemoteProtocolError, Rule, WireFormatError
from securefl.protocol.messages import (
    AdvertiseKeys,
    EncryptedShares,
    KeyRoster,
    MaskedInput,
    UnmaskingRequest,
    UnmaskingResponse,
)
from securefl.wire import WireIssue, decode, encode
from securefl.wire import secagg_pb2 as pb
from tests.protocol_harness import Federation

SID = bytes(range(32))
ACTIVE = SecAggConfig(num_clients=4, vector_length=5, bits=12, threshold=3,
                      mode=SecurityMode.ACTIVE)


def refused(data: bytes, reason: WireIssue, rule: Rule = Rule.MALFORMED,
            config: SecAggConfig | None = None) -> WireFormatError:
    with pytest.raises(WireFormatError) as info:
        decode(data, config=config)
    assert info.value.reason == reason.value, info.value
    assert info.value.rule is rule
    assert isinstance(info.value, RemoteProtocolError)
    return info.value


def test_every_message_of_a_whole_active_round_round_trips() -> None:
    fed = Federation(ACTIVE)
    seen: set[str] = set()
    pending = fed.advertise()
    for advert in fed.sent[next(iter(fed.sent))].values():
        assert decode(encode(advert)) == advert
        seen.add(type(advert).__name__)
    while not fed.server.finished:
        for message in pending.values():
            assert decode(encode(message)) == message
            seen.add(type(message).__name__)
        replies = fed.answer()
        for reply in replies.values():
            back = decode(encode(reply), config=ACTIVE)
            seen.add(type(reply).__name__)
            if isinstance(reply, MaskedInput):
                assert back.masked.dtype == reply.masked.dtype
                assert (back.masked == reply.masked).all()
            else:
                assert back == reply
        pending = fed.close()
    assert len(seen) == 9


@pytest.mark.parametrize(("bits", "width"), [(1, 1), (8, 1), (12, 2), (16, 2), (20, 3),
                                             (24, 3), (31, 4), (32, 4), (33, 5), (41, 6),
                                             (56, 7), (64, 8)])
def test_masked_vectors_are_packed_at_ceil_k_over_8_bytes(bits: int, width: int) -> None:
    config = SecAggConfig(num_clients=3, vector_length=7, bits=bits)
    assert config.wire_element_bytes == width
    values = [config.modulus_mask, 0, 1, 2, config.modulus_mask // 3, 5, 6]
    vector = np.array([v & config.modulus_mask for v in values],
                      dtype=f"<u{config.element_bytes}")
    data = encode(MaskedInput(1, SID, vector), element_bytes=config.wire_element_bytes)
    inner = pb.SecAggMessage.FromString(data).masked_input
    assert inner.element_bytes == width and len(inner.masked) == 7 * width
    decoded = decode(data, config=config).masked
    assert decoded.dtype == vector.dtype and (decoded == vector).all()
    # a sender that packs at the in-memory width where it differs is refused
    if width != config.element_bytes:
        refused_data = encode(MaskedInput(1, SID, vector))
        with pytest.raises(WireFormatError):
            decode(refused_data, config=config)


def test_unknown_version_is_refused() -> None:
    envelope = pb.SecAggMessage.FromString(encode(AdvertiseKeys(1, b"a" * 32, b"b" * 32)))
    envelope.advertise_keys.version = 2
    refused(envelope.SerializeToString(), WireIssue.UNKNOWN_VERSION, Rule.UNSUPPORTED_VERSION)
    envelope.advertise_keys.version = 0
    refused(envelope.SerializeToString(), WireIssue.UNKNOWN_VERSION, Rule.UNSUPPORTED_VERSION)


@pytest.mark.parametrize(("size", "reason"), [(31, WireIssue.TRUNCATED_FIELD),
                                              (33, WireIssue.OVERSIZED_FIELD)])
def test_keys_of_the_wrong_size_are_refused(size: int, reason: WireIssue) -> None:
    err = refused(encode(AdvertiseKeys(3, b"a" * size, b"b" * 32)), reason)
    assert err.field == "encryption_key" and err.peer == 3


def test_shares_of_the_wrong_size_are_refused() -> None:
    data = encode(UnmaskingResponse(2, SID, {1: b"s" * 65}, {}))
    refused(data, WireIssue.OVERSIZED_FIELD)
    refused(encode(EncryptedShares(2, SID, {1: b"c" * 143})), WireIssue.TRUNCATED_FIELD)
    refused(encode(UnmaskingRequest(1, SID[:16], (1, 2), ())), WireIssue.TRUNCATED_FIELD)


def test_duplicate_ids_are_refused() -> None:
    envelope = pb.SecAggMessage()
    resp = envelope.unmasking_response
    resp.version, resp.sender, resp.session_id = 1, 2, SID
    for _ in range(2):
        share = resp.key_shares.add()
        share.owner, share.share = 3, b"s" * 64
    refused(envelope.SerializeToString(), WireIssue.DUPLICATE_ID)
    refused(encode(UnmaskingRequest(1, SID, (1, 2, 2), ())), WireIssue.DUPLICATE_ID)
    roster = pb.SecAggMessage()
    roster.key_roster.version, roster.key_roster.config_digest = 1, SID
    for _ in range(2):
        entry = roster.key_roster.entries.add()
        entry.sender, entry.encryption_key, entry.masking_key = 4, b"e" * 32, b"m" * 32
        entry.seed_commitment = b"c" * 32
    refused(roster.SerializeToString(), WireIssue.DUPLICATE_ID)
    refused(encode(MaskedInput(1, SID, np.arange(4, dtype="<u2"), (2, 2))),
            WireIssue.DUPLICATE_ID)


@pytest.mark.parametrize(("size", "reason"), [(0, WireIssue.TRUNCATED_FIELD),
                                              (31, WireIssue.TRUNCATED_FIELD),
                                              (33, WireIssue.OVERSIZED_FIELD)])
def test_seed_commitments_of_the_wrong_size_are_refused(size: int, reason: WireIssue) -> None:
    err = refused(encode(AdvertiseKeys(3, b"a" * 32, b"b" * 32, None, b"c" * size)), reason)
    assert err.field == "seed_commitment" and err.peer == 3
    entry = AdvertiseKeys(3, b"a" * 32, b"b" * 32, None, b"c" * size)
    err = refused(encode(KeyRoster(SID, (entry,))), reason)
    assert err.field == "entries.seed_commitment"


def test_commitment_and_exclusions_round_trip() -> None:
    advert = AdvertiseKeys(3, b"a" * 32, b"b" * 32, b"s" * 64, b"c" * 32)
    assert decode(encode(advert)) == advert
    assert decode(encode(KeyRoster(SID, (advert,)))) == KeyRoster(SID, (advert,))
    masked = decode(encode(MaskedInput(1, SID, np.arange(4, dtype="<u2"), (2, 5))))
    assert isinstance(masked, MaskedInput) and masked.excluded == (2, 5)
    plain = decode(encode(MaskedInput(1, SID, np.arange(4, dtype="<u2"))))
    assert isinstance(plain, MaskedInput) and plain.excluded == ()


def test_masked_vector_checks() -> None:
    config = SecAggConfig(num_clients=3, vector_length=4, bits=12)
    good = encode(MaskedInput(1, SID, np.arange(4, dtype="<u2")))
    envelope = pb.SecAggMessage.FromString(good)
    envelope.masked_input.masked += b"\x01"
    refused(envelope.SerializeToString(), WireIssue.MISALIGNED_VECTOR)
    envelope = pb.SecAggMessage.FromString(good)
    envelope.masked_input.element_bytes = 9
    refused(envelope.SerializeToString(), WireIssue.BAD_ELEMENT_WIDTH)
    envelope.masked_input.element_bytes = 0
    refused(envelope.SerializeToString(), WireIssue.BAD_ELEMENT_WIDTH)
    wide = encode(MaskedInput(1, SID, np.arange(4, dtype="<u8")))
    refused(wide, WireIssue.BAD_ELEMENT_WIDTH, config=config)
    short = encode(MaskedInput(1, SID, np.arange(3, dtype="<u2")))
    refused(short, WireIssue.WRONG_LENGTH, Rule.WRONG_LENGTH, config=config)
    big = encode(MaskedInput(1, SID, np.array([0, 1, 2, 4096], dtype="<u2")))
    refused(big, WireIssue.VALUE_OUT_OF_RANGE, Rule.VALUE_OUT_OF_RANGE, config=config)
    assert decode(big).masked[3] == 4096  # without a configuration only the layout is checked


def test_garbage_empty_and_non_canonical_bytes_are_refused() -> None:
    refused(b"\xff\xff\xff", WireIssue.UNPARSEABLE)
    refused(b"", WireIssue.EMPTY_ENVELOPE)
    data = encode(AdvertiseKeys(1, b"a" * 32, b"b" * 32))
    refused(data[:-5], WireIssue.UNPARSEABLE)
    # an unknown field appended inside the envelope
    refused(data + b"\x50\x01", WireIssue.NON_CANONICAL)
    # a singular field repeated: protobuf keeps the last value, we refuse
    envelope = pb.SecAggMessage.FromString(data)
    inner = envelope.advertise_keys.SerializeToString() + b"\x10\x07"
    smuggled = b"\x0a" + bytes([len(inner)]) + inner
    refused(smuggled, WireIssue.NON_CANONICAL)


def test_ids_out_of_range_and_unexpected_kinds_are_refused() -> None:
    envelope = pb.SecAggMessage.FromString(encode(AdvertiseKeys(1, b"a" * 32, b"b" * 32)))
    envelope.advertise_keys.sender = 2**31 - 1
    refused(envelope.SerializeToString(), WireIssue.INVALID_ID)
    data = encode(KeyRoster(SID, ()))
    with pytest.raises(WireFormatError) as info:
        decode(data, expect=AdvertiseKeys)
    assert info.value.rule is Rule.WRONG_ROUND
    with pytest.raises(WireFormatError):
        encode(AdvertiseKeys(0, b"a" * 32, b"b" * 32))
    with pytest.raises(WireFormatError):
        encode(MaskedInput(1, SID, np.arange(3, dtype=np.int64)))
