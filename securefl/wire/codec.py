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

Three kinds of message with O(n) or O(m) content are read (and the id lists
written) without protobuf when they are in their plain canonical form: a
long masked vector, a plain roster (decoded into columns, see
:mod:`securefl.protocol.roster`) and the survivor/dropped lists of a request
(packed varints with numpy, decoded into :class:`~securefl.protocol.roster.IdTuple`).
Each such path accepts only bytes the general decoder accepts, as an equal
message, and hands everything else to it (``tests/test_scale_paths.py``,
``tests/test_wire_long_vectors.py``).

Noise plans (SPEC.md section 16) add optional fields: ``noise_commitments``
(at most 16 of 32 bytes), ``noise_removals`` and ``noise_shares`` (ascending
``(owner, component)``, components below 16) and share ciphertexts of
``144 + 64 J`` bytes (with ``config``: exactly the plan's ``J``).  Without a
plan none is present and every encoding is as before.
"""

from __future__ import annotations

import enum
import operator
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
    ProvenEntry,
    ShareDelivery,
    SparseKeyRoster,
    UnmaskingRequest,
    UnmaskingResponse,
)
from securefl.protocol.roster import IdTuple, RosterEntries

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
HASH_BYTES = 32
"""A Merkle node hash, and one step of an inclusion path."""
MAX_PATH_STEPS = 31
"""An inclusion path in a tree of at most 2^31 - 2 leaves has at most 31 steps."""
CIPHERTEXT_BYTES = 144
"""A share ciphertext without a noise plan; each excess-noise seed adds 64."""
MAX_NOISE_COMPONENTS = 16
"""At most this many excess-noise seeds per client (NoisePlan's limit)."""
_NOISE_FIELDS = ("noise_removals", "noise_shares")
ELEMENT_WIDTHS = (1, 2, 3, 4, 5, 6, 7, 8)

Message: TypeAlias = (
    AdvertiseKeys | KeyRoster | EncryptedShares | ShareDelivery | MaskedInput
    | ConsistencyRequest | ConsistencySignature | UnmaskingRequest | UnmaskingResponse
    | SparseKeyRoster
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
    SparseKeyRoster: "sparse_key_roster",
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
    fast = _fast_list_encode(message)
    if fast is None:
        fast = _fast_keyed_encode(message)
    if fast is not None:
        return fast
    envelope = pb.SecAggMessage()
    body = _BODY_OF_TYPE.get(type(message))
    if body is None:
        raise WireFormatError(f"not a protocol message: {type(message).__name__}",
                              reason=WireIssue.UNENCODABLE.value)
    inner = getattr(envelope, body)
    inner.version = WIRE_VERSION
    if isinstance(message, MaskedInput):
        payload = _enc_masked_fields(message, inner, element_bytes)
        if len(payload) < _SPLIT_MIN:
            inner.masked = bytes(payload)
            return envelope.SerializeToString(deterministic=True)
        # splice the long payload in once instead of copying it through protobuf:
        # the canonical encoding writes fields in number order, so ``masked``
        # (field 5, non-empty) goes after fields 1-4 and before ``excluded`` (6)
        excluded = pb.MaskedInput()
        excluded.excluded.extend(inner.excluded)
        inner.ClearField("excluded")
        parts = (inner.SerializeToString(deterministic=True), bytes([_MASKED_TAG]),
                 _encode_varint(len(payload)), payload,
                 excluded.SerializeToString(deterministic=True))
        size = sum(len(p) for p in parts)
        return b"".join((bytes([_MASKED_TAG]), _encode_varint(size), *parts))
    _ENCODERS[type(message)](message, inner, element_bytes)
    return envelope.SerializeToString(deterministic=True)


def _id(value: int, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) \
            or not 1 <= int(value) <= MAX_CLIENT_ID:
        raise WireFormatError(f"{field} must be a client id in 1..{MAX_CLIENT_ID}, got {value!r}",
                              reason=WireIssue.UNENCODABLE.value, field=field)
    return int(value)


def _ids(values: Iterable[int], field: str) -> list[int]:
    """``[_id(u, field) for u in values]``, checked in bulk when every value
    is a plain int in range (the common case: a long survivor list)."""
    items = list(values)
    if {type(u) for u in items} <= {int} and (
            not items or (min(items) >= 1 and max(items) <= MAX_CLIENT_ID)):
        return items
    return [_id(u, field) for u in items]


def _enc_advert(m: AdvertiseKeys, out: Any, _: int | None) -> None:
    _enc_keys(m, out, "sender")


def _enc_roster(m: KeyRoster, out: Any, _: int | None) -> None:
    out.config_digest = bytes(m.config_digest)
    for e in m.entries:
        _enc_roster_entry(e, out.entries.add())


def _enc_sparse_roster(m: SparseKeyRoster, out: Any, _: int | None) -> None:
    out.recipient = _id(m.recipient, "recipient")
    out.config_digest = bytes(m.config_digest)
    out.id_bitmap = bytes(m.id_bitmap)
    out.root = bytes(m.root)
    for p in m.entries:
        proven = out.entries.add()
        _enc_roster_entry(p.entry, proven.entry)
        proven.inclusion_path = b"".join(bytes(h) for h in p.inclusion_path)


def _enc_roster_entry(e: AdvertiseKeys, entry: Any) -> None:
    _enc_keys(e, entry, "entries.sender")


def _enc_keys(e: AdvertiseKeys, out: Any, field: str) -> None:
    """An advertisement's fields into ``out`` (an ``AdvertiseKeys`` or a
    ``RosterEntry``: the same field names); ``field`` names the sender in
    an error."""
    out.sender = _id(e.sender, field)
    out.encryption_key = bytes(e.encryption_key)
    out.masking_key = bytes(e.masking_key)
    if e.signature is not None:
        out.signature = bytes(e.signature)
    out.seed_commitment = bytes(e.seed_commitment)
    out.noise_commitments.extend(bytes(c) for c in e.noise_commitments)


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
    out.masked = bytes(_enc_masked_fields(m, out, element_bytes))


def _enc_masked_fields(m: MaskedInput, out: Any, element_bytes: int | None) -> Any:
    """Set every field but ``masked``; return its packed bytes (a bytes-like
    object, possibly a view of ``m.masked`` when that is already packed)."""
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
    fits = vector.dtype.kind == "u" and vector.dtype.itemsize <= element_bytes
    if vector.size and not fits and (int(vector.min()) < 0
                                     or int(vector.max()) >= 1 << (8 * element_bytes)):
        raise WireFormatError(f"masked entries do not fit in {element_bytes} bytes",
                              reason=WireIssue.UNENCODABLE.value, field="masked")
    out.element_bytes = element_bytes
    out.excluded.extend(_ids(m.excluded, "excluded"))
    if element_bytes in (1, 2, 4, 8) and vector.dtype == np.dtype(f"<u{element_bytes}") \
            and vector.flags.c_contiguous:
        return memoryview(vector).cast("B")  # already the wire's words: no copy
    return pack_words(vector, element_bytes)


def _enc_consistency(m: ConsistencyRequest, out: Any, _: int | None) -> None:
    out.recipient = _id(m.recipient, "recipient")
    out.session_id = bytes(m.session_id)
    out.survivors.extend(_ids(m.survivors, "survivors"))


def _enc_signature(m: ConsistencySignature, out: Any, _: int | None) -> None:
    out.sender = _id(m.sender, "sender")
    out.session_id = bytes(m.session_id)
    out.signature = bytes(m.signature)


def _enc_unmask_request(m: UnmaskingRequest, out: Any, _: int | None) -> None:
    out.recipient = _id(m.recipient, "recipient")
    out.session_id = bytes(m.session_id)
    out.survivors.extend(_ids(m.survivors, "survivors"))
    out.dropped.extend(_ids(m.dropped, "dropped"))
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
    SparseKeyRoster: _enc_sparse_roster,
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
            clients (``OVERSIZED_FIELD``), nor a :class:`SparseKeyRoster`'s
            id bitmap be other than ``ceil(n/8)`` bytes (``OVERSIZED_FIELD``
            or ``TRUNCATED_FIELD``), which bounds the memory a decode takes
            by the session size.
        expect: when given, the message class(es) acceptable here; any other
            kind is refused with rule ``WRONG_ROUND``.

    Raises:
        WireFormatError: see :class:`WireIssue` for the reasons.
    """
    raw = bytes(data)
    fast = _fast_roster(raw, config)
    if fast is None:
        fast = _fast_list_decode(raw, config)
    if fast is None:
        fast = _fast_keyed_decode(raw, config)
    if fast is None:
        fast = _fast_masked_decode(raw, config)
    if fast is not None:
        return _expected(fast, expect)
    split = _split_masked_payload(raw)
    if split is not None:
        # a long masked vector: parse and check everything but its payload,
        # which is viewed in place (see _split_masked_payload)
        raw, payload = split
    else:
        payload = None
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
    if payload is not None:
        if body != "masked_input" or inner.masked:
            raise AssertionError("unreachable: the split keeps one masked_input payload")
        message: Message = _dec_masked(inner, config, payload)
    else:
        message = _DECODERS[body](inner, config)
    return _expected(message, expect)


def _expected(message: Message, expect: type | tuple[type, ...] | None) -> Message:
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


def _id_list(values: Sequence[int], field: str, peer: int | None) -> IdTuple:
    # checked as one uint32 array (4 bytes an id) before any Python int is made
    ids = np.fromiter(values, dtype=np.uint32, count=len(values))
    if ids.size and (int(ids.min()) < 1 or int(ids.max()) > MAX_CLIENT_ID):
        bad = int(ids[(ids < 1) | (ids > MAX_CLIENT_ID)][0])
        raise WireFormatError(f"{field} {bad} is not a client id (1..{MAX_CLIENT_ID})",
                              reason=WireIssue.INVALID_ID.value, field=field, peer=peer)
    if ids.size > 1 and not np.all(np.diff(ids.astype(np.int64)) > 0) \
            and not np.all(np.diff(np.sort(ids).astype(np.int64))):
        raise WireFormatError(f"{field} lists a client id twice",
                              reason=WireIssue.DUPLICATE_ID.value, field=field, peer=peer)
    return IdTuple(ids)


def _keyed(entries: Sequence[Any], id_attr: str, value_attr: str, size: int, field: str,
           peer: int | None) -> dict[int, bytes]:
    keys = [getattr(entry, id_attr) for entry in entries]
    values = [getattr(entry, value_attr) for entry in entries]
    if not keys or (keys[0] >= 1 and keys[-1] <= MAX_CLIENT_ID and keys == sorted(set(keys))
                    and set(map(len, values)) == {size}):
        # every id valid, strictly ascending, every value of the size: in bulk
        # (the loop below names the first problem otherwise)
        return dict(zip(keys, map(bytes, values), strict=True))
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


_ROSTER_TAG = 0x12
"""Field 2, length-delimited: ``SecAggMessage.key_roster``."""

# -- id lists as packed varints, with numpy -------------------------------------
#
# A request to unmask (or to sign) carries the survivor list (and the dropped
# list): O(n) ids that every client receives.  protobuf builds and checks them
# one Python int at a time (encode and decode took 0.7 ms per client at
# n = 2000); the paths below write and read exactly the same canonical bytes
# with array operations, for the plain form of these messages (no signature,
# no noise removal), and leave everything else to protobuf.

_LIST_BODIES = {ConsistencyRequest: 0x32, UnmaskingRequest: 0x42}
"""Envelope tags (fields 6 and 8, length-delimited) of the messages with id lists."""


def _pack_varints(values: np.ndarray) -> bytes:
    """The packed-varint encoding of the non-negative ``values`` (< 2^32)."""
    v = values.astype(np.uint32)
    sizes = np.ones(v.size, dtype=np.int64)
    for bound in (1 << 7, 1 << 14, 1 << 21, 1 << 28):
        sizes += v >= bound
    width = int(sizes.max()) if v.size else 1
    column = np.arange(width)
    # n x width: the 7-bit groups, low first, with continuation bits
    groups = ((v[:, None] >> (7 * column).astype(np.uint32)) & np.uint32(0x7F)).astype(np.uint8)
    groups |= ((column < sizes[:, None] - 1) << 7).astype(np.uint8)
    return groups[column < sizes[:, None]].tobytes()  # row by row


#: varints decoded per numpy pass by :func:`_unpack_varints` (its per-byte
#: temporaries are 8-byte words: in passes, a long list costs a bounded extra)
_VARINT_PASS = 8192


def _unpack_varints(raw: bytes) -> np.ndarray | None:
    """The values of a packed-varint field, when every varint is minimal, at
    most 5 bytes and below 2^32 and the field ends on a varint boundary;
    else None."""
    b = np.frombuffer(raw, dtype=np.uint8)
    if b.size == 0:
        return np.zeros(0, dtype=np.int64)
    if b[-1] & 0x80:
        return None
    ends = np.flatnonzero(b < 0x80)
    values = np.empty(ends.size, dtype=np.int64)
    for first in range(0, ends.size, _VARINT_PASS):
        last = min(first + _VARINT_PASS, ends.size)
        base = int(ends[first - 1]) + 1 if first else 0
        part = b[base:int(ends[last - 1]) + 1]
        stop = ends[first:last] - base
        starts = np.empty_like(stop)
        starts[0] = 0
        starts[1:] = stop[:-1] + 1
        sizes = stop - starts + 1
        if int(sizes.max()) > 5 or bool(np.any((sizes > 1) & (part[stop] == 0))):
            return None
        # each byte's place in its varint, then the groups shifted into place
        place = np.arange(part.size) - np.repeat(starts, sizes)
        shifted = (part & np.uint8(0x7F)).astype(np.uint64) \
            << (np.uint64(7) * place.astype(np.uint64))
        value = np.bitwise_or.reduceat(shifted, starts)
        if int(value.max()) >= 1 << 32:
            return None
        values[first:last] = value
    return values


def _length_delimited(tag: int, payload: bytes) -> bytes:
    return bytes([tag]) + _encode_varint(len(payload)) + payload


def _fast_list_encode(message: Any) -> bytes | None:
    """The canonical bytes of a plain :class:`UnmaskingRequest` or
    :class:`ConsistencyRequest` (32-byte session id, no signatures, no noise
    removals, every id a valid id), built with numpy; None otherwise (the
    protobuf encoder then runs, and refuses what it must)."""
    tag = _LIST_BODIES.get(type(message))
    if tag is None or type(message.session_id) is not bytes or len(message.session_id) != 32:
        return None
    lists = [message.survivors]
    if isinstance(message, UnmaskingRequest):
        if message.signatures or message.noise_removals:
            return None
        lists.append(message.dropped)
    recipient = message.recipient
    if type(recipient) is not int or not 1 <= recipient <= MAX_CLIENT_ID:
        return None
    parts = [b"\x08\x01\x10", _encode_varint(recipient), b"\x1a\x20", message.session_id]
    for field, ids in zip((0x22, 0x2A), lists, strict=False):
        packed = _packed_ids(ids)
        if packed is None:
            return None
        if packed:
            parts.append(_length_delimited(field, packed))
    return _length_delimited(tag, b"".join(parts))


def _packed_ids(ids: Any) -> bytes | None:
    """The packed varints of an id list (None: not all valid ids).  An
    :class:`IdTuple` keeps them: the server sends the same survivor list to
    every client, and it is packed once."""
    if isinstance(ids, IdTuple):
        cached = ids.__dict__.get("_packed")
        if cached is not None:
            return cached  # type: ignore[no-any-return]
        array = ids.array
    else:
        items = list(ids)
        if not all(type(u) is int for u in items):
            return None
        array = np.array(items, dtype=np.int64)
    if array.size and (int(array.min()) < 1 or int(array.max()) > MAX_CLIENT_ID):
        return None
    packed = _pack_varints(array) if array.size else b""
    if isinstance(ids, IdTuple):
        ids.__dict__["_packed"] = packed
    return packed


def _fast_header(raw: bytes) -> tuple[int, bytes, int] | None:
    """The head every fast-decoded message shares, read from ``raw`` in its
    one canonical layout: the envelope's minimal length covering exactly the
    rest of ``raw``, ``version = 1``, a valid client id (field 2), the
    32-byte session id (field 3).  Returns ``(id, session_id, position
    after it)``, or None (the general decoder then runs)."""
    head = _varint(raw, 1)
    if head is None or head[0] != len(raw) - head[1]:
        return None
    pos = head[1]
    if raw[pos:pos + 3] != b"\x08\x01\x10":
        return None
    who = _varint(raw, pos + 3)
    if who is None or not 1 <= who[0] <= MAX_CLIENT_ID:
        return None
    pos = who[1]
    if raw[pos:pos + 2] != b"\x1a\x20" or len(raw) < pos + 34:
        return None
    return who[0], raw[pos + 2:pos + 34], pos + 34


def _fast_list_decode(raw: bytes, config: SecAggConfig | None) -> Message | None:
    """A plain :class:`UnmaskingRequest` or :class:`ConsistencyRequest` read
    from its bytes with numpy, when ``raw`` is exactly the canonical encoding
    :func:`_fast_list_encode` writes and every list is strictly ascending
    valid ids (at most one per invited client with ``config``); else None,
    and the general decoder runs (it accepts an equal message from these
    bytes, and refuses or accepts everything else as before)."""
    if len(raw) < 40 or raw[0] not in (0x32, 0x42):
        return None
    kind = UnmaskingRequest if raw[0] == 0x42 else ConsistencyRequest
    header = _fast_header(raw)
    if header is None:
        return None
    recipient, sid, pos = header
    lists: dict[int, IdTuple] = {}
    for field in (0x22, 0x2A) if kind is UnmaskingRequest else (0x22,):
        if pos < len(raw) and raw[pos] == field:
            length = _varint(raw, pos + 1)
            if length is None or length[1] + length[0] > len(raw) or length[0] == 0:
                return None
            values = _unpack_varints(raw[length[1]:length[1] + length[0]])
            if values is None or not values.size or int(values.min()) < 1 \
                    or int(values.max()) > MAX_CLIENT_ID \
                    or (values.size > 1 and not bool(np.all(values[1:] > values[:-1]))) \
                    or (config is not None and values.size > config.num_clients):
                return None
            lists[field] = IdTuple(values)
            pos = length[1] + length[0]
        else:
            lists[field] = IdTuple(())
    if pos != len(raw):
        return None
    if kind is UnmaskingRequest:
        return UnmaskingRequest(recipient, sid, lists[0x22], lists[0x2A])
    return ConsistencyRequest(recipient, sid, lists[0x22])


# -- share maps as fixed-size records, with numpy --------------------------------
#
# Every share ciphertext crosses the server twice (n k of them: 420,000 at
# n = 10^4), in an EncryptedShares and then a ShareDelivery, and every
# revealed share once, in an UnmaskingResponse.  protobuf builds a Python
# object per entry; the paths below write and read exactly the same canonical
# bytes for the plain form of these messages (32-byte session id, every value
# of one length, no noise shares) as rows of one array per run of ids of the
# same varint width, and leave everything else to protobuf.

_KEYED_BODIES: dict[type, tuple[int, str, tuple[str, ...]]] = {
    EncryptedShares: (0x1A, "sender", ("ciphertexts",)),
    ShareDelivery: (0x22, "recipient", ("ciphertexts",)),
    UnmaskingResponse: (0x4A, "sender", ("self_mask_shares", "key_shares")),
}
"""Envelope tag (fields 3, 4 and 9), the id field, and the maps (fields 4, 5
of the body) of the messages whose maps are ``{uint32 id = 1; bytes value =
2}`` entries."""
_KEYED_KINDS = {tag: kind for kind, (tag, _, _) in _KEYED_BODIES.items()}
_MAP_TAGS = (0x22, 0x2A)
"""Body fields 4 and 5, length-delimited."""


def _small_varint(value: int) -> bytes:
    """The minimal varint of ``0 <= value < 2^35`` (without a loop for ids
    below 2^14)."""
    if value < 0x80:
        return bytes((value,))
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    return _encode_varint(value)


def _pack_entries(tag: int, keys: list[int], values: list[bytes], size: int) -> bytes:
    """The canonical bytes of ``{uint32 id = 1; bytes value = 2}`` entries of
    the repeated field ``tag``, in the given order: every key a valid client
    id, every value ``size > 0`` bytes."""
    suffix = b"\x12" + _encode_varint(size)
    heads: dict[int, bytes] = {}
    parts: list[bytes] = []
    for key, value in zip(keys, values, strict=True):
        ident = _small_varint(key)
        head = heads.get(len(ident))
        if head is None:
            head = heads[len(ident)] = (bytes((tag,)) + _encode_varint(
                1 + len(ident) + len(suffix) + size) + b"\x08")
        parts += (head, ident, suffix, value)
    return b"".join(parts)


def _fast_keyed_encode(message: Any) -> bytes | None:
    """The canonical bytes of a plain :class:`EncryptedShares`,
    :class:`ShareDelivery` or :class:`UnmaskingResponse` (32-byte session id,
    a valid id, every map keyed by plain-int valid ids with ``bytes`` values
    of one non-zero length, no noise shares), built with numpy; None
    otherwise (the protobuf encoder then runs, and refuses what it must)."""
    spec = _KEYED_BODIES.get(type(message))
    if spec is None:
        return None
    tag, who_field, map_fields = spec
    sid, who = message.session_id, getattr(message, who_field)
    if type(sid) is not bytes or len(sid) != SESSION_ID_BYTES or type(who) is not int \
            or not 1 <= who <= MAX_CLIENT_ID:
        return None
    if isinstance(message, UnmaskingResponse) and message.noise_shares:
        return None
    parts = [b"\x08\x01\x10", _encode_varint(who), b"\x1a\x20", sid]
    for field, name in zip(_MAP_TAGS, map_fields, strict=False):
        mapping = getattr(message, name)
        if not mapping:
            continue
        keys, values = list(mapping.keys()), list(mapping.values())
        if set(map(type, keys)) != {int} or set(map(type, values)) != {bytes} \
                or min(keys) < 1 or max(keys) > MAX_CLIENT_ID:
            return None
        sizes = set(map(len, values))
        if len(sizes) != 1 or 0 in sizes:
            return None
        parts.append(_pack_entries(field, keys, values, sizes.pop()))
    return _length_delimited(tag, b"".join(parts))


def _unpack_entries(raw: bytes, pos: int, tag: int, size: int | None
                    ) -> tuple[list[int], list[bytes], int] | None:
    """The ``{uint32 id = 1; bytes value = 2}`` entries of the repeated field
    ``tag`` from ``pos`` on: (ids, values, the position after them).  Each
    entry must be exactly the tag, its minimal length, ``0x08``, a minimal
    id varint, ``0x12``, the minimal length of the value and a value of
    ``size`` bytes (None: the first entry's size, which must be that of a
    share ciphertext); the ids valid and strictly ascending.  None when an
    entry of that tag is not of this form (the general decoder then names
    the problem).  A run of entries of one id width is a run of records of
    one length: each column of fixed bytes is checked as one strided slice,
    with C-speed bytes operations."""
    total = len(raw)
    if size is None and pos < total and raw[pos] == tag:
        first = _varint(raw, pos + 1)
        ident = None if first is None or raw[first[1]:first[1] + 1] != b"\x08" \
            else _varint(raw, first[1] + 1)
        if ident is None or raw[ident[1]:ident[1] + 1] != b"\x12":
            return None
        length = _varint(raw, ident[1] + 1)
        extra = -1 if length is None else length[0] - CIPHERTEXT_BYTES
        if extra < 0 or extra % 64 or extra // 64 > MAX_NOISE_COMPONENTS:
            return None
        size = length[0]
    suffix = b"\x12" + _encode_varint(size or 0)
    keys: list[int] = []
    values: list[bytes] = []
    while pos < total and raw[pos] == tag:
        length = _varint(raw, pos + 1)
        if length is None or size is None:
            return None
        w = length[0] - (1 + len(suffix) + size)  # the id's varint
        if not 1 <= w <= 5:
            return None
        head = length[1] - pos + 1  # tag, length, 0x08
        record = length[1] - pos + length[0]
        end = pos + (total - pos) // record * record
        fixed = raw[pos:pos + head] + b"\x00" * w + suffix  # a record's fixed bytes
        if fixed[head - 1] != 0x08:
            return None
        # the records (from pos) whose fixed bytes are all as in the first
        count = (end - pos) // record
        for c in (*range(head), *range(head + w, len(fixed))):
            column = raw[pos + c:pos + count * record:record]
            count -= len(column.lstrip(fixed[c:c + 1]))
        if count == 0:
            return None
        end = pos + count * record
        groups = [raw[pos + head + j:end:record] for j in range(w)]
        # minimal varints of w bytes: continuation bits on all but the last,
        # and the last group not zero (unless it is the only one)
        if any(min(g) < 0x80 for g in groups[:-1]) or max(groups[-1]) >= 0x80 \
                or (w > 1 and min(groups[-1]) == 0):
            return None
        if w == 1:
            keys += groups[0]
        elif w == 2:
            keys += [lo & 0x7F | hi << 7 for lo, hi in zip(groups[0], groups[1], strict=True)]
        else:
            keys += [sum((b & 0x7F) << (7 * j) for j, b in enumerate(bs))
                     for bs in zip(*groups, strict=True)]
        start = pos + head + w + len(suffix)
        values += [raw[o:o + size] for o in range(start, end, record)]
        pos = end
    if keys and (keys[0] < 1 or keys[-1] > MAX_CLIENT_ID
                 or not all(map(operator.lt, keys, keys[1:]))):
        return None
    return keys, values, pos


def _fast_keyed_decode(raw: bytes, config: SecAggConfig | None) -> Message | None:
    """A plain :class:`EncryptedShares`, :class:`ShareDelivery` or
    :class:`UnmaskingResponse` read from its bytes with numpy, when ``raw``
    is exactly the canonical encoding :func:`_fast_keyed_encode` writes (no
    noise shares), every map's ids valid and strictly ascending, every value
    of the size the general decoder requires, and (with ``config``) at most
    one entry per invited client; else None, and the general decoder runs
    (it accepts an equal message from these bytes, and refuses or accepts
    everything else as before)."""
    if len(raw) < 40 or raw[0] not in _KEYED_KINDS:
        return None
    kind = _KEYED_KINDS[raw[0]]
    header = _fast_header(raw)
    if header is None:
        return None
    who, sid, pos = header
    if kind is UnmaskingResponse:
        size: int | None = SHARE_BYTES
        fields = _MAP_TAGS
    else:
        size = None if config is None else CIPHERTEXT_BYTES + 64 * config.noise_components
        fields = _MAP_TAGS[:1]
    maps = []
    for field in fields:
        entries = _unpack_entries(raw, pos, field, size)
        if entries is None or (config is not None and len(entries[0]) > config.num_clients):
            return None
        keys, values, pos = entries
        maps.append(dict(zip(keys, values, strict=True)))
    if pos != len(raw):
        return None
    if kind is UnmaskingResponse:
        return UnmaskingResponse(who, sid, maps[0], maps[1], {})
    return kind(who, sid, maps[0])  # type: ignore[no-any-return]


def _fast_roster(raw: bytes, config: SecAggConfig | None) -> KeyRoster | None:
    """A plain roster (at least :data:`_COLUMNS_MIN` entries, no signature,
    no noise commitment) decoded straight from ``raw`` into columns, without
    building a protobuf message per entry or re-encoding: ``raw`` must be
    exactly the canonical encoding, i.e. the envelope tag, its minimal
    length, ``version = 1``, the 32-byte digest, then every entry in the one
    canonical layout :func:`_roster_columns` accepts, ascending senders,
    nothing after.  Anything else (None) goes through the general decoder,
    which accepts or names the problem exactly as before: this path only
    accepts bytes the general path decodes to an equal roster."""
    if len(raw) < 40 or raw[0] != _ROSTER_TAG:
        return None
    head = _varint(raw, 1)
    if head is None or head[0] != len(raw) - head[1]:
        return None
    pos = head[1]
    if raw[pos:pos + 4] != b"\x08\x01\x12\x20":  # version = 1, digest of 32 bytes
        return None
    digest = raw[pos + 4:pos + 36]
    if len(digest) != DIGEST_BYTES:
        return None
    columns = _roster_columns(raw, pos + 36)
    if columns is None or len(columns) < _COLUMNS_MIN or (
            config is not None and len(columns) > config.num_clients):
        return None
    return KeyRoster(digest, columns)  # type: ignore[arg-type]


def _roster_columns(blob: bytes, pos: int) -> RosterEntries | None:
    """The entries of a serialised ``KeyRoster`` from ``pos`` on, as columns,
    when every entry is exactly ``sender, encryption_key, masking_key,
    seed_commitment`` (32-byte fields, no signature, no noise commitments)
    and the senders are valid ids in strictly ascending order; else None
    (the entry-by-entry decoder then runs and names any problem).  ``blob``
    is canonical (checked by :func:`decode`).  Runs of entries with the same
    sender width are checked and sliced as one array: O(1) Python steps per
    run, at most five runs."""
    senders: list[np.ndarray] = []
    fields: list[np.ndarray] = []
    total = len(blob)
    while pos < total:
        if total - pos < 2 or blob[pos] != 0x1A or blob[pos + 1] & 0x80:
            return None
        size = blob[pos + 1]
        width = size - 103  # the sender's varint
        if not 1 <= width <= 5:
            return None
        record = size + 2
        rows = np.frombuffer(blob, dtype=np.uint8, count=(total - pos) // record * record,
                             offset=pos).reshape(-1, record)
        o = 3 + width
        ok = ((rows[:, 0] == 0x1A) & (rows[:, 1] == size) & (rows[:, 2] == 0x08)
              & (rows[:, o] == 0x12) & (rows[:, o + 1] == 32)
              & (rows[:, o + 34] == 0x1A) & (rows[:, o + 35] == 32)
              & (rows[:, o + 68] == 0x2A) & (rows[:, o + 69] == 32))
        for j in range(width - 1):
            ok &= rows[:, 3 + j] >= 0x80
        ok &= rows[:, 3 + width - 1] < 0x80
        if width > 1:
            ok &= rows[:, 3 + width - 1] != 0  # minimal varint: no trailing zero group
        count = int(np.argmin(ok)) if not ok.all() else len(ok)
        if count == 0:
            return None
        run = rows[:count]
        value = np.zeros(count, dtype=np.uint64)
        for j in range(width):
            value |= (run[:, 3 + j].astype(np.uint64) & np.uint64(0x7F)) << np.uint64(7 * j)
        senders.append(value)
        # each entry as the session id hashes it: big-endian sender, then the
        # three 32-byte fields
        hashed = np.empty((count, 100), dtype=np.uint8)
        hashed[:, :4] = value.astype(">u4").view(np.uint8).reshape(count, 4)
        hashed[:, 4:36] = run[:, o + 2:o + 34]
        hashed[:, 36:68] = run[:, o + 36:o + 68]
        hashed[:, 68:100] = run[:, o + 70:o + 102]
        fields.append(hashed)
        pos += count * record
    ids = np.concatenate(senders) if senders else np.zeros(0, dtype=np.uint64)
    if ids.size and (int(ids.min()) < 1 or int(ids.max()) > MAX_CLIENT_ID
                     or not np.all(ids[1:] > ids[:-1])):
        return None
    table = (fields[0] if len(fields) == 1 else np.concatenate(fields) if fields
             else np.zeros((0, 100), dtype=np.uint8))
    return RosterEntries(ids.astype(np.uint32), table[:, 4:], table)


def _dec_roster(m: Any, _: SecAggConfig | None) -> KeyRoster:
    digest = _fixed(m.config_digest, DIGEST_BYTES, "config_digest", None)
    if len(m.entries) >= _COLUMNS_MIN:
        # version (2 bytes) and digest (34) come first in the canonical form
        blob = m.SerializeToString(deterministic=True)
        start = (2 if m.version else 0) + 2 + DIGEST_BYTES
        columns = _roster_columns(blob, start)
        if columns is not None:
            return KeyRoster(digest, columns)  # type: ignore[arg-type]
    entries = []
    seen: set[int] = set()
    append = entries.append
    for e in m.entries:
        entry = _dec_roster_entry(e)
        if entry.sender in seen:
            raise WireFormatError(f"roster lists client {entry.sender} twice",
                                  reason=WireIssue.DUPLICATE_ID.value, field="entries.sender")
        seen.add(entry.sender)
        append(entry)
    return KeyRoster(digest, tuple(entries))


def _dec_roster_entry(e: Any) -> AdvertiseKeys:
    """One ``RosterEntry``: an invited-range sender, fixed-size fields."""
    sender = e.sender
    if not 1 <= sender <= MAX_CLIENT_ID:
        _check_id(sender, "entries.sender", None)  # raises
    signature = (_fixed(e.signature, SIGNATURE_BYTES, "entries.signature", sender)
                 if e.HasField("signature") else None)
    enc, mask, commit = e.encryption_key, e.masking_key, e.seed_commitment
    if len(enc) != KEY_BYTES or len(mask) != KEY_BYTES or len(commit) != COMMITMENT_BYTES:
        # the slow path names the field that is off
        _fixed(enc, KEY_BYTES, "entries.encryption_key", sender)
        _fixed(mask, KEY_BYTES, "entries.masking_key", sender)
        _fixed(commit, COMMITMENT_BYTES, "entries.seed_commitment", sender)
    noise = e.noise_commitments
    return AdvertiseKeys(sender, enc, mask, signature, commit,
                         _commitments(noise, "entries.noise_commitments", sender)
                         if noise else ())


def _dec_sparse_roster(m: Any, config: SecAggConfig | None) -> SparseKeyRoster:
    """A :class:`SparseKeyRoster`: entries strictly ascending by sender,
    every inclusion path a whole number (at most 31) of 32-byte hashes.  With
    ``config`` the bitmap must be exactly ``ceil(n/8)`` bytes (so a decode
    keeps no more than the session size, as :func:`decode` promises);
    without it, the client checks that ([MRK-4])."""
    recipient = _check_id(m.recipient, "recipient", None)
    digest = _fixed(m.config_digest, DIGEST_BYTES, "config_digest", None)
    root = _fixed(m.root, HASH_BYTES, "root", None)
    if len(m.id_bitmap) > (MAX_CLIENT_ID + 7) // 8:
        raise WireFormatError("id_bitmap is longer than any configuration's",
                              reason=WireIssue.OVERSIZED_FIELD.value, field="id_bitmap")
    if config is not None and len(m.id_bitmap) != (config.num_clients + 7) // 8:
        too_long = len(m.id_bitmap) > (config.num_clients + 7) // 8
        raise WireFormatError(f"id_bitmap is {len(m.id_bitmap)} bytes, the session's"
                              f" {config.num_clients} clients need"
                              f" {(config.num_clients + 7) // 8}",
                              reason=(WireIssue.OVERSIZED_FIELD if too_long
                                      else WireIssue.TRUNCATED_FIELD).value, field="id_bitmap")
    entries = []
    last = 0
    for p in m.entries:
        entry = _dec_roster_entry(p.entry)
        if entry.sender == last:
            raise WireFormatError(f"roster lists client {entry.sender} twice",
                                  reason=WireIssue.DUPLICATE_ID.value, field="entries.sender")
        if entry.sender < last:
            raise WireFormatError("roster entries are not in ascending sender order",
                                  reason=WireIssue.NON_CANONICAL.value, field="entries.sender")
        last = entry.sender
        path = p.inclusion_path
        if len(path) % HASH_BYTES:
            raise WireFormatError(f"inclusion_path of client {entry.sender} is {len(path)}"
                                  " bytes, not whole 32-byte hashes",
                                  reason=WireIssue.TRUNCATED_FIELD.value,
                                  field="entries.inclusion_path", peer=entry.sender)
        if len(path) > MAX_PATH_STEPS * HASH_BYTES:
            raise WireFormatError(f"inclusion_path of client {entry.sender} has more than"
                                  f" {MAX_PATH_STEPS} steps",
                                  reason=WireIssue.OVERSIZED_FIELD.value,
                                  field="entries.inclusion_path", peer=entry.sender)
        entries.append(ProvenEntry(entry, tuple(path[i:i + HASH_BYTES]
                                                for i in range(0, len(path), HASH_BYTES))))
    return SparseKeyRoster(recipient, digest, bytes(m.id_bitmap), root, tuple(entries))


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


_COLUMNS_MIN = 64
"""Rosters with at least this many entries are decoded as columns
(:class:`~securefl.protocol.roster.RosterEntries`) when they can be."""
_MASKED_TAG = 0x2A
"""Field 5, length-delimited: ``SecAggMessage.masked_input`` and ``MaskedInput.masked``."""
_SPLIT_MIN = 1 << 12
"""Masked payloads at least this long are checked structurally, not re-encoded."""


def _varint(raw: bytes, pos: int) -> tuple[int, int] | None:
    """The minimally encoded varint at ``pos`` and the position after it
    (None: truncated, longer than 10 bytes, or not minimal)."""
    value = shift = 0
    start = pos
    while pos < len(raw) and pos - start < 10:
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if byte == 0 and pos - start > 1:
                return None  # a trailing zero group: not the minimal encoding
            return value, pos
    return None


def _split_masked_payload(raw: bytes) -> tuple[bytes, memoryview] | None:
    """If ``raw`` is an envelope holding exactly a ``masked_input`` whose
    ``masked`` field is one length-delimited field of at least
    :data:`_SPLIT_MIN` bytes, framed minimally, with only lower-numbered
    fields before it and higher-numbered ones after it: the envelope with
    that field cut out (re-framed) and a zero-copy view of the payload.
    Otherwise None, and the caller decodes ``raw`` as a whole.

    Canonical iff the cut envelope is canonical: the canonical encoder
    writes fields in number order and ``masked`` (non-empty) as exactly the
    tag byte, the minimal length varint and the payload, so ``raw`` is the
    canonical encoding of the message iff the rest is the canonical encoding
    of the message without ``masked``, which :func:`decode` then checks by
    re-encoding only that small rest.
    """
    if len(raw) < _SPLIT_MIN or raw[0] != _MASKED_TAG:
        return None
    head = _varint(raw, 1)
    if head is None or head[0] != len(raw) - head[1]:
        return None
    start = pos = head[1]
    cut: tuple[int, int, int] | None = None  # (field start, payload start, payload end)
    last = 0
    while pos < len(raw):
        tag = _varint(raw, pos)
        if tag is None:
            return None
        number, wire_type = tag[0] >> 3, tag[0] & 7
        if number < last or (number == 5 and (cut is not None or tag[0] != _MASKED_TAG)):
            return None
        last = number
        if wire_type == 0:
            value = _varint(raw, tag[1])
            if value is None:
                return None
            pos = value[1]
        elif wire_type == 2:
            length = _varint(raw, tag[1])
            if length is None or length[1] + length[0] > len(raw):
                return None
            if number == 5:
                cut = (pos, length[1], length[1] + length[0])
            pos = length[1] + length[0]
        else:
            return None
    if cut is None or cut[2] - cut[1] < _SPLIT_MIN:
        return None
    rest = raw[start:cut[0]] + raw[cut[2]:]
    framed = bytes([_MASKED_TAG]) + _encode_varint(len(rest)) + rest
    return framed, memoryview(raw)[cut[1]:cut[2]]


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _dec_masked(m: Any, config: SecAggConfig | None,
                payload: memoryview | None = None) -> MaskedInput:
    sender = _sender(m)
    sid = _fixed(m.session_id, SESSION_ID_BYTES, "session_id", sender)
    return _masked_message(sender, sid, m.element_bytes, m.masked if payload is None else payload,
                           m.excluded, config)


def _masked_message(sender: int, sid: bytes, width: int, masked: bytes | memoryview,
                    excluded: Sequence[int], config: SecAggConfig | None) -> MaskedInput:
    """The checks of a masked input's vector (and excluded list) once its
    sender and session id are known (both decoders of a masked input)."""
    if width not in ELEMENT_WIDTHS:
        raise WireFormatError(f"element_bytes is {width}, must be one of {ELEMENT_WIDTHS}",
                              reason=WireIssue.BAD_ELEMENT_WIDTH.value, field="element_bytes",
                              peer=sender)
    if len(masked) % width:
        raise WireFormatError(f"masked is {len(masked)} bytes, not a multiple of the element"
                              f" width {width}", reason=WireIssue.MISALIGNED_VECTOR.value,
                              field="masked", peer=sender)
    vector = unpack_words(masked, width)
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
    # read-only: a view of the message's bytes, or an array of its own; a
    # server's MemoryStore keeps either as it is instead of copying it
    # (securefl.protocol.storage.frozen)
    vector.flags.writeable = False
    return MaskedInput(sender, sid, vector, _id_list(excluded, "excluded", sender))


def _fast_masked_decode(raw: bytes, config: SecAggConfig | None) -> MaskedInput | None:
    """A masked input read from its bytes without protobuf, when ``raw`` is
    exactly the canonical encoding :func:`encode` writes for a long vector
    (version 1, a valid sender, a 32-byte session id, the element width, at
    least :data:`_SPLIT_MIN` payload bytes, then a non-empty packed excluded
    list of minimal varints or nothing) and every check of the general
    decoder passes; else None, and the general decoder runs (it accepts an
    equal message from these bytes, and refuses or accepts everything else
    as before).  The vector is a read-only view of ``raw``, as there."""
    if len(raw) < _SPLIT_MIN or raw[0] != _MASKED_TAG:
        return None
    header = _fast_header(raw)
    if header is None:
        return None
    sender, sid, pos = header
    if raw[pos:pos + 1] != b"\x20":
        return None
    width = _varint(raw, pos + 1)
    if width is None or width[0] not in ELEMENT_WIDTHS or raw[width[1]:width[1] + 1] != b"\x2a":
        return None
    length = _varint(raw, width[1] + 1)
    if length is None or length[0] < _SPLIT_MIN or length[1] + length[0] > len(raw):
        return None
    start, pos = length[1], length[1] + length[0]
    excluded: Sequence[int] = ()
    if pos < len(raw):
        size = _varint(raw, pos + 1)
        if raw[pos] != 0x32 or size is None or size[0] == 0 \
                or size[1] + size[0] != len(raw):
            return None
        values = _unpack_varints(raw[size[1]:])
        if values is None or (config is not None and values.size > config.num_clients):
            return None
        excluded = values
    try:
        return _masked_message(sender, sid, width[0], memoryview(raw)[start:pos], excluded,
                               config)
    except WireFormatError:
        return None  # the general decoder refuses it, naming the problem


def pack_words(vector: np.ndarray, width: int) -> bytes:
    """Little-endian ``width``-byte words (1..8) of the non-negative
    ``vector`` (entries must fit in ``width`` bytes)."""
    if width in (1, 2, 4, 8):
        return vector.astype(f"<u{width}").tobytes()
    as_bytes = np.ascontiguousarray(vector.astype("<u8")).view(np.uint8).reshape(-1, 8)
    return as_bytes[:, :width].tobytes()


def unpack_words(raw: bytes | memoryview, width: int) -> np.ndarray:
    """Inverse of :func:`pack_words`: native unsigned ints of the smallest
    dtype (1, 2, 4 or 8 bytes) that holds ``width`` bytes.  For a width of
    1, 2, 4 or 8 on a little-endian machine this is a read-only view of
    ``raw`` (no copy); otherwise a new array."""
    if width in (1, 2, 4, 8):
        return np.frombuffer(raw, dtype=f"<u{width}").astype(f"=u{width}", copy=False)
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
    "sparse_key_roster": _dec_sparse_roster,
}
