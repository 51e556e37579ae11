"""docs/results.md, generated from the results data (docs/results.csv, docs/results_speed.csv) by one command.

    python benchmarks/results.py add RUN_DIR [RUN_DIR ...]   # record finished runs and their evaluations
    python benchmarks/results.py                             # regenerate docs/results.md (= make results)

`add` reads a run folder's summary.json, .hydra/overrides.yaml (the command is `python train.py ` + the overrides)
and every eval/*/metrics.json under it, and adds one row per run and one per evaluation to docs/results.csv, or
updates the rows it added before (a row's `id` is the run folder, or the evaluation's folder). An ensemble's
evaluation folder (evaluate.py ckpt=SWEEP or ckpt=[RUN1,RUN2] out=DIR: a metrics.json with `members`) is one row of
kind `ensemble`. Rendering reads the
CSV files alone: a table of runs, one of evaluations and one of corruptions per recipe, then the speed ratios.

docs/results.csv holds one row per run (kind `run`) or evaluation (kind `eval`, `run` naming its run's id).
Accuracies and calibration errors are in %, with two decimals; a row that is a mean over seeds holds `mean ± std`
in its cells and the seeds in `seed`. Rows transcribed from an earlier README rather than added from run files say
so in `source` ("README at <commit>"; `commit` is then the commit that added the figure to the README). Speed
ratios, which compare two configurations rather than describe a run, are rows of docs/results_speed.csv.
"""

import argparse
import csv
import json
import shlex
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cifar_lightning.blocks.errors import UserError  # noqa: E402 (after the sys.path line that makes the package importable from a checkout)

COLUMNS = [
    "id", "kind", "recipe", "run", "seed", "precision", "split", "data", "tta",
    "best_val_acc", "test_acc", "accuracy", "training_pflop", "epochs", "fit_seconds", "command_seconds",
    "temperature", "ece_before", "ece_after", "mce_before", "mce_after", "nll_before", "nll_after",
    "brier_before", "brier_after",
    "corruption_images", "clean_accuracy", "mca", "mca_relative", "mca_per_severity", "mca_per_corruption",
    "aurc", "sets", "coverage_90", "set_size_90", "coverage_95", "set_size_95", "ood", "auroc_msp",
    "auroc_max_logit", "auroc_energy", "members", "members_accuracy",
    "command", "commit", "hardware", "source", "note",
]  # fmt: skip
SPEED_COLUMNS = [
    "what", "measure", "figure", "range", "pairs", "per_pair", "detail", "precision", "command", "commit",
    "hardware", "source",
]  # fmt: skip
DEFAULT_CSV = ROOT / "docs" / "results.csv"
DEFAULT_SPEED_CSV = ROOT / "docs" / "results_speed.csv"
DEFAULT_OUT = ROOT / "docs" / "results.md"
# the order shown
RECIPES = ["seed_baseline", "default", "fast", "fast85", "fast90", "fast94", "fast94_hiverge", "fast94_lookahead"]
FIGURES = [
    ("the speed/accuracy frontier (`make frontier ARGS=data.verify=false`)", "frontier.png"),
    ("accuracy under corruption, default recipe, exact test subset", "corruptions_default.png"),
    ("accuracy under corruption, fast94_lookahead, exact test subset", "corruptions_fast94.png"),
    ("each corruption at severities 1-5, one exact test image", "corruption_examples.png"),
    ("fast94_lookahead's reliability diagram on the exact test subset, before and after the temperature",
     "reliability_fast94.png"),
    ("an evaluation as evaluate.py writes it: the default recipe in fp32, seed 0, validation split",
     "evaluation/report.md"),
    ("its training curves", "evaluation/training_curves.png"),
    ("its confusion matrix", "evaluation/confusion_matrix.png"),
    ("its reliability diagram", "evaluation/reliability.png"),
    ("its misclassified images", "evaluation/misclassified.png"),
]  # fmt: skip


# ---- reading run folders -------------------------------------------------------------------------------------------


def pct(x) -> str:
    return "" if x is None else f"{100 * float(x):.2f}"


def number(x, digits: int = 4) -> str:
    return "" if x is None else f"{float(x):.{digits}g}"


def relative(path: Path) -> str:
    path = path.resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{path} cannot be read as JSON ({e})") from e
    if not isinstance(data, dict):
        raise UserError(f"{path} does not hold a JSON object")
    return data


def recorded_overrides(run_dir: Path) -> tuple[list[str], dict[str, str]]:
    """A run folder's command-line overrides (.hydra/overrides.yaml; none if it is missing), and them as key ->
    value. Raises UserError for a file that is not a list."""
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    if not isinstance(overrides, list):
        raise UserError(f"{overrides_file} is not a list of overrides")
    overrides = [str(o) for o in overrides]
    return overrides, dict(o.split("=", 1) for o in overrides if "=" in o)


def run_rows(run_dir: Path, recipe: str | None = None) -> list[dict]:
    """The row of one finished run folder and the rows of its evaluations."""
    from cifar_lightning.blocks.run_plots import counted  # here: it loads matplotlib, which rendering needs not

    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a folder: give a run folder (outputs/runs/<run>)")
    if not (run_dir / "summary.json").is_file():
        raise UserError(f"{run_dir} has no summary.json: not a finished run (train.py writes it at the end)")
    summary = read_json(run_dir / "summary.json")
    overrides, chosen = recorded_overrides(run_dir)
    config_file = run_dir / ".hydra" / "config.yaml"
    config = (yaml.safe_load(config_file.read_text()) or {}) if config_file.is_file() else {}
    hw = summary.get("hardware") or {}
    hardware = ", ".join(
        str(part)
        for part in (
            hw.get("cpu") or "unknown CPU",
            counted(hw["threads"], "thread") if hw.get("threads") else None,
            hw.get("gpu") or "no GPU",
            f"{hw['devices']} devices" if (hw.get("devices") or 1) > 1 else None,
            f"torch {hw['torch']}" if hw.get("torch") else None,
            f"lightning {hw['lightning']}" if hw.get("lightning") else None,
        )
        if part
    )
    run_id = relative(run_dir)
    common = {
        "recipe": recipe or chosen.get("experiment", "default"),
        "run": run_id,
        "seed": str(chosen.get("seed", config.get("seed", ""))),
        "precision": str(hw.get("precision", "")),
        "commit": summary.get("commit") or "unknown",
        "hardware": hardware,
        "source": "add",
    }
    rows = [
        common
        | {
            "id": run_id,
            "kind": "run",
            "best_val_acc": pct(summary.get("best_val_acc")),
            "test_acc": pct(summary.get("test_acc")),
            "training_pflop": number(summary.get("training_pflop")),
            "epochs": str(summary.get("epochs", "")),
            "fit_seconds": number(summary.get("fit_seconds"), 6),
            "temperature": number(summary.get("temperature")),
            "command": " ".join(["python train.py", *map(shlex.quote, overrides)]),
        }
    ]
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    hydra = (yaml.safe_load(hydra_file.read_text()) or {}) if hydra_file.is_file() else {}
    data_group = ((hydra.get("hydra") or {}).get("runtime", {}).get("choices", {}) or {}).get("data", "cifar10")
    for metrics_file in sorted((run_dir / "eval").glob("*/metrics.json")):
        rows.append(common | eval_row(read_json(metrics_file), metrics_file.parent, run_id, data_group, chosen))
    return rows


def eval_row(m: dict, folder: Path, run_id: str, data_group: str, chosen: dict) -> dict:
    """One evaluation folder's metrics.json as a row. Its command is rebuilt from what the file records."""
    calibration = m.get("calibration") or {}
    before, after = calibration.get("before") or {}, calibration.get("after") or {"ece": m.get("ece")}
    corruptions = m.get("corruptions") or {}
    split = m.get("split", folder.name.split("_")[0])
    command = [f"python evaluate.py ckpt={run_id} split={split}", f"tta={int(m['tta'])}" if "tta" in m else ""]
    if "tta_fraction" in m:  # selective TTA (evaluations from before it had none)
        command.append(f"tta_fraction={m['tta_fraction']:g}")
    if "_" in folder.name:  # evaluate.py names the folder of other data split_<data root>
        root = relative(Path(m["data_root"])) if m.get("data_root") else folder.name.split("_", 1)[1]
        command.append(f"data={data_group} data.root={root}")
        command.append("data.verify=false" if chosen.get("data.verify") == "false" else "")
    if chosen.get("data.classes"):  # a run on some classes is evaluated on the same ones
        command.append(f"'data.classes={chosen['data.classes']}'")
    if m.get("ood"):
        command.append(f"ood={m['ood'].get('protocol')}")
    if (m.get("conformal") or {}).get("score", "raps") != "raps":
        command.append(f"conformal_score={m['conformal']['score']}")
    if corruptions:
        command.append(
            f"corruptions=all corruptions.images={corruptions.get('images')} corruptions.seed={corruptions.get('seed')}"
            f" corruptions.tta={int(corruptions.get('tta') or 0)}"
        )
    return {
        "id": relative(folder),
        "kind": "eval",
        "split": split,
        "data": Path(str(m.get("data_root", ""))).name,
        "tta": str(m.get("tta", "")),
        "accuracy": pct(m.get("accuracy")),
        "temperature": number(calibration.get("temperature")),
        **{
            f"{k}_{when}": pct(side.get(k))
            for k in ("ece", "mce")
            for when, side in (("before", before), ("after", after))
        },
        **{f"{k}_{w}": number(s.get(k)) for k in ("nll", "brier") for w, s in (("before", before), ("after", after))},
        "corruption_images": str(corruptions.get("images", "")),
        "clean_accuracy": pct(corruptions.get("clean_accuracy")),
        "mca": pct(corruptions.get("mean_corruption_accuracy")),
        "mca_relative": number(corruptions.get("relative_accuracy"), 3),
        "mca_per_severity": "; ".join(pct(x) for x in corruptions.get("per_severity", [])),
        "mca_per_corruption": "; ".join(f"{k}={pct(v)}" for k, v in corruptions.get("per_corruption", {}).items()),
        **prediction_cells(m),
        "command": " ".join(part for part in command if part),
        "note": "command rebuilt from metrics.json",
    }


def prediction_cells(m: dict) -> dict:
    """What an evaluation's metrics.json says of acting on predictions: AURC, the conformal sets at 90% and 95%
    (coverage and mean size), the out-of-distribution AUROCs of each set ("; " between sets)."""
    conformal = m.get("conformal") or {}
    levels = {round(r["coverage"], 4): r for r in conformal.get("levels", [])}
    ood = m.get("ood") or {}
    sets = ood.get("sets") or {}  # in the order evaluate.py wrote them

    def aurocs(score: str) -> str:
        return "; ".join(number((entry.get(score) or {}).get("auroc"), 3) for entry in sets.values())

    return {
        "aurc": number((m.get("selective") or {}).get("aurc"), 3),
        "sets": conformal.get("score", "raps") if conformal else "",
        **{
            f"{what}_{int(100 * level)}": size((levels.get(level) or {}).get(key))
            if what == "set_size"
            else pct((levels.get(level) or {}).get(key))
            for level in (0.9, 0.95)
            for what, key in (("coverage", "empirical_coverage"), ("set_size", "mean_set_size"))
        },  # fmt: skip
        "ood": f"{ood.get('protocol')}: {'; '.join(sets)}" if sets else "",
        **{f"auroc_{score}": aurocs(score) for score in ("msp", "max_logit", "energy")},
    }


def size(x) -> str:
    return "" if x is None else f"{float(x):.2f}"


def ensemble_row(folder: Path, m: dict, recipe: str | None) -> dict:
    """An ensemble's evaluation folder (metrics.json with `members`) as one row: its figures, its members' mean
    accuracy, and the command that evaluates it again."""
    members = [Path(member["checkpoint"]) for member in m["members"]]
    runs = [relative(c.parents[1]) if c.parent.name == "checkpoints" else relative(c) for c in members]
    first = Path(runs[0])
    _, chosen = recorded_overrides(first)
    accuracies = [float(member["accuracy"]) for member in m["members"]]
    mine = m.get("ensemble") or {}
    data = Path(str(m.get("data_root", "")))
    command = f"python evaluate.py ckpt=[{','.join(runs)}] out={relative(folder)} split={m.get('split', 'test')}"
    if data.name and data.name != "data":
        command += f" data=cifar10 data.root={data.name} data.verify=false"
    if (m.get("conformal") or {}).get("score", "raps") != "raps":
        command += f" conformal_score={m['conformal']['score']}"
    summary = read_json(first / "summary.json") if (first / "summary.json").is_file() else {}
    return {
        "id": relative(folder),
        "kind": "ensemble",
        "recipe": recipe or chosen.get("experiment", "default"),
        "run": relative(folder),
        "split": m.get("split", ""),
        "data": data.name,
        "accuracy": pct(mine.get("accuracy")),
        "temperature": number((m.get("calibration") or {}).get("temperature")),
        "ece_before": pct(((m.get("calibration") or {}).get("before") or {}).get("ece")),
        "ece_after": pct(mine.get("ece")),
        "nll_after": number(mine.get("nll")),
        "brier_after": number(mine.get("brier")),
        **prediction_cells({**m, "selective": mine.get("selective")}),
        "members": str(len(members)),
        "members_accuracy": f"{100 * sum(accuracies) / len(accuracies):.2f}",
        "command": command,
        "commit": summary.get("commit") or "unknown",
        "source": "add",
        "note": f"members: {', '.join(runs)}",
    }


# ---- the CSV files -------------------------------------------------------------------------------------------------


def read_csv(path: Path, columns: list[str]) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames and set(reader.fieldnames) - set(columns):
            raise UserError(f"{path} has columns this script does not know: {set(reader.fieldnames) - set(columns)}")
        return [{c: row.get(c) or "" for c in columns} for row in reader]


def write_csv(path: Path, columns: list[str], rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({c: row.get(c, "") for c in columns} for row in rows)
    tmp.replace(path)


def folder_rows(folder: Path, recipe: str | None = None) -> list[dict]:
    """A run folder's rows, or an ensemble evaluation folder's one row."""
    metrics = folder / "metrics.json"
    if metrics.is_file() and not (folder / "summary.json").is_file():
        m = read_json(metrics)
        if "members" in m:
            return [ensemble_row(folder, m, recipe)]
    return run_rows(folder, recipe)


def add(run_dirs: list[Path], csv_path: Path, recipe: str | None = None) -> tuple[int, int]:
    """Adds the rows of these run folders (or ensemble evaluation folders) to the CSV, replacing rows with the same
    id. Returns (added, updated)."""
    new = [row for run_dir in run_dirs for row in folder_rows(run_dir, recipe)]  # every folder read before writing
    rows = read_csv(csv_path, COLUMNS)
    where = {row["id"]: i for i, row in enumerate(rows)}
    added = updated = 0
    for row in new:
        row = {c: row.get(c, "") for c in COLUMNS}
        if row["id"] in where:
            rows[where[row["id"]]] = row
            updated += 1
        else:
            where[row["id"]] = len(rows)
            rows.append(row)
            added += 1
    write_csv(csv_path, COLUMNS, rows)
    return added, updated


# ---- rendering -----------------------------------------------------------------------------------------------------


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def code(text: str) -> str:
    return f"`{text}`" if text else ""


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table without the columns that are empty in every row."""
    keep = [i for i in range(len(header)) if any(row[i] for row in rows)]
    lines = ["| " + " | ".join(header[i] for i in keep) + " |", "|" + " --- |" * len(keep)]
    return lines + ["| " + " | ".join(cell(row[i]) for i in keep) + " |" for row in rows] + [""]


def arrow(row: dict, key: str) -> str:
    before, after = row[f"{key}_before"], row[f"{key}_after"]
    return f"{before} → {after}" if before and after else before or after


def order(recipe: str) -> tuple[int, str]:
    """Known recipes in RECIPES' order, a variant ("default + augmentation=augmix") after its recipe."""
    base = recipe.replace(",", " ").split()[0]
    return (RECIPES.index(base) if base in RECIPES else len(RECIPES), recipe)


def recipe_sections(rows: list[dict], hardware: bool) -> list[str]:
    """One section per recipe: its runs, its evaluations, its evaluations under corruption. `hardware`: a column
    for it (when the rows were measured on more than one machine)."""
    recipes = sorted({r["recipe"] for r in rows}, key=order)
    out = []
    for recipe in recipes:
        runs = [r for r in rows if r["recipe"] == recipe and r["kind"] == "run"]
        evals = [r for r in rows if r["recipe"] == recipe and r["kind"] == "eval"]
        out += [f"## `{recipe}`", ""]
        if runs:
            exact = {}
            for e in evals:  # a run's accuracy on the exact test images: its first such evaluation
                if e["split"] == "test" and e["data"] == "data-exact" and e["accuracy"]:
                    exact.setdefault(e["run"], e["accuracy"])
            out += table(
                ["run", "seed", "precision", "validation", "exact test", "test (`data/`)", "PFLOP", "epochs", "fit s",
                 "command s", "command", "commit", "hardware", "source", "note"],
                [[r["id"], r["seed"], r["precision"], r["best_val_acc"], exact.get(r["id"], ""), r["test_acc"],
                  r["training_pflop"], r["epochs"], r["fit_seconds"], r["command_seconds"], code(r["command"]),
                  r["commit"], r["hardware"] if hardware else "", r["source"], r["note"]] for r in runs],
            )  # fmt: skip
        if evals:
            out += ["Evaluations:", ""]
            out += table(
                ["run", "split", "data", "TTA", "accuracy", "T", "ECE", "MCE", "NLL", "Brier", "command s", "command",
                 "commit", "hardware", "source", "note"],
                [[e["run"], e["split"], e["data"], e["tta"], e["accuracy"], e["temperature"], arrow(e, "ece"),
                  arrow(e, "mce"), arrow(e, "nll"), arrow(e, "brier"), e["command_seconds"], code(e["command"]),
                  e["commit"], e["hardware"] if hardware else "", e["source"], e["note"]]
                 for e in evals if e["accuracy"] or e["ece_after"] or not e["mca"]],
            )  # fmt: skip
        robust = [e for e in evals if e["mca"]]
        if robust:
            out += ["Under corruption (mCA: mean accuracy over the corruptions and severities):", ""]
            out += table(
                ["run", "data", "images", "clean", "mCA", "mCA / clean", "per severity", "command s", "command",
                 "commit", "hardware", "source", "note"],
                [[e["run"], e["data"], e["corruption_images"], e["clean_accuracy"], e["mca"], e["mca_relative"],
                  e["mca_per_severity"], e["command_seconds"], code(e["command"]), e["commit"],
                  e["hardware"] if hardware else "", e["source"], e["note"]] for e in robust],
            )  # fmt: skip
    return out


def headline(rows: list[dict]) -> list[str]:
    """One row per recipe and precision measured over several seeds: its mean ± std on validation and on the exact
    test images, its training PFLOP and the command, before the per-run tables."""
    means = [r for r in rows if r["kind"] == "run" and r["recipe"] in RECIPES and "mean" in r["seed"]]
    exact = {r["run"]: r["accuracy"] for r in rows if r["kind"] == "eval" and r["data"] == "data-exact"}
    body = [
        [f"`{r['recipe']}`", r["precision"], r["seed"].split(" (")[0], r["best_val_acc"], exact.get(r["id"], ""),
         r["training_pflop"], code(r["command"])]
        for r in sorted(means, key=lambda r: (order(r["recipe"]), r["precision"]))
    ]  # fmt: skip
    if not body:
        return []
    header = ["recipe", "precision", "seeds", "validation", "exact test", "training PFLOP", "command"]
    return ["## Recipes", "", "Means ± std over seeds; each recipe's runs and evaluations are listed below.", ""] + [
        *table(header, body)
    ]


def ood_cell(row: dict) -> str:
    """Each out-of-distribution set with its AUROCs: `set MSP / MaxLogit / Energy; ...`."""
    if not row["ood"]:
        return ""
    names = row["ood"].split(": ", 1)[1].split("; ")
    scores = [row[k].split("; ") for k in ("auroc_msp", "auroc_max_logit", "auroc_energy")]
    return "; ".join(f"{name} {' / '.join(values)}" for name, *values in zip(names, *scores))


def predictions_section(rows: list[dict]) -> list[str]:
    """The evaluations that say how far to trust a prediction: selective classification (AURC), conformal sets at
    90% and 95% (coverage / mean set size), out-of-distribution AUROCs, and ensembles against their members."""
    chosen = [r for r in rows if r["kind"] in ("eval", "ensemble") and (r["sets"] or r["ood"] or r["members"])]
    if not chosen:
        return []
    body = [
        [r["recipe"], r["run"], r["data"], r["accuracy"], r["members_accuracy"], r["ece_after"], r["aurc"], r["sets"],
         f"{r['coverage_90']} / {r['set_size_90']}" if r["coverage_90"] else "",
         f"{r['coverage_95']} / {r['set_size_95']}" if r["coverage_95"] else "",
         r["ood"].split(":")[0], ood_cell(r),
         code(r["command"]), r["note"] if r["kind"] == "ensemble" else ""]
        for r in sorted(chosen, key=lambda r: (order(r["recipe"]), r["kind"], r["run"]))
    ]  # fmt: skip
    header = [
        "recipe", "run", "data", "accuracy", "members' mean", "ECE", "AURC", "sets", "90%: coverage / size",
        "95%: coverage / size", "out-of-distribution", "AUROC: MSP / MaxLogit / Energy", "command", "note",
    ]  # fmt: skip
    intro = (
        "Acting on predictions (docs/predictions.md): AURC of the calibrated top probability; conformal sets at 90% "
        "and 95% (`sets`: their conformal_score), their empirical coverage (%) and mean size; out-of-distribution "
        "AUROCs; ensembles with their members' mean accuracy."
    )
    return ["## Predictions a user can act on", "", intro, ""] + table(header, body)


def corruption_section(rows: list[dict]) -> list[str]:
    """Accuracy per corruption (mean of its severities), one column per evaluation that recorded it."""
    evals = [r for r in rows if r["mca_per_corruption"]]
    if not evals:
        return []
    columns = [dict(p.split("=", 1) for p in e["mca_per_corruption"].split("; ")) for e in evals]
    names = list(dict.fromkeys(name for c in columns for name in c))
    header = ["corruption", *(f"{e['recipe']} ({e['run']}, {e['data']})" for e in evals)]
    return ["## Accuracy per corruption", ""] + table(header, [[n, *(c.get(n, "") for c in columns)] for n in names])


def render(csv_path: Path, speed_path: Path, out: Path) -> None:
    rows, speed = read_csv(csv_path, COLUMNS), read_csv(speed_path, SPEED_COLUMNS)
    if not rows and not speed:
        raise UserError(f"neither {csv_path} nor {speed_path} holds any row: nothing to render")
    lines = [
        "<!-- Generated by `python benchmarks/results.py` (make results) from "
        f"{csv_path.name} and {speed_path.name}: edit those, not this file. -->",
        "",
        "# Results",
        "",
        "Every measurement of this project, with the command that reproduces it, the commit and the hardware it was",
        "made on. Accuracies and calibration errors in %. Validation: the 5,000 training images held out by",
        "`data.split_seed`. Exact test: the 1,000 test images with exact pixels (`data-exact/`). Test (`data/`): the",
        "10,000 test images of the shared copy, 9,000 of which went through JPEG (JPEG-degraded). Rows with a",
        "`source` other than `add` were transcribed from the README at that commit; their fp32 runs are reproduced",
        "with `trainer.precision=32-true`, their bf16 runs by the command as written. To add runs:",
        "`python benchmarks/results.py add RUN_DIR [RUN_DIR ...]`, then `python benchmarks/results.py`.",
        "",
    ]
    hardware = sorted({r["hardware"] for r in rows + speed if r["hardware"]})
    if len(hardware) == 1:
        lines += [f"Hardware of every row: {hardware[0]}.", ""]
    lines += headline(rows) + recipe_sections(rows, len(hardware) > 1) + predictions_section(rows)
    lines += corruption_section(rows)
    if speed:
        lines += [
            "## Speed",
            "",
            "Ratios of two configurations measured in the same session, in pairs, order alternating (this machine's",
            "speed drifts between hours, so times of different sessions are not compared).",
            "",
        ]
        lines += table(
            ["what", "measure", "figure", "range", "pairs", "per pair", "detail", "precision", "command", "commit",
             "hardware", "source"],
            [[s["what"], s["measure"], s["figure"], s["range"], s["pairs"], s["per_pair"], s["detail"], s["precision"],
              code(s["command"]), s["commit"], s["hardware"] if len(hardware) > 1 else "", s["source"]] for s in speed],
        )  # fmt: skip
    lines += ["## Figures", ""] + [f"- [{title}]({path})" for title, path in FIGURES if (out.parent / path).exists()]
    lines += ["", "![speed/accuracy frontier](frontier.png)"] if (out.parent / "frontier.png").exists() else []
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("\n".join(lines).rstrip() + "\n")
    tmp.replace(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="runs and evaluations (default: %(default)s)")
    parser.add_argument("--speed-csv", type=Path, default=DEFAULT_SPEED_CSV, help="speed ratios (%(default)s)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the markdown written (%(default)s)")
    sub = parser.add_subparsers(dest="action")
    adding = sub.add_parser("add", help="add or update the rows of finished run folders")
    adding.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    adding.add_argument("--csv", type=Path, default=argparse.SUPPRESS, help="the CSV to update (default: as above)")
    adding.add_argument("--recipe", help="the recipe the rows are grouped under (default: the run's experiment=)")
    args = parser.parse_args(argv)
    try:
        if args.action == "add":
            added, updated = add(args.run_dirs, args.csv, args.recipe)
            print(f"{args.csv}: {added} rows added, {updated} updated; python benchmarks/results.py renders them")
        else:
            render(args.csv, args.speed_csv, args.out)
            print(f"wrote {args.out}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
