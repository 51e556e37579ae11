"""`python train.py resume=RUN|latest`: continue an interrupted run in its own folder, from its last.ckpt,
with the config it was started with, appending to its metrics.csv."""
import csv
import time
from pathlib import Path

import torch
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig, OmegaConf

from cifar_lightning.checkpoints import newest, run_dir_of
from cifar_lightning.errors import UserError


def register_resolvers() -> None:
    """Hydra's run folder is the resumed run's own (found here, once), and the resuming call's config goes
    beside the original."""
    OmegaConf.register_new_resolver("run_dir", _run_dir, replace=True)
    OmegaConf.register_new_resolver(
        "config_subdir", lambda resume: f".hydra/resume_{time.strftime('%Y-%m-%d_%H-%M-%S')}" if resume else ".hydra",
        replace=True)


def _run_dir(resume: str | None, outputs: str, new: str) -> str:
    """resume=RUN: RUN; resume=latest: the newest run with a last.ckpt under `outputs` (or, if there is none, a new
    folder, where resume_config finds nothing to resume); no resume: a new folder."""
    if resume == "latest":
        last = newest(Path(outputs), "last")
        return str(run_dir_of(last)) if last else new
    return resume or new


def resume_config(cfg: DictConfig, overrides: list[str]) -> tuple[DictConfig, Path]:
    """The resumed run's own config (its folder as output_dir) and its last checkpoint. Hydra's run folder is
    already the run to resume (the run_dir resolver)."""
    others = [o for o in overrides if not o.startswith(("resume=", "paths.root="))]
    if others:
        raise UserError(f"resume= continues a run with the config it was started with; drop {' '.join(others)}")
    run = Path(cfg.paths.output_dir)
    last, saved = run / "checkpoints" / "last.ckpt", run / ".hydra" / "config.yaml"
    if cfg.resume == "latest" and not last.is_file():
        raise UserError(f"resume=latest: no run with a checkpoints/last.ckpt under {cfg.paths.root}/ to resume")
    if not last.is_file() or not saved.is_file():
        raise UserError(f"resume={cfg.resume}: {last if not last.is_file() else saved} does not exist, so there is "
                        f"nothing to resume there (a run folder holds .hydra/ and checkpoints/)")
    config = OmegaConf.load(saved)
    config.paths.output_dir = str(run)
    config.resume = None
    return config, last


def keep_metrics(trainer, checkpoint: Path) -> None:
    """Lightning's CSVLogger starts metrics.csv afresh; put back the rows of the epochs the checkpoint
    completed (dropping those of the epoch that was cut short, which is about to run again)."""
    global_step = torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"]
    for logger in trainer.loggers:
        if not isinstance(logger, CSVLogger):
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header, rows = reader.fieldnames or [], [r for r in reader if int(r["step"]) < global_step]
        writer = logger.experiment  # created now: this is when it removes the old file
        with open(path, "w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=header)
            out.writeheader()
            out.writerows(rows)
        writer.metrics_keys = list(header)
