"""`python train.py resume=RUN|mlflow:RUN_ID|latest`: continue an interrupted run in its own folder, from its last.ckpt,
with the config it was started with, appending to its metrics.csv."""

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from cifar_lightning.blocks.errors import UserError
from cifar_lightning.blocks.paths import user_path
from cifar_lightning.store.checkpoints import load_checkpoint
from cifar_lightning.store.locate import named
from cifar_lightning.store.runs import RunFolder
from cifar_lightning.store.trust import run_config


def resume_config(cfg: DictConfig, overrides: list[str]) -> tuple[DictConfig, Path | None]:
    """The resumed run's own config (its folder as output_dir) and its last checkpoint; None for a run that
    finished, which is left as it is. Hydra's run folder is already the run to resume (locate.run_dir)."""
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
            f"no run under {user_path(cfg.paths.root)}/ has a checkpoints/last.ckpt"
            if cfg.resume == "latest"
            else f"{RunFolder(named(cfg.resume, Path(cfg.paths.root))).checkpoint('last')} does not exist"
        )
        raise UserError(
            f"resume={cfg.resume}: {missing}, so there is nothing to resume (a run folder holds .hydra/ "
            f"and checkpoints/)"
        )
    if not run.config.is_file():
        raise UserError(f"resume={cfg.resume}: {run.config} does not exist, so the run's config is unknown")
    trusted = list(cfg.get("trusted_modules") or ())
    # the runs root (MLflow's store) is the command's or the one the folder lies in, never what its config says
    root = cfg.paths.root if any(o.startswith("paths.root=") for o in overrides) else run.root or cfg.paths.root
    config = run_config(run.config, run.path, root, trusted)  # from disk: checked before anything is built from it
    csv_logger = (config.get("logger") or {}).get("csv")
    if csv_logger is not None and csv_logger.get("_target_") == "lightning.pytorch.loggers.CSVLogger":
        # a run from before the project's CSVLogger: Lightning's would delete the rows it has
        csv_logger["_target_"] = "cifar_lightning.blocks.loggers.CSVLogger"
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
