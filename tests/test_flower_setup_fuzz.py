"""Untrusted input on a Flower node raises only securefl errors.

``SessionSetup.from_bytes`` parses bytes the server chose, and the codec
parameters come from them: arbitrary bytes, arbitrary JSON, valid setups
with one field replaced by any JSON value, deep nesting and huge numbers
raise :class:`~securefl.errors.ConfigurationError` or parse (before: 92 of
604 fuzzed setups raised ValueError, TypeError, OverflowError or
RecursionError).  The mod's own reading of a server message (stage, round,
setup, payload of any ConfigRecord type) ends in a reply, never in an
exception other than securefl's.
"""

from __future__ import annotations

import json
from typing import Any
from uuid import uuid4

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("flwr", reason="flwr is not installed (pip install 'securefl[flower]')")

from flower_harness import SEMI_HONEST_OPT_IN, _roundtrip, server_task_identity
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp

from securefl.encoding import FixedPointCodec
from securefl.errors import ConfigurationError, SecureFLError
from securefl.flower import securefl_mod
from securefl.flower.setup import RECORD, Key, SessionSetup, Stage, parse_graph
from securefl.protocol import SecAggConfig, SecurityMode
from securefl.protocol.harary import HararyGraph

CODEC = FixedPointCodec(shapes=((3, 2), (4,)), bits=32, frac_bits=16, clip=4.0, num_clients=5,
                        max_weight=100)
VALID = SessionSetup.create(
    2, SecAggConfig(num_clients=5, vector_length=CODEC.vector_length, bits=32,
                    context=b"fuzz"), CODEC)
VALID_JSON: dict[str, Any] = json.loads(VALID.to_bytes())
SPARSE = SessionSetup.create(
    2, SecAggConfig(num_clients=5, vector_length=CODEC.vector_length, bits=32, threshold=2,
                    graph=HararyGraph(2), context=b"fuzz"), CODEC)
SPARSE_JSON: dict[str, Any] = json.loads(SPARSE.to_bytes())
MERKLE = SessionSetup.create(
    2, SecAggConfig(num_clients=5, vector_length=CODEC.vector_length, bits=32, threshold=2,
                    graph=HararyGraph(2), context=b"fuzz", roster_delivery="merkle"), CODEC)
MERKLE_JSON: dict[str, Any] = json.loads(MERKLE.to_bytes())
QUORUM = SessionSetup.create(
    2, SecAggConfig(num_clients=5, vector_length=CODEC.vector_length, bits=32, threshold=2,
                    graph=HararyGraph(2), context=b"fuzz", mode=SecurityMode.ACTIVE,
                    min_survivors=5), CODEC)
QUORUM_JSON: dict[str, Any] = json.loads(QUORUM.to_bytes())

scalars = (st.none() | st.booleans() | st.integers() | st.integers(-10, 70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=8)
           | st.sampled_from([10**400, -(10**400), 2**64, 2**63 - 1, 1e308, 1e-320, "semi-honest",
                              "active", "ab" * 20, "zz"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                           max_leaves=12)


def _parse(raw: bytes) -> None:
    try:
        setup = SessionSetup.from_bytes(raw)
    except ConfigurationError:
        return
    # what parses is a valid, self-consistent setup, its graph named canonically
    assert setup.codec().vector_length == setup.secagg_config().vector_length
    assert setup.codec().num_clients >= setup.num_clients
    assert setup.secagg_config().graph.describe() == setup.graph
    assert parse_graph(setup.graph) == setup.secagg_config().graph
    # the node builds the roster delivery the setup names, and nothing else
    assert setup.secagg_config().roster_delivery == setup.roster_delivery
    assert setup.roster_delivery in ("full", "merkle")
    assert ("roster_delivery" in json.loads(setup.to_bytes())) == (
        setup.roster_delivery == "merkle")
    # the node builds the min_survivors (so the quorum) the setup names
    config = setup.secagg_config()
    assert config.min_survivors == (setup.min_survivors or setup.threshold)
    assert setup.min_survivors is None or setup.threshold < setup.min_survivors
    assert ("min_survivors" in json.loads(setup.to_bytes())) == (setup.min_survivors is not None)
    assert SessionSetup.from_bytes(setup.to_bytes()) == setup


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes(raw: bytes) -> None:
    _parse(raw)


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_arbitrary_json(value: Any) -> None:
    _parse(json.dumps(value).encode())


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(sorted(VALID_JSON)), json_values)
def test_one_field_replaced_by_any_json(key: str, value: Any) -> None:
    _parse(json.dumps({**VALID_JSON, key: value}).encode())


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(SPARSE_JSON)), json_values)
def test_one_field_of_a_sparse_setup_replaced_by_any_json(key: str, value: Any) -> None:
    _parse(json.dumps({**SPARSE_JSON, key: value}).encode())


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(MERKLE_JSON)), json_values)
def test_one_field_of_a_merkle_setup_replaced_by_any_json(key: str, value: Any) -> None:
    _parse(json.dumps({**MERKLE_JSON, key: value}).encode())


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(QUORUM_JSON)), json_values)
def test_one_field_of_a_min_survivors_setup_replaced_by_any_json(key: str, value: Any) -> None:
    _parse(json.dumps({**QUORUM_JSON, key: value}).encode())


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([VALID_JSON, SPARSE_JSON, MERKLE_JSON, QUORUM_JSON]),
       json_values | st.integers(-3, 8) | st.sampled_from([2.0, 5.0, "5", True, 2**64]))
def test_any_min_survivors_field_parses_as_an_int_above_the_threshold_or_is_refused(
        base: dict[str, Any], value: Any) -> None:
    """Only an integer (not a bool, not a float) in ``threshold+1..n``
    parses; the threshold itself (which a setup writes by leaving the field
    out) and anything else is a ConfigurationError."""
    raw = json.dumps({**base, "min_survivors": value}).encode()
    if type(value) is int and base["threshold"] < value <= base["num_clients"]:
        setup = SessionSetup.from_bytes(raw)
        assert setup.min_survivors == value
        assert setup.secagg_config().min_survivors == value
    else:
        with pytest.raises(ConfigurationError):
            SessionSetup.from_bytes(raw)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([VALID_JSON, SPARSE_JSON, MERKLE_JSON]),
       json_values | st.sampled_from(["merkle", "full", "Merkle", "merkle\n", "sparse"]))
def test_any_roster_delivery_field_parses_as_merkle_or_is_refused(
        base: dict[str, Any], delivery: Any) -> None:
    """Only ``"merkle"`` over a sparse graph parses; anything else (an
    explicit ``"full"``, which a setup writes by leaving the field out, too)
    is a ConfigurationError."""
    raw = json.dumps({**base, "roster_delivery": delivery}).encode()
    if delivery == "merkle" and base is not VALID_JSON:
        assert SessionSetup.from_bytes(raw).roster_delivery == "merkle"
    else:
        with pytest.raises(ConfigurationError):
            SessionSetup.from_bytes(raw)


graph_texts = (st.text(max_size=16) | json_values
               | st.integers(-(10**12), 10**12).map(lambda k: f"harary:k={k}")
               | st.integers(0, 10**4).map(lambda k: f"harary:k=0{k}")
               | st.sampled_from(["complete", "Complete", "complete ", "harary", "harary:k=",
                                  "harary:k=2\n", "harary:k=+2", "harary:k=2.0",
                                  "harary:k=\u0662", "harary: k=2", "harary:k=4"]))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([VALID_JSON, SPARSE_JSON]), graph_texts,
       st.integers(1, 5), st.sampled_from(["semi-honest", "active"]))
def test_any_graph_field_parses_canonically_or_is_refused(
        base: dict[str, Any], graph: Any, threshold: int, mode: str) -> None:
    """The graph field, with any threshold and mode: a ConfigurationError,
    or a graph the node builds itself whose description is the field."""
    _parse(json.dumps({**base, "graph": graph, "threshold": threshold, "mode": mode}).encode())


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["shapes", "client_ids"]), st.integers(0, 3),
       st.lists(json_values, max_size=4))
def test_nested_lists_with_bad_members(key: str, index: int, members: list[Any]) -> None:
    data = json.loads(VALID.to_bytes())
    target = data[key] if key == "client_ids" else data[key][index % len(data[key])]
    target.extend(members)
    _parse(json.dumps(data).encode())


@settings(max_examples=100, deadline=None)
@given(st.sets(st.sampled_from(sorted(VALID_JSON)), min_size=1),
       st.dictionaries(st.text(max_size=8), json_values, max_size=2))
def test_missing_or_extra_fields(dropped: set[str], extra: dict[str, Any]) -> None:
    data = {k: v for k, v in VALID_JSON.items() if k not in dropped}
    data.update({k: v for k, v in extra.items() if k not in VALID_JSON})
    with pytest.raises(ConfigurationError):
        SessionSetup.from_bytes(json.dumps(data).encode())


@pytest.mark.parametrize("raw", [
    b"[" * 100_000, b"{\"a\":" * 50_000, b"1" * 5000, b"\xff\xfe", b"",
    b" " * (1 << 20 + 1),
    json.dumps({**VALID_JSON, "clip": 1e308, "frac_bits": 1023}).encode(),
    json.dumps({**VALID_JSON, "frac_bits": 10**6}).encode(),
    json.dumps({**VALID_JSON, "shapes": [[2**62, 2**62]]}).encode(),
    json.dumps({**VALID_JSON, "client_ids": [True, 2, 3, 4, 5]}).encode(),
    json.dumps({**VALID_JSON, "threshold": True}).encode(),
    json.dumps({**VALID_JSON, "fl_round": -1}).encode(),
    json.dumps({**VALID_JSON, "codec_clients": 2}).encode(),
    json.dumps({**VALID_JSON, "mode": "paranoid"}).encode(),
    json.dumps({**VALID_JSON, "rounding_seed": 9}).encode(),
    json.dumps({k: v for k, v in SPARSE_JSON.items() if k != "graph"}).encode(),
    json.dumps({**SPARSE_JSON, "graph": "harary:k=3"}).encode(),  # odd degree
    json.dumps({**SPARSE_JSON, "graph": "harary:k=6"}).encode(),  # k >= n
    json.dumps({**SPARSE_JSON, "threshold": 4}).encode(),  # t > k + 1
    json.dumps({**SPARSE_JSON, "graph": "harary:k=02"}).encode(),  # not canonical
    json.dumps({**SPARSE_JSON, "graph": ["harary", 2]}).encode(),
    json.dumps({**SPARSE_JSON, "graph": None}).encode(),
    json.dumps({**QUORUM_JSON, "min_survivors": 2}).encode(),  # = t: not canonical
    json.dumps({**QUORUM_JSON, "min_survivors": 1}).encode(),  # < t
    json.dumps({**QUORUM_JSON, "min_survivors": 6}).encode(),  # > n
    json.dumps({**QUORUM_JSON, "min_survivors": True}).encode(),
    json.dumps({**QUORUM_JSON, "min_survivors": 5.0}).encode(),
    json.dumps({**QUORUM_JSON, "min_survivors": None}).encode(),
    VALID.to_bytes().replace(b'"clip":4.0', b'"clip":Infinity'),
    VALID.to_bytes().replace(b'"clip":4.0', b'"clip":NaN'),
])
def test_known_hostile_setups_are_configuration_errors(raw: bytes) -> None:
    with pytest.raises(ConfigurationError):
        SessionSetup.from_bytes(raw)


def test_a_valid_setup_round_trips() -> None:
    assert SessionSetup.from_bytes(VALID.to_bytes()) == VALID
    assert SessionSetup.from_bytes(bytearray(VALID.to_bytes())) == VALID
    sparse = SessionSetup.from_bytes(SPARSE.to_bytes())
    assert sparse == SPARSE and sparse.secagg_config().graph == HararyGraph(2)
    assert VALID.graph == "complete"
    assert SessionSetup.from_bytes(MERKLE.to_bytes()) == MERKLE
    assert VALID.roster_delivery == SPARSE.roster_delivery == "full"
    assert SecurityMode(sparse.mode) is SecurityMode.SEMI_HONEST
    # min_survivors: written only when above the threshold, and the node's
    # configuration (so its digest and quorum) is the server's
    assert "min_survivors" not in VALID_JSON and VALID.min_survivors is None
    quorum = SessionSetup.from_bytes(QUORUM.to_bytes())
    assert quorum == QUORUM and QUORUM_JSON["min_survivors"] == 5
    server = SecAggConfig(num_clients=5, vector_length=CODEC.vector_length, bits=32, threshold=2,
                          graph=HararyGraph(2), context=b"fuzz", mode=SecurityMode.ACTIVE,
                          min_survivors=5)
    assert quorum.secagg_config() == server
    assert quorum.secagg_config().digest() == server.digest()
    assert quorum.secagg_config().signature_quorum == server.signature_quorum == 5


params = {
    "shapes": json_values | st.lists(st.lists(st.integers(-2, 2**40), max_size=3), max_size=3),
    "bits": st.integers(-5, 70) | json_values, "frac_bits": st.integers(-2000, 2000) | json_values,
    "clip": st.floats(allow_nan=True) | json_values, "num_clients": st.integers(-3, 10**6)
    | json_values, "max_weight": st.integers(-3, 10**6) | json_values,
}


@settings(max_examples=400, deadline=None)
@given(st.fixed_dictionaries({}, optional=params))
def test_codec_parameters_raise_only_securefl_errors(kwargs: dict[str, Any]) -> None:
    kwargs.setdefault("shapes", [[3]])
    try:
        codec = FixedPointCodec(**kwargs)
    except SecureFLError:
        return
    assert codec.vector_length == codec.num_values + 1


# -- the mod's reading of server messages ---------------------------------------------

record_values = (st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=True) | st.booleans()
                 | st.text(max_size=10) | st.binary(max_size=40)
                 | st.lists(st.integers(0, 10), max_size=3)
                 | st.sampled_from([s.value for s in Stage]) | st.just(VALID.to_bytes()))


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from([Key.STAGE, Key.FL_ROUND, Key.SETUP, Key.PAYLOAD,
                                        "other"]), record_values, max_size=5))
def test_any_server_record_gets_a_reply_not_an_exception(fields: dict[str, Any]) -> None:
    app = ClientApp(mods=[securefl_mod])

    @app.train()
    def train(msg: Message, context: Any) -> Message:  # pragma: no cover - never reached
        raise AssertionError("train must not run for a malformed message")

    with server_task_identity():
        fields.setdefault(Key.STAGE, Stage.ADVERTISE_KEYS.value)
        msg = Message(RecordDict({RECORD: ConfigRecord(fields)}), dst_node_id=1000,
                      message_type=MessageType.TRAIN, group_id="1")
        msg.metadata.__dict__["_message_id"] = uuid4().hex
        delivered = _roundtrip(msg)
    context = Context(run_id=7, node_id=1000, node_config={"partition-id": 0,
                                                           **SEMI_HONEST_OPT_IN},
                      state=RecordDict(), run_config={})
    reply = app(delivered, context)  # an exception other than securefl's would escape here
    if reply.has_error():
        assert reply.error.reason.startswith("securefl: "), reply.error.reason
