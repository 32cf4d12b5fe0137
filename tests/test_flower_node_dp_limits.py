"""A Flower node bounds the DP parameters the server's run config chooses and
keeps a budget of its own (node config ``securefl-max-epsilon`` ...), and its
error replies tell the server nothing data-dependent.

Before: the node's DPConfig came entirely from the run config (a run with
``noise-multiplier`` left the node without any budget; ``target-epsilon``
made the server's value the budget), and an error reply forwarded the
exception's message (a data check's count of NaN records, the encoder's NaN
count and index) to the server in clear."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("flwr", reason="flwr is not installed (pip install 'securefl[flower]')")
torch = pytest.importorskip("torch")

from flower_harness import (  # noqa: E402
    InProcessGrid,
    example_app,
    node_configs,
    server_task_identity,
)
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict  # noqa: E402
from test_flower_client_privacy import train_message  # noqa: E402
from test_flower_node_policy import _announce, _assert_refused, _setup  # noqa: E402

from securefl.errors import (  # noqa: E402
    AbortError,
    ConfigurationError,
    DataProblem,
    DataValidationError,
    EncodingError,
    LocalProtocolError,
    PrivacyBudgetExceededError,
    RemoteProtocolError,
    Rule,
    WireFormatError,
)
from securefl.flower.client_train import (  # noqa: E402
    dp_config,
    node_dp_config,
    node_store,
    train_private_client,
)
from securefl.flower.dpstate import ChargeStatus, NodeStateError, NodeStateRule  # noqa: E402
from securefl.flower.federation import FederationIncompleteError, run_federation  # noqa: E402
from securefl.flower.mod import _error_reply, public_reason  # noqa: E402
from securefl.flower.policy import (  # noqa: E402
    RUN_DEFAULT_SAMPLE_RATE,
    DPLimitRefusedError,
    DPLimitRule,
    NodeDPLimits,
)
from securefl.flower.setup import RECORD, Key, Stage  # noqa: E402
from securefl.privacy.client import DEFAULT_SAMPLE_RATE  # noqa: E402

RUN: dict[str, Any] = {"num-rounds": 1, "num-clients": 4, "seed": 3, "noise-multiplier": 1.1,
                       "hidden": 8, "batch-size": 32, "round-timeout": 30.0}
NODE = {"partition-id": 0, "securefl-allow-unauthenticated-semi-honest": True}


@pytest.fixture(autouse=True)
def _server_identity():
    with server_task_identity():
        yield


# -- the limits themselves ------------------------------------------------------------


def test_defaults_are_finite_and_match_the_run_defaults(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    for key in ("MAX_EPSILON", "MAX_DELTA", "MIN_NOISE_MULTIPLIER", "MAX_SAMPLE_RATE"):
        monkeypatch.delenv(f"SECUREFL_{key}", raising=False)
    limits = NodeDPLimits.from_node_config({})
    assert limits == NodeDPLimits(max_epsilon=10.0, max_delta=1e-5,
                                  min_noise_multiplier=0.5, max_sample_rate=1.0)
    assert RUN_DEFAULT_SAMPLE_RATE == DEFAULT_SAMPLE_RATE
    # the project's default target (7.5) and the example app's run pass
    limits.check_run_config({})
    limits.check_run_config({"noise-multiplier": 1.1, "target-epsilon": 0.0,
                             "sample-rate": 0.5})


def test_limits_come_from_the_node_config_or_its_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECUREFL_MAX_EPSILON", "3")
    monkeypatch.setenv("SECUREFL_MIN_NOISE_MULTIPLIER", "0.8")
    limits = NodeDPLimits.from_node_config({"securefl-max-sample-rate": 0.25,
                                            "securefl-max-epsilon": 4})
    assert limits.max_epsilon == 4.0  # the node config wins over the environment
    assert limits.min_noise_multiplier == 0.8 and limits.max_sample_rate == 0.25
    for bad in ({"securefl-max-epsilon": "inf"}, {"securefl-max-epsilon": 0},
                {"securefl-max-epsilon": True}, {"securefl-max-delta": 1.0},
                {"securefl-min-noise-multiplier": -1}, {"securefl-max-sample-rate": 1.5},
                {"securefl-max-epsilon": "lots"}):
        with pytest.raises(ConfigurationError):
            NodeDPLimits.from_node_config(bad)


def test_the_node_budget_is_its_own_whatever_the_run_says() -> None:
    limits = NodeDPLimits(max_epsilon=6.0, max_delta=1e-6)
    # noise multiplier and no target: before, no budget at all
    assert dp_config(RUN).epsilon_budget is None
    config = node_dp_config(RUN, limits)
    assert config.epsilon_budget == 6.0 and config.delta == 1e-6
    assert config.noise_multiplier == 1.1
    # a smaller target stays the budget; the noise is the one the server computes
    run = {**RUN, "noise-multiplier": 0.0, "target-epsilon": 4.0, "num-rounds": 2}
    config = node_dp_config(run, limits)
    assert config.epsilon_budget == 4.0
    assert config.noise_multiplier == pytest.approx(
        node_dp_config(run, NodeDPLimits()).noise_multiplier)


# -- the node refuses a run beyond its limits, before it sends or trains anything ------


@pytest.mark.parametrize(("run", "node", "rule"), [
    ({"noise-multiplier": 0.05}, {}, DPLimitRule.NOISE_MULTIPLIER),
    ({"noise-multiplier": 0.9}, {"securefl-min-noise-multiplier": 1.0},
     DPLimitRule.NOISE_MULTIPLIER),
    ({"noise-multiplier": 0.0, "target-epsilon": 200.0}, {}, DPLimitRule.TARGET_EPSILON),
    ({"noise-multiplier": 0.0, "target-epsilon": 8.0}, {"securefl-max-epsilon": 5},
     DPLimitRule.TARGET_EPSILON),
    ({"sample-rate": 0.9}, {"securefl-max-sample-rate": 0.6}, DPLimitRule.SAMPLE_RATE),
    ({}, {"securefl-max-sample-rate": 0.1}, DPLimitRule.SAMPLE_RATE),  # the default 0.5
    # the server chose to weight by record count: the count would enter the
    # sum and the epsilon become replace-one, without the node's consent
    ({"weighting": "examples"}, {}, DPLimitRule.WEIGHTING),
])
def test_the_node_refuses_the_setup_of_a_run_beyond_its_limits(
        run: dict[str, Any], node: dict[str, Any], rule: DPLimitRule) -> None:
    reply, grid = _announce({**NODE, **node}, _setup(4).to_bytes(),
                            run_config={**RUN, **run})
    _assert_refused(reply, grid, rule)  # type: ignore[arg-type]
    reason = str(reply.content.config_records[RECORD][Key.REASON])
    assert "securefl-" in reason  # names the node's setting


def test_the_environment_sets_a_limit_for_nodes_without_node_config(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECUREFL_MAX_EPSILON", "2.5")
    reply, grid = _announce(dict(NODE), _setup(4).to_bytes(),
                            run_config={**RUN, "noise-multiplier": 0, "target-epsilon": 3})
    _assert_refused(reply, grid, DPLimitRule.TARGET_EPSILON)  # type: ignore[arg-type]


def _context(tmp_path: Path, run: dict[str, Any], **node: Any) -> Context:
    return Context(run_id=7, node_id=1000,
                   node_config={"partition-id": 0, "securefl-state-dir": str(tmp_path),
                                **node},
                   state=RecordDict(), run_config=run)


def test_train_refuses_a_calibrated_noise_below_the_minimum_and_charges_nothing(
        tmp_path: Path) -> None:
    run = {**RUN, "noise-multiplier": 0.0, "target-epsilon": 9.0, "num-clients": 3}
    context = _context(tmp_path, run, **{"securefl-min-noise-multiplier": 3.0})
    with pytest.raises(DPLimitRefusedError) as caught:
        train_private_client(train_message(run, 1), context)
    assert caught.value.rule is DPLimitRule.NOISE_MULTIPLIER
    assert not node_store(context).path.exists()  # nothing charged, nothing trained


def test_a_noise_multiplier_without_budget_meets_the_node_budget(tmp_path: Path) -> None:
    """The reproduction: a run config with ``noise-multiplier`` set and no
    target used to leave the node without a guard; now the node's own
    budget refuses the round that would exceed it (epsilon 4.7 after one
    round of 2 steps at sigma 1.1, 6.5 after two)."""
    run = {**RUN, "num-rounds": 5, "num-clients": 3}
    context = _context(tmp_path, run, **{"securefl-max-epsilon": 5.0})
    train_private_client(train_message(run, 1), context)
    with pytest.raises(PrivacyBudgetExceededError, match="budget 5"):
        train_private_client(train_message(run, 2), context)
    state = node_store(context).load(3)
    assert [c.status for c in state.charges] == [ChargeStatus.SETTLED,
                                                 ChargeStatus.REFUSED_BUDGET]


def test_a_run_within_the_limits_trains_and_one_beyond_them_is_refused(
        tmp_path: Path) -> None:
    run = {**RUN, "num-clients": 3, "output-dir": str(tmp_path / "ok")}
    grid = InProcessGrid(example_app(), node_configs(
        3, **{"securefl-state-dir": str(tmp_path / "state")}), run)
    run_federation(grid, Context(run_id=7, node_id=0, node_config={}, state=RecordDict(),
                                 run_config=run))
    metrics = json.loads((tmp_path / "ok" / "metrics.json").read_text())
    assert [r["aborted"] for r in metrics["rounds"]] == [False]

    bad = {**run, "noise-multiplier": 0.0, "target-epsilon": 50.0,
           "output-dir": str(tmp_path / "bad")}
    grid = InProcessGrid(example_app(), node_configs(
        3, **{"securefl-state-dir": str(tmp_path / "state-bad")}), bad)
    with pytest.raises(FederationIncompleteError):
        run_federation(grid, Context(run_id=8, node_id=0, node_config={},
                                     state=RecordDict(), run_config=bad))
    refused = [reply.content.config_records[RECORD].get(Key.REFUSED)
               for _, stage, _, reply in grid.replies if stage == Stage.ADVERTISE_KEYS.value]
    assert refused == [DPLimitRule.TARGET_EPSILON.value] * 3
    assert not any(stage == Stage.MASKED_INPUT_COLLECTION.value
                   for _, stage, _, _ in grid.replies)


# -- error replies carry nothing data-dependent ------------------------------------------

_SECRET = st.integers(10**5, 10**9)


def _exceptions(detail: str) -> list[BaseException]:
    return [
        DataValidationError(DataProblem.NON_FINITE_FEATURES, detail, who="client 1"),
        DataValidationError(DataProblem.LABEL_OUT_OF_RANGE, detail, who="client 1"),
        EncodingError(detail),
        PrivacyBudgetExceededError(detail),
        ConfigurationError(detail),
        LocalProtocolError(Rule.MISSING_INPUT, f"train failed: {detail}", peer=1),
        RemoteProtocolError(Rule.MALFORMED, detail, peer="server"),
        WireFormatError(detail, reason="oversized-field", peer="server"),
        NodeStateError(NodeStateRule.CORRUPT, detail, client_id=1, fl_round=2),
        AbortError(detail),
    ]


@settings(max_examples=60, deadline=None)
@given(count=_SECRET, index=_SECRET, text=st.text(min_size=1, max_size=40))
def test_an_error_reply_carries_no_count_index_or_text_of_the_message(
        count: int, index: int, text: str) -> None:
    detail = (f"the update holds {count} NaN or infinite value(s) (first at flat index"
              f" {index}) {text}")
    request = Message(RecordDict({RECORD: ConfigRecord({Key.STAGE: "x"})}), 1000,
                      MessageType.TRAIN)
    request.metadata.__dict__["_message_id"] = "m"
    for exc, other in zip(_exceptions(detail), _exceptions("nothing"), strict=True):
        reply = _error_reply(request, exc)
        reason = reply.error.reason
        # a fixed description: the same whatever the message said
        assert reason == public_reason(other), reason
        assert str(count) not in reason and str(index) not in reason
        assert text.strip() == "" or text not in reason or text in public_reason(other)
        assert reason.startswith(f"securefl: {type(exc).__name__}")
        assert not re.search(r"\d", reason.split(": ", 1)[1].replace("/1", ""))


def test_a_nan_update_reaches_the_server_as_a_fixed_reason(tmp_path: Path) -> None:
    """End to end: a node whose data holds NaN answers the masked-input
    stage with an error whose reason the server reads; the count stays in
    the node's log."""
    from securefl.flower.client_train import PARTITION_RECORD

    run = {**RUN, "num-clients": 3}
    context = _context(tmp_path, run)
    import numpy as np

    x = np.zeros((30, 64), dtype=np.float32)
    x[:3, 0] = np.nan
    y = (np.arange(30) % 10).astype(np.int64)
    context.state.config_records[PARTITION_RECORD] = ConfigRecord({
        "x": x.tobytes(), "x-dtype": x.dtype.str, "rows": 30, "cols": 64,
        "y": y.tobytes(), "y-dtype": y.dtype.str, "classes": 10})
    with pytest.raises(DataValidationError) as caught:
        train_private_client(train_message(run, 1), context)
    assert "3 examples" in str(caught.value)  # the node's own log says it
    reason = public_reason(caught.value)
    assert "3" not in reason and "non-finite" not in reason


def test_a_foreign_exception_in_train_reaches_the_server_without_its_message(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A ``train`` that raises something not securefl's (torch, a user's model
    or data loader), whose message quotes a record (here a token id), used to
    escape the mod, and Flower's runtime sent the message to the server.  Now
    every node answers the masked-input stage with a fixed, typed reason; the
    message stays in the node's log."""
    from flwr.clientapp import ClientApp

    from securefl.flower.mod import securefl_mod

    app = ClientApp(mods=[securefl_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        raise IndexError("index 4711 is out of bounds for dimension 0 with size 1000")

    run = {**RUN, "num-clients": 3, "output-dir": str(tmp_path / "out")}
    grid = InProcessGrid(app, node_configs(
        3, **{"securefl-state-dir": str(tmp_path / "state")}), run)
    with pytest.raises(FederationIncompleteError):
        run_federation(grid, Context(run_id=9, node_id=0, node_config={},
                                     state=RecordDict(), run_config=run))
    errors = [reply.error.reason for _, stage, _, reply in grid.replies
              if stage == Stage.MASKED_INPUT_COLLECTION.value and reply.has_error()]
    assert len(errors) == 3
    for reason in errors:
        assert "4711" not in reason and "IndexError" not in reason
        assert reason.startswith(
            f"securefl: LocalProtocolError: rule '{Rule.MISSING_INPUT.value}'")
    assert any("4711" in record.getMessage() for record in caplog.records)


def test_weighting_by_examples_needs_the_nodes_consent() -> None:
    run = {**RUN, "weighting": "examples"}
    with pytest.raises(DPLimitRefusedError) as info:
        node_dp_config(run, NodeDPLimits())
    assert info.value.rule is DPLimitRule.WEIGHTING
    allowed = NodeDPLimits.from_node_config({"securefl-allow-weighting-examples": True})
    assert allowed.allow_weighting_examples
    node_dp_config(run, allowed)  # consented: trains under replace-one
