"""Bad values, divergence and determinism."""

import csv
import re

import pytest
import torch
from conftest import FAST, compose_train, run_script

from cifar_lightning.blocks.errors import UserError
from cifar_lightning.tasks.train import train


@pytest.mark.parametrize(
    "override, message",
    [
        ("epochs=0", "epochs=0 must be a positive number"),
        ("epochs=-3", "epochs=-3 must be"),
        ("epochs=abc", "epochs='abc' must be"),
        ("epochs=true", "epochs=True must be"),
        ("batch_size=0", "batch_size=0 must be"),
        ("batch_size=2.5", "batch_size=2.5 must be a whole number"),
        ("trainer.accumulate_grad_batches=0", "trainer.accumulate_grad_batches=0 must be a whole number of at least 1"),
        ("trainer.accumulate_grad_batches=-1", "trainer.accumulate_grad_batches=-1 must be"),
        ("seed=abc", "seed='abc' must be a whole number from 0 to 4294967295"),
        ("seed=-1", "seed=-1 must be"),
        ("seed=1.5", "seed=1.5 must be"),
        ("optimizer.lr=0", "optimizer.lr=0 must be a positive number"),
        ("optimizer.lr=-1e-3", "optimizer.lr=-0.001 must be a positive number"),
        ("optimizer.weight_decay=abc", "optimizer.weight_decay='abc' is not a number"),
        (
            "optimizer.weight_decay=-1",
            "optimizer or scheduler cannot be built from these values: ValueError: Invalid weight_decay",
        ),
        (
            "scheduler.pct_start=2",
            "optimizer or scheduler cannot be built from these values: ValueError: Expected float",
        ),
        ("data.val_size=abc", "data.val_size='abc' must be a whole number of images (0: none) or a share below 1"),
        ("data.val_size=-5", "data.val_size=-5 must be a whole number of images (0: none) or a share below 1"),
        ("data.eval_batch_size=0", "data.eval_batch_size=0 must be at least 1"),
        ("data.num_workers=-1", "data.num_workers=-1 must be at least 0"),
        ("data.split_seed=abc", "data.split_seed='abc' is not a whole number"),
        ("data.verify=maybe", "data.verify='maybe' is not true or false"),
        ("data.source=nope", "data.source='nope' is not a data source"),
        ("data.image_size=64", "data.image_size=64: cifar10's images are 32 x 32 and are not resized"),
        ("module.tta=5", "module.tta=5 must be 0 (off), 1 (mirror) or 2 (six views)"),
        (
            "module.tta_fraction=1.5",
            "module.tta_fraction=1.5 must be a share in (0, 1]: 1 gives every image the TTA views",
        ),
        ("module.label_smoothing=2", "module.label_smoothing=2 must be at least 0 and below 1"),
        ("module.channels_last=maybe", "module.channels_last='maybe' is not true or false"),
        ("model.widths=abc", "model.widths='abc' is not a list"),
        ("model.widths=[0,-1]", "model cannot be built from these values: RuntimeError"),
        ("augmentation.crop.padding=-3", "augmentation cannot be built from these values"),
        ("callbacks.early_stopping.patience=abc", "callbacks.early_stopping.patience='abc' is not a whole number"),
        ("logger.csv.name=3", "logger.csv.name=3 is not a string or null"),
        ("+trainer.max_epochs=abc", "trainer.max_epochs='abc': the run's length is set by epochs alone (epochs=1)"),
        ("+trainer.max_steps=100", "trainer.max_steps=100: the run's length is set by epochs alone (epochs=1): remove"),
        ("trainer.precision=99", "trainer.precision=99 is not one of"),
        ("trainer.devices=abc", "trainer cannot be built from these values: TypeError"),
    ],
)
def test_unusable_values_are_refused_before_the_data_loads(override, message, tmp_path):
    refused_before_the_data_loads([override], message, tmp_path)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["experiment=fast", "optimizer.norm_every=0"], "optimizer.norm_every=0 must be a whole number of steps"),
        (["experiment=fast94_hiverge", "augmentation.jitter.contrast=1.5"], "augmentation.jitter.contrast=1.5 must"),
        (["experiment=fast94_hiverge", "augmentation.jitter.brightness=-1"], "augmentation.jitter.brightness=-1 must"),
        (
            ["experiment=fast94_lookahead", "callbacks.lookahead.every=0"],
            "callbacks.lookahead.every=0 must be at least 1",
        ),
        (
            ["callbacks.divergence_guard.every_n_steps=0"],
            "callbacks.divergence_guard.every_n_steps=0 is not a whole number at least 1 or null",
        ),
    ],
)
def test_unusable_values_of_a_recipe_s_parts_are_refused_before_the_data_loads(overrides, message, tmp_path):
    refused_before_the_data_loads(overrides, message, tmp_path)


def test_a_callback_that_freezes_a_parameter_the_model_lacks_is_refused_before_the_run_starts(tmp_path):
    cfg = compose_train([*FAST, "data=synthetic", "experiment=fast94_lookahead", "model=cnn"], tmp_path / "run")
    with pytest.raises(UserError, match=re.escape("the model has no parameter 'net.whiten.bias' to freeze")):
        train(cfg)
    assert not (tmp_path / "run").exists()  # no start record, no config tree: a refused run leaves no folder


def refused_before_the_data_loads(overrides, message, tmp_path):
    # data that is not there: had it been loaded first, the error would be about the data instead
    cfg = compose_train(
        [*FAST, f"data.root={tmp_path / 'no-data'}", "data.download=false", *overrides], output_dir=tmp_path / "run"
    )
    with pytest.raises(UserError, match=re.escape(message)) as error:
        train(cfg)
    assert "\n" not in str(error.value) and not (tmp_path / "run").exists()


def test_divergence_stops_within_the_epoch_and_keeps_the_best_checkpoint(tmp_path, cifar_root):
    # epoch 0 trains at lr 0.01; then the schedule multiplies it by 1e12
    result = run_script(
        "train.py",
        *FAST,
        "epochs=3",
        f"data.root={cifar_root}",
        "data.verify=false",
        "optimizer=sgd",
        "optimizer.lr=0.01",
        "scheduler=step",
        "scheduler.step_size=1",
        "scheduler.gamma=1e12",
        "callbacks.divergence_guard.every_n_steps=1",
        f"hydra.run.dir={tmp_path / 'run'}",  # a new folder: tmp_path holds the data
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: training diverged") and "lower optimizer.lr" in last
    assert "at epoch 1, step" in last  # inside the epoch that blew up, not at its end
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    assert f"the checkpoints saved so far are kept ({best}, " in last  # best.ckpt and last.ckpt, named
    assert torch.load(best, weights_only=True)["epoch"] == 0
    evaluated = run_script("evaluate.py", f"ckpt={best}", "split=val")
    assert evaluated.returncode == 0, evaluated.stderr[-1000:]


def test_same_seed_same_config_gives_identical_metrics_and_weights(tmp_path, cifar_root):
    def run(name):
        out = tmp_path / name
        train(
            compose_train(
                [
                    *FAST,
                    "epochs=2",
                    f"data.root={cifar_root}",
                    "data.verify=false",
                    "augmentation=strong",
                    "trainer.deterministic=true",
                ],
                output_dir=out,
            )
        )
        with open(out / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        return rows, torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]

    rows_a, weights_a = run("a")
    rows_b, weights_b = run("b")
    assert rows_a == rows_b
    assert weights_a.keys() == weights_b.keys()
    assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model=nope", "error: In 'train': Could not find 'model/nope' (options: airbench, cnn, mlp, resnet18)"),
        # a typo of a key: struct mode refuses unknown keys, and the message names the nearest ones (not Hydra's +)
        ("epoch=3", "error: epoch: the config has no key 'epoch': did you mean epochs?"),
        ("optimizer.lrr=1", "error: optimizer.lrr: optimizer has no key 'lrr': did you mean lr?"),
        ("model.zzz=1", "error: model.zzz: model has no key 'zzz': its keys are _target_, widths."),
        ("epochs.x=1", "error: epochs.x: epochs has no key 'x': it has none; set epochs=... itself."),
        ("epochs=[", "error: no viable alternative at input '['"),
        ("+epochs=3", "error: Could not append to config. An item is already at 'epochs'. Either remove + prefix"),
        ("epochs=abc", "error: epochs='abc' must be a positive number"),
        ("batch_size=100000", "error: batch_size=100000 is larger than the training split"),
    ],
)
def test_bad_command_lines_fail_clearly_without_traceback(override, message, tmp_path):
    result = run_script("train.py", "data=synthetic", *FAST, override, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "HYDRA_FULL_ERROR" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]  # the whole message on one line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_checkpoint_write_that_dies_leaves_the_previous_file_whole(tmp_path):
    from cifar_lightning.store.checkpoints import AtomicCheckpointIO

    class DiesWhileSaved:
        def __reduce__(self):
            raise KeyboardInterrupt  # stands in for a kill halfway through writing

    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 1, "weights": torch.ones(1000)}, path)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2, "weights": torch.zeros(1000), "cut": DiesWhileSaved()}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]
