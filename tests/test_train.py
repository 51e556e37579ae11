"""End-to-end training runs on tiny data, in-process (train()) and through train.py itself."""

import csv
import json

import pytest
import torch
from conftest import FAST, WITHOUT_NARROW, compose_train, run_script, train_run

from cifar_lightning.blocks.callbacks import training_flops_per_image
from cifar_lightning.blocks.models.cnn import CNN
from cifar_lightning.blocks.module import ImageClassifier
from cifar_lightning.tasks.train import train


def test_one_epoch_writes_checkpoints_metrics_and_summary(cifar_root, tmp_path):
    out = tmp_path / "run"
    cfg = compose_train([*FAST, f"data.root={cifar_root}", "data.verify=false"], output_dir=out)
    summary = train(cfg)

    assert (out / "checkpoints" / "best.ckpt").is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    columns = set(rows[0])
    assert {"epoch", "train/loss", "train/acc", "val/loss", "val/acc", "test/loss", "test/acc"} <= columns
    val_acc = [float(r["val/acc"]) for r in rows if r["val/acc"]]
    assert len(val_acc) == 1 and 0 <= val_acc[0] <= 1
    assert summary["best_val_acc"] == max(val_acc) and 0 <= summary["test_acc"] <= 1
    assert json.loads((out / "summary.json").read_text())["best_val_acc"] == summary["best_val_acc"]
    machine = summary["hardware"]  # what the times were measured on
    assert machine["torch"] == torch.__version__ and machine["threads"] == torch.get_num_threads()
    assert machine["cpu"] and machine["gpu"] is None and machine["devices"] == 1
    assert machine["precision"] == cfg.trainer.precision  # bf16-mixed on a CPU with bf16 instructions

    # the checkpoint alone rebuilds the model, with the data's classes and normalisation, and loads safely
    model = ImageClassifier.load_from_checkpoint(
        out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True
    )
    assert model.hparams.class_names[0] == "airplane" and len(model.hparams.mean) == 3
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_train_py_runs_and_prints_the_result(cifar_root, tmp_path):
    result = run_script(
        "train.py", *FAST, f"data.root={cifar_root}", "data.verify=false", f"hydra.run.dir={tmp_path / 'run'}"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "best val acc" in result.stderr + result.stdout and "test acc" in result.stderr + result.stdout
    run = tmp_path / "run"
    assert (run / ".hydra" / "config.yaml").is_file() and (run / "train.log").is_file()
    assert (run / "checkpoints" / "best.ckpt").is_file() and (run / "metrics.csv").is_file()


def test_a_bf16_run_with_its_model_summary_prints_no_precision_warning(tmp_path):
    """bf16-mixed is the default on CPUs with native bf16; Lightning's summary warns that it sizes the model in fp32,
    which is right (the weights are fp32), so the warning is filtered. bf16 runs (emulated) on any CPU."""
    overrides = [*FAST, "trainer.enable_model_summary=true", "trainer.precision=bf16-mixed", "data=synthetic"]
    result = run_script("train.py", *overrides, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Params" in result.stdout + result.stderr  # the summary was printed
    assert "not supported by the model summary" not in result.stdout + result.stderr


def test_multirun_gives_each_job_its_own_folder(tmp_path):
    result = run_script("train.py", "-m", "data=synthetic", "seed=1,2", *FAST, f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    for job, seed in zip(jobs, (1, 2)):
        assert (job / "checkpoints" / "best.ckpt").is_file() and (job / "metrics.csv").is_file()
        assert f"seed: {seed}" in (job / ".hydra" / "config.yaml").read_text()


def test_missing_data_is_one_line_and_a_nonzero_exit(tmp_path):
    result = run_script(
        "train.py", f"data.root={tmp_path / 'empty'}", "data.download=false", f"hydra.run.dir={tmp_path / 'run'}"
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert lines[-1].startswith("error: cifar10 is not in") and "empty/cifar-10-batches-py" in lines[-1]


def test_val_size_zero_trains_on_everything_and_keeps_the_last_epoch(cifar_root, tmp_path):
    cfg = compose_train(
        [*FAST, "epochs=2", f"data.root={cifar_root}", "data.verify=false", "data.val_size=0"], output_dir=tmp_path
    )
    summary = train(cfg)
    assert summary["best_val_acc"] is None and 0 <= summary["test_acc"] <= 1
    for name in ("best", "last"):
        assert torch.load(tmp_path / "checkpoints" / f"{name}.ckpt", weights_only=True)["epoch"] == 1
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert "val/acc" not in rows[0] and sum(1 for r in rows if r.get("train/acc")) == 2


@pytest.mark.slow
def test_compiled_net_trains_and_its_checkpoint_loads_like_any_other(tmp_path):
    from helpers import RecordTrainStart

    from cifar_lightning.store.checkpoints import load_model

    RecordTrainStart.seen.clear()
    summary = train_run(
        [
            *WITHOUT_NARROW,
            "data=synthetic",
            "model=mlp",
            "model.hidden=[]",
            "module.compile=true",
            "+callbacks.record._target_=helpers.RecordTrainStart",
        ],  # few kernels for the C++ compiler
        tmp_path / "compiled",
    )
    assert RecordTrainStart.seen[0]["compiled"] and 0 <= summary["best_val_acc"] <= 1
    plain = torch.load(tmp_path / "compiled" / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert not any("_orig_mod" in k for k in plain)  # compiled in place: the same parameter names
    model = load_model(tmp_path / "compiled" / "checkpoints" / "best.ckpt")
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_training_flops_are_counted_per_image_and_summed_over_the_run(tmp_path, cifar_root):
    # the CNN by hand: forward 2 x (32x32x3x32x9 + 16x16x32x64x9 + 8x8x64x128x9 + 128x10) multiply-adds; backward
    # twice that, less the first convolution's input gradient, which nothing needs
    forward = 2 * (32 * 32 * 3 * 32 * 9 + 16 * 16 * 32 * 64 * 9 + 8 * 8 * 64 * 128 * 9 + 128 * 10)
    per_image = 3 * forward - 2 * 32 * 32 * 3 * 32 * 9
    assert training_flops_per_image(CNN(10), 32) == per_image == 60_169_728
    summary = train_run([*WITHOUT_NARROW, "epochs=2", f"data.root={cifar_root}", "data.verify=false"], tmp_path / "run")
    assert summary["training_pflop"] == pytest.approx(2 * 160 * per_image / 1e15)  # 160 training images, twice
