"""PNG plots.  Figures are drawn on matplotlib's Agg canvas directly (no
pyplot, no display, no global backend switch).

Every figure has a legend that names every line, band and marker; rounds are
integers on the x axis; clients that spent alike share a line, distinct
lines get distinct colours (sampled evenly from a qualitative colormap) up
to :data:`MAX_CLIENT_LINES`, and above that the clients are summarised by
percentile bands with the largest spender drawn alone.  The ``*_figure``
functions return the figure (to inspect or save elsewhere); the ``plot_*``
functions write the PNG.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = [
    "MAX_CLIENT_LINES",
    "accuracy_figure",
    "client_colours",
    "client_label",
    "epsilon_figure",
    "plot_accuracy",
    "plot_epsilon",
]

MAX_CLIENT_LINES = 20
"""Up to this many clients, :func:`epsilon_figure` draws one line per client
(distinct colours, a legend outside the axes); above it, percentile bands."""

_DPI = 110


def client_colours(count: int) -> list[tuple[float, float, float, float]]:
    """``count`` distinct RGBA colours: ``tab10`` up to 10, ``tab20`` up to
    20, else evenly spaced samples of ``turbo``."""
    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    if count <= 20:
        return [colormaps["tab20"](i) for i in range(count)]
    return [colormaps["turbo"](x) for x in np.linspace(0.0, 1.0, count)]


def _integer_rounds(ax: Axes, rounds: Sequence[int]) -> None:
    """Integer round ticks: every round on a short run, whole numbers picked
    by matplotlib on a long one; half a round of margin on both sides."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if rounds:
        ax.set_xlim(min(rounds) - 0.5, max(rounds) + 0.5)
        if len(set(rounds)) <= 12:
            ax.set_xticks(sorted(set(rounds)))
    ax.set_xlabel("round")


def accuracy_figure(rounds: Sequence[int], accuracy: Sequence[float],
                    epsilon_max: Sequence[float], *, aborted: Sequence[int] = (),
                    title: str = "") -> Figure:
    """Test accuracy per round (left axis) and the largest client epsilon so
    far (right axis).  An aborted round changes nothing (the model is the
    previous round's): it is marked with a red x, named in the legend."""
    fig = Figure(figsize=(7, 4.4), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    handles = ax.plot(rounds, accuracy, marker="o", color="tab:blue", label="test accuracy")
    marked = [r for r in aborted if r in rounds]
    if marked:
        index = {r: i for i, r in enumerate(rounds)}
        handles += ax.plot(marked, [accuracy[index[r]] for r in marked], marker="x",
                           color="red", markersize=10, markeredgewidth=2, linestyle="none",
                           label="aborted round (global model unchanged)")
    ax.set_ylabel("test accuracy", color="tab:blue")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    _integer_rounds(ax, list(rounds))
    twin = ax.twinx()
    finite = [e if e is not None and math.isfinite(e) else math.nan for e in epsilon_max]
    handles += twin.plot(rounds, finite, marker=".", linestyle="--", color="tab:orange",
                         label="largest client epsilon so far")
    twin.set_ylabel("epsilon", color="tab:orange")
    twin.set_ylim(bottom=0)
    ax.set_title(title or "accuracy per round")
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8)
    return fig


def plot_accuracy(path: str | os.PathLike[str], rounds: Sequence[int],
                  accuracy: Sequence[float], epsilon_max: Sequence[float], *,
                  aborted: Sequence[int] = (), title: str = "") -> None:
    """Write :func:`accuracy_figure` as a PNG to ``path``."""
    accuracy_figure(rounds, accuracy, epsilon_max, aborted=aborted,
                    title=title).savefig(path)


_MARKER_STYLES = (("o", "black"), ("s", "tab:red"), ("D", "tab:purple"), ("^", "tab:brown"))


def client_label(ids: Sequence[int], *, limit: int = 32) -> str:
    """``client 3``, or ``clients 1-4, 7, 9-12`` (runs of consecutive ids
    joined), or ``40 clients: 1-12, 14-...`` when longer than ``limit``."""
    ordered = sorted(set(ids))
    if len(ordered) == 1:
        return f"client {ordered[0]}"
    runs: list[str] = []
    start = previous = ordered[0]
    for cid in [*ordered[1:], None]:
        if cid is not None and cid == previous + 1:
            previous = cid
            continue
        runs.append(str(start) if start == previous else f"{start}-{previous}")
        if cid is not None:
            start = previous = cid
    text = "clients " + ", ".join(runs)
    if len(text) <= limit:
        return text
    shown = f"{len(ordered)} clients: {runs[0]}"
    for run in runs[1:]:
        if len(shown) + len(run) + 6 > limit:
            break
        shown += f", {run}"
    return shown + ", ..."


def epsilon_figure(per_client: Mapping[int, Sequence[tuple[int, float]]], *,
                   budget: float | None = None, title: str = "",
                   markers: Mapping[str, Sequence[tuple[int, float]]] | None = None) -> Figure:
    """Epsilon so far per client and round, with the budget as a dashed red
    line.  Clients whose points are identical share one line, labelled with
    all their ids (in a run with uniform weighting most clients spend
    alike; drawn apart, the lines would hide each other).  Up to
    :data:`MAX_CLIENT_LINES` distinct lines: each its own colour, named in a
    legend outside the axes.  Above: the median, the interquartile and the
    min-max bands over the clients each round, and the client with the
    largest epsilon as its own line.

    ``markers`` maps a legend label (what the points mean) to ``(round,
    epsilon)`` points drawn as hollow markers over the lines (at most four
    kinds)."""
    series: dict[tuple[tuple[int, float], ...], list[int]] = {}
    for cid in sorted(per_client):
        if per_client[cid]:
            series.setdefault(tuple(sorted(per_client[cid])), []).append(cid)
    many = len(series) > MAX_CLIENT_LINES
    height = 4.4 if many else max(4.4, 1.2 + 0.17 * len(series))
    fig = Figure(figsize=(8, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if not series:
        ax.text(0.5, 0.5, "no finite epsilon to draw", transform=ax.transAxes,
                ha="center", va="center")
    elif not many:
        for (points, ids), colour in zip(series.items(), client_colours(len(series)),
                                         strict=True):
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker=".", linewidth=1.2, color=colour, label=client_label(ids))
    else:
        _bands(ax, {cid: per_client[cid] for ids in series.values() for cid in ids})
    for (label, points), (shape, colour) in zip((markers or {}).items(), _MARKER_STYLES,
                                                strict=False):
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker=shape, markersize=8, markerfacecolor="none",
                    markeredgecolor=colour, linestyle="none", label=label)
    if budget is not None:
        ax.axhline(budget, color="red", linestyle="--", linewidth=1.5,
                   label=f"budget {budget:g}")
    _integer_rounds(ax, [r for points in per_client.values() for r, _ in points])
    ax.set_ylabel("epsilon so far")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()[0]
    if handles:
        fig.legend(handles=handles, loc="outside right upper", fontsize=7)
    ax.set_title(title or "epsilon per round")
    return fig


def _bands(ax: Axes, per_client: Mapping[int, Sequence[tuple[int, float]]]) -> None:
    rounds = sorted({r for points in per_client.values() for r, _ in points})
    values = {r: np.array([v for points in per_client.values() for q, v in points if q == r])
              for r in rounds}
    low, q25, median, q75, high = (np.array([np.percentile(values[r], p) for r in rounds])
                                   for p in (0, 25, 50, 75, 100))
    ax.fill_between(rounds, low, high, color="tab:blue", alpha=0.15,
                    label=f"min-max over {len(per_client)} clients")
    ax.fill_between(rounds, q25, q75, color="tab:blue", alpha=0.35,
                    label="25th-75th percentile")
    ax.plot(rounds, median, color="tab:blue", linewidth=1.5,
            label="median client")
    worst = max(per_client, key=lambda cid: (max(v for _, v in per_client[cid]), -cid))
    xs, ys = zip(*sorted(per_client[worst]), strict=True)
    ax.plot(xs, ys, color="black", marker=".", linewidth=1,
            label=f"client {worst} (largest epsilon)")


def plot_epsilon(path: str | os.PathLike[str],
                 per_client: Mapping[int, Sequence[tuple[int, float]]], *,
                 budget: float | None = None, title: str = "",
                 markers: Mapping[str, Sequence[tuple[int, float]]] | None = None) -> None:
    """Write :func:`epsilon_figure` as a PNG to ``path``."""
    epsilon_figure(per_client, budget=budget, title=title, markers=markers).savefig(path)
