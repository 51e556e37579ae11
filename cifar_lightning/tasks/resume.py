"""`python train.py resume=RUN|latest`: continue an interrupted run in its own folder, from its last.ckpt,
with the config it was started with, appending to its metrics.csv."""

from collections.abc import Sequence
from pathlib import Path
from typing import cast

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from cifar_lightning.checkpoints import AtomicCheckpointIO, load_checkpoint
from cifar_lightning.errors import UserError
from cifar_lightning.runs import RunFolder
from cifar_lightning.trust import run_config


def resume_config(cfg: DictConfig, overrides: list[str]) -> tuple[DictConfig, Path | None]:
    """The resumed run's own config (its folder as output_dir) and its last checkpoint; None for a run that
    finished, which is left as it is. Hydra's run folder is already the run to resume (runs.run_dir)."""
    run = RunFolder(cfg.paths.output_dir)
    # the run's own overrides may be repeated (a resumed sweep does); trial= is set by an Optuna sweeper resuming
    # the run as one of its trials
    allowed = ("resume=", "paths.root=", "trusted_modules=", "trial=")
    others = [o for o in overrides if not o.startswith(allowed) and o not in run.recorded_overrides()]
    if others:
        raise UserError(f"resume= continues a run with the config it was started with; drop {' '.join(others)}")
    last = run.checkpoint("last")
    if not last.is_file():
        missing = (
            f"no run under {cfg.paths.root}/ has a checkpoints/last.ckpt"
            if cfg.resume == "latest"
            else f"{RunFolder(cfg.resume).checkpoint('last')} does not exist"
        )
        raise UserError(
            f"resume={cfg.resume}: {missing}, so there is nothing to resume (a run folder holds .hydra/ "
            f"and checkpoints/)"
        )
    if not run.config.is_file():
        raise UserError(f"resume={cfg.resume}: {run.config} does not exist, so the run's config is unknown")
    trusted = list(cfg.get("trusted_modules") or ())
    config = run_config(run.config, run.path, trusted)  # from disk: checked before anything is built from it
    csv_logger = (config.get("logger") or {}).get("csv")
    if csv_logger is not None and csv_logger.get("_target_") == "lightning.pytorch.loggers.CSVLogger":
        # a run from before the project's CSVLogger: Lightning's would delete the rows it has
        csv_logger["_target_"] = "cifar_lightning.loggers.CSVLogger"
    config.resume = None
    config.trusted_modules = trusted
    config.trial = cfg.get("trial")  # the trial the resumed run now reports to, if a sweeper gave one; else none
    return config, None if run.finished else last


def read_last(last: Path, trusted_modules: Sequence[str] = ()) -> dict:
    """The checkpoint to resume from, read and checked like any other before Lightning is given it."""
    try:
        return load_checkpoint(last, trusted_modules)
    except UserError as e:
        raise UserError(
            f"cannot resume: {e}. Start a new run, or copy checkpoints/best.ckpt over it to continue "
            f"from the best epoch"
        ) from None


def model_checkpoints(trainer: L.Trainer) -> list[ModelCheckpoint]:
    """trainer.checkpoint_callbacks, which Lightning types as its Checkpoint base (no monitor, best_model_path, ...):
    its docstring and every checkpoint callback of configs/callbacks/ are ModelCheckpoint."""
    return cast(list[ModelCheckpoint], trainer.checkpoint_callbacks)


def keep_best(trainer: L.Trainer, checkpoint: dict, last: Path) -> None:
    """last.ckpt is saved before best.ckpt; a run killed between the two has, in last.ckpt only, an epoch that may
    beat best.ckpt. Then it becomes best.ckpt, and both files record it as the best, as the run would have."""
    for callback in model_checkpoints(trainer):
        state = checkpoint.get("callbacks", {}).get(callback.state_key)
        score = checkpoint.get("epoch_metrics", {}).get(callback.monitor)
        if not callback.monitor or state is None or score is None:
            continue
        best = state["best_model_score"]
        if best is not None and not (score > best if callback.mode == "max" else score < best):
            continue
        assert callback.dirpath is not None  # configs/callbacks/ name it (the run's checkpoints/)
        path, score = str(Path(callback.dirpath) / f"{callback.filename}.ckpt"), torch.tensor(score)
        state.update(
            best_model_score=score,
            current_score=score,
            best_model_path=path,
            best_k_models={path: score},
            kth_best_model_path=path,
            kth_value=score,
        )
        for target in (path, last):
            AtomicCheckpointIO().save_checkpoint(checkpoint, target)
