"""The project's Hydra sweepers (configs/hydra/sweeper/): every sweep can be resumed, and an Optuna search can prune.

- `GridSweeper` (`hydra/sweeper=grid`, the default): Hydra's BasicSweeper, every combination of the command line's
  comma lists, job N in `<sweep>/N`.
- `OptunaSweeper` (`hydra/sweeper=optuna`, optuna_sweeper.py): an Optuna study through ask/tell. The study lives in
  an RDB storage (by default `<sweep>/optuna.db`), so several workers can share it and it survives a crash. Each job
  learns its trial through the `trial` key of the train config ({storage, study_name, number}); `OptunaPruning`
  (blocks/pruning.py) reports every epoch's val/acc to it and stops a trial the pruner gives up on. Such a run
  finishes (tested, summary.json with `pruned: true`) and its trial is told PRUNED.
- Resume: `python train.py -m resume=SWEEP_DIR` composes the sweep again from the overrides its multirun.yaml
  recorded, and launches its jobs into the same folders: a finished job returns its recorded result without
  training, an interrupted one resumes from its checkpoints/last.ckpt (as `resume=RUN` does), one never started runs
  fresh. An Optuna trial that was RUNNING when the sweep died is told FAIL, marked `interrupted` (not counted towards
  n_trials) and its configuration enqueued again, to run in the dead trial's folder.

Hydra instantiates sweepers only from the hydra_plugins namespace: hydra_plugins/cifar_lightning_sweepers/ gives
these classes the names configs/hydra/sweeper/ use.
"""

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

# Hydra offers no public import of its grid sweeper: it lives among its core plugins (hydra._internal.core_plugins),
# where Hydra itself finds it. Its maintainers allow for code that inherits from it (hydra-ecosystem/hydra#1886, the
# review of BasicSweeper's params); #371 made the API plugins use public, not this class. Subclassed here rather than
# rewritten, so grid sweeps stay exactly Hydra's
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.plugins import Plugins
from hydra.types import HydraContext, RunMode, TaskFunction
from omegaconf import DictConfig, open_dict

from cifar_lightning.blocks.errors import UserError
from cifar_lightning.blocks.paths import check_working_folder, quoted, user_path
from cifar_lightning.store.recorded import check_recorded_hydra_override, check_recorded_overrides
from cifar_lightning.store.runs import RunFolder, sweep_root
from cifar_lightning.store.trust import run_config
from cifar_lightning.tasks.cli import CONFIG_DIR, composed_record

log = logging.getLogger(__name__)

# what a resumed sweep may be given besides resume=, and what its record may not choose: where the runs live, and
# what their configs may name
RESUME_KEEPS = ("paths.root", "trusted_modules")


def resume_requested(arguments: Sequence[str]) -> str | None:
    """The folder of `resume=FOLDER` among a sweep's command-line overrides, else None."""
    return next((a.split("=", 1)[1].strip("'\"") for a in arguments if a.startswith("resume=")), None)


def recorded_overrides(sweep: Path) -> tuple[list[str], list[str]]:
    """The Hydra and task overrides a sweep was started with, from its multirun.yaml (read as plain YAML: nothing
    in it is resolved or imported). UserError if the folder is not a sweep."""
    record = sweep / "multirun.yaml"
    if not record.is_file():
        raise UserError(
            f"resume={sweep}: {record} does not exist, so it is not a sweep folder; under -m, resume= takes the folder "
            f"that train.py -m wrote (outputs/multiruns/<time>); a single run resumes without -m"
        )
    try:
        overrides = yaml.safe_load(record.read_text())["hydra"]["overrides"]
        hydra_overrides, task = list(overrides["hydra"]), list(overrides["task"])
    except (OSError, yaml.YAMLError, UnicodeDecodeError, TypeError, KeyError, RecursionError) as e:
        raise UserError(
            f"{record} is not a readable sweep record ({type(e).__name__}): the sweep cannot resume"
        ) from None
    if not all(isinstance(o, str) for o in (*hydra_overrides, *task)):
        raise UserError(f"{record} is not a readable sweep record (its overrides are not strings)")
    return hydra_overrides, task


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


class ResumableSweep:
    """What both sweepers share: `python train.py -m resume=SWEEP_DIR`, and the overrides of a resumed job."""

    config: DictConfig | None  # as Hydra's Sweeper types them; set by setup()
    hydra_context: HydraContext | None
    task_function: TaskFunction
    resuming = False  # set on the sweeper that runs a resumed sweep

    def keep_context(self, hydra_context: HydraContext, task_function: TaskFunction) -> None:
        """Called by setup() once self.config is set; refuses hydra.job.chdir=true before any job starts."""
        assert self.config is not None
        check_working_folder(self.config.hydra.job.chdir)
        self.hydra_context, self.task_function = hydra_context, task_function

    def resume_sweep(self, folder: str, arguments: Sequence[str]) -> Any:
        """Composes the sweep in `folder` again from its recorded overrides (but paths.root= and trusted_modules=,
        which are the command's, and Hydra overrides outside recorded.RECORDED_HYDRA, refused), instantiates its sweeper
        (Hydra only builds plugin classes) and runs it in resume mode."""
        assert self.config is not None and self.hydra_context is not None  # setup() ran
        sweep = user_path(folder).resolve()
        others = [a for a in arguments if a.partition("=")[0] not in ("resume", *RESUME_KEEPS)]
        # hydra.*, hydra/launcher=...: the recorded ones apply (-m itself sets hydra.mode)
        others += [o for o in self.config.hydra.overrides.hydra if not o.startswith("hydra.mode=")]
        if others:
            raise UserError(
                f"resume= continues a sweep with the overrides it was started with; drop {' '.join(others)}"
            )
        hydra_overrides, task = recorded_overrides(sweep)
        check_recorded_overrides(task, sweep / "multirun.yaml", CONFIG_DIR)
        for job in sorted(p for p in sweep.iterdir() if p.is_dir()):
            holder = RunFolder(job).trained_by()
            if holder:  # its sweep still runs: its jobs are that sweep's to train
                raise UserError(
                    f"resume={folder}: its job {job} is being trained by {holder}: the sweep "
                    f"is still running; resume it once that process has ended"
                )
        # the record comes from disk: where files go and what may be loaded are the command's, never the record's
        # (paths.root: the command's, else the runs root holding the sweep; trusted_modules: the command's)
        given = [a for a in arguments if a.partition("=")[0] in RESUME_KEEPS]
        root = sweep_root(sweep)
        if root is not None and not any(_key(a) == "paths.root" for a in given):
            given.append(f"paths.root={quoted(str(root))}")
        given_by_key = {_key(a): a for a in given}
        # in the record's place, so that the jobs' overrides (and the summary's rows) read as the sweep's did
        task = [given_by_key.pop(_key(o), "") if _key(o) in RESUME_KEEPS else o for o in task]
        task = [o for o in task if o and _key(o) != "resume"] + list(given_by_key.values())
        hydra_overrides = [o for o in hydra_overrides if _key(o) != "hydra.sweep.dir"]
        for override in hydra_overrides:
            check_recorded_hydra_override(override, sweep, root)
        hydra_overrides.append(f"hydra.sweep.dir={quoted(str(sweep))}")
        load = self.hydra_context.config_loader.load_configuration
        name = self.config.hydra.job.config_name
        config = composed_record(sweep / "multirun.yaml", lambda: load(name, hydra_overrides + task, RunMode.MULTIRUN))
        sweeper = Plugins.instance().instantiate_sweeper(
            config=config, hydra_context=self.hydra_context, task_function=self.task_function
        )
        if not isinstance(sweeper, ResumableSweep):
            raise UserError(f"{sweep} was swept by {config.hydra.sweeper._target_}, which cannot resume a sweep")
        log.info("resuming the sweep in %s", sweep)
        sweeper.resuming = True
        return sweeper.sweep(arguments=list(config.hydra.overrides.task))

    def job_overrides(self, job: int, overrides: Sequence[str]) -> list[str]:
        """A job of a resumed sweep: its own overrides plus `resume=<sweep>/<job>` when that folder holds a
        checkpoint (finished: its recorded result; interrupted: from its last.ckpt; the overrides still compose
        the job's Hydra config, e.g. hparams_search's sweeper keys), else its own overrides, run fresh."""
        assert self.config is not None  # setup() ran
        run = RunFolder(Path(self.config.hydra.sweep.dir) / str(job))
        if not self.resuming:
            return list(overrides)
        if not run.checkpoint("last").is_file():
            self.check_fresh_job(run, overrides)
            return list(overrides)
        return [*overrides, f"resume={quoted(str(run.path))}"]

    def check_fresh_job(self, run: RunFolder, overrides: Sequence[str]) -> None:
        """A job of a resumed sweep that runs fresh is built from overrides read from the sweep's multirun.yaml:
        its composed config passes the gate of a resumed run's config (trust.run_config) first."""
        assert self.config is not None and self.hydra_context is not None  # setup() ran
        record = Path(self.config.hydra.sweep.dir) / "multirun.yaml"
        load, sweep_config = self.hydra_context.config_loader.load_sweep_config, self.config
        config = composed_record(record, lambda: load(sweep_config, list(overrides)))
        with open_dict(config):
            del config["hydra"]
        trusted = list(config.get("trusted_modules") or ())
        run_config(config, record, run.path, config.paths.root, trusted)


class GridSweeper(ResumableSweep, BasicSweeper):
    """Hydra's BasicSweeper (every combination of the comma lists, in batches) that can resume a sweep."""

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.keep_context(hydra_context, task_function)
        self.next_job = 0

    def sweep(self, arguments: list[str]) -> Any:
        folder = resume_requested(arguments)
        if folder is not None and not self.resuming:
            return self.resume_sweep(folder, arguments)
        return super().sweep(arguments)

    def get_job_batch(self) -> Sequence[Sequence[str]]:
        """BasicSweeper's next batch; in a resumed sweep each job as job_overrides makes it (job numbers follow
        the batches, as the launcher numbers them)."""
        batch = [self.job_overrides(self.next_job + i, job) for i, job in enumerate(super().get_job_batch())]
        self.next_job += len(batch)
        return batch
