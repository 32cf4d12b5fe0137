"""``securefl simulate --privacy user-level`` (and ``both``) with no other
flag runs a default federation of hundreds of clients (issue 11): which
defaults apply, that explicit flags win, that the run is audited clean, and
that a too-small federation is still refused with the fix named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from securefl.cli import build_parser, main
from securefl.cli import simulate as cli_simulate
from securefl.cli.simulate import config_from_args, describe_defaults, user_level_defaults
from securefl.errors import ConfigurationError
from securefl.federation.data import default_min_size, dirichlet_split, load_digits_federated
from securefl.federation.simulation import USER_LEVEL_DEFAULTS, SimulationConfig, preflight

torch.set_num_threads(1)


def _config(*flags: str) -> SimulationConfig:
    return config_from_args(build_parser().parse_args(["simulate", *flags]))


def test_the_cli_defaults_mirror_the_library_constant() -> None:
    mapped = {cli_simulate._CONFIG_KEYS[dest]: value
              for dest, value in cli_simulate.USER_LEVEL_DEFAULTS.items()}
    assert mapped == dict(USER_LEVEL_DEFAULTS)


@pytest.mark.parametrize("privacy", ["user-level", "both"])
def test_user_level_privacy_gets_the_default_federation(privacy: str) -> None:
    config = _config("--privacy", privacy)
    assert (config.num_clients, config.client_sample_rate, config.bits, config.rounds) == (
        300, 0.3, 16, 20)
    assert config.user_epsilon == 8.0 and config.user_clip == 1.0 and config.alpha == 0.5
    assert config == SimulationConfig(privacy=privacy, **USER_LEVEL_DEFAULTS)
    preflight(config)  # the noise plan fits the sessions of every cohort size


def test_record_level_keeps_its_defaults() -> None:
    for flags in ([], ["--privacy", "record-level"]):
        config = _config(*flags)
        assert (config.num_clients, config.rounds, config.bits, config.client_sample_rate) == (
            10, 10, 32, 1.0)
        assert user_level_defaults(build_parser().parse_args(["simulate", *flags])) == {}


def test_explicit_flags_win() -> None:
    config = _config("--privacy", "user-level", "--clients", "120", "--rounds", "3",
                     "--bits", "18", "--client-sample-rate", "0.5")
    assert (config.num_clients, config.rounds, config.bits, config.client_sample_rate) == (
        120, 3, 18, 0.5)
    config = _config("--privacy", "both", "--clients", "200", "--client-sample-rate", "1")
    assert (config.num_clients, config.rounds, config.bits, config.client_sample_rate) == (
        200, 20, 16, 1.0)
    args = build_parser().parse_args(["simulate", "--privacy", "both", "--clients", "200"])
    applied = user_level_defaults(args)
    assert applied == {"client_sample_rate": 0.3, "bits": 16, "rounds": 20}
    assert describe_defaults(applied).endswith(
        "--client-sample-rate 0.3 --bits 16 --rounds 20; a flag given wins")
    # sampled rounds take neither a fixed threshold nor a Harary graph: the
    # sampling default stands back rather than turn a valid command into a refusal
    for flags in (["--threshold", "160"], ["--graph", "harary"]):
        args = build_parser().parse_args(["simulate", "--privacy", "user-level", *flags])
        assert "client_sample_rate" not in user_level_defaults(args)
        assert user_level_defaults(args)["clients"] == 300


@pytest.mark.parametrize("privacy", ["user-level", "both"])
def test_the_default_command_runs_and_audits_clean(
        privacy: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # the same code path as the documented command, over fewer rounds
    monkeypatch.setitem(cli_simulate.USER_LEVEL_DEFAULTS, "rounds", 1)
    out = tmp_path / "run"
    assert main(["simulate", "--privacy", privacy, "--no-progress", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert text.count("user-level default federation") == 1
    assert ("--clients 300 --client-sample-rate 0.3 --bits 16 --rounds 1; a flag given wins"
            in text)
    assert "300 clients, 1 rounds" in text and "final test accuracy" in text
    assert "user-level epsilon at delta 1e-05" in text
    if privacy == "both":
        assert "max client epsilon at delta 1e-05" in text
    else:
        assert "no record-level epsilon" in text
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["num_clients"] == 300
    assert metrics["config"]["client_sample_rate"] == 0.3 and metrics["config"]["bits"] == 16
    assert main(["audit", str(out), "--no-plot"]) == 0


def test_a_too_small_federation_is_refused_naming_the_fix(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    code = main(["simulate", "--privacy", "user-level", "--clients", "10", "--bits", "32",
                 "--client-sample-rate", "1", "--no-progress", "-o", str(out)])
    assert code == 2
    captured = capsys.readouterr()
    assert "no session of at most 10 clients takes the user-level noise" in captured.err
    assert "more clients" in captured.err and "USER_LEVEL_DEFAULTS" in captured.err
    assert "300 clients, client sampling rate 0.3, Z_2^16" in captured.err
    assert captured.out == "" and not out.exists()


def test_the_split_minimum_falls_back_only_for_hundreds_of_clients() -> None:
    assert [default_min_size(1437, n) for n in (2, 10, 100, 143)] == [10] * 4
    assert [default_min_size(1437, n) for n in (144, 200, 300, 1437)] == [2, 1, 1, 1]
    # a federation that met the 10-example minimum is split exactly as before
    y = np.repeat(np.arange(10), 144)
    for n, alpha in ((10, 0.5), (100, 100.0)):
        fallback = dirichlet_split(y, n, alpha, np.random.default_rng(3))
        explicit = dirichlet_split(y, n, alpha, np.random.default_rng(3), min_size=10)
        assert all(np.array_equal(a, b) for a, b in zip(fallback, explicit, strict=True))


def test_hundreds_of_clients_each_get_some_digits() -> None:
    data = load_digits_federated(300)
    sizes = np.array(data.client_sizes)
    assert len(sizes) == 300 and sizes.min() >= 1 and sizes.sum() == 1437
    assert 4 <= float(np.median(sizes)) <= 6
    with pytest.raises(ConfigurationError, match="at least one example"):
        dirichlet_split(np.zeros(10, dtype=np.int64), 2, 1.0, np.random.default_rng(0),
                        min_size=0)


def test_the_help_names_the_user_level_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("clients (default 10; 300", "rounds (default 10; 20", "(default 32; 16",
                 "every client in every round; 0.3 with --privacy user-level or both"):
        assert flag in text, flag
