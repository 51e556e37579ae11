"""One training run from a composed config: data, module, callbacks, loggers, trainer, fit, test."""
import json
import logging
import time
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from cifar_lightning.data import ImageDataModule
from cifar_lightning.module import ImageClassifier

log = logging.getLogger(__name__)


def instantiate_all(configs: DictConfig | None) -> list:
    """Builds every entry of a group like callbacks or logger; entries set to null are off."""
    return [instantiate(c) for c in (configs or {}).values() if c is not None]


def build(cfg: DictConfig) -> tuple[ImageDataModule, ImageClassifier, L.Trainer]:
    """The data (loaded), the module (with the data's classes and normalisation) and the trainer of a config."""
    L.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    mean, std = datamodule.channel_stats()
    module = instantiate(cfg.module, class_names=datamodule.class_names, mean=mean, std=std, _recursive_=False)
    trainer = instantiate(cfg.trainer, callbacks=instantiate_all(cfg.callbacks), logger=instantiate_all(cfg.logger))
    return datamodule, module, trainer


def train(cfg: DictConfig) -> dict:
    """Trains, tests the best checkpoint, writes summary.json into the run folder and returns the summary."""
    datamodule, module, trainer = build(cfg)

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    fit_seconds = time.perf_counter() - start

    checkpoint = trainer.checkpoint_callback
    best_path = checkpoint.best_model_path if checkpoint else ""
    summary = {
        "best_val_acc": float(checkpoint.best_model_score) if checkpoint and checkpoint.best_model_score is not None
        else None,
        "epochs": trainer.current_epoch,
        "fit_seconds": round(fit_seconds, 1),
        "best_checkpoint": best_path,
    }
    if "test" in datamodule.splits:
        results = trainer.test(module, datamodule=datamodule, ckpt_path=best_path or None, verbose=False)
        summary.update(test_acc=results[0]["test/acc"], test_loss=results[0]["test/loss"])
    if trainer.is_global_zero:
        out = Path(cfg.paths.output_dir)
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        log.info("best val acc %s | test acc %s | wall time %.0f s | %s", _pct(summary["best_val_acc"]),
                 _pct(summary.get("test_acc")), fit_seconds, out)
    return summary


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"
