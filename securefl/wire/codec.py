"""Encode and decode protocol messages to and from the v1 wire format.

The wire format is the protobuf schema ``protocols/secagg/v1/secagg.proto``
(SPEC.md section 9): every message travels inside a ``SecAggMessage``
envelope (a ``oneof``), carries ``version = 1``, keys its per-client
collections by explicit id fields, and packs masked vectors at the ring's
native width.

Decoding is strict.  :func:`decode` raises
:class:`~securefl.errors.WireFormatError` (a ``RemoteProtocolError``) with a
:class:`WireIssue` reason for bytes that do not parse, an unknown version, a
field shorter or longer than its fixed size, a duplicated or out-of-range
client id, a masked vector whose byte length is not a multiple of its element
width, an envelope without a body, or any non-canonical encoding (which also
catches unknown fields, repeated singular fields, and per-client entries
that are not in ascending id order).  Whatever decodes re-encodes to exactly
the bytes received.

Noise plans (SPEC.md section 16) add optional fields: ``noise_commitments``
(at most 16 of 32 bytes), ``noise_removals`` and ``noise_shares`` (ascending
``(owner, component)``, components below 16) and share ciphertexts of
``144 + 64 J`` bytes (with ``config``: exactly the plan's ``J``).  Without a
plan none is present and every encoding is as before.
"""

from __future__ import annotations

import enum
import warnings
from collections.abc import Iterable, Sequence
from typing import Any, TypeAlias

import numpy as np
from google.protobuf.message import DecodeError

from securefl.errors import Rule, WireFormatError
from securefl.protocol.config import MAX_CLIENT_ID, PROTOCOL_VERSION, SecAggConfig
from securefl.protocol.messages import (
    AdvertiseKeys,
    ConsistencyRequest,
    ConsistencySignature,
    EncryptedShares,
    KeyRoster,
    MaskedInput,
    ShareDelivery,
    UnmaskingRequest,
    UnmaskingResponse,
)

with warnings.catch_warnings():
    # gencode 5.28 on a 6.x runtime warns once per import; both are supported.
    warnings.filterwarnings("ignore", message=".*gencode version.*", category=UserWarning)
    from securefl.wire import secagg_pb2 as pb

WIRE_VERSION = PROTOCOL_VERSION
"""The ``version`` every v1 message carries."""

KEY_BYTES = 32
COMMITMENT_BYTES = 32
DIGEST_BYTES = 32
SESSION_ID_BYTES = 32
SIGNATURE_BYTES = 64
SHARE_BYTES = 64
CIPHERTEXT_BYTES = 144
"""A share ciphertext without a noise plan; each excess-noise seed adds 64."""
MAX_NOISE_COMPONENTS = 16
"""At most this many excess-noise seeds per client (NoisePlan's limit)."""
_NOISE_FIELDS = ("noise_removals", "noise_shares")
ELEMENT_WIDTHS = (1, 2, 3, 4, 5, 6, 7, 8)

Message: TypeAlias = (
    AdvertiseKeys | KeyRoster | EncryptedShares | ShareDelivery | MaskedInput
    | ConsistencyRequest | ConsistencySignature | UnmaskingRequest | UnmaskingResponse
)

_BODY_OF_TYPE: dict[type, str] = {
    AdvertiseKeys: "advertise_keys",
    KeyRoster: "key_roster",
    EncryptedShares: "encrypted_shares",
    ShareDelivery: "share_delivery",
    MaskedInput: "masked_input",
    ConsistencyRequest: "consistency_request",
    ConsistencySignature: "consistency_signature",
    UnmaskingRequest: "unmasking_request",
    UnmaskingResponse: "unmasking_response",
}
MESSAGE_TYPES: tuple[type, ...] = tuple(_BODY_OF_TYPE)
"""Every message class the codec handles, in envelope field order."""


class WireIssue(str, enum.Enum):
    """Why bytes were refused (``WireFormatError.reason``)."""

    UNPARSEABLE = "unparseable"
    EMPTY_ENVELOPE = "empty-envelope"
    UNKNOWN_VERSION = "unknown-version"
    TRUNCATED_FIELD = "truncated-field"
    OVERSIZED_FIELD = "oversized-field"
    DUPLICATE_ID = "duplicate-id"
    INVALID_ID = "invalid-id"
    MISALIGNED_VECTOR = "misaligned-vector"
    BAD_ELEMENT_WIDTH = "bad-element-width"
    NON_CANONICAL = "non-canonical-encoding"
    UNEXPECTED_MESSAGE = "unexpected-message-type"
    WRONG_LENGTH = "vector-length-mismatch"
    VALUE_OUT_OF_RANGE = "value-out-of-ring"
    UNENCODABLE = "unencodable"


# -- encoding ---------------------------------------------------------------


def encode(message: Message, *, element_bytes: int | None = None) -> bytes:
    """Serialise ``message`` as a ``SecAggMessage`` envelope (canonical form).

    Args:
        message: any message class of :mod:`securefl.protocol.messages`.
        element_bytes: for :class:`MaskedInput` only: the ring's element
            width (1, 2, 4 or 8); default the width of the array's dtype,
            which must then be an unsigned integer type.

    Raises:
        WireFormatError: the message cannot be represented (unknown type,
            a masked vector that does not fit the width, an id out of range).
    """
    envelope = pb.SecAggMessage()
    body = _BODY_OF_TYPE.get(type(message))
    if body is None:
        raise WireFormatError(f"not a protocol message: {type(message).__name__}",
                              reason=WireIssue.UNENCODABLE.value)
    inner = getattr(envelope, body)
    inner.version = WIRE_VERSION
    _ENCODERS[type(message)](message, inner, element_bytes)
    return envelope.SerializeToString(deterministic=True)


def _id(value: int, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) \
            or not 1 <= int(value) <= MAX_CLIENT_ID:
        raise WireFormatError(f"{field} must be a client id in 1..{MAX_CLIENT_ID}, got {value!r}",
                              reason=WireIssue.UNENCODABLE.value, field=field)
    return int(value)


def _enc_advert(m: AdvertiseKeys, out: Any, _: int | None) -> None:
    out.sender = _id(m.sender, "sender")
    out.encryption_key = bytes(m.encryption_key)
    out.masking_key = bytes(m.masking_key)
    if m.signature is not None:
        out.signature = bytes(m.signature)
    out.seed_commitment = bytes(m.seed_commitment)
    out.noise_commitments.extend(bytes(c) for c in m.noise_commitments)


def _enc_roster(m: KeyRoster, out: Any, _: int | None) -> None:
    out.config_digest = bytes(m.config_digest)
    for e in m.entries:
        entry = out.entries.add()
        entry.sender = _id(e.sender, "entries.sender")
        entry.encryption_key = bytes(e.encryption_key)
        entry.masking_key = bytes(e.masking_key)
        if e.signature is not None:
            entry.signature = bytes(e.signature)
        entry.seed_commitment = bytes(e.seed_commitment)
        entry.noise_commitments.extend(bytes(c) for c in e.noise_commitments)


def _enc_ciphertexts(items: Iterable[tuple[int, bytes]], out: Any) -> None:
    for peer, ct in items:
        entry = out.add()
        entry.peer = _id(peer, "ciphertexts.peer")
        entry.ciphertext = bytes(ct)


def _enc_shares(m: EncryptedShares, out: Any, _: int | None) -> None:
    out.sender = _id(m.sender, "sender")
    out.session_id = bytes(m.session_id)
    _enc_ciphertexts(m.ciphertexts.items(), out.ciphertexts)


def _enc_delivery(m: ShareDelivery, out: Any, _: int | None) -> None:
    out.recipient = _id(m.recipient, "recipient")
    out.session_id = bytes(m.session_id)
    _enc_ciphertexts(m.ciphertexts.items(), out.ciphertexts)


def _enc_masked(m: MaskedInput, out: Any, element_bytes: int | None) -> None:
    out.sender = _id(m.sender, "sender")
    out.session_id = bytes(m.session_id)
    vector = np.asarray(m.masked)
    if element_bytes is None:
        if vector.dtype.kind != "u" or vector.dtype.itemsize not in ELEMENT_WIDTHS:
            raise WireFormatError(f"cannot infer the element width of dtype {vector.dtype};"
                                  " pass element_bytes", reason=WireIssue.UNENCODABLE.value,
                                  field="masked")
        element_bytes = vector.dtype.itemsize
    if element_bytes not in ELEMENT_WIDTHS:
        raise WireFormatError(f"element_bytes must be one of {ELEMENT_WIDTHS}",
                              reason=WireIssue.UNENCODABLE.value, field="element_bytes")
    if vector.ndim != 1 or vector.dtype.kind not in "ui":
        raise WireFormatError("masked must be a 1-D integer vector",
                              reason=WireIssue.UNENCODABLE.value, field="masked")
    if vector.size and (int(vector.min()) < 0
                        or int(vector.max()) >= 1 << (8 * element_bytes)):
        raise WireFormatError(f"masked entries do not fit in {element_bytes} bytes",
                              reason=WireIssue.UNENCODABLE.value, field="masked")
    out.element_bytes = element_bytes
    out.masked = pack_words(vector, element_bytes)
    out.excluded.extend(_id(u, "excluded") for u in m.excluded)


def _enc_consistency(m: ConsistencyRequest, out: Any, _: int | None) -> None:
    out.recipient = _id(m.recipient, "recipient")
    out.session_id = bytes(m.session_id)
    out.survivors.extend(_id(u, "survivors") for u in m.survivors)


def _enc_signature(m: ConsistencySignature, out: Any, _: int | None) -> None:
    out.sender = _id(m.sender, "sender")
    out.session_id = bytes(m.session_id)
    out.signature = bytes(m.signature)


def _enc_unmask_request(m: UnmaskingRequest, out: Any, _: int | None) -> None:
    out.recipient = _id(m.recipient, "recipient")
    out.session_id = bytes(m.session_id)
    out.survivors.extend(_id(u, "survivors") for u in m.survivors)
    out.dropped.extend(_id(u, "dropped") for u in m.dropped)
    for signer, signature in m.signatures.items():
        entry = out.signatures.add()
        entry.signer = _id(signer, "signatures.signer")
        entry.signature = bytes(signature)
    for owner, component in m.noise_removals:
        ref = out.noise_removals.add()
        ref.owner = _id(owner, "noise_removals.owner")
        ref.component = _component(component, "noise_removals.component")


def _enc_unmask_response(m: UnmaskingResponse, out: Any, _: int | None) -> None:
    out.sender = _id(m.sender, "sender")
    out.session_id = bytes(m.session_id)
    for owner, share in m.self_mask_shares.items():
        entry = out.self_mask_shares.add()
        entry.owner = _id(owner, "self_mask_shares.owner")
        entry.share = bytes(share)
    for owner, share in m.key_shares.items():
        entry = out.key_shares.add()
        entry.owner = _id(owner, "key_shares.owner")
        entry.share = bytes(share)
    for (owner, component), share in m.noise_shares.items():
        noise = out.noise_shares.add()
        noise.owner = _id(owner, "noise_shares.owner")
        noise.component = _component(component, "noise_shares.component")
        noise.share = bytes(share)


def _component(value: int, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) \
            or not 0 <= int(value) < MAX_NOISE_COMPONENTS:
        raise WireFormatError(f"{field} must be in 0..{MAX_NOISE_COMPONENTS - 1}, got {value!r}",
                              reason=WireIssue.UNENCODABLE.value, field=field)
    return int(value)


_ENCODERS: dict[type, Any] = {
    AdvertiseKeys: _enc_advert,
    KeyRoster: _enc_roster,
    EncryptedShares: _enc_shares,
    ShareDelivery: _enc_delivery,
    MaskedInput: _enc_masked,
    ConsistencyRequest: _enc_consistency,
    ConsistencySignature: _enc_signature,
    UnmaskingRequest: _enc_unmask_request,
    UnmaskingResponse: _enc_unmask_response,
}


# -- decoding ---------------------------------------------------------------


def decode(data: bytes, *, config: SecAggConfig | None = None,
           expect: type | tuple[type, ...] | None = None) -> Message:
    """Parse one ``SecAggMessage`` envelope into a message dataclass.

    Args:
        data: the bytes received.
        config: when given, a :class:`MaskedInput` must also have the
            configuration's element width (``MALFORMED``), ``vector_length``
            entries (``WRONG_LENGTH``) and entries below ``2^bits``
            (``VALUE_OUT_OF_RANGE``), and no repeated field (id lists,
            per-client entries) may hold more entries than the session has
            clients (``OVERSIZED_FIELD``), which bounds the memory a decode
            takes by the session size.
        expect: when given, the message class(es) acceptable here; any other
            kind is refused with rule ``WRONG_ROUND``.

    Raises:
        WireFormatError: see :class:`WireIssue` for the reasons.
    """
    raw = bytes(data)
    envelope = pb.SecAggMessage()
    try:
        envelope.ParseFromString(raw)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise WireFormatError(f"not a SecAggMessage: {exc}",
                              reason=WireIssue.UNPARSEABLE.value) from None
    body = envelope.WhichOneof("body")
    if body is None:
        raise WireFormatError("envelope carries no message", reason=WireIssue.EMPTY_ENVELOPE.value)
    inner = getattr(envelope, body)
    if inner.version != WIRE_VERSION:
        raise WireFormatError(f"protocol version {inner.version} is not supported (only"
                              f" {WIRE_VERSION})", reason=WireIssue.UNKNOWN_VERSION.value,
                              field=f"{body}.version", rule=Rule.UNSUPPORTED_VERSION)
    if config is not None:
        # every repeated field holds at most one entry per invited client
        for spec, value in inner.ListFields():
            limit = config.num_clients * (max(1, config.noise_components)
                                          if spec.name in _NOISE_FIELDS else 1)
            if spec.label == spec.LABEL_REPEATED and len(value) > limit:
                raise WireFormatError(f"{spec.name} has {len(value)} entries, the session has"
                                      f" {config.num_clients} clients",
                                      reason=WireIssue.OVERSIZED_FIELD.value,
                                      field=f"{body}.{spec.name}", peer=_sender_field(inner))
    envelope.DiscardUnknownFields()
    if envelope.SerializeToString(deterministic=True) != raw:
        raise WireFormatError("not the canonical encoding (unknown or repeated fields, or"
                              " fields out of order)", reason=WireIssue.NON_CANONICAL.value)
    message = _DECODERS[body](inner, config)
    if expect is not None and not isinstance(message, expect):
        names = ([expect.__name__] if isinstance(expect, type)
                 else [t.__name__ for t in expect])
        raise WireFormatError(f"{type(message).__name__} is not expected here (expected"
                              f" {' or '.join(names)})", reason=WireIssue.UNEXPECTED_MESSAGE.value,
                              rule=Rule.WRONG_ROUND, peer=_peer_of(message))
    return message


def _sender_field(inner: Any) -> int | None:
    sender = getattr(inner, "sender", None)
    return int(sender) if sender and 1 <= sender <= MAX_CLIENT_ID else None


def _peer_of(message: Message) -> int | None:
    return getattr(message, "sender", None)


def _fixed(value: bytes, size: int, field: str, peer: int | None) -> bytes:
    if len(value) < size:
        raise WireFormatError(f"{field} is {len(value)} bytes, must be {size}",
                              reason=WireIssue.TRUNCATED_FIELD.value, field=field, peer=peer)
    if len(value) > size:
        raise WireFormatError(f"{field} is {len(value)} bytes, must be {size}",
                              reason=WireIssue.OVERSIZED_FIELD.value, field=field, peer=peer)
    return bytes(value)


def _check_id(value: int, field: str, peer: int | None) -> int:
    if not 1 <= value <= MAX_CLIENT_ID:
        raise WireFormatError(f"{field} {value} is not a client id (1..{MAX_CLIENT_ID})",
                              reason=WireIssue.INVALID_ID.value, field=field, peer=peer)
    return int(value)


def _id_list(values: Sequence[int], field: str, peer: int | None) -> tuple[int, ...]:
    # checked as one uint32 array (4 bytes an id) before any Python int is made
    ids = np.fromiter(values, dtype=np.uint32, count=len(values))
    if ids.size and (int(ids.min()) < 1 or int(ids.max()) > MAX_CLIENT_ID):
        bad = int(ids[(ids < 1) | (ids > MAX_CLIENT_ID)][0])
        raise WireFormatError(f"{field} {bad} is not a client id (1..{MAX_CLIENT_ID})",
                              reason=WireIssue.INVALID_ID.value, field=field, peer=peer)
    if ids.size > 1 and not np.all(np.diff(np.sort(ids).astype(np.int64))):
        raise WireFormatError(f"{field} lists a client id twice",
                              reason=WireIssue.DUPLICATE_ID.value, field=field, peer=peer)
    return tuple(ids.tolist())


def _keyed(entries: Iterable[Any], id_attr: str, value_attr: str, size: int, field: str,
           peer: int | None) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    last = 0
    for entry in entries:
        key = _check_id(getattr(entry, id_attr), f"{field}.{id_attr}", peer)
        if key in out:
            raise WireFormatError(f"{field} has two entries for client {key}",
                                  reason=WireIssue.DUPLICATE_ID.value, field=field, peer=peer)
        if key < last:
            # the message keeps its maps sorted: any other order is a second
            # encoding of the same message
            raise WireFormatError(f"{field} is not in ascending {id_attr} order",
                                  reason=WireIssue.NON_CANONICAL.value, field=field, peer=peer)
        last = key
        out[key] = _fixed(getattr(entry, value_attr), size, f"{field}.{value_attr}", peer)
    return out


def _sender(m: Any, field: str = "sender") -> int:
    return _check_id(getattr(m, field), field, None)


def _dec_advert(m: Any, _: SecAggConfig | None) -> AdvertiseKeys:
    sender = _sender(m)
    signature = (_fixed(m.signature, SIGNATURE_BYTES, "signature", sender)
                 if m.HasField("signature") else None)
    return AdvertiseKeys(sender, _fixed(m.encryption_key, KEY_BYTES, "encryption_key", sender),
                         _fixed(m.masking_key, KEY_BYTES, "masking_key", sender), signature,
                         _fixed(m.seed_commitment, COMMITMENT_BYTES, "seed_commitment", sender),
                         _commitments(m.noise_commitments, "noise_commitments", sender))


def _commitments(values: Sequence[bytes], field: str, peer: int | None) -> tuple[bytes, ...]:
    if len(values) > MAX_NOISE_COMPONENTS:
        raise WireFormatError(f"{field} has {len(values)} entries, at most"
                              f" {MAX_NOISE_COMPONENTS}", reason=WireIssue.OVERSIZED_FIELD.value,
                              field=field, peer=peer)
    return tuple(_fixed(c, COMMITMENT_BYTES, field, peer) for c in values)


def _ciphertext_bytes(entries: Sequence[Any], config: SecAggConfig | None) -> int:
    """The one ciphertext length every entry must have: the configuration's
    (144 + 64 J), or without one the first entry's when it is of that form."""
    if config is not None:
        return CIPHERTEXT_BYTES + 64 * config.noise_components
    if entries:
        extra = len(entries[0].ciphertext) - CIPHERTEXT_BYTES
        if extra >= 0 and extra % 64 == 0 and extra // 64 <= MAX_NOISE_COMPONENTS:
            return CIPHERTEXT_BYTES + extra
    return CIPHERTEXT_BYTES


def _noise_keyed(entries: Iterable[Any], field: str, peer: int | None,
                 value_attr: str | None) -> dict[tuple[int, int], bytes]:
    out: dict[tuple[int, int], bytes] = {}
    last = (0, -1)
    for entry in entries:
        owner = _check_id(entry.owner, f"{field}.owner", peer)
        component = int(entry.component)
        if component >= MAX_NOISE_COMPONENTS:
            raise WireFormatError(f"{field}.component {component} is not below"
                                  f" {MAX_NOISE_COMPONENTS}", reason=WireIssue.INVALID_ID.value,
                                  field=field, peer=peer)
        key = (owner, component)
        if key in out:
            raise WireFormatError(f"{field} has two entries for {key}",
                                  reason=WireIssue.DUPLICATE_ID.value, field=field, peer=peer)
        if key < last:
            raise WireFormatError(f"{field} is not in ascending (owner, component) order",
                                  reason=WireIssue.NON_CANONICAL.value, field=field, peer=peer)
        last = key
        out[key] = (b"" if value_attr is None
                    else _fixed(getattr(entry, value_attr), SHARE_BYTES, f"{field}.share", peer))
    return out


def _dec_roster(m: Any, _: SecAggConfig | None) -> KeyRoster:
    digest = _fixed(m.config_digest, DIGEST_BYTES, "config_digest", None)
    entries = []
    seen: set[int] = set()
    for e in m.entries:
        sender = _check_id(e.sender, "entries.sender", None)
        if sender in seen:
            raise WireFormatError(f"roster lists client {sender} twice",
                                  reason=WireIssue.DUPLICATE_ID.value, field="entries.sender")
        seen.add(sender)
        signature = (_fixed(e.signature, SIGNATURE_BYTES, "entries.signature", sender)
                     if e.HasField("signature") else None)
        entries.append(AdvertiseKeys(
            sender, _fixed(e.encryption_key, KEY_BYTES, "entries.encryption_key", sender),
            _fixed(e.masking_key, KEY_BYTES, "entries.masking_key", sender), signature,
            _fixed(e.seed_commitment, COMMITMENT_BYTES, "entries.seed_commitment", sender),
            _commitments(e.noise_commitments, "entries.noise_commitments", sender)))
    return KeyRoster(digest, tuple(entries))


def _dec_shares(m: Any, config: SecAggConfig | None) -> EncryptedShares:
    sender = _sender(m)
    return EncryptedShares(sender, _fixed(m.session_id, SESSION_ID_BYTES, "session_id", sender),
                           _keyed(m.ciphertexts, "peer", "ciphertext",
                                  _ciphertext_bytes(m.ciphertexts, config), "ciphertexts",
                                  sender))


def _dec_delivery(m: Any, config: SecAggConfig | None) -> ShareDelivery:
    recipient = _sender(m, "recipient")
    return ShareDelivery(recipient, _fixed(m.session_id, SESSION_ID_BYTES, "session_id", None),
                         _keyed(m.ciphertexts, "peer", "ciphertext",
                                _ciphertext_bytes(m.ciphertexts, config), "ciphertexts", None))


def _dec_masked(m: Any, config: SecAggConfig | None) -> MaskedInput:
    sender = _sender(m)
    sid = _fixed(m.session_id, SESSION_ID_BYTES, "session_id", sender)
    width = m.element_bytes
    if width not in ELEMENT_WIDTHS:
        raise WireFormatError(f"element_bytes is {width}, must be one of {ELEMENT_WIDTHS}",
                              reason=WireIssue.BAD_ELEMENT_WIDTH.value, field="element_bytes",
                              peer=sender)
    if len(m.masked) % width:
        raise WireFormatError(f"masked is {len(m.masked)} bytes, not a multiple of the element"
                              f" width {width}", reason=WireIssue.MISALIGNED_VECTOR.value,
                              field="masked", peer=sender)
    vector = unpack_words(m.masked, width)
    if config is not None:
        if width != config.wire_element_bytes:
            raise WireFormatError(f"element_bytes is {width}, the ring Z_2^{config.bits} uses"
                                  f" {config.wire_element_bytes}",
                                  reason=WireIssue.BAD_ELEMENT_WIDTH.value,
                                  field="element_bytes", peer=sender)
        if vector.size != config.vector_length:
            raise WireFormatError(f"masked has {vector.size} entries, expected"
                                  f" {config.vector_length}", reason=WireIssue.WRONG_LENGTH.value,
                                  field="masked", rule=Rule.WRONG_LENGTH, peer=sender)
        if config.bits < 8 * width and vector.size and int(vector.max()) > config.modulus_mask:
            raise WireFormatError(f"a masked entry is not below 2^{config.bits}",
                                  reason=WireIssue.VALUE_OUT_OF_RANGE.value, field="masked",
                                  rule=Rule.VALUE_OUT_OF_RANGE, peer=sender)
        vector = vector.astype(f"=u{config.element_bytes}", copy=False)
    return MaskedInput(sender, sid, vector, _id_list(m.excluded, "excluded", sender))


def pack_words(vector: np.ndarray, width: int) -> bytes:
    """Little-endian ``width``-byte words (1..8) of the non-negative
    ``vector`` (entries must fit in ``width`` bytes)."""
    if width in (1, 2, 4, 8):
        return vector.astype(f"<u{width}").tobytes()
    as_bytes = np.ascontiguousarray(vector.astype("<u8")).view(np.uint8).reshape(-1, 8)
    return as_bytes[:, :width].tobytes()


def unpack_words(raw: bytes, width: int) -> np.ndarray:
    """Inverse of :func:`pack_words`: native unsigned ints of the smallest
    dtype (1, 2, 4 or 8 bytes) that holds ``width`` bytes."""
    if width in (1, 2, 4, 8):
        return np.frombuffer(raw, dtype=f"<u{width}").astype(f"=u{width}")
    words = np.frombuffer(raw, dtype=np.uint8).reshape(-1, width)
    padded = np.zeros((words.shape[0], 8), dtype=np.uint8)
    padded[:, :width] = words
    return padded.view("<u8").reshape(-1).astype("=u8")


def _dec_consistency(m: Any, _: SecAggConfig | None) -> ConsistencyRequest:
    recipient = _sender(m, "recipient")
    return ConsistencyRequest(recipient,
                              _fixed(m.session_id, SESSION_ID_BYTES, "session_id", None),
                              _id_list(m.survivors, "survivors", None))


def _dec_signature(m: Any, _: SecAggConfig | None) -> ConsistencySignature:
    sender = _sender(m)
    return ConsistencySignature(sender,
                                _fixed(m.session_id, SESSION_ID_BYTES, "session_id", sender),
                                _fixed(m.signature, SIGNATURE_BYTES, "signature", sender))


def _dec_unmask_request(m: Any, _: SecAggConfig | None) -> UnmaskingRequest:
    recipient = _sender(m, "recipient")
    return UnmaskingRequest(
        recipient, _fixed(m.session_id, SESSION_ID_BYTES, "session_id", None),
        _id_list(m.survivors, "survivors", None), _id_list(m.dropped, "dropped", None),
        _keyed(m.signatures, "signer", "signature", SIGNATURE_BYTES, "signatures", None),
        tuple(_noise_keyed(m.noise_removals, "noise_removals", None, None)))


def _dec_unmask_response(m: Any, _: SecAggConfig | None) -> UnmaskingResponse:
    sender = _sender(m)
    return UnmaskingResponse(
        sender, _fixed(m.session_id, SESSION_ID_BYTES, "session_id", sender),
        _keyed(m.self_mask_shares, "owner", "share", SHARE_BYTES, "self_mask_shares", sender),
        _keyed(m.key_shares, "owner", "share", SHARE_BYTES, "key_shares", sender),
        _noise_keyed(m.noise_shares, "noise_shares", sender, "share"))


_DECODERS: dict[str, Any] = {
    "advertise_keys": _dec_advert,
    "key_roster": _dec_roster,
    "encrypted_shares": _dec_shares,
    "share_delivery": _dec_delivery,
    "masked_input": _dec_masked,
    "consistency_request": _dec_consistency,
    "consistency_signature": _dec_signature,
    "unmasking_request": _dec_unmask_request,
    "unmasking_response": _dec_unmask_response,
}
