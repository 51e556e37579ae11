"""The one checker: values against the signature of what they will build, before anything is built.

A constructor declares what it accepts in its annotations: the type, `Literal` choices, and ranges as
`annotated_types` constraints (`Annotated[int, Ge(1)]`). A plain string in `Annotated` is the phrase an error
uses instead of the generated one (`Annotated[float, Gt(0), "must be a positive number"]`). `check_arguments`
holds a mapping of keyword arguments against such a signature; `check_target` does so for a config that names
its `_target_` (any importable object on the command line; what comes from disk passes `trust.py` first).
Every refusal is a `UserError` whose one-line message names the key (`data.batch_size=0 must be at least 1`).
"""

import inspect
import math
import os
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import annotated_types as at
from hydra.utils import get_object

from cifar_lightning.errors import UserError

SCALARS = (bool, int, float, str, type(None))
# Keys a config of these groups holds beside its target's keywords: read by the module, not passed on
SCHEDULER_KEYS = {"interval": Annotated[typing.Literal["epoch", "step"], "must be epoch or step"]}
# torch's optimizers accept lr=0 (a run that learns nothing); every optimizer this project builds needs lr > 0
OPTIMIZER_KEYS = {"lr": Annotated[float, at.Gt(0), "must be a positive number"]}
ACCUMULATE = Annotated[int, at.Ge(1), "must be a whole number of at least 1"]


def _writable_file(path: str | None) -> bool:
    return not path or (Path(path).parent.is_dir() and not Path(path).is_dir())


# an output file the user names (predict.py csv=, export.py output=; empty or null: none): checked before the work
FILE_TO_WRITE = Annotated[
    str | None,
    at.Predicate(_writable_file),
    "must name a file (not a folder) in a folder that exists: create the folder first",
]


def check_arguments(target: Callable, kwargs: dict, where: str) -> None:
    """Raises UserError naming `where.key` for a keyword `target` does not take, or a value its annotation (or,
    without one, its default) does not admit. Keywords that `target` only takes through **kwargs are left alone.

    Args:
        target: a class (its __init__ is read) or a function.
        kwargs: plain values (from YAML, a command line or a checkpoint).
        where: the config path of `kwargs`, e.g. "data" or "callbacks.early_stopping".
    """
    parameters = inspect.signature(target).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters.values())
    hints = type_hints(target)
    for key, value in kwargs.items():
        parameter = parameters.get(key)
        if parameter is None or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            if not takes_any:
                accepted = ", ".join(
                    k for k, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                )
                raise UserError(f"{where}.{key}: {name_of(target)} takes no argument {key!r} (it takes {accepted})")
            continue
        check_value(f"{where}.{key}" if where else key, value, hints.get(key, _kind_of_default(parameter.default)))


def check_value(name: str, value: Any, expected: Any) -> None:
    """Raises UserError `name=value is not <kind>` or `name=value must be <range>` unless `value` fits."""
    base, constraints, phrase = _unpack(expected)
    if not fits(value, base):
        raise UserError(f"{name}={value!r} {phrase or 'is not ' + describe(base)}")
    broken = [c for c in constraints if not _holds(c, value)]
    if broken:
        raise UserError(f"{name}={value!r} {phrase or 'must be ' + ' and '.join(map(_describe_constraint, broken))}")


def check_target(
    config: Any, where: str, resolve: Callable[[Any, str], Any] | None = None, group: str | None = None
) -> Any:
    """A config with a `_target_` (a net, an augmentation, an optimizer or a schedule, a callback, a logger, the
    trainer): its target resolved (by `resolve(target, where)`, else any importable object, as Hydra would) and
    its keywords checked against its signature. Returns the target. A Compose augmentation's keywords are
    configs themselves, each checked in turn; a scheduler's `interval` and a scheduler's or optimizer's null
    `total_steps` are read by the module (ImageClassifier.optimizer_and_schedule), an optimizer's `lr` must be
    positive. `group` (default: the first part of `where`) chooses those rules."""
    if not isinstance(config, dict) or not all(isinstance(k, str) for k in config):
        raise UserError(f"{where} is not a config (a mapping with a _target_)")
    target = (resolve or _importable)(config.get("_target_"), where)
    kwargs = {k: v for k, v in config.items() if not k.startswith("_")}
    group = group or where.split(".")[0]
    extra = {"scheduler": SCHEDULER_KEYS, "optimizer": OPTIMIZER_KEYS}.get(group, {})
    for key, expected in extra.items():
        if key in kwargs:
            check_value(f"{where}.{key}", kwargs[key], expected)
    if group == "scheduler":
        kwargs.pop("interval", None)
        if "total_steps" in kwargs and kwargs["total_steps"] is None:
            del kwargs["total_steps"]  # null: the run's number of optimizer steps
    if getattr(target, "takes_configs", False):  # Compose: each keyword is an augmentation's config
        for name, part in kwargs.items():
            if part is not None:
                check_target(part, f"{where}.{name}", resolve, group)
        return target
    check_arguments(target, kwargs, where)
    return target


def _importable(target: Any, where: str) -> Any:
    if not isinstance(target, str) or not target:
        raise UserError(f"{where}._target_={target!r} must name a class or function, e.g. torch.optim.SGD")
    try:
        return get_object(target)
    except Exception as e:
        raise UserError(f"{where}._target_={target!r} cannot be imported ({type(e).__name__})") from None


# ------------------------------------------------------------------------------------------- kinds
def fits(value: Any, expected: Any) -> bool:
    """Whether a plain value (from YAML, a command line or a checkpoint) is of the kind `expected` describes,
    constraints included."""
    if isinstance(value, str) and "${" in value:  # an interpolation would be resolved, and so run, when built
        return False
    expected, constraints, _ = _unpack(expected)
    if constraints:
        return fits(value, expected) and all(_holds(c, value) for c in constraints)
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is str:
        return isinstance(value, str)
    if expected is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, arg) for arg in args)
    if origin in (tuple, list, Sequence) or expected in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(fits(v, a) for v, a in zip(value, args))
        return all(fits(v, args[0] if args else typing.Any) for v in value)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if expected is not typing.Any and inspect.isclass(expected):  # a tensor, a module, ...: not in a config
        return False
    # Any, or an unannotated argument without a default: plain scalars and lists of them
    return isinstance(value, SCALARS) or (isinstance(value, (list, tuple)) and all(fits(v, typing.Any) for v in value))


def describe(expected: Any) -> str:
    """The kind `expected` stands for, in words: "a whole number", "one of 'mean', 'sum'", ..."""
    expected, constraints, _ = _unpack(expected)
    if constraints:
        return f"{describe(expected)} {' and '.join(map(_describe_constraint, constraints))}"
    if expected is typing.Any:
        return "a plain value (a number, a string, true/false, null or a list of them)"
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "a string", type(None): "null"}
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(arg) for arg in typing.get_args(expected))
    if origin in (tuple, list, Sequence) or expected in (tuple, list):
        items = {int: "whole numbers", float: "numbers", str: "strings", bool: "true/false values"}
        fixed = origin is tuple and Ellipsis not in typing.get_args(expected)
        args = [a for a in typing.get_args(expected) if a is not Ellipsis]
        count = f"{len(args)} " if fixed and len(args) > 1 else ""
        return f"a list of {count}{items.get(args[0], 'plain values')}" if len(set(args)) == 1 else "a list"
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(expected)))
    return names.get(expected, f"of type {getattr(expected, '__name__', None) or str(expected).replace('typing.', '')}")


def type_hints(target: Callable) -> dict[str, Any]:
    """The annotations of `target`'s parameters (of __init__ for a class), Annotated metadata kept; {} when they
    do not evaluate (some of torch's), so that checks fall back to the defaults' kinds."""
    try:
        return typing.get_type_hints(target.__init__ if inspect.isclass(target) else target, include_extras=True)
    except Exception:
        return {}


def name_of(target: Callable) -> str:
    return f"{target.__module__}.{target.__qualname__}"


def _unpack(expected: Any) -> tuple[Any, list, str | None]:
    """Annotated[T, *metadata] -> (T, its constraints, its phrase or None); anything else -> (it, [], None)."""
    if typing.get_origin(expected) is not Annotated:
        return expected, [], None
    base, *metadata = typing.get_args(expected)
    phrases = [m for m in metadata if isinstance(m, str)]
    return base, [m for m in metadata if not isinstance(m, str)], phrases[0] if phrases else None


def _holds(constraint: Any, value: Any) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if isinstance(constraint, at.Interval):
        return all(_holds(c, value) for c in _parts(constraint))
    if isinstance(constraint, at.Gt):
        return value > constraint.gt
    if isinstance(constraint, at.Ge):
        return value >= constraint.ge
    if isinstance(constraint, at.Lt):
        return value < constraint.lt
    if isinstance(constraint, at.Le):
        return value <= constraint.le
    if isinstance(constraint, at.MinLen):
        return len(value) >= constraint.min_length
    if isinstance(constraint, at.Predicate):
        return bool(constraint.func(value))
    raise TypeError(f"unsupported constraint {constraint!r}")


def _parts(interval: at.Interval) -> list:
    bounds = (("gt", at.Gt), ("ge", at.Ge), ("lt", at.Lt), ("le", at.Le))
    return [kind(getattr(interval, key)) for key, kind in bounds if getattr(interval, key) is not None]


def _describe_constraint(constraint: Any) -> str:
    if isinstance(constraint, at.Interval):
        return " and ".join(map(_describe_constraint, _parts(constraint)))
    words = {at.Gt: ("above", "gt"), at.Ge: ("at least", "ge"), at.Lt: ("below", "lt"), at.Le: ("at most", "le")}
    for kind, (word, key) in words.items():
        if isinstance(constraint, kind):
            return f"{word} {getattr(constraint, key)}"
    if isinstance(constraint, at.MinLen):
        return f"at least {constraint.min_length} long"
    return repr(constraint)


def _kind_of_default(default: Any) -> Any:
    if default is inspect.Parameter.empty or default is None:
        return typing.Any
    if isinstance(default, (list, tuple)):
        return list
    return type(default) if isinstance(default, SCALARS) else typing.Any


# ----------------------------------------------------------------------------------------- a training config
def check_train_config(cfg: Any, options: type) -> None:
    """A composed train config, before any data loads: its own keys against `options` (a dataclass), every group
    against the signature of what it builds, and the net, augmentation, optimizer and schedule built once on a
    tiny scale, so that a value only their constructors refuse is reported now, naming its group."""
    from omegaconf import DictConfig

    from cifar_lightning.data import ImageDataModule
    from cifar_lightning.module import ImageClassifier, plain

    values = {k: plain(v) for k, v in cfg.items() if not isinstance(v, DictConfig)}
    check_arguments(options, {k: v for k, v in values.items() if k in _fields(options)}, "")
    print_config = (cfg.get("extras") or {}).get("print_config", True)
    check_value("extras.print_config", print_config, Annotated[bool, "must be true or false"])
    check_arguments(ImageDataModule, {k: v for k, v in plain(cfg.data).items() if k != "_target_"}, "data")
    from cifar_lightning.trust import MODEL_CONFIGS

    module = {k: v for k, v in plain(cfg.module).items() if k not in ("_target_", *MODEL_CONFIGS)}
    check_arguments(ImageClassifier, module, "module")
    for group in ("model", "augmentation", "optimizer", "scheduler"):
        if cfg.get(group) is not None:
            check_target(plain(cfg[group]), group)
    trainer = {
        k: v
        for k, v in plain(cfg.trainer).items()
        # plugins and objects given as configs (a profiler) are built by Hydra, which names what it refuses;
        # max_epochs is ${epochs} (maybe 9.9 or 2.0): the run's length, which train.build hands to the Trainer
        if k != "plugins"
        and not (isinstance(v, dict) and "_target_" in v)
        and not (k == "max_epochs" and v == cfg.epochs)
    }
    check_target(trainer, "trainer")
    if "max_epochs" in trainer:  # set apart from epochs, it would be ignored
        raise UserError(
            f"trainer.max_epochs={trainer['max_epochs']!r} differs from epochs={cfg.epochs}: set epochs instead"
        )
    # Lightning divides by it unchecked
    check_value("trainer.accumulate_grad_batches", trainer.get("accumulate_grad_batches", 1), ACCUMULATE)
    for group in ("callbacks", "logger"):
        for name, part in (cfg.get(group) or {}).items():
            if part is not None:
                config = plain(part)
                if isinstance(config, dict):  # what it holds as configs of their own (a profiler) Hydra builds
                    config = {k: v for k, v in config.items() if not (isinstance(v, dict) and "_target_" in v)}
                check_target(config, f"{group}.{name}")
    _build_small(cfg, plain(cfg.data).get("image_size", 32))


def _fields(options: type) -> set[str]:
    return set(inspect.signature(options).parameters)


def _build_small(cfg: Any, image_size: int) -> None:
    """The constructors' own checks (torch's optimizers refuse a negative weight decay only when built)."""
    import torch
    from hydra.utils import instantiate

    from cifar_lightning.module import ImageClassifier

    group = "model"
    try:
        module = ImageClassifier(
            net=cfg.model, optimizer=cfg.optimizer, scheduler=cfg.scheduler, class_names=["a", "b"]
        )
        images = torch.zeros(2, 3, image_size, image_size)
        module(images)
        if cfg.augmentation is not None:
            group = "augmentation"
            instantiate(cfg.augmentation)(images, torch.arange(2), 0)
        group = "optimizer or scheduler"
        module.optimizer_and_schedule(total_steps=10)
    except Exception as e:  # any constructor's refusal of a user's value
        raise refused(group, e) from None


def refused(group: str, error: Exception) -> UserError:
    """A constructor's refusal of the values of a config group, as one line (Hydra wraps it in its own error)."""
    from hydra.errors import InstantiationException

    cause = error.__cause__ if isinstance(error, InstantiationException) and error.__cause__ else error
    if isinstance(cause, UserError):  # the constructor's own words for the user
        return cause
    first = str(cause).strip().splitlines()[0][:300] if str(cause).strip() else ""
    return UserError(f"{group} cannot be built from these values: {type(cause).__name__}: {first}")


# ----------------------------------------------------------------------------------------- once the data is known
def run_length(cfg: Any, datamodule: Any, processes: int, callbacks: Sequence[Any]) -> int:
    """The values that only make sense together, checked once the data's sizes are known: the batch against
    the training split, the metrics that callbacks watch against those the module logs, best.ckpt's source
    against the checkpoints written, and the run's length.
    Returns that length in optimizer steps: `epochs` times the steps of an epoch, where each of `processes`
    processes trains on ceil(N / processes) images (Lightning's DistributedSampler pads the last share), its
    loader drops an incomplete last batch, and with `trainer.accumulate_grad_batches` = k every k batches make a
    step, the epoch's last incomplete group included. A fractional `epochs` rounds to the nearest step."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from cifar_lightning.checkpoints import BestCheckpoint  # imports trust.py, which imports this module
    from cifar_lightning.module import ImageClassifier

    train_images = len(datamodule.splits["train"])
    if cfg.batch_size > train_images:
        raise UserError(
            f"batch_size={cfg.batch_size} is larger than the training split ({train_images} images): "
            f"lower batch_size or data.val_size"
        )
    logged = ImageClassifier.logged_metrics(datamodule.validates)
    for callback in callbacks:
        monitor = getattr(callback, "monitor", None)
        if monitor and monitor not in logged:
            raise UserError(
                f"{type(callback).__name__} watches monitor={monitor!r}, which this run never logs "
                f"(it logs {', '.join(logged)}): set its monitor to one of them"
            )
    saves = [c for c in callbacks if isinstance(c, ModelCheckpoint) and c.dirpath]
    written = [Path(os.path.realpath(str(c.dirpath))) / f"{c.filename}.ckpt" for c in saves]  # as Lightning's realpath
    for callback in callbacks:
        if isinstance(callback, BestCheckpoint) and Path(os.path.realpath(callback.source)) not in written:
            raise UserError(
                f"callbacks: BestCheckpoint copies {callback.source}, which no ModelCheckpoint writes: keep "
                f"callbacks.last_checkpoint, or set callbacks.model_checkpoint=null too"
            )
    accumulate = cfg.trainer.get("accumulate_grad_batches", 1)
    batches = math.ceil(train_images / processes) // cfg.batch_size
    steps = round(cfg.epochs * math.ceil(batches / accumulate))
    if steps < 1:
        raise UserError(
            f"epochs={cfg.epochs} makes {cfg.epochs * math.ceil(batches / accumulate):.2g} optimizer steps of "
            f"{cfg.batch_size} x {accumulate} images on {train_images} training images ({processes} process(es)): "
            f"a run needs at least one; raise epochs or lower batch_size"
        )
    return steps
