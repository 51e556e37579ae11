"""ckpt=best|last|PATH -> a checkpoint file, and a safe way to rebuild the model from it.

A checkpoint may come from anywhere, so loading it must not run code: `torch.load(weights_only=True)`
refuses pickled objects, and the `_target_`s in its hyperparameters (which we instantiate) must name
this project's own nets and augmentations.
"""
import os
import pickle
import zipfile
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from cifar_lightning.cli import UserError
from cifar_lightning.module import ImageClassifier

SAFE_TARGETS = {"net": ("cifar_lightning.models.",), "augmentation": ("cifar_lightning.augment.",),
                "optimizer": ("torch.optim.", "cifar_lightning."), "scheduler": ("torch.optim.", "cifar_lightning.")}


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, then renames it into place: a run killed while
    saving leaves the previous best.ckpt/last.ckpt whole. (Lightning's own save goes through a temporary
    file in the system temp folder, whose move is a copy when that is another filesystem.)"""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


def run_dir_of(checkpoint: Path) -> Path:
    """checkpoints live in <run>/checkpoints/; a loose file's run folder is its own folder."""
    return checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent


def resolve(ckpt: str, outputs: Path) -> Path:
    """best / last of the most recent run under `outputs`, or a path: a checkpoint file or a run folder (its best)."""
    if ckpt in ("best", "last"):
        runs = sorted(outputs.glob(f"**/checkpoints/{ckpt}.ckpt"), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise UserError(f"no training runs with a {ckpt}.ckpt under {outputs}/: train one first "
                            f"(python train.py), or pass ckpt=PATH")
        return runs[-1]
    path = Path(ckpt)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "best.ckpt", path / "best.ckpt", path / "checkpoints" / "last.ckpt"):
            if candidate.is_file():
                return candidate
        raise UserError(f"{path} holds no checkpoints/best.ckpt or last.ckpt: is it a run folder?")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: use ckpt=best, ckpt=last, a .ckpt file or a run folder")
    return path


def load_checkpoint(path: Path) -> dict:
    if not zipfile.is_zipfile(path):  # torch.save writes zip archives; a cut-off one loses its directory
        raise UserError(f"{path} is not a readable checkpoint (truncated, or not a file torch.save wrote)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        why = next((line.strip() for line in str(e).splitlines() if "Unsupported global" in line), "")
        raise UserError(f"{path} was refused: it holds objects other than tensors and plain values, which could "
                        f"run code when loaded ({why[:200] or type(e).__name__})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise UserError(f"{path} is not a readable checkpoint (truncated or not a torch file: "
                        f"{type(e).__name__})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "net" not in checkpoint.get(
            "hyper_parameters", {}):
        raise UserError(f"{path} is not a cifar-lightning checkpoint (no model hyperparameters in it)")
    for key, prefixes in SAFE_TARGETS.items():
        config = checkpoint["hyper_parameters"].get(key)
        for target in _targets(config):
            if not str(target).startswith(prefixes):
                raise UserError(f"{path} was refused: its {key} names {target!r}, outside {', '.join(prefixes)}")
    return checkpoint


def _targets(config):
    if isinstance(config, dict):
        if "_target_" in config:
            yield config["_target_"]
        for value in config.values():
            yield from _targets(value)
    elif isinstance(config, list):
        for value in config:
            yield from _targets(value)


def load_model(path: Path) -> ImageClassifier:
    """The trained model, rebuilt from the checkpoint alone, in eval mode on the CPU."""
    checkpoint = load_checkpoint(path)
    try:
        model = ImageClassifier(**checkpoint["hyper_parameters"])
        model.load_state_dict(checkpoint["state_dict"])
    except (TypeError, RuntimeError, KeyError) as e:
        raise UserError(f"{path} does not fit this version's model ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]})") from None
    return model.eval()
