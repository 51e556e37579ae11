"""Image files -> the trained model's top classes (below abstain_below=, an abstention; with coverage=, a conformal
prediction set), printed and optionally
written as CSV."""

import contextlib
import csv
import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch
from annotated_types import Predicate
from omegaconf import DictConfig
from torchvision.datasets.folder import IMG_EXTENSIONS

from cifar_lightning.blocks import conformal
from cifar_lightning.blocks.checks import check_arguments
from cifar_lightning.blocks.datasets import read_image
from cifar_lightning.blocks.ensemble import pooled
from cifar_lightning.blocks.errors import UserError
from cifar_lightning.blocks.module import ImageClassifier, plain
from cifar_lightning.blocks.paths import user_path, user_pattern
from cifar_lightning.blocks.precision import inference_device
from cifar_lightning.blocks.selective import abstains
from cifar_lightning.store.checkpoints import load_model
from cifar_lightning.store.locate import is_group
from cifar_lightning.store.outputs import output_file
from cifar_lightning.store.runs import RunFolder, write_atomic
from cifar_lightning.tasks.coverage import check_coverage, draws
from cifar_lightning.tasks.ensemble import calibrated_members, named_checkpoints
from cifar_lightning.tasks.evaluate import TTA_OPTION, whole_at_least


def find_images(pattern: str) -> list[Path]:
    """The files `images=` names (as user_path reads paths), sorted: a file, a folder's image files (by extension,
    recursively), or what a glob pattern (`**` recursive) matches. A path that exists is taken as that path before
    it is read as a pattern: `cat[1].png` is that file, not cat1.png. Raises UserError when nothing matches."""
    path = user_path(pattern)
    if path.is_file():
        return [path]
    if path.is_dir():
        paths = [p for p in sorted(path.rglob("*")) if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS]
    else:
        paths = [Path(p) for p in sorted(glob.glob(user_pattern(pattern), recursive=True)) if Path(p).is_file()]
    if not paths:
        raise UserError(
            f"images={pattern} matches no image files (looked for {path}): give a file, a folder or a quoted glob "
            "like 'dir/*.png'"
        )
    return paths


def _share_or_null(value: float | None) -> bool:
    return value is None or 0 <= value <= 1


# abstain_below=: a calibrated top probability below it is no answer; null never abstains
SHARE_OR_NULL = Annotated[
    float | None, Predicate(_share_or_null), "must be a probability from 0 to 1 (e.g. 0.5), or null to never abstain"
]


@dataclass
class PredictOptions:
    """The keys of configs/predict.yaml (trainer.accelerator is checked by precision.inference_device)."""

    images: str
    ckpt: str | list[str] = "best"  # a list, or a sweep folder: an ensemble (tasks/ensemble.py)
    outputs: str = "outputs"
    top_k: whole_at_least(1) = 3  # type: ignore[valid-type]
    tta: TTA_OPTION = None
    csv: str | None = None
    batch_size: whole_at_least(1) = 256  # type: ignore[valid-type]
    abstain_below: SHARE_OR_NULL = None
    coverage: Annotated[conformal.LEVEL | None, "must be a coverage level in (0, 1), e.g. 0.9, or null"] = None
    conformal_score: conformal.SCORE = "raps"
    trusted_modules: list[str] | None = None


def predict(cfg: DictConfig) -> list[dict]:
    """Prints each image's top classes and, with coverage=, its conformal set (and writes them as CSV with csv=PATH);
    returns them."""
    check_arguments(PredictOptions, {k: plain(v) for k, v in cfg.items() if k != "trainer"}, "")
    checkpoints, found = named_checkpoints(cfg.ckpt, cfg.outputs), find_images(str(cfg.images))
    # checked before any work: the CSV may replace neither an input nor a file of a member's run
    runs = [RunFolder.of_checkpoint(c) for c in checkpoints]
    out = output_file(cfg.csv, "csv", [*checkpoints, *found], runs, is_prediction_csv) if cfg.csv else None
    group, model = is_group(plain(cfg.ckpt)), load_model(checkpoints[0], cfg.get("trusted_modules") or ())
    check_coverage(cfg.coverage, None if group else model, checkpoints[0], cfg.tta, cfg.conformal_score)
    readable, batch = read_images(found, model.hparams["image_size"], str(cfg.images))
    if group:
        probs, scores = ensemble_probabilities(cfg, checkpoints, batch)
    else:
        print(f"checkpoint {checkpoints[0]} (temperature {float(model.temperature):.3f})")
        probs, scores = one_run(cfg, model, batch)
    class_names = list(model.hparams["class_names"])
    top = probs.topk(min(cfg.top_k, len(class_names)), dim=1)
    abstained = abstains(top.values[:, 0], cfg.get("abstain_below")).tolist()
    rows: list[dict[str, Any]] = [
        {"path": str(path), "top": [(class_names[i], float(p)) for p, i in zip(values, indices)], "abstained": no}
        for path, values, indices, no in zip(readable, top.values.tolist(), top.indices.tolist(), abstained)
    ]
    if cfg.coverage is not None:
        assert scores is not None  # check_coverage / predict_members refuse coverage= without them
        sets = conformal.prediction_sets(
            probs, conformal.threshold(scores, float(cfg.coverage), cfg.conformal_score), cfg.conformal_score,
            draws(cfg.conformal_score, batch),
        )  # fmt: skip
        for row, chosen, p in zip(rows, sets, probs):
            row["set"] = [class_names[i] for i in sorted(chosen.nonzero().flatten().tolist(), key=lambda i: -p[i])]
    for row in rows:
        print(line(row, cfg.coverage))
    if out is not None:
        write_atomic(out, lambda tmp: write_csv(tmp, rows, cfg.coverage is not None))
        print(f"wrote {out}")
    return rows


def read_images(found: list[Path], size: int, pattern: str) -> tuple[list[Path], torch.Tensor]:
    """The readable ones of `found` and their images, uint8 (N, 3, size, size); an unreadable file is reported and
    skipped. Raises UserError when none is readable."""
    readable, images = [], []
    for path in found:
        try:
            images.append(read_image(path, size))
            readable.append(path)
        except Exception as e:  # PIL raises many kinds for a bad file; each is reported, none stops the rest
            print(f"skipped {path}: not a readable image ({type(e).__name__})")
    if not readable:
        raise UserError(f"none of the files matched by images={pattern} is a readable image")
    return readable, torch.stack(images)


def one_run(cfg: DictConfig, model: ImageClassifier, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One run's calibrated probabilities of uint8 `images`, float32 (N, classes), at tta= (null: its own), and
    its conformal scores."""
    model.to(inference_device(cfg.trainer.accelerator))
    tta = None if cfg.tta is None else int(cfg.tta)
    return model.predict_logits(images, tta, cfg.batch_size, calibrated=True).softmax(1), model.conformal_scores.cpu()


def ensemble_probabilities(
    cfg: DictConfig, checkpoints: list[Path], images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """An ensemble's calibrated probabilities of uint8 `images`, float32 (N, classes), and its conformal scores
    (None without a validation split), as evaluate.py computes them (tasks/ensemble.py): the members are loaded with
    their runs' data, which must be on disk, and calibrated on the validation split they held out. Raises UserError
    as predict_members does."""
    levels = [] if cfg.coverage is None else [float(cfg.coverage)]
    members, _, temperature, scores = calibrated_members(cfg, checkpoints, levels)
    return pooled([m.predict(images, cfg.batch_size) for m in members], temperature), scores


def line(row: dict, coverage: float | None = None) -> str:
    """An image's console line: its top classes, or with abstain_below= and too low a top probability, that it
    abstained (`path: abstained (top: cat 41.2%)`); with coverage=, its conformal set after them."""
    chosen = ", ".join(row.get("set") or []) or "none: no class is likely enough"
    shown = f" | set at {100 * coverage:g}%: {{{chosen}}}" if "set" in row and coverage else ""
    if row["abstained"]:
        name, p = row["top"][0]
        return f"{row['path']}: abstained (top: {name} {p:.1%})" + shown
    return f"{row['path']}: " + ", ".join(f"{name} {p:.1%}" for name, p in row["top"]) + shown


def is_prediction_csv(path: Path) -> bool:
    """Whether `path` holds what write_csv writes (its header): the only file csv= replaces."""
    if not path.is_file():  # a FIFO would block the read
        return False
    with contextlib.suppress(OSError, UnicodeDecodeError), open(path, newline="", encoding="utf-8") as f:
        return f.readline(64).startswith("path,class_1,prob_1")  # a bounded read of any file
    return False


def write_csv(path: Path, rows: list[dict], sets: bool = False) -> None:
    """path, class_1, prob_1, ... class_k, prob_k, abstained (true/false), and with `sets` the conformal set (its
    classes joined by |), a row per image."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        k = len(rows[0]["top"])
        columns = [f"{what}_{i + 1}" for i in range(k) for what in ("class", "prob")]
        writer.writerow(["path", *columns, "abstained", *(["set"] if sets else [])])
        for row in rows:
            top = (v for name, p in row["top"] for v in (name, f"{p:.6f}"))
            writer.writerow(
                [row["path"], *top, str(row["abstained"]).lower(), *(["|".join(row["set"])] if sets else [])]
            )
