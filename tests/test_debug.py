"""The debug switches (configs/debug/), the value returned to sweepers and the config printed at the start."""

import csv

import pytest
import torch
from conftest import FAST, NARROW, ROOT, compose_train, train_run
from hydra import compose, initialize_config_dir

from cifar_lightning.blocks.errors import UserError
from cifar_lightning.tasks.schema import check_train_config
from cifar_lightning.tasks.train import TrainOptions

QUICK = [o for o in FAST if o != "epochs=1"]  # the debug configs set the epochs


def epoch_rows(run):
    with open(run / "metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r.get("train/acc")]


def test_debug_default_is_one_epoch_on_the_cpu_with_anomaly_detection_and_debug_logging():
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", ["debug=default", "paths.output_dir=x"], return_hydra_config=True)
    assert cfg.epochs == 1 and cfg.trainer.accelerator == "cpu" and cfg.trainer.detect_anomaly is True
    assert cfg.hydra.job_logging.root.level == "DEBUG"


def test_fdr_runs_one_batch_of_each_split_and_saves_nothing(tmp_path, cifar_root):
    run = tmp_path / "run"
    summary = train_run([*QUICK, "debug=fdr", f"data.root={cifar_root}", "data.verify=false"], run)
    assert summary["best_checkpoint"] == "" and summary["temperature"] == 1.0 and 0 <= summary["test_acc"] <= 1
    assert not (run / "checkpoints").exists()


def test_overfit_memorises_three_batches(tmp_path, cifar_root):
    run = tmp_path / "run"
    train_run(
        [*(o for o in QUICK if o != NARROW), "debug=overfit", f"data.root={cifar_root}", "data.verify=false"], run
    )
    rows = epoch_rows(run)
    assert len(rows) == 50 and float(rows[0]["train/acc"]) < 0.5
    assert float(rows[-1]["train/acc"]) >= 0.99  # 96 images, seen 50 times without augmentation
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 50 * 3


def test_limit_trains_on_a_share_of_each_epoch(tmp_path):
    run = tmp_path / "run"
    train_run([*QUICK, "debug=limit", "data=synthetic", "data.val_size=200"], run)
    # synthetic: 1,800 training images in 57 batches of 32, of which 10 per epoch, for 3 epochs
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 30
    assert len(epoch_rows(run)) == 3


def test_profiler_writes_its_report_into_the_run_folder(tmp_path, cifar_root):
    run = tmp_path / "run"
    train_run([*QUICK, "debug=profiler", f"data.root={cifar_root}", "data.verify=false"], run)
    report = (run / "fit-profile.txt").read_text()
    assert "run_training_epoch" in report and "Mean duration" in report


@pytest.mark.parametrize(
    "override, message",
    [
        ("optimized_metric=accuracy", "optimized_metric='accuracy' must be one of best_val_acc, test_acc"),
        ("extras.print_config=maybe", "extras.print_config='maybe' must be true or false"),
    ],
)
def test_bad_extras_are_refused(override, message):
    with pytest.raises(UserError, match=message):
        check_train_config(compose_train([override]), TrainOptions)


def test_config_tree_is_saved_always_and_printed_when_asked(tmp_path, cifar_root, capsys):
    run = tmp_path / "run"
    train_run([*FAST, f"data.root={cifar_root}", "data.verify=false", "extras.print_config=true"], run)
    tree = (run / "config_tree.txt").read_text()
    assert "model" in tree and "_target_: cifar_lightning.blocks.models.cnn.CNN" in tree and "net: ${model}" in tree
    assert "cifar_lightning.blocks.models.cnn.CNN" in capsys.readouterr().out
    quiet = tmp_path / "quiet"
    train_run([*FAST, f"data.root={cifar_root}", "data.verify=false"], quiet)
    assert "cifar_lightning.blocks.models.cnn.CNN" in (quiet / "config_tree.txt").read_text()
    assert "models.cnn.CNN" not in capsys.readouterr().out
