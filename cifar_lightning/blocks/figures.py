"""Metrics -> PNG figures and a one-page report.md. Never opens a window (Agg backend)."""

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after matplotlib.use, so no window ever opens)
import numpy as np  # noqa: E402 (after matplotlib.use, so no window ever opens)
import seaborn as sns  # noqa: E402 (after matplotlib.use, so no window ever opens)
import torch  # noqa: E402 (after matplotlib.use, so no window ever opens)
from matplotlib.ticker import MaxNLocator  # noqa: E402 (after matplotlib.use, so no window ever opens)

from cifar_lightning.blocks import selective  # noqa: E402 (after matplotlib.use, so no window ever opens)
from cifar_lightning.blocks.metrics import Evaluation, classification_report  # noqa: E402 (after matplotlib.use, so no window ever opens)

DPI = 120


def save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def confusion_matrix(evaluation: Evaluation, path: Path) -> Path:
    """Colour = share of the true class (row-normalised); each cell shows the count and that share."""
    counts = evaluation.confusion.numpy()
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    n = len(evaluation.class_names)
    annotate = n <= 20
    labels = np.array([[f"{c}\n{r:.0%}" for c, r in zip(cr, rr)] for cr, rr in zip(counts, rates)])
    size = max(6.0, 0.75 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    sns.heatmap(
        rates,
        annot=labels if annotate else False,
        fmt="",
        cmap="Blues",
        vmin=0,
        vmax=1,
        square=True,
        xticklabels=evaluation.class_names,
        yticklabels=evaluation.class_names,
        ax=ax,
        annot_kws={"fontsize": 8},
        cbar_kws={"label": "share of the true class", "shrink": 0.8},
    )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(
        f"Confusion matrix — accuracy {evaluation.metrics['accuracy']:.2%} on {evaluation.metrics['samples']:,} images"
    )
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    plt.setp(ax.get_yticklabels(), rotation=0)
    return save(fig, path)


def misclassified(
    images: torch.Tensor, labels: torch.Tensor, probs: torch.Tensor, class_names: list[str], path: Path, count: int = 36
) -> Path:
    """The most confident mistakes first, in their real colours (the uint8 source images), upscaled 4x."""
    confidence, predicted = probs.max(dim=1)
    wrong = (predicted != labels).nonzero().flatten()
    wrong = wrong[confidence[wrong].argsort(descending=True)][:count]
    cols = 6
    rows = max(1, math.ceil(len(wrong) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 2.0, rows * 2.3), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, wrong.tolist()):
        ax.imshow(images[i].permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(
            f"true: {class_names[labels[i]]}\npred: {class_names[predicted[i]]} ({confidence[i]:.0%})",
            fontsize=8,
            color="firebrick",
        )
    if not len(wrong):
        axes.flat[0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    fig.suptitle(f"Most confident mistakes ({len(wrong)} of {int((predicted != labels).sum()):,} misclassified)")
    return save(fig, path)


def read_metrics(path: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.csv (Lightning's CSVLogger) -> {column: [(epoch, value), ...]}, one value per epoch."""
    series: dict[str, dict[int, float]] = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            if not row.get("epoch"):
                continue
            for key, value in row.items():
                if key not in ("epoch", "step") and value:
                    series.setdefault(key, {})[int(row["epoch"])] = float(value)
    return {key: sorted(values.items()) for key, values in series.items()}


def training_curves(metrics_csv: Path, path: Path) -> Path:
    """Loss and accuracy per epoch (train and validation) from a run's metrics.csv, plotted into `path` (PNG);
    returns `path`."""
    series = read_metrics(metrics_csv)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, what in zip(axes, ("loss", "acc")):
        for stage, colour in (("train", "tab:blue"), ("val", "tab:orange")):
            points = series.get(f"{stage}/{what}", [])
            if points:
                epochs, values = zip(*points)
                ax.plot([e + 1 for e in epochs], values, "o-", ms=3, color=colour, label=stage)
        ax.set_xlabel("epoch")
        ax.set_ylabel({"loss": "loss", "acc": "accuracy"}[what])
        ax.grid(alpha=0.3)
    val = series.get("val/acc", [])
    if val:
        best_epoch, best = max(val, key=lambda p: p[1])
        for ax in axes:
            ax.axvline(best_epoch + 1, color="grey", ls="--", lw=1, label=f"best epoch {best_epoch + 1}")
        axes[1].annotate(
            f"best val {best:.2%}", (best_epoch + 1, best), textcoords="offset points", xytext=(-10, -18), ha="right"
        )
    for ax in axes:
        ax.legend()
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set_title("Loss per epoch")
    axes[1].set_title("Accuracy per epoch")
    return save(fig, path)


def reliability(evaluation: Evaluation, path: Path) -> Path:
    """Accuracy per confidence bin after the temperature (bars, with the gap to confidence hatched), and the same
    curve before it, so that what the calibration changed is visible."""
    bins, raw = evaluation.reliability, evaluation.reliability_uncalibrated
    calibration = evaluation.metrics["calibration"]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    width = bins[0]["upper"] - bins[0]["lower"]
    centres = [b["lower"] + width / 2 for b in bins]
    accuracy = [b["accuracy"] or 0 for b in bins]
    ax.bar(
        centres,
        accuracy,
        width=width * 0.95,
        color="tab:blue",
        alpha=0.8,
        label=f"accuracy, T = {calibration['temperature']:.2f} (ECE {calibration['after']['ece']:.2%})",
    )
    gap_bottom = [min(a, b["confidence"] or 0) for a, b in zip(accuracy, bins)]
    gap = [abs((b["confidence"] or 0) - a) if b["count"] else 0 for a, b in zip(accuracy, bins)]
    ax.bar(
        centres,
        gap,
        bottom=gap_bottom,
        width=width * 0.95,
        fill=False,
        hatch="//",
        edgecolor="tab:red",
        lw=0.8,
        label="gap to mean confidence",
    )
    filled = [b for b in raw if b["count"]]
    ax.plot(
        [b["confidence"] for b in filled],
        [b["accuracy"] for b in filled],
        "o-",
        color="tab:orange",
        ms=4,
        label=f"before calibration (ECE {calibration['before']['ece']:.2%})",
    )
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability — ECE {evaluation.metrics['ece']:.2%}")
    ax.legend(loc="upper left", fontsize=8)
    return save(fig, path)


def risk_coverage(evaluation: Evaluation, probs: torch.Tensor, labels: torch.Tensor, path: Path) -> Path:
    """Selective risk against coverage when the least confident images (calibrated top probability) are set aside,
    beside the oracle that sets the errors aside first; marks 80% coverage and 5% risk."""
    confidence, predicted = probs.float().max(dim=1)
    correct = (predicted == labels).cpu().numpy()
    s = evaluation.metrics["selective"]
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for (coverage, risk), style, label in (
        (selective.curve(confidence.cpu().numpy(), correct), "tab:blue", f"model (AURC {s['aurc']:.4f})"),
        (selective.oracle_curve(correct), "tab:gray", f"oracle (AURC {s['oracle_aurc']:.4f})"),
    ):
        ax.step(np.append(0, coverage), np.append(risk[0], risk), where="pre", color=style, label=label)
    ax.axvline(selective.RISK_AT_COVERAGE, color="k", ls=":", lw=1, label="80% coverage")
    ax.axhline(selective.COVERAGE_AT_RISK, color="tab:red", ls=":", lw=1, label="5% risk")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, None)
    ax.set_xlabel("coverage (share of images answered)")
    ax.set_ylabel("selective risk (share of errors among them)")
    ax.set_title(
        f"Risk-coverage — E-AURC {s['e_aurc']:.4f}\nrisk {s['risk_at_80_coverage']:.2%} at 80% coverage, "
        f"coverage {s['coverage_at_5_risk']:.2%} at 5% risk",
        fontsize=10,
    )
    ax.legend(loc="upper left", fontsize=8)
    return save(fig, path)


def corruption_heatmap(robustness: dict, path: Path) -> Path:
    """Accuracy per corruption (rows) and severity (columns), with each row's mean and the per-severity means."""
    names = list(robustness["accuracy"])
    table = np.array(
        [robustness["accuracy"][n] + [robustness["per_corruption"][n]] for n in names]
        + [robustness["per_severity"] + [robustness["mean_corruption_accuracy"]]]
    )
    rows = [n.replace("_", " ") for n in names] + ["mean"]
    columns = [str(s) for s in robustness["severities"]] + ["mean"]
    fig, ax = plt.subplots(figsize=(7, 0.42 * len(rows) + 1.6))
    sns.heatmap(
        100 * table,
        annot=True,
        fmt=".1f",
        cmap="RdYlGn",
        vmin=0,
        vmax=100,
        xticklabels=columns,
        yticklabels=rows,
        ax=ax,
        cbar_kws={"label": "accuracy (%)"},
        annot_kws={"fontsize": 8},
    )
    ax.axhline(len(names), color="white", lw=3)
    ax.axvline(len(columns) - 1, color="white", lw=3)
    ax.set_xlabel("severity")
    ax.set_title(
        f"Accuracy under corruption: mCA {robustness['mean_corruption_accuracy']:.2%} = "
        f"{robustness['relative_accuracy']:.2f} x clean {robustness['clean_accuracy']:.2%}\n"
        f"({robustness['images']:,} images, generated CIFAR-10-C-style, seed {robustness['seed']})",
        fontsize=10,
    )
    return save(fig, path)


def corruption_examples(clean: torch.Tensor, corrupted: dict[str, list[torch.Tensor]], path: Path) -> Path:
    """One row per corruption: the clean uint8 image (3, H, W), then its severities left to right."""
    names = list(corrupted)
    columns = 1 + max(len(v) for v in corrupted.values())
    fig, axes = plt.subplots(
        len(names), columns, figsize=(1.3 * columns + 1.2, 1.3 * len(names) + 0.6), squeeze=False, layout="constrained"
    )
    for row, name in zip(axes, names):
        for ax, image in zip(row, [clean, *corrupted[name]]):
            ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(name.replace("_", " "), rotation=0, ha="right", va="center", fontsize=9)
    for column, ax in enumerate(axes[0]):
        ax.set_title("clean" if column == 0 else f"severity {column}", fontsize=9)
    fig.suptitle("What each corruption does (generated here; frost's texture is synthesised)")
    return save(fig, path)


def report(evaluation: Evaluation, figures: list[Path], title: str, path: Path, sections: Sequence[str] = ()) -> Path:
    """report.md at `path`: the headline metrics (accuracy, ECE, ...), the per-class table, `sections` (markdown, e.g.
    robustness.markdown), and links to `figures` (relative to path's folder); returns `path`."""
    m = evaluation.metrics
    lines = [
        f"# {title}",
        "",
        f"Accuracy **{m['accuracy']:.2%}** (top-3 {m['top3_accuracy']:.2%}) on {m['samples']:,} images; "
        f"mean loss {m['loss']:.4f}.",
        "",
        selective.describe(m["selective"]) + " (see the risk-coverage figure below).",
        "",
        "## Calibration",
        "",
        "| | temperature | ECE | MCE | NLL | Brier |",
        "|---|---|---|---|---|---|",
        *(
            f"| {when} | {m['calibration']['temperature'] if when == 'after' else 1:.4f} | {c['ece']:.2%} | "
            f"{c['mce']:.2%} | {c['nll']:.4f} | {c['brier']:.4f} |"
            for when, c in (("before", m["calibration"]["before"]), ("after", m["calibration"]["after"]))
        ),
        "",
        "## Per class",
        "",
        "```",
        classification_report(evaluation).rstrip(),
        "```",
        "",
    ]
    for section in sections:
        lines += [section.rstrip("\n"), ""]
    for figure in figures:
        lines += [f"## {figure.stem.replace('_', ' ').capitalize()}", "", f"![{figure.stem}]({figure.name})", ""]
    path.write_text("\n".join(lines))
    return path
