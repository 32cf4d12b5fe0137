"""A Flower node decides what it accepts, and nothing per client leaves it
in the clear.

The server is the adversary here: it announces setups weaker than the
node's own policy (two clients, a threshold of one, semi-honest mode to a
node with identity keys or without authenticated channels, ids without
pinned keys, an absurd vector, reproducible DP noise), tries to set the
node's policy through the run config, and reads every record the nodes
send.  Before the node-side policy, every one of these setups was accepted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr", reason="flwr is not installed (pip install 'securefl[flower]')")
torch = pytest.importorskip("torch")

from flower_harness import (  # noqa: E402
    SEMI_HONEST_OPT_IN,
    InProcessGrid,
    Trained,
    check_exact_sum,
    example_app,
    node_configs,
    recording_app,
    server_task_identity,
)
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402

from securefl.encoding import FixedPointCodec  # noqa: E402
from securefl.errors import AbortError, ConfigurationError  # noqa: E402
from securefl.flower import (  # noqa: E402
    SecureAggregationSettings,
    SecureAggregationWorkflow,
    load_pinned_keys,
    provision_identities,
    securefl_mod,
)
from securefl.flower.federation import simulation_config  # noqa: E402
from securefl.flower.policy import NodePolicy, PolicyRule  # noqa: E402
from securefl.flower.setup import (  # noqa: E402
    DP_METRICS_RECORD,
    RECORD,
    STATE_RECORD,
    Key,
    SessionSetup,
    Stage,
)
from securefl.hazmat import signing  # noqa: E402
from securefl.protocol import ClientSession, Round, SecAggConfig, SecurityMode  # noqa: E402
from securefl.protocol.messages import (  # noqa: E402
    AdvertiseKeys,
    ConsistencySignature,
    EncryptedShares,
    MaskedInput,
    UnmaskingResponse,
)
from securefl.wire import codec as wire  # noqa: E402

RUN = {"num-rounds": 1, "num-clients": 4, "seed": 3, "noise-multiplier": 1.1, "hidden": 8,
       "batch-size": 32, "round-timeout": 30.0}
DP_ACCOUNTING = {"dp-noise-multiplier", "dp-sample-rate", "dp-steps", "dp-history"}
"""The only metrics a node forwards in clear (docs/flower.md)."""
_REPLY = {Stage.ADVERTISE_KEYS: AdvertiseKeys, Stage.SHARE_KEYS: EncryptedShares,
          Stage.MASKED_INPUT_COLLECTION: MaskedInput,
          Stage.CONSISTENCY_CHECK: ConsistencySignature, Stage.UNMASKING: UnmaskingResponse}


@pytest.fixture(autouse=True)
def _server_identity():
    with server_task_identity():
        yield


def _codec(num_clients: int = 4, shapes: Any = ((3, 2), (5,))) -> FixedPointCodec:
    return FixedPointCodec(shapes=shapes, bits=32, frac_bits=16, clip=4.0,
                           num_clients=num_clients, max_weight=1000)


def _setup(n: int, t: int | None = None, mode: SecurityMode = SecurityMode.SEMI_HONEST,
           ids: tuple[int, ...] | None = None, codec: FixedPointCodec | None = None,
           fl_round: int = 1) -> SessionSetup:
    codec = codec or _codec(max(n, 2))
    config = SecAggConfig(num_clients=n, vector_length=codec.vector_length, bits=codec.bits,
                          threshold=t, mode=mode, client_ids=ids, context=b"adversary")
    return SessionSetup.create(fl_round, config, codec)


def _announce(node_config: dict[str, Any], raw_setup: bytes, *, fl_round: int = 1,
              run_config: dict[str, Any] | None = None) -> tuple[Message, InProcessGrid]:
    """The server announces ``raw_setup`` to one node (node id 1000)."""
    grid = InProcessGrid(example_app(), {1000: node_config}, run_config or dict(RUN))
    msg = Message(RecordDict({RECORD: ConfigRecord({
        Key.STAGE: Stage.ADVERTISE_KEYS.value, Key.FL_ROUND: fl_round, Key.SETUP: raw_setup})}),
        dst_node_id=1000, message_type=MessageType.TRAIN, group_id="1")
    (reply,) = grid.pull_messages(grid.push_messages([msg]))
    return reply, grid


def _assert_refused(reply: Message, grid: InProcessGrid, rule: PolicyRule) -> None:
    assert not reply.has_error(), reply.error.reason  # a refusal, not a crash
    record = reply.content.config_records[RECORD]
    assert record[Key.REFUSED] == rule.value, record.get(Key.REASON)
    # nothing of the session: no advertisement, no key, no session state
    assert set(record) == {Key.REFUSED, Key.REASON}
    assert set(reply.content.config_records) == {RECORD}
    assert not reply.content.metric_records and not reply.content.array_records
    assert STATE_RECORD not in grid.state_of(1000).config_records


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("keys")
    paths = provision_identities(root, range(1, 5))
    return {"paths": paths, "pinned": str(root / "pinned.json")}


def _keyed(keys: dict[str, Any], cid: int = 1, **extra: Any) -> dict[str, Any]:
    return {"partition-id": cid - 1, "securefl-identity-key": str(keys["paths"][cid]),
            "securefl-pinned-keys": keys["pinned"], **extra}


_OPTED_IN = {"partition-id": 0, **SEMI_HONEST_OPT_IN}


@pytest.mark.parametrize(("node_config", "setup", "rule"), [
    pytest.param(_OPTED_IN, lambda: _setup(4, t=1), PolicyRule.MIN_THRESHOLD, id="t=1"),
    pytest.param(_OPTED_IN, lambda: _setup(4, t=2), PolicyRule.MIN_THRESHOLD, id="t=n/2"),
    pytest.param(_OPTED_IN, lambda: _setup(2), PolicyRule.MIN_CLIENTS, id="n=2"),
    pytest.param({"partition-id": 0}, lambda: _setup(4), PolicyRule.UNAUTHENTICATED_SEMI_HONEST,
                 id="semi-honest-without-opt-in"),
    pytest.param({**_OPTED_IN, "securefl-mode": "active"}, lambda: _setup(4), PolicyRule.MODE,
                 id="semi-honest-to-an-active-node"),
    pytest.param({**_OPTED_IN, "securefl-min-clients": 6}, lambda: _setup(5),
                 PolicyRule.MIN_CLIENTS, id="below-the-node's-minimum"),
    pytest.param({**_OPTED_IN, "securefl-min-threshold-fraction": 0.75}, lambda: _setup(8, t=6),
                 PolicyRule.MIN_THRESHOLD, id="below-the-node's-fraction"),
    pytest.param({**_OPTED_IN, "securefl-max-vector-length": 8}, lambda: _setup(4),
                 PolicyRule.VECTOR_TOO_LONG, id="vector-too-long"),
    pytest.param(_OPTED_IN, lambda: _setup(4, ids=(2, 3, 4, 5)), PolicyRule.NOT_INVITED,
                 id="not-invited"),
])
def test_a_weak_setup_is_refused_by_rule(node_config: dict[str, Any], setup: Any,
                                         rule: PolicyRule) -> None:
    reply, grid = _announce(node_config, setup().to_bytes())
    _assert_refused(reply, grid, rule)


def test_a_node_with_identity_keys_refuses_semi_honest_even_opted_in(keys: dict) -> None:
    reply, grid = _announce(_keyed(keys, **SEMI_HONEST_OPT_IN), _setup(4).to_bytes())
    _assert_refused(reply, grid, PolicyRule.MODE)


def test_active_mode_with_two_clients_is_refused(keys: dict) -> None:
    reply, grid = _announce(_keyed(keys), _setup(2, mode=SecurityMode.ACTIVE).to_bytes())
    _assert_refused(reply, grid, PolicyRule.MIN_CLIENTS)


def test_active_mode_inviting_ids_without_pinned_keys_is_refused(keys: dict) -> None:
    """Pinned keys cover clients 1..4; the server invites a fifth id it
    controls (no pinned key): the node refuses before any key exists."""
    reply, grid = _announce(_keyed(keys), _setup(5, mode=SecurityMode.ACTIVE).to_bytes())
    _assert_refused(reply, grid, PolicyRule.IDS_NOT_PINNED)


def test_active_mode_without_keys_is_refused_as_unpinned() -> None:
    reply, grid = _announce(_OPTED_IN, _setup(4, mode=SecurityMode.ACTIVE).to_bytes())
    _assert_refused(reply, grid, PolicyRule.IDS_NOT_PINNED)


def test_the_policy_never_comes_from_the_run_config() -> None:
    """The server puts the opt-in (and a lax policy) in the run config every
    node sees: the node's own policy still refuses."""
    lax = {**RUN, "securefl-allow-unauthenticated-semi-honest": True,
           "securefl-authenticated-channels": True, "securefl-min-clients": 2}
    reply, grid = _announce({"partition-id": 0}, _setup(4).to_bytes(), run_config=lax)
    _assert_refused(reply, grid, PolicyRule.UNAUTHENTICATED_SEMI_HONEST)


@pytest.mark.parametrize("key", ["insecure_reproducible_noise", "insecure-reproducible-noise"])
def test_a_run_asking_for_reproducible_noise_is_refused(key: str) -> None:
    reply, grid = _announce(_OPTED_IN, _setup(4).to_bytes(), run_config={**RUN, key: True})
    _assert_refused(reply, grid, PolicyRule.INSECURE_NOISE)


def test_an_acceptable_setup_is_answered_with_an_advertisement(keys: dict) -> None:
    for node_config, setup in ((_OPTED_IN, _setup(4)),
                               ({"partition-id": 0, "securefl-authenticated-channels": True},
                                _setup(4)),
                               (_keyed(keys), _setup(4, mode=SecurityMode.ACTIVE))):
        reply, grid = _announce(node_config, setup.to_bytes())
        record = reply.content.config_records[RECORD]
        assert Key.REFUSED not in record
        advert = wire.decode(bytes(record[Key.PAYLOAD]), expect=AdvertiseKeys)
        assert advert.sender == 1
        assert STATE_RECORD in grid.state_of(1000).config_records


def test_a_setup_carrying_a_rounding_seed_is_refused() -> None:
    """The server may not choose the node's rounding: a setup with a
    ``rounding_seed`` field is malformed (an error reply, no session)."""
    import json

    data = json.loads(_setup(4).to_bytes())
    data["rounding_seed"] = 9
    reply, grid = _announce(_OPTED_IN, json.dumps(data).encode())
    assert reply.has_error() and "ConfigurationError" in reply.error.reason
    assert STATE_RECORD not in grid.state_of(1000).config_records


def test_node_policy_defaults_and_bad_values() -> None:
    assert NodePolicy().required_mode is None
    assert NodePolicy(has_identity=True).required_mode is SecurityMode.ACTIVE
    assert NodePolicy(mode=SecurityMode.SEMI_HONEST, has_identity=True).required_mode \
        is SecurityMode.SEMI_HONEST
    for bad in ({"securefl-min-clients": 2}, {"securefl-min-clients": True},
                {"securefl-min-threshold-fraction": 0.4},
                {"securefl-min-threshold-fraction": "x"},
                {"securefl-mode": "paranoid"}, {"securefl-authenticated-channels": "yes"},
                {"securefl-max-vector-length": 1}):
        with pytest.raises(ConfigurationError):
            NodePolicy.from_node_config(bad, has_identity=False)


def test_reproducible_noise_set_to_false_is_no_request() -> None:
    from securefl.flower.policy import SetupRefusedError, check_no_insecure_noise

    check_no_insecure_noise({"insecure_reproducible_noise": False},
                            {"insecure-reproducible-noise": "false"}, None, {})
    with pytest.raises(SetupRefusedError) as info:
        check_no_insecure_noise({}, {"insecure-reproducible-noise": "yes"}, fl_round=4)
    assert info.value.rule is PolicyRule.INSECURE_NOISE and info.value.fl_round == 4
    assert "insecure-reproducible-noise-requested" in str(info.value)


def test_the_operator_opt_in_may_come_from_the_node_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECUREFL_ALLOW_UNAUTHENTICATED_SEMI_HONEST", "true")
    assert NodePolicy.from_node_config({}, has_identity=False).allow_unauthenticated_semi_honest
    # the node config, when set, wins
    assert not NodePolicy.from_node_config(
        {"securefl-allow-unauthenticated-semi-honest": False},
        has_identity=False).allow_unauthenticated_semi_honest


# -- whole rounds ---------------------------------------------------------------------


def _model_and_codec(n: int, **overrides: Any) -> tuple[ArrayRecord, FixedPointCodec]:
    from securefl.federation.simulation import preflight

    model, codec = preflight(simulation_config({**RUN, "num-clients": n, **overrides}))
    return ArrayRecord([p.detach().numpy() for p in model.parameters()]), codec


def test_a_server_announcing_threshold_one_gets_refusals_and_learns_nothing() -> None:
    arrays, codec = _model_and_codec(4)
    grid = InProcessGrid(example_app(), node_configs(4), dict(RUN))
    workflow = SecureAggregationWorkflow(SecureAggregationSettings(threshold=1), codec)
    with pytest.raises(AbortError) as info:
        workflow.run_round(grid, 1, arrays)
    assert info.value.round is Round.ADVERTISE_KEYS
    advertise = [r for (_, stage, _, r) in grid.replies if stage == Stage.ADVERTISE_KEYS.value]
    assert len(advertise) == 4
    for reply in advertise:
        record = reply.content.config_records[RECORD]
        assert record[Key.REFUSED] == PolicyRule.MIN_THRESHOLD.value
        assert Key.PAYLOAD not in record


def test_one_refusing_node_is_a_dropout_and_the_others_sum_exactly() -> None:
    arrays, codec = _model_and_codec(4)
    configs = node_configs(4)
    configs[1003]["securefl-min-clients"] = 5  # this operator wants a larger cohort
    trained: dict[tuple[int, int], Trained] = {}
    grid = InProcessGrid(recording_app(trained), configs, dict(RUN))
    workflow = SecureAggregationWorkflow(SecureAggregationSettings(threshold=3), codec)
    result = workflow.run_round(grid, 1, arrays)
    assert result.survivors == (1, 2, 3)
    assert result.refused == {4: PolicyRule.MIN_CLIENTS.value}
    assert result.dropped_at(SecurityMode.SEMI_HONEST) == {4: Round.ADVERTISE_KEYS}
    assert (1003, 1) not in trained  # the refusing node never trained
    check_exact_sum(result.total, codec, [trained[999 + c, 1] for c in (1, 2, 3)])


def test_reproducible_noise_in_the_train_config_is_refused_before_training() -> None:
    arrays, codec = _model_and_codec(4)
    trained: dict[tuple[int, int], Trained] = {}
    grid = InProcessGrid(recording_app(trained), node_configs(4), dict(RUN))
    workflow = SecureAggregationWorkflow(SecureAggregationSettings(), codec)
    with pytest.raises(AbortError) as info:
        workflow.run_round(grid, 1, arrays, ConfigRecord({"insecure_reproducible_noise": True}))
    assert info.value.round is Round.MASKED_INPUT_COLLECTION
    assert trained == {}
    for node, stage, _, reply in grid.replies:
        if stage == Stage.MASKED_INPUT_COLLECTION.value:
            assert reply.content.config_records[RECORD][Key.REFUSED] == \
                PolicyRule.INSECURE_NOISE.value, node
            assert STATE_RECORD not in grid.state_of(node).config_records


@pytest.mark.parametrize("mode", [SecurityMode.SEMI_HONEST, SecurityMode.ACTIVE])
def test_every_record_a_node_sends_is_wire_bytes_or_public_accounting(
        mode: SecurityMode, keys: dict) -> None:
    """Inspect every record of every reply of a whole federation round
    (register, every protocol stage, with one node dropping): only protocol
    wire bytes (that re-encode to exactly the bytes sent), the node's client
    id and pinned identity key, and the documented DP accounting metrics
    leave a node; train's example count, loss and clipped-value count do
    not, although train produced them."""
    n = 4
    arrays, codec = _model_and_codec(n, **{"clip-range": 0.001})  # so that values are clipped
    if mode is SecurityMode.ACTIVE:
        configs = {1000 + i: _keyed(keys, i + 1) for i in range(n)}
        settings = SecureAggregationSettings(pinned_keys=load_pinned_keys(keys["pinned"]))
    else:
        configs = node_configs(n)
        settings = SecureAggregationSettings()
    assert settings.mode is mode  # pinned keys make active mode the default
    trained: dict[tuple[int, int], Trained] = {}
    grid = InProcessGrid(recording_app(trained), configs, dict(RUN),
                         deaths={1003: (1, Stage.UNMASKING.value)})
    result = SecureAggregationWorkflow(settings, codec).run_round(grid, 1, arrays)
    assert result.survivors == (1, 2, 3, 4)
    config = SecAggConfig(num_clients=n, vector_length=codec.vector_length, bits=codec.bits,
                          mode=mode, client_ids=tuple(range(1, n + 1)),
                          context=b"securefl run 7 round 1")
    pinned = load_pinned_keys(keys["pinned"])
    seen_stages = set()
    for node, stage_value, _, reply in grid.replies:
        stage, cid = Stage(stage_value), node - 999
        seen_stages.add(stage)
        assert not reply.has_error(), reply.error.reason
        assert not reply.content.array_records
        assert set(reply.content.config_records) == {RECORD}
        record = dict(reply.content.config_records[RECORD])
        payload = record.pop(Key.PAYLOAD)
        if stage is Stage.REGISTER:
            assert payload == b"" and record.pop(Key.CLIENT_ID) == cid
            if mode is SecurityMode.ACTIVE:
                assert record.pop(Key.IDENTITY) == signing.public_bytes(pinned[cid])
        else:
            message = wire.decode(payload, config=config, expect=_REPLY[stage])
            assert message.sender == cid
            assert wire.encode(message, element_bytes=config.element_bytes) == payload
        assert record == {}, f"{stage.value} reply of client {cid} carries {sorted(record)}"
        metrics = reply.content.metric_records
        if stage is Stage.MASKED_INPUT_COLLECTION:
            assert set(metrics) == {DP_METRICS_RECORD}
            assert set(metrics[DP_METRICS_RECORD]) <= DP_ACCOUNTING
        else:
            assert not metrics
    assert seen_stages >= {Stage.REGISTER, Stage.ADVERTISE_KEYS, Stage.SHARE_KEYS,
                           Stage.MASKED_INPUT_COLLECTION, Stage.UNMASKING}
    # train does not even produce a count or a loss (uniform weighting)
    for cid in range(1, n + 1):
        local = trained[999 + cid, 1].metrics
        assert not {"num-examples", "train-loss"} & set(local)
    clipped = [codec.encode([np.subtract(lo, gl) for lo, gl in zip(
        t.local_arrays, t.global_arrays, strict=True)], np.random.default_rng(0),
        weight=int(t.metrics.get("num-examples", 1))).num_clipped for t in trained.values()]
    assert min(clipped) > 0
    check_exact_sum(result.total, codec, [trained[999 + c, 1] for c in range(1, n + 1)])


def _fixed_train_app(delta: float) -> ClientApp:
    app = ClientApp(mods=[securefl_mod])

    @app.train()
    def train(msg: Message, context: Any) -> Message:
        arrays = msg.content.array_records["arrays"].to_numpy_ndarrays()
        return Message(RecordDict({
            "arrays": ArrayRecord([a + np.float32(delta) for a in arrays])}), reply_to=msg)

    return app


def test_rounding_is_the_nodes_own_not_the_servers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server runs the same round twice with the same setup bytes, model
    and (deterministic) local update: each node's encoded input differs
    between the runs, because its rounding comes from its OS CSPRNG; with
    a server-chosen rounding seed both runs encoded identically."""
    arrays, codec = _model_and_codec(3)
    provided: list[dict[int, np.ndarray]] = [{}, {}]
    original = ClientSession.provide_input
    run = [0]

    def record(self: ClientSession, vector: np.ndarray) -> Any:
        if int(vector[-1]) != 0:  # a replay provides zeros; the real input has its weight
            provided[run[0]][self.client_id] = np.array(vector, copy=True)
        return original(self, vector)

    monkeypatch.setattr(ClientSession, "provide_input", record)
    for attempt in (0, 1):
        run[0] = attempt
        grid = InProcessGrid(_fixed_train_app(1.0 / 3.0), node_configs(3), dict(RUN))
        SecureAggregationWorkflow(SecureAggregationSettings(), codec).run_round(grid, 1, arrays)
    assert set(provided[0]) == set(provided[1]) == {1, 2, 3}
    for cid in (1, 2, 3):
        first, second = provided[0][cid], provided[1][cid]
        assert not np.array_equal(first, second), f"client {cid} rounded identically twice"
        assert np.all(((first - second) + np.uint64(1)) & np.uint64(0xFFFFFFFF) <= 2)


def test_the_server_warns_and_defaults(caplog: pytest.LogCaptureFixture, keys: dict) -> None:
    with caplog.at_level("WARNING", logger="securefl.flower"):
        SecureAggregationSettings()
    assert "semi-honest mode without authenticated channels" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="securefl.flower"):
        SecureAggregationSettings(authenticated_channels=True)
        settings = SecureAggregationSettings(pinned_keys=load_pinned_keys(keys["pinned"]))
    assert caplog.text == ""
    assert settings.mode is SecurityMode.ACTIVE


def test_run_federation_refuses_the_removed_reproducible_rounding(tmp_path: Path) -> None:
    from flwr.app import Context

    from securefl.flower.federation import run_federation

    run_config = {**RUN, "reproducible-rounding": True, "output-dir": str(tmp_path)}
    grid = InProcessGrid(example_app(), node_configs(4), run_config)
    with pytest.raises(ConfigurationError, match="reproducible-rounding"):
        run_federation(grid, Context(run_id=7, node_id=0, node_config={}, state=RecordDict(),
                                     run_config=run_config))
