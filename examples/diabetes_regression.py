"""Regression with your own model, data and loss: five clinics predict
diabetes progression (scikit-learn's bundled diabetes data: 442 patients, 10
baseline measurements, a real-valued target) with an MSE loss.

Each clinic keeps its patients; it trains the shared linear model with Opacus
DP-SGD (per-patient clipping, Gaussian noise, a per-clinic privacy budget),
and the server learns only the sum of the clinics' updates through secure
aggregation.  Scaling uses fixed public constants only (the data set ships
its features centred and scaled to unit norm; targets lie in [25, 346] by
its documentation), so no statistic of any clinic's data is shared.

    python examples/diabetes_regression.py [--rounds N] [--output DIR]

It prints the test MSE (in the target's own units) and R^2 after each round.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.datasets import load_diabetes
from sklearn.model_selection import train_test_split
from torch import nn

import securefl
from securefl.federation import RoundReport

TARGET_CENTRE, TARGET_HALF_RANGE = 185.5, 160.5
"""The documented target range [25, 346] mapped to [-1, 1]."""
FEATURE_SCALE = 20.0
"""The features ship scaled to unit column norm (values about +-0.1); a fixed
factor brings them near unit scale."""


def load(num_clients: int = 5, seed: int = 0) -> tuple[
        list[tuple[np.ndarray, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """The clinics' ``(features, targets)`` and a held-out test set (20%).
    Targets have shape ``(n, 1)``, like the model's output."""
    data = load_diabetes()
    x = (data.data * FEATURE_SCALE).astype(np.float32)
    y = ((data.target - TARGET_CENTRE) / TARGET_HALF_RANGE).astype(np.float32).reshape(-1, 1)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=seed)
    shards = np.array_split(np.random.default_rng(seed).permutation(len(x_train)), num_clients)
    return [(x_train[s], y_train[s]) for s in shards], (x_test, y_test)


def metrics_on(test: tuple[np.ndarray, np.ndarray]):
    """An ``evaluate`` function: the test MSE in the target's units and R^2."""
    x_test, y_test = (torch.as_tensor(a) for a in test)

    def evaluate(model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            error = (model(x_test) - y_test) * TARGET_HALF_RANGE
        sse = float((error ** 2).sum())
        sst = float((((y_test - y_test.mean()) * TARGET_HALF_RANGE) ** 2).sum())
        return {"mse": sse / len(y_test), "r2": 1.0 - sse / sst}

    return evaluate


def main(argv: list[str] | None = None) -> securefl.FederationResult:
    """Run the federation and print the test MSE and R^2 per round."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--output", default=None, help="write the ledger, metrics and"
                        " checkpoint here (default: write nothing)")
    args = parser.parse_args(argv)
    clients, test = load()
    torch.manual_seed(0)
    model = nn.Linear(10, 1)  # your model: any torch module
    evaluate = metrics_on(test)
    print(f"clinics hold {[len(y) for _, y in clients]} patients; {len(test[1])} held out;"
          f" before training: test MSE {evaluate(model)['mse']:.0f}")

    def show(report: RoundReport, metrics: dict[str, float]) -> None:
        print(f"round {report.round:2d}: test MSE {metrics['mse']:7.0f}, R^2"
              f" {metrics['r2']:+.3f}, max epsilon {report.epsilon_max:.2f}"
              + (" (aborted)" if report.aborted else ""))

    result = securefl.federate(
        model, clients, nn.MSELoss(),       # your model, your data, your loss
        rounds=args.rounds,
        target_epsilon=4.0,                 # per clinic, over all rounds, at delta 1e-5
        delta=1e-5,
        max_grad_norm=1.0,
        sample_rate=1.0,                    # public, the same for every clinic: full batches
        batch_size=70,                      # about a clinic's number of patients
        local_epochs=1,
        lr=0.5,
        evaluate=evaluate,
        output_dir=args.output,
        on_round=show,
    )
    final = result.final
    print(f"final test MSE {final['mse']:.0f}, R^2 {final['r2']:.3f} at epsilon <="
          f" {result.epsilon:.2f} (delta {result.delta:g})")
    return result


if __name__ == "__main__":
    main()
