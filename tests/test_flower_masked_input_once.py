"""A server that sends a node the masked-input message a second time, in the
same session.

The mod rebuilt the session (which had already sent its masked input) and
called the ClientApp's ``train`` before the session refused the message: the
node trained again, and the example's ``train`` charged its on-disk
accountant a second time for the same federation round, for an update that
was never sent.  A server could drain a node's privacy budget that way, one
full round per repeated message.  The mod now refuses a masked-input message
in any state but the one that awaits it, before ``train`` runs; the error
reply is the one the session gave (rule
``session-already-finished-or-aborted``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr", reason="flwr is not installed (pip install 'securefl[flower]')")

from flower_harness import InProcessGrid, node_configs, server_task_identity
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from securefl.encoding import FixedPointCodec
from securefl.flower import SecureAggregationSettings, SecureAggregationWorkflow
from securefl.flower.mod import securefl_mod
from securefl.flower.setup import RECORD, Key, Stage

NODES = 4
TWICE = 1000


class _Repeating(InProcessGrid):
    """Delivers node ``TWICE``'s masked-input message twice; the round goes
    on with the first reply."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.repeated: list[Message] = []

    def _deliver(self, msg: Message) -> str:
        mid = super()._deliver(msg)
        stage = str(msg.content.config_records[RECORD][Key.STAGE])
        if stage == Stage.MASKED_INPUT_COLLECTION.value and msg.metadata.dst_node_id == TWICE:
            first = self._replies[mid]
            again = Message(msg.content, msg.metadata.dst_node_id, msg.metadata.message_type,
                            group_id=msg.metadata.group_id)
            self.repeated.append(self._replies.pop(super()._deliver(again)))
            self._replies[mid] = first
        return mid


def test_a_repeated_masked_input_message_does_not_train_again() -> None:
    calls: dict[int, int] = {}
    app = ClientApp(mods=[securefl_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        calls[context.node_id] = calls.get(context.node_id, 0) + 1
        arrays = msg.content.array_records["arrays"].to_numpy_ndarrays()
        return Message(RecordDict({"arrays": ArrayRecord([a + np.float32(0.25)
                                                          for a in arrays])}), reply_to=msg)

    codec = FixedPointCodec(shapes=[(3,)], bits=32, frac_bits=8, clip=4.0,
                            num_clients=NODES, max_weight=1)
    grid = _Repeating(app, node_configs(NODES), {})
    workflow = SecureAggregationWorkflow(SecureAggregationSettings(threshold=3, timeout=5.0),
                                         codec)
    with server_task_identity():
        workflow.run_round(grid, 1, ArrayRecord([np.zeros(3, np.float32)]), ConfigRecord({}))
    assert calls == {node: 1 for node in range(1000, 1000 + NODES)}
    [reply] = grid.repeated
    assert reply.has_error()
    assert "session-already-finished-or-aborted" in reply.error.reason
