"""``securefl bench`` on a tiny grid: exact sums, reports written, skipping works."""

from __future__ import annotations

import json
from pathlib import Path

from securefl.bench.suite import Setting, flower_shares, grid
from securefl.cli import main
from securefl.protocol import Round


def test_bench_writes_results_table_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "bench"
    status = main(["bench", "--clients", "6,12", "--length", "2000", "--dropout", "0,0.3",
                   "--graph", "complete", "--no-flower", "--out", str(out)])
    assert status == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    header, records = json.loads(lines[0]), [json.loads(x) for x in lines[1:]]
    assert header["machine"]["prg"]["prg_expand_gbps"] > 0
    assert header["command"].startswith("securefl bench")
    assert [r["setting"]["n"] for r in records] == [6, 6, 12, 12]
    assert all(r["securefl"]["exact"] for r in records)
    # 31-bit ring: 4 bytes per masked entry, plus keys and shares
    assert all(r["securefl"]["bytes_up_per_client"] > 2000 * 4 for r in records
               if r["setting"]["dropout"] == 0)
    table = (out / "results.md").read_text()
    assert "| 12 | 2e+03 | 30% | complete (11, 7) |" in table
    assert (out / "time_vs_n.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_budget_skips_predicted_slow_settings(tmp_path: Path) -> None:
    status = main(["bench", "--clients", "4,40", "--length", "20000", "--dropout", "0",
                   "--graph", "complete", "--no-flower", "--budget", "1e-9",
                   "--out", str(tmp_path)])
    assert status == 0
    records = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()[1:]]
    assert records[0]["securefl"] is not None  # nothing measured yet: the first one runs
    assert records[1]["securefl"] is None and "predicted" in records[1]["skipped"][0]


def test_grid_uses_the_parameter_finder_for_sparse_graphs() -> None:
    settings = grid([1000], [10], [0.05], ["complete", "harary"])
    sparse = next(s for s in settings if s.graph == "harary")
    assert (sparse.degree, sparse.threshold) == (30, 17)  # fcp's published n=1000 cell
    assert flower_shares(Setting(100, 1, 0.1, "harary", 26, 6, Round.UNMASKING)) == (27, 6)
    assert flower_shares(Setting(100, 1, 0.1, "complete", 99, 51, Round.UNMASKING)) == (100, 51)
