"""uint8 tensors in memory -> train/val/test splits -> uint8 batches: the LightningDataModule.

The training set is split into train/val once, by `split_seed` (or into stratified folds). Batches leave the loaders
still uint8 (4x less to move than float) and are normalised and augmented on the device by the LightningModule.
"""

import logging
import math
from pathlib import Path
from typing import Annotated, Literal

import lightning as L
import torch
from annotated_types import Ge, Interval
from torch.utils.data import DataLoader

from cifar_lightning.blocks.checks import check_arguments
from cifar_lightning.blocks.datasets import CIFAR, ImageSet, load_cifar, load_folder, make_synthetic
from cifar_lightning.blocks.errors import UserError
from cifar_lightning.blocks.paths import user_path

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------- the module
def _by_class(labels: torch.Tensor) -> list[torch.Tensor]:
    """The indices of each class's images, class by class in label order, each in ascending order."""
    return [(labels == c).nonzero().flatten() for c in labels.unique()]


def _check_labels(labels: torch.Tensor, classes: list[str], origin: str, fix: str) -> None:
    """Every label names one of `classes`: a split holds only known classes."""
    if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < len(classes)):
        unknown = sorted(set(labels.tolist()) - set(range(len(classes))))
        raise UserError(f"{origin}: labels {unknown} name no class (there are {len(classes)}); {fix}")


# a count of images, or a share of them: a fraction above 1 is neither
VAL_SIZE = Annotated[
    Annotated[int, Ge(0)] | Annotated[float, Interval(ge=0, lt=1)],
    "must be a whole number of images (0: none) or a share below 1 (e.g. 0.1)",
]
Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # uint8 images, labels, positions in the dataset


class InMemoryImages(torch.utils.data.Dataset):
    """Indexable uint8 images. `__getitems__` lets the DataLoader slice a whole batch at once, so there
    is no per-image Python work; the sample indices travel with the batch (alternating flip needs them)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], self.labels[i], i

    def __getitems__(self, indices: list[int]) -> Batch:
        idx = torch.as_tensor(indices)
        return self.images[idx], self.labels[idx], idx


def keep_batch(batch: Batch) -> Batch:
    """`__getitems__` already returns a batch: nothing to collate."""
    return batch


class ImageDataModule(L.LightningDataModule):
    """Holds one image classification dataset as uint8 tensors, split once into train / val / test.

    source: cifar10 | cifar100 | folder | synthetic.
    """

    def __init__(
        self,
        source: Annotated[
            Literal["cifar10", "cifar100", "folder", "synthetic"],
            "is not a data source: use cifar10, cifar100, folder or synthetic",
        ] = "cifar10",
        root: str = "data",
        verify: bool = True,
        download: bool = True,
        val_size: VAL_SIZE = 5000,
        split_seed: Annotated[int, Ge(0)] = 0,
        batch_size: Annotated[int, Ge(1)] = 128,
        eval_batch_size: Annotated[int, Ge(1)] = 1000,
        image_size: Annotated[int, Ge(1)] = 32,
        num_workers: Annotated[int, Ge(0)] = 0,
        folds: Annotated[int, Ge(0), "must be 0 (no folds) or a whole number of at least 2"] = 0,
        fold: Annotated[int, Ge(0), "must be a whole number from 0 to data.folds - 1"] = 0,
        classes: list[str] | None = None,
    ):
        """
        Args:
            source: where the images come from.
            root: the folder holding them (CIFAR: its python-version batches; folder: train/<class>/...).
            verify: refuse CIFAR files whose md5 differs from the official release.
            download: fetch CIFAR into `root` when it is missing.
            val_size: images held out of the training set for validation: a count, or a share (a fraction below 1).
            split_seed: the train/validation split.
            batch_size, eval_batch_size: images per training / evaluation batch.
            image_size: height and width in pixels (folder images are resized to it; CIFAR's are 32).
            num_workers: DataLoader worker processes.
            folds, fold: k-fold cross-validation: the training images fall into `folds` stratified folds (fixed by
                `split_seed`) and fold number `fold` is the validation split, instead of `val_size` images.
            classes: train and test on these classes only (by name, relabelled in the data's order); the others'
                images are left out. None: every class.

        The values are checked by cifar_lightning.blocks.checks against these annotations before construction.

        Raises:
            UserError: a CIFAR source with an image_size other than 32 (its images are not resized); folds of 1,
                or a fold not below folds; an empty list of classes.
        """
        self.check_together(source, image_size, folds, fold, classes)
        super().__init__()
        self.folds, self.fold, self.classes = folds, fold, classes
        self.source, self.root, self.verify, self.download = source, user_path(root), verify, download
        self.val_size, self.split_seed, self.image_size = val_size, split_seed, image_size
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.splits: dict[str, InMemoryImages] = {}
        self.class_names: list[str] = []

    @staticmethod
    def check_together(source: str, image_size: int, folds: int, fold: int, classes: list[str] | None) -> None:
        """The values that only make sense together; raises UserError (see __init__)."""
        if source in CIFAR and image_size != 32:
            raise UserError(
                f"data.image_size={image_size}: {source}'s images are 32 x 32 and are not resized; drop "
                "data.image_size (it sizes the images of data=folder and data=synthetic)"
            )
        if folds == 1 or (folds and fold >= folds):
            raise UserError(
                f"data.folds={folds} data.fold={fold}: folds must be 0 (none) or at least 2, and fold one of "
                f"0 to folds - 1"
            )
        if classes is not None and (len(set(classes)) < 2 or len(set(classes)) < len(classes)):
            raise UserError(
                f"data.classes={classes}: a classifier needs two different classes or more, each named once "
                "(null: every class)"
            )

    NOT_FOR_EVALUATION = ("_target_", "batch_size")  # a data config's keys that for_evaluation leaves out

    @classmethod
    def for_evaluation(cls, config: dict) -> "ImageDataModule":
        """The data module of a data config (train.yaml's `data` group, plain values) as evaluation builds it: its
        `_target_` is this class, and its batch_size is training's (evaluation batches are eval_batch_size).

        Raises:
            UserError: a key the constructor does not take, or a value it does not accept (one line)."""
        config = {k: v for k, v in config.items() if k not in cls.NOT_FOR_EVALUATION}
        check_arguments(cls, config, "data")
        return cls(**config)

    def load(self) -> ImageSet:
        if self.source in CIFAR:
            return load_cifar(self.source, self.root, self.verify, self.download)
        if self.source == "folder":
            return load_folder(self.root, self.image_size)
        return make_synthetic(image_size=self.image_size)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:  # loaded once, whichever stage asks first
            return
        data = self.subset(self.load())
        classes, (origin, fix) = data.class_names, self._origin("train")
        n = len(data.train_labels)
        if n == 0:
            raise UserError(f"{origin}: no images; {fix}")
        _check_labels(data.train_labels, classes, origin, fix)
        counts = torch.bincount(data.train_labels, minlength=len(classes))
        if (counts > 0).sum() < 2:  # one class "trains" to 100% and cannot be evaluated
            found = ", ".join(c for c, k in zip(classes, counts) if k > 0)
            raise UserError(f"{origin}: images of one class only ({found}), a classifier needs two or more; {fix}")
        train_idx, val_idx = self.holdout(data.train_labels)
        n_val = len(val_idx)
        kept = torch.bincount(data.train_labels[train_idx], minlength=len(classes))
        held_out = [c for c, k, m in zip(classes, kept, counts) if k == 0 and m > 0]
        # a folder tree names its classes itself, so each must be learnt; CIFAR's fixed list may outnumber a
        # reduced copy's classes (data.verify=false), which then only warns, as long as two classes are learnt
        if held_out and (self.source == "folder" or (kept > 0).sum() < 2):
            raise UserError(
                f"data.val_size={self.val_size} holds out every training image of the class(es) "
                f"{', '.join(held_out)} ({origin} has {n} images): lower data.val_size or add images"
            )
        if (kept == 0).any():
            untrained = ", ".join(c for c, k in zip(classes, kept) if k == 0)
            log.warning("%s: no training images of the class(es) %s: the model never predicts them", origin, untrained)
        self.class_names = classes
        self.splits["train"] = InMemoryImages(data.train_images[train_idx], data.train_labels[train_idx])
        if n_val:
            self.splits["val"] = InMemoryImages(data.train_images[val_idx], data.train_labels[val_idx])
        if data.test_images is not None:  # optional: when empty, as if absent (a test class may have no images)
            origin, fix = self._origin("test")
            assert data.test_labels is not None  # an ImageSet has test labels exactly when it has test images
            if len(data.test_labels) == 0:
                log.warning("%s: no images, so there is no test split and no test metrics", origin)
            else:
                _check_labels(data.test_labels, classes, origin, fix)
                self.splits["test"] = InMemoryImages(data.test_images, data.test_labels)
        log.info("data: %s", ", ".join(f"{k} {len(v)}" for k, v in self.splits.items()))

    def subset(self, data: ImageSet) -> ImageSet:
        """`data` with only the images of `classes`, relabelled 0.. in the data's own class order."""
        if self.classes is None:
            return data
        unknown = [c for c in self.classes if c not in data.class_names]
        if unknown:
            raise UserError(
                f"data.classes: {', '.join(unknown)} is not a class of this data ({', '.join(data.class_names)})"
            )
        kept = [i for i, c in enumerate(data.class_names) if c in self.classes]
        relabel = torch.full((len(data.class_names),), -1, dtype=torch.long)
        relabel[kept] = torch.arange(len(kept))

        def keep(images: torch.Tensor | None, labels: torch.Tensor | None) -> tuple:
            if images is None or labels is None:
                return images, labels
            chosen = relabel[labels] >= 0
            return images[chosen], relabel[labels[chosen]]

        (train_images, train_labels), (test_images, test_labels) = (
            keep(data.train_images, data.train_labels),
            keep(data.test_images, data.test_labels),
        )
        return ImageSet(train_images, train_labels, test_images, test_labels, [data.class_names[i] for i in kept])

    def holdout(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices of the training and validation images. With `folds`: each class's images in an order fixed by
        `split_seed`, one after another, dealt to the folds in turn (so each fold holds each class's share, give
        or take one: stratified), and fold `fold` validates. Else `val_size` images at random (a fraction below 1
        is a share of the training images, anything else a count)."""
        n, generator = len(labels), torch.Generator().manual_seed(self.split_seed)
        if self.folds:
            if n < self.folds:
                raise UserError(f"data.folds={self.folds} is more than the {n} training images")
            order = torch.cat([c[torch.randperm(len(c), generator=generator)] for c in _by_class(labels)])
            dealt = torch.empty(n, dtype=torch.long)
            dealt[order] = torch.arange(n) % self.folds
            return (dealt != self.fold).nonzero().flatten(), (dealt == self.fold).nonzero().flatten()
        n_val = round(self.val_size * n) if 0 < self.val_size < 1 else int(self.val_size)
        if not 0 <= n_val < n or (self.validates and n_val == 0):
            raise UserError(
                f"data.val_size={self.val_size} must hold out between 1 and {n - 1} images (the training "
                f"set has {n}), or be 0 to train on all of them"
            )
        order = torch.randperm(n, generator=generator)
        return order[n_val:], order[:n_val]

    def _origin(self, split: str) -> tuple[str, str]:
        """Where a split's images come from, and what to do when they are unusable: for error messages."""
        if self.source == "folder":
            return str(self.root / split), f"add images under {self.root / split}/<class>/ (a folder per class)"
        if self.source in CIFAR:
            folder = self.root / CIFAR[self.source][0].base_folder
            return f"the {self.source} {split} batches in {folder}", "delete them and download or unpack them again"
        return f"the synthetic {split} data", "synthetic data is made with every class: report this as a bug"

    @property
    def folder(self) -> Path | None:
        """The folder whose files the images are read from; None for synthetic data, made in memory."""
        return None if self.source == "synthetic" else self.root

    @property
    def validates(self) -> bool:
        """Whether a validation split is held out (known before the data is loaded)."""
        return self.folds > 0 or self.val_size > 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and std of the training split, on the 0..1 scale. A channel without spread (the same
        value in every pixel of every image, e.g. green and blue of red-only images; or a single pixel, whose std
        is NaN) gets std 1: it normalises to 0, a legitimate input, where dividing by 0 would give NaN."""
        x = self.splits["train"].images.float().div_(255)
        std = x.std(dim=(0, 2, 3))
        return x.mean(dim=(0, 2, 3)).tolist(), torch.where(std > 0, std, 1.0).tolist()

    def training_images(self, count: int) -> torch.Tensor:
        """The first `count` training images (uint8), for nets that initialise from the data."""
        return self.splits["train"].images[:count]

    def train_batches(self, processes: int = 1) -> int:
        """Training batches per epoch in each of `processes` processes: Lightning's DistributedSampler gives each
        ceil(N / processes) images (padding the last share), and the loader drops an incomplete last batch."""
        return math.ceil(len(self.splits["train"]) / processes) // self.batch_size

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        if split not in self.splits:
            raise UserError(f"the {self.source} data in {self.root} has no {split} split")
        return DataLoader(
            self.splits[split],
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            drop_last=train,
            collate_fn=keep_batch,  # type: ignore[arg-type]  # torch types collate_fn as taking a list of samples
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            # a copy to a GPU from unpinned memory first waits for the GPU to finish its work: a sync every batch
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val") if "val" in self.splits else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
