"""ServerApp: rounds of securefl secure aggregation over the Grid, the server
optimizer, evaluation, ``metrics.json`` and the privacy ledger.

Set ``output-dir`` in the run config (``flwr run . <connection> --run-config
'output-dir="/abs/path"'``): the ServerApp writes ``metrics.json``,
``ledger.jsonl``, ``checkpoint.pt``, ``sums.npz`` and ``events.jsonl`` there.
"""

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from securefl.flower.federation import run_federation

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation described by the run config."""
    run_federation(grid, context)
