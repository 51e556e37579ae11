"""The train command's schema: its own keys, every group against the signature of what it builds, and the checks
that need several values together, once before the data loads (check_train_config) and once its sizes are known
(run_length). Every refusal is one UserError line naming the key."""

import inspect
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from annotated_types import Ge, Gt, Interval
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from cifar_lightning.blocks.checks import ACCUMULATE, check_arguments, check_target, check_value
from cifar_lightning.blocks.data import ImageDataModule
from cifar_lightning.blocks.errors import UserError
from cifar_lightning.blocks.module import ImageClassifier, plain
from cifar_lightning.store.checkpoints import BestCheckpoint
from cifar_lightning.store.trust import MODEL_CONFIGS

SUMMARY_METRICS = ("best_val_acc", "test_acc", "test_loss", "fit_seconds")  # what a sweeper can optimise
LOWER_IS_BETTER = ("test_loss", "fit_seconds")  # to be minimised; the others maximised


@dataclass
class TrainOptions:
    """The run's own keys in configs/train.yaml (the groups are checked against what they build)."""

    epochs: Annotated[float, Gt(0), "must be a positive number (a fraction stops the last epoch early)"]
    batch_size: Annotated[int, Ge(1), "must be a whole number of at least 1"]
    seed: Annotated[int, Interval(ge=0, lt=2**32), f"must be a whole number from 0 to {2**32 - 1}"]
    resume: str | None = None
    calibration: Annotated[Literal["temperature", "none"], "must be temperature or none"] = "temperature"
    optimized_metric: Annotated[
        Literal[SUMMARY_METRICS], f"must be one of {', '.join(SUMMARY_METRICS)}"  # type: ignore[valid-type]
    ] = "best_val_acc"
    trusted_modules: list[str] | None = None  # modules a resumed run's config may name, beside the project's own


def check_train_config(cfg: Any, options: type) -> None:
    """A composed train config, before any data loads: its own keys against `options` (a dataclass), every group
    against the signature of what it builds, and the net, augmentation, optimizer and schedule built once on a
    tiny scale, so that a value only their constructors refuse is reported now, naming its group."""
    values = {k: plain(v) for k, v in cfg.items() if not isinstance(v, DictConfig)}
    check_arguments(options, {k: v for k, v in values.items() if k in _fields(options)}, "")
    print_config = (cfg.get("extras") or {}).get("print_config", False)
    check_value("extras.print_config", print_config, Annotated[bool, "must be true or false"])
    check_arguments(ImageDataModule, {k: v for k, v in plain(cfg.data).items() if k != "_target_"}, "data")
    module = {k: v for k, v in plain(cfg.module).items() if k not in ("_target_", *MODEL_CONFIGS)}
    check_arguments(ImageClassifier, module, "module")
    for group in ("model", "augmentation", "optimizer", "scheduler"):
        if cfg.get(group) is not None:
            check_target(plain(cfg[group]), group)
    trainer = {
        k: v
        for k, v in plain(cfg.trainer).items()
        # plugins and objects given as configs (a profiler) are built by Hydra, which names what it refuses
        if k != "plugins" and not (isinstance(v, dict) and "_target_" in v)
    }
    if "max_epochs" in trainer or "max_steps" in trainer:  # train.build sets both from epochs: these would be ignored
        key = "max_epochs" if "max_epochs" in trainer else "max_steps"
        raise UserError(
            f"trainer.{key}={trainer[key]!r}: the run's length is set by epochs alone (epochs={cfg.epochs}): remove "
            f"trainer.{key} (from the run's .hydra/overrides.yaml or the configs, when resuming) and set epochs"
        )
    check_target(trainer, "trainer")
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
    _check_batch_norm(module.net, cfg.batch_size, image_size)


BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)


def _check_batch_norm(net: torch.nn.Module, batch_size: int, image_size: int) -> None:
    """Refuses batch_size=1 for a net with a BatchNorm layer whose input is 1x1: in training BatchNorm normalises
    each channel over the batch's values of it (images x positions), and needs more than one. Every training batch
    holds batch_size images, in each process under DDP too (the loader drops an incomplete last batch). The
    positions are counted on one image, in eval mode (nothing learnt, running statistics unchanged)."""
    if batch_size > 1:  # two images give every channel two values or more
        return
    positions: dict[str, int] = {}

    def count(name: str) -> Callable:
        def hook(layer: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:  # None: the inputs unchanged
            positions[name] = inputs[0][0].numel() // inputs[0].shape[1]

        return hook

    layers = [(name, layer) for name, layer in net.named_modules() if isinstance(layer, BATCH_NORMS)]
    hooks = [layer.register_forward_pre_hook(count(name)) for name, layer in layers]
    training = net.training
    try:
        with torch.no_grad():
            net.eval()(torch.zeros(1, 3, image_size, image_size))
    finally:
        net.train(training)
        for hook in hooks:
            hook.remove()
    starved = [name for name, n in positions.items() if n == 1]
    if starved:
        raise UserError(
            f"batch_size=1 with {image_size}x{image_size} images: the net's BatchNorm layer net.{starved[0]} sees "
            f"1x1 inputs, so one image per batch gives it a single value per channel in training, and BatchNorm "
            f"needs at least 2; raise batch_size to 2 or more (it is per process under DDP)"
        )


def refused(group: str, error: Exception) -> UserError:
    """A constructor's refusal of the values of a config group, as one line (Hydra wraps it in its own error)."""
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
    loader drops an incomplete last batch, `trainer.limit_train_batches` cuts the epoch as Lightning does (a whole
    number: at most that many batches; a fraction: that share, rounded down), and with
    `trainer.accumulate_grad_batches` = k every k batches make a step, the epoch's last incomplete group included. A
    fractional `epochs` rounds to the nearest step."""
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
    batches = datamodule.train_batches(processes)
    limit = cfg.trainer.get("limit_train_batches")
    if isinstance(limit, int) and not isinstance(limit, bool):
        batches = min(batches, limit)
    elif isinstance(limit, float):
        batches = int(batches * limit)
    steps = round(cfg.epochs * math.ceil(batches / accumulate))
    if steps < 1:
        raise UserError(
            f"epochs={cfg.epochs} makes {cfg.epochs * math.ceil(batches / accumulate):.2g} optimizer steps of "
            f"{cfg.batch_size} x {accumulate} images on {train_images} training images ({processes} process(es)): "
            f"a run needs at least one; raise epochs or lower batch_size"
        )
    return steps


def check_reportable(metric: str, datamodule: ImageDataModule) -> None:
    """Raises UserError when a job of an Optuna search would end without the metric its trial is told."""
    if metric == "best_val_acc" and not datamodule.validates:
        raise UserError(
            "optimized_metric=best_val_acc needs validation, and data.val_size=0 holds none out: "
            "set data.val_size or optimized_metric=test_acc"
        )
    if metric.startswith("test_") and "test" not in datamodule.splits:
        raise UserError(f"optimized_metric={metric} needs a test split, and this data has none: use best_val_acc")
