"""The one gate for what comes from disk: a checkpoint's hyperparameters and a run folder's config.

A checkpoint may come from anywhere, and its hyperparameters name what to build (`_target_`s, which Hydra would
import and call). Before anything is built from them each config is checked: its `_target_` must resolve, without
walking attributes, to one object of an exact set (a net class defined in a module of cifar_lightning.blocks.models, an
augmentation class of cifar_lightning.blocks.augment, an optimizer or scheduler class of torch.optim /
torch.optim.lr_scheduler or a factory of cifar_lightning.blocks.optim / .schedules, or anything of a module the user
declared in `trusted_modules`); no Hydra key but `_target_` (and `_partial_: true` for an optimizer or scheduler);
only keywords the callable takes, each a plain value of the kind its signature says (cifar_lightning.blocks.checks),
never an interpolation (`${...}`). The user's own command line is not checked here: it may name anything.
"""

import contextlib
import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf

from cifar_lightning.blocks import models
from cifar_lightning.blocks.checks import check_arguments, check_target
from cifar_lightning.blocks.errors import UserError, first_line
from cifar_lightning.blocks.module import ImageClassifier
from cifar_lightning.blocks.paths import user_path

MODEL_CONFIGS = ("net", "augmentation", "optimizer", "scheduler")  # the hyperparameters that name what to build
DATA_TARGET = "cifar_lightning.blocks.data.ImageDataModule"
# What a data config read from a run folder is built with (evaluate, resume): its root may name any folder, so it
# is never downloaded there; the data it names missing, the user chooses data= on the command line
RECORDED_DATA = {"download": False}
BASES = {
    "net": torch.nn.Module,
    "augmentation": object,
    "optimizer": torch.optim.Optimizer,
    "scheduler": torch.optim.lr_scheduler.LRScheduler,
}


def built_in_modules(kind: str) -> list[str]:
    """The modules whose classes and functions a `kind` config (net, augmentation, optimizer, scheduler) read from
    disk may name without trusted_modules."""
    return {
        "net": [f"cifar_lightning.blocks.models.{m.name}" for m in pkgutil.iter_modules(models.__path__)],
        "augmentation": ["cifar_lightning.blocks.augment"],
        "optimizer": ["torch.optim", "cifar_lightning.blocks.optim"],
        "scheduler": ["torch.optim.lr_scheduler", "cifar_lightning.blocks.schedules"],
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
    if ours and not module_exists(module_name):
        raise UserError(
            f"{where}._target_={target!r} names a module of an earlier layout of this package (before "
            f"cifar_lightning.blocks/store/tasks): its checkpoints and run folders are not read by this version; "
            f"train the run again"
        )
    raise UserError(
        f"{where}._target_={target!r} is not one of the {kind}s this project loads from a file (allowed: what "
        f"{', '.join([*modules, *trusted_modules])} define; if you trust this file and that code, add "
        f"its module as written there: trusted_modules=[{module_name or '...'}])"
    )


def module_exists(name: str) -> bool:
    """Whether `name` is a module that can be imported (found, not run)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # its parent package does not exist
        return False


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
    if not isinstance(hparams, dict) or not all(isinstance(k, str) for k in hparams):
        raise UserError("its hyper_parameters are not a mapping of names to values")
    for name in MODEL_CONFIGS:
        if hparams.get(name) is not None or name == "net":
            check_model_config(hparams.get(name), name, name, trusted_modules)
    check_arguments(ImageClassifier, {k: v for k, v in hparams.items() if k not in MODEL_CONFIGS}, "hyper_parameters")


def run_data_config(config_file: Path) -> dict:
    """The data config of a run folder's .hydra/config.yaml, read as plain YAML (nothing in it resolved or
    imported) and naming ImageDataModule (ImageDataModule.for_evaluation checks its values). It never downloads:
    it is read with RECORDED_DATA. A relative root is taken as the run meant it: from the folder it was started
    in (started_in), wherever this command runs."""
    choose = "choose the data, e.g. data=cifar10 data.root=data"
    if not config_file.is_file():
        raise UserError(f"{config_file} is missing, so the data this model was trained on is unknown: {choose}")
    try:
        config = (yaml.safe_load(config_file.read_text()) or {}).get("data")
    except (yaml.YAMLError, AttributeError, UnicodeDecodeError) as e:
        raise UserError(f"{config_file} is not a readable run config ({type(e).__name__}): {choose}") from None
    if not isinstance(config, dict) or config.get("_target_") != DATA_TARGET:
        raise UserError(f"{config_file} was refused: its data is not a {DATA_TARGET} config; {choose}")
    root, started = config.get("root"), started_in(config_file)
    if isinstance(root, str) and not os.path.isabs(os.path.expanduser(root)) and started is not None:
        config["root"] = str(started / root)  # relative to where the run was started, not to this command
    return {**config, **RECORDED_DATA}


def started_in(config_file: Path) -> Path | None:
    """The folder the run whose `config_file` (.hydra/config.yaml) this is was started in: the hydra.runtime.cwd
    that Hydra recorded beside it in hydra.yaml (read as plain YAML); None if it is not there."""
    with contextlib.suppress(OSError, yaml.YAMLError, UnicodeDecodeError, TypeError, KeyError):
        cwd = yaml.safe_load((config_file.parent / "hydra.yaml").read_text())["hydra"]["runtime"]["cwd"]
        if isinstance(cwd, str) and os.path.isabs(cwd):
            return Path(cwd)
    return None


# A resumed run's config builds its trainer, callbacks and loggers too: their targets must come from here
RUN_MODULES = (
    "lightning.pytorch",
    "lightning.pytorch.callbacks",
    "lightning.pytorch.loggers",
    "lightning.pytorch.profilers",
    "lightning.pytorch.strategies",
    "cifar_lightning.blocks.callbacks",
    "cifar_lightning.store.checkpoints",
    "cifar_lightning.blocks.data",
    "cifar_lightning.blocks.loggers",
    "cifar_lightning.blocks.module",
)
REFERENCE = re.compile(r"\$\{(\.*[A-Za-z_][\w.]*)\}")  # ${epochs}, ${optimizer.lr}, ${.accelerator}
RESOLVERS = ("${fastest_precision:${.accelerator}}",)  # the project's own, which only reads the hardware


def _check_targets(resolved: dict, config_file: Path, trusted_modules: Sequence[str]) -> None:
    """Every `_target_` of a resolved run config names a class the allow-list holds; raises UserError."""
    for where, target in _targets(resolved):
        module_name, _, name = target.rpartition(".") if isinstance(target, str) else ("", "", "")
        allowed = module_name in (*RUN_MODULES, *trusted_modules)
        obj = vars(importlib.import_module(module_name)).get(name) if allowed else None
        # a class of ours must be defined where it is named, not merely imported there (a class imported into one
        # of our modules, such as a torchvision dataset, could download or write anywhere)
        ours = module_name.startswith("cifar_lightning.") and module_name not in trusted_modules
        if not inspect.isclass(obj) or (ours and obj.__module__ != module_name):
            raise UserError(
                f"{config_file} was refused: {where}._target_={target!r} is not one of the classes a resumed run "
                f"may build (what {', '.join(RUN_MODULES)} define; add your own with trusted_modules=[...])"
            )


def run_config(
    composed: DictConfig,
    record: Path,
    output_dir: Path,
    paths_root: str | Path,
    trusted_modules: Sequence[str] = (),
) -> DictConfig:
    """A resumed run's (or a resumed sweep's job's) config, `composed` from the overrides `record` holds, which the
    messages name: its interpolations only references to its own keys (no resolver that reads the environment,
    the disk or the clock, but the precision's), every `_target_` on an allow-list (nets, augmentations,
    optimizers and schedules as in checkpoints; the trainer, callbacks, loggers, profilers, strategies of
    Lightning and this package; `trusted_modules`), and nothing it builds writing outside `output_dir` (see
    `_check_writes`). Its `paths` are not trusted: paths.output_dir becomes `output_dir`, the run being resumed,
    and paths.root `paths_root`, the caller's.

    Raises:
        UserError: one line naming the record and the key refused."""
    raw = OmegaConf.to_container(composed, resolve=False)
    if not isinstance(raw, dict) or not isinstance(raw.get("paths"), dict):
        raise UserError(f"{record} was refused: it is not a train config (no paths)")
    saved_root = raw["paths"].get("root")
    same_root = isinstance(saved_root, str) and user_path(saved_root).resolve() == user_path(paths_root).resolve()
    # the saved spelling when it names the same folder: MLflow refuses a logged parameter that changes
    raw["paths"].update(root=saved_root if same_root else str(paths_root), output_dir=str(output_dir))
    _check_interpolations(raw, record)
    module = raw.get("module")
    if not isinstance(module, dict):
        raise UserError(f"{record} was refused: its module is not a config")
    for key, group in zip(MODEL_CONFIGS, ("model", "augmentation", "optimizer", "scheduler")):
        if module.get(key, f"${{{group}}}") != f"${{{group}}}":  # what the gate checks below is what gets built
            raise UserError(f"{record} was refused: module.{key} must be ${{{group}}}, the {group} group's config")
    config = OmegaConf.create(raw)
    try:
        resolved = OmegaConf.to_container(config, resolve=True)
    except Exception as e:  # a reference to a key that is not there
        raise UserError(f"{record} was refused: {first_line(e)}") from None
    assert isinstance(resolved, dict)
    for kind, group in (("net", "model"), *((g, g) for g in ("augmentation", "optimizer", "scheduler"))):
        if resolved.get(group) is not None or kind == "net":
            _refused_in(record, check_model_config, resolved.get(group), kind, group, trusted_modules)
    if not isinstance(resolved.get("data"), dict) or resolved["data"].get("_target_") != DATA_TARGET:
        raise UserError(f"{record} was refused: its data is not a {DATA_TARGET} config")
    _check_targets(resolved, record, trusted_modules)
    _check_writes(resolved, output_dir, record)
    return config


# Where a trainer, callback, logger or profiler config sends files: folders, a file name inside its folder, and
# MLflow's store (null: the project's, under paths.root)
FOLDER_KEYS = ("default_root_dir", "dirpath", "save_dir", "log_dir", "root_dir")
FILE_KEYS = ("filename", "name", "version", "sub_dir")  # a file or subfolder name inside its folder
STORE_KEYS = ("tracking_uri", "artifact_location")
REMOTE_STORE = re.compile(r"(https?|databricks)://")  # a tracking server: nothing written here


def _check_writes(resolved: dict, output_dir: Path, config_file: Path) -> None:
    """Refuses a resumed run's config that sends a file outside the run folder: every folder key of the trainer,
    callbacks and loggers lies inside it, no file name leaves its folder, an MLflow store is a server or null."""
    run = output_dir.resolve()
    if (resolved.get("trainer") or {}).get("default_root_dir") is None:  # Lightning's default: the working folder
        raise UserError(
            f"{config_file} was refused: trainer.default_root_dir is not set, so the resumed run would write into "
            f"the working folder"
        )
    for where, target in _targets(resolved.get("logger") or {}, "logger"):
        if where != "logger.mlflow" and str(target).endswith("MLFlowLogger"):  # tracking.prepare sets its store
            raise UserError(f"{config_file} was refused: {where} is an MLflow logger; only logger.mlflow may be one")
    for where, key, value in _leaves({k: resolved.get(k) for k in ("trainer", "callbacks", "logger")}):
        if value is None:
            continue
        if key in FOLDER_KEYS:
            inside = user_path(str(value)).resolve().is_relative_to(run)
        elif key in FILE_KEYS:
            inside = not Path(str(value)).is_absolute() and ".." not in Path(str(value)).parts
        elif key in STORE_KEYS:
            inside = REMOTE_STORE.match(str(value)) is not None
        else:
            continue
        if not inside:
            raise UserError(
                f"{config_file} was refused: {where}={value!r} would make the resumed run write outside its "
                f"folder {output_dir}"
            )


def _leaves(node: Any, where: str = "") -> list[tuple[str, str, Any]]:
    """(path, key, value) of every value of a nested dict that is neither a dict nor a list (path: a.b[0].c)."""
    if isinstance(node, dict):
        items = [(f"{where}.{key}" if where else str(key), str(key), value) for key, value in node.items()]
    elif isinstance(node, list):
        items = [(f"{where}[{i}]", str(i), value) for i, value in enumerate(node)]
    else:
        return []
    found = []
    for path, key, value in items:
        found += _leaves(value, path) if isinstance(value, (dict, list)) else [(path, key, value)]
    return found


def _refused_in(config_file: Path, check: Any, *args: Any) -> None:
    try:
        check(*args)
    except UserError as e:
        raise UserError(f"{config_file} was refused: {e}") from None


def _check_interpolations(node: dict, config_file: Path) -> None:
    for where, _, value in _leaves(node):
        if isinstance(value, str) and "${" in value and value not in RESOLVERS and "${" in REFERENCE.sub("", value):
            raise UserError(
                f"{config_file} was refused: {where}={value!r} calls a resolver; a run config may only refer to its "
                f"own keys"
            )


def _targets(node: Any, where: str = "") -> list[tuple[str, Any]]:
    """(path, _target_) of every config in `node` but the model groups (checked as in checkpoints) and the
    module's copies of them."""
    found = []
    if isinstance(node, dict):
        if "_target_" in node and where.split(".")[0] not in ("model", "augmentation", "optimizer", "scheduler"):
            found.append((where, node["_target_"]))
        for key, value in node.items():
            if where == "module" and key in MODEL_CONFIGS:
                continue
            found += _targets(value, f"{where}.{key}" if where else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _targets(value, f"{where}[{i}]")
    return found
