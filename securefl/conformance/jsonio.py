"""JSON forms shared by the vector files, the generator and the runner."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from securefl.errors import ConfigurationError
from securefl.protocol.config import SecAggConfig, SecurityMode
from securefl.protocol.graphs import CompleteGraph, NeighbourGraph
from securefl.protocol.harary import HararyGraph
from securefl.protocol.noise import NoisePlan

PROTOCOL_NAME = "securefl/secagg/v1"
ROOT = Path(__file__).resolve().parent.parent.parent
# in the repository a symbolic link to protocols/secagg/v1/vectors; in an
# installed wheel a copy of those files, so `securefl conformance` runs after
# `pip install securefl` (pyproject.toml, package-data)
DEFAULT_VECTOR_DIR = Path(__file__).parent / "vectors_v1"
DEFAULT_SCHEMA_DIR = ROOT / "protocols" / "secagg" / "v1" / "schemas"


def config_to_json(config: SecAggConfig) -> dict[str, Any]:
    """The JSON form of a configuration (SPEC.md section 3), with its digest
    (and its noise plan, SPEC.md section 16, only when it has one)."""
    out = {
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
    if config.noise is not None:
        out["noise"] = {"distribution": "skellam",
                        "targetVariance": config.noise.target_variance,
                        "calibration": config.noise.calibration.value,
                        "tolerance": config.noise.tolerance}
        if config.noise.noisy_length is not None:  # (only when set: older files unchanged)
            out["noise"]["noisyLength"] = config.noise.noisy_length
    if config.roster_delivery != "full":  # (only when not the default: older files unchanged)
        out["rosterDelivery"] = config.roster_delivery
    return out


_CONFIG_FIELDS: dict[str, tuple[type, ...]] = {
    "numClients": (int,), "vectorLength": (int,), "bits": (int,), "threshold": (int,),
    "mode": (str,), "clientIds": (list,), "graph": (str,), "context": (str,),
    "minSurvivors": (int, type(None)), "digest": (str,), "noise": (dict,),
    "rosterDelivery": (str,),
}
_CONFIG_REQUIRED = ("numClients", "vectorLength", "bits", "threshold", "mode", "clientIds")


def config_from_json(data: dict[str, Any]) -> SecAggConfig:
    """Inverse of :func:`config_to_json`; checks the digest.

    Raises:
        ConfigurationError: a missing field, a field of the wrong JSON type
            (a bool is not an int), invalid values, an unsupported graph, or
            a digest that does not match the fields.
    """
    if not isinstance(data, dict):
        raise ConfigurationError(f"a configuration is a JSON object, got {type(data).__name__}")
    for key, kinds in _CONFIG_FIELDS.items():
        if key not in data and key in _CONFIG_REQUIRED:
            raise ConfigurationError(f"configuration lacks {key!r}")
        if key in data and not isinstance(data[key], kinds):
            raise ConfigurationError(f"configuration field {key!r} must be"
                                     f" {' or '.join(k.__name__ for k in kinds)}")
    if any(isinstance(v, bool) for k, v in data.items() if k != "mode") or not all(
            isinstance(c, int) and not isinstance(c, bool) for c in data["clientIds"]):
        raise ConfigurationError("configuration numbers and client ids must be integers")
    try:
        mode = SecurityMode(data["mode"])
        context = bytes.fromhex(data.get("context", ""))
    except ValueError:
        raise ConfigurationError("configuration mode or context is not valid") from None
    config = SecAggConfig(
        num_clients=data["numClients"], vector_length=data["vectorLength"], bits=data["bits"],
        threshold=data["threshold"], mode=mode, client_ids=data["clientIds"],
        graph=graph_from_text(data.get("graph", "complete")), context=context,
        min_survivors=data.get("minSurvivors"), noise=_noise_from_json(data.get("noise")),
        roster_delivery=data.get("rosterDelivery", "full"),
    )
    if "digest" in data and config.digest().hex() != data["digest"]:
        raise ConfigurationError("configuration digest in the vector file does not match")
    return config


def _noise_from_json(data: Any) -> NoisePlan | None:
    if data is None:
        return None
    keys = {"distribution", "targetVariance", "calibration", "tolerance"}
    if not isinstance(data, dict) or not keys <= set(data) <= keys | {"noisyLength"} or \
            data["distribution"] != "skellam":
        raise ConfigurationError(f"a noise plan is an object with exactly {sorted(keys)}"
                                 " (and optionally 'noisyLength') and distribution 'skellam'")
    for key in ("targetVariance", "tolerance"):
        if isinstance(data[key], bool) or not isinstance(data[key], int | float):
            raise ConfigurationError(f"noise plan field {key!r} must be a number")
    return NoisePlan(data["targetVariance"], data["calibration"], data["tolerance"],
                     noisy_length=data.get("noisyLength"))


def graph_from_text(text: str) -> NeighbourGraph:
    """The graph a configuration's ``graph`` text names (SPEC.md 3.5):
    ``complete`` or ``harary:k=<even degree>``.

    Raises:
        ConfigurationError: any other text.
    """
    if not isinstance(text, str):
        raise ConfigurationError(f"a graph is named by a string, got {type(text).__name__}")
    if text == "complete":
        return CompleteGraph()
    prefix = "harary:k="
    degree = text[len(prefix):]
    if text.startswith(prefix) and degree.isascii() and degree.isdigit() and len(degree) <= 10:
        return HararyGraph(int(degree))
    raise ConfigurationError(f"unknown graph {text!r}")


def dump(data: Any) -> str:
    """Canonical JSON text of a vector file (stable across regenerations)."""
    return json.dumps(data, indent=1, ensure_ascii=True, allow_nan=False) + "\n"


def load(path: Path) -> Any:
    """Read one JSON file.

    Raises:
        OSError: it cannot be read.
        ConfigurationError: it is not UTF-8 JSON (or nests too deeply).
    """
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        raise ConfigurationError(f"{path.name} is not valid JSON: {exc}"[:300]) from None
