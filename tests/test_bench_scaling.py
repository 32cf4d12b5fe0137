"""The scaling benchmark (``benchmarks/scaling.py``): on a tiny grid it writes
strict JSON of a fixed schema, a Markdown table and a plot; every measured
cell checked its sum exactly; cells past the budget are skipped and say why;
the fitted exponents recover known power laws."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securefl.bench import scaling

RESULT_FIELDS = {"wall_seconds", "cpu_seconds", "input_seconds", "server_seconds",
                 "transport_seconds", "clients_seconds", "plain_sum_seconds", "bytes_up_per_client",
                 "bytes_down_per_client", "survivors", "exact", "peak_rss_mb",
                 "minor_faults"}


def _strict(text: str) -> Any:
    def refuse(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def _run(tmp_path: Path, budget: str) -> dict[str, Any]:
    argv = ["--ns", "6", "12", "--ms", "64", "300", "--fixed-m", "64", "--fixed-n", "6",
            "--budget", budget, "--timeout", "600", "--out", str(tmp_path)]
    assert scaling.main(argv) == 0
    return dict(_strict((tmp_path / "scaling.json").read_text()))


def test_tiny_grid_writes_strict_json_table_and_plot(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    report = _run(tmp_path, "600")
    assert report["schema"] == scaling.SCHEMA
    assert report["command"].startswith("python benchmarks/scaling.py --ns 6 12")
    assert set(report["machine"]) == {"cpus", "loadavg_start", "loadavg_end",
                                      "openssl_aes_gbps", "openssl_x25519_per_s"}
    assert report["numpy_madvise_hugepage"] is True
    assert set(report["transparent_hugepage"]) == {"enabled", "defrag"}
    cells = [(r["cell"]["sweep"], r["cell"]["n"], r["cell"]["m"]) for r in report["rows"]]
    assert cells == [("n", 6, 64), ("n", 12, 64), ("m", 6, 64), ("m", 6, 300)]
    for row in report["rows"]:
        result = row["result"]
        assert "skipped" not in result, result
        assert set(result) >= RESULT_FIELDS
        assert result["exact"] is True
        assert result["survivors"] == row["cell"]["n"] - round(0.05 * row["cell"]["n"])
        assert result["peak_rss_mb"] > 0 and result["bytes_up_per_client"] > 0
        assert row["floor"]["seconds"] > 0
        assert math.isclose(row["wall_over_floor"],
                            result["wall_seconds"] / row["floor"]["seconds"])
    # the (6, 64) cell is in both sweeps and is measured once
    assert report["rows"][2]["result"].get("reused") is True
    for sweep in ("n", "m"):
        assert set(report["exponents"][sweep]) == {"wall_seconds", "cpu_seconds",
                                                   "peak_rss_mb", "bytes_down_per_client"}
        assert isinstance(report["exponents"][sweep]["wall_seconds"], float)
    table = (tmp_path / "scaling.md").read_text()
    assert table.count("\n| n |") + table.count("\n| m |") == 4
    assert "targets.md" in table  # the Flower comparison is referenced, not repeated
    assert (tmp_path / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cells_past_the_budget_are_skipped_with_the_reason(tmp_path: Path) -> None:
    report = _run(tmp_path, "0.000001")
    measured = [r for r in report["rows"] if "skipped" not in r["result"]]
    skipped = [r for r in report["rows"] if "skipped" in r["result"]]
    # the first cell of each sweep has nothing to predict from and runs
    assert [(r["cell"]["sweep"], r["cell"]["n"], r["cell"]["m"]) for r in skipped] == [
        ("n", 12, 64), ("m", 6, 300)]
    assert all("budget" in r["result"]["skipped"] for r in skipped)
    assert all(r["result"]["exact"] is True for r in measured)
    assert "skipped: predicted" in (tmp_path / "scaling.md").read_text()
    # one measured cell per sweep: no exponent can be fitted, and it is null
    assert report["exponents"]["n"]["wall_seconds"] is None


@settings(max_examples=30, deadline=None)
@given(power=st.floats(-3, 3), scale=st.floats(1e-3, 1e3),
       xs=st.lists(st.floats(1, 1e6), min_size=2, max_size=8, unique=True))
def test_fitted_exponent_recovers_a_power_law(power: float, scale: float,
                                              xs: list[float]) -> None:
    if max(xs) / min(xs) < 1.5:
        return
    fitted = scaling.fit_exponent(xs, [scale * x ** power for x in xs])
    assert fitted is not None and math.isclose(fitted, power, abs_tol=1e-6)


def test_floor_counts_keystream_and_agreements() -> None:
    cell = scaling.Cell("n", 100, 1000, "harary", 10, 4, 0.1, 32)
    floor = scaling.crypto_floor(cell, aes_bytes_per_s=1e9, x25519_per_s=1e4)
    survivors, pairs = 90, 10 * 10 * 90 / 99
    assert math.isclose(floor["keystream_bytes"], (90 * 11 + 90 + pairs) * 1000 * 4)
    assert math.isclose(floor["x25519_exchanges"], 100 * 10 + survivors * 10 + pairs)
    assert math.isclose(floor["seconds"], floor["keystream_bytes"] / 1e9
                        + floor["x25519_exchanges"] / 1e4)
