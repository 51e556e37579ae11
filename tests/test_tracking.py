"""Experiment tracking read back from the real stores: MLflow's database and TensorBoard's event files."""

import json
import subprocess

import pytest
from conftest import FAST, ROOT, run_script, train_run
from mlflow import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cifar_lightning.cli import compose_config
from cifar_lightning.tasks.evaluate import evaluate


def test_mlflow_run_holds_the_config_epoch_metrics_summary_tags_and_evaluation(tmp_path, cifar_root):
    outputs = tmp_path / "outputs"
    run = outputs / "runs" / "tracked"
    overrides = [*FAST, "epochs=3", f"data.root={cifar_root}", "data.verify=false", "seed=7", "logger=mlflow"]
    summary = train_run([*overrides, f"paths.root={outputs}"], run)

    client = MlflowClient(f"sqlite:///{outputs / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cifar-lightning")
    (tracked,) = client.search_runs([experiment.experiment_id])
    run_id = tracked.info.run_id
    assert json.loads((run / "mlflow_run.json").read_text())["run_id"] == run_id
    params = tracked.data.params
    assert params["config/epochs"] == "3" and params["config/seed"] == "7"
    assert params["config/model/_target_"] == "cifar_lightning.models.cnn.CNN" and "config/optimizer/lr" in params
    assert len(client.get_metric_history(run_id, "val/acc")) == 3  # one value per epoch
    assert len(client.get_metric_history(run_id, "train/loss")) == 3
    assert tracked.data.metrics["summary/best_val_acc"] == pytest.approx(summary["best_val_acc"])
    assert tracked.data.metrics["summary/test_acc"] == pytest.approx(summary["test_acc"])
    tags = tracked.data.tags
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert tags["seed"] == "7" and tags["run_dir"] == str(run.resolve()) and tags["git_commit"] == (commit or "unknown")
    assert tags["mlflow.runName"] == "tracked"
    assert [a.path for a in client.list_artifacts(run_id)] == ["summary.json"]

    evaluate(compose_config("evaluate", [f"ckpt={run}"]))
    attached = {a.path for a in client.list_artifacts(run_id, "eval/test")}
    assert {"eval/test/metrics.json", "eval/test/report.md", "eval/test/confusion_matrix.png"} <= attached

    # killed before its summary and resumed, the run goes on logging to its own MLflow run
    (run / "summary.json").unlink()
    resumed = run_script("train.py", f"resume={run}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [run_id]
    assert len(client.get_metric_history(run_id, "summary/test_acc")) == 2

    # a record naming a run the store does not hold: one line, no traceback
    (run / "mlflow_run.json").write_text(json.dumps({"tracking_uri": client.tracking_uri, "run_id": "f" * 32}))
    (run / "summary.json").unlink()  # not finished, so there is something to resume
    refused = run_script("train.py", f"resume={run}")
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("error: ") and "does not hold" in refused.stderr


def test_a_record_naming_a_store_elsewhere_is_not_written_to(tmp_path, cifar_root):
    run = tmp_path / "outputs" / "runs" / "plain"
    train_run([*FAST, f"data.root={cifar_root}", "data.verify=false"], run)
    elsewhere = tmp_path / "elsewhere" / "mlflow.db"
    record = {"tracking_uri": f"sqlite:///{elsewhere}", "run_id": "0" * 32}
    (run / "mlflow_run.json").write_text(json.dumps(record))
    evaluate(compose_config("evaluate", [f"ckpt={run}"]))
    assert (run / "eval" / "test" / "metrics.json").is_file() and not elsewhere.parent.exists()


def test_tensorboard_event_files_hold_one_scalar_per_epoch(tmp_path, cifar_root):
    run = tmp_path / "run"
    train_run([*FAST, "epochs=3", f"data.root={cifar_root}", "data.verify=false", "logger=tensorboard"], run)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    accumulator = EventAccumulator(str(run / "tensorboard"))  # every event file of the folder
    accumulator.Reload()
    scalars = accumulator.Tags()["scalars"]
    assert {"train/loss", "train/acc", "val/loss", "val/acc", "test/acc"} <= set(scalars)
    for name in ("train/acc", "val/acc"):
        assert len(accumulator.Scalars(name)) == 3 and all(0 <= s.value <= 1 for s in accumulator.Scalars(name))
    assert (run / "metrics.csv").is_file()  # the CSV logger stays on beside it
