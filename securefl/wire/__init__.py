"""The v1 wire format: protobuf messages (``secagg_pb2``, generated from
``protocols/secagg/v1/secagg.proto``) and the strict codec between them and
the protocol dataclasses."""

from securefl.wire.codec import MESSAGE_TYPES, WIRE_VERSION, WireIssue, decode, encode

__all__ = ["MESSAGE_TYPES", "WIRE_VERSION", "WireIssue", "decode", "encode"]
