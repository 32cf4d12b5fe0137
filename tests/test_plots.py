"""The plots explain themselves: a legend names every line, band and marker;
rounds are integers on short runs; 20 clients get 20 distinct colours and
more are summarised by bands; ``securefl audit`` writes its plot only where
``--plot`` says, never into the run directory by default.

The figures are inspected as matplotlib objects (legend texts, tick values,
line colours), not as pixels."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

pytest.importorskip("matplotlib", reason="the train extra draws the plots")
torch = pytest.importorskip("torch", reason="the train extra runs the federation")

from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from securefl.cli import main  # noqa: E402
from securefl.federation.plots import (  # noqa: E402
    MAX_CLIENT_LINES,
    accuracy_figure,
    client_colours,
    client_label,
    epsilon_figure,
)
from securefl.federation.simulation import SimulationConfig, run_simulation  # noqa: E402


def _legend_texts(fig: Figure) -> list[str]:
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    return [t.get_text() for legend in legends for t in legend.get_texts()]


def _round_ticks(fig: Figure) -> list[float]:
    fig.canvas.draw()
    ax = fig.axes[0]
    low, high = ax.get_xlim()
    return [t for t in ax.get_xticks() if low <= t <= high]


def _client_lines(fig: Figure) -> list:
    return [line for line in fig.axes[0].get_lines()
            if re.match(r"(clients? |\d+ clients: )", line.get_label())]


def _per_client(n: int, rounds: int = 3) -> dict[int, list[tuple[int, float]]]:
    return {cid: [(r, 0.5 * r + 0.01 * cid) for r in range(1, rounds + 1)]
            for cid in range(1, n + 1)}


@pytest.mark.parametrize("rounds", [1, 2, 3, 5, 7])
def test_short_runs_have_integer_round_ticks(rounds: int) -> None:
    xs = list(range(1, rounds + 1))
    for fig in (accuracy_figure(xs, [0.5] * rounds, [1.0] * rounds),
                epsilon_figure(_per_client(4, rounds))):
        ticks = _round_ticks(fig)
        assert ticks and all(float(t).is_integer() for t in ticks), ticks


def test_accuracy_figure_legend_names_every_line_and_the_aborted_marker() -> None:
    fig = accuracy_figure([1, 2, 3], [0.4, 0.4, 0.6], [1.0, 2.0, 3.0], aborted=[2])
    texts = _legend_texts(fig)
    assert "test accuracy" in texts and "largest client epsilon so far" in texts
    assert any(t.startswith("aborted round") for t in texts)
    # the red x sits on the aborted round
    (marker,) = [ln for ln in fig.axes[0].get_lines() if ln.get_label().startswith("aborted")]
    assert list(marker.get_xdata()) == [2]
    # no aborted round: no unexplained entry
    assert not any(t.startswith("aborted") for t in _legend_texts(
        accuracy_figure([1, 2], [0.4, 0.5], [1.0, 2.0])))


@pytest.mark.parametrize("n", [3, 12, 13, 20])
def test_up_to_20_clients_each_get_a_distinct_colour_and_a_legend_entry(n: int) -> None:
    fig = epsilon_figure(_per_client(n), budget=4.0)
    lines = _client_lines(fig)
    assert len(lines) == n
    colours = {to_rgba(line.get_color()) for line in lines}
    assert len(colours) == n  # no colour repeats
    texts = _legend_texts(fig)
    assert {f"client {c}" for c in range(1, n + 1)} <= set(texts)
    assert "budget 4" in texts
    # the legend is outside the axes: it does not hide the lines
    fig.canvas.draw()
    legend_box = fig.legends[0].get_window_extent()
    assert legend_box.x0 >= fig.axes[0].get_window_extent().x1


def test_client_colours_are_distinct_beyond_the_qualitative_maps() -> None:
    for n in (1, 10, 11, 20, 21, 64):
        assert len(set(client_colours(n))) == n


def test_more_clients_are_summarised_by_bands_with_the_largest_spender() -> None:
    n = MAX_CLIENT_LINES + 10
    per_client = _per_client(n)
    fig = epsilon_figure(per_client, budget=3.0)
    texts = _legend_texts(fig)
    assert f"min-max over {n} clients" in texts and "25th-75th percentile" in texts
    assert "median client" in texts and f"client {n} (largest epsilon)" in texts
    assert len(_client_lines(fig)) == 1  # not 30 unreadable lines
    assert len(fig.axes[0].collections) == 2  # the two bands


def test_clients_that_spent_alike_share_one_named_line() -> None:
    """In a uniform run most clients have the same epsilons: one line per
    distinct series, its label naming every client on it (drawn apart, the
    last line drawn would hide the others under one colour)."""
    same = [(1, 1.0), (2, 2.0), (3, 3.0)]
    per_client = {cid: list(same) for cid in range(1, 31)}
    per_client[7] = [(1, 1.0), (2, 2.5)]  # refused in round 3, spent more in round 2
    per_client[12] = [(1, 1.0)]
    fig = epsilon_figure(per_client)
    labels = sorted(line.get_label() for line in _client_lines(fig))
    assert labels == ["client 12", "client 7", "clients 1-6, 8-11, 13-30"]
    assert len({to_rgba(line.get_color()) for line in _client_lines(fig)}) == 3
    assert {"client 12", "client 7"} <= set(_legend_texts(fig))


def test_client_labels_join_runs_and_stay_short() -> None:
    assert client_label([4]) == "client 4"
    assert client_label([3, 1, 2, 7, 9, 10]) == "clients 1-3, 7, 9-10"
    long = client_label(list(range(1, 200, 2)))
    assert long.startswith("100 clients: 1, 3,") and long.endswith("...")
    assert len(long) <= 32


def test_markers_are_named_in_the_legend() -> None:
    fig = epsilon_figure(_per_client(3), markers={"in flight, never settled": [(3, 1.5)],
                                                  "unused": []})
    texts = _legend_texts(fig)
    assert "in flight, never settled" in texts and "unused" not in texts


def test_an_empty_audit_plot_says_so() -> None:
    fig = epsilon_figure({})
    assert any("no finite epsilon" in t.get_text() for t in fig.axes[0].texts)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("plots") / "run"
    run_simulation(SimulationConfig(num_clients=3, rounds=2, noise_multiplier=1.0, hidden=8,
                                    dropout=0.3, epsilon_budget=50.0, seed=0), out)
    return out


SQLITE_READER_FILES = {"run.sqlite-shm", "run.sqlite-wal"}
"""What SQLite itself creates beside a WAL-mode run store that the audit
opens read-only (the shared-memory index and an empty log); the audit's own
output is what these tests are about."""


def _listing(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())
            if p.name not in SQLITE_READER_FILES}


def test_audit_writes_nothing_into_the_run_dir_by_default(
        run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    before = _listing(run)
    monkeypatch.chdir(run)  # not even when run from inside it
    assert main(["audit", str(run)]) == 0
    assert main(["audit", str(run), "--json"]) == 0
    assert _listing(run) == before
    capsys.readouterr()
    target = tmp_path / "figures" / "eps.png"
    assert main(["audit", str(run), "--json", "--plot", str(target)]) == 0
    assert json.loads(capsys.readouterr().out)["plot"] == str(target)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _listing(run) == before
    # asked for explicitly, the run directory is allowed
    assert main(["audit", str(run), "--plot", str(run / "eps.png")]) == 0
    assert "wrote" in capsys.readouterr().out and (run / "eps.png").is_file()


def test_plot_and_no_plot_exclude_each_other(run: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["audit", str(run), "--plot", "x.png", "--no-plot"])
    assert exc.value.code == 2
    assert "not allowed with" in capsys.readouterr().err
