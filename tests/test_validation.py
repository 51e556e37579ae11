"""The one checker: signatures with ranges, the command line's freedom, and values that only fail together."""

import re
from typing import Annotated, Literal

import annotated_types as at
import pytest
import torch
from conftest import FAST, compose_train, run_script, train_run

from cifar_lightning.blocks.checks import check_arguments, check_value, fits
from cifar_lightning.blocks.data import ImageDataModule
from cifar_lightning.blocks.errors import UserError
from cifar_lightning.blocks.module import TTA
from cifar_lightning.tasks.train import train


def ranged(count: Annotated[int, at.Ge(1)], share: Annotated[float, at.Interval(gt=0, le=1)] = 0.5) -> None:
    pass


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"count": 0}, "x.count=0 must be at least 1"),
        ({"count": 1.5}, "x.count=1.5 is not a whole number"),
        ({"count": True}, "x.count=True is not a whole number"),
        ({"count": 2, "share": 0}, "x.share=0 must be above 0 and at most 1"),
        ({"count": 2, "share": float("nan")}, "x.share=nan must be above 0 and at most 1"),
        ({"count": 2, "shares": 1}, "test_validation.ranged takes no argument 'shares' (it takes count, share)"),
        ({"count": "${oc.env:HOME}"}, "x.count='${oc.env:HOME}' is not a whole number"),
    ],
)
def test_a_signature_with_ranges_refuses_in_one_line_naming_the_key(kwargs, message):
    with pytest.raises(UserError, match=re.escape(message)) as error:
        check_arguments(ranged, kwargs, "x")
    assert "\n" not in str(error.value)


def test_a_phrase_in_the_annotation_is_the_message_and_literals_are_exact():
    with pytest.raises(UserError, match=r"^mode='max' must be mean or sum$"):
        check_value("mode", "max", Annotated[Literal["mean", "sum"], "must be mean or sum"])
    assert fits("sum", Literal["mean", "sum"]) and not fits("Sum", Literal["mean", "sum"])
    assert fits(1, Literal[0, 1, 2]) and not fits(True, Literal[0, 1, 2]) and not fits(1.0, Literal[0, 1, 2])
    assert fits(True, bool | Literal[0, 1, 2]) and fits(2, bool | Literal[0, 1, 2]) and not fits(2.0, Literal[2, "2"])
    assert fits(1, TTA) and not fits(True, TTA) and not fits(1.0, TTA) and not fits(3, TTA)
    check_arguments(ranged, {"count": 3, "share": 1}, "x")  # an int is a number


@pytest.mark.parametrize("value", [1.5, 1.0, 4999.5, -1, -0.1, True, float("nan")])
def test_val_size_is_a_whole_count_or_a_share_below_1(value):
    """A fraction above 1 is neither a count nor a share: it was cut to a count (1.5 -> 1 image) before."""
    with pytest.raises(UserError, match=r"^data.val_size=.* must be a whole number of images \(0: none\) or a share"):
        check_arguments(ImageDataModule, {"val_size": value}, "data")
    for fine in (0, 0.0, 0.1, 0.999, 1, 5000):
        check_arguments(ImageDataModule, {"val_size": fine}, "data")


def test_a_list_of_fixed_length_names_its_length():
    with pytest.raises(UserError, match=re.escape("c=[1, 2] is not a list of 3 numbers")):
        check_value("c", [1, 2], tuple[float, float, float])
    with pytest.raises(UserError, match=re.escape("c=['a'] is not a list of numbers")):
        check_value("c", ["a"], tuple[float, ...])
    assert fits([1, 2.5, 3], tuple[float, float, float]) and fits((1, 2), tuple[float, ...])


def quick(tmp_path, *overrides):
    return compose_train(["data=synthetic", *FAST, *overrides], output_dir=tmp_path / "run")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["epochs=0.01", "batch_size=128"], "epochs=0.01 makes 0.15 optimizer steps"),
        (["epochs=0.5", "batch_size=1000", "data.val_size=200"], "epochs=0.5 makes 0.5 optimizer steps"),
        (["epochs=0.05", "trainer.accumulate_grad_batches=8"], "makes 0.4 optimizer steps of 32 x 8 images"),
        (["batch_size=100000"], "batch_size=100000 is larger than the training split (1960 images)"),
        (["callbacks.early_stopping.monitor=val/accuracy"], "EarlyStopping watches monitor='val/accuracy'"),
        (["callbacks.model_checkpoint.monitor=val_acc"], "BestCheckpoint watches monitor='val_acc'"),
        (["data.val_size=0", "callbacks.early_stopping.monitor=train/accuracy"], "which this run never logs"),
        (["callbacks.last_checkpoint=null"], "last.ckpt, which no ModelCheckpoint writes"),
    ],
)
def test_values_that_only_fail_together_are_refused_once_the_data_is_known(tmp_path, overrides, message):
    """Each of these would fail (or train nothing) only after the data loaded, mid-run or at an epoch's end."""
    with pytest.raises(UserError, match=re.escape(message)) as error:
        train(quick(tmp_path, *overrides))
    assert "\n" not in str(error.value) and not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("monitor", ["train/loss", "val/loss"])
def test_every_metric_the_module_logs_may_be_watched(tmp_path, monitor):
    summary = train_run(
        ["data=synthetic", *FAST, f"callbacks.early_stopping.monitor={monitor}", "callbacks.early_stopping.mode=min"],
        tmp_path / "run",
    )
    assert summary["epochs"] == 1


def test_the_command_line_may_name_any_importable_net(tmp_path):
    """A Hydra user's own class (here torchvision's SqueezeNet 1.1) trains; only what comes from disk is gated."""
    summary = train_run(
        ["data=synthetic", *FAST, "model._target_=torchvision.models.squeezenet1_1", "~model.widths"],
        tmp_path / "run",
    )
    assert summary["epochs"] == 1
    checkpoint = tmp_path / "run" / "checkpoints" / "best.ckpt"
    from cifar_lightning.store.checkpoints import load_model

    with pytest.raises(
        UserError, match=re.escape("add its module as written there: trusted_modules=[torchvision.models]")
    ):
        load_model(checkpoint)
    model = load_model(checkpoint, trusted_modules=["torchvision.models"])
    images = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    assert model.predict_logits(images).shape == (2, 10)


@pytest.mark.parametrize(
    "script, args, key",
    [
        ("train.py", ["data=synthetic", "data.root=${oc.env:CIFAR_LIGHTNING_UNSET_DIR}"], "data.root"),
        ("train.py", ["data=synthetic", "optimizer.lr=${optimizer.learning_rate}"], "optimizer.lr"),
        ("evaluate.py", ["ckpt=${oc.env:CIFAR_LIGHTNING_UNSET}"], "ckpt"),
        ("predict.py", ["images=x", "ckpt=${nope}"], "ckpt"),
    ],
)
def test_interpolations_that_do_not_resolve_are_one_line_naming_the_key(tmp_path, script, args, key):
    folder = [f"hydra.run.dir={tmp_path / 'run'}"] if script == "train.py" else []
    result = run_script(script, *args, *folder)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {key}: ") and len(result.stderr.strip().splitlines()) <= 3
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_unannotated_arguments_take_plain_values():
    """torch's MultiStepLR (whose hints do not evaluate) takes its milestones; a tensor is still refused."""
    from cifar_lightning.blocks.checks import check_target

    config = {"_target_": "torch.optim.lr_scheduler.MultiStepLR", "_partial_": True, "milestones": [1, 2]}
    check_target(config, "scheduler")
    assert fits([1, "a", None], typing_any()) and not fits(torch.zeros(1), typing_any())


def typing_any():
    import typing

    return typing.Any


def test_epochs_written_as_a_whole_float_trains_and_max_epochs_apart_from_epochs_is_refused(tmp_path):
    assert train_run(["data=synthetic", *FAST, "epochs=1.0"], tmp_path / "a")["epochs"] == 1
    with pytest.raises(UserError, match=re.escape("trainer.max_epochs=5: the run's length is set by epochs alone")):
        train(quick(tmp_path, "+trainer.max_epochs=5"))


def test_a_run_under_a_symlinked_folder_trains(tmp_path):
    """Lightning resolves a checkpoint folder's symlinks: best.ckpt's source is compared the same way."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    cfg = compose_train(["data=synthetic", *FAST], output_dir=tmp_path / "link" / "run")
    summary = train(cfg)
    assert summary["best_val_acc"] is not None and (tmp_path / "real" / "run" / "checkpoints" / "best.ckpt").is_file()
