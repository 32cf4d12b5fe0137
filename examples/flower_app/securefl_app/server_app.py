"""ServerApp: rounds of securefl secure aggregation over the Grid, the server
optimizer, evaluation, ``metrics.json`` and the privacy ledger.

The ServerApp writes ``metrics.json``, ``ledger.jsonl``, ``checkpoint.pt``,
``sums.npz`` and ``events.jsonl`` to run config ``output-dir``; when it is
empty (the default), to a fresh directory ``securefl-runs/<UTC time>-run<id>``
under the ServerApp's working directory (where the SuperLink was started) or
under ``$SECUREFL_RUNS_DIR``.  The directory and the per-round table are
printed, so ``flwr run . <connection> --stream`` shows them.  To continue a
run that was interrupted: ``--run-config 'resume=true output-dir="<its dir>"'``.
"""

import dataclasses

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from securefl.flower.federation import run_federation
from securefl.flower.runner import resolve_output_dir

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run (or, with ``resume``, continue) the federation described by the
    run config."""
    out, resume = resolve_output_dir(context.run_config, context.run_id)
    print(f"securefl: {'resuming the run in' if resume else 'writing to'} {out}", flush=True)
    run_config = {**context.run_config, "output-dir": str(out)}
    run_federation(grid, dataclasses.replace(context, run_config=run_config))
