"""A malicious server that sends a node a plain ``train`` message, outside any
securefl session (no ``securefl`` record), with its own ``securefl.encode``
setup.

Before the fix the mod passed it through to the ClientApp: the example's
``train`` trained, charged, and its reply carried the node's local model and
its unmasked encoded update in clear, and a run config asking for
reproducible noise (refused by the mod at the advertise-keys stage) was not
refused on that path, so the server got a local model whose noise it could
regenerate (two nodes gave bit-identical models).  Now the mod answers every
such message with an error reply (rule ``malformed-message``) and ``train``
never runs; ``train`` refuses reproducible noise itself as well."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flwr", reason="flwr is not installed (pip install 'securefl[flower]')")

from flower_harness import _roundtrip, example_app, server_task_identity
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_flower_client_privacy import train_content

from securefl.flower.mod import ENCODE_RECORD, ENCODED_RECORD, is_train_message, securefl_mod
from securefl.flower.setup import RECORD

RUN = {"num-rounds": 2, "num-clients": 3, "seed": 3, "noise-multiplier": 1.1, "hidden": 8}


def _content(run_config: dict[str, Any], fl_round: int = 1) -> dict[str, Any]:
    """What a masked-input message carries to ``train`` (here with the
    server's own setup, outside any session)."""
    return train_content(run_config, fl_round, context=b"outside-session")


def _context(run_config: dict[str, Any], state_dir: Path) -> Context:
    return Context(run_id=7, node_id=1000,
                   node_config={"partition-id": 0, "securefl-state-dir": str(state_dir),
                                "securefl-allow-unauthenticated-semi-honest": True},
                   state=RecordDict(), run_config=dict(run_config))


def _assert_refused(reply: Message) -> None:
    assert reply.has_error()
    assert "malformed-message" in reply.error.reason
    assert "RemoteProtocolError" in reply.error.reason


@pytest.mark.parametrize("run_config", [RUN, {**RUN, "insecure-reproducible-noise": True}],
                         ids=["os-noise", "insecure-noise"])
def test_the_example_node_does_not_train_for_a_plain_train_message(
        tmp_path: Path, run_config: dict[str, Any]) -> None:
    context = _context(run_config, tmp_path)
    with server_task_identity():
        message = Message(RecordDict(_content(run_config)), 1000, MessageType.TRAIN)
        reply = _roundtrip(example_app()(_roundtrip(message), context))
    _assert_refused(reply)
    # nothing trained: no accountant charge, no partition loaded
    assert not list(tmp_path.rglob("client-*.json"))
    assert dict(context.state.config_records) == {}


_names = st.text(st.characters(categories=["Ll", "Nd"], include_characters="-_."),
                 min_size=1, max_size=12).filter(lambda name: name != RECORD)
_values = st.one_of(st.integers(-5, 5), st.booleans(), st.text(max_size=8),
                    st.binary(max_size=16))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(with_model=st.booleans(), with_setup=st.booleans(), with_encoded=st.booleans(),
       configs=st.dictionaries(_names, st.dictionaries(_names, _values, max_size=3),
                               max_size=3),
       metrics=st.dictionaries(_names, st.integers(0, 9), max_size=3))
def test_no_train_message_without_the_securefl_record_reaches_train(
        with_model: bool, with_setup: bool, with_encoded: bool,
        configs: dict[str, dict[str, Any]], metrics: dict[str, int]) -> None:
    """Whatever else a train message carries (a model, a setup, an encoded
    vector, any config or metric records), without the ``securefl`` record
    the node answers with an error and ``train`` is never called."""
    calls: list[Message] = []
    app = ClientApp(mods=[securefl_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:  # pragma: no cover - must not run
        calls.append(msg)
        return Message(RecordDict({"arrays": msg.content.array_records.get(
            "arrays", ArrayRecord([]))}), reply_to=msg)

    content = _content(RUN) if with_model or with_setup else {}
    records: dict[str, Any] = {}
    if with_model:
        records["arrays"] = content["arrays"]
    if with_setup:
        records[ENCODE_RECORD] = content[ENCODE_RECORD]
    if with_encoded:
        records[ENCODED_RECORD] = ArrayRecord([])
    for name, values in configs.items():
        if name not in records:
            records[name] = ConfigRecord(values)
    if metrics and "metrics" not in records:
        records["metrics"] = MetricRecord(metrics)
    context = Context(run_id=7, node_id=1000, node_config={"partition-id": 0},
                      state=RecordDict(), run_config=dict(RUN))
    with server_task_identity():
        reply = _roundtrip(app(_roundtrip(Message(RecordDict(records), 1000,
                                                  MessageType.TRAIN)), context))
    _assert_refused(reply)
    assert calls == []


@pytest.mark.parametrize("message_type", ["train.default", "train.finetune"])
def test_a_train_message_with_an_action_does_not_reach_train(tmp_path: Path,
                                                              message_type: str) -> None:
    """Flower routes ``"train.default"`` to the ``@app.train()`` function and
    ``"train.<action>"`` to ``@app.train("<action>")``.  The mod compared the
    type with ``"train"`` only, so a server that sent ``"train.default"``
    without the ``securefl`` record reached the example's ``train``: it
    trained, charged, and replied with the node's local model and its
    unmasked encoded update in clear (the secure sum bypassed), as the plain
    ``"train"`` message did before the mod refused it."""
    if message_type == "train.default":
        context = _context(RUN, tmp_path)
        with server_task_identity():
            message = Message(RecordDict(_content(RUN)), 1000, message_type)
            reply = _roundtrip(example_app()(_roundtrip(message), context))
        _assert_refused(reply)
        assert not list(tmp_path.rglob("client-*.json"))
        assert dict(context.state.config_records) == {}
        return
    calls: list[Message] = []
    app = ClientApp(mods=[securefl_mod])

    @app.train("finetune")
    def finetune(msg: Message, context: Context) -> Message:  # pragma: no cover - must not run
        calls.append(msg)
        return Message(RecordDict({"arrays": msg.content.array_records["arrays"],
                                   "metrics": MetricRecord({"num-examples": 123})}),
                       reply_to=msg)

    context = Context(run_id=7, node_id=1000, node_config={"partition-id": 0},
                      state=RecordDict(), run_config=dict(RUN))
    with server_task_identity():
        reply = _roundtrip(app(_roundtrip(Message(RecordDict(_content(RUN)), 1000,
                                                  message_type)), context))
    _assert_refused(reply)
    assert calls == []


def test_is_train_message() -> None:
    assert is_train_message("train") and is_train_message("train.default")
    assert is_train_message("train.finetune")
    assert not is_train_message("evaluate") and not is_train_message("evaluate.default")
    assert not is_train_message("query") and not is_train_message("trainer")


def test_other_message_types_still_pass_through() -> None:
    app = ClientApp(mods=[securefl_mod])

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({"answered": 1})}), reply_to=msg)

    context = Context(run_id=7, node_id=1000, node_config={"partition-id": 0},
                      state=RecordDict(), run_config=dict(RUN))
    with server_task_identity():
        reply = app(Message(RecordDict(), 1000, MessageType.EVALUATE), context)
    assert not reply.has_error()
    assert dict(reply.content.metric_records["metrics"]) == {"answered": 1}
