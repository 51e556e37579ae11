"""`python train.py resume=RUN|mlflow:RUN_ID|latest`: continue an interrupted run in its own folder, from its last.ckpt,
with the config composed again from the overrides it was started with, appending to its metrics.csv."""

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from cifar_lightning.blocks.errors import UserError
from cifar_lightning.blocks.module import ImageClassifier
from cifar_lightning.blocks.paths import user_path
from cifar_lightning.store.checkpoints import load_checkpoint
from cifar_lightning.store.locate import nothing_to_resume
from cifar_lightning.store.recorded import check_recorded_overrides
from cifar_lightning.store.runs import RunFolder
from cifar_lightning.store.trust import run_config
from cifar_lightning.tasks.cli import CONFIG_DIR, compose_config, composed_record


def resume_config(cfg: DictConfig, overrides: list[str]) -> tuple[DictConfig, Path | None]:
    """The resumed run's config, composed again from the overrides it was started with (as a resumed sweep's jobs
    are) and passed through the gate of what comes from disk (trust.run_config), with its folder as output_dir;
    and its last checkpoint. A run that finished is left as it is: its config unread, None for its checkpoint.
    Hydra's run folder is already the run to resume (locate.run_dir)."""
    run = RunFolder(cfg.paths.output_dir)
    last = run.checkpoint("last")
    if not last.is_file():  # Hydra's run folder is a new one: locate.to_resume found no run to resume
        raise UserError(f"resume={cfg.resume}: {nothing_to_resume(cfg.resume, user_path(cfg.paths.root))}")
    recorded = run.recorded_overrides()
    # the run's own overrides may be repeated (a resumed sweep does); trial= is set by an Optuna sweeper resuming
    # the run as one of its trials
    allowed = ("resume=", "paths.root=", "trusted_modules=", "trial=")
    others = [o for o in overrides if not o.startswith(allowed) and o not in recorded]
    if others:
        raise UserError(f"resume= continues a run with the config it was started with; drop {' '.join(others)}")
    if run.finished:  # nothing is built: its recorded result stands
        return cfg, None
    own = [o for o in recorded if not o.startswith(("resume=", "trusted_modules=", "trial="))]  # those: the command's
    check_recorded_overrides(own, run.overrides, CONFIG_DIR)
    trusted = list(cfg.get("trusted_modules") or ())
    # the runs root (MLflow's store) is the command's or the one the folder lies in, never what its config says
    root = cfg.paths.root if any(o.startswith("paths.root=") for o in overrides) else run.root or cfg.paths.root
    composed = composed_record(run.overrides, lambda: compose_config("train", own))
    # from disk: checked before anything is built from it
    config = run_config(composed, run.overrides, run.path, root, trusted)
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


# The module's hyperparameters that say how it runs, not what it learns: a resumed run may change them (compile off
# on a machine without a compiler); and the config names of the others that are not module.<name>
HOW_IT_RUNS = ("compile", "channels_last")
CONFIG_NAMES = {"net": "model", **{k: f"the data's {k}" for k in ("class_names", "mean", "std", "image_size")}}


def check_resumable(checkpoint: dict, hparams: dict, steps: int, cfg: DictConfig) -> None:
    """Refuses to resume from `checkpoint` (the contents of the run's last.ckpt) when what it restores does not fit
    the run its edited config now builds: a module of other hyperparameters `hparams` (another net's weights would
    not load; a saved optimizer state would silently undo an edited lr), or, when the optimizer or schedule is built
    for the run's length (total_steps: null), another number of optimizer steps `steps` (epochs, batch_size, the
    training split or the devices changed: the restored schedule ends before the run does).

    Raises:
        UserError: one line naming what differs and what to do."""
    run = RunFolder(cfg.paths.output_dir)
    cannot = f"cannot resume {run.path}"
    saved = checkpoint["hyper_parameters"]
    changed = [
        difference
        for key in saved
        if key in hparams and key not in HOW_IT_RUNS  # a key from before the project had it is left alone
        for difference in differences(saved[key], hparams[key], CONFIG_NAMES.get(key, f"module.{key}"))
    ]
    if changed:
        raise UserError(
            f"{cannot}: what {run.overrides} composes differs from what {run.checkpoint('last').name} was saved with "
            f"({'; '.join(changed[:3])}{'; ...' if len(changed) > 3 else ''}); a resumed run continues the run its "
            f"checkpoint holds: undo the edit (of its overrides or of the configs), or start a new run with the new "
            f"values"
        )
    schedules = [s.get("total_steps") for s in checkpoint.get("lr_schedulers") or () if isinstance(s, dict)]
    saved_steps = checkpoint.get("total_steps") or next((s for s in schedules if isinstance(s, int)), None)
    if ImageClassifier.takes_run_length(saved) and saved_steps is not None and saved_steps != steps:
        raise UserError(
            f"{cannot}: the run's length changed from {saved_steps} to {steps} optimizer steps since "
            f"{run.checkpoint('last').name} was saved (now epochs={cfg.epochs}, batch_size={cfg.batch_size} as "
            f"composed from {run.overrides}; the training split and the devices count too); a resumed run keeps its "
            f"schedule: put back the values it was started with, or start a new run for the longer or shorter schedule"
        )


UNSET = object()


def differences(saved: Any, now: Any, where: str) -> list[str]:
    """ "<where> <saved> -> <now>" for each value of a nested config that differs (numbers equal up to float
    rounding are the same: a run's data statistics computed again)."""
    if isinstance(saved, dict) and isinstance(now, dict):
        keys = dict.fromkeys([*saved, *now])
        return [d for k in keys for d in differences(saved.get(k, UNSET), now.get(k, UNSET), f"{where}.{k}")]
    return [] if same(saved, now) else [f"{where} {shown(saved)} -> {shown(now)}"]


def same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-5)
    return type(a) is type(b) and a == b


def shown(value: Any) -> str:
    text = "unset" if value is UNSET else repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."
