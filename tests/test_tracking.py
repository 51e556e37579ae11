"""Experiment tracking read back from the real stores: MLflow's database and TensorBoard's event files; from an
MLflow run to its folder (mlflow:RUN_ID) and to its model in MLflow's registry."""

import contextlib
import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import mlflow
import numpy as np
import pytest
import torch
from conftest import FAST, ROOT, run_script, train_run
from mlflow import MlflowClient
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cifar_lightning.blocks.errors import UserError
from cifar_lightning.store.locate import resolve
from cifar_lightning.tasks.cli import compose_config
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
    assert (
        params["config/model/_target_"] == "cifar_lightning.blocks.models.cnn.CNN" and "config/optimizer/lr" in params
    )
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


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A finished 2-epoch run on synthetic data, logged to the MLflow store of its runs root: (root, run, run id)."""
    outputs = tmp_path_factory.mktemp("tracked") / "outputs"
    run = outputs / "runs" / "tracked"
    before = os.environ.get("MLFLOW_TRACKING_URI")
    train_run([*FAST, "epochs=2", "data=synthetic", "logger=mlflow", f"paths.root={outputs}"], run)
    mlflow.set_tracking_uri(before)  # Lightning's MLFlowLogger sets it for the whole process and its environment
    return outputs, run, json.loads((run / "mlflow_run.json").read_text())["run_id"]


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ")
    return last


@pytest.mark.slow
def test_an_mlflow_run_id_names_its_run_folder_for_ckpt_and_resume(tracked):
    outputs, run, run_id = tracked
    assert resolve(f"mlflow:{run_id}", outputs) == run / "checkpoints" / "best.ckpt"

    # killed before its summary: resume=mlflow:RUN_ID continues that folder, and no other is left behind
    (run / "summary.json").unlink()
    resumed = run_script("train.py", f"resume=mlflow:{run_id}", f"paths.root={outputs}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (run / "summary.json").is_file() and [p.name for p in (outputs / "runs").iterdir()] == ["tracked"]

    refused = run_script("predict.py", f"ckpt=mlflow:{'0' * 32}", f"outputs={outputs}", "images=.")
    assert "no such MLflow run" in one_line_error(refused)
    refused = run_script("train.py", f"resume=mlflow:{'0' * 32}", f"paths.root={outputs}")
    assert "no such MLflow run" in one_line_error(refused)
    assert [p.name for p in (outputs / "runs").iterdir()] == ["tracked"]  # the refused resume left no folder


def test_an_mlflow_run_id_that_leads_to_no_run_folder_is_one_line(tracked, tmp_path, monkeypatch):
    outputs, run, run_id = tracked
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = MlflowClient(f"sqlite:///{outputs / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("cifar-lightning").experiment_id
    untagged = client.create_run(experiment).info.run_id
    gone = client.create_run(experiment, tags={"run_dir": str(tmp_path / "moved")}).info.run_id
    other = client.create_run(experiment, tags={"run_dir": str(run)}).info.run_id  # a folder of another run
    cases = {
        "f" * 32: "no such MLflow run",
        untagged: "has no run_dir tag",
        gone: "is gone",
        other: f"is not that MLflow run's folder (its mlflow_run.json names run {run_id})",
    }
    for refused, why in cases.items():
        with pytest.raises(UserError, match=re.escape(why)):
            resolve(f"mlflow:{refused}", outputs)
    with pytest.raises(UserError, match="no MLflow store at"):
        resolve(f"mlflow:{run_id}", tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere").exists()  # looking did not create a store
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if MLflow were not installed
    with pytest.raises(UserError, match=re.escape("needs MLflow: pip install -e '.[track]'")):
        resolve(f"mlflow:{run_id}", outputs)


LOAD = """
import json, sys
import mlflow
import numpy as np
from PIL import Image

model = mlflow.pyfunc.load_model(sys.argv[1])
images = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in sys.argv[2:]])  # (N, H, W, 3)
hwc, chw = model.predict(images), model.predict(images.transpose(0, 3, 1, 2))
top = hwc.iloc[:, 1:].max(axis=1).tolist()
print(json.dumps({"classes": list(hwc["class"]), "same_for_chw": hwc.equals(chw), "probabilities": top}))
"""


@pytest.mark.slow
def test_the_registered_model_loads_back_and_gives_predicts_classes(tracked, tmp_path):
    outputs, run, run_id = tracked
    registered = run_script(
        "export.py", f"ckpt=mlflow:{run_id}", f"outputs={outputs}", "format=mlflow", "registered_model=tiny-cnn"
    )
    assert registered.returncode == 0, registered.stderr[-2000:]
    assert (
        "top-1 agreement 100.00%" in registered.stdout and "registered models:/tiny-cnn@champion" in registered.stdout
    )
    store = f"sqlite:///{outputs / 'mlflow.db'}"
    assert MlflowClient(store).get_model_version_by_alias("tiny-cnn", "champion").run_id == run_id

    rng = np.random.default_rng(0)
    paths = [tmp_path / "images" / f"{i}.png" for i in range(8)]
    paths[0].parent.mkdir()
    for i, path in enumerate(paths):  # a few flat colours (the synthetic classes are colours) and noise
        pixels = np.full((32, 32, 3), 30 * i, np.uint8) if i < 4 else rng.integers(0, 256, (32, 32, 3), np.uint8)
        Image.fromarray(pixels).save(path)
    predicted = run_script(
        "predict.py",
        f"ckpt=mlflow:{run_id}",
        f"outputs={outputs}",
        f"images={paths[0].parent}",
        f"csv={tmp_path / 'predictions.csv'}",
    )
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    with open(tmp_path / "predictions.csv") as f:
        rows = {row["path"]: row for row in csv.DictReader(f)}

    (tmp_path / "load.py").write_text(LOAD)
    loaded = run_script(
        tmp_path / "load.py", "models:/tiny-cnn@champion", *paths, env={**os.environ, "MLFLOW_TRACKING_URI": store}
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    result = json.loads(loaded.stdout.strip().splitlines()[-1])
    assert result["classes"] == [rows[str(path)]["class_1"] for path in paths]
    assert result["probabilities"] == pytest.approx([float(rows[str(p)]["prob_1"]) for p in paths], abs=1e-5)
    assert result["same_for_chw"]


def test_registering_needs_a_name_and_a_tracked_run(synthetic_run):
    unnamed = run_script("export.py", f"ckpt={synthetic_run}", "format=mlflow")
    assert "add registered_model=NAME" in one_line_error(unnamed)
    untracked = run_script("export.py", f"ckpt={synthetic_run}", "format=mlflow", "registered_model=x")
    assert "train with logger=mlflow" in one_line_error(untracked)


@contextlib.contextmanager
def own_process_group(args, **popen):
    """A process started in a session of its own, and at the end every process of that session ended (the MLflow
    server's workers, chromium's helpers), also when the block fails."""
    process = subprocess.Popen(args, start_new_session=True, **popen)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever of the session outlived SIGTERM
        process.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def tracking_ui(tracked, tmp_path_factory):
    """`mlflow ui` on the tracked run's database, answering: its address."""
    outputs = tracked[0]
    folder = tmp_path_factory.mktemp("ui")
    port = free_port()
    args = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", f"sqlite:///{outputs / 'mlflow.db'}"]
    args += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job workers
    with (
        open(folder / "ui.log", "w") as log,
        own_process_group(args, cwd=folder, env=env, stdout=log, stderr=log) as ui,
    ):
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):  # until it answers (start-up imports MLflow's server), or it died
            assert ui.poll() is None, (folder / "ui.log").read_text()[-3000:]
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"{url}/health", timeout=5)
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"mlflow ui did not answer: {(folder / 'ui.log').read_text()[-3000:]}")
        yield url


def test_the_tracking_ui_serves_the_run_and_its_val_acc_history(tracked, tracking_ui):
    _, run, run_id = tracked
    got = get_json(f"{tracking_ui}/api/2.0/mlflow/runs/get?run_id={run_id}")["run"]
    assert got["info"]["run_id"] == run_id and got["info"]["run_name"] == "tracked"
    assert {"key": "run_dir", "value": str(run.resolve())} in got["data"]["tags"]
    query = urllib.parse.urlencode({"run_id": run_id, "metric_key": "val/acc"})
    history = get_json(f"{tracking_ui}/api/2.0/mlflow/metrics/get-history?{query}")["metrics"]
    with open(run / "metrics.csv") as f:
        expected = [float(row["val/acc"]) for row in csv.DictReader(f) if row.get("val/acc")]
    assert len(expected) == 2  # one per epoch
    assert [m["value"] for m in sorted(history, key=lambda m: m["step"])] == pytest.approx(expected)


@pytest.mark.browser
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_a_headless_browser_renders_the_runs_page(tracked, tracking_ui, tmp_path):
    _, _, run_id = tracked
    experiment = get_json(f"{tracking_ui}/api/2.0/mlflow/runs/get?run_id={run_id}")["run"]["info"]["experiment_id"]
    page = f"{tracking_ui}/#/experiments/{experiment}/runs/{run_id}"
    browser = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
    browser += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
    browser += ["--window-size=1400,1000", "--virtual-time-budget=20000"]

    def chromium(*args, profile):
        with own_process_group(
            [*browser, f"--user-data-dir={tmp_path / profile}", *args, page], stdout=subprocess.PIPE, text=True
        ) as process:
            out, _ = process.communicate(timeout=240)
        assert process.returncode == 0
        return out

    # the page as rendered: the app has filled in the run (its id, status and metrics), not an error page
    dom = chromium("--dump-dom", profile="dom")
    assert all(text in dom for text in (run_id, "Finished", "val/acc")), dom[-2000:]
    chromium(f"--screenshot={tmp_path / 'run.png'}", profile="shot")
    with Image.open(tmp_path / "run.png") as shot:
        assert shot.size == (1400, 1000)
        colours = shot.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # drawn text and widgets, not one flat colour


def test_the_registered_model_takes_uint8_images_in_either_layout():
    from cifar_lightning.store.registry import as_nchw

    hwc = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8)
    assert torch.equal(as_nchw(hwc, 32), torch.from_numpy(hwc).permute(0, 3, 1, 2))
    assert torch.equal(as_nchw(hwc.transpose(0, 3, 1, 2), 32), torch.from_numpy(hwc).permute(0, 3, 1, 2))
    for wrong, why in ((hwc.astype(np.float32), "must be a uint8 array"), (hwc[:, :16], "not (2, 16, 32, 3)")):
        with pytest.raises(UserError, match=re.escape(why)):
            as_nchw(wrong, 32)
