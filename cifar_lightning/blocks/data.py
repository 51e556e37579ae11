"""Images on disk -> uint8 tensors in memory -> uint8 batches.

Every source is read once into uint8 tensors of shape (N, 3, H, W); the training set is split into
train/val once, by `split_seed`. Batches leave the loaders still uint8 (4x less to move than float)
and are normalised and augmented on the device by the LightningModule.
"""

import logging
import math
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import lightning as L
import numpy as np
import torch
from annotated_types import Ge
from PIL import Image, ImageOps
from torch.utils.data import DataLoader
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes
from torchvision.datasets.utils import check_md5, download_and_extract_archive

from cifar_lightning.blocks.checks import check_arguments
from cifar_lightning.blocks.errors import UserError
from cifar_lightning.blocks.paths import user_path

log = logging.getLogger(__name__)


@dataclass
class ImageSet:
    train_images: torch.Tensor  # uint8 (N, 3, H, W)
    train_labels: torch.Tensor  # int64 (N,)
    test_images: torch.Tensor | None
    test_labels: torch.Tensor | None
    class_names: list[str]


# ---------------------------------------------------------------------------------------------- CIFAR
# torchvision knows the official file names, URLs and md5 sums; we read the pickles ourselves so that a
# copy that differs from the official one can still be loaded on purpose (data.verify=false).
CIFAR = {"cifar10": (CIFAR10, "labels"), "cifar100": (CIFAR100, "fine_labels")}


class _ArraysOnly(pickle.Unpickler):
    """CIFAR batches are pickles; refuse anything in them but numpy arrays, so a file can't run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
        ("__builtin__", "bytes"),
    }  # bytes in Python-3 pickles of protocol 2 (empty ones, as in a batch of 0 images, through bytes())

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing {module}.{name}")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return _ArraysOnly(f, encoding="latin1").load()
    except Exception as e:
        raise UserError(
            f"{path} is not a readable CIFAR batch ({type(e).__name__}: {e}); "
            f"delete it and download or unpack the dataset again"
        ) from None


def _download_cifar(name: str, root: Path) -> None:
    spec, _ = CIFAR[name]
    try:
        download_and_extract_archive(spec.url, str(root), filename=spec.filename, md5=spec.tgz_md5)
    except Exception as e:
        raise UserError(
            f"{name} is not in {root / spec.base_folder} and could not be downloaded ({type(e).__name__}). "
            f"Put the python-version batches there (from {spec.url}), or see README.md, section Set-up"
        ) from None


def load_cifar(name: str, root: Path, verify: bool, download: bool = True) -> ImageSet:
    """CIFAR-10 or -100 (`name`) from its python-version batches under `root` (downloaded there when missing and
    `download`), as uint8 (N, 3, 32, 32) images and int64 labels; the batch files are unpickled as numpy only.

    Raises:
        UserError: files missing (and not downloaded), an md5 that differs from the official release (`verify`), or
            damaged batches (not CIFAR's keys, dtype or length)."""
    spec, labels_key = CIFAR[name]
    folder = root / spec.base_folder
    sums = dict(spec.train_list + spec.test_list)
    files = [*sums, spec.meta["filename"]]
    if not all((folder / f).is_file() for f in files):
        if not download:
            raise UserError(
                f"{name} is not in {folder}: expected the files {', '.join(files)}; it is not downloaded with "
                "data.download=false, nor for a run read from disk (resume=, evaluate.py): put the files there"
            )
        _download_cifar(name, root)
    if verify:
        bad = [f for f, md5 in sums.items() if not check_md5(folder / f, md5)]
        if bad:
            raise UserError(
                f"{folder}: {', '.join(bad)} do not match the official checksums; if this copy is "
                f"known to differ from the official release, add data.verify=false"
            )
    else:
        log.warning("%s: checksums not verified (data.verify=false)", folder)

    def read(names: Sequence[str]):
        batches = [_unpickle(folder / f) for f in names]
        try:
            data = np.concatenate([b["data"] for b in batches])
            labels = np.concatenate([b[labels_key] for b in batches])
            images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
        except (KeyError, ValueError, TypeError) as e:
            raise UserError(
                f"{folder}: batches {names} are damaged ({type(e).__name__}: {e}); "
                f"delete them and download or unpack the dataset again"
            ) from None
        if images.dtype != torch.uint8 or len(images) != len(labels):
            raise UserError(f"{folder}: batches {names} are damaged (wrong dtype or length)")
        return images, torch.as_tensor(labels, dtype=torch.long)

    train_images, train_labels = read([f for f, _ in spec.train_list])
    test_images, test_labels = read([f for f, _ in spec.test_list])
    class_names = list(_unpickle(folder / spec.meta["filename"])[spec.meta["key"]])
    return ImageSet(train_images, train_labels, test_images, test_labels, class_names)


# -------------------------------------------------------------------------------------- ImageFolder
def read_image(path: Path, size: int) -> torch.Tensor:
    """One image file -> uint8 tensor (3, size, size), RGB: the picture an image viewer shows, 8 bits per channel,
    resized bilinearly to size x size.

    - EXIF orientation (1-8) is applied first, so a photo stored sideways comes out upright.
    - Transparency (LA, RGBA, PA, a P palette with alpha, or L / RGB / I;16 with a transparent colour) is
      composited over white, as a browser shows it on a white page; dropping the alpha would instead reveal
      whatever colour the invisible pixels happen to hold (often black).
    - 16-bit grey (I;16, I;16B, ...) keeps the top 8 bits (value >> 8): Pillow reduces 16-bit RGB PNGs the same
      way when it opens them, so a picture saved as 16-bit grey or as 16-bit RGB reads the same.
    - 32-bit integer grey (I; Pillow gives some 16-bit PNGs and TIFFs this mode) is read as 16-bit when its
      values lie in 0..65535, else stretched linearly from its own minimum..maximum to 0..255.
    - 32-bit float grey (F) maps 0..1 to 0..255 (rounded) when all values lie in 0..1, else it is stretched from
      its own minimum..maximum; NaN and infinities read as 0 first.
    - Every other mode (1, L, P, RGB, CMYK, YCbCr, LAB, ...) goes through Pillow's own conversion to RGB.

    Raises what Pillow raises for a file it cannot read (OSError, PIL.UnidentifiedImageError, ValueError, ...).
    """
    # from an open file, not the path: Pillow memory-maps an uncompressed TIFF opened by path and then decodes
    # orientations 5-8 with width and height swapped
    with open(path, "rb") as f, Image.open(f) as opened:
        img = _to_rgb8(ImageOps.exif_transpose(opened))
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)


def _grey8(img: Image.Image) -> np.ndarray:
    """A grey image of more than 8 bits (I;16*, I, F) -> uint8 (H, W), as read_image describes."""
    values = np.asarray(img)
    if img.mode == "F":
        values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if values.min() >= 0 and values.max() <= 1:
            return np.rint(values * 255).astype(np.uint8)
    elif values.min() >= 0 and values.max() <= 65535:
        return (values.astype(np.uint32) >> 8).astype(np.uint8)
    low, high = float(values.min()), float(values.max())
    scale = 255 / (high - low) if high > low else 0.0
    return np.rint((values - low) * scale).astype(np.uint8)


def _to_rgb8(img: Image.Image) -> Image.Image:
    """Any mode Pillow opens -> 8-bit RGB, as read_image describes."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        grey = _grey8(img)
        if "transparency" in img.info:  # a 16-bit PNG's transparent grey level: white, as for the modes below
            grey[np.asarray(img) == img.info["transparency"]] = 255
        return Image.fromarray(grey, "L").convert("RGB")
    if img.has_transparency_data:
        white = Image.new("RGBA", img.size, "white")
        return Image.alpha_composite(white, img.convert("RGBA")).convert("RGB")
    return img.convert("RGB")


def _read_tree(folder: Path, class_names: list[str], size: int):
    """folder/<class>/*.png -> uint8 (N, 3, size, size), int64 (N,); a missing class folder gives no images."""
    images, labels = [], []
    for label, name in enumerate(class_names):
        if not (folder / name).is_dir():
            continue
        for path in sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMG_EXTENSIONS):
            try:
                images.append(read_image(path, size))
            except Exception as e:
                raise UserError(f"{path}: unreadable image ({type(e).__name__}: {e}); remove or replace it") from None
            labels.append(label)
    stacked = torch.stack(images) if images else torch.empty(0, 3, size, size, dtype=torch.uint8)
    return stacked, torch.tensor(labels, dtype=torch.long)


def load_folder(root: Path, image_size: int) -> ImageSet:
    """An ImageFolder tree (root/train/<class>/*, optionally root/test/<class>/*) as uint8 (N, 3, image_size,
    image_size) RGB images, each resized, and int64 labels in the order of the sorted class folders.

    Raises:
        UserError: no train/ folder or class folders, a training class without images, a test class that training
            lacks, or an unreadable image (named)."""
    layout = "DIR/train/<class>/*.png (and optionally DIR/test/<class>/*.png)"
    train = root / "train"
    if not train.is_dir():
        raise UserError(f"{root / 'train'} does not exist: data=folder expects the layout {layout}")
    try:
        class_names, _ = find_classes(train)
    except FileNotFoundError:
        raise UserError(f"{train} has no class folders: data=folder expects the layout {layout}") from None
    empty = [c for c in class_names if not any(p.suffix.lower() in IMG_EXTENSIONS for p in (train / c).iterdir())]
    if empty:
        raise UserError(
            f"{train}: class folders without images: {', '.join(empty)}; add images ({', '.join(IMG_EXTENSIONS)}) "
            f"to them or remove them (expected the layout {layout})"
        )
    train_images, train_labels = _read_tree(train, class_names, image_size)
    test_images = test_labels = None
    if (root / "test").is_dir():
        # a test class may have no images (its accuracy is just not measured), but it must be a known class
        unknown = sorted(p.name for p in (root / "test").iterdir() if p.is_dir() and p.name not in class_names)
        if unknown:
            raise UserError(
                f"{root / 'test'} has class folders that {train} lacks: {', '.join(unknown)}; "
                f"add training images for them or remove them from test/"
            )
        test_images, test_labels = _read_tree(root / "test", class_names, image_size)
    return ImageSet(train_images, train_labels, test_images, test_labels, class_names)


# ---------------------------------------------------------------------------------------- synthetic
def make_synthetic(
    num_train: int = 2000, num_test: int = 500, num_classes: int = 10, image_size: int = 32, seed: int = 0
) -> ImageSet:
    """Learnable random data for smoke runs: each class is a noisy colour gradient of its own."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(num_classes, 3, image_size, image_size, generator=g) * 255

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(num_classes, (n,), generator=g)
        noise = torch.randn(n, 3, image_size, image_size, generator=g) * 60
        return (prototypes[labels] + noise).clamp(0, 255).to(torch.uint8), labels

    train, test = draw(num_train), draw(num_test)
    return ImageSet(*train, *test, [f"class_{i}" for i in range(num_classes)])


# ------------------------------------------------------------------------------------- the module
def _by_class(labels: torch.Tensor) -> list[torch.Tensor]:
    """The indices of each class's images, class by class in label order, each in ascending order."""
    return [(labels == c).nonzero().flatten() for c in labels.unique()]


def _check_labels(labels: torch.Tensor, classes: list[str], origin: str, fix: str) -> None:
    """Every label names one of `classes`: a split holds only known classes."""
    if len(labels) and not (0 <= int(labels.min()) and int(labels.max()) < len(classes)):
        unknown = sorted(set(labels.tolist()) - set(range(len(classes))))
        raise UserError(f"{origin}: labels {unknown} name no class (there are {len(classes)}); {fix}")


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
        val_size: Annotated[float, Ge(0)] = 5000,
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
            val_size: images held out of the training set for validation; a fraction below 1 is a share.
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
        super().__init__()
        self.folds, self.fold, self.classes = folds, fold, classes
        self.source, self.root, self.verify, self.download = source, user_path(root), verify, download
        self.val_size, self.split_seed, self.image_size = val_size, split_seed, image_size
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.splits: dict[str, InMemoryImages] = {}
        self.class_names: list[str] = []

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
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader | list:
        return self._loader("val") if "val" in self.splits else []

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
