"""k-fold cross-validation (data.folds, data.fold) and a subset of the classes (data.classes): the folds partition
the training images and are stratified; a subset relabels its classes; bad values are one line."""

import pytest
import torch
from conftest import FAST, run_script

from cifar_lightning.blocks.data import ImageDataModule
from cifar_lightning.blocks.errors import UserError


def module(**kwargs) -> ImageDataModule:
    data = ImageDataModule(source="synthetic", **{"val_size": 200, **kwargs})
    data.setup("fit")
    return data


def test_the_folds_partition_the_training_images_and_hold_each_class_in_its_share():
    folds = [module(folds=5, fold=i, split_seed=3) for i in range(5)]
    everything = module(val_size=0)
    total = everything.splits["train"].images
    seen = torch.cat([data.splits["val"].images for data in folds])
    # every training image validates in exactly one fold (images are distinct here: compare them as rows)
    assert len(seen) == len(total)
    as_rows = {tuple(image.flatten().tolist()) for image in seen}
    assert as_rows == {tuple(image.flatten().tolist()) for image in total}
    counts = torch.bincount(everything.splits["train"].labels, minlength=10)
    for data in folds:
        per_class = torch.bincount(data.splits["val"].labels, minlength=10)
        assert ((per_class - counts / 5).abs() <= 1).all()  # stratified: each class's share, give or take one
        assert len(data.splits["train"]) + len(data.splits["val"]) == len(total)
    assert torch.equal(module(folds=5, fold=2, split_seed=3).splits["val"].images, folds[2].splits["val"].images)
    assert not torch.equal(module(folds=5, fold=2, split_seed=4).splits["val"].images, folds[2].splits["val"].images)


def test_a_subset_of_the_classes_is_relabelled_in_the_datas_order_and_its_test_split_follows():
    full = module()
    data = module(classes=["class_9", "class_3", "class_8"])  # asked out of order: the data's order is kept
    assert data.class_names == ["class_3", "class_8", "class_9"] and data.num_classes == 3
    for split in ("train", "val", "test"):
        labels = data.splits[split].labels
        assert set(labels.tolist()) <= {0, 1, 2}
    wanted = [full.class_names.index(c) for c in ("class_3", "class_8", "class_9")]
    expected = sum(int((full.splits["test"].labels == c).sum()) for c in wanted)
    assert len(data.splits["test"]) == expected


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"folds": 1}, "folds must be 0 \\(none\\) or at least 2"),
        ({"folds": 5, "fold": 5}, "data.folds=5 data.fold=5"),
        ({"classes": []}, "a classifier needs two different classes or more"),
        ({"classes": ["cat"]}, "a classifier needs two different classes or more"),
        ({"classes": ["cat", "cat"]}, "each named once"),
    ],
)
def test_bad_folds_and_classes_are_refused_in_one_line(kwargs, message):
    with pytest.raises(UserError, match=message):
        ImageDataModule(source="synthetic", **kwargs)


def test_an_unknown_class_names_the_data_s_classes():
    with pytest.raises(UserError, match="data.classes: kitten is not a class of this data \\(class_0, class_1, "):
        module(classes=["class_3", "kitten"])


def test_folds_and_classes_compose_from_the_command_line(tmp_path):
    run = tmp_path / "run"
    result = run_script(
        "train.py", *FAST, "data=synthetic", "data.folds=4", "data.fold=3", "data.classes=[class_3,class_5]",
        f"hydra.run.dir={run}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    checkpoint = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert checkpoint["hyper_parameters"]["class_names"] == ["class_3", "class_5"]
    bad = run_script("train.py", *FAST, "data=synthetic", "data.folds=4", "data.fold=4", f"hydra.run.dir={run}2")
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("error: data.folds=4 data.fold=4")
