"""The speed/accuracy frontier of finished runs: best validation accuracy against training compute and wall time.

    python benchmarks/frontier.py FOLDER... [--out docs/frontier.png]

A FOLDER is a run or a sweep (every run in it). The README's figure is `make frontier ARGS=data.verify=false`:
the recipes in one sweep, then the plot:

    python train.py -m experiment=seed_baseline,default,fast,fast85,fast90,fast94 data.verify=false \\
        hydra.sweep.dir=outputs/multiruns/frontier
    python benchmarks/frontier.py outputs/multiruns/frontier

Each run is one point, labelled with its command-line overrides (from .hydra/overrides.yaml); the figures come from
the summary.json that train.py writes, so only measured runs can appear.

    python benchmarks/frontier.py --results docs/results.csv

plots the recorded runs instead (benchmarks/results.py add): per recipe of results.RECIPES, its first bf16 run of
seed 0 with a training compute and a fit time. Those fit times come from the sessions the runs were made in, on a
machine whose speed drifts between hours: the compute axis compares exactly, the time axis roughly.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cifar_lightning.blocks.run_plots import frontier_plot  # noqa: E402 (after the sys.path line that makes the package importable from a checkout)
from cifar_lightning.tasks.summarize import read_runs  # noqa: E402 (after the sys.path line that makes the package importable from a checkout)

ORIGINAL_ACCURACY = 0.765  # the plain-PyTorch script this project started from (its test accuracy)
UNINFORMATIVE = ("data.verify=", "data.root=", "hydra.", "seed=", "extras.")  # where the data lies, what is printed


def label(overrides: list[str]) -> str:
    return " ".join(o for o in overrides if not o.startswith(UNINFORMATIVE)) or "python train.py (defaults)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="*", type=Path)
    parser.add_argument("--results", type=Path, help="plot the recorded runs of this results CSV instead")
    parser.add_argument("--out", type=Path, default=Path("docs/frontier.png"))
    args = parser.parse_args()
    if bool(args.folders) == bool(args.results):
        sys.exit("error: give run or sweep folders, or --results CSV")
    points = recorded(args.results) if args.results else []
    for folder in args.folders:
        runs = read_runs(folder) if folder.is_dir() else []
        if not runs:
            sys.exit(f"error: {folder} is neither a run nor a sweep folder (no .hydra/overrides.yaml in it)")
        for run in runs:
            where = folder / run["run"]
            if run["best_val_acc"] is None:
                sys.exit(f"error: {where} is not a finished run with validation (no summary.json with best_val_acc)")
            if run["training_pflop"] is None:
                sys.exit(
                    f"error: {where} has no training_pflop in its summary.json (trained before FLOPs were "
                    "counted): train it again"
                )
            points.append(run | {"label": label(run["overrides"])})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frontier_plot(points, ORIGINAL_ACCURACY, args.out)
    print(f"wrote {args.out} ({len(points)} runs)")


def recorded(path: Path) -> list[dict]:
    """One point per recipe of results.RECIPES: its first bf16-mixed run of seed 0 with the three figures."""
    from results import COLUMNS, RECIPES, read_csv

    if not path.is_file():
        sys.exit(f"error: {path} does not exist (benchmarks/results.py add RUN_DIR writes it)")
    rows = [r for r in read_csv(path, COLUMNS) if r["kind"] == "run" and r["seed"] == "0"]
    points = {}
    for r in rows:
        if r["precision"] == "bf16-mixed" and r["recipe"] in RECIPES and r["recipe"] not in points:
            if r["best_val_acc"] and r["training_pflop"] and r["fit_seconds"]:
                points[r["recipe"]] = {
                    "label": f"experiment={r['recipe']}",
                    "best_val_acc": float(r["best_val_acc"]) / 100,
                    "training_pflop": float(r["training_pflop"]),
                    "fit_seconds": float(r["fit_seconds"]),
                }
    return [points[k] for k in RECIPES if k in points]


if __name__ == "__main__":
    main()
