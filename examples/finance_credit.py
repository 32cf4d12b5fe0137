"""Finance: credit scoring across banks that cannot share their customers.

Each bank holds its own loan applicants (a synthetic credit portfolio,
:mod:`securefl.federation.finance`: about 7% of applicants default, banks
see different default rates).  They train one small model of their own
choosing with Opacus DP-SGD under a per-bank privacy budget, through
:func:`securefl.federate`, and the server learns only the sum of their
masked updates through secure aggregation.

Defaults are rare, so accuracy says little: a model that approves everyone
is right about 93% of the time.  The example evaluates the area under the
ROC curve (AUC) on held-out applicants after every round, beside the
accuracy of always predicting "no default".

    python examples/finance_credit.py [--banks 5] [--rounds 10] [--output DIR]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

import securefl
from securefl.federation import RoundReport
from securefl.federation.finance import default_scores, load_credit_federated, roc_auc


def credit_metrics(test: tuple[np.ndarray, np.ndarray]) -> Callable[[nn.Module], dict[str, float]]:
    """An ``evaluate`` function: the test AUC, and the accuracy of
    predicting default when its probability exceeds one half."""
    x_test, y_test = test

    def evaluate(model: nn.Module) -> dict[str, float]:
        scores = default_scores(model, x_test)
        return {"auc": roc_auc(scores, y_test),
                "accuracy": float(np.mean((scores > 0.5) == (y_test == 1)))}

    return evaluate


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the federation; print and return its figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--banks", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--applicants", type=int, default=6000)
    parser.add_argument("--target-epsilon", type=float, default=7.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="write the ledger, metrics and"
                        " checkpoint here (default: write nothing)")
    args = parser.parse_args(argv)

    data = load_credit_federated(args.banks, num_applicants=args.applicants, seed=args.seed)
    _, y_test = data.test
    print(f"{args.banks} banks hold {data.client_sizes} applicants, with"
          f" {[int(y.sum()) for _, y in data.clients]} defaults;"
          f" {len(y_test)} held out ({y_test.mean():.1%} default)")
    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(data.num_features, 16), nn.ReLU(), nn.Linear(16, 2))

    def show(report: RoundReport, metrics: dict[str, float]) -> None:
        status = "ABORTED" if report.aborted else f"{len(report.survivors)} banks summed"
        print(f"round {report.round:2d}: test AUC {metrics['auc']:.3f}, {status},"
              f" max epsilon {report.epsilon_max:.2f}")

    result = securefl.federate(
        model, data.clients, nn.CrossEntropyLoss(),
        rounds=args.rounds,
        target_epsilon=args.target_epsilon,  # per bank, over all rounds, at delta 1e-5
        delta=1e-5, sample_rate=0.5, batch_size=36, local_epochs=2,
        test_data=data.test, evaluate=credit_metrics(data.test),
        secure=True,
        dropout=0.1,                         # a bank may drop out mid-round
        output_dir=args.output, seed=args.seed, on_round=show,
    )
    figures = {"auc": result.final["auc"], "accuracy": result.final["accuracy"],
               "majority_accuracy": float(1.0 - y_test.mean()),
               "epsilon": result.epsilon, "delta": result.delta,
               "output_dir": result.output_dir}
    print(f"test AUC {figures['auc']:.3f} (0.5 is chance); accuracy {figures['accuracy']:.3f}"
          f" against {figures['majority_accuracy']:.3f} for always 'no default'; max epsilon"
          f" {result.epsilon:.2f} at delta {result.delta:g}")
    if result.output_dir is not None:
        print(f"ledger: {result.output_dir}/ledger.jsonl (securefl audit {result.output_dir})")
    return figures


if __name__ == "__main__":
    main()
