"""Tests for securefl/bench/flower.py: Flower's real SecAgg+ run in process.

Skipped unless the optional ``flwr`` package is installed.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("flwr")

from securefl.bench import flower as fb

BITS = 31
M = 1000


def _inputs(n: int, seed: int, bits: int = BITS) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Include the extremes 0 and 2**bits - 1 so wrap-around is exercised.
    out = {cid: rng.integers(0, 1 << bits, M, dtype=np.uint64) for cid in range(n)}
    out[0][:2] = [0, (1 << bits) - 1]
    out[n - 1][:2] = [(1 << bits) - 1, (1 << bits) - 1]
    return out


def _expected(inputs: dict[int, np.ndarray], cids: frozenset[int], bits: int) -> np.ndarray:
    total = np.zeros(M, dtype=np.uint64)
    for cid in cids:
        total += inputs[cid]
    return total % np.uint64(1 << bits)


def _params(n: int) -> tuple[int, int]:
    """Return (num_shares, threshold) Flower accepts for n clients."""
    return n, n // 2 + 1


@pytest.mark.parametrize("n", range(5, 11))
def test_sum_without_dropout(n: int) -> None:
    inputs = _inputs(n, seed=n)
    shares, threshold = _params(n)
    run = fb.run_flower_secaggplus(
        inputs, modulus_bits=BITS, num_shares=shares, reconstruction_threshold=threshold
    )
    assert run.included == frozenset(range(n))
    assert run.aggregate.dtype == np.uint64
    np.testing.assert_array_equal(run.aggregate, _expected(inputs, run.included, BITS))
    assert not run.client_errors and not run.failures
    assert set(run.server_seconds) == set(fb.STAGES)
    for cid in range(n):
        assert set(run.client_seconds[cid]) == set(fb.STAGES)
        # The masked upload carries M int64 values plus framing.
        assert run.bytes_up[cid]["collect_masked_vectors"] > 8 * M
        assert run.total_bytes_down(cid) > 0


@pytest.mark.parametrize("n", range(5, 11))
def test_sum_with_dropout_after_masked_input(n: int) -> None:
    """A client that uploaded its masked vector then vanished is still summed."""
    inputs = _inputs(n, seed=100 + n)
    shares, threshold = _params(n)
    gone = n // 2
    run = fb.run_flower_secaggplus(
        inputs,
        modulus_bits=BITS,
        num_shares=shares,
        reconstruction_threshold=threshold,
        dropouts={gone: "unmask"},
    )
    assert run.included == frozenset(range(n))
    np.testing.assert_array_equal(run.aggregate, _expected(inputs, run.included, BITS))
    assert "unmask" not in run.client_seconds[gone]
    assert "unmask" not in run.bytes_down[gone]


@pytest.mark.parametrize("n", range(5, 11))
def test_sum_with_dropout_before_masked_input(n: int) -> None:
    """A client that never uploaded is left out; its pairwise masks are removed."""
    inputs = _inputs(n, seed=200 + n)
    shares, threshold = _params(n)
    run = fb.run_flower_secaggplus(
        inputs,
        modulus_bits=BITS,
        num_shares=shares,
        reconstruction_threshold=threshold,
        dropouts={1: "collect_masked_vectors"},
    )
    assert run.included == frozenset(range(n)) - {1}
    np.testing.assert_array_equal(run.aggregate, _expected(inputs, run.included, BITS))


def test_partial_neighbourhoods_and_small_ring() -> None:
    """num_shares < n (SecAgg+ proper) and a narrow ring still sum exactly."""
    n, bits = 9, 8
    inputs = _inputs(n, seed=7, bits=bits)
    run = fb.run_flower_secaggplus(
        inputs,
        modulus_bits=bits,
        num_shares=5,
        reconstruction_threshold=3,
        dropouts={4: "collect_masked_vectors"},
    )
    np.testing.assert_array_equal(run.aggregate, _expected(inputs, run.included, bits))


@pytest.mark.parametrize("stage", ["setup", "share_keys"])
def test_flower_halts_on_dropout_before_share_distribution(stage: str) -> None:
    """Flower 1.42 cannot finish when a client drops before its shares are out.

    Its neighbours are asked for an sk1 share they never received
    (secaggplus_mod.py ``_unmask``: KeyError), so the unmask stage lacks shares.
    """
    inputs = _inputs(6, seed=3)
    with pytest.raises(fb.FlowerBaselineError, match="halted"):
        fb.run_flower_secaggplus(
            inputs,
            modulus_bits=BITS,
            num_shares=5,
            reconstruction_threshold=3,
            dropouts={0: stage},
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"modulus_bits": 32}, "modulus_bits"),
        ({"num_shares": 4}, "odd"),
        ({"reconstruction_threshold": 5}, "threshold"),
        ({"dropouts": {0: "train"}}, "unknown stage"),
    ],
)
def test_rejects_what_flower_cannot_do(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {
        "modulus_bits": BITS,
        "num_shares": 5,
        "reconstruction_threshold": 3,
    }
    args.update(kwargs)
    with pytest.raises(fb.FlowerBaselineError, match=match):
        fb.run_flower_secaggplus(_inputs(8, seed=1), **args)


def test_flower_mask_prg_has_a_32_bit_seed() -> None:
    """Two different 32-byte seeds with the same 32-bit XOR fold give the same mask."""
    from flwr.common.secure_aggregation.secaggplus_utils import pseudo_rand_gen

    a = bytearray(os.urandom(32))
    b = bytearray(os.urandom(32))
    fold_a = fold_b = 0
    for i in range(0, 32, 4):
        fold_a ^= int.from_bytes(a[i : i + 4], "little")
    for i in range(0, 28, 4):
        fold_b ^= int.from_bytes(b[i : i + 4], "little")
    b[28:32] = (fold_a ^ fold_b).to_bytes(4, "little")
    assert a != b
    mask_a = pseudo_rand_gen(bytes(a), 1 << 31, [(16,)])[0]
    mask_b = pseudo_rand_gen(bytes(b), 1 << 31, [(16,)])[0]
    np.testing.assert_array_equal(mask_a, mask_b)


def test_late_replies_count_as_dropouts() -> None:
    """With a zero timeout every reply is late, so Flower halts at setup."""
    with pytest.raises(fb.FlowerBaselineError, match="halted in stage 'setup'"):
        fb.run_flower_secaggplus(
            _inputs(5, seed=4),
            modulus_bits=BITS,
            num_shares=5,
            reconstruction_threshold=3,
            timeout=0.0,
        )
