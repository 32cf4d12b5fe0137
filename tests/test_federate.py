"""``securefl.federate``: your model, data and loss in one call, on the
simulator's round (secure aggregation, ledger, budget guard), with every
check before any training and no file unless asked for."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import securefl
from securefl.errors import (
    ConfigurationError,
    DataProblem,
    DataValidationError,
    ModelIncompatibleError,
)
from securefl.privacy.ledger import load_ledger

torch.set_num_threads(1)


def _regression(k: int = 3, n: int = 30, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(k):
        x = rng.normal(size=(n, 4)).astype(np.float32)
        out.append((x, (x @ np.array([[1.0], [-1.0], [0.5], [0.0]])).astype(np.float32)))
    return out


def _classification(k: int = 3, n: int = 30, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(k):
        x = rng.normal(size=(n, 4)).astype(np.float32)
        out.append((x, (x[:, 0] > 0).astype(np.int64)))
    return out


def _mse(test: tuple[np.ndarray, np.ndarray]):
    x, y = (torch.as_tensor(a) for a in test)

    def evaluate(model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            return {"mse": float(((model(x) - y) ** 2).mean())}

    return evaluate


def _listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def test_regression_with_your_loss_writes_nothing_without_output_dir(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scratch, cwd = tmp_path / "tmp", tmp_path / "cwd"
    scratch.mkdir()
    cwd.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    monkeypatch.chdir(cwd)
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    before = [p.detach().clone() for p in model.parameters()]
    seen = []
    result = securefl.federate(
        model, _regression(), nn.MSELoss(), rounds=2, noise_multiplier=0.5, lr=0.3,
        evaluate=_mse(_regression(1, 50, seed=7)[0]),
        on_round=lambda report, metrics: seen.append((report.round, metrics)))
    assert [r for r, _ in seen] == [1, 2] and [m for _, m in seen] == result.evaluations
    assert set(result.final) == {"mse"} and result.final == result.evaluations[-1]
    assert np.isfinite(result.final["mse"]) and 0 < result.epsilon < 100
    assert result.output_dir is None
    # nothing kept (torch may cache its own files there), nothing written here
    assert [p for p in _listing(scratch) if "securefl" in p] == [] and _listing(cwd) == []
    # your model is untouched; the trained one is a copy
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(
        before, result.model.parameters(), strict=True))
    assert all(r.survivors == (1, 2, 3) for r in result.rounds)
    # arrays, no sample_rate: the public default rate and expected batch size
    assert {(c.sample_rate, c.config.batch_size) for c in result.clients} == {(0.5, 36)}


def test_with_output_dir_the_run_is_recorded_and_audits(tmp_path: Path) -> None:
    from securefl.cli.audit import audit_run

    out = tmp_path / "run"
    clients = _classification()
    result = securefl.federate(
        nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), clients,
        nn.CrossEntropyLoss(), rounds=2, target_epsilon=5.0,
        test_data=_classification(1, 40, seed=3)[0], output_dir=out)
    assert result.output_dir == out
    for name in ("ledger.jsonl", "metrics.json", "checkpoint.pt"):
        assert (out / name).is_file()
    assert set(result.final) == {"loss", "accuracy"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final"]["accuracy"] == pytest.approx(result.final["accuracy"])
    assert [r["metrics"] for r in metrics["rounds"]] == result.evaluations
    rows = load_ledger(out / "ledger.jsonl").committed
    assert {r.secure_aggregation for r in rows} == {True}
    report = audit_run(out)
    assert report["ok"], report
    assert result.epsilon <= 5.0 + 1e-9


def test_dataloaders_set_each_clients_sample_rate_as_opacus_does(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sizes = (20, 40, 80)
    rng = np.random.default_rng(0)
    loaders = [DataLoader(TensorDataset(torch.as_tensor(rng.normal(size=(n, 4)),
                                                        dtype=torch.float32),
                                        torch.as_tensor(rng.integers(0, 2, size=n))),
                          batch_size=10, shuffle=True) for n in sizes]
    # rev-ledger review: under uniform weighting the rows stated add/remove-one
    # epsilons (5.38, 4.87, 3.79) while q = B / n published n: a record added
    # or removed changes the published rate, so no such epsilon holds
    with pytest.raises(ConfigurationError, match="weighting='examples'"):
        securefl.federate(nn.Linear(4, 2), loaders, nn.CrossEntropyLoss(), rounds=1,
                          noise_multiplier=1.0, output_dir=tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    with caplog.at_level(logging.WARNING, logger="securefl.federation.api"):
        result = securefl.federate(nn.Linear(4, 2), loaders, nn.CrossEntropyLoss(), rounds=1,
                                   noise_multiplier=1.0, weighting="examples",
                                   output_dir=tmp_path / "run")
    assert "reveal every client's record count" in caplog.text
    rates = {c.client_id: (c.sample_rate, c.config.batch_size, c.steps_per_round)
             for c in result.clients}
    assert rates == {1: (0.5, 10, 2), 2: (0.25, 10, 4), 3: (0.125, 10, 8)}
    rows = [r for r in load_ledger(tmp_path / "run" / "ledger.jsonl").committed
            if not r.in_flight]
    assert {r.client_id: r.sample_rate for r in rows} == {1: 0.5, 2: 0.25, 3: 0.125}
    assert {r.adjacency for r in rows} == {"replace-one"}  # n is public: n fixed
    from securefl.cli.audit import audit_run

    report = audit_run(tmp_path / "run")  # per-client rates verify like any run's
    assert report["verified"] and report["violations"] == [], report
    # one public rate instead: nothing about the record counts in the ledger
    same = securefl.federate(nn.Linear(4, 2), loaders, nn.CrossEntropyLoss(), rounds=1,
                             noise_multiplier=1.0, sample_rate=0.2)
    assert {(c.sample_rate, c.config.batch_size) for c in same.clients} == {(0.2, 10)}


def test_an_incompatible_model_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    with pytest.raises(ModelIncompatibleError, match=r"'1' \(BatchNorm1d\)"):
        securefl.federate(model, _classification(), nn.CrossEntropyLoss(), rounds=1,
                          output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_replacement_on_request_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    with caplog.at_level(logging.WARNING, logger="securefl.privacy.layers"):
        result = securefl.federate(model, _classification(), nn.CrossEntropyLoss(), rounds=1,
                                   noise_multiplier=1.0, replace_incompatible_layers=True)
    assert [str(r) for r in result.replaced_layers] == [
        "replaced layer '1': BatchNorm1d(8) -> GroupNorm(1, 8)"]
    assert "BatchNorm1d(8) -> GroupNorm(1, 8)" in caplog.text
    assert isinstance(model[1], nn.BatchNorm1d) and isinstance(result.model[1], nn.GroupNorm)


@pytest.mark.parametrize("stumble", ["nan-client", "nan-test", "label-7", "empty", "features"])
def test_bad_data_is_refused_before_anything_is_written(tmp_path: Path, stumble: str) -> None:
    clients = _classification()
    test = _classification(1, 10, seed=4)[0]
    expected = {"nan-client": (DataProblem.NON_FINITE_FEATURES, "client 2"),
                "nan-test": (DataProblem.NON_FINITE_FEATURES, "the test set"),
                "label-7": (DataProblem.LABEL_OUT_OF_RANGE, "client 3"),
                "empty": (DataProblem.EMPTY, "client 1"),
                "features": (DataProblem.FEATURE_SHAPE_MISMATCH, "client 2")}[stumble]
    if stumble == "nan-client":
        clients[1][0][0, 0] = np.nan
    elif stumble == "nan-test":
        test[0][1, 1] = np.nan
    elif stumble == "label-7":
        clients[2][1][0] = 7
    elif stumble == "empty":
        clients[0] = (clients[0][0][:0], clients[0][1][:0])
    else:
        clients[1] = (clients[1][0][:, :3], clients[1][1])
    with pytest.raises(DataValidationError) as info:
        securefl.federate(nn.Linear(4, 2), clients, nn.CrossEntropyLoss(), rounds=1,
                          test_data=test, output_dir=tmp_path / "run")
    assert (info.value.problem, info.value.who) == expected
    assert not (tmp_path / "run").exists()


def test_options_and_their_mistakes() -> None:
    clients = _classification()
    with pytest.raises(ConfigurationError, match=r"unknown options \['learning_rate'\]"):
        securefl.federate(nn.Linear(4, 2), clients, nn.CrossEntropyLoss(), learning_rate=0.1)
    with pytest.raises(ConfigurationError, match="at least 2 clients"):
        securefl.federate(nn.Linear(4, 2), clients[:1], nn.CrossEntropyLoss())
    loader = DataLoader(TensorDataset(torch.as_tensor(clients[0][0]),
                                      torch.as_tensor(clients[0][1])), batch_size=5)
    with pytest.raises(ConfigurationError, match="pass sample_rate"):
        securefl.federate(nn.Linear(4, 2), [loader, clients[1]], nn.CrossEntropyLoss())
    # a simulator option passes through by name, and every client's local
    # optimizer comes from your factory
    made: list[torch.optim.Optimizer] = []

    def optimizer(params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        made.append(torch.optim.SGD(params, lr=0.1, momentum=0.9))
        return made[-1]

    result = securefl.federate(nn.Linear(4, 2), clients, nn.CrossEntropyLoss(), rounds=1,
                               noise_multiplier=1.0, server_optimizer="fedavg", dropout=0.0,
                               optimizer=optimizer)
    assert result.metrics["config"]["server_optimizer"] == "fedavg"
    assert len(made) >= len(clients)  # at least one per client and round
    assert all(o.param_groups[0]["momentum"] == 0.9 for o in made)


def test_the_core_install_imports_securefl_and_explains_federate() -> None:
    from tests.test_core_without_training import _python

    proc = _python("""
        import securefl
        assert "torch" not in sys.modules
        try:
            securefl.federate
        except ImportError as exc:
            print(type(exc).__name__, exc)
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("MissingExtraError")
    assert "pip install 'securefl[train]'" in proc.stdout


class _Bag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(30, 8, mode="mean")
        self.head = nn.Linear(8, 2)

    def forward(self, tokens: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        return self.head(self.bag(tokens, offsets))


def _bags(batch):
    lengths = torch.tensor([len(t) for t, _ in batch])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    return (torch.cat([t for t, _ in batch]), offsets), torch.tensor([y for _, y in batch])


def test_text_of_different_lengths_through_your_collate() -> None:
    # token bags as (tokens, offsets): Opacus's EmbeddingBag needs offsets
    rng = np.random.default_rng(0)

    def texts(n: int) -> list[tuple[torch.Tensor, int]]:
        items = []
        for _ in range(n):
            label = int(rng.integers(0, 2))
            words = rng.integers(1, 15, size=int(rng.integers(2, 7))) + 15 * label
            items.append((torch.as_tensor(words), label))
        return items

    loaders = [DataLoader(texts(40), batch_size=8, collate_fn=_bags) for _ in range(3)]
    test = DataLoader(texts(30), batch_size=8, collate_fn=_bags)
    result = securefl.federate(_Bag(), loaders, nn.CrossEntropyLoss(), rounds=2,
                               noise_multiplier=0.8, sample_rate=0.2, lr=0.5, test_data=test)
    assert set(result.final) == {"loss", "accuracy"}
    assert 0.0 <= result.final["accuracy"] <= 1.0 and np.isfinite(result.final["loss"])
