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
import yaml
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig

from cifar_lightning.checks import check_arguments
from cifar_lightning.data import ImageDataModule
from cifar_lightning.errors import UserError
from cifar_lightning.module import ImageClassifier

DATA_TARGET = f"{ImageDataModule.__module__}.{ImageDataModule.__qualname__}"
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


def newest(outputs: Path, name: str) -> Path | None:
    """The most recently written checkpoints/<name>.ckpt of any run under `outputs` (ckpt=best|last, resume=latest)."""
    found = sorted(Path(outputs).glob(f"**/checkpoints/{name}.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def resolve(ckpt: str, outputs: Path) -> Path:
    """best / last of the most recent run under `outputs`, or a path: a checkpoint file or a run folder (its best)."""
    if ckpt in ("best", "last"):
        found = newest(outputs, ckpt)
        if found is None:
            raise UserError(f"no training runs with a {ckpt}.ckpt under {outputs}/: train one first "
                            f"(python train.py), or pass ckpt=PATH")
        return found
    path = Path(ckpt)
    if path.is_dir():
        for candidate in (path / "checkpoints" / "best.ckpt", path / "best.ckpt", path / "checkpoints" / "last.ckpt"):
            if candidate.is_file():
                return candidate
        raise UserError(f"{path} holds no checkpoints/best.ckpt or last.ckpt: is it a run folder?")
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist: use ckpt=best, ckpt=last, a .ckpt file or a run folder")
    return path


def evaluation_data(chosen: DictConfig | None, run_dir: Path) -> ImageDataModule:
    """The data to evaluate on: the user's choice (data=...), else the data the run was trained on, read from its
    .hydra/config.yaml as plain YAML (nothing in it resolved or imported) and checked like a checkpoint. Its
    batch_size is training's (train.yaml's, interpolated): evaluation batches are eval_batch_size."""
    if chosen is not None:
        config = {key: chosen[key] for key in chosen if key != "batch_size"}
    else:
        run_config = run_dir / ".hydra" / "config.yaml"
        if not run_config.is_file():
            raise UserError(f"{run_config} is missing, so the data this model was trained on is unknown: "
                            f"choose it, e.g. data=cifar10 data.root=data")
        try:
            config = (yaml.safe_load(run_config.read_text()) or {}).get("data")
        except (yaml.YAMLError, AttributeError, UnicodeDecodeError) as e:
            raise UserError(f"{run_config} is not a readable run config ({type(e).__name__}): choose the data, "
                            f"e.g. data=cifar10 data.root=data") from None
        if not isinstance(config, dict) or config.get("_target_") != DATA_TARGET:
            raise UserError(f"{run_config} was refused: its data is not a {DATA_TARGET} config; choose the data, "
                            f"e.g. data=cifar10 data.root=data")
    config.pop("_target_", None)
    config.pop("batch_size", None)
    check_arguments(ImageDataModule, config, "data")
    return ImageDataModule(**config)


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
