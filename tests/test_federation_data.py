"""Federated data: a non-IID Dirichlet partition of a real bundled data set."""

from __future__ import annotations

import numpy as np
import pytest

from securefl.errors import ConfigurationError
from securefl.federation.data import (
    dirichlet_split,
    load_breast_cancer_federated,
    load_digits_federated,
)


def test_digits_split_is_a_partition_with_a_held_out_test_set() -> None:
    data = load_digits_federated(10, alpha=0.5, seed=3)
    assert len(data.clients) == 10 and data.num_features == 64 and data.num_classes == 10
    assert sum(data.client_sizes) + len(data.test[1]) == 1797
    assert min(data.client_sizes) >= 10
    for x, y in data.clients:
        assert x.dtype == np.float32 and x.min() >= 0.0 and x.max() <= 1.0
        assert len(x) == len(y)
    again = load_digits_federated(10, alpha=0.5, seed=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in
               zip(data.clients, again.clients, strict=True))


def test_small_alpha_is_more_skewed_than_large_alpha() -> None:
    labels = np.repeat(np.arange(10), 100)

    def skew(alpha: float) -> float:
        shards = dirichlet_split(labels, 10, alpha, np.random.default_rng(0))
        assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(1000))
        # mean over clients of the share of their most common class
        return float(np.mean([np.bincount(labels[s]).max() / len(s) for s in shards]))

    assert skew(0.1) > skew(100.0) + 0.2


def test_breast_cancer_uses_fixed_public_scaling() -> None:
    data = load_breast_cancer_federated(5, seed=0)
    assert data.num_features == 30 and data.num_classes == 2
    # the public maxima are rounded to 3 decimals, so values may exceed 1 a little
    assert all(x.min() >= 0.0 and x.max() <= 1.01 for x, _ in data.clients)


def test_impossible_splits_are_refused() -> None:
    labels = np.repeat(np.arange(2), 10)
    with pytest.raises(ConfigurationError, match="alpha"):
        dirichlet_split(labels, 2, 0.0, np.random.default_rng(0))
    # 20 examples cannot give 5 clients the 10 each asked for, nor 30 clients one each
    with pytest.raises(ConfigurationError, match="fewer clients"):
        dirichlet_split(labels, 5, 1.0, np.random.default_rng(0), min_size=10)
    with pytest.raises(ConfigurationError, match="fewer clients"):
        dirichlet_split(labels, 30, 1.0, np.random.default_rng(0))
    # by default the minimum falls back below 10 when the data cannot hold 10 per client
    shards = dirichlet_split(labels, 5, 1.0, np.random.default_rng(0))
    assert len(shards) == 5 and min(len(s) for s in shards) >= 1
