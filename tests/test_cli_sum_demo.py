"""The secure-sum demo prints an explanation and verifies itself."""

from __future__ import annotations

import pytest

from securefl.cli import main


def test_sum_demo_runs_and_says_the_sums_match(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sum-demo", "--clients", "6", "--length", "500", "--mode", "active"]) == 0
    out = capsys.readouterr().out
    assert "identical in every entry" in out
    assert "DEAD_AFTER" in out


def test_configuration_errors_are_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sum-demo", "--clients", "6", "--bits", "70"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("securefl: error:") and "bits" in err
