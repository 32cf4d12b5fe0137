"""Federated data: the data sets built from scikit-learn's bundled data (no
download: a held-out test set and a non-IID (Dirichlet) split of the rest
across clients), and :func:`prepare_data`, which takes a client's own data in
any of the forms :func:`securefl.federate` accepts.

Every data set is checked when it is built (:mod:`securefl.federation.validation`):
a :class:`FederatedData` with an empty client, NaN, a label outside
``[0, num_classes)`` or a client whose examples are not ``num_features`` wide
is refused with a :class:`~securefl.errors.DataValidationError`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, IterableDataset, default_collate

from securefl.errors import ConfigurationError, DataProblem, DataValidationError
from securefl.federation.validation import Examples, check_examples, check_federation
from securefl.privacy.batches import ClientBatches, CollatedBatches, TensorBatches

__all__ = [
    "FederatedData",
    "PreparedData",
    "default_min_size",
    "dirichlet_split",
    "load_breast_cancer_federated",
    "load_digits_federated",
    "prepare_data",
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

    def __post_init__(self) -> None:
        clients = [_array_examples(f"client {i}", x, y)
                   for i, (x, y) in enumerate(self.clients, start=1)]
        test = _array_examples("the test set", *self.test)
        for examples in [*clients, test]:
            check_examples(examples, num_classes=self.num_classes)
            if examples.inputs.dim() != 2 or examples.inputs.shape[1] != self.num_features:
                raise DataValidationError(
                    DataProblem.FEATURE_SHAPE_MISMATCH,
                    f"examples of shape {tuple(examples.inputs.shape[1:])}, but the data set"
                    f" has {self.num_features} features", who=examples.who)
        check_federation(clients, test, num_classes=self.num_classes)

    @property
    def client_sizes(self) -> list[int]:
        """Number of training examples per client."""
        return [len(y) for _, y in self.clients]


def dirichlet_split(labels: np.ndarray, num_clients: int, alpha: float,
                    rng: np.random.Generator, *, min_size: int | None = None,
                    max_tries: int = 1000) -> list[np.ndarray]:
    """Split example indices across clients non-IID: for every class, the
    class's examples are divided in proportions drawn from
    ``Dirichlet(alpha, ..., alpha)`` (small alpha: very skewed).  Redrawn until
    every client holds at least ``min_size`` examples.

    ``min_size`` defaults to :func:`default_min_size`: 10 while the data
    holds 10 per client, fewer for a federation of hundreds of clients (down
    to 1).  The minimum is a convenience of the split (a client with a few
    examples trains a noisier model), not a privacy rule: DP-SGD's guarantee
    holds for a client of any size, and an empty client is refused.

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
    if min_size is None:
        min_size = default_min_size(len(labels), num_clients)
    if min_size < 1:
        raise ConfigurationError(f"every client needs at least one example, got min_size"
                                 f" {min_size}")
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
        f" examples in {max_tries} draws; use a larger alpha or fewer clients (with"
        " hundreds of clients a moderate alpha, 0.5 to 10: a very large one splits every"
        " class near-evenly, rounding the same clients' shares down to 0 in every class)"
    )


def default_min_size(num_examples: int, num_clients: int) -> int:
    """The fewest examples :func:`dirichlet_split` gives a client by default:
    10 when ``num_examples`` holds 10 per client (the split of every
    federation of at most ``num_examples // 10`` clients is unchanged by the
    fallback), else a quarter of the mean share, at least 1 (so that a
    near-IID split, a large ``alpha``, of hundreds of clients is found in a
    few draws: 300 clients of digits' 1437 training images get about 4.8
    each and at least 1)."""
    if num_clients * 10 <= num_examples:
        return 10
    return max(1, num_examples // (4 * max(num_clients, 1)))


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


def _array_examples(who: str, features: Any, labels: Any) -> Examples:
    return Examples(who, torch.as_tensor(np.asarray(features)),
                    torch.as_tensor(np.asarray(labels)))


@dataclass(frozen=True)
class PreparedData:
    """One data set in the form the federation uses.

    Attributes:
        examples: the whole data set, collated (for the checks and the
            evaluation).
        batches: where DP-SGD draws its Poisson-sampled batches from.
        batch_size: the batch size of a ``DataLoader`` it came from, else None.
    """

    examples: Examples
    batches: ClientBatches
    batch_size: int | None = None

    def __len__(self) -> int:
        return len(self.batches)


def _as_inputs(value: torch.Tensor) -> torch.Tensor:
    """Real inputs as float32 (the dtype of torch's default weights); integer
    inputs (token ids, category codes) unchanged."""
    if value.is_floating_point() or value.dtype == torch.bool:
        return value.to(torch.float32)
    return value


def _as_targets(value: torch.Tensor) -> torch.Tensor:
    """Integer (or boolean) labels as ``long``; real targets as ``float32``."""
    if value.is_floating_point():
        return value.to(torch.float32)
    return value.to(torch.long)


def _is_array(value: Any) -> bool:
    return isinstance(value, np.ndarray | torch.Tensor)


def _pair(who: str, value: Any) -> tuple[Any, torch.Tensor]:
    if not (isinstance(value, tuple | list) and len(value) == 2):
        raise DataValidationError(
            DataProblem.UNREADABLE,
            f"its examples must be (input, target) pairs, got {type(value).__name__}"
            f"{f' of {len(value)}' if isinstance(value, tuple | list) else ''}", who=who)
    inputs, targets = value
    if not isinstance(targets, torch.Tensor):
        try:
            targets = torch.as_tensor(np.asarray(targets))
        except (TypeError, ValueError) as exc:
            raise DataValidationError(DataProblem.UNREADABLE,
                                      f"its targets are not numeric: {exc}", who=who) from exc
    return inputs, targets


def prepare_data(data: Any, *, who: str) -> PreparedData:
    """Turn one data set into the form the federation uses, without changing
    its values (real inputs and targets become float32, labels ``long``).

    Accepted forms:

    * ``(x, y)``: two numpy arrays or tensors with one row per example;
    * a map-style ``torch.utils.data.Dataset`` of ``(input, target)`` items
      (anything with ``len`` and ``[i]``);
    * a ``DataLoader`` over such a data set: its ``batch_size`` is kept (the
      federation derives the Poisson sample rate from it, see
      :func:`securefl.federate`) and its ``collate_fn`` builds every batch;
      its sampler and shuffling are not used (DP-SGD samples by itself, as
      Opacus's ``DPDataLoader`` does).

    Raises:
        DataValidationError: naming ``who``, for an empty data set, items that
            are not ``(input, target)`` pairs, non-numeric values, or features
            and targets of different lengths.
        ConfigurationError: for an iterable-style data set (DP-SGD needs to
            draw records by index) or a ``DataLoader`` without a
            ``batch_size``.
    """
    batch_size: int | None = None
    collate: Callable[[Sequence[Any]], Any] = default_collate
    if isinstance(data, tuple | list) and len(data) == 2 and all(_is_array(v) for v in data):
        features = torch.as_tensor(data[0])
        targets = torch.as_tensor(data[1])
        if features.dim() == 0 or targets.dim() == 0 or len(features) != len(targets):
            raise DataValidationError(
                DataProblem.LENGTH_MISMATCH,
                f"{len(features) if features.dim() else 'no'} feature rows but"
                f" {len(targets) if targets.dim() else 'no'} targets", who=who)
        if len(targets) == 0:
            raise DataValidationError(DataProblem.EMPTY, "no examples", who=who)
        features, targets = _as_inputs(features), _as_targets(targets)
        return PreparedData(Examples(who, features, targets), TensorBatches(features, targets))
    dataset = data
    if isinstance(data, DataLoader):
        if data.batch_size is None:
            raise ConfigurationError(
                f"{who}: its DataLoader has no batch_size (a custom batch sampler); give"
                " it a batch_size, or pass sample_rate")
        batch_size = int(data.batch_size)
        dataset = data.dataset
        collate = data.collate_fn
    if isinstance(dataset, IterableDataset) or not (
            hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise ConfigurationError(
            f"{who}: DP-SGD draws each record with a public probability, so it needs a"
            f" map-style data set (len and [i]); got {type(dataset).__name__}")
    n = len(dataset)
    if n == 0:
        raise DataValidationError(DataProblem.EMPTY, "no examples; give every client at"
                                  " least one example, or leave it out", who=who)
    items = [dataset[i] for i in range(n)]
    for item in items[:1]:
        _pair(who, item)
    try:
        whole = collate(items)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataValidationError(DataProblem.UNREADABLE,
                                  f"its items cannot be collated: {exc}", who=who) from exc
    inputs, targets = _pair(who, whole)
    if collate is default_collate and isinstance(inputs, torch.Tensor):
        # fixed-shape examples: index rows directly, as (x, y) pairs do
        inputs, targets = _as_inputs(inputs), _as_targets(targets)
        return PreparedData(Examples(who, inputs, targets), TensorBatches(inputs, targets),
                            batch_size)

    def collate_targets(chosen: Sequence[Any]) -> tuple[Any, torch.Tensor]:
        batch_inputs, batch_targets = _pair(who, collate(chosen))
        return batch_inputs, _as_targets(batch_targets)

    return PreparedData(Examples(who, inputs, _as_targets(targets), fixed_shape=False),
                        CollatedBatches(dataset, collate_targets), batch_size)
