"""PNG plots.  Figures are drawn on matplotlib's Agg canvas directly (no
pyplot, no display, no global backend switch)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["plot_accuracy", "plot_epsilon"]


def plot_accuracy(path: str | os.PathLike[str], rounds: Sequence[int],
                  accuracy: Sequence[float], epsilon_max: Sequence[float], *,
                  aborted: Sequence[int] = (), title: str = "") -> None:
    """Test accuracy per round (left axis) and the largest client epsilon so
    far (right axis); aborted rounds are marked with a red x."""
    fig = Figure(figsize=(7, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(rounds, accuracy, marker="o", color="tab:blue", label="test accuracy")
    for r in aborted:
        if r in rounds:
            ax.plot([r], [accuracy[list(rounds).index(r)]], marker="x", color="red",
                    markersize=10, linestyle="none")
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy", color="tab:blue")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    twin.plot(rounds, epsilon_max, marker=".", color="tab:orange", label="max epsilon")
    twin.set_ylabel("max client epsilon", color="tab:orange")
    ax.set_title(title or "accuracy per round")
    fig.tight_layout()
    fig.savefig(path)


def plot_epsilon(path: str | os.PathLike[str],
                 per_client: Mapping[int, Sequence[tuple[int, float]]], *,
                 budget: float | None = None, title: str = "") -> None:
    """Epsilon so far per client and round, with the budget as a dashed line."""
    fig = Figure(figsize=(7, 4), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for cid, points in sorted(per_client.items()):
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker=".", linewidth=1, label=f"client {cid}")
    if budget is not None:
        ax.axhline(budget, color="red", linestyle="--", label=f"budget {budget:g}")
    ax.set_xlabel("round")
    ax.set_ylabel("epsilon so far")
    ax.grid(alpha=0.3)
    if len(per_client) <= 12:
        ax.legend(fontsize=7, ncol=2)
    ax.set_title(title or "epsilon per round")
    fig.tight_layout()
    fig.savefig(path)
