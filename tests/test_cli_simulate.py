"""``securefl simulate`` end to end on a small setting (a few seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from securefl.cli import main
from securefl.federation.checkpoint import load_checkpoint
from securefl.privacy.ledger import read_ledger

torch.set_num_threads(1)

SMALL = ["--clients", "3", "--rounds", "2", "--noise-multiplier", "1.0", "--dropout", "0.3",
         "--seed", "0", "--no-progress"]


def test_simulate_then_audit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["simulate", *SMALL, "--epsilon-budget", "50", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "round  accuracy" in text and "final test accuracy" in text
    assert "dp-accounting" in text and f"securefl audit {out}" in text
    for name in ("metrics.json", "ledger.jsonl", "checkpoint.pt", "accuracy_per_round.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "accuracy_per_round.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["rounds"]) == 2
    for row in metrics["rounds"]:
        assert {"accuracy", "loss", "epsilon_max", "delta", "survivors", "dropped"} <= set(row)
    final = metrics["final"]
    assert 0.0 <= final["accuracy"] <= 1.0 and final["delta"] == 1e-5
    assert final["epsilon_max"] > 0 and final["epsilon_max_dp_accounting"] > 0
    assert metrics["config"]["secure"] is True
    assert len(read_ledger(out / "ledger.jsonl")) == 6
    assert load_checkpoint(out / "checkpoint.pt")["round"] == 2
    assert "3@R4-unmask" in text and "3@R0-advertise" in text
    assert "R3-consistency" not in text  # a semi-honest session has no such round

    assert main(["audit", str(out), "--plot", str(out / "epsilon_per_round.png")]) == 0
    text = capsys.readouterr().out
    assert "stayed within its budget by all four accountants" in text
    assert (out / "epsilon_per_round.png").read_bytes()[:4] == b"\x89PNG"
    assert main(["audit", str(out), "--json", "--no-plot"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and len(report["clients"]) == 3 and len(report["rounds"]) == 2


def test_simulate_refuses_to_reuse_a_ledger(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "ledger.jsonl").write_text("")
    assert main(["simulate", *SMALL, "-o", str(out)]) == 2
    assert "append-only" in capsys.readouterr().err


def test_simulate_refuses_an_overflowing_bit_budget(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["simulate", *SMALL, "--bits", "16", "--frac-bits", "20", "-o",
                 str(tmp_path / "run")])
    assert code == 2
    captured = capsys.readouterr()
    assert "bit budget exceeded" in captured.err and "use frac_bits <=" in captured.err
    assert captured.out == ""  # refused up front: nothing ran, nothing was written
    assert not (tmp_path / "run").exists()


def test_flags_are_validated(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["simulate", "--dropout", "1.5"])
    with pytest.raises(SystemExit):
        main(["simulate", "--noise-multiplier", "1", "--target-epsilon", "3"])
    assert "not allowed with" in capsys.readouterr().err


def test_building_the_parser_loads_neither_torch_nor_opacus() -> None:
    import subprocess
    import sys

    code = ("import sys, securefl.cli as c; c.build_parser();"
            " print(sorted(m for m in ('torch', 'opacus', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_defaults_are_the_measured_configuration() -> None:
    from securefl.cli import build_parser
    from securefl.cli.simulate import config_from_args
    from securefl.federation.optimizers import ServerOptimizerKind

    config = config_from_args(build_parser().parse_args(["simulate"]))
    assert (config.num_clients, config.rounds, config.dropout) == (10, 10, 0.2)
    assert (config.target_epsilon, config.noise_multiplier, config.delta) == (7.5, None, 1e-5)
    assert config.secure and config.server_optimizer is ServerOptimizerKind.FEDAVGM
    assert config.server_momentum == 0.5 and config.bits == 32
    config = config_from_args(build_parser().parse_args(
        ["simulate", "--noise-multiplier", "1.2", "--no-secure-aggregation"]))
    assert (config.target_epsilon, config.noise_multiplier, config.secure) == (None, 1.2, False)


def test_server_learning_rate_defaults_per_optimizer() -> None:
    from securefl.cli import build_parser
    from securefl.cli.simulate import config_from_args

    def lr(*flags: str) -> float | None:
        return config_from_args(build_parser().parse_args(["simulate", *flags])).server_lr

    assert lr() == 1.0
    assert lr("--server-optimizer", "fedadam") == 0.1
    assert lr("--server-optimizer", "fedadam", "--server-lr", "0.3") == 0.3


def test_insecure_reproducible_noise_is_an_explicit_warned_opt_in(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from securefl.cli.simulate import DEFAULT_SAMPLE_RATE
    from securefl.privacy.client import DEFAULT_SAMPLE_RATE as CLIENT_DEFAULT

    assert DEFAULT_SAMPLE_RATE == CLIENT_DEFAULT
    out = tmp_path / "run"
    assert main(["simulate", *SMALL, "--insecure-reproducible-noise", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "WARNING" in captured.err and "NO differential privacy" in captured.err
    rows = read_ledger(out / "ledger.jsonl")
    assert {r.noise_source for r in rows} == {"insecure-seeded"}
    assert json.loads((out / "metrics.json").read_text())["final"]["noise_source"] == (
        "insecure-seeded")
    # the default run: secret noise, uniform weighting, add/remove-one, no warning
    assert main(["simulate", *SMALL, "-o", str(tmp_path / "default")]) == 0
    captured = capsys.readouterr()
    assert "WARNING" not in captured.err and "add-remove-one adjacency" in captured.out
    rows = read_ledger(tmp_path / "default" / "ledger.jsonl")
    assert {(r.noise_source, r.adjacency, r.weighting) for r in rows} == {
        ("os-csprng", "add-remove-one", "uniform")}


def test_a_run_that_completes_no_round_exits_1_and_says_why(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = ["--clients", "3", "--rounds", "1", "--noise-multiplier", "1.0", "--seed", "0",
           "--no-progress"]
    # every client drops out: the round aborts
    assert main(["simulate", *one, "--dropout", "1.0", "-o", str(tmp_path / "drop")]) == 1
    err = capsys.readouterr().err
    assert "no round completed (aggregation aborted" in err
    # every client refuses: its budget cannot afford one round
    out = tmp_path / "broke"
    assert main(["simulate", *one, "--dropout", "0", "--epsilon-budget", "0.01",
                 "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert "no round completed (every client refused every round" in err
    assert "budget" in err
    # a resume with a flag that differs from the run's own is refused, naming it
    assert main(["simulate", "--resume", str(out), "--rounds", "4", "--seed", "0"]) == 2
    err = capsys.readouterr().err
    assert "rounds: run 1, given 4" in err and "seed:" not in err  # --seed 0 is the run's
    # a finished run resumed: nothing to run, the same verdict
    assert main(["simulate", "--resume", str(out), "--no-progress"]) == 1
    assert "every client refused every round" in capsys.readouterr().err
