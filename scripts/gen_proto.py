"""Regenerate ``securefl/wire/secagg_pb2.py`` from ``protocols/secagg/v1/secagg.proto``.

Usage: ``python scripts/gen_proto.py [OUT_DIR]`` (default: securefl/wire).

Needs the pinned dev dependency ``grpcio-tools`` (its bundled protoc decides
the generated code's minimum protobuf runtime; see pyproject.toml).  The
generated file is committed; ``tests/test_wire_codegen.py`` regenerates it
into a temporary directory and fails if the committed copy is stale.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "protocols" / "secagg" / "v1"
PROTO_NAME = "secagg.proto"
GENERATED_NAME = "secagg_pb2.py"
HEADER = ("# ruff: noqa\n"
          "# Generated from protocols/secagg/v1/secagg.proto by scripts/gen_proto.py.\n")


def generate(out_dir: Path) -> Path:
    """Run protoc (from grpcio-tools) and write the post-processed module
    into ``out_dir``; return its path."""
    from grpc_tools import protoc  # imported lazily: a dev-only dependency

    with tempfile.TemporaryDirectory() as tmp:
        status = protoc.main(["protoc", f"-I{PROTO_DIR}", f"--python_out={tmp}",
                              str(PROTO_DIR / PROTO_NAME)])
        if status != 0:
            raise SystemExit(f"protoc failed with status {status}")
        code = (Path(tmp) / GENERATED_NAME).read_text()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / GENERATED_NAME
    target.write_text(HEADER + code)
    return target


def main(argv: list[str]) -> int:
    """Entry point."""
    out = Path(argv[1]) if len(argv) > 1 else ROOT / "securefl" / "wire"
    print(generate(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
