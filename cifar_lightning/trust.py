"""The one gate for what comes from disk: a checkpoint's hyperparameters and a run folder's config.

A checkpoint may come from anywhere, and its hyperparameters name what to build (`_target_`s, which Hydra would
import and call). Before anything is built from them each config is checked: its `_target_` must resolve, without
walking attributes, to one object of an exact set (a net class defined in a module of cifar_lightning.models, an
augmentation class of cifar_lightning.augment, an optimizer or scheduler class of torch.optim /
torch.optim.lr_scheduler or a factory of cifar_lightning.optim / .schedules, or anything of a module the user
declared in `trusted_modules`); no Hydra key but `_target_` (and `_partial_: true` for an optimizer or scheduler);
only keywords the callable takes, each a plain value of the kind its signature says (cifar_lightning.validation),
never an interpolation (`${...}`). The user's own command line is not checked here: it may name anything.
"""

import importlib
import inspect
import pkgutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from cifar_lightning import models
from cifar_lightning.errors import UserError
from cifar_lightning.validation import check_arguments, check_target

MODEL_CONFIGS = ("net", "augmentation", "optimizer", "scheduler")  # the hyperparameters that name what to build
DATA_TARGET = "cifar_lightning.data.ImageDataModule"
BASES = {
    "net": torch.nn.Module,
    "augmentation": object,
    "optimizer": torch.optim.Optimizer,
    "scheduler": torch.optim.lr_scheduler.LRScheduler,
}


def built_in_modules(kind: str) -> list[str]:
    return {
        "net": [f"cifar_lightning.models.{m.name}" for m in pkgutil.iter_modules(models.__path__)],
        "augmentation": ["cifar_lightning.augment"],
        "optimizer": ["torch.optim", "cifar_lightning.optim"],
        "scheduler": ["torch.optim.lr_scheduler", "cifar_lightning.schedules"],
    }[kind]


def allowed_target(target: Any, kind: str, where: str, trusted_modules: Sequence[str] = ()) -> Any:
    """The object `target` names when a `kind` config read from disk may build it; else UserError. The module is
    looked up among the allowed ones by its exact name and the object in its namespace, so a path cannot walk
    through a module's imports to anything else. A module in `trusted_modules` may name any class or function
    in its namespace (a class must still be a `kind`: a net an nn.Module, ...)."""
    module_name, _, name = target.rpartition(".") if isinstance(target, str) else ("", "", "")
    modules = built_in_modules(kind)
    trusted = module_name in trusted_modules
    obj = None
    if module_name in modules or trusted:
        try:
            obj = vars(importlib.import_module(module_name)).get(name)
        except ImportError:
            obj = None
    ours = module_name.startswith("cifar_lightning.")
    if inspect.isclass(obj) and issubclass(obj, BASES[kind]):
        if trusted or (obj.__name__ == name and (obj.__module__ == module_name or not ours)):
            return obj
    elif inspect.isfunction(obj) and (trusted or (ours and obj.__module__ == module_name)):
        return obj  # a factory of ours (optim, schedules) or of a trusted module
    raise UserError(
        f"{where}._target_={target!r} is not one of the {kind}s this project loads from a file (allowed: what "
        f"{', '.join([*modules, *trusted_modules])} define; add your own module with trusted_modules=[...])"
    )


def check_model_config(config: Any, kind: str, where: str, trusted_modules: Sequence[str] = ()) -> None:
    """A net, augmentation, optimizer or scheduler config read from disk, checked so that building it can run
    none of our code but the allowed constructors."""
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise UserError(f"{where} is not a config (a mapping with a _target_)")
    special = {k for k in config if k.startswith("_") and k != "_target_"}
    if special - ({"_partial_"} if kind in ("optimizer", "scheduler") else set()):
        raise UserError(f"{where} holds {', '.join(sorted(special))}, which {kind} configs never have")
    if "_partial_" in config and config["_partial_"] is not True:
        raise UserError(f"{where}._partial_={config['_partial_']!r}: a {kind} is built later, so it must be true")
    check_target(config, where, lambda target, at: allowed_target(target, kind, at, trusted_modules), kind)


def check_hyperparameters(hparams: Any, trusted_modules: Sequence[str] = ()) -> None:
    """What ImageClassifier(**hparams) would be given, checked (see the module's docstring)."""
    from cifar_lightning.module import ImageClassifier  # the module imports the data, which imports nothing of ours

    if not isinstance(hparams, dict) or not all(isinstance(k, str) for k in hparams):
        raise UserError("its hyper_parameters are not a mapping of names to values")
    for name in MODEL_CONFIGS:
        if hparams.get(name) is not None or name == "net":
            check_model_config(hparams.get(name), name, name, trusted_modules)
    check_arguments(ImageClassifier, {k: v for k, v in hparams.items() if k not in MODEL_CONFIGS}, "hyper_parameters")


def run_data_config(config_file: Path) -> dict:
    """The data config of a run folder's .hydra/config.yaml, read as plain YAML (nothing in it resolved or
    imported) and checked against ImageDataModule's signature. Its batch_size is training's: dropped."""
    from cifar_lightning.data import ImageDataModule

    choose = "choose the data, e.g. data=cifar10 data.root=data"
    if not config_file.is_file():
        raise UserError(f"{config_file} is missing, so the data this model was trained on is unknown: {choose}")
    try:
        config = (yaml.safe_load(config_file.read_text()) or {}).get("data")
    except (yaml.YAMLError, AttributeError, UnicodeDecodeError) as e:
        raise UserError(f"{config_file} is not a readable run config ({type(e).__name__}): {choose}") from None
    if not isinstance(config, dict) or config.get("_target_") != DATA_TARGET:
        raise UserError(f"{config_file} was refused: its data is not a {DATA_TARGET} config; {choose}")
    config = {k: v for k, v in config.items() if k not in ("_target_", "batch_size")}
    check_arguments(ImageDataModule, config, "data")
    return config
