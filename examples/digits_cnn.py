"""A small CNN of your own on the 8x8 digits images, with your DataLoaders.

Ten clients each hold a skewed (non-IID, Dirichlet 0.5) share of
scikit-learn's 1797 digit images, as ``(1, 8, 8)`` tensors in a
``DataLoader``.  Each trains the CNN below with Opacus DP-SGD and the server
learns only the sum of their updates through secure aggregation; a tenth of
the clients drop out at random protocol rounds.

Each client's loader keeps its data set and its batch size, and DP-SGD
replaces its sampler (as Opacus's ``DPDataLoader`` does): every image joins
each step's batch independently with probability ``sample_rate``.  The
example passes one public rate for every client (0.2: about the loaders'
batch of 32 at the clients' average share of the images), so the ledger
reveals no client's record count and the epsilons are add-or-remove-one.
Without ``sample_rate=``, :func:`securefl.federate` would take Opacus's
``batch_size / len(dataset)`` per client, which publishes the counts: it
then needs ``weighting="examples"`` (replace-one epsilons).

    python examples/digits_cnn.py [--rounds N] [--clients N] [--output DIR]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import securefl
from securefl.federation import RoundReport
from securefl.federation.data import dirichlet_split


class SmallCNN(nn.Module):
    """Two 3x3 convolutions with GroupNorm (DP-SGD cannot train BatchNorm),
    then a linear layer over the 2x2 feature maps."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.GroupNorm(4, 32), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(32 * 2 * 2, classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images).flatten(1))


def load(num_clients: int = 10, batch_size: int = 32, seed: int = 0) -> tuple[
        list[DataLoader], TensorDataset]:
    """One DataLoader per client and the held-out test set (20%, stratified);
    pixels scaled by the public maximum 16."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target, test_size=0.2, random_state=seed, stratify=digits.target)
    shards = dirichlet_split(y_train, num_clients, 0.5, np.random.default_rng([seed, 7]))
    loaders = [DataLoader(TensorDataset(torch.as_tensor(x_train[s]), torch.as_tensor(y_train[s])),
                          batch_size=batch_size, shuffle=True) for s in shards]
    return loaders, TensorDataset(torch.as_tensor(x_test), torch.as_tensor(y_test))


def main(argv: list[str] | None = None) -> securefl.FederationResult:
    """Run the federation and print the test accuracy per round."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--output", default=None, help="write the ledger, metrics and"
                        " checkpoint here (default: write nothing)")
    args = parser.parse_args(argv)
    loaders, test = load(args.clients)
    torch.manual_seed(0)
    model = SmallCNN()
    print(f"clients hold {[len(loader.dataset) for loader in loaders]} images;"
          f" {len(test)} held out")

    def show(report: RoundReport, metrics: dict[str, float]) -> None:
        print(f"round {report.round:2d}: test accuracy {metrics['accuracy']:.3f}, loss"
              f" {metrics['loss']:.3f}, {len(report.survivors)}/{len(loaders)} clients summed, max"
              f" epsilon {report.epsilon_max:.2f}" + (" (aborted)" if report.aborted else ""))

    result = securefl.federate(
        model, loaders, nn.CrossEntropyLoss(),
        rounds=args.rounds,
        target_epsilon=8.0,            # per client, over all rounds, at delta 1e-5
        delta=1e-5,
        max_grad_norm=1.0,
        lr=0.5,
        test_data=test,                # reported: test loss and accuracy
        dropout=0.1,
        sample_rate=0.2,               # one public rate: no record count in the ledger
        output_dir=args.output,
        on_round=show,
    )
    print(f"final test accuracy {result.final['accuracy']:.3f} at epsilon <="
          f" {result.epsilon:.2f} (delta {result.delta:g})")
    return result


if __name__ == "__main__":
    main()
