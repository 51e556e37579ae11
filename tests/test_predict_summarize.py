"""predict.py on image files and the sweep summary."""

import csv
import json

import numpy as np
import pytest
from conftest import ROOT, run_script
from PIL import Image

from cifar_lightning.tasks import summarize


@pytest.fixture
def run(synthetic_run):
    return synthetic_run


def test_predict_prints_top3_skips_unreadable_files_and_writes_csv(run, tmp_path):
    rng = np.random.default_rng(0)
    for name, size in (("small.png", 32), ("big.jpg", 97)):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "broken.png").write_text("not an image")
    result = run_script("predict.py", f"ckpt={run}", f"images={tmp_path}/*", f"csv={tmp_path / 'out.csv'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped" in result.stdout and "broken.png" in result.stdout
    lines = [line for line in result.stdout.splitlines() if line.startswith(str(tmp_path)) and "class_" in line]
    assert len(lines) == 2 and all(line.count("%") == 3 for line in lines)
    with open(tmp_path / "out.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"].rsplit("/", 1)[1] for r in rows] == ["big.jpg", "small.png"]
    for r in rows:
        probs = [float(r[f"prob_{k}"]) for k in (1, 2, 3)]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_predict_with_no_matching_files_is_one_line(run, tmp_path):
    result = run_script("predict.py", f"ckpt={run}", f"images={tmp_path}/*.png")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: images=")


def fake_run(folder, overrides, summary):
    """A run folder as train.py leaves it, without the training: overrides and, unless it crashed, summary.json."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if summary:
        (folder / "summary.json").write_text(json.dumps(summary))


def test_summary_groups_seeds_and_records_failed_runs(tmp_path):
    fake_run(
        tmp_path / "0",
        ["optimizer.lr=0.001", "seed=1"],
        {"best_val_acc": 0.70, "test_acc": 0.60, "epochs": 3, "fit_seconds": 10},
    )
    fake_run(
        tmp_path / "1",
        ["optimizer.lr=0.001", "seed=2"],
        {"best_val_acc": 0.80, "test_acc": 0.62, "epochs": 3, "fit_seconds": 12},
    )
    fake_run(
        tmp_path / "2",
        ["optimizer.lr=0.003", "seed=1"],
        {"best_val_acc": 0.90, "test_acc": 0.70, "epochs": 3, "fit_seconds": 11},
    )
    fake_run(tmp_path / "3", ["optimizer.lr=0.003", "seed=2"], None)  # crashed: no summary.json
    summarize.main([str(tmp_path)])
    groups = summarize.group(summarize.read_runs(tmp_path))
    assert [g["group"] for g in groups] == ["optimizer.lr=0.003", "optimizer.lr=0.001"]
    assert groups[1]["best_val_acc"] == pytest.approx(0.75) and groups[1]["best_val_acc_std"] == pytest.approx(
        0.0707, abs=1e-4
    )
    assert groups[0]["runs"] == 2 and groups[0]["failed"] == 1
    table = (tmp_path / "summary.md").read_text()
    assert "75.00% ± 7.07" in table and "failed" in table
    assert groups[0]["best_val_acc_std"] is None and "| 90.00% |" in table  # one finished run: no spread
    with open(tmp_path / "summary.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    with Image.open(tmp_path / "summary.png") as image:
        assert image.width > 300


def test_summary_groups_the_folds_of_a_cross_validation_like_seeds(tmp_path):
    for fold, acc in enumerate([0.70, 0.74, 0.72]):
        summary = {"best_val_acc": acc, "test_acc": acc - 0.1, "epochs": 3, "fit_seconds": 10}
        fake_run(tmp_path / str(fold), ["data.folds=3", f"data.fold={fold}"], summary)
    (group,) = summarize.group(summarize.read_runs(tmp_path))
    assert group["group"] == "data.folds=3" and group["runs"] == 3
    assert group["best_val_acc"] == pytest.approx(0.72) and group["best_val_acc_std"] == pytest.approx(0.02)


def test_summary_groups_jobs_whatever_bookkeeping_a_resumed_sweep_gave_them(tmp_path):
    """A resumed sweep's command gives the jobs it starts fresh paths.root= and trusted_modules= (and an Optuna job
    its trial=): where the runs live and what they may load, not settings of the run."""
    done = {"best_val_acc": 0.70, "test_acc": 0.60, "epochs": 3, "fit_seconds": 10}
    fake_run(tmp_path / "0", ["optimizer.lr=0.001", "seed=1"], done)
    fresh = ["optimizer.lr=0.001", "seed=2", f"paths.root='{tmp_path}'", "trusted_modules=[helpers]"]
    fake_run(tmp_path / "1", fresh, {**done, "best_val_acc": 0.80})
    (group,) = summarize.group(summarize.read_runs(tmp_path))
    assert group["group"] == "optimizer.lr=0.001" and group["runs"] == 2
    assert group["best_val_acc"] == pytest.approx(0.75)
    summarize.main([str(tmp_path)])
    assert "paths.root" not in (tmp_path / "summary.md").read_text()


def test_frontier_plots_runs_and_sweeps_and_refuses_unfinished_or_uncounted_runs(tmp_path):
    def summary(acc, seconds, pflop):
        return {"best_val_acc": acc, "fit_seconds": seconds, "training_pflop": pflop}

    fake_run(tmp_path / "sweep" / "0", ["experiment=fast", "data.verify=false"], summary(0.82, 70, 0.004))
    fake_run(tmp_path / "sweep" / "1", ["experiment=fast90"], summary(0.90, 300, 0.06))
    fake_run(tmp_path / "default", ["seed=1"], summary(0.805, 468, 0.05))
    fake_run(tmp_path / "crashed", ["experiment=fast94"], None)
    fake_run(tmp_path / "old", ["experiment=fast94"], {"best_val_acc": 0.94, "fit_seconds": 1500})
    out = tmp_path / "frontier.png"
    result = run_script("benchmarks/frontier.py", tmp_path / "sweep", tmp_path / "default", "--out", out)
    assert result.returncode == 0, result.stderr[-1000:]
    assert f"wrote {out} (3 runs)" in result.stdout
    with Image.open(out) as image:
        assert image.width > 1000  # two panels
    for bad, message in [
        ("crashed", "is not a finished run"),
        ("old", "has no training_pflop in its summary.json"),
        ("nothing", "is neither a run nor a sweep folder"),
    ]:
        result = run_script("benchmarks/frontier.py", tmp_path / "sweep", tmp_path / bad, "--out", tmp_path / "x.png")
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path / bad}")
        assert message in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_frontier_of_the_results_csv_takes_one_bf16_seed_0_run_per_recipe(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(ROOT / "benchmarks")
    from frontier import recorded

    columns = ["kind", "recipe", "seed", "precision", "best_val_acc", "training_pflop", "fit_seconds"]
    rows = [
        ["run", "fast94", "0", "bf16-mixed", "93.52", "0.217", "600"],
        ["run", "fast94", "0", "bf16-mixed", "90.00", "0.217", "600"],  # a second row of the recipe: not shown
        ["run", "fast", "1", "bf16-mixed", "84.00", "0.009", "38"],  # seed 1
        ["run", "fast", "0", "32-true", "83.24", "0.009", "64"],  # fp32
        ["run", "fast", "0", "bf16-mixed", "83.90", "0.009", "38"],
        ["eval", "default", "0", "bf16-mixed", "81.0", "0.05", "200"],
        ["run", "default", "0", "bf16-mixed", "81.20", "", "207"],  # no compute recorded
        ["run", "fast94 ablations", "0", "bf16-mixed", "93.00", "0.217", "600"],  # not a recipe
    ]
    path = tmp_path / "results.csv"
    path.write_text("\n".join(",".join(r) for r in [columns, *rows]) + "\n")
    points = recorded(path)
    assert [p["label"] for p in points] == ["experiment=fast", "experiment=fast94"]  # in RECIPES' order
    assert points[1] == {"label": "experiment=fast94", "best_val_acc": pytest.approx(0.9352), "training_pflop": 0.217,
                         "fit_seconds": 600.0}  # fmt: skip
    out = tmp_path / "frontier.png"
    result = run_script("benchmarks/frontier.py", "--results", path, "--out", out)
    assert result.returncode == 0 and f"wrote {out} (2 runs)" in result.stdout and out.is_file()


def test_the_frontier_keeps_the_runs_nothing_beats_on_cost_and_accuracy():
    from cifar_lightning.blocks.run_plots import frontier

    costs, accuracies = [5, 1, 2, 3, 2, 8], [90, 80, 79, 85, 83, 89]
    assert frontier(costs, accuracies) == [(1, 80), (2, 83), (3, 85), (5, 90)]


def test_frontier_labels_drop_where_the_data_lies(monkeypatch):
    monkeypatch.syspath_prepend(ROOT / "benchmarks")
    from frontier import label

    overrides = ["experiment=fast", "data.verify=false", "seed=1", "hydra.run.dir=x", "extras.print_config=false"]
    assert label(overrides) == "experiment=fast"
    assert label(["data.verify=false"]) == "python train.py (defaults)"


def test_summary_of_a_folder_without_runs_is_an_error(tmp_path):
    result = run_script("-m", "cifar_lightning.tasks.summarize", tmp_path)
    assert result.returncode == 1 and result.stderr.startswith("error:") and "Traceback" not in result.stderr


def test_a_plots_machine_names_the_precision_when_the_run_recorded_it():
    from cifar_lightning.blocks.run_plots import describe_machine

    machine = {"cpu": "AMD EPYC", "threads": 2, "gpu": None, "torch": "2.14.1"}
    assert describe_machine(machine) == "AMD EPYC, 2 threads, torch 2.14.1"
    assert describe_machine(machine | {"precision": "bf16-mixed"}) == "AMD EPYC, 2 threads, torch 2.14.1, bf16-mixed"
    assert describe_machine(machine | {"threads": 1}) == "AMD EPYC, 1 thread, torch 2.14.1"
    assert describe_machine(None) == "a machine not recorded"
