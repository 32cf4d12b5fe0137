"""Adversarial review of keeping masked inputs without a copy (h/bigm:
``storage.frozen``: a read-only array that owns its memory is kept as it is).

Read-only is not immutable: numpy lets whoever holds an array that owns its
memory set ``flags.writeable = True`` again and write into it.  The server
adds client 2's masked input into its running sum on receipt; a late
complaint (client 5 reports 2) then makes it subtract the vector it kept.  If
what it kept is the caller's array and the caller reuses that buffer after
``receive`` returned (the contract the store's copy existed for: "the caller
may reuse its buffer"), the subtraction uses other numbers and the sum is
wrong, silently.  The promise: the exact sum of the survivors, or a typed
error.  (Held before h/bigm, whose store copied every vector; broken by the
zero-copy store for the in-memory case; fixed by h/spill: ``frozen`` now
accepts only read-only views of immutable ``bytes``.)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from securefl import Round, SecAggConfig
from securefl.errors import SecureFLError
from securefl.hazmat.randomness import DeterministicRandom
from securefl.protocol.inmemory import SessionDriver
from securefl.protocol.messages import MaskedInput, ShareDelivery
from securefl.wire import codec

CONFIG = SecAggConfig(num_clients=7, vector_length=50, bits=20, threshold=3)


class _Reuse(SessionDriver):
    """Client 5's ciphertext from 2 is broken (5 reports 2 in its masked
    input, sent after 2's).  Client 2's masked input reaches the server as a
    read-only array owning its memory (``via_wire``: decoded from its bytes),
    which the caller overwrites once ``receive`` returned."""

    def __init__(self, inputs: dict[int, np.ndarray], via_wire: bool) -> None:
        super().__init__(CONFIG, inputs, rng=DeterministicRandom(bytes(32)))
        self.via_wire = via_wire
        self.reused = False

    def to_client(self, rnd: Round, cid: int, message: Any) -> Any:
        if isinstance(message, ShareDelivery) and cid == 5:
            cts = dict(message.ciphertexts)
            cts[2] = bytes(len(cts[2]))
            message = dataclasses.replace(message, ciphertexts=cts)
        return message

    def server_receive(self, rnd: Round, cid: int, message: Any) -> None:
        if not (isinstance(message, MaskedInput) and cid == 2):
            self.server.receive(message)
            return
        if self.via_wire:
            message = codec.decode(codec.encode(message), config=CONFIG)
            buffer = message.masked
            if not buffer.flags.owndata:
                buffer = None  # a view of the message's bytes: nothing to reuse
        else:
            buffer = np.array(message.masked, copy=True)
            buffer.flags.writeable = False  # lent out read-only
            message = dataclasses.replace(message, masked=buffer)
        self.server.receive(message)
        if buffer is not None:
            buffer.flags.writeable = True  # the caller takes its buffer back
            buffer[:] = 12345
            self.reused = True


@pytest.mark.parametrize("via_wire", [
    pytest.param(False, id="in-memory"),
    pytest.param(True, id="decoded")])
def test_reusing_a_read_only_buffer_after_receive_never_gives_a_wrong_sum(via_wire: bool) -> None:
    gen = np.random.default_rng(9)
    inputs = {c: gen.integers(0, 2**20, CONFIG.vector_length, dtype=np.uint64)
              for c in CONFIG.ids}
    driver = _Reuse(inputs, via_wire)
    try:
        driver.run()
    except SecureFLError:
        return  # refusing is allowed; a wrong sum is not
    result = driver.result
    assert set(result.excluded) == {2, 5}
    expected = sum(inputs[c] for c in result.survivors) & np.uint64(2**20 - 1)
    assert np.array_equal(result.total, expected)
    if not via_wire:
        assert driver.reused
