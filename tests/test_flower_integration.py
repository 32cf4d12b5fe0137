"""securefl on Flower, in process: the mod and the workflow exchange real
Flower messages (through Flower's protobuf serde, every ClientApp call on a
copy of its node's Context, as in a fresh process); every round's sum is
exactly the survivors' encoded updates (whatever their secret rounding), and
the federation's survivors and DP accounting equal the in-process
simulator's on the same seeds.  The semi-honest nodes opt in to running
without authenticated channels (node config), as the policy requires."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr", reason="flwr is not installed (pip install 'securefl[flower]')")

from flower_harness import (
    InProcessGrid,
    Trained,
    check_exact_sum,
    example_app,
    node_configs,
    recording_app,
    server_task_identity,
    simulate_reference,
)
from flwr.app import ArrayRecord, Context, RecordDict

from securefl.cli.audit import audit_run
from securefl.errors import AbortError, ConfigurationError
from securefl.flower import (
    SecureAggregationSettings,
    SecureAggregationWorkflow,
    provision_identities,
)
from securefl.flower.federation import (
    FederationIncompleteError,
    run_federation,
    simulation_config,
)
from securefl.flower.setup import STATE_RECORD, SessionSetup, Stage
from securefl.privacy.ledger import read_ledger
from securefl.protocol import ClientStatus, Round, SecAggConfig, SecurityMode
from securefl.protocol.config import default_threshold

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _server_identity():
    with server_task_identity():
        yield

RUN = {"num-rounds": 3, "num-clients": 5, "seed": 3, "noise-multiplier": 1.1,
       "hidden": 16, "batch-size": 32, "round-timeout": 30.0}

_app = example_app


def _grid(n: int, run_config: dict, app=None, **kw) -> InProcessGrid:
    return InProcessGrid(app or _app(), node_configs(n), run_config, **kw)


def _server_context(run_config: dict) -> Context:
    return Context(run_id=7, node_id=0, node_config={}, state=RecordDict(),
                   run_config=run_config)


def _schedule_from_ledger(path: Path, rounds: int) -> list[dict[int, Round]]:
    schedule: list[dict[int, Round]] = [{} for _ in range(rounds)]
    for row in read_ledger(path):
        if row.dropped_at is not None:
            schedule[row.round - 1][row.client_id] = Round[row.dropped_at]
    return schedule


def test_federation_with_a_dropout_is_exact_and_accounts_as_the_simulator(
        tmp_path: Path) -> None:
    from securefl.federation.simulation import preflight

    torch.set_num_threads(1)
    run_config = {**RUN, "output-dir": str(tmp_path / "flower")}
    trained: dict[tuple[int, int], Trained] = {}
    # client 3 (node 1002) dies while training in round 2
    grid = _grid(5, run_config, recording_app(trained),
                 deaths={1002: (2, Stage.MASKED_INPUT_COLLECTION.value)})
    run_federation(grid, _server_context(run_config))
    out = tmp_path / "flower"
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["survivors"] for r in metrics["rounds"]] == [[1, 2, 3, 4, 5], [1, 2, 4, 5],
                                                           [1, 2, 4, 5]]
    rows = {(r.round, r.client_id): r for r in read_ledger(out / "ledger.jsonl")}
    assert rows[2, 3].dropped_at == "MASKED_INPUT_COLLECTION"
    assert rows[2, 3].status == "dropped" and not rows[2, 3].entered_sum
    # it died while training: it may have trained, so it is charged its steps
    assert rows[2, 3].local_steps == rows[1, 3].local_steps > 0
    assert rows[3, 3].history == [[rows[1, 3].noise_multiplier, rows[1, 3].sample_rate,
                                   2 * rows[1, 3].local_steps]]
    audit = audit_run(out)
    assert audit["verified"], audit["violations"]
    assert audit["exit_code"] == 3  # verified; this run sets no budget
    assert rows[3, 3].dropped_at == "ADVERTISE_KEYS"
    assert rows[2, 1].status == "included" and rows[2, 1].local_steps > 0
    assert all(STATE_RECORD not in grid.state_of(n).config_records for n in (1000, 1001))

    schedule = _schedule_from_ledger(out / "ledger.jsonl", 3)
    assert schedule[1] == {3: Round.MASKED_INPUT_COLLECTION}
    _, codec = preflight(simulation_config(run_config))
    sums = np.load(out / "sums.npz")
    for r, survivors in zip((1, 2, 3), ([1, 2, 3, 4, 5], [1, 2, 4, 5], [1, 2, 4, 5]),
                            strict=True):
        check_exact_sum(sums[f"round_{r}"], codec, [trained[999 + c, r] for c in survivors])
    # the check has teeth: the dropped client's update, or a shifted sum, fail it
    with pytest.raises(AssertionError):
        check_exact_sum(sums["round_2"], codec, [trained[999 + c, 2] for c in (1, 2, 4)])
    shifted = sums["round_2"].copy()
    shifted[0] += np.uint64(5)
    with pytest.raises(AssertionError):
        check_exact_sum(shifted, codec, [trained[999 + c, 2] for c in (1, 2, 4, 5)])
    assert all("clipped_values" not in r for r in metrics["rounds"])  # not sent
    ref = simulate_reference(run_config, schedule, tmp_path / "sim")
    # the survivors' DP accounting matches the simulator's ledger
    sim_rows = {(r.round, r.client_id): r for r in ref.ledger}
    for cid in (1, 2, 4, 5):
        assert rows[3, cid].epsilon_rdp == pytest.approx(sim_rows[3, cid].epsilon_rdp)
        assert rows[3, cid].history == sim_rows[3, cid].history


def test_aborted_round_leaves_model_and_ledger_and_the_federation_continues(
        tmp_path: Path) -> None:
    torch.set_num_threads(1)
    run_config = {**RUN, "num-rounds": 2, "output-dir": str(tmp_path / "f")}
    silent = {(1000 + i, 1, Stage.SHARE_KEYS.value) for i in range(3)}  # 2 left < t = 3
    grid = _grid(5, run_config, None, silent=silent)
    run_federation(grid, _server_context(run_config))
    metrics = json.loads((tmp_path / "f" / "metrics.json").read_text())
    assert [r["aborted"] for r in metrics["rounds"]] == [True, False]
    assert metrics["rounds"][0]["survivors"] == []
    assert "SHARE_KEYS" in metrics["rounds"][0]["abort_reason"]
    assert metrics["final"]["rounds_completed"] == 1
    rows = read_ledger(tmp_path / "f" / "ledger.jsonl")
    assert {r.round for r in rows} == {1, 2}
    # nobody trained in the aborted round (training comes at MASKED_INPUT_COLLECTION)
    assert all(r.local_steps == 0 and not r.entered_sum for r in rows if r.round == 1)
    # the model after the federation equals one successful round from the start
    ref = simulate_reference({**run_config, "num-rounds": 1}, [{}], tmp_path / "sim")
    assert np.array_equal(np.load(tmp_path / "f" / "sums.npz")["round_2"].shape,
                          ref.sums[1].shape)


def test_active_mode_with_pinned_keys(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    keys = provision_identities(tmp_path / "keys", range(1, 5))
    pinned = str(tmp_path / "keys" / "pinned.json")
    run_config = {**RUN, "num-clients": 4, "num-rounds": 1, "mode": "active",
                  "pinned-keys": pinned, "output-dir": str(tmp_path / "f")}
    configs = {1000 + i: {"partition-id": i, "securefl-identity-key": str(keys[i + 1]),
                          "securefl-pinned-keys": pinned} for i in range(4)}
    trained: dict[tuple[int, int], Trained] = {}
    # no opt-in and no mode anywhere: identity keys make active mode the default
    grid = InProcessGrid(recording_app(trained), configs,
                         {k: v for k, v in run_config.items() if k != "mode"},
                         deaths={1003: (1, Stage.UNMASKING.value)})
    run_federation(grid, _server_context({k: v for k, v in run_config.items() if k != "mode"}))
    metrics = json.loads((tmp_path / "f" / "metrics.json").read_text())
    assert metrics["config"]["security_mode"] == "active"
    assert metrics["rounds"][0]["survivors"] == [1, 2, 3, 4]  # 4 dropped after its input
    assert metrics["rounds"][0]["dropped"] == {"4": "UNMASKING"}
    from securefl.federation.simulation import preflight

    _, codec = preflight(simulation_config(run_config))
    check_exact_sum(np.load(tmp_path / "f" / "sums.npz")["round_1"], codec,
                    [trained[999 + c, 1] for c in (1, 2, 3, 4)])


def test_active_mode_records_the_threshold_its_sessions_run_with(tmp_path: Path) -> None:
    """n = 5: semi-honest default t = 3, active default t = 4.  metrics.json
    once recorded 3 while the active sessions ran with 4; with two nodes
    silent the session aborts (3 answered, 4 needed), and the threshold
    recorded is the one that aborted it."""
    torch.set_num_threads(1)
    keys = provision_identities(tmp_path / "keys", range(1, 6))
    pinned = str(tmp_path / "keys" / "pinned.json")
    run_config = {**RUN, "num-clients": 5, "num-rounds": 1, "mode": "active",
                  "pinned-keys": pinned, "output-dir": str(tmp_path / "f")}
    configs = {1000 + i: {"partition-id": i, "securefl-identity-key": str(keys[i + 1]),
                          "securefl-pinned-keys": pinned} for i in range(5)}
    silent = {(1000 + i, 1, Stage.SHARE_KEYS.value) for i in range(2)}
    grid = InProcessGrid(_app(), configs, run_config, silent=silent)
    with pytest.raises(FederationIncompleteError, match="no round completed"):
        run_federation(grid, _server_context(run_config))  # recorded, then refused
    metrics = json.loads((tmp_path / "f" / "metrics.json").read_text())
    assert metrics["config"]["threshold_used"] == 4
    assert metrics["config"]["threshold_used"] == default_threshold(5, SecurityMode.ACTIVE)
    assert metrics["config"]["threshold_used"] != default_threshold(5, SecurityMode.SEMI_HONEST)
    assert metrics["rounds"][0]["aborted"]
    assert "threshold is 4" in metrics["rounds"][0]["abort_reason"], metrics["rounds"][0]


def test_active_mode_refuses_a_node_with_another_key(tmp_path: Path) -> None:
    keys = provision_identities(tmp_path / "keys", range(1, 5))
    other = provision_identities(tmp_path / "other", [2])
    pinned = str(tmp_path / "keys" / "pinned.json")
    run_config = {**RUN, "num-clients": 4}
    configs = {1000 + i: {"partition-id": i, "securefl-identity-key": str(keys[i + 1]),
                          "securefl-pinned-keys": pinned} for i in range(4)}
    configs[1001]["securefl-identity-key"] = str(other[2])
    grid = InProcessGrid(_app(), configs, run_config)
    from securefl.federation.simulation import preflight
    from securefl.flower import load_pinned_keys

    _, codec = preflight(simulation_config(run_config))
    workflow = SecureAggregationWorkflow(SecureAggregationSettings(
        mode=SecurityMode.ACTIVE, pinned_keys=load_pinned_keys(pinned)), codec)
    assert sorted(workflow.register(grid).values()) == [1, 3, 4]


def test_workflow_aborts_without_changing_anything() -> None:
    from securefl.federation.simulation import preflight

    run_config = {**RUN, "num-clients": 3}
    model, codec = preflight(simulation_config(run_config))
    grid = _grid(3, run_config, None,
                 deaths={1000: (1, "share-keys"), 1001: (1, "share-keys")},
                 answer_for_dead=False)  # no reply at all: the round times out
    workflow = SecureAggregationWorkflow(SecureAggregationSettings(timeout=0.5), codec)
    arrays = ArrayRecord([p.detach().numpy() for p in model.parameters()])
    with pytest.raises(AbortError) as info:
        workflow.run_round(grid, 1, arrays)
    assert info.value.round is Round.SHARE_KEYS
    # the survivor was told to forget the session's secrets at once
    assert (1002, Stage.ABORT.value, 1) in grid.sent
    assert STATE_RECORD not in grid.state_of(1002).config_records


def test_setup_roundtrip_and_validation() -> None:
    from securefl.federation.simulation import preflight

    _, codec = preflight(simulation_config({**RUN, "num-clients": 3}))
    config = SecAggConfig(num_clients=3, vector_length=codec.vector_length, bits=codec.bits,
                          context=b"x")
    setup = SessionSetup.create(4, config, codec)
    again = SessionSetup.from_bytes(setup.to_bytes())
    assert again == setup and again.secagg_config() == config
    with pytest.raises(ConfigurationError):
        SessionSetup.from_bytes(b"{not json")
    assert Stage.of_round(Round.UNMASKING).round is Round.UNMASKING


def test_dropped_round_vocabulary() -> None:
    from securefl.flower import dropped_round

    assert dropped_round(ClientStatus.DEAD_AFTER_SHARE_KEYS_RECEIVED,
                         SecurityMode.SEMI_HONEST) is Round.MASKED_INPUT_COLLECTION
    assert dropped_round(ClientStatus.DEAD_AFTER_MASKED_INPUT_RESPONSE_RECEIVED,
                         SecurityMode.SEMI_HONEST) is Round.UNMASKING
    assert dropped_round(ClientStatus.UNMASKING_RESPONSE_RECEIVED,
                         SecurityMode.ACTIVE) is None


def test_a_restarted_node_takes_over_its_client_id() -> None:
    from securefl.federation.simulation import preflight

    run_config = {**RUN, "num-clients": 3}
    _, codec = preflight(simulation_config(run_config))
    grid = _grid(3, run_config)
    workflow = SecureAggregationWorkflow(SecureAggregationSettings(), codec)
    workflow.clients = {1000: 1, 1001: 2, 999: 3}  # node 999 was client 3, now gone
    assert workflow.register(grid) == {1000: 1, 1001: 2, 1002: 3}


def test_a_corrupted_reply_counts_as_a_dropout(tmp_path: Path) -> None:
    """A node whose share-keys reply is garbage is refused (typed wire error)
    and treated as absent at that round; the others' sum is still exact."""
    from flwr.app import ConfigRecord
    from flwr.clientapp import ClientApp

    from securefl.federation.simulation import preflight
    from securefl.flower.setup import RECORD, Key

    inner = _app()

    def corrupt(msg, ctxt, call_next):
        reply = call_next(msg, ctxt)
        record = msg.content.config_records[RECORD]
        if ctxt.node_id == 1001 and record[Key.STAGE] == Stage.SHARE_KEYS.value:
            reply.content.config_records[RECORD] = ConfigRecord({Key.PAYLOAD: b"\x08garbage"})
        return reply

    app = ClientApp(mods=[corrupt])
    app.train()(lambda msg, ctxt: inner(msg, ctxt))
    run_config = {**RUN, "num-clients": 4}
    model, codec = preflight(simulation_config(run_config))
    grid = InProcessGrid(app, node_configs(4), run_config)
    workflow = SecureAggregationWorkflow(SecureAggregationSettings(), codec)
    arrays = ArrayRecord([p.detach().numpy() for p in model.parameters()])
    result = workflow.run_round(grid, 1, arrays)
    assert result.survivors == (1, 3, 4)
    assert result.statuses[2] is ClientStatus.DEAD_AFTER_ADVERTISE_KEYS_RECEIVED
    assert result.dropped_at(SecurityMode.SEMI_HONEST) == {2: Round.SHARE_KEYS}


@pytest.mark.parametrize("overrides", [{}, {"noise-multiplier": 0.0, "target-epsilon": 3.0},
                                       {"noise-multiplier": 0.0}, {"lr": 0.5, "num-rounds": 7}])
def test_client_dp_config_is_the_simulators(overrides: dict) -> None:
    """The ClientApp builds its DPConfig without importing the simulator (to
    start faster); it must stay what SimulationConfig.dp_config() gives."""
    from securefl.flower.client_train import dp_config

    run_config = {**RUN, **overrides}
    assert dp_config(run_config) == simulation_config(run_config).dp_config()


@pytest.mark.parametrize("junk", [{"dp-steps": [1, 2]}, {"dp-history": [1.0, 0.1]},
                                  {"dp-noise-multiplier": float("nan")},
                                  {"dp-sample-rate": -0.5}, {"num-examples": 7}])
def test_malformed_dp_metrics_make_the_reply_absent_not_the_server_crash(junk: dict) -> None:
    """A node whose masked-input reply carries DP metrics the ledger cannot
    use (or any metric but ``dp-*``) is refused and absent; the others' sum
    is still exact."""
    from flwr.app import MetricRecord
    from flwr.clientapp import ClientApp

    from securefl.federation.simulation import preflight
    from securefl.flower.setup import DP_METRICS_RECORD, RECORD, Key

    trained: dict[tuple[int, int], Trained] = {}
    inner = recording_app(trained)

    def corrupt(msg, ctxt, call_next):
        reply = call_next(msg, ctxt)
        record = msg.content.config_records[RECORD]
        if ctxt.node_id == 1001 and record[Key.STAGE] == Stage.MASKED_INPUT_COLLECTION.value:
            reply.content.metric_records[DP_METRICS_RECORD] = MetricRecord(
                {**reply.content.metric_records[DP_METRICS_RECORD], **junk})
        return reply

    app = ClientApp(mods=[corrupt])
    app.train()(lambda msg, ctxt: inner(msg, ctxt))
    run_config = {**RUN, "num-clients": 4}
    model, codec = preflight(simulation_config(run_config))
    grid = InProcessGrid(app, node_configs(4), run_config)
    workflow = SecureAggregationWorkflow(SecureAggregationSettings(), codec)
    result = workflow.run_round(grid, 1, ArrayRecord([p.detach().numpy()
                                                      for p in model.parameters()]))
    assert result.survivors == (1, 3, 4)
    assert set(result.dp_metrics) == {1, 3, 4}
    check_exact_sum(result.total, codec, [trained[999 + c, 1] for c in (1, 3, 4)])
