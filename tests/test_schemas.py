"""The published JSON Schemas (``securefl/schemas``) accept what securefl
writes and refuse what it must never write.

* Real artefacts: tiny federations by the in-process simulator (uniform
  weighting with a dropout; weighting by examples with every round aborted
  and a budget that makes clients refuse) and, when flwr is installed, by
  the Flower ServerApp in process: every ledger line and every
  ``metrics.json`` (after a round, ``final: null``, and at the end) validates.
* Tampering: each edit of a real record (a wrong type, an unknown or missing
  field, a status outside the enum, a private per-client field, an
  inconsistent status...) is refused.
* Data-driven against the code, so that a change of the formats fails here
  with the fields to add: the schema's row fields are
  :class:`~securefl.privacy.ledger.LedgerEntry`'s, its config fields
  :class:`~securefl.federation.simulation.SimulationConfig`'s, its enums the
  code's enums.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

jsonschema = pytest.importorskip("jsonschema", reason="the dev extra brings jsonschema")
torch = pytest.importorskip("torch", reason="the train extra runs the federations")

from securefl.errors import ConfigurationError  # noqa: E402
from securefl.federation.optimizers import ServerOptimizerKind  # noqa: E402
from securefl.federation.options import DatasetName  # noqa: E402
from securefl.federation.reporting import PRIVATE_FIELDS  # noqa: E402
from securefl.federation.simulation import (  # noqa: E402
    GraphKind,
    SimulationConfig,
    run_simulation,
)
from securefl.privacy.distributed import PrivacyLevel  # noqa: E402
from securefl.privacy.ledger import (  # noqa: E402
    LEDGER_FORMAT,
    USER_LEVEL_ADJACENCY,
    USER_LEVEL_MECHANISMS,
    LedgerEntry,
    Participation,
    UserLevelEntry,
)
from securefl.privacy.options import (  # noqa: E402
    AccountantKind,
    Adjacency,
    NoiseSource,
    Weighting,
)
from securefl.protocol import Round, SecurityMode  # noqa: E402
from securefl.schemas import SCHEMAS, load_schema, schema_text  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
Validator = jsonschema.Draft202012Validator
LEDGER = Validator(load_schema("ledger-record"))
METRICS = Validator(load_schema("metrics"))

CONFIG_EXTRAS = {"frac_bits_used", "max_weight", "threshold_used"}
"""What both runtimes add to ``SimulationConfig.to_json()`` in metrics.json."""
SIMULATOR_CONFIG_EXTRAS = {"graph_degree_used"}
"""What the in-process simulator adds besides (optional in the schema)."""
FLOWER_CONFIG_EXTRAS = {"runtime"}
"""What the Flower ServerApp adds besides (it also overrides security_mode)."""
OPTIONAL_CONFIG_FIELDS = {"roster_delivery"}
"""SimulationConfig fields ``to_json`` leaves out at their default (``"full"``:
runs recorded before the field existed compare equal on resume)."""


def _errors(validator: Any, doc: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(doc)]


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _kind(record: dict[str, Any]) -> str:
    if record["type"] != "row":
        return record["type"]  # header, user-level, commit
    return "in-flight row" if record["status"] == "in-flight" else "settled row"


@dataclasses.dataclass
class Run:
    out: Path
    metrics_after_round: list[dict[str, Any]]


def _simulate(out: Path, **overrides: Any) -> Run:
    torch.set_num_threads(1)
    config = SimulationConfig(**{"num_clients": 3, "rounds": 2, "noise_multiplier": 1.0,
                                 "hidden": 8, "seed": 0, **overrides})
    seen: list[dict[str, Any]] = []
    run_simulation(config, out, on_round=lambda _r: seen.append(
        json.loads((out / "metrics.json").read_text())))
    return Run(out, seen)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Run]:
    base = tmp_path_factory.mktemp("schemas")
    return [
        _simulate(base / "uniform", dropout=0.3, epsilon_budget=50.0),
        # replace-one rows, every round aborted, then the budget guard refuses
        _simulate(base / "examples", weighting="examples", dropout=1.0,
                  epsilon_budget=25.0, accountant="prv"),
        # record-level and user-level DP: user-level rows in the settled blocks
        _simulate(base / "both", num_clients=4, rounds=1, dropout=0.0, privacy="both",
                  bits=24, user_epsilon=50.0, noise_multiplier=None, target_epsilon=50.0),
    ]


@pytest.fixture(scope="module")
def flower_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    pytest.importorskip("flwr", reason="flwr is not installed (pip install 'securefl[flower]')")
    from flower_harness import InProcessGrid, example_app, node_configs, server_task_identity
    from flwr.app import Context, RecordDict

    from securefl.flower.federation import run_federation

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("schemas-flower") / "f"
    run_config = {"num-rounds": 2, "num-clients": 3, "seed": 1, "noise-multiplier": 1.1,
                  "hidden": 8, "batch-size": 32, "round-timeout": 30.0,
                  "output-dir": str(out)}
    with server_task_identity():
        grid = InProcessGrid(example_app(), node_configs(3), run_config)
        run_federation(grid, Context(run_id=7, node_id=0, node_config={}, state=RecordDict(),
                                     run_config=run_config))
    return Run(out, [])


# -- the schemas themselves ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_schema_is_valid_draft_2020_12_and_ships_in_the_package(name: str) -> None:
    Validator.check_schema(load_schema(name))
    assert json.loads(schema_text(name)) == load_schema(name)
    package_data = next(line for line in (ROOT / "pyproject.toml").read_text().splitlines()
                        if line.startswith("securefl = ["))  # [tool.setuptools.package-data]
    assert '"schemas/*.schema.json"' in package_data
    assert (ROOT / "securefl" / "schemas" / SCHEMAS[name]).is_file()


def test_unknown_schema_name_is_a_typed_refusal() -> None:
    with pytest.raises(ConfigurationError, match="ledger-record"):
        load_schema("ledger")


# -- real artefacts validate --------------------------------------------------------------


def test_simulator_ledgers_validate_and_cover_every_record_kind(runs: list[Run]) -> None:
    kinds: set[str] = set()
    statuses: set[str] = set()
    adjacencies: set[str] = set()
    for run in runs:
        for number, record in enumerate(_records(run.out / "ledger.jsonl"), start=1):
            assert not _errors(LEDGER, record), (run.out, number, _errors(LEDGER, record))
            kinds.add(_kind(record))
            statuses.add(record.get("status", ""))
            adjacencies.add(record.get("adjacency", ""))
    assert kinds == {"header", "in-flight row", "settled row", "user-level", "commit"}
    assert {"in-flight", "included", "round-aborted", "refused-budget"} <= statuses
    assert {"add-remove-one", "replace-one"} <= adjacencies


def test_simulator_metrics_validate_mid_run_and_at_the_end(runs: list[Run]) -> None:
    for run in runs:
        assert run.metrics_after_round and all(m["final"] is None
                                               for m in run.metrics_after_round)
        for doc in [*run.metrics_after_round,
                    json.loads((run.out / "metrics.json").read_text())]:
            assert not _errors(METRICS, doc), (run.out, _errors(METRICS, doc))
    final = json.loads((runs[1].out / "metrics.json").read_text())
    assert all(r["aborted"] for r in final["rounds"])  # the aborted shape is covered


def test_flower_artefacts_validate(flower_run: Run) -> None:
    for record in _records(flower_run.out / "ledger.jsonl"):
        assert not _errors(LEDGER, record), _errors(LEDGER, record)
    doc = json.loads((flower_run.out / "metrics.json").read_text())
    assert doc["config"]["runtime"] == "flower" and "sums_sha256" in doc["final"]
    assert not _errors(METRICS, doc), _errors(METRICS, doc)


# -- tampered or ill-typed records are refused --------------------------------------------


def _first(run: Run, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    return next(r for r in _records(run.out / "ledger.jsonl") if predicate(r))


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    return lambda record: record.__setitem__(key, value)


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda record: record.pop(key)


ROW_TAMPERING: dict[str, Callable[[dict[str, Any]], None]] = {
    "unknown status": _set("status", "forgiven"),
    "string boolean": _set("entered_sum", "false"),
    "fractional round": _set("round", 1.5),
    "client id 0": _set("client_id", 0),
    "boolean client id": _set("client_id", True),
    "NaN as a string": _set("epsilon_rdp", "NaN"),
    "negative epsilon": _set("epsilon_prv", -1.0),
    "-inf epsilon": _set("epsilon_dpa_pld", "-inf"),
    "sample rate above 1": _set("sample_rate", 1.5),
    "negative noise": _set("noise_multiplier", -0.1),
    "delta 0": _set("delta", 0),
    "short history row": _set("history", [[1.0, 0.5]]),
    "fractional steps in history": _set("history", [[1.0, 0.5, 2.5]]),
    "unknown protocol round": _set("dropped_at", "R3"),
    "unknown noise source": _set("noise_source", "urandom"),
    "unknown adjacency": _set("adjacency", "replace-two"),
    "unknown accountant": _set("accountant", "gdp"),
    "extra field": _set("note", "edited"),
    "missing history": _drop("history"),
    "missing noise source": _drop("noise_source"),
    "prev not a digest": _set("prev", "00"),
    "unknown record type": _set("type", "rows"),
}


@pytest.mark.parametrize("edit", sorted(ROW_TAMPERING))
def test_tampered_rows_are_refused(runs: list[Run], edit: str) -> None:
    for status in ("in-flight", "included"):
        record = _first(runs[0], lambda r, s=status: r.get("status") == s)
        assert not _errors(LEDGER, record)
        ROW_TAMPERING[edit](record)
        assert _errors(LEDGER, record), (edit, status)


@pytest.mark.parametrize(("status", "edit"), [
    ("included", _set("entered_sum", False)),        # included, yet not in the sum
    ("included", _set("survivors", 0)),
    ("round-aborted", _set("entered_sum", True)),    # in a sum that does not exist
    ("round-aborted", _set("survivors", 2)),
    ("refused-budget", _set("local_steps", 4)),      # refused, yet trained
    ("in-flight", _set("entered_sum", True)),        # in a sum before training
    ("in-flight", _set("dropped_at", "UNMASKING")),
])
def test_rows_whose_fields_contradict_their_status_are_refused(
        runs: list[Run], status: str, edit: Callable[[dict[str, Any]], None]) -> None:
    record = _first(runs[0] if status in ("included", "in-flight") else runs[1],
                    lambda r: r.get("status") == status)
    assert not _errors(LEDGER, record)
    edit(record)
    assert _errors(LEDGER, record)


@pytest.mark.parametrize("edit", [
    _set("epsilon", "NaN"), _set("adjacency", "add-remove-one"), _set("mechanism", "gauss"),
    _set("sample_rate", 0.0), _set("history", [[1.0, 2.0, 3.0, 1.0]]), _set("bits", 24.5),
    _set("status", "included"), _drop("epsilon_unsampled"),
])
def test_tampered_user_level_rows_are_refused(runs: list[Run],
                                              edit: Callable[[dict[str, Any]], None]) -> None:
    record = _first(runs[2], lambda r: r["type"] == "user-level")
    assert not _errors(LEDGER, record)
    edit(record)
    assert _errors(LEDGER, record)


@pytest.mark.parametrize("edit", [
    _set("format", "securefl-ledger/1"), _set("prev", "0" * 64), _set("run_id", "x" * 32),
    _set("extra", 1), _drop("run_id"),
])
def test_tampered_headers_are_refused(runs: list[Run],
                                      edit: Callable[[dict[str, Any]], None]) -> None:
    record = _first(runs[0], lambda r: r["type"] == "header")
    edit(record)
    assert _errors(LEDGER, record)


@pytest.mark.parametrize("edit", [
    _set("stage", "done"), _set("rows", -1), _set("rows", "3"), _set("round", 0),
    _set("user_rows", 0),
    _set("status", "included"), _drop("prev"),
])
def test_tampered_commits_are_refused(runs: list[Run],
                                      edit: Callable[[dict[str, Any]], None]) -> None:
    record = _first(runs[0], lambda r: r["type"] == "commit")
    edit(record)
    assert _errors(LEDGER, record)


def _metrics(run: Run) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((run.out / "metrics.json").read_text())
    return doc


METRICS_TAMPERING: dict[str, Callable[[dict[str, Any]], None]] = {
    "extra top-level key": lambda d: d.__setitem__("private", {}),
    "accuracy above 1": lambda d: d["rounds"][0].__setitem__("accuracy", 1.5),
    "NaN token as a string": lambda d: d["rounds"][0].__setitem__("loss", "NaN"),
    "dropped at an unknown round": lambda d: d["rounds"][0]["dropped"].__setitem__("2", "R3"),
    "dropped keyed by a name": lambda d: d["rounds"][0]["dropped"].__setitem__(
        "client", "UNMASKING"),
    "duplicate survivor": lambda d: d["rounds"][0].__setitem__("survivors", [1, 1]),
    "aborted with survivors": lambda d: d["rounds"][0].__setitem__("aborted", True),
    "unknown round key": lambda d: d["rounds"][0].__setitem__("clipped_values", 3),
    "missing final clients": lambda d: d["final"].pop("clients"),
    "unknown noise source": lambda d: d["final"].__setitem__("noise_source", "seeded"),
    "string secure flag": lambda d: d["config"].__setitem__("secure", "true"),
    "unknown config key": lambda d: d["config"].__setitem__("mode", "fast"),
    "missing config key": lambda d: d["config"].pop("delta"),
    "ledger head not a digest": lambda d: d["ledger"].__setitem__("head", "abc"),
    "runtime without security mode": lambda d: (d["config"].__setitem__("runtime", "flower"),
                                                d["config"].pop("security_mode")),
    "unknown security mode": lambda d: d["config"].__setitem__("security_mode", "malicious"),
    "unknown graph": lambda d: d["config"].__setitem__("graph", "ring"),
    "graph degree below 2": lambda d: d["config"].__setitem__("graph_degree_used", 0),
}


@pytest.mark.parametrize("edit", sorted(METRICS_TAMPERING))
def test_tampered_metrics_are_refused(runs: list[Run], edit: str) -> None:
    doc = _metrics(runs[0])
    assert not _errors(METRICS, doc)
    METRICS_TAMPERING[edit](doc)
    assert _errors(METRICS, doc), edit


@pytest.mark.parametrize("field", sorted(PRIVATE_FIELDS))
def test_private_per_client_values_are_refused_everywhere(runs: list[Run], field: str) -> None:
    """A client's record count, loss or clip count never appears in
    metrics.json: the schema refuses it in a client summary and in a round."""
    base = _metrics(runs[0])
    for place in (lambda d: d["final"]["clients"][0], lambda d: d["rounds"][0],
                  lambda d: d["final"]):
        doc = copy.deepcopy(base)
        place(doc)[field] = 1
        assert _errors(METRICS, doc), field


# -- the schemas follow the code ------------------------------------------------------


def _enum(schema: dict[str, Any]) -> set[Any]:
    return set(schema["enum"])


def test_row_fields_are_the_ledger_entry_fields() -> None:
    row = load_schema("ledger-record")["$defs"]["row"]
    expected = {f.name for f in dataclasses.fields(LedgerEntry)} | {"type", "prev"}
    assert set(row["properties"]) == expected, (
        f"update securefl/schemas/ledger-record.schema.json: add"
        f" {sorted(expected - set(row['properties']))}, remove"
        f" {sorted(set(row['properties']) - expected)}")
    assert set(row["required"]) == expected


def test_user_level_fields_are_the_user_level_entry_fields() -> None:
    schema = load_schema("ledger-record")["$defs"]["userLevelRow"]
    expected = {f.name for f in dataclasses.fields(UserLevelEntry)} | {"type", "prev"}
    assert set(schema["properties"]) == expected, (
        f"update securefl/schemas/ledger-record.schema.json: add"
        f" {sorted(expected - set(schema['properties']))}, remove"
        f" {sorted(set(schema['properties']) - expected)}")
    assert set(schema["required"]) == expected
    assert _enum(schema["properties"]["mechanism"]) == set(USER_LEVEL_MECHANISMS)
    assert schema["properties"]["adjacency"]["const"] == USER_LEVEL_ADJACENCY


def test_ledger_enums_are_the_codes() -> None:
    schema = load_schema("ledger-record")["$defs"]
    row = schema["row"]["properties"]
    assert _enum(row["status"]) == {p.value for p in Participation}
    settled = schema["settledRow"]["properties"]["status"]
    assert _enum(settled) == {p.value for p in Participation} - {"in-flight"}
    assert _enum(row["noise_source"]) == {s.value for s in NoiseSource}
    assert _enum(row["adjacency"]) == {a.value for a in Adjacency}
    assert _enum(row["weighting"]) == {w.value for w in Weighting}
    assert _enum(row["accountant"]) == {a.value for a in AccountantKind}
    assert _enum(row["dropped_at"]["oneOf"][0]) == {r.name for r in Round}
    assert schema["header"]["properties"]["format"]["const"] == LEDGER_FORMAT


def test_config_fields_are_the_simulation_config_fields() -> None:
    config = load_schema("metrics")["$defs"]["config"]
    expected = {f.name for f in dataclasses.fields(SimulationConfig)} | CONFIG_EXTRAS
    declared = set(config["properties"]) - FLOWER_CONFIG_EXTRAS - SIMULATOR_CONFIG_EXTRAS
    assert declared == expected, (
        f"update securefl/schemas/metrics.schema.json: add {sorted(expected - declared)},"
        f" remove {sorted(declared - expected)}")
    assert set(config["required"]) == expected - OPTIONAL_CONFIG_FIELDS


def test_metrics_enums_are_the_codes() -> None:
    schema = load_schema("metrics")["$defs"]
    config = schema["config"]["properties"]
    assert _enum(config["server_optimizer"]) == {k.value for k in ServerOptimizerKind}
    dataset = Validator(config["dataset"])  # the built-in names, or the caller's own
    assert all(dataset.is_valid(k.value) for k in DatasetName) and not dataset.is_valid("")
    assert _enum(schema["accountant"]) == {k.value for k in AccountantKind}
    assert _enum(schema["adjacency"]) == {a.value for a in Adjacency}
    assert _enum(schema["weighting"]) == {w.value for w in Weighting}
    assert _enum(schema["noiseSource"]) == {s.value for s in NoiseSource}
    assert _enum(schema["protocolRound"]) == {r.name for r in Round}
    assert _enum(config["privacy"]) == {p.value for p in PrivacyLevel}
    assert _enum(config["security_mode"]) == {m.value for m in SecurityMode}
    assert _enum(config["graph"]) == {g.value for g in GraphKind}
