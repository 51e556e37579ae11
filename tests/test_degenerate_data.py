"""Degenerate datasets are caught when the data module sets up: a one-line UserError that says what was wrong and
what to do, or, for an optional test split without images, no test split and a warning. Degenerate statistics
(a channel without spread) train; a batch that cannot train (one image per batch through a BatchNorm layer that sees
1x1) is refused before the run starts; a NaN loss is blamed on its cause."""

import csv
import logging
import math
import pickle
import shutil

import numpy as np
import pytest
import torch
from conftest import FAST, WITHOUT_NARROW, compose_train, run_script, train_run, write_folder
from PIL import Image

import cifar_lightning.blocks.data as data
from cifar_lightning.blocks.callbacks import DivergenceGuard, TrainingDiverged
from cifar_lightning.blocks.checks import check_arguments
from cifar_lightning.blocks.data import ImageDataModule
from cifar_lightning.blocks.errors import UserError
from cifar_lightning.blocks.module import ImageClassifier
from cifar_lightning.tasks.schema import TrainOptions, check_train_config


def setup(**kwargs) -> ImageDataModule:
    datamodule = ImageDataModule(**{"batch_size": 4, "val_size": 0, **kwargs})
    datamodule.setup("fit")
    return datamodule


def refused(match: str, **kwargs) -> str:
    with pytest.raises(UserError, match=match) as error:
        setup(**kwargs)
    message = str(error.value)
    assert "\n" not in message  # one line: the entry points print it after "error: "
    return message


def warned(caplog, **kwargs) -> tuple[ImageDataModule, str]:
    with caplog.at_level(logging.WARNING, logger=data.__name__):
        datamodule = setup(**kwargs)
    return datamodule, "\n".join(r.getMessage() for r in caplog.records if r.name == data.__name__)


# ------------------------------------------------------------------------------------------ folder trees
def test_train_class_folders_without_images_say_to_add_images(tmp_path):
    for name in ("cat", "dog"):
        (tmp_path / "train" / name).mkdir(parents=True)
    message = refused("class folders without images: cat, dog", source="folder", root=tmp_path)
    assert "add images" in message


def test_a_train_class_folder_of_non_image_files_is_named(tmp_path):
    root = write_folder(tmp_path, classes=("cat", "dog"), test=False)
    shutil.rmtree(root / "train" / "dog")
    (root / "train" / "dog").mkdir()
    (root / "train" / "dog" / "notes.txt").write_text("not an image")
    (root / "train" / "dog" / ".DS_Store").write_bytes(b"\0")
    message = refused("without images: dog;", source="folder", root=root)
    assert "add images" in message and "cat" not in message.split(";")[0]


def test_all_empty_test_folders_mean_no_test_split(tmp_path, caplog):
    root = write_folder(tmp_path, classes=("cat", "dog"))
    for name in ("cat", "dog"):
        shutil.rmtree(root / "test" / name)
        (root / "test" / name).mkdir()
    datamodule, log = warned(caplog, source="folder", root=root)
    assert "test" not in datamodule.splits and len(datamodule.splits["train"]) == 24
    assert f"{root / 'test'}: no images" in log


def test_test_classes_without_images_or_folders_are_fine(tmp_path):
    root = write_folder(tmp_path, classes=("cat", "dog", "frog"))
    shutil.rmtree(root / "test" / "dog")  # no folder
    for image in (root / "test" / "frog").iterdir():  # an empty folder
        image.unlink()
    datamodule = setup(source="folder", root=root)
    assert datamodule.class_names == ["cat", "dog", "frog"]
    assert datamodule.splits["test"].labels.tolist() == [0, 0, 0, 0]


def test_a_test_class_the_training_data_lacks_is_refused(tmp_path):
    root = write_folder(tmp_path, classes=("cat", "dog"))
    shutil.copytree(root / "test" / "dog", root / "test" / "bird")
    message = refused("class folders that .*train lacks: bird;", source="folder", root=root)
    assert "add training images for them or remove them" in message


def test_a_single_class_tree_is_refused(tmp_path):
    root = write_folder(tmp_path, classes=("cat",))
    message = refused("images of one class only \\(cat\\), a classifier needs two or more", source="folder", root=root)
    assert f"add images under {root / 'train'}/<class>/" in message


def test_val_size_holding_out_every_image_of_a_folder_class_is_refused(tmp_path):
    root = write_folder(tmp_path, classes=("cat", "dog"), per_class=2, test=False)
    # 3 of the 4 images held out: one class keeps none, whichever the split draws
    message = refused("data.val_size=3 holds out every training image of the class\\(es\\) (cat|dog) ",
                      source="folder", root=root, val_size=3)  # fmt: skip
    assert "lower data.val_size or add images" in message


def test_val_size_too_small_to_hold_out_an_image_is_refused(tmp_path):
    root = write_folder(tmp_path, classes=("cat", "dog"), per_class=4, test=False)
    message = refused("data.val_size=0.01 must hold out between 1 and 7 images", source="folder", root=root,
                      val_size=0.01)  # fmt: skip
    assert "or be 0 to train on all of them" in message


# ------------------------------------------------------------------------------------------------ CIFAR
def rewrite(root, file: str, change) -> None:
    """Rewrite one CIFAR-10 batch file of the tree write_cifar made with change(batch) applied."""
    path = root / "cifar-10-batches-py" / file
    batch = pickle.loads(path.read_bytes(), encoding="latin1")
    change(batch)
    path.write_bytes(pickle.dumps(batch, protocol=2))


def no_images(batch):
    batch.update(data=np.zeros((0, 3072), np.uint8), labels=[], filenames=[])


def test_cifar_training_batches_holding_no_images_are_refused(cifar_root):
    for i in range(1, 6):
        rewrite(cifar_root, f"data_batch_{i}", no_images)
    message = refused("cifar10 train batches in .*cifar-10-batches-py: no images;", root=cifar_root, verify=False)
    assert "download or unpack them again" in message


def test_a_cifar_test_batch_holding_no_images_means_no_test_split(cifar_root, caplog):
    rewrite(cifar_root, "test_batch", no_images)
    datamodule, log = warned(caplog, root=cifar_root, verify=False)
    assert "test" not in datamodule.splits and len(datamodule.splits["train"]) == 200
    assert "cifar10 test batches" in log and "no images" in log


def test_cifar_training_batches_of_one_class_are_refused(cifar_root):
    for i in range(1, 6):
        rewrite(cifar_root, f"data_batch_{i}", lambda b: b.update(labels=[3] * len(b["labels"])))
    refused("train batches .*: images of one class only \\(cat\\)", root=cifar_root, verify=False)


def test_cifar_test_labels_outside_the_classes_are_refused(cifar_root):
    rewrite(cifar_root, "test_batch", lambda b: b["labels"].__setitem__(0, 10))
    refused("test batches .*: labels \\[10\\] name no class \\(there are 10\\)", root=cifar_root, verify=False)


def test_cifar_classes_without_training_images_are_named_in_a_warning(cifar_root, caplog):
    for i in range(1, 6):  # dog (5) relabelled airplane: a reduced copy with nine classes
        rewrite(cifar_root, f"data_batch_{i}", lambda b: b.update(labels=[0 if c == 5 else c for c in b["labels"]]))
    datamodule, log = warned(caplog, root=cifar_root, verify=False)
    assert datamodule.num_classes == 10 and 5 not in datamodule.splits["train"].labels.tolist()
    assert "no training images of the class(es) dog: the model never predicts them" in log


# -------------------------------------------------------------------------------------------- synthetic
def test_synthetic_val_size_leaving_one_training_image_is_refused():
    refused("data.val_size=1999 holds out every training image of the class", source="synthetic", val_size=1999,
            batch_size=1)  # fmt: skip


def test_synthetic_data_of_one_class_is_refused(monkeypatch):
    one_class = data.make_synthetic(num_classes=1)
    monkeypatch.setattr(data, "make_synthetic", lambda **kwargs: one_class)
    refused("synthetic train data: images of one class only \\(class_0\\)", source="synthetic")


# ------------------------------------------------------------------------------- statistics and batches
def write_channels(root, varying, per_class=(8, 8), size=8):
    """Two classes of size x size PNGs in which only the channels in `varying` (0 red, 1 green, 2 blue) vary from
    image to image and pixel to pixel; the others are 0 everywhere."""
    rng = np.random.default_rng(0)
    for c, (name, n) in enumerate(zip(("a", "b"), per_class)):
        (root / "train" / name).mkdir(parents=True)
        for i in range(n):
            pixels = np.zeros((size, size, 3), np.uint8)
            for channel in varying:
                pixels[..., channel] = np.clip(80 * c + rng.normal(60, 20, (size, size)), 0, 255)
            Image.fromarray(pixels).save(root / "train" / name / f"{i}.png")
    return root


def test_a_channel_without_spread_has_std_1_and_normalises_to_0(tmp_path):
    mean, std = setup(source="folder", root=write_channels(tmp_path / "red", [0]), image_size=8).channel_stats()
    assert mean[1:] == [0, 0] and std[1:] == [1, 1] and 0 < std[0] < 1
    black = setup(source="folder", root=write_channels(tmp_path / "black", []), image_size=8)
    assert black.channel_stats() == ([0, 0, 0], [1, 1, 1])


@pytest.mark.parametrize(
    "varying, per_class, overrides",
    [
        ([0], (8, 8), []),  # green and blue 0 everywhere
        ([], (8, 8), []),  # all black: nothing to learn, but nothing to refuse
        ([0, 1, 2], (9, 1), []),  # a class of a single image
        ([0], (8, 8), ["batch_size=1"]),  # one image per batch: cnn's BatchNorm layers see 8x8 .. 2x2
        ([0], (8, 8), ["batch_size=1", "model=mlp", "+model.in_features=192"]),  # no BatchNorm
    ],
)
def test_degenerate_images_train_to_the_end(tmp_path, varying, per_class, overrides):
    root = write_channels(tmp_path / "data", varying, per_class)
    run = tmp_path / "run"
    summary = train_run(
        [*WITHOUT_NARROW, "data=folder", f"data.root={root}", "data.image_size=8", "data.val_size=0", "batch_size=4",
         *overrides],
        run,
    )  # fmt: skip
    assert summary["epochs"] == 1 and (run / "checkpoints" / "best.ckpt").is_file()
    with open(run / "metrics.csv") as f:
        losses = [float(row["train/loss"]) for row in csv.DictReader(f) if row.get("train/loss")]
    assert losses and all(math.isfinite(loss) for loss in losses)


@pytest.mark.parametrize(
    "model, image_size, layer",
    [("resnet18", 8, "net.9.residual.1"), ("cnn", 4, "net.4.1"), ("cnn", 8, None), ("resnet18", 32, None)],
)
def test_one_image_per_batch_is_refused_where_a_batch_norm_layer_sees_1x1(model, image_size, layer):
    def check(batch_size):
        overrides = [*WITHOUT_NARROW, "data=synthetic", f"data.image_size={image_size}", f"model={model}"]
        check_train_config(compose_train([*overrides, f"batch_size={batch_size}"]), TrainOptions)

    check(2)  # two images always give two values per channel
    if layer is None:
        check(1)
        return
    with pytest.raises(UserError) as error:
        check(1)
    assert str(error.value) == (
        f"batch_size=1 with {image_size}x{image_size} images: the net's BatchNorm layer {layer} sees 1x1 inputs, so "
        "one image per batch gives it a single value per channel in training, and BatchNorm needs at least 2; raise "
        "batch_size to 2 or more (it is per process under DDP)"
    )


def test_a_batch_norm_batch_that_cannot_train_is_one_line_before_the_run(tmp_path):
    root = write_channels(tmp_path / "data", [0, 1, 2])
    result = run_script("train.py", "data=folder", f"data.root={root}", "data.image_size=8", "model=resnet18",
                        "batch_size=1", f"paths.root={tmp_path / 'outputs'}")  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: batch_size=1 with 8x8 images: the net's BatchNorm")
    assert not any((tmp_path / "outputs").rglob("*.*"))  # no run folder with files left behind


@pytest.mark.parametrize(
    "key, values",
    [("std", [0.2, 0.0, 0.2]), ("std", [0.2, math.nan, 0.2]), ("std", [math.inf] * 3), ("mean", [math.nan] * 3),
     ("mean", [0.5, -math.inf, 0.5])],
)  # fmt: skip
def test_normalisation_constants_that_are_not_finite_are_refused_before_training(key, values):
    with pytest.raises(UserError, match=rf"^module\.{key}=\[.*\] must be"):
        ImageClassifier(net={"_target_": "torch.nn.Identity"}, optimizer={}, class_names=["a", "b"], **{key: values})
    with pytest.raises(UserError, match=rf"^hyper_parameters\.{key}="):  # a checkpoint's, at the gate (trust.py)
        check_arguments(ImageClassifier, {key: values}, "hyper_parameters")


@pytest.mark.parametrize(
    "step, message",
    [
        (0, "training failed: the loss was nan at epoch 0, step 0, the first batch, before any optimizer step, so the "
            "learning rate is not the cause: "),
        (2, "training diverged: the loss was nan at epoch 0, step 2 (learning rate "),
    ],
)  # fmt: skip
def test_a_nan_loss_names_its_likely_cause_and_no_checkpoint_it_did_not_save(tmp_path, step, message):
    poison = ["+callbacks.poison._target_=helpers.PoisonWeights", f"+callbacks.poison.step={step}"]
    with pytest.raises(TrainingDiverged) as error:
        train_run([*FAST, "data=synthetic", "callbacks.divergence_guard.every_n_steps=1", *poison], tmp_path / "run")
    text = str(error.value)
    assert text.startswith(message) and text.endswith("; no checkpoint was saved") and "\n" not in text
    assert ("lower optimizer.lr" in text) == (step > 0)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_on_a_gpu_the_divergence_guard_reads_the_loss_once_an_epoch_unless_asked():
    """No host-device synchronisation per step by default: the losses' finiteness is kept on the device and read at
    the epoch's end; every_n_steps=N reads the loss every N steps. A tensor that counts its reads stands for the
    GPU's loss."""
    from types import SimpleNamespace

    reads = []

    class Loss(torch.Tensor):
        def __float__(self):
            reads.append(1)
            return super().__float__()

        def __bool__(self):
            reads.append(1)
            return super().__bool__()

        def item(self):
            reads.append(1)
            return super().item()

    gpu = SimpleNamespace(device=torch.device("cuda"))
    trainer = SimpleNamespace(global_step=3, current_epoch=2, checkpoint_callbacks=[], optimizers=[])
    trainer.optimizers.append(SimpleNamespace(param_groups=[{"lr": 0.1}]))
    guard = DivergenceGuard()
    for i, value in enumerate([1.0, float("nan"), 2.0]):
        guard.on_train_batch_start(trainer, gpu, None, i)
        guard.on_train_batch_end(trainer, gpu, {"loss": torch.tensor(value).as_subclass(Loss)}, None, i)
    assert reads == []  # nothing read during the epoch
    with pytest.raises(TrainingDiverged, match=r"^training diverged: the loss was not finite in epoch 2 \(learning"):
        guard.on_train_epoch_end(trainer, gpu)
    assert len(reads) == 1
    guard.on_train_epoch_end(trainer, gpu)  # a new epoch starts finite
    asked = DivergenceGuard(every_n_steps=2)
    for i in range(4):
        asked.on_train_batch_start(trainer, gpu, None, i)
        asked.on_train_batch_end(trainer, gpu, {"loss": torch.tensor(1.0).as_subclass(Loss)}, None, i)
    assert len(reads) == 3  # batches 0 and 2
    with pytest.raises(TrainingDiverged, match=r"the loss was nan at epoch 2, step 4"):
        asked.on_train_batch_end(trainer, gpu, {"loss": torch.tensor(float("nan"))}, None, 4)
    asked.on_train_epoch_end(trainer, gpu)  # the steps between the reads are checked at the epoch's end too
    for i, value in enumerate([1.0, float("inf")]):
        asked.on_train_batch_start(trainer, gpu, None, 5 + 2 * i)
        asked.on_train_batch_end(trainer, gpu, {"loss": torch.tensor(value)}, None, 5 + 2 * i)
    with pytest.raises(TrainingDiverged, match="not finite in epoch 2"):
        asked.on_train_epoch_end(trainer, gpu)
    # the run's first batch is read (one read a run), so that a loss never finite is not blamed on the learning rate
    first = SimpleNamespace(**{**vars(trainer), "global_step": 0})
    fresh = DivergenceGuard()
    fresh.on_train_batch_start(first, gpu, None, 0)
    with pytest.raises(TrainingDiverged, match="the first batch, before any optimizer step"):
        fresh.on_train_batch_end(first, gpu, {"loss": torch.tensor(float("nan"))}, None, 0)
