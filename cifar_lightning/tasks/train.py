"""One training run from a composed config: data, module, callbacks, loggers, trainer, fit, test."""
import contextlib
import json
import math
import logging
import platform
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cifar_lightning.callbacks import StopAtMaxSteps
from cifar_lightning.errors import UserError
from cifar_lightning.data import ImageDataModule
from cifar_lightning.module import ImageClassifier
from cifar_lightning.checkpoints import write_atomic
from cifar_lightning.tasks.resume import keep_best, keep_metrics, read_last

log = logging.getLogger(__name__)
# Normalisation and augmentation live in the LightningModule on purpose (a checkpoint must carry them).
warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer` in `LightningModule`.*")
# metrics.csv shares the run folder with .hydra/ and train.log by design
warnings.filterwarnings("ignore", message=".*Experiment logs directory .* exists and is not empty.*")


def instantiate_all(configs: DictConfig | dict | None) -> list:
    """Builds every entry of a group like callbacks or logger; entries set to null are off."""
    return [instantiate(c) for c in (configs or {}).values() if c is not None]


def check(cfg: DictConfig) -> None:
    """Values Hydra accepts but no run can use: refused before any data is loaded."""
    if not _is_number(cfg.epochs) or not cfg.epochs > 0:
        raise UserError(f"epochs={cfg.epochs!r} must be a positive number (a fraction stops the last epoch early)")
    if not isinstance(cfg.batch_size, int) or isinstance(cfg.batch_size, bool) or cfg.batch_size < 1:
        raise UserError(f"batch_size={cfg.batch_size!r} must be a whole number of at least 1")
    lr = cfg.optimizer.get("lr")
    if not _is_number(lr) or not lr > 0:
        raise UserError(f"optimizer.lr={lr!r} must be a positive number")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def build(cfg: DictConfig) -> tuple[ImageDataModule, ImageClassifier, L.Trainer]:
    """The data (loaded), the module (with the data's classes and normalisation) and the trainer of a config."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    mean, std = datamodule.channel_stats()
    module = instantiate(cfg.module, class_names=datamodule.class_names, mean=mean, std=std,
                         image_size=datamodule.image_size, _recursive_=False)
    module.init_from_data(datamodule.training_images(5000))  # a resumed run then loads its own weights over these
    callbacks, fractional = instantiate_all(without_validation(cfg.callbacks, datamodule)), {}
    if not float(cfg.epochs).is_integer():  # e.g. 9.9: whole epochs, then part of one more
        steps = round(cfg.epochs * len(datamodule.train_dataloader()))
        fractional = dict(max_epochs=math.ceil(cfg.epochs), max_steps=steps)
        callbacks.append(StopAtMaxSteps())
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=instantiate_all(cfg.logger), **fractional)
    return datamodule, module, trainer


def without_validation(callbacks: DictConfig, datamodule: ImageDataModule) -> DictConfig | dict:
    """With data.val_size=0 nothing is validated: best.ckpt then follows the latest epoch, and callbacks that
    watch a val/ metric (early stopping) are left out."""
    if "val" in datamodule.splits:
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
    datamodule, module, trainer = build(cfg)
    if resume_from:
        last = read_last(resume_from)
        keep_metrics(trainer, last)
        keep_best(trainer, last, resume_from)

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    fit_seconds = time.perf_counter() - start

    # best.ckpt's: the one that watches val/acc, else (nothing validated) the last configured, which follows the epochs
    checkpoint = next((c for c in trainer.checkpoint_callbacks if c.monitor), None) or (
        trainer.checkpoint_callbacks[-1] if trainer.checkpoint_callbacks else None)
    best_path = checkpoint.best_model_path if checkpoint else ""
    summary = {
        "best_val_acc": float(checkpoint.best_model_score) if checkpoint and checkpoint.best_model_score is not None
        else None,
        "epochs": trainer.current_epoch,
        "fit_seconds": round(fit_seconds, 1),
        "best_checkpoint": best_path,
        "hardware": hardware(trainer),
    }
    if "test" in datamodule.splits:
        results = trainer.test(module, datamodule=datamodule, ckpt_path=best_path or None, verbose=False)
        summary.update(test_acc=results[0]["test/acc"], test_loss=results[0]["test/loss"])
    if trainer.is_global_zero:
        out = Path(cfg.paths.output_dir)
        write_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        log.info("best val acc %s | test acc %s | wall time %.0f s | %s", _pct(summary["best_val_acc"]),
                 _pct(summary.get("test_acc")), fit_seconds, out)
    return summary


def hardware(trainer: L.Trainer) -> dict:
    """What the run's times were measured on: a time means little without it."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    gpu = torch.cuda.get_device_name() if trainer.strategy.root_device.type == "cuda" else None
    return {"cpu": cpu, "threads": torch.get_num_threads(), "gpu": gpu, "devices": trainer.world_size,
            "torch": torch.__version__, "lightning": L.__version__}


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"
