"""One client-update path (issue 12): client_update runs the guard, the
durable charge, DP-SGD and the encoding in that order, returns typed refusals,
and rounds with randomness the server cannot regenerate (one derivation,
privacy.rounding)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from securefl.encoding import EncodedUpdate, FixedPointCodec, PlainUpdate
from securefl.errors import ConfigurationError, EncodingError, PrivacyBudgetExceededError
from securefl.federation.client_update import Admission, admit, client_update
from securefl.federation.server import AggregationMode
from securefl.privacy import DPConfig, PrivateClient
from securefl.privacy.ledger import Participation
from securefl.privacy.noise import SeededRandomness
from securefl.privacy.rounding import OsRounding, rounding_randomness

torch.set_num_threads(1)
SEED = 11


def _client(cid: int = 2, **config: Any) -> PrivateClient:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    values = {"noise_multiplier": 1.0, "sample_rate": 0.25, "batch_size": 15, **config}
    return PrivateClient(cid, model, x, y, DPConfig(**values), seed=SEED)


def _global(client: PrivateClient) -> list[torch.Tensor]:
    return [p.detach().clone() for p in client.parameters()]


def _codec(client: PrivateClient) -> FixedPointCodec:
    return FixedPointCodec(shapes=tuple(tuple(p.shape) for p in client.parameters()),
                           bits=32, frac_bits=16, clip=4.0, num_clients=5)


def test_guard_charge_train_encode_in_that_order() -> None:
    client = _client()
    codec = _codec(client)
    charged: list[tuple[Admission, int]] = []

    def charge(admission: Admission) -> None:
        charged.append((admission, len(client.history)))  # nothing trained yet

    update = client_update(client, _global(client), codec, 1, AggregationMode.SECURE,
                           charge=charge)
    assert [(a.planned, rows) for a, rows in charged] == [(((1.0, 0.25, 4),), 0)]
    assert update.refusal is None and update.error is None and update.detail == ""
    assert isinstance(update.encoded, EncodedUpdate) and update.steps == 4
    assert client.history == charged[0][0].charged_history([])
    plain = client_update(client, _global(client), codec, 2, AggregationMode.PLAIN)
    assert isinstance(plain.encoded, PlainUpdate) and client.history == [(1.0, 0.25, 8)]


def test_a_charge_that_fails_trains_nothing() -> None:
    client = _client()

    def charge(admission: Admission) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        client_update(client, _global(client), _codec(client), 1, AggregationMode.SECURE,
                      charge=charge)
    assert client.history == []


def test_budget_refusal_spends_nothing_and_is_typed() -> None:
    client = _client(noise_multiplier=None, target_epsilon=2.0, planned_rounds=1)
    codec = _codec(client)
    assert client_update(client, _global(client), codec, 1, AggregationMode.SECURE).refusal \
        is None
    calls: list[Admission] = []
    refused = client_update(client, _global(client), codec, 2, AggregationMode.SECURE,
                            charge=calls.append)
    assert refused.refusal is Participation.REFUSED_BUDGET and refused.steps == 0
    assert isinstance(refused.error, PrivacyBudgetExceededError) and refused.encoded is None
    assert refused.detail == str(refused.error) and calls == []
    assert client.history == [(client.noise_multiplier, 0.25, 4)]


def test_encoding_refusal_keeps_the_steps_spent() -> None:
    client = _client()
    bad = [torch.full_like(p, float("nan")) for p in _global(client)]
    update = client_update(client, bad, _codec(client), 1, AggregationMode.SECURE)
    assert update.refusal is Participation.ENCODING_ERROR and update.steps == 4
    assert isinstance(update.error, EncodingError)
    assert update.detail.startswith("encoding refused: ")
    assert client.history == [(1.0, 0.25, 4)]  # it trained: spent


def test_a_stale_or_foreign_admission_is_refused() -> None:
    client, other = _client(2), _client(3)
    admission = admit(client)
    with pytest.raises(ConfigurationError):
        client_update(other, _global(other), _codec(other), 1, AggregationMode.SECURE,
                      admission=admission)
    client_update(client, _global(client), _codec(client), 1, AggregationMode.SECURE,
                  admission=admission)
    with pytest.raises(ConfigurationError):  # it trained since: admit again
        client_update(client, _global(client), _codec(client), 2, AggregationMode.SECURE,
                      admission=admission)


def test_an_admission_is_stale_once_the_client_trained_even_in_one_history_row() -> None:
    """Attack (rev-ledger review): Opacus merges rounds at the same sigma and
    q into ONE history row, so an admission that checked the number of rows
    was stale-proof only for a client's first round.  An admission of round 2
    reused for round 3 was accepted: round 3 trained without the budget
    guard, to epsilon 8.98 over a budget of 8 (a fresh admission refuses)."""
    client = _client(2, sample_rate=0.5, epsilon_budget=8.0)
    codec = _codec(client)
    client_update(client, _global(client), codec, 1, AggregationMode.SECURE)
    second = admit(client)
    client_update(client, _global(client), codec, 2, AggregationMode.SECURE, admission=second)
    assert len(client.history) == len(second.history) == 1  # one merged row
    with pytest.raises(PrivacyBudgetExceededError):
        admit(client)
    with pytest.raises(ConfigurationError, match="admit it again"):
        client_update(client, _global(client), codec, 3, AggregationMode.SECURE,
                      admission=second)
    assert client.history == [(1.0, 0.5, 4)]  # round 3 trained nothing


@settings(max_examples=10, deadline=None)
@given(round_number=st.integers(1, 50))
def test_the_server_cannot_regenerate_the_rounding(round_number: int) -> None:
    """The attack: the server knows the run seed, the round and the client id
    and regenerates the rounding stream the seeded code used; it then knows
    the low bits of the update.  It works against an insecure-seeded client
    (the test has teeth) and fails against the default one."""
    for insecure in (True, False):
        client = _client(insecure_reproducible_noise=insecure)
        codec = _codec(client)
        update = client_update(client, _global(client), codec, round_number,
                               AggregationMode.SECURE)
        assert update.result is not None and isinstance(update.encoded, EncodedUpdate)
        guess = SeededRandomness(SEED, client.client_id).for_round(round_number,
                                                                   codec.num_values)
        regenerated = codec.encode(update.result.update, guess,  # type: ignore[arg-type]
                                   weight=update.result.weight)
        same = np.array_equal(regenerated.vector, update.encoded.vector)
        assert same is insecure


def test_one_rounding_derivation() -> None:
    assert isinstance(rounding_randomness(None, 3, 10), OsRounding)
    client = _client()
    assert isinstance(client.rounding(3, 10), OsRounding)  # the seed is never used
    seeded = _client(insecure_reproducible_noise=True)
    first = seeded.rounding(3, 10).random(10)
    assert np.array_equal(first, _client(insecure_reproducible_noise=True)
                          .rounding(3, 10).random(10))
    draws = OsRounding().random(4096)
    assert draws.dtype == np.float64 and draws.min() >= 0.0 and draws.max() < 1.0
    assert np.all(draws * 2.0**53 == np.floor(draws * 2.0**53))  # 53-bit fractions
    assert len(np.unique(draws)) == draws.size
