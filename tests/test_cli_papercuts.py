"""A newcomer's stumbles on the command line, each played and checked against
the documented behaviour (issue 13, papercuts)."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from securefl.cli import COMMANDS, EXIT_BROKEN_PIPE, build_parser, help_text, main
from securefl.cli.bench import DEFAULT_OUT
from securefl.conformance.jsonio import DEFAULT_VECTOR_DIR
from securefl.conformance.runner import all_cases, select

ROOT = Path(__file__).resolve().parent.parent


def _cli(*argv: str, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "securefl.cli", *argv], cwd=ROOT, text=True,
                          stdout=stdout, stderr=subprocess.PIPE, timeout=300, check=False)


# -- bench -------------------------------------------------------------------------------

def test_bench_defaults_to_its_own_directory_not_the_committed_results() -> None:
    parser = build_parser()
    args = parser.parse_args(["bench"])
    assert args.out == DEFAULT_OUT
    assert args.out.resolve() != (ROOT / "benchmarks" / "results").resolve()
    assert not str(args.out).startswith("benchmarks")


def test_bench_without_out_writes_under_the_current_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    status = main(["bench", "--clients", "4", "--length", "300", "--dropout", "0",
                   "--graph", "complete", "--no-flower"])
    assert status == 0
    assert (tmp_path / DEFAULT_OUT / "results.jsonl").is_file()
    assert not (tmp_path / "benchmarks").exists()


def test_bench_help_says_where_it_writes() -> None:
    out = _cli("bench", "--help").stdout
    assert str(DEFAULT_OUT) in out and "--out benchmarks/results" in out


# -- conformance -k, --json ------------------------------------------------------------

def test_a_pattern_that_selects_nothing_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["conformance", "-k", "nomatch"]) == 2
    captured = capsys.readouterr()
    assert "selects no conformance case" in captured.err and "'nomatch'" in captured.err
    assert "PASS" not in captured.out


def test_a_numeric_pattern_matches_ids_not_titles() -> None:
    cases = all_cases(DEFAULT_VECTOR_DIR, vectors=True, scenarios=True)
    twelve = select(cases, ["12"])
    assert twelve, "section 12 has cases"
    assert {c.section for c in twelve} == {"12"}
    # the vector cases titled "... tcId 12 ..." live in other sections
    assert any("tcId 12" in c.title for c in cases)
    assert not any("tcId 12" in c.title for c in twelve)


def test_a_section_includes_its_subsections_and_nothing_else() -> None:
    cases = all_cases(DEFAULT_VECTOR_DIR, vectors=True, scenarios=True)
    ten = select(cases, ["10"])
    assert {c.section for c in ten} == {c.section for c in cases
                                         if c.section == "10" or c.section.startswith("10.")}
    assert len({c.section for c in ten}) > 1
    one = select(cases, ["4/kdf_test/1"])
    assert [c.id for c in one] == ["4/kdf_test/1"]          # not 4/kdf_test/10..19
    assert {c.id.rsplit("/", 1)[0] for c in select(cases, ["4/kdf_test"])} == {"4/kdf_test"}
    assert select(cases, ["10.1/"]) == select(cases, ["10.1"])


def test_a_word_pattern_is_a_substring_of_the_id_or_title() -> None:
    cases = all_cases(DEFAULT_VECTOR_DIR, vectors=True, scenarios=True)
    aead = select(cases, ["AEAD"])
    assert aead and all("aead" in (c.id + c.title).lower() for c in aead)


def test_json_into_a_missing_directory_fails_before_any_case(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing" / "x.json"
    assert main(["conformance", "--json", str(missing)]) == 2
    captured = capsys.readouterr()
    assert "does not exist" in captured.err and str(missing) in captured.err
    assert "PASS" not in captured.out and "conformance against" not in captured.out
    assert "Traceback" not in captured.err


def test_json_report_still_written(tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    assert main(["conformance", "-k", "12/1", "--json", str(report)]) == 0
    assert '"passed": 1' in report.read_text()


# -- a closed pipe ---------------------------------------------------------------------

def _into_a_closed_pipe(*argv: str) -> subprocess.CompletedProcess[str]:
    read_end, write_end = os.pipe()
    os.close(read_end)                   # `| head` that has already exited
    try:
        return _cli(*argv, stdout=write_end)
    finally:
        os.close(write_end)


@pytest.mark.parametrize("argv", [("conformance", "--list"),
                                  ("sum-demo", "--clients", "5", "--length", "100")])
def test_a_reader_that_went_away_ends_quietly(argv: tuple[str, ...]) -> None:
    proc = _into_a_closed_pipe(*argv)
    assert proc.returncode == EXIT_BROKEN_PIPE, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch", reason="the train extra runs the simulator")
    from securefl.federation.simulation import SimulationConfig, run_simulation

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("papercuts") / "run"
    run_simulation(SimulationConfig(num_clients=3, rounds=1, noise_multiplier=1.0, hidden=8,
                                    dropout=0.0, epsilon_budget=50.0, seed=0), out)
    return out


@pytest.mark.parametrize("flags", [(), ("--json",)])
def test_audit_into_a_reader_that_went_away_ends_quietly_and_writes_nothing(
        small_run: Path, flags: tuple[str, ...]) -> None:
    # `securefl audit RUN | head`, the first example
    before = sorted(p.name for p in small_run.iterdir())
    proc = _into_a_closed_pipe("audit", str(small_run), *flags)
    assert proc.returncode == EXIT_BROKEN_PIPE, proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr
    after = sorted(p.name for p in small_run.iterdir())
    assert [n for n in after if not n.startswith("run.sqlite-")] == [
        n for n in before if not n.startswith("run.sqlite-")]


# -- sum-demo --------------------------------------------------------------------------

def test_sum_demo_prints_each_round_before_the_result(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sum-demo", "--clients", "7", "--length", "200", "--mode", "active"]) == 0
    out = capsys.readouterr().out
    rounds = ["ADVERTISE_KEYS", "SHARE_KEYS", "MASKED_INPUT_COLLECTION", "CONSISTENCY_CHECK",
              "UNMASKING"]
    positions = [out.index(f"  {name} ") for name in rounds]
    assert positions == sorted(positions)
    assert max(positions) < out.index("session finished")
    assert "silent: [" in out              # the scheduled dropouts show in their round


def test_sum_demo_mode_has_help() -> None:
    out = _cli("sum-demo", "--help").stdout
    mode_help = out[out.index("--mode"):]
    assert "semi-honest" in mode_help and "active" in mode_help and "server" in mode_help


# -- help texts ------------------------------------------------------------------------

def _subcommands() -> list[str]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(sub.choices)


def test_every_subcommand_is_checked_for_markup() -> None:
    assert _subcommands() == sorted(c.replace("_", "-") for c in COMMANDS)


@pytest.mark.parametrize("command", [(), *((c,) for c in _subcommands())])
def test_help_shows_no_rst_markup(command: tuple[str, ...]) -> None:
    out = _cli(*command, "--help").stdout
    assert out and "``" not in out and not re.search(r":[a-z]+:`", out), out


def test_help_text_strips_markup_and_keeps_words() -> None:
    text = "``securefl x``: see :class:`~securefl.Foo`."
    assert help_text(text) == "securefl x: see securefl.Foo."


# -- simulate ----------------------------------------------------------------------------

@pytest.mark.parametrize("flags", [("--threshold", "11"),
                                   ("--graph", "harary", "--graph-degree", "4",
                                    "--threshold", "7")])
def test_an_impossible_threshold_is_refused_before_anything_is_printed_or_written(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: tuple[str, ...]) -> None:
    out = tmp_path / "run"
    assert main(["simulate", "--rounds", "1", "--out", str(out), *flags]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""                      # no header, no table
    assert "threshold" in captured.err
    assert not out.exists()                        # no empty run directory
