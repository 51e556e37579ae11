"""Images on disk (CIFAR pickles, a folder of images) or drawn (synthetic) -> uint8 tensors in memory: an ImageSet.

Every source is read once into uint8 tensors of shape (N, 3, H, W) and int64 labels; blocks/data.py splits and
serves them."""

import logging
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes
from torchvision.datasets.utils import check_md5, download_and_extract_archive

from cifar_lightning.blocks.errors import UserError

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
