"""A medical-style tabular task: five clinics, the Wisconsin breast cancer
data (569 patients, 30 features, bundled with scikit-learn), each clinic
holding a skewed share of the patients.

Each clinic trains a small MLP with Opacus DP-SGD under a per-clinic privacy
budget, and the server only ever sees the sum of their (fixed-point encoded,
masked) updates.  The features are scaled with fixed public constants, not
with statistics of any clinic's data.

    python examples/breast_cancer.py [--rounds N] [OUTPUT_DIR]
"""

from __future__ import annotations

import argparse
import tempfile

from securefl.federation import (
    DatasetName,
    SimulationConfig,
    SimulationResult,
    load_breast_cancer_federated,
    run_simulation,
)


def main(argv: list[str] | None = None) -> SimulationResult:
    """Run the federation, print its accuracy and privacy per round, and
    return the run (the run directory is OUTPUT_DIR/secure, or one under a
    fresh temporary directory)."""
    parser = argparse.ArgumentParser(
        description="five clinics, the breast cancer data, secure aggregation")
    parser.add_argument("output_dir", nargs="?", metavar="OUTPUT_DIR")
    parser.add_argument("--rounds", type=int, default=8,
                        help="rounds; the budget below is spread over them (default 8)")
    args = parser.parse_args(argv)
    config = SimulationConfig(
        dataset=DatasetName.BREAST_CANCER,
        num_clients=5,
        rounds=args.rounds,
        dropout=0.2,
        target_epsilon=3.0,          # a stricter budget than the digits example
        delta=1e-5,
        batch_size=16,
        hidden=16,
        alpha=1.0,
        seed=0,
    )
    data = load_breast_cancer_federated(config.num_clients, alpha=config.alpha, seed=config.seed)
    print(f"clinics hold {data.client_sizes} patients; {len(data.test[1])} held out for testing")
    base = args.output_dir or tempfile.mkdtemp(prefix="securefl-bc-")
    result = run_simulation(config, f"{base}/secure", data=data)
    for report in result.rounds:
        print(f"round {report.round}: accuracy {report.accuracy:.3f},"
              f" {len(report.survivors)}/5 clinics in the sum,"
              f" max epsilon {report.epsilon_max:.2f}" + (" (aborted)" if report.aborted else ""))
    final = result.metrics["final"]
    print(f"final accuracy {final['accuracy']:.3f} at epsilon <= {final['epsilon_max']:.2f}"
          f" (delta {final['delta']:g}); ledger: {result.output_dir}/ledger.jsonl")
    return result


if __name__ == "__main__":
    main()
