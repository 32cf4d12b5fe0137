#!/usr/bin/env bash
# Regenerate securefl/wire/secagg_pb2.py from protocols/secagg/v1/secagg.proto.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python scripts/gen_proto.py "$@"
