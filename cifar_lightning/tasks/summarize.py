"""A sweep's table: `python -m cifar_lightning.tasks.summarize MULTIRUN_DIR`.

One row per run (its overrides, status done/pruned/failed, best val acc, test acc, epochs, wall time); the done
runs that differ only in `seed` or `data.fold` (k-fold cross-validation) grouped into mean ± std (pruned ones
stopped early: left out of the means); written as summary.md and summary.csv, with summary.png.
"""

import argparse
import csv
import json
import statistics
import sys
from pathlib import Path

import yaml

from cifar_lightning.blocks.run_plots import sweep_plot

REPEATS = ("seed=", "data.fold=")  # what a recipe is repeated over: its runs are grouped into mean ± std


def read_runs(sweep: Path) -> list[dict]:
    """One dict per job folder under `sweep` (each with .hydra/overrides.yaml): its folder, overrides, group (the
    overrides without seed= and data.fold=: a recipe over seeds or folds), status (done, pruned or failed: no
    summary.json) and its summary's values."""
    runs = []
    for overrides_file in sorted(sweep.glob("**/.hydra/overrides.yaml")):
        run = overrides_file.parent.parent
        # trial= (which Optuna trial the job reports to), trusted_modules= (what it may load from disk) and
        # paths.root= (where the runs live: a resumed sweep's command gives both to the jobs it starts) are
        # bookkeeping, not settings of the run
        overrides = [
            o
            for o in yaml.safe_load(overrides_file.read_text()) or []
            if not o.startswith(("trial=", "trusted_modules=", "paths.root="))
        ]
        summary_file = run / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
        runs.append(
            {
                "run": str(run.relative_to(sweep)),
                "overrides": overrides,
                "group": " ".join(o for o in overrides if not o.startswith(REPEATS)) or "(defaults)",
                "status": "pruned" if summary.get("pruned") else "done" if summary else "failed",
                "best_val_acc": summary.get("best_val_acc"),
                "test_acc": summary.get("test_acc"),
                "epochs": summary.get("epochs"),
                "fit_seconds": summary.get("fit_seconds"),
                "training_pflop": summary.get("training_pflop"),
                "hardware": summary.get("hardware"),
            }
        )
    return runs


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None  # no spread from one run


def group(runs: list[dict]) -> list[dict]:
    """Runs of the same overrides but their seed, as one row each: mean and std over the finished runs of best val
    acc, test acc and fit seconds; best val acc first."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(run["group"], []).append(run)
    rows = []
    for name, members in groups.items():
        done = [r for r in members if r["status"] == "done"]
        row = {"group": name, "runs": len(members), "failed": sum(r["status"] == "failed" for r in members)}
        for key in ("best_val_acc", "test_acc", "fit_seconds"):
            row[key], row[f"{key}_std"] = mean_std([r[key] for r in done])
        rows.append(row)
    return sorted(rows, key=lambda r: -(r["best_val_acc"] or -1))


def _pct(mean: float | None, std: float | None = None) -> str:
    if mean is None:
        return "—"
    return f"{100 * mean:.2f}%" + (f" ± {100 * std:.2f}" if std is not None else "")


def write(sweep: Path, runs: list[dict], groups: list[dict]) -> None:
    """<sweep>/summary.csv (a row per run) and <sweep>/summary.md (a table of the groups, and summary.png)."""
    with open(sweep / "summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(
            f,
            fieldnames=[
                "run",
                "overrides",
                "status",
                "best_val_acc",
                "test_acc",
                "epochs",
                "fit_seconds",
                "training_pflop",
            ],
            extrasaction="ignore",
        )
        writer.writeheader()
        writer.writerows({**r, "overrides": " ".join(r["overrides"])} for r in runs)
    lines = [
        f"# Sweep {sweep}",
        "",
        "## Grouped over seeds (mean ± std)",
        "",
        "| overrides | runs | failed | best val acc | test acc | wall time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for g in groups:
        seconds = "—" if g["fit_seconds"] is None else f"{g['fit_seconds']:.0f}"
        lines.append(
            f"| {g['group']} | {g['runs']} | {g['failed']} | {_pct(g['best_val_acc'], g['best_val_acc_std'])} "
            f"| {_pct(g['test_acc'], g['test_acc_std'])} | {seconds} |"
        )
    lines += [
        "",
        "## Runs",
        "",
        "| run | overrides | status | best val acc | test acc | epochs | wall time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['run']} | {' '.join(r['overrides'])} | {r['status']} | {_pct(r['best_val_acc'])} "
            f"| {_pct(r['test_acc'])} | {r['epochs'] if r['epochs'] is not None else '—'} "
            f"| {r['fit_seconds'] if r['fit_seconds'] is not None else '—'} |"
        )
    lines += ["", "![summary](summary.png)", ""]
    (sweep / "summary.md").write_text("\n".join(lines))
    sweep_plot(runs, groups, sweep / "summary.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="a multirun folder, e.g. outputs/multiruns/2026-01-01_12-00-00")
    args = parser.parse_args(argv)
    runs = read_runs(args.sweep) if args.sweep.is_dir() else []
    if not runs:
        sys.exit(
            f"error: {args.sweep} holds no runs (no */.hydra/overrides.yaml): give a folder that train.py -m wrote"
        )
    groups = group(runs)
    write(args.sweep, runs, groups)
    print((args.sweep / "summary.md").read_text())
    print(f"wrote {args.sweep}/summary.md, summary.csv, summary.png")


if __name__ == "__main__":
    main()
