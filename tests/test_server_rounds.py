"""The server's round and state are derived from its per-client records (the
round table in ``securefl/protocol/server.py``); these properties pin what that
derivation must keep: a round stays open until it is closed even when every
client already answered it, a message of a closed round is refused as late and
changes nothing, and the session's state follows the table to FINISHED or
ABORTED."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securefl import Round, SecAggConfig, SecurityMode
from securefl.errors import AbortError, LocalProtocolError, RemoteProtocolError, Rule
from securefl.protocol.inmemory import SessionDriver
from securefl.protocol.server import ServerState

_STATE = {
    Round.ADVERTISE_KEYS: ServerState.COLLECTING_ADVERTISE_KEYS,
    Round.SHARE_KEYS: ServerState.COLLECTING_SHARE_KEYS,
    Round.MASKED_INPUT_COLLECTION: ServerState.COLLECTING_MASKED_INPUTS,
    Round.CONSISTENCY_CHECK: ServerState.COLLECTING_CONSISTENCY_CHECKS,
    Round.UNMASKING: ServerState.COLLECTING_UNMASKING_RESPONSES,
}


class _Watched(SessionDriver):
    """Checks the server's derived round against the driver's own count of
    closed rounds at every step, and replays each answered message once its
    round closed."""

    def __init__(self, config: SecAggConfig, dropouts: dict[int, Round]) -> None:
        inputs = {c: np.zeros(config.vector_length, dtype=np.uint64) for c in config.ids}
        super().__init__(config, inputs, dropouts=dropouts)
        self.replays = 0

    def server_receive(self, rnd: Round, cid: int, message: Any) -> None:
        super().server_receive(rnd, cid, message)
        assert self.server.round is rnd
        assert self.server.state is _STATE[rnd]

    def server_close(self, rnd: Round) -> Any:
        # every client that answers has answered: the round is still open
        assert self.server.round is rnd
        out = super().server_close(rnd)
        if self.server.finished:
            assert self.server.round is None
            assert self.server.state is ServerState.FINISHED
            return out
        assert self.server.round is not rnd
        before = self.server.statuses
        for cid, message in self.sent.get(rnd, {}).items():
            if not self.answers(cid, rnd):
                continue
            with pytest.raises(RemoteProtocolError) as refused:
                self.server.receive(message)
            assert refused.value.rule is Rule.WRONG_ROUND
            self.replays += 1
            break
        assert self.server.statuses == before
        return out


@st.composite
def schedules(draw: st.DrawFn) -> tuple[SecAggConfig, dict[int, Round]]:
    n = draw(st.integers(3, 8))
    mode = draw(st.sampled_from(list(SecurityMode)))
    t = draw(st.integers(n // 2 + 1 if mode is SecurityMode.ACTIVE else 2, n))
    config = SecAggConfig(num_clients=n, vector_length=3, bits=16, threshold=t, mode=mode)
    dropouts = {c: draw(st.sampled_from(list(Round))) for c in config.ids
                if draw(st.booleans()) and draw(st.booleans())}
    return config, dropouts


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedules())
def test_round_is_derived_and_closed_rounds_refuse_late_messages(schedule) -> None:  # type: ignore[no-untyped-def]
    config, dropouts = schedule
    driver = _Watched(config, dropouts)
    try:
        driver.run()
    except AbortError:
        assert driver.server.round is None
        assert driver.server.state is ServerState.ABORTED
        with pytest.raises(LocalProtocolError):
            driver.server.close_round()
        return
    assert driver.replays >= 1
    with pytest.raises(LocalProtocolError):
        driver.server.receive(driver.sent[Round.ADVERTISE_KEYS][config.ids[0]])
