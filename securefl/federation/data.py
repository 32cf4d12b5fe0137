"""Federated data sets built from scikit-learn's bundled data (no download):
a held-out test set and a non-IID (Dirichlet) split of the rest across
clients."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split

from securefl.errors import ConfigurationError

__all__ = [
    "FederatedData",
    "dirichlet_split",
    "load_breast_cancer_federated",
    "load_digits_federated",
]


@dataclass(frozen=True)
class FederatedData:
    """Client shards and a held-out test set.

    Attributes:
        clients: ``(features, labels)`` per client, in client order.
        test: the held-out ``(features, labels)``.
        num_features, num_classes: model input and output sizes.
        name: the data set's name.
    """

    clients: list[tuple[np.ndarray, np.ndarray]]
    test: tuple[np.ndarray, np.ndarray]
    num_features: int
    num_classes: int
    name: str

    @property
    def client_sizes(self) -> list[int]:
        """Number of training examples per client."""
        return [len(y) for _, y in self.clients]


def dirichlet_split(labels: np.ndarray, num_clients: int, alpha: float,
                    rng: np.random.Generator, *, min_size: int = 10,
                    max_tries: int = 1000) -> list[np.ndarray]:
    """Split example indices across clients non-IID: for every class, the
    class's examples are divided in proportions drawn from
    ``Dirichlet(alpha, ..., alpha)`` (small alpha: very skewed).  Redrawn until
    every client holds at least ``min_size`` examples.

    Returns:
        one sorted index array per client; together a partition of the data.

    Raises:
        ConfigurationError: on a non-positive alpha, fewer than one client, or
            when no draw gives every client ``min_size`` examples.
    """
    if not alpha > 0:
        raise ConfigurationError(f"Dirichlet alpha must be > 0, got {alpha}")
    if num_clients < 1:
        raise ConfigurationError(f"need at least one client, got {num_clients}")
    if num_clients * min_size > len(labels):
        raise ConfigurationError(
            f"{len(labels)} examples cannot give {num_clients} clients {min_size} each;"
            " use fewer clients"
        )
    classes = np.unique(labels)
    for _ in range(max_tries):
        shards: list[list[int]] = [[] for _ in range(num_clients)]
        for cls in classes:
            idx = np.flatnonzero(labels == cls)
            rng.shuffle(idx)
            proportions = rng.dirichlet(np.full(num_clients, alpha))
            cuts = (np.cumsum(proportions)[:-1] * len(idx)).astype(int)
            for client, part in enumerate(np.split(idx, cuts)):
                shards[client].extend(part.tolist())
        if min(len(s) for s in shards) >= min_size:
            return [np.sort(np.asarray(s, dtype=np.int64)) for s in shards]
    raise ConfigurationError(
        f"no Dirichlet(alpha={alpha}) split gave all {num_clients} clients {min_size}"
        f" examples in {max_tries} draws; use a larger alpha or fewer clients"
    )


def _federate(features: np.ndarray, labels: np.ndarray, *, name: str, num_clients: int,
              alpha: float, seed: int, test_fraction: float) -> FederatedData:
    if not 0 < test_fraction < 1:
        raise ConfigurationError(f"test fraction must be in (0, 1), got {test_fraction}")
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    rng = np.random.default_rng([seed, 7])
    shards = dirichlet_split(y_train, num_clients, alpha, rng)
    clients = [(x_train[s].astype(np.float32), y_train[s].astype(np.int64)) for s in shards]
    return FederatedData(
        clients=clients,
        test=(x_test.astype(np.float32), y_test.astype(np.int64)),
        num_features=features.shape[1],
        num_classes=int(labels.max()) + 1,
        name=name,
    )


def load_digits_federated(num_clients: int = 10, *, alpha: float = 0.5, seed: int = 0,
                          test_fraction: float = 0.2) -> FederatedData:
    """scikit-learn's 8x8 digits (1797 images, 10 classes), pixels scaled to
    [0, 1], 20% held out (stratified), the rest split non-IID.

    Raises:
        ConfigurationError: see :func:`dirichlet_split`.
    """
    digits = load_digits()
    return _federate(digits.data / 16.0, digits.target, name="digits",
                     num_clients=num_clients, alpha=alpha, seed=seed,
                     test_fraction=test_fraction)


def load_breast_cancer_federated(num_clients: int = 5, *, alpha: float = 1.0, seed: int = 0,
                                 test_fraction: float = 0.25) -> FederatedData:
    """scikit-learn's Wisconsin breast cancer data (569 patients, 30 features,
    2 classes).  Features are log-transformed and scaled by fixed, public
    constants (``log1p`` then divided by the log of the feature's documented
    maximum), so no statistic of the private data is shared to normalize
    them.

    Raises:
        ConfigurationError: see :func:`dirichlet_split`.
    """
    data = load_breast_cancer()
    logged = np.log1p(data.data)
    # The public per-feature maxima of the data set's documentation
    # (sklearn's DESCR table); using them leaks nothing about any client.
    scale = np.log1p(np.array(_BREAST_CANCER_MAX))
    return _federate(logged / scale, data.target, name="breast_cancer",
                     num_clients=num_clients, alpha=alpha, seed=seed,
                     test_fraction=test_fraction)


_BREAST_CANCER_MAX = (
    28.11, 39.28, 188.5, 2501.0, 0.163, 0.345, 0.427, 0.201, 0.304, 0.097,
    2.873, 4.885, 21.98, 542.2, 0.031, 0.135, 0.396, 0.053, 0.079, 0.030,
    36.04, 49.54, 251.2, 4254.0, 0.223, 1.058, 1.252, 0.291, 0.664, 0.208,
)
