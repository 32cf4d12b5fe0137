"""A Flower node's DP accountant on its own disk (issue 12): the spend is on
disk before the node trains, a reload gives back exactly what was saved, a
corrupt or lost state makes the node refuse (typed) instead of starting from
zero, and the budget guard reads the disk.  The real-process SIGKILL test is
in tests/test_flower_node_restart_runtime.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("flwr", reason="flwr is not installed (pip install 'securefl[flower]')")

from flower_harness import InProcessGrid, example_app, node_configs, server_task_identity
from flwr.app import Context, RecordDict
from test_flower_client_privacy import train_message

from securefl.errors import PrivacyBudgetExceededError
from securefl.flower.client_train import node_store, train_private_client
from securefl.flower.dpstate import (
    ChargeStatus,
    NodeAccountantState,
    NodeAccountantStore,
    NodeStateError,
    NodeStateRule,
    federation_key,
)
from securefl.flower.federation import run_federation
from securefl.privacy.budget import compose
from securefl.privacy.ledger import read_ledger

torch = pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]
RUN = {"num-rounds": 2, "num-clients": 3, "seed": 3, "noise-multiplier": 1.1, "hidden": 8}

rows = st.lists(st.tuples(st.floats(0.0, 20.0, allow_nan=False),
                          st.floats(1e-6, 1.0, allow_nan=False), st.integers(0, 10**6)),
                max_size=3)
operations = st.lists(st.tuples(st.sampled_from(["charge", "settle", "refuse"]), rows),
                      max_size=8)


def _store(directory: Path, federation: str = "fed", client: int = 3) -> NodeAccountantStore:
    return NodeAccountantStore(directory, federation, client)


def _apply(store: NodeAccountantStore, ops: list[tuple[str, Any]]) -> NodeAccountantState:
    state = store.load(1)
    for number, (op, history_rows) in enumerate(ops, start=1):
        if op == "settle" and state.charges and \
                state.charges[-1].status is ChargeStatus.IN_FLIGHT:
            state = store.settle(state, history_rows)
        elif op == "refuse":
            state = store.refuse_budget(state, number)
        else:
            state = store.charge(state, number, history_rows)
    return state


# -- the file: what is saved is what is loaded ----------------------------------------


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations)
def test_reload_equals_what_was_saved(tmp_path_factory: pytest.TempPathFactory,
                                      ops: list[tuple[str, Any]]) -> None:
    directory = tmp_path_factory.mktemp("state")
    saved = _apply(_store(directory), ops)
    # a restarted node (a new store object, no witness) reads the same state
    loaded = _store(directory).load(5, witnessed=len(saved.charges)) if ops else None
    if loaded is not None:
        assert loaded == saved
        expected: list[Any] = []
        for charge in saved.charges:
            expected = compose(expected, list(charge.rows))
        assert loaded.history == expected
        # in-flight charges count in full
        assert sum(n for _, _, n in loaded.history) == sum(
            n for c in saved.charges for _, _, n in c.rows)
    assert not list(directory.rglob("*.tmp"))


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations.filter(bool), where=st.floats(0, 1, exclude_max=True),
       bit=st.integers(0, 7))
def test_a_corrupted_state_file_never_loads_as_another_state(
        tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, Any]], where: float,
        bit: int) -> None:
    directory = tmp_path_factory.mktemp("state")
    store = _store(directory)
    saved = _apply(store, ops)
    raw = bytearray(store.path.read_bytes())
    raw[int(where * len(raw))] ^= 1 << bit
    store.path.write_bytes(bytes(raw))
    try:
        loaded = _store(directory).load(9)
    except NodeStateError as exc:
        assert exc.rule is NodeStateRule.CORRUPT and exc.client_id == 3 and exc.fl_round == 9
        assert str(store.path) in str(exc)
    else:  # a flip that parses to the same values ("1e-05" -> "1E-05") is harmless
        assert loaded == saved


def test_truncated_foreign_and_corrupt_index_files_are_refused(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _apply(store, [("charge", [(1.1, 0.5, 2)]), ("settle", [(1.1, 0.5, 2)])])
    good = store.path.read_bytes()
    for bad in (good[: len(good) // 2], b"", b"\xff\xfe", b"[]", b'{"format": 1}'):
        store.path.write_bytes(bad)
        with pytest.raises(NodeStateError) as caught:
            store.load(2)
        assert caught.value.rule is NodeStateRule.CORRUPT
    # another client's intact file copied over this one
    other = _store(tmp_path, client=4)
    _apply(other, [("charge", [(1.1, 0.5, 2)])])
    store.path.write_bytes(other.path.read_bytes())
    with pytest.raises(NodeStateError, match="client 4") as caught:
        store.load(2)
    assert caught.value.rule is NodeStateRule.CORRUPT
    store.path.write_bytes(good)
    assert store.load(2).history == [(1.1, 0.5, 2)]
    store.index_path.write_bytes(b"{}")
    with pytest.raises(NodeStateError) as caught:
        store.load(2)
    assert caught.value.rule is NodeStateRule.CORRUPT


# -- the refusal rule for a missing or rolled-back file ----------------------------------


def test_a_missing_or_rolled_back_state_is_refused_not_restarted_from_zero(
        tmp_path: Path) -> None:
    store = _store(tmp_path)
    _apply(store, [("charge", [(1.1, 0.5, 2)])])
    older = store.path.read_bytes()
    state = _apply(store, [("charge", [(1.1, 0.5, 2)]), ("settle", [(1.1, 0.5, 2)])])
    assert len(state.charges) == 2

    # an older copy put back while the SuperNode runs (its witness saw 2 charges)
    store.path.write_bytes(older)
    with pytest.raises(NodeStateError) as caught:
        store.load(3, witnessed=2)
    assert caught.value.rule is NodeStateRule.LOST

    # the file deleted: the index still names it, whatever the round or flag
    store.path.unlink()
    for fl_round in (1, 3):
        with pytest.raises(NodeStateError) as caught:
            store.load(fl_round, allow_fresh=True, first_seen=1)
        assert caught.value.rule is NodeStateRule.LOST

    # the whole directory wiped (index included)
    store.index_path.unlink()
    with pytest.raises(NodeStateError):  # this SuperNode wrote charges
        store.load(3, first_seen=1, witnessed=2)
    with pytest.raises(NodeStateError, match="first saw the federation in round 3"):
        store.load(3)  # a restarted SuperNode whose first contact is round 3
    with pytest.raises(NodeStateError):
        store.load(3, first_seen=2)
    # what a wiped node cannot detect (documented): first contact in round 1,
    # or the operator's statement that it joins late
    assert store.load(3, first_seen=1).charges == ()
    assert store.load(3, allow_fresh=True).charges == ()


def test_federations_do_not_mix_and_a_restarted_node_continues(tmp_path: Path) -> None:
    key = federation_key(7, RUN)
    assert key == federation_key(7, dict(RUN))  # the same run after a restart
    assert key != federation_key(8, RUN)  # another run on the same SuperLink
    assert key != federation_key(7, {**RUN, "seed": 4})  # another SuperLink's run 7
    assert federation_key(9, {**RUN, "federation-id": "study-1"}) == "study-1"
    _apply(_store(tmp_path, key), [("charge", [(1.1, 0.5, 2)])])
    assert _store(tmp_path, key).load(2, witnessed=1).history == [(1.1, 0.5, 2)]
    assert _store(tmp_path, federation_key(8, RUN)).load(1).history == []


# -- the ClientApp: charge first, settle before anything is returned ---------------------


def _context(state_dir: Path, **node: Any) -> Context:
    return Context(run_id=7, node_id=1000,
                   node_config={"partition-id": 2, "securefl-state-dir": str(state_dir), **node},
                   state=RecordDict(), run_config=dict(RUN))


def test_the_charge_is_on_disk_before_training_and_settled_before_train_returns(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from securefl.privacy.client import PrivateClient

    context = _context(tmp_path)
    store = node_store(context)
    seen: list[tuple[ChargeStatus, ...]] = []
    original = PrivateClient.train_round

    def observed(self: PrivateClient, global_params: Any) -> Any:
        # a fresh reader (another process) sees the in-flight charge already
        fresh = NodeAccountantStore(store.directory, store.federation, store.client_id)
        seen.append(tuple(c.status for c in fresh.load(1).charges))
        return original(self, global_params)

    monkeypatch.setattr(PrivateClient, "train_round", observed)
    with server_task_identity():
        train_private_client(train_message(RUN, 1), context)
        assert seen == [(ChargeStatus.IN_FLIGHT,)]
        assert [c.status for c in store.load(2).charges] == [ChargeStatus.SETTLED]
        reply = train_private_client(train_message(RUN, 2), context)
    assert seen[1] == (ChargeStatus.SETTLED, ChargeStatus.IN_FLIGHT)
    assert reply.content.metric_records["metrics"]["dp-history"] == [1.1, 0.5, 4.0]


_KILLED_WHILE_TRAINING = """
import os, signal, sys
sys.path.insert(0, {tests!r})
from flwr.app import Context, RecordDict
from flower_harness import server_task_identity
from test_flower_client_privacy import train_message
from securefl.flower.client_train import train_private_client
from securefl.privacy.client import PrivateClient

def killed(self, global_params):
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 in the middle of the round

PrivateClient.train_round = killed
context = Context(run_id=7, node_id=1000,
                  node_config={{"partition-id": 2, "securefl-state-dir": {state!r}}},
                  state=RecordDict(), run_config={run!r})
with server_task_identity():
    train_private_client(train_message({run!r}, 1), context)
"""


def test_a_node_killed_between_charge_and_send_stays_charged(tmp_path: Path) -> None:
    script = _KILLED_WHILE_TRAINING.format(tests=str(REPO / "tests"), state=str(tmp_path),
                                           run=RUN)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO,
                          capture_output=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == -9, done.stderr.decode()[-2000:]
    context = _context(tmp_path)  # the restarted node: a fresh Context
    state = node_store(context).load(2)
    assert [(c.round, c.status) for c in state.charges] == [(1, ChargeStatus.IN_FLIGHT)]
    assert state.history == [(1.1, 0.5, 2)]
    assert not list(tmp_path.rglob("*.tmp"))
    with server_task_identity():
        reply = train_private_client(train_message(RUN, 2), context)
    # the round it may have trained in stays charged: 2 + 2 steps, never 2
    assert reply.content.metric_records["metrics"]["dp-history"] == [1.1, 0.5, 4.0]
    assert [c.status for c in node_store(context).load(3).charges] == [
        ChargeStatus.IN_FLIGHT, ChargeStatus.SETTLED]


def test_the_budget_guard_reads_the_disk(tmp_path: Path) -> None:
    run = {**RUN, "noise-multiplier": 0.0, "target-epsilon": 8.0, "num-rounds": 1}
    context = Context(run_id=7, node_id=1000,
                      node_config={"partition-id": 2, "securefl-state-dir": str(tmp_path)},
                      state=RecordDict(), run_config=run)
    with server_task_identity():
        train_private_client(train_message(run, 1), context)  # the one planned round
        # a restarted SuperNode (no Context left) still knows what it spent
        restarted = Context(run_id=7, node_id=1000, node_config=dict(context.node_config),
                            state=RecordDict(), run_config=run)
        with pytest.raises(PrivacyBudgetExceededError):
            train_private_client(train_message(run, 2), restarted)
    state = node_store(context).load(3, witnessed=2)
    assert [c.status for c in state.charges] == [ChargeStatus.SETTLED,
                                                 ChargeStatus.REFUSED_BUDGET]
    assert state.history == [state.charges[0].rows[0]]  # the refusal spent nothing


def test_a_node_with_a_corrupt_state_drops_out_and_the_federation_goes_on(
        tmp_path: Path) -> None:
    torch.set_num_threads(1)
    run = {**RUN, "num-rounds": 1, "num-clients": 4, "hidden": 16,
           "output-dir": str(tmp_path / "out")}
    state_dir = tmp_path / "state"
    victim = NodeAccountantStore(state_dir, federation_key(7, run), 3)
    victim.path.parent.mkdir(parents=True)
    victim.path.write_bytes(b'{"charges": "gone"}')
    grid = InProcessGrid(example_app(), node_configs(4, **{"securefl-state-dir":
                                                         str(state_dir)}), run)
    with server_task_identity():
        run_federation(grid, Context(run_id=7, node_id=0, node_config={}, state=RecordDict(),
                                     run_config=run))
    errors = [reply for node, stage, _, reply in grid.replies
              if node == 1002 and stage == "masked-input-collection"]
    assert len(errors) == 1 and errors[0].has_error()
    assert "node-state-corrupt" in errors[0].error.reason
    rows = {r.client_id: r for r in read_ledger(tmp_path / "out" / "ledger.jsonl")}
    assert not rows[3].entered_sum and rows[3].dropped_at == "MASKED_INPUT_COLLECTION"
    assert all(rows[c].entered_sum for c in (1, 2, 4))
    assert victim.path.read_bytes() == b'{"charges": "gone"}'  # left for the operator
