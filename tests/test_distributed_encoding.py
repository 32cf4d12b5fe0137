"""The user-level encoding: clip, public-seed Hadamard rotation, conditional
randomized rounding, ring, modular clipping, un-rotation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.encoding import sum_vectors
from securefl.errors import ConfigurationError, EncodingError
from securefl.privacy.distributed_encoding import (
    RotatedCodec,
    fwht,
    next_power_of_two,
    rotation_signs,
    rounded_norm_bound_sq,
)

SEED = bytes(range(32))


def _hadamard(d: int) -> np.ndarray:
    h = np.ones((1, 1))
    while h.shape[0] < d:
        h = np.block([[h, h], [h, -h]])
    return h


@given(st.integers(0, 7), st.data())
@settings(max_examples=30, deadline=None)
def test_fwht_is_the_sylvester_hadamard_matrix_and_its_own_inverse(log_d, data):
    d = 1 << log_d
    x = np.array(data.draw(st.lists(st.floats(-1e3, 1e3), min_size=d, max_size=d)))
    assert np.allclose(fwht(x), _hadamard(d) @ x, atol=1e-9)
    assert np.allclose(fwht(fwht(x)) / d, x, atol=1e-9)


def test_fwht_refuses_a_length_that_is_not_a_power_of_two():
    with pytest.raises(EncodingError, match="power-of-two"):
        fwht(np.zeros(6))


def test_rotation_signs_are_a_public_function_of_the_seed():
    a = rotation_signs(SEED, 4096)
    assert np.array_equal(a, rotation_signs(SEED, 4096))
    assert set(np.unique(a)) == {-1.0, 1.0}
    assert abs(a.mean()) < 0.1
    assert not np.array_equal(a, rotation_signs(bytes(32), 4096))
    with pytest.raises(ConfigurationError, match="16 bytes"):
        rotation_signs(b"short", 8)


@given(st.integers(1, 300), st.floats(0.1, 10.0), st.binary(min_size=16, max_size=32))
@settings(max_examples=40, deadline=None)
def test_rotation_is_orthogonal_and_inverted(d0, scale, seed):
    codec = RotatedCodec(num_values=d0, clip=1.0, gamma=100.0, bits=32)
    x = np.random.default_rng(d0).normal(size=d0) * scale
    y = codec.rotate(x, seed)
    assert y.shape == (next_power_of_two(d0),)
    assert math.isclose(np.linalg.norm(y), np.linalg.norm(x), rel_tol=1e-9)
    assert np.allclose(codec.unrotate(y, seed), x, atol=1e-9 * scale)


@given(
    d0=st.integers(1, 200),
    clients=st.integers(1, 12),
    gamma=st.floats(1.0, 500.0),
    bits=st.integers(24, 40),
    seed=st.binary(min_size=16, max_size=16),
    data_seed=st.integers(0, 2**32 - 1),
)
@settings(max_examples=40, deadline=None)
def test_rotate_encode_sum_decode_unrotate_is_exact(d0, clients, gamma, bits, seed, data_seed):
    """Without noise the ring sum is exactly the integer sum of the rounded
    vectors, its decoding is the un-rotation of that sum, and it is within the
    stated rounding error of the sum of the clipped updates."""
    codec = RotatedCodec(num_values=d0, clip=2.0, gamma=gamma, bits=bits)
    rng = np.random.default_rng(data_seed)
    updates = [rng.normal(size=d0) * rng.choice([0.01, 1.0, 10.0]) for _ in range(clients)]
    encoded = [codec.encode(u, seed) for u in updates]
    rounded = [codec.signed(e.vector) for e in encoded]  # each vector alone fits
    exact = np.sum(rounded, axis=0)
    total = sum_vectors([e.vector for e in encoded], bits)
    assert np.array_equal(codec.signed(total), exact)
    decoded = codec.decode_sum(total, seed)
    assert np.array_equal(decoded, codec.unrotate(exact.astype(np.float64) / gamma, seed))
    clipped = np.sum([codec.clip_values(u)[0] for u in updates], axis=0)
    assert np.linalg.norm(decoded - clipped) <= codec.rounding_error(clients)
    for e, r in zip(encoded, rounded, strict=True):
        assert int(np.dot(r, r)) <= codec.norm_bound_sq
        assert e.attempts >= 1


@given(d0=st.integers(1, 500), gamma=st.floats(0.5, 1000.0), beta=st.sampled_from(
    [0.0, 0.01, math.exp(-0.5), 0.9]))
@settings(max_examples=40, deadline=None)
def test_every_accepted_rounding_is_within_the_norm_bound(d0, gamma, beta):
    codec = RotatedCodec(num_values=d0, clip=1.0, gamma=gamma, bits=40, beta=beta)
    update = np.random.default_rng(d0).normal(size=d0)
    r = codec.signed(codec.encode(update, SEED).vector)
    assert int(np.dot(r, r)) <= codec.norm_bound_sq
    assert codec.norm_bound_sq <= (gamma + math.sqrt(codec.padded)) ** 2
    assert codec.l1_sensitivity >= np.abs(r).sum()


def test_unlucky_rounding_that_would_break_the_sensitivity_is_never_sent():
    """The attack: randomness that rounds every coordinate up (as a biased or
    hostile source would) makes plain randomized rounding exceed Delta_2, so
    the accounted sensitivity would be wrong.  Conditional rounding redraws
    and, when the source never cooperates, refuses to send anything."""
    codec = RotatedCodec(num_values=1000, clip=1.0, gamma=20.0, bits=32)
    update = np.random.default_rng(0).normal(size=1000)
    scaled = codec.gamma * codec.rotate(codec.clip_values(update)[0], SEED)
    all_up = np.floor(scaled) + 1
    assert np.dot(all_up, all_up) > codec.norm_bound_sq  # unconditional rounding breaks it
    always_up = lambda n: np.zeros(n, dtype=np.uint64)  # noqa: E731
    with pytest.raises(EncodingError, match="refused 1000 attempts"):
        codec.round_scaled(scaled, always_up)
    # honest randomness is accepted (with probability >= 1 - beta per attempt)
    rounded, attempts = codec.round_scaled(scaled)
    assert int(np.dot(rounded, rounded)) <= codec.norm_bound_sq and attempts < 50


def test_rounding_randomness_is_fresh_per_encoding():
    codec = RotatedCodec(num_values=512, clip=1.0, gamma=3.0, bits=32)
    update = np.random.default_rng(1).normal(size=512)
    a = codec.encode(update, SEED).vector
    b = codec.encode(update, SEED).vector
    assert not np.array_equal(a, b)  # 512 independent fair-ish coins


def test_rounding_is_unbiased_per_coordinate():
    """E[round(z)] = z for randomized rounding; conditioning on the norm bound
    (accepted with probability >= 1 - beta) biases it only slightly."""
    codec = RotatedCodec(num_values=64, clip=1.0, gamma=50.0, bits=32, beta=0.0)
    update = np.random.default_rng(2).normal(size=64)
    scaled = codec.gamma * codec.rotate(codec.clip_values(update)[0], SEED)
    draws = np.mean([codec.round_scaled(scaled)[0] for _ in range(2000)], axis=0)
    assert np.max(np.abs(draws - scaled)) < 5 * 0.5 / math.sqrt(2000)


def test_modular_clipping_reads_the_signed_representative():
    codec = RotatedCodec(num_values=4, clip=1.0, gamma=10.0, bits=16)
    ints = np.array([-1, -32768, 32767, 0], dtype=np.int64)
    assert np.array_equal(codec.signed(codec.to_ring(ints)), ints)
    wrapped = codec.to_ring(np.array([32767, 0, 0, 0])) + codec.to_ring(np.array([1, 0, 0, 0]))
    assert codec.signed(wrapped & np.uint64(0xFFFF))[0] == -32768  # wraps, read signed
    with pytest.raises(EncodingError, match="outside Z_2"):
        codec.signed(np.array([1 << 16, 0, 0, 0], dtype=np.uint64))
    with pytest.raises(EncodingError, match="shape"):
        codec.signed(np.zeros(3, dtype=np.uint64))


@pytest.mark.parametrize("clip", [0, -1.0, math.inf, math.nan])
def test_a_norm_bound_that_is_not_positive_is_refused_up_front(clip):
    with pytest.raises(ConfigurationError, match="clip must be a positive finite number"):
        RotatedCodec(num_values=10, clip=clip, gamma=1.0, bits=16)


def test_a_ring_too_small_for_one_clients_norm_is_refused_naming_the_fix():
    with pytest.raises(ConfigurationError) as info:
        RotatedCodec(num_values=1000, clip=1.0, gamma=1e4, bits=12)
    message = str(info.value)
    assert "beyond the signed range 2^11" in message and "bits >= 15" in message
    RotatedCodec(num_values=1000, clip=1.0, gamma=1e4, bits=15)


def test_refused_updates_send_nothing():
    """Only what is the same for every client is refused (a wrong size or
    dtype); a NaN is encoded as the zero vector (tests/test_nonfinite_gradients.py)."""
    codec = RotatedCodec(num_values=3, clip=1.0, gamma=10.0, bits=16)
    with pytest.raises(EncodingError, match="expected 3"):
        codec.encode(np.zeros(4), SEED)
    with pytest.raises(EncodingError, match="dtype"):
        codec.encode(np.zeros(3, dtype=np.int64), SEED)


def test_norm_bound_formula():
    c, d, beta = 100.0, 1024, math.exp(-0.5)
    probable = c * c + d / 4 + math.sqrt(2 * math.log(1 / beta)) * (c + math.sqrt(d) / 2)
    assert rounded_norm_bound_sq(c, d, beta) == math.floor(probable)
    assert rounded_norm_bound_sq(c, d, 0.0) == math.floor((c + 32) ** 2)


def test_through_the_secure_aggregation_protocol_with_dropouts():
    """The ring vectors go through the real protocol (masks, a dropout after
    sharing keys): the unmasked sum decodes to exactly the survivors'
    rounded integer sum."""
    from securefl.protocol import Round, SecAggConfig
    from securefl.protocol.inmemory import secure_sum

    codec = RotatedCodec(num_values=50, clip=1.0, gamma=300.0, bits=20)
    rng = np.random.default_rng(7)
    config = SecAggConfig(num_clients=5, vector_length=codec.padded, bits=20, threshold=3)
    encoded = {cid: codec.encode(rng.normal(size=50), SEED).vector for cid in config.ids}
    result = secure_sum(encoded, config, {config.ids[0]: Round.MASKED_INPUT_COLLECTION})
    exact = np.sum([codec.signed(encoded[c]) for c in result.survivors], axis=0)
    assert len(result.survivors) == 4
    assert np.array_equal(codec.signed(result.total), exact)


def test_skellam_noise_in_the_ring_decodes_to_noise_of_variance_v_over_gamma_squared():
    """Noise added in the ring and read back by modular clipping and
    un-rotation keeps its variance (the rotation is orthogonal): the decoded
    error per coordinate has variance V / gamma^2."""
    from securefl.hazmat.noise import skellam_fresh

    codec = RotatedCodec(num_values=4096, clip=1.0, gamma=100.0, bits=32)
    variance = 2500.0
    noise = codec.to_ring(skellam_fresh(variance, codec.padded))
    error = codec.decode_sum(noise, SEED)
    expected = variance / codec.gamma**2
    # sample variance of 4096 values: relative standard error sqrt(2 / 4096) = 2.2%
    assert abs(error.var() / expected - 1.0) < 0.12
