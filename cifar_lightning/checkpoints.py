"""ckpt=best|last|PATH -> a checkpoint file, and a safe way to rebuild the model from it.

A checkpoint may come from anywhere, so loading it must not run code. `torch.load(weights_only=True)` refuses
pickled objects. Its hyperparameters name what to build (`_target_`s, which Hydra would import and call), so
before anything is built from them each config is checked (`check_model_config`): its `_target_` must resolve,
without walking attributes, to one of an exact set of objects (a net class defined in a module of
cifar_lightning.models, an augmentation class defined in cifar_lightning.augment, an optimizer or scheduler
class of torch.optim / torch.optim.lr_scheduler or a factory defined in cifar_lightning.optim / .schedules);
no Hydra key but `_target_` (and `_partial_: true` for the optimizer and scheduler); only keywords the callable
takes, each a plain value of the kind its signature says, never an interpolation (`${...}`).
"""

import importlib
import inspect
import os
import pickle
import pkgutil
import zipfile
from pathlib import Path
from typing import Any

import torch
import yaml
from lightning.pytorch.plugins.io import TorchCheckpointIO
from omegaconf import DictConfig

from cifar_lightning import models
from cifar_lightning.augment import Compose
from cifar_lightning.checks import check_arguments
from cifar_lightning.data import ImageDataModule
from cifar_lightning.errors import UserError
from cifar_lightning.module import ImageClassifier

DATA_TARGET = f"{ImageDataModule.__module__}.{ImageDataModule.__qualname__}"
MODEL_CONFIGS = ("net", "augmentation", "optimizer", "scheduler")  # the hyperparameters that name what to build


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, then renames it into place: a run killed while
    saving leaves the previous best.ckpt/last.ckpt whole. (Lightning's own save goes through a temporary
    file in the system temp folder, whose move is a copy when that is another filesystem.)"""

    def save_checkpoint(self, checkpoint: dict, path: str | Path, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        except OSError as e:  # disk full, quota, permissions: the run stops, its earlier checkpoints stay whole
            raise UserError(
                f"could not write {path} ({e.strerror or e}); the previous {path.name} is kept: free "
                f'space or fix the folder, then resume="{run_dir_of(path)}"'
            ) from None
        finally:
            tmp.unlink(missing_ok=True)


def write_atomic(path: Path, text: str) -> None:
    """A file written beside its place and renamed into it: never seen half-written, even after a kill."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
            raise UserError(
                f"no training runs with a {ckpt}.ckpt under {outputs}/: train one first "
                f"(python train.py), or pass ckpt=PATH"
            )
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
            raise UserError(
                f"{run_config} is missing, so the data this model was trained on is unknown: "
                f"choose it, e.g. data=cifar10 data.root=data"
            )
        try:
            config = (yaml.safe_load(run_config.read_text()) or {}).get("data")
        except (yaml.YAMLError, AttributeError, UnicodeDecodeError) as e:
            raise UserError(
                f"{run_config} is not a readable run config ({type(e).__name__}): choose the data, "
                f"e.g. data=cifar10 data.root=data"
            ) from None
        if not isinstance(config, dict) or config.get("_target_") != DATA_TARGET:
            raise UserError(
                f"{run_config} was refused: its data is not a {DATA_TARGET} config; choose the data, "
                f"e.g. data=cifar10 data.root=data"
            )
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
        raise UserError(
            f"{path} was refused: it holds objects other than tensors and plain values, which could "
            f"run code when loaded ({why[:200] or type(e).__name__})"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise UserError(
            f"{path} is not a readable checkpoint (truncated or not a torch file: {type(e).__name__})"
        ) from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or "net" not in hparams or not isinstance(checkpoint.get("state_dict"), dict):
        raise UserError(f"{path} is not a cifar-lightning checkpoint (no model hyperparameters in it)")
    try:
        check_hyperparameters(checkpoint["hyper_parameters"])
    except UserError as e:
        raise UserError(f"{path} was refused: {e}") from None
    return checkpoint


def check_hyperparameters(hparams: dict) -> None:
    """What ImageClassifier(**hparams) would be given, checked so that building it can run none of our code but
    the allowed constructors (see the module's docstring)."""
    if not isinstance(hparams, dict) or not all(isinstance(k, str) for k in hparams):
        raise UserError("its hyper_parameters are not a mapping of names to values")
    for name in MODEL_CONFIGS:
        if hparams.get(name) is not None or name == "net":
            check_model_config(hparams.get(name), name, name)
    check_arguments(ImageClassifier, {k: v for k, v in hparams.items() if k not in MODEL_CONFIGS}, "hyper_parameters")


def check_model_config(config: Any, kind: str, where: str) -> None:
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise UserError(f"{where} is not a config (a mapping with a _target_)")
    target = allowed_target(config.get("_target_"), kind, where)
    special = {k for k in config if k.startswith("_") and k != "_target_"}
    if special - ({"_partial_"} if kind in ("optimizer", "scheduler") else set()):
        raise UserError(f"{where} holds {', '.join(sorted(special))}, which {kind} configs never have")
    if "_partial_" in config and config["_partial_"] is not True:
        raise UserError(f"{where}._partial_={config['_partial_']!r}: a {kind} is built later, so it must be true")
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    if kind == "scheduler":  # two keys the module reads itself (ImageClassifier.optimizer_and_schedule)
        if kwargs.pop("interval", "epoch") not in ("epoch", "step"):
            raise UserError(f"{where}.interval={config['interval']!r} must be epoch or step")
        if "total_steps" in kwargs and kwargs["total_steps"] is None:  # null: the run's number of steps
            del kwargs["total_steps"]
    if kind == "augmentation" and target is Compose:  # its keywords are the augmentations it applies
        for name, part in kwargs.items():
            if part is not None:
                check_model_config(part, kind, f"{where}.{name}")
        return
    check_arguments(target, kwargs, where)


def allowed_target(target: Any, kind: str, where: str) -> bool:
    """The object `target` names, when it is one that a `kind` config may build; else UserError. The module is
    looked up among the allowed ones by its exact name and the object in its namespace, so a path cannot walk
    through a module's imports to anything else."""
    module_name, _, name = target.rpartition(".") if isinstance(target, str) else ("", "", "")
    modules = {
        "net": [f"cifar_lightning.models.{m.name}" for m in pkgutil.iter_modules(models.__path__)],
        "augmentation": ["cifar_lightning.augment"],
        "optimizer": ["torch.optim", "cifar_lightning.optim"],
        "scheduler": ["torch.optim.lr_scheduler", "cifar_lightning.schedules"],
    }[kind]
    obj = vars(importlib.import_module(module_name)).get(name) if module_name in modules else None
    if inspect.isclass(obj):
        base = {
            "net": torch.nn.Module,
            "augmentation": object,
            "optimizer": torch.optim.Optimizer,
            "scheduler": torch.optim.lr_scheduler.LRScheduler,
        }[kind]
        ours = module_name.startswith("cifar_lightning.")
        if issubclass(obj, base) and obj.__name__ == name and (obj.__module__ == module_name or not ours):
            return obj
    elif inspect.isfunction(obj) and obj.__module__ == module_name and module_name.startswith("cifar_lightning."):
        return obj  # a factory of ours (optim, schedules)
    raise UserError(
        f"{where}._target_={target!r} is not one of the {kind}s this project builds "
        f"(allowed: what {', '.join(modules)} define)"
    )


def load_model(path: Path) -> ImageClassifier:
    """The trained model, rebuilt from the checkpoint alone, in eval mode on the CPU. Never compiled: compiling
    would run a C compiler and write its cache outside the run folder."""
    checkpoint = load_checkpoint(path)
    try:
        model = ImageClassifier(**{**checkpoint["hyper_parameters"], "compile": False})
        model.on_load_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["state_dict"])
    except (TypeError, RuntimeError, KeyError, ValueError) as e:
        raise UserError(
            f"{path} does not fit this version's model ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        ) from None
    if not (model.temperature.isfinite() and model.temperature > 0):
        raise UserError(f"{path} was refused: its temperature {float(model.temperature)} is not a positive number")
    return model.eval()


def write_temperature(path: Path, temperature: float) -> None:
    """Sets the calibration temperature in a checkpoint file, rewritten atomically."""
    checkpoint = load_checkpoint(Path(path))
    checkpoint["state_dict"]["temperature"] = torch.tensor(temperature)
    AtomicCheckpointIO().save_checkpoint(checkpoint, path)
