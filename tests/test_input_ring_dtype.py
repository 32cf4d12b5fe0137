"""A client holds its input in the ring's dtype (not a uint64 copy): the
check converts exactly into the ring's dtype, into a copy of the caller's
vector."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.hazmat.prg import ring_dtype
from securefl.protocol import SecAggConfig
from securefl.protocol.client import ClientSession
from securefl.protocol.validation import check_input_vector


@settings(max_examples=40, deadline=None)
@given(bits=st.integers(1, 64), data=st.data())
def test_check_converts_exactly_into_the_ring_dtype(bits: int, data: st.DataObject) -> None:
    config = SecAggConfig(num_clients=3, vector_length=5, bits=bits)
    values = data.draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=5, max_size=5))
    given_dtype = data.draw(st.sampled_from(
        [d for d in (np.uint8, np.uint16, np.uint32, np.uint64) if np.iinfo(d).bits >= bits]))
    vector = np.array(values, dtype=given_dtype)
    out = check_input_vector(vector, config, 1, local=True, dtype=ring_dtype(bits))
    assert out.dtype == ring_dtype(bits)
    assert [int(x) for x in out] == values
    assert not np.shares_memory(out, vector)


def test_client_keeps_its_input_in_the_ring_dtype() -> None:
    config = SecAggConfig(num_clients=3, vector_length=4, bits=12)
    client = ClientSession(config, 1)
    given_vector = np.array([1, 2, 4095, 0], dtype=np.uint64)
    client.provide_input(given_vector)
    # the private copy the client masks in R2 (a SealableVector's working array)
    held = client._input.array if client._input is not None else None
    assert held is not None and held.dtype == np.uint16
    assert held.tolist() == [1, 2, 4095, 0]
    given_vector[0] = 7  # the caller reusing its buffer does not change the input
    assert held[0] == 1
