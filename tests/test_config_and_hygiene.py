"""Configuration is validated up front; masked inputs look uniform; secrets
never show up in reprs or error messages."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import chisquare

from securefl import SecAggConfig, SecurityMode, secure_sum
from securefl.errors import (
    ConfigurationError,
    LocalProtocolError,
    RemoteProtocolError,
    Rule,
    SecureFLError,
)
from securefl.protocol import ClientSession
from tests.protocol_harness import Federation


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"num_clients": 1, "vector_length": 4}, "num_clients"),
        ({"num_clients": 5, "vector_length": 0}, "vector_length"),
        ({"num_clients": 5, "vector_length": 4, "bits": 0}, "bits"),
        ({"num_clients": 5, "vector_length": 4, "bits": 65}, "bits"),
        ({"num_clients": 5, "vector_length": 4, "threshold": 0}, "threshold"),
        ({"num_clients": 5, "vector_length": 4, "threshold": 6}, "threshold"),
        ({"num_clients": 6, "vector_length": 4, "threshold": 3, "mode": "active"}, "6/2"),
        ({"num_clients": 5, "vector_length": 4, "mode": "paranoid"}, "mode"),
        ({"num_clients": 2, "vector_length": 4, "client_ids": (1, 1)}, "duplicates"),
        ({"num_clients": 2, "vector_length": 4, "client_ids": (0, 1)}, "client ids"),
        ({"num_clients": 2, "vector_length": 4, "client_ids": (1, 2, 3)}, "num_clients"),
        ({"num_clients": 2, "vector_length": 4, "bits": True}, "bits"),
    ],
)
def test_bad_configurations_are_refused_with_a_clear_message(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        SecAggConfig(**kwargs)


def test_default_thresholds() -> None:
    assert SecAggConfig(num_clients=10, vector_length=1).t == 6
    assert SecAggConfig(num_clients=10, vector_length=1, mode=SecurityMode.ACTIVE).t == 7
    assert SecAggConfig(num_clients=2, vector_length=1).t == 2
    assert SecAggConfig(num_clients=3, vector_length=1, mode="active").mode is SecurityMode.ACTIVE


def test_error_hierarchy_has_one_root_and_h11_split() -> None:
    assert issubclass(ConfigurationError, SecureFLError)
    assert issubclass(LocalProtocolError, SecureFLError)
    assert issubclass(RemoteProtocolError, SecureFLError)
    assert not issubclass(LocalProtocolError, RemoteProtocolError)


def test_inputs_are_checked_before_anything_is_sent() -> None:
    config = SecAggConfig(num_clients=3, vector_length=4, bits=8)
    good = {c: np.zeros(4, dtype=np.uint64) for c in config.ids}
    with pytest.raises(LocalProtocolError) as info:
        secure_sum({**good, 2: np.full(4, 256, dtype=np.uint64)}, config)
    assert info.value.rule is Rule.VALUE_OUT_OF_RANGE and info.value.peer == 2
    with pytest.raises(ConfigurationError):
        secure_sum({1: good[1]}, config)
    with pytest.raises(ConfigurationError):
        secure_sum(good, config, {9: 0})  # type: ignore[dict-item]


def test_masked_input_needs_an_input_and_keeps_state_when_missing() -> None:
    config = SecAggConfig(num_clients=3, vector_length=4)
    fed = Federation(config)
    fed.clients[1] = ClientSession(config, 1)  # no input yet
    fed.advertise()
    fed.step()
    with pytest.raises(LocalProtocolError) as info:
        fed.clients[1].handle(fed.pending[1])
    assert info.value.rule is Rule.MISSING_INPUT
    fed.clients[1].provide_input(np.arange(4, dtype=np.uint64))
    fed.inputs[1] = np.arange(4, dtype=np.uint64)
    while not fed.server.finished:
        fed.step()
    assert (fed.server.result.total == fed.expected_sum()).all()


def test_a_masked_input_is_uniform_and_fresh_every_session() -> None:
    config = SecAggConfig(num_clients=3, vector_length=200_000, bits=32)
    runs = []
    for _ in range(2):
        fed = Federation(config, inputs={c: np.zeros(200_000, dtype=np.uint64)
                                         for c in config.ids})
        fed.advertise()
        fed.step()
        replies = fed.answer()
        runs.append(replies[1].masked.astype(np.uint64))
    for masked in runs:
        low = np.bincount((masked & np.uint64(0xFF)).astype(np.int64), minlength=256)
        high = np.bincount((masked >> np.uint64(24)).astype(np.int64), minlength=256)
        assert chisquare(low).pvalue > 1e-4
        assert chisquare(high).pvalue > 1e-4
        bits = np.unpackbits(masked.astype("<u4").view(np.uint8))
        assert abs(bits.mean() - 0.5) < 0.002
    assert np.count_nonzero(runs[0] == runs[1]) < 10  # fresh masks every session


def test_secrets_do_not_appear_in_reprs_or_errors() -> None:
    config = SecAggConfig(num_clients=3, vector_length=4)
    fed = Federation(config)
    fed.advertise()
    fed.step()
    client = fed.clients[1]
    secrets = [client._s.private_bytes().hex(), client._c.private_bytes().hex(),
               client._seed.hex()]
    texts = [repr(client), repr(client._s), repr(client._c), repr(fed.server), repr(config)]
    texts += [repr(m) for m in fed.pending.values()]
    replies = fed.answer()
    texts += [repr(r) for r in replies.values()]
    fed.close()
    replies = fed.answer()
    texts += [repr(r) for r in replies.values()]
    for text in texts:
        for secret in secrets:
            assert secret[:16] not in text
    assert not hasattr(client, "_seed")  # wiped once done
