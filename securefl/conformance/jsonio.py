"""JSON forms shared by the vector files, the generator and the runner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from securefl.errors import ConfigurationError
from securefl.protocol.config import SecAggConfig, SecurityMode
from securefl.protocol.graphs import CompleteGraph, NeighbourGraph
from securefl.protocol.harary import HararyGraph

PROTOCOL_NAME = "securefl/secagg/v1"
ROOT = Path(__file__).resolve().parent.parent.parent
# in the repository a symbolic link to protocols/secagg/v1/vectors; in an
# installed wheel a copy of those files, so `securefl conformance` runs after
# `pip install securefl` (pyproject.toml, package-data)
DEFAULT_VECTOR_DIR = Path(__file__).parent / "vectors_v1"
DEFAULT_SCHEMA_DIR = ROOT / "protocols" / "secagg" / "v1" / "schemas"


def config_to_json(config: SecAggConfig) -> dict[str, Any]:
    """The JSON form of a configuration (SPEC.md section 3), with its digest."""
    return {
        "numClients": config.num_clients,
        "vectorLength": config.vector_length,
        "bits": config.bits,
        "threshold": config.t,
        "mode": config.mode.value,
        "clientIds": list(config.ids),
        "graph": config.graph.describe(),
        "context": config.context.hex(),
        "minSurvivors": config.floor,
        "digest": config.digest().hex(),
    }


def config_from_json(data: dict[str, Any]) -> SecAggConfig:
    """Inverse of :func:`config_to_json`; checks the digest.

    Raises:
        ConfigurationError: invalid values, an unsupported graph, or a
            digest that does not match the fields.
    """
    config = SecAggConfig(
        num_clients=data["numClients"], vector_length=data["vectorLength"], bits=data["bits"],
        threshold=data["threshold"], mode=SecurityMode(data["mode"]),
        client_ids=tuple(data["clientIds"]), graph=graph_from_text(data.get("graph", "complete")),
        context=bytes.fromhex(data.get("context", "")),
        min_survivors=data.get("minSurvivors"),
    )
    if "digest" in data and config.digest().hex() != data["digest"]:
        raise ConfigurationError("configuration digest in the vector file does not match")
    return config


def graph_from_text(text: str) -> NeighbourGraph:
    """The graph a configuration's ``graph`` text names (SPEC.md 3.5):
    ``complete`` or ``harary:k=<even degree>``.

    Raises:
        ConfigurationError: any other text.
    """
    if text == "complete":
        return CompleteGraph()
    prefix = "harary:k="
    if text.startswith(prefix) and text[len(prefix):].isdigit():
        return HararyGraph(int(text[len(prefix):]))
    raise ConfigurationError(f"unknown graph {text!r}")


def dump(data: Any) -> str:
    """Canonical JSON text of a vector file (stable across regenerations)."""
    return json.dumps(data, indent=1, ensure_ascii=True, allow_nan=False) + "\n"


def load(path: Path) -> Any:
    """Read one JSON file."""
    return json.loads(path.read_text())
