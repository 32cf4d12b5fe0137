"""Bad data is refused before any training, with a typed error naming whose
data it is and the problem (issue 13: a label 7 with 2 classes, a feature
count mismatch, NaN in one client or in the test set, an empty client); and
the adapters that turn a user's data (arrays, Datasets, DataLoaders) into
what DP-SGD samples from."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from securefl.errors import ConfigurationError, DataProblem, DataValidationError
from securefl.federation.data import FederatedData, prepare_data
from securefl.federation.validation import Examples, check_federation
from securefl.privacy import DPConfig, PrivateClient
from securefl.privacy.batches import CollatedBatches, TensorBatches

torch.set_num_threads(1)


def _clients(k: int = 3, n: int = 20, features: int = 6,
             seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(k):
        x = rng.normal(size=(n, features)).astype(np.float32)
        out.append((x, (x[:, 0] > 0).astype(np.int64)))
    return out


def _federated(clients: list[tuple[np.ndarray, np.ndarray]],
               test: tuple[np.ndarray, np.ndarray] | None = None, *,
               num_classes: int = 2) -> FederatedData:
    test = test if test is not None else _clients(1, 10, clients[0][0].shape[1], seed=9)[0]
    return FederatedData(clients=clients, test=test, num_features=clients[0][0].shape[1],
                         num_classes=num_classes, name="toy")


def _check(clients: list[tuple[np.ndarray, np.ndarray]], test=None, **kwargs):
    prepared = [prepare_data(c, who=f"client {i}") for i, c in enumerate(clients, start=1)]
    test_prepared = prepare_data(test, who="the test set") if test is not None else None
    return check_federation([p.examples for p in prepared],
                            test_prepared.examples if test_prepared else None, **kwargs)


def _refused(problem: DataProblem, who: str, fn, /, *args, **kwargs) -> DataValidationError:
    with pytest.raises(DataValidationError) as info:
        fn(*args, **kwargs)
    assert info.value.problem is problem, info.value
    assert info.value.who == who
    assert str(info.value).startswith(f"{who}: [{problem.value}]")
    assert isinstance(info.value, ConfigurationError)
    return info.value


def _mlp(features: int = 6, outputs: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(features, 8), nn.ReLU(), nn.Linear(8, outputs))


# -- the stumbles of issue 13 ------------------------------------------------------------


def test_a_label_7_with_2_classes_is_refused_naming_the_client() -> None:
    clients = _clients()
    clients[1][1][4] = 7
    error = _refused(DataProblem.LABEL_OUT_OF_RANGE, "client 2", _federated, clients)
    assert "1 label outside [0, 2) (e.g. 7)" in str(error)
    # the same data against a model with 2 outputs, in the bring-your-own path
    error = _refused(DataProblem.LABEL_OUT_OF_RANGE, "client 2", _check, clients,
                     model=_mlp(), loss_fn=nn.CrossEntropyLoss())
    assert "the model has 2 outputs" in str(error)


def test_a_negative_label_is_refused() -> None:
    clients = _clients()
    clients[0][1][0] = -1
    _refused(DataProblem.LABEL_OUT_OF_RANGE, "client 1", _check, clients, model=_mlp())


def test_a_client_with_another_feature_count_is_refused() -> None:
    clients = _clients()
    clients[2] = _clients(1, 20, features=5)[0]
    error = _refused(DataProblem.FEATURE_SHAPE_MISMATCH, "client 3", _check, clients)
    assert "(5,)" in str(error) and "(6,)" in str(error)
    _refused(DataProblem.FEATURE_SHAPE_MISMATCH, "client 3", _federated, clients)


def test_examples_the_model_does_not_accept_are_refused_before_training() -> None:
    clients = _clients(features=5)
    error = _refused(DataProblem.FEATURE_SHAPE_MISMATCH, "client 1", _check, clients,
                     model=_mlp(features=6))
    assert "the model does not accept its examples (shape (5,))" in str(error)


def test_a_test_set_with_another_feature_count_is_refused() -> None:
    test = _clients(1, 10, features=7)[0]
    _refused(DataProblem.FEATURE_SHAPE_MISMATCH, "the test set", _check, _clients(), test)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_features_of_one_client_are_refused(bad: float) -> None:
    clients = _clients()
    clients[1][0][3, 2] = bad
    clients[1][0][5, 0] = bad
    error = _refused(DataProblem.NON_FINITE_FEATURES, "client 2", _federated, clients)
    assert "2 examples with NaN or infinite features" in str(error)
    _refused(DataProblem.NON_FINITE_FEATURES, "client 2", _check, clients)


def test_nan_in_the_test_set_is_refused_instead_of_a_nan_loss() -> None:
    test = _clients(1, 10, seed=5)[0]
    test[0][0, 0] = np.nan
    _refused(DataProblem.NON_FINITE_FEATURES, "the test set", _federated, _clients(), test)
    _refused(DataProblem.NON_FINITE_FEATURES, "the test set", _check, _clients(), test)


def test_nan_in_regression_targets_is_refused() -> None:
    clients = [(x, y.astype(np.float32).reshape(-1, 1)) for x, y in _clients()]
    clients[0][1][2, 0] = np.nan
    _refused(DataProblem.NON_FINITE_TARGETS, "client 1", _check, clients)


def test_an_empty_client_is_refused() -> None:
    clients = _clients()
    clients[1] = (clients[1][0][:0], clients[1][1][:0])
    _refused(DataProblem.EMPTY, "client 2", _federated, clients)
    _refused(DataProblem.EMPTY, "client 2", _check, clients)
    _refused(DataProblem.EMPTY, "client 4", prepare_data, TensorDataset(
        torch.zeros(0, 3), torch.zeros(0)), who="client 4")


def test_features_and_targets_of_different_lengths_are_refused() -> None:
    x, y = _clients(1)[0]
    _refused(DataProblem.LENGTH_MISMATCH, "client 1", prepare_data, (x, y[:-1]), who="client 1")


def test_regression_targets_that_would_broadcast_against_the_output_are_refused() -> None:
    # an MSE between (n, 1) outputs and (n,) targets silently averages n^2 pairs
    clients = [(x, y.astype(np.float32)) for x, y in _clients()]
    error = _refused(DataProblem.TARGET_SHAPE_MISMATCH, "client 1", _check, clients,
                     model=_mlp(outputs=1), loss_fn=nn.MSELoss())
    assert "reshape the targets" in str(error)
    fixed = [(x, y.reshape(-1, 1)) for x, y in clients]
    spec = _check(fixed, model=_mlp(outputs=1), loss_fn=nn.MSELoss())
    assert spec.classification is False and spec.target_shape == (1,)


def test_class_labels_on_one_client_and_real_targets_on_another_are_refused() -> None:
    clients = _clients()
    clients[2] = (clients[2][0], clients[2][1].astype(np.float32))
    _refused(DataProblem.TARGET_SHAPE_MISMATCH, "client 3", _check, clients)


def test_a_loss_that_fails_on_the_targets_is_refused_before_training() -> None:
    clients = [(x, y.astype(np.float32).reshape(-1, 1)) for x, y in _clients()]
    error = _refused(DataProblem.TARGET_SHAPE_MISMATCH, "client 1", _check, clients,
                     model=_mlp(outputs=1), loss_fn=nn.NLLLoss())  # wants class labels
    assert "the loss fails" in str(error)


def test_a_loss_that_does_not_reduce_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="scalar"):
        _check(_clients(), model=_mlp(), loss_fn=nn.CrossEntropyLoss(reduction="none"))


def test_a_client_with_nan_data_no_longer_spends_privacy_for_nothing() -> None:
    # before: every update was NaN, the encoder refused it every round, and
    # the accountant recorded the steps all the same; now the client is
    # refused before any step
    x, y = _clients(1)[0]
    x[0, 0] = np.nan
    _refused(DataProblem.NON_FINITE_FEATURES, "client 3", PrivateClient, 3, _mlp(), x, y,
             DPConfig(noise_multiplier=1.0))


def test_messages_quote_no_feature_value() -> None:
    clients = _clients()
    clients[0][0][0, 0] = np.inf
    secret = float(clients[0][0][1, 1])
    with pytest.raises(DataValidationError) as info:
        _check(clients)
    assert f"{secret:.3f}" not in str(info.value)


@settings(max_examples=25, deadline=None)
@given(k=st.integers(2, 5), n=st.integers(1, 12), victim=st.integers(0, 4),
       row=st.integers(0, 11), column=st.integers(0, 3), in_targets=st.booleans(),
       seed=st.integers(0, 2**16))
def test_one_non_finite_value_anywhere_is_refused_naming_exactly_its_client(
        k: int, n: int, victim: int, row: int, column: int, in_targets: bool,
        seed: int) -> None:
    rng = np.random.default_rng(seed)
    clients = [(rng.normal(size=(n, 4)).astype(np.float32),
                rng.normal(size=(n, 1)).astype(np.float32)) for _ in range(k)]
    spec = _check(clients, model=nn.Linear(4, 1), loss_fn=nn.MSELoss())
    assert spec.feature_shape == (4,) and spec.target_shape == (1,)
    victim, row = victim % k, row % n
    if in_targets:
        clients[victim][1][row, 0] = np.nan
    else:
        clients[victim][0][row, column] = np.nan
    problem = DataProblem.NON_FINITE_TARGETS if in_targets else DataProblem.NON_FINITE_FEATURES
    _refused(problem, f"client {victim + 1}", _check, clients, model=nn.Linear(4, 1))


# -- the adapters ------------------------------------------------------------------------


class _Pairs(Dataset):
    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.int64]:
        return self.x[i], self.y[i]


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 30), seed=st.integers(0, 2**16), form=st.sampled_from(
    ["numpy", "tensor", "dataset", "tensordataset", "loader"]))
def test_every_form_gives_the_same_examples_and_batches(n: int, seed: int, form: str) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))  # float64: becomes float32
    y = rng.integers(0, 4, size=n)
    data = {
        "numpy": (x, y),
        "tensor": (torch.as_tensor(x), torch.as_tensor(y)),
        "dataset": _Pairs(x, y),
        "tensordataset": TensorDataset(torch.as_tensor(x), torch.as_tensor(y)),
        "loader": DataLoader(_Pairs(x, y), batch_size=4, shuffle=True),
    }[form]
    prepared = prepare_data(data, who="client 1")
    assert isinstance(prepared.batches, TensorBatches)
    assert len(prepared) == n
    assert prepared.batch_size == (4 if form == "loader" else None)
    assert prepared.examples.inputs.dtype == torch.float32
    assert prepared.examples.targets.dtype == torch.long
    index = torch.as_tensor(rng.permutation(n)[: max(1, n // 2)])
    inputs, targets = prepared.batches.batch(index)
    assert torch.equal(inputs, torch.as_tensor(x[index.numpy()], dtype=torch.float32))
    assert torch.equal(targets, torch.as_tensor(y[index.numpy()]))


def test_a_loader_with_its_own_collate_draws_batches_through_it() -> None:
    # variable-length token sequences, padded per batch by the user's collate
    sequences = [torch.arange(1, 2 + i % 5) for i in range(9)]
    items = [(s, i % 2) for i, s in enumerate(sequences)]
    calls = []

    def pad(batch):
        calls.append(len(batch))
        width = max(len(s) for s, _ in batch)
        tokens = torch.zeros(len(batch), width, dtype=torch.long)
        for row, (s, _) in enumerate(batch):
            tokens[row, : len(s)] = s
        return tokens, torch.tensor([label for _, label in batch])

    prepared = prepare_data(DataLoader(items, batch_size=3, collate_fn=pad), who="client 2")
    assert isinstance(prepared.batches, CollatedBatches)
    assert prepared.batch_size == 3 and prepared.examples.fixed_shape is False
    assert prepared.examples.inputs.dtype == torch.long  # token ids stay integers
    tokens, labels = prepared.batches.batch(torch.tensor([0, 4]))
    assert tokens.shape == (2, 5) and labels.tolist() == [0, 0]
    empty_tokens, empty_labels = prepared.batches.batch(torch.tensor([], dtype=torch.long))
    assert empty_tokens.shape[0] == 0 and empty_labels.shape == (0,)
    assert calls[-1] == 1  # an empty Poisson batch: one item collated, no row kept


def test_items_that_are_not_pairs_and_iterable_datasets_are_refused() -> None:
    _refused(DataProblem.UNREADABLE, "client 1", prepare_data,
             [torch.zeros(3), torch.zeros(3), torch.zeros(3)], who="client 1")

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            yield torch.zeros(3), 0

    with pytest.raises(ConfigurationError, match="map-style"):
        prepare_data(Stream(), who="client 1")


def test_check_federation_needs_a_client() -> None:
    with pytest.raises(ConfigurationError, match="at least one"):
        check_federation([])
    assert Examples("client 1", torch.zeros(1, 2), torch.zeros(1)).fixed_shape
