"""Properties of the fixed-point encoding: round trips, unbiased rounding,
exact sums, overflow refusal, and refusal of bad inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from securefl.encoding import (
    FixedPointCodec,
    max_frac_bits,
    min_bits,
    sum_vectors,
)
from securefl.errors import ConfigurationError, EncodingError

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False,
                   width=64)


@st.composite
def codecs_and_updates(draw: st.DrawFn) -> tuple[FixedPointCodec, list[list[np.ndarray]],
                                                  list[int]]:
    bits = draw(st.integers(min_value=8, max_value=64))
    n = draw(st.integers(min_value=1, max_value=12))
    clip = draw(st.floats(min_value=0.01, max_value=100.0))
    fits = max_frac_bits(bits=bits, clip=clip, num_clients=n)
    frac = draw(st.integers(min_value=max(fits - 8, -4), max_value=fits))
    shapes = draw(st.lists(hnp.array_shapes(min_dims=1, max_dims=2, max_side=5),
                           min_size=1, max_size=3))
    max_weight = draw(st.integers(min_value=1, max_value=min(1000, (2 ** (bits - 1) - 1) // n)))
    codec = FixedPointCodec(shapes=tuple(shapes), bits=bits, frac_bits=frac, clip=clip,
                            num_clients=n, max_weight=max_weight)
    updates = [
        [draw(hnp.arrays(np.float64, s, elements=finite)) for s in shapes] for _ in range(n)
    ]
    weights = [draw(st.integers(min_value=1, max_value=max_weight)) for _ in range(n)]
    return codec, updates, weights


@settings(max_examples=150, deadline=None)
@given(codecs_and_updates(), st.integers(min_value=0, max_value=2**32))
def test_sum_of_encodings_decodes_to_the_sum_within_rounding(case, seed) -> None:
    codec, updates, weights = case
    rng = np.random.default_rng(seed)
    encoded = [codec.encode(u, rng, weight=w) for u, w in zip(updates, weights, strict=True)]
    for e in encoded:
        assert e.vector.dtype == np.uint64
        assert e.vector.shape == (codec.vector_length,)
        if codec.bits < 64:
            assert int(e.vector.max()) < 2**codec.bits
    decoded = codec.decode_sum(sum_vectors([e.vector for e in encoded], codec.bits))
    assert decoded.weight_total == sum(weights)
    n = len(updates)
    for i, shape in enumerate(codec.shapes):
        expected = sum(np.clip(u[i], -codec.clip, codec.clip) * (w / codec.max_weight)
                       for u, w in zip(updates, weights, strict=True))
        assert decoded.tensors[i].shape == shape
        # each client's stochastic rounding moves a value by less than one step
        bound = n * codec.resolution * (1 + 1e-9) + 1e-12 * n * codec.clip
        assert np.all(np.abs(decoded.tensors[i] - expected) <= bound)


@settings(max_examples=100, deadline=None)
@given(codecs_and_updates())
def test_clipping_is_counted(case) -> None:
    codec, updates, weights = case
    rng = np.random.default_rng(0)
    for update, weight in zip(updates, weights, strict=True):
        encoded = codec.encode(update, rng, weight=weight)
        expected = sum(int(np.count_nonzero(np.abs(t) > codec.clip)) for t in update)
        assert encoded.num_clipped == expected
        assert encoded.num_values == codec.num_values
        assert codec.encode_plain(update, weight=weight).num_clipped == expected


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=2, max_value=64), st.integers(min_value=1, max_value=1000),
       st.floats(min_value=1e-3, max_value=1e3), st.integers(min_value=-8, max_value=60))
def test_bit_budget_refuses_exactly_the_configurations_that_can_overflow(
        bits, n, clip, frac) -> None:
    worst = n * math.ceil(clip * 2.0**frac)
    too_precise = clip * 2.0**frac >= 2.0**52
    if worst > 2 ** (bits - 1) - 1 or too_precise:
        with pytest.raises(EncodingError) as info:
            FixedPointCodec(shapes=((3,),), bits=bits, frac_bits=frac, clip=clip, num_clients=n)
        message = str(info.value)
        assert "frac" in message  # names the fix
        if not too_precise:
            assert str(n) in message and str(bits) in message
    else:
        codec = FixedPointCodec(shapes=((3,),), bits=bits, frac_bits=frac, clip=clip,
                                num_clients=n)
        # the worst case really does fit: n copies of +clip and of -clip
        rng = np.random.default_rng(1)
        for sign in (1.0, -1.0):
            vectors = [codec.encode([np.full(3, sign * clip)], rng).vector for _ in range(n)]
            decoded = codec.decode_sum(sum_vectors(vectors, bits))
            assert np.allclose(decoded.tensors[0], sign * n * clip,
                               atol=n * codec.resolution, rtol=1e-12)


def test_overflow_message_names_numbers_and_fix() -> None:
    pattern = r"n=10.*frac_bits=20.*use frac_bits <= 17 or bits >= 27"
    with pytest.raises(EncodingError, match=pattern):
        FixedPointCodec(shapes=((4,),), bits=24, frac_bits=20, clip=4.0, num_clients=10)
    assert max_frac_bits(bits=24, clip=4.0, num_clients=10) == 17
    assert min_bits(frac_bits=20, clip=4.0, num_clients=10) == 27
    FixedPointCodec(shapes=((4,),), bits=24, frac_bits=17, clip=4.0, num_clients=10)
    FixedPointCodec(shapes=((4,),), bits=27, frac_bits=20, clip=4.0, num_clients=10)


def test_weights_that_could_overflow_are_refused() -> None:
    with pytest.raises(EncodingError, match="weights"):
        FixedPointCodec(shapes=((2,),), bits=16, frac_bits=4, clip=1.0, num_clients=10,
                        max_weight=10_000)


@settings(max_examples=30, deadline=None)
@given(st.floats(min_value=-3.9, max_value=3.9), st.integers(min_value=0, max_value=6))
def test_stochastic_rounding_is_unbiased(value, frac) -> None:
    codec = FixedPointCodec(shapes=((20_000,),), bits=32, frac_bits=frac, clip=4.0,
                            num_clients=1)
    rng = np.random.default_rng(7)
    decoded = codec.decode_sum(codec.encode([np.full(20_000, value)], rng).vector)
    step = codec.resolution
    values = decoded.tensors[0]
    # only the two neighbouring grid points occur ...
    assert set(np.unique(np.round((values - value) / step, 9))) <= {
        round(math.floor(value / step) - value / step, 9),
        round(math.ceil(value / step) - value / step, 9),
    } | {0.0}
    # ... and their mean is the value (standard error <= step / (2 sqrt(N)))
    assert abs(values.mean() - value) <= 5 * step / (2 * math.sqrt(20_000)) + 1e-12


def test_rounding_is_reproducible_with_the_callers_generator() -> None:
    codec = FixedPointCodec(shapes=((50,),), bits=32, frac_bits=10, clip=4.0, num_clients=3)
    x = np.linspace(-5, 5, 50)
    a = codec.encode([x], np.random.default_rng(3)).vector
    b = codec.encode([x], np.random.default_rng(3)).vector
    assert np.array_equal(a, b)


def test_twos_complement_wraparound() -> None:
    codec = FixedPointCodec(shapes=((2,),), bits=16, frac_bits=2, clip=4.0, num_clients=4)
    encoded = codec.encode([np.array([-1.0, 1.0])], np.random.default_rng(0))
    assert encoded.vector.tolist() == [2**16 - 4, 4, 1]
    total = sum_vectors([encoded.vector] * 4, 16)
    assert codec.decode_sum(total).tensors[0].tolist() == [-4.0, 4.0]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused_without_drawing(bad) -> None:
    codec = FixedPointCodec(shapes=((3,),), num_clients=2)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    with pytest.raises(EncodingError, match="NaN or infinite"):
        codec.encode([np.array([0.0, bad, 1.0])], rng)
    with pytest.raises(EncodingError, match="NaN or infinite"):
        codec.encode_plain([np.array([0.0, bad, 1.0])])
    assert rng.bit_generator.state == state


def test_wrong_shapes_dtypes_and_counts_are_refused() -> None:
    codec = FixedPointCodec(shapes=((2, 3), (4,)), num_clients=2)
    rng = np.random.default_rng(0)
    good = [np.zeros((2, 3)), np.zeros(4)]
    codec.encode(good, rng)
    with pytest.raises(EncodingError, match="shape"):
        codec.encode([np.zeros((3, 2)), np.zeros(4)], rng)
    with pytest.raises(EncodingError, match="dtype"):
        codec.encode([np.zeros((2, 3), dtype=np.int64), np.zeros(4)], rng)
    with pytest.raises(EncodingError, match="expected 2 tensors"):
        codec.encode([np.zeros((2, 3))], rng)
    with pytest.raises(EncodingError, match="expected a numpy array"):
        codec.encode([[0.0] * 6, np.zeros(4)], rng)
    with pytest.raises(EncodingError, match="weight"):
        codec.encode(good, rng, weight=2)
    with pytest.raises(EncodingError, match="shape"):
        codec.decode_sum(np.zeros(3, dtype=np.uint64))
    with pytest.raises(EncodingError, match="outside"):
        codec.decode_sum(np.full(codec.vector_length, 2**40, dtype=np.uint64))


def test_torch_tensors_are_accepted() -> None:
    codec = FixedPointCodec(shapes=((2, 2),), bits=32, frac_bits=8, clip=2.0, num_clients=1)
    t = torch.tensor([[0.5, -0.25], [3.0, -1.0]], dtype=torch.bfloat16)
    encoded = codec.encode([t], np.random.default_rng(0))
    assert encoded.num_clipped == 1
    assert codec.decode_sum(encoded.vector).tensors[0].tolist() == [[0.5, -0.25], [2.0, -1.0]]


def test_nonsense_configuration_is_refused() -> None:
    for kwargs in ({"clip": 0.0}, {"bits": 65}, {"num_clients": 0}, {"max_weight": 0},
                   {"shapes": ()}):
        args = {"shapes": ((2,),), **kwargs}
        with pytest.raises(ConfigurationError):
            FixedPointCodec(**args)


def test_average_of_a_sum_and_an_empty_sum() -> None:
    codec = FixedPointCodec(shapes=((1,),), bits=32, frac_bits=12, clip=4.0, num_clients=2,
                            max_weight=10)
    rng = np.random.default_rng(0)
    a = codec.encode([np.array([1.0])], rng, weight=10)
    b = codec.encode([np.array([3.0])], rng, weight=5)
    average = codec.decode_sum(sum_vectors([a.vector, b.vector], 32)).average()
    assert abs(average[0][0] - (10 * 1.0 + 5 * 3.0) / 15) < 2 * codec.resolution
    with pytest.raises(EncodingError, match="total weight"):
        codec.decode_sum(np.zeros(2, dtype=np.uint64)).average()
