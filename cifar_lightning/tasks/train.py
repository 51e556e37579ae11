"""One training run from a composed config: data, module, callbacks, loggers, trainer, fit, test."""

import contextlib
import json
import logging
import math
import platform
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from cifar_lightning import tracking
from cifar_lightning.calibration import fit_on_validation
from cifar_lightning.callbacks import CountTrainingFlops, StopAtMaxSteps
from cifar_lightning.checkpoints import MODEL_CONFIGS, check_model_config, write_atomic, write_temperature
from cifar_lightning.checks import check_arguments, fits
from cifar_lightning.cli import config_tree
from cifar_lightning.data import ImageDataModule
from cifar_lightning.errors import UserError
from cifar_lightning.module import ImageClassifier, plain
from cifar_lightning.tasks.resume import keep_best, keep_metrics, read_last

log = logging.getLogger(__name__)
# Normalisation and augmentation live in the LightningModule on purpose (a checkpoint must carry them).
warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer` in `LightningModule`.*")
# metrics.csv shares the run folder with .hydra/ and train.log by design
warnings.filterwarnings("ignore", message=".*Experiment logs directory .* exists and is not empty.*")
# bf16-mixed keeps fp32 weights, so the model summary's fallback to 32 bits gives the right size
warnings.filterwarnings("ignore", message=".*is not supported by the model summary.*")


SUMMARY_METRICS = ("best_val_acc", "test_acc", "test_loss", "fit_seconds")  # what a sweeper can optimise


def instantiate_all(configs: DictConfig | dict | None) -> list:
    """Builds every entry of a group like callbacks or logger; entries set to null are off."""
    return [instantiate(c) for c in (configs or {}).values() if c is not None]


def check(cfg: DictConfig) -> None:
    """Values Hydra accepts but no run can use: refused before any data is loaded, each in one line that names
    the key. Every group's values are checked against the signature of what they build (as a checkpoint's are),
    and the net, augmentation, optimizer and schedule are built once on a tiny scale, so that a value their
    constructors refuse is reported now, naming its group."""
    if not fits(cfg.epochs, float) or not cfg.epochs > 0:
        raise UserError(f"epochs={cfg.epochs!r} must be a positive number (a fraction stops the last epoch early)")
    if not fits(cfg.batch_size, int) or cfg.batch_size < 1:
        raise UserError(f"batch_size={cfg.batch_size!r} must be a whole number of at least 1")
    accumulate = cfg.trainer.get("accumulate_grad_batches", 1)  # Lightning divides by it unchecked
    if not fits(accumulate, int) or accumulate < 1:
        raise UserError(f"trainer.accumulate_grad_batches={accumulate!r} must be a whole number of at least 1")
    if not fits(cfg.seed, int) or not 0 <= cfg.seed < 2**32:
        raise UserError(f"seed={cfg.seed!r} must be a whole number from 0 to {2**32 - 1}")
    lr = cfg.optimizer.get("lr")
    if not fits(lr, float) or not lr > 0:
        raise UserError(f"optimizer.lr={lr!r} must be a positive number")
    data = {k: v for k, v in plain(cfg.data).items() if k != "_target_"}
    check_arguments(ImageDataModule, data, "data")
    ImageDataModule(**data)  # its own ranges
    module = {k: v for k, v in plain(cfg.module).items() if k not in ("_target_", *MODEL_CONFIGS)}
    check_arguments(ImageClassifier, module, "module")
    if module.get("tta", 0) not in (0, 1, 2):
        raise UserError(f"module.tta={module['tta']!r} must be 0 (off), 1 (mirror) or 2 (six views)")
    if not 0 <= module.get("label_smoothing", 0) < 1:
        raise UserError(f"module.label_smoothing={module['label_smoothing']!r} must be at least 0 and below 1")
    # .get: a run folder from before these keys existed is resumed with their defaults
    if cfg.get("optimized_metric", "best_val_acc") not in SUMMARY_METRICS:
        raise UserError(f"optimized_metric={cfg.optimized_metric!r} must be one of {', '.join(SUMMARY_METRICS)}")
    if not fits(print_config(cfg), bool):
        raise UserError(f"extras.print_config={print_config(cfg)!r} must be true or false")
    if cfg.calibration not in ("temperature", "none"):
        raise UserError(f"calibration={cfg.calibration!r} must be temperature or none")
    if module.get("loss_reduction", "mean") not in ("mean", "sum"):
        raise UserError(f"module.loss_reduction={module['loss_reduction']!r} must be mean or sum")
    for group, kind in (
        ("model", "net"),
        ("augmentation", "augmentation"),
        ("optimizer", "optimizer"),
        ("scheduler", "scheduler"),
    ):
        if cfg.get(group) is not None:
            check_model_config(plain(cfg[group]), kind, group)
    lightning_parts = {
        "trainer": cfg.trainer,
        **{
            f"{group}.{name}": part
            for group in ("callbacks", "logger")
            for name, part in (cfg.get(group) or {}).items()
            if part is not None
        },
    }
    for where, part in lightning_parts.items():  # the user's own config: its targets may be anything importable
        # plugins and objects given as configs (a profiler) are built by Hydra, which names what it refuses; a
        # fractional max_epochs (= epochs) is rounded up by build()
        kwargs = {
            k: v
            for k, v in plain(part).items()
            if not k.startswith("_")
            and k != "plugins"
            and not (isinstance(v, dict) and "_target_" in v)
            and not (where == "trainer" and k == "max_epochs" and not float(cfg.epochs).is_integer())
        }
        check_arguments(get_object(part._target_), kwargs, where)
    _build_small(cfg, data.get("image_size", 32))


def _build_small(cfg: DictConfig, image_size: int) -> None:
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


def print_config(cfg: DictConfig) -> bool:
    return (cfg.get("extras") or {}).get("print_config", True)


def refused(group: str, error: Exception) -> UserError:
    """A constructor's refusal of the values of a config group, as one line (Hydra wraps it in its own error)."""
    cause = error.__cause__ if isinstance(error, InstantiationException) and error.__cause__ else error
    return UserError(
        f"{group} cannot be built from these values: {type(cause).__name__}: {str(cause).strip().splitlines()[0][:300]}"
    )


def build(cfg: DictConfig) -> tuple[ImageDataModule, ImageClassifier, L.Trainer]:
    """The data (loaded), the module (with the data's classes and normalisation) and the trainer of a config.
    The trainer, its callbacks and loggers are built before the data loads: their refusals come first."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    fractional = not float(cfg.epochs).is_integer()  # e.g. 9.9: whole epochs, then part of one more
    try:
        group = "callbacks"
        callbacks = instantiate_all(without_validation(cfg.callbacks, datamodule))
        group = "logger"
        tracking.prepare(cfg)
        loggers = instantiate_all(cfg.logger)
        group = "trainer"
        trainer = instantiate(
            cfg.trainer,
            callbacks=[*callbacks, CountTrainingFlops(), *([StopAtMaxSteps()] if fractional else [])],
            logger=loggers,
            **({"max_epochs": math.ceil(cfg.epochs)} if fractional else {}),
        )
    except InstantiationException as e:
        raise refused(group, e) from None
    datamodule.setup("fit")
    mean, std = datamodule.channel_stats()
    module = instantiate(
        cfg.module,
        class_names=datamodule.class_names,
        mean=mean,
        std=std,
        image_size=datamodule.image_size,
        _recursive_=False,
    )
    module.init_from_data(datamodule.training_images(5000))  # a resumed run then loads its own weights over these
    if fractional:  # counted per process: under DDP each one trains on its own share of every epoch
        # in optimizer steps: with accumulation the last, incomplete group of an epoch still makes a step
        steps_per_epoch = math.ceil(datamodule.train_batches(trainer.world_size) / trainer.accumulate_grad_batches)
        trainer.fit_loop.epoch_loop.max_steps = round(cfg.epochs * steps_per_epoch)
    return datamodule, module, trainer


def without_validation(callbacks: DictConfig, datamodule: ImageDataModule) -> DictConfig | dict:
    """With data.val_size=0 nothing is validated: best.ckpt then follows the latest epoch, and callbacks that
    watch a val/ metric (early stopping) are left out."""
    if datamodule.validates:
        return callbacks
    kept = {}
    for name, callback in OmegaConf.to_container(callbacks or {}, resolve=True).items():
        watches_val = callback is not None and str(callback.get("monitor", "")).startswith("val/")
        if watches_val and callback["_target_"].endswith("ModelCheckpoint"):
            callback["monitor"] = None
        elif watches_val:
            continue
        kept[name] = callback
    return kept


def train(cfg: DictConfig, resume_from: Path | None = None) -> dict:
    """Trains (from a checkpoint of the same run, if given), tests the best checkpoint, writes summary.json
    into the run folder and returns the summary."""
    check(cfg)
    if rank_zero_only.rank != 0:  # under DDP every process runs this; one reports (Lightning's own logs do the same)
        logging.getLogger("cifar_lightning").setLevel(logging.WARNING)
    tree = config_tree(cfg) if print_config(cfg) and rank_zero_only.rank == 0 else None
    datamodule, module, trainer = build(cfg)
    if trainer.is_global_zero:
        if tree:  # written once nothing has refused the config: a refused run leaves no folder behind
            out = Path(cfg.paths.output_dir)
            out.mkdir(parents=True, exist_ok=True)
            write_atomic(out / "config_tree.txt", tree)
        tracking.start(trainer.loggers, cfg)
    if resume_from:
        last = read_last(resume_from)
        keep_metrics(trainer, last)
        keep_best(trainer, last, resume_from)

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    fit_seconds = time.perf_counter() - start
    # read now: testing or calibrating from best.ckpt restores the count saved with it
    training_flops = next(c for c in trainer.callbacks if isinstance(c, CountTrainingFlops)).total_flops

    # best.ckpt's: the one that watches val/acc, else (nothing validated) the last configured, which follows the epochs
    checkpoint = next((c for c in trainer.checkpoint_callbacks if c.monitor), None) or (
        trainer.checkpoint_callbacks[-1] if trainer.checkpoint_callbacks else None
    )
    best_path = checkpoint.best_model_path if checkpoint else ""
    summary = {
        "temperature": calibrate(cfg, trainer, module, datamodule, best_path),
        "best_val_acc": float(checkpoint.best_model_score)
        if checkpoint and checkpoint.best_model_score is not None
        else None,
        "epochs": trainer.current_epoch,
        "fit_seconds": round(fit_seconds, 1),
        "training_pflop": training_flops / 1e15,
        "best_checkpoint": best_path,
        "hardware": hardware(trainer),
    }
    if "test" in datamodule.splits:
        results = trainer.test(module, datamodule=datamodule, ckpt_path=best_path or None, verbose=False)
        summary.update(test_acc=results[0]["test/acc"], test_loss=results[0]["test/loss"])
    if trainer.is_global_zero:
        out = Path(cfg.paths.output_dir)
        write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        tracking.finish(trainer.loggers, summary, out / "summary.json")
        log.info(
            "best val acc %s | test acc %s | wall time %.0f s | %s",
            _pct(summary["best_val_acc"]),
            _pct(summary.get("test_acc")),
            fit_seconds,
            out,
        )
    return summary


def calibrate(
    cfg: DictConfig, trainer: L.Trainer, module: ImageClassifier, datamodule: ImageDataModule, best_path: str
) -> float:
    """calibration=temperature: the temperature fitted on the validation split with the best weights, set in the
    module and written into every checkpoint of the run. Returns it (1 when nothing was fitted)."""
    if cfg.calibration != "temperature":
        return 1.0
    if not datamodule.validates:
        log.info("calibration=temperature: data.val_size=0 leaves no validation images to fit it on; it stays 1")
        return 1.0
    if not best_path:
        log.info("calibration=temperature: no checkpoint was saved (trainer.fast_dev_run?); it stays 1")
        return 1.0
    if trainer.world_size > 1:  # the predict loop would give each process only its shard
        log.info(
            "calibration=temperature is not fitted under DDP: run python evaluate.py ckpt=%s calibrate=true",
            Path(cfg.paths.output_dir),
        )
        return 1.0
    temperature = fit_on_validation(trainer, module, datamodule, ckpt_path=best_path)
    module.temperature.fill_(temperature)
    for path in {c.best_model_path for c in trainer.checkpoint_callbacks if c.best_model_path}:
        write_temperature(path, temperature)
    log.info("calibration: temperature %.4f fitted on %d validation images", temperature, len(datamodule.splits["val"]))
    return temperature


def hardware(trainer: L.Trainer) -> dict:
    """What the run's times were measured on: a time means little without it."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    gpu = torch.cuda.get_device_name() if trainer.strategy.root_device.type == "cuda" else None
    return {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "gpu": gpu,
        "devices": trainer.world_size,
        "precision": trainer.precision,
        "torch": torch.__version__,
        "lightning": L.__version__,
    }


def _pct(x: torch.Tensor) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"
