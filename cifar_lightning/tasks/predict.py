"""Image files -> the trained model's top classes, printed and optionally written as CSV."""

import csv
import glob
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from torchvision.datasets.folder import IMG_EXTENSIONS

from cifar_lightning.checkpoints import load_model, resolve
from cifar_lightning.checks import TTA, check_option
from cifar_lightning.data import InMemoryImages, keep_batch, read_image
from cifar_lightning.errors import UserError


def find_images(pattern: str) -> list[Path]:
    path = Path(pattern)
    paths = sorted(path.rglob("*")) if path.is_dir() else [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
    paths = [p for p in paths if p.is_file() and (p.suffix.lower() in IMG_EXTENSIONS or not path.is_dir())]
    if not paths:
        raise UserError(f"images={pattern} matches no files: give a file, a folder or a quoted glob like 'dir/*.png'")
    return paths


def predict(cfg: DictConfig) -> list[dict]:
    check_option("tta", cfg.tta, *TTA)
    check_option("top_k", cfg.top_k, int, least=1)
    check_option("batch_size", cfg.batch_size, int, least=1)
    model = load_model(resolve(str(cfg.ckpt), Path(cfg.outputs)))
    if cfg.tta is not None:  # else the checkpoint's own level (e.g. 2 for the fast recipe)
        model.hparams.tta = int(cfg.tta)
    size, class_names = model.hparams.image_size, model.hparams.class_names
    readable, images = [], []
    for path in find_images(str(cfg.images)):
        try:
            images.append(read_image(path, size))
            readable.append(path)
        except Exception as e:  # PIL raises many kinds for a bad file; each is reported, none stops the rest
            print(f"skipped {path}: not a readable image ({type(e).__name__})")
    if not readable:
        raise UserError(f"none of the files matched by images={cfg.images} is a readable image")

    dataset = InMemoryImages(torch.stack(images), torch.full((len(images),), -1))
    batches = instantiate(cfg.trainer).predict(
        model, dataloaders=DataLoader(dataset, batch_size=cfg.batch_size, collate_fn=keep_batch)
    )
    probs = model.probabilities(torch.cat([logits for logits, _ in batches]).cpu())
    top = probs.topk(min(cfg.top_k, len(class_names)), dim=1)
    rows = [
        {"path": str(path), "top": [(class_names[i], float(p)) for p, i in zip(values, indices)]}
        for path, values, indices in zip(readable, top.values.tolist(), top.indices.tolist())
    ]
    for row in rows:
        print(f"{row['path']}: " + ", ".join(f"{name} {p:.1%}" for name, p in row["top"]))
    if cfg.csv:
        with open(cfg.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(
                ["path", *(f"{what}_{k + 1}" for k in range(top.indices.shape[1]) for what in ("class", "prob"))]
            )
            for row in rows:
                writer.writerow([row["path"], *(v for name, p in row["top"] for v in (name, f"{p:.6f}"))])
        print(f"wrote {cfg.csv}")
    return rows
