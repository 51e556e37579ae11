"""`python train.py resume=RUN|latest`: continue an interrupted run in its own folder, from its last.ckpt,
with the config it was started with, appending to its metrics.csv."""

import csv
import secrets
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from cifar_lightning.checkpoints import AtomicCheckpointIO, load_checkpoint, newest, run_dir_of
from cifar_lightning.errors import UserError


def register_resolvers() -> None:
    """Run folders: each new one claimed on disk (two runs started in the same second never share one), a resumed
    run's own, and the resuming call's config beside the original. Cached, so a folder is chosen once per run
    (Hydra copies the cache into every job of a sweep)."""
    OmegaConf.register_new_resolver("new_dir", new_dir, replace=True, use_cache=True)
    OmegaConf.register_new_resolver("run_dir", _run_dir, replace=True, use_cache=True)
    OmegaConf.register_new_resolver(
        "config_subdir",
        lambda resume: f".hydra/resume_{time.strftime('%Y-%m-%d_%H-%M-%S')}" if resume else ".hydra",
        replace=True,
    )


def new_dir(parent: str) -> str:
    """A new folder in `parent` named by the time (so names sort by start) and a random suffix, created here:
    mkdir fails if the name is taken, by another process too, and another suffix is drawn."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    while True:
        folder = Path(parent) / f"{stamp}_{secrets.token_hex(3)}"
        try:
            folder.mkdir(parents=True)
            return str(folder)
        except FileExistsError:
            continue


def _run_dir(resume: str | None, outputs: str) -> str:
    """resume=RUN: RUN, if it holds a last.ckpt; resume=latest: the newest run with a last.ckpt under `outputs`;
    otherwise a new folder under outputs/runs (where resume_config then finds nothing to resume, rather than
    Hydra making a folder wherever resume= pointed)."""
    if resume == "latest":
        last = newest(Path(outputs), "last")
        if last:
            return str(run_dir_of(last))
    elif resume and (Path(resume) / "checkpoints" / "last.ckpt").is_file():
        return resume
    return new_dir(f"{outputs}/runs")


def resume_config(cfg: DictConfig, overrides: list[str]) -> tuple[DictConfig, Path]:
    """The resumed run's own config (its folder as output_dir) and its last checkpoint. Hydra's run folder is
    already the run to resume (the run_dir resolver)."""
    others = [o for o in overrides if not o.startswith(("resume=", "paths.root="))]
    if others:
        raise UserError(f"resume= continues a run with the config it was started with; drop {' '.join(others)}")
    run = Path(cfg.paths.output_dir)
    last, saved = run / "checkpoints" / "last.ckpt", run / ".hydra" / "config.yaml"
    if not last.is_file():
        missing = (
            f"no run under {cfg.paths.root}/ has a checkpoints/last.ckpt"
            if cfg.resume == "latest"
            else f"{Path(cfg.resume) / 'checkpoints' / 'last.ckpt'} does not exist"
        )
        raise UserError(
            f"resume={cfg.resume}: {missing}, so there is nothing to resume (a run folder holds .hydra/ "
            f"and checkpoints/)"
        )
    if not saved.is_file():
        raise UserError(f"resume={cfg.resume}: {saved} does not exist, so the run's config is unknown")
    config = OmegaConf.load(saved)
    config.paths.output_dir = str(run)
    config.resume = None
    return config, last


def read_last(last: Path) -> dict:
    """The checkpoint to resume from, read and checked like any other before Lightning is given it."""
    try:
        return load_checkpoint(last)
    except UserError as e:
        raise UserError(
            f"cannot resume: {e}. Start a new run, or copy checkpoints/best.ckpt over it to continue "
            f"from the best epoch"
        ) from None


def keep_metrics(trainer: L.Trainer, checkpoint: dict) -> None:
    """Lightning's CSVLogger starts metrics.csv afresh; put back the rows of the epochs the checkpoint
    completed (dropping those of the epoch that was cut short, which is about to run again). A run killed after
    its checkpoints but before Lightning wrote that epoch's rows gets them from the checkpoint itself."""
    global_step = checkpoint["global_step"]
    for logger in trainer.loggers:
        if not isinstance(logger, CSVLogger):
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        header, rows = [], []
        if path.is_file():
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                header, rows = reader.fieldnames or [], [r for r in reader if int(r["step"]) < global_step]
        epoch = str(checkpoint["epoch"])
        missing = {
            k: v
            for k, v in checkpoint.get("epoch_metrics", {}).items()
            if not any(r["epoch"] == epoch and r.get(k) for r in rows)
        }
        if missing:
            header += [k for k in ("epoch", "step", *missing) if k not in header]
            rows.append({"epoch": epoch, "step": str(global_step - 1), **missing})
        writer = logger.experiment  # created now: this is when it removes the old file
        with open(path, "w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=header)
            out.writeheader()
            out.writerows(rows)
        writer.metrics_keys = list(header)


def keep_best(trainer: L.Trainer, checkpoint: dict, last: Path) -> None:
    """last.ckpt is saved before best.ckpt; a run killed between the two has, in last.ckpt only, an epoch that may
    beat best.ckpt. Then it becomes best.ckpt, and both files record it as the best, as the run would have."""
    for callback in trainer.checkpoint_callbacks:
        state = checkpoint.get("callbacks", {}).get(callback.state_key)
        score = checkpoint.get("epoch_metrics", {}).get(callback.monitor)
        if not callback.monitor or state is None or score is None:
            continue
        best = state["best_model_score"]
        if best is not None and not (score > best if callback.mode == "max" else score < best):
            continue
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
