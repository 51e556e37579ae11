"""Degenerate datasets are caught when the data module sets up: a one-line UserError that says what was wrong and
what to do, or, for an optional test split without images, no test split and a warning."""

import logging
import pickle
import shutil

import numpy as np
import pytest
from conftest import write_folder

import cifar_lightning.blocks.data as data
from cifar_lightning.blocks.data import ImageDataModule
from cifar_lightning.blocks.errors import UserError


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
