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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cifar_lightning.figures import frontier_plot  # noqa: E402 (after the sys.path line that makes the package importable from a checkout)
from cifar_lightning.tasks.summarize import read_runs  # noqa: E402 (after the sys.path line that makes the package importable from a checkout)

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
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frontier_plot(points, ORIGINAL_ACCURACY, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
