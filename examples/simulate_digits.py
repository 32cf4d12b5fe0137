"""A private federation on scikit-learn's digits through the Python API.

Ten hospitals-that-are-really-digit-scanners each hold a skewed (non-IID)
share of the data.  They train with Opacus DP-SGD, encode their updates in
Z_2^32, and the server learns only their sum through secure aggregation,
while a fifth of them drop out at random protocol rounds.  This is what
``securefl simulate`` does, written out.

    python examples/simulate_digits.py [--rounds N] [OUTPUT_DIR]
"""

from __future__ import annotations

import argparse
import tempfile

from securefl.federation import RoundReport, SimulationConfig, SimulationResult, run_simulation
from securefl.federation.optimizers import ServerOptimizerKind
from securefl.privacy import Weighting


def show(report: RoundReport) -> None:
    """Print one line per round."""
    dropped = ", ".join(f"{cid}@{where}" for cid, where in report.dropped.items()) or "none"
    status = "ABORTED" if report.aborted else f"{len(report.survivors)} updates summed"
    print(f"round {report.round:2d}: accuracy {report.accuracy:.3f}, max epsilon"
          f" {report.epsilon_max:.2f}, {status}; dropped: {dropped}")


def main(argv: list[str] | None = None) -> SimulationResult:
    """Run the federation, summarise it and return it (the run directory is
    OUTPUT_DIR, or a fresh temporary directory)."""
    parser = argparse.ArgumentParser(
        description="ten clients, the digits data, secure aggregation")
    parser.add_argument("output_dir", nargs="?", metavar="OUTPUT_DIR")
    parser.add_argument("--rounds", type=int, default=10,
                        help="rounds; the budget below is spread over them (default 10)")
    args = parser.parse_args(argv)
    config = SimulationConfig(
        num_clients=10,
        rounds=args.rounds,
        dropout=0.2,                 # each client drops with p=0.2 at a random protocol round
        target_epsilon=7.5,          # per client, over all the rounds, at delta 1e-5
        delta=1e-5,
        weighting=Weighting.UNIFORM,  # the default: nothing reveals a client's record count
        server_optimizer=ServerOptimizerKind.FEDAVGM,  # server momentum 0.5: free in privacy
        secure=True,
        seed=0,
    )
    output = args.output_dir or tempfile.mkdtemp(prefix="securefl-digits-")
    result = run_simulation(config, output, on_round=show)
    final = result.metrics["final"]
    print(f"\nfinal accuracy {final['accuracy']:.3f}; max epsilon {final['epsilon_max']:.2f}"
          f" (RDP), {final['epsilon_max_prv']:.2f} (PRV), {final['epsilon_max_dp_accounting']:.2f}"
          f" (dp-accounting) at delta {final['delta']:g}")
    print(f"files in {result.output_dir}: metrics.json, ledger.jsonl, checkpoint.pt,"
          " accuracy_per_round.png")
    return result


if __name__ == "__main__":
    main()
