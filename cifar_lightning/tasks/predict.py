"""Image files -> the trained model's top classes (with coverage=, a conformal prediction set), printed and optionally
written as CSV."""

import csv
import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torchvision.datasets.folder import IMG_EXTENSIONS

from cifar_lightning.blocks import conformal
from cifar_lightning.blocks.checks import FILE_TO_WRITE, check_arguments
from cifar_lightning.blocks.data import read_image
from cifar_lightning.blocks.errors import UserError
from cifar_lightning.blocks.module import ImageClassifier, plain
from cifar_lightning.store.checkpoints import load_model
from cifar_lightning.store.locate import resolve
from cifar_lightning.store.runs import write_atomic
from cifar_lightning.tasks.evaluate import TTA_OPTION, no_conformal_scores, whole_at_least


def find_images(pattern: str) -> list[Path]:
    """The files `images=` names, sorted: a folder's image files (by extension, recursively), or what a glob pattern
    (`**` recursive) or a single path matches. Raises UserError when nothing matches."""
    path = Path(pattern)
    paths = sorted(path.rglob("*")) if path.is_dir() else [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
    paths = [p for p in paths if p.is_file() and (p.suffix.lower() in IMG_EXTENSIONS or not path.is_dir())]
    if not paths:
        raise UserError(f"images={pattern} matches no files: give a file, a folder or a quoted glob like 'dir/*.png'")
    return paths


@dataclass
class PredictOptions:
    """The keys of configs/predict.yaml (trainer is checked as what it builds)."""

    images: str
    ckpt: str = "best"
    outputs: str = "outputs"
    top_k: whole_at_least(1) = 3  # type: ignore[valid-type]
    tta: TTA_OPTION = None
    csv: FILE_TO_WRITE = None
    batch_size: whole_at_least(1) = 256  # type: ignore[valid-type]
    coverage: Annotated[conformal.LEVEL | None, "must be a coverage level in (0, 1), e.g. 0.9, or null"] = None
    trusted_modules: list[str] | None = None


def predict(cfg: DictConfig) -> list[dict]:
    """Prints each image's top classes and, with coverage=, its conformal set (and writes them as CSV with csv=PATH);
    returns them."""
    check_arguments(PredictOptions, {k: plain(v) for k, v in cfg.items() if k != "trainer"}, "")
    checkpoint = resolve(str(cfg.ckpt), Path(cfg.outputs))
    model = load_model(checkpoint, cfg.get("trusted_modules") or ())
    print(f"checkpoint {checkpoint}")
    if cfg.coverage is not None and len(model.conformal_scores) == 0:
        raise UserError(no_conformal_scores(f"coverage={cfg.coverage}", checkpoint))
    size, class_names = model.hparams["image_size"], model.hparams["class_names"]
    readable, images = [], []
    for path in find_images(str(cfg.images)):
        try:
            images.append(read_image(path, size))
            readable.append(path)
        except Exception as e:  # PIL raises many kinds for a bad file; each is reported, none stops the rest
            print(f"skipped {path}: not a readable image ({type(e).__name__})")
    if not readable:
        raise UserError(f"none of the files matched by images={cfg.images} is a readable image")

    model.to(instantiate(cfg.trainer).strategy.root_device)
    tta = None if cfg.tta is None else int(cfg.tta)
    probs = model.predict_logits(torch.stack(images), tta, cfg.batch_size, calibrated=True).softmax(dim=1)
    top = probs.topk(min(cfg.top_k, len(class_names)), dim=1)
    rows: list[dict[str, Any]] = [
        {"path": str(path), "top": [(class_names[i], float(p)) for p, i in zip(values, indices)]}
        for path, values, indices in zip(readable, top.values.tolist(), top.indices.tolist())
    ]
    if cfg.coverage is not None:
        add_sets(rows, probs, model, float(cfg.coverage))
    for row in rows:
        shown = f" | set at {100 * cfg.coverage:g}%: {{{', '.join(row['set'])}}}" if "set" in row else ""
        print(f"{row['path']}: " + ", ".join(f"{name} {p:.1%}" for name, p in row["top"]) + shown)
    if cfg.csv:

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.writer(f)
                columns = [f"{what}_{k + 1}" for k in range(top.indices.shape[1]) for what in ("class", "prob")]
                writer.writerow(["path", *columns, *(["set"] if cfg.coverage is not None else [])])
                for row in rows:
                    sets = ["|".join(row["set"])] if "set" in row else []
                    writer.writerow([row["path"], *(v for name, p in row["top"] for v in (name, f"{p:.6f}")), *sets])

        write_atomic(Path(cfg.csv), write)
        print(f"wrote {cfg.csv}")
    return rows


def add_sets(rows: list[dict], probabilities: torch.Tensor, model: ImageClassifier, coverage: float) -> None:
    """Each row's conformal prediction set at the `coverage` level (conformal.py, the checkpoint's scores) as
    row["set"]: its class names, most probable first."""
    sets = conformal.prediction_sets(probabilities, conformal.threshold(model.conformal_scores.cpu(), coverage))
    class_names = model.hparams["class_names"]
    for row, chosen, p in zip(rows, sets, probabilities):
        row["set"] = [class_names[i] for i in sorted(chosen.nonzero().flatten().tolist(), key=lambda i: -p[i])]
