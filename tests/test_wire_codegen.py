"""The committed generated protobuf module matches the .proto file."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "scripts" / "gen_proto.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_proto"] = module
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_not_stale(tmp_path: Path) -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools (dev dependency) is not installed: cannot regenerate")
    fresh = _load_generator().generate(tmp_path)
    committed = ROOT / "securefl" / "wire" / "secagg_pb2.py"
    assert fresh.read_text() == committed.read_text(), (
        "securefl/wire/secagg_pb2.py is stale: run scripts/gen_proto.sh and commit the result")


def test_generated_module_describes_every_message() -> None:
    from securefl.wire import MESSAGE_TYPES
    from securefl.wire import secagg_pb2 as pb

    body = pb.SecAggMessage.DESCRIPTOR.oneofs_by_name["body"]
    names = {f.message_type.name for f in body.fields}
    assert names == {t.__name__ for t in MESSAGE_TYPES}
    for field in body.fields:
        assert field.message_type.fields_by_name["version"].number == 1
