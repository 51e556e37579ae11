"""The speed/accuracy frontier of finished runs: best validation accuracy against training wall time.

    python benchmarks/frontier.py RUN_FOLDER... [--out docs/frontier.png]
    e.g. python benchmarks/frontier.py outputs/runs/seed_baseline outputs/runs/default_seed1 \
             outputs/runs/fast outputs/runs/fast94_seed1

Each run is one point, labelled with its command-line overrides (from .hydra/overrides.yaml); the figures
come from the summary.json that train.py writes, so only measured runs can appear.
"""
import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cifar_lightning.summarize import read_runs  # noqa: E402

ORIGINAL_ACCURACY = 0.765  # the plain-PyTorch script this project started from (its test accuracy)
UNINFORMATIVE = ("data.verify=", "data.root=", "hydra.", "seed=")  # where the data lies, not what the recipe is


def label(overrides: list[str]) -> str:
    return " ".join(o for o in overrides if not o.startswith(UNINFORMATIVE)) or "python train.py (defaults)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/frontier.png"))
    args = parser.parse_args()
    points = []
    for folder in args.runs:
        runs = read_runs(folder) if folder.is_dir() else []
        if len(runs) != 1 or runs[0]["best_val_acc"] is None:
            sys.exit(f"error: {folder} is not a finished run with validation (no summary.json with best_val_acc)")
        points.append(runs[0] | {"label": label(runs[0]["overrides"])})

    fig, ax = plt.subplots(figsize=(8, 5))
    ax.set_xscale("log")
    for p in sorted(points, key=lambda p: p["fit_seconds"]):
        minutes = p["fit_seconds"] / 60
        accuracy = 100 * p["best_val_acc"]
        ax.plot(minutes, accuracy, "o", markersize=8)
        ax.annotate(f"{p['label']}\n{accuracy:.2f}% in {minutes:.1f} min", (minutes, accuracy),
                    textcoords="offset points", xytext=(8, 4), fontsize=8, va="bottom")
    minutes = [p["fit_seconds"] / 60 for p in points]
    low, high = min(minutes) / 1.5, max(minutes) * 3  # room for the labels, right of their points
    ax.set_xlim(low, high)
    ticks = [t for t in (0.5, 1, 2, 5, 10, 20, 50, 100, 200) if low <= t <= high]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    accuracies = [100 * p["best_val_acc"] for p in points] + [100 * ORIGINAL_ACCURACY]
    ax.set_ylim(min(accuracies) - 2, max(accuracies) + 2)
    ax.axhline(100 * ORIGINAL_ACCURACY, color="grey", linestyle="--", linewidth=1)
    ax.text(high, 100 * ORIGINAL_ACCURACY, "76.5%: the original project's test accuracy (the target) ",
            fontsize=8, color="grey", ha="right", va="top")
    ax.set_xlabel("training wall time (minutes, log scale), 2 CPU cores")
    ax.set_ylabel("best validation accuracy (%), 5,000 exact images")
    ax.set_title("CIFAR-10 on a CPU: accuracy against training time, one point per run")
    ax.grid(alpha=0.3, which="both")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
