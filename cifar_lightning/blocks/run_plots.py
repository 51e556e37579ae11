"""Figures of many runs: a sweep's accuracies, the accuracy-cost frontier of the results table. Never opens a window
(figures.py sets the Agg backend before pyplot loads)."""

import math
from pathlib import Path

from matplotlib.ticker import NullFormatter

from cifar_lightning.blocks.figures import plt, save


def sweep_plot(runs: list[dict], groups: list[dict], path: Path) -> Path:
    """Best validation accuracy of each run (dots) and each group's mean ± std (bar), best group on top."""
    names = [g["group"] for g in groups]
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.5 * len(names)))
    for y, g in enumerate(groups):
        if g["best_val_acc"] is not None:
            ax.barh(y, g["best_val_acc"], xerr=g["best_val_acc_std"], color="tab:blue", alpha=0.35, capsize=4)
        values = [r["best_val_acc"] for r in runs if r["group"] == g["group"] and r["best_val_acc"] is not None]
        ax.plot(values, [y] * len(values), "o", color="tab:blue")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    finished = [r["best_val_acc"] for r in runs if r["best_val_acc"] is not None]
    if finished:
        ax.set_xlim(max(0.0, min(finished) - 0.05), min(1.0, max(finished) + 0.02))
    ax.set_xlabel("best validation accuracy")
    ax.set_title("Sweep results (dots: runs; bars: mean ± std over seeds)")
    ax.grid(axis="x", alpha=0.3)
    return save(fig, path)


def counted(n: int, noun: str) -> str:
    """'1 thread', '2 threads': a count with its noun (regular plurals only)."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def describe_machine(hardware: dict | None) -> str:
    """A run's hardware (summary.json) in a few words, for plot labels."""
    if not hardware:
        return "a machine not recorded"
    device = hardware["gpu"] or f"{hardware['cpu']}, {counted(hardware['threads'], 'thread')}"
    precision = f", {hardware['precision']}" if "precision" in hardware else ""  # older summaries do not record it
    return f"{device}, torch {hardware['torch']}{precision}"


def frontier(costs: list[float], accuracies: list[float]) -> list[tuple[float, float]]:
    """The (cost, accuracy) points that no other point beats on both, cheapest first."""
    best = -math.inf
    line: list[tuple[float, float]] = []
    for cost, accuracy in sorted(zip(costs, accuracies), key=lambda p: (p[0], -p[1])):
        if accuracy > best:
            best, line = accuracy, [*line, (cost, accuracy)]
    return line


def frontier_plot(points: list[dict], reference: float, path: Path) -> Path:
    """Best validation accuracy against training compute (left) and training wall time (right), one labelled
    point per run (dicts with label, training_pflop, fit_seconds, best_val_acc), the frontier (runs no other run
    beats on both cost and accuracy) as a line, and a dashed line at the reference accuracy to beat."""
    accuracies = [100 * p["best_val_acc"] for p in points]
    axes_costs = [  # x-axis label, each run's cost on it, how a point's label shows that cost
        ("training compute (PFLOP, forward + backward, log scale)", [p["training_pflop"] for p in points],
         "{:.3g} PFLOP"),
        ("training wall time (minutes, fit with validation, log scale)", [p["fit_seconds"] / 60 for p in points],
         "{:.1f} min"),
    ]  # fmt: skip
    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5), sharey=True)
    for ax, (xlabel, costs, cost_format) in zip(axes, axes_costs):
        ax.set_xscale("log")
        line = frontier(costs, accuracies)
        ax.plot(*zip(*line), "-", color="grey", alpha=0.5, zorder=1)
        for p, x, y in zip(points, costs, accuracies):
            ax.plot(x, y, "o", markersize=8, zorder=2)
            ax.annotate(
                f"{p['label']}\n{y:.2f}%, {cost_format.format(x)}",
                (x, y),
                textcoords="offset points",
                xytext=(7, -10),
                fontsize=7.5,
            )
        low, high = min(costs) / 1.6, max(costs) * 4  # room for the labels, right of their points
        ax.set_xlim(low, high)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ticks = [t * 10**e for e in range(-3, 4) for t in (1, 2, 5) if low <= t * 10**e <= high]
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
        ax.axhline(100 * reference, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3, which="both")
    label = f"{100 * reference:.1f}%: the original project's test accuracy "
    axes[1].text(high, 100 * reference, label, fontsize=8, color="grey", ha="right", va="top")
    axes[0].set_ylim(min(accuracies + [100 * reference]) - 2, max(accuracies + [100 * reference]) + 2)
    axes[0].set_ylabel("best validation accuracy (%)")
    machines = sorted({describe_machine(p.get("hardware")) for p in points})
    fig.suptitle(f"CIFAR-10 recipes: accuracy against cost, one point per run; times on {'; '.join(machines)}")
    return save(fig, path)
