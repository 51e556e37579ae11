"""The project's Hydra sweepers (configs/hydra/sweeper/): every sweep can be resumed, and an Optuna search can prune.

- `GridSweeper` (`hydra/sweeper=grid`, the default): Hydra's BasicSweeper, every combination of the command line's
  comma lists, job N in `<sweep>/N`.
- `OptunaSweeper` (`hydra/sweeper=optuna`, chosen by `hparams_search=optuna`): an Optuna study driven through its
  ask/tell interface (https://optuna.readthedocs.io/en/stable/tutorial/20_recipes/009_ask_and_tell.html), with the
  keys of hydra-optuna-sweeper (sampler, direction, study_name, storage, n_trials, n_jobs, max_failure_rate, params
  in Hydra's sweep grammar) plus `pruner`. The study lives in an RDB storage (by default `<sweep>/optuna.db`), so
  several workers can share it and it survives a crash. Each job learns its trial through the `trial` key of the
  train config ({storage, study_name, number}); `OptunaPruning` (blocks/pruning.py) reports every epoch's val/acc to it
  and stops a trial the pruner gives up on. Such a run finishes (tested, summary.json with `pruned: true`) and its
  trial is told PRUNED.
- Resume: `python train.py -m resume=SWEEP_DIR` composes the sweep again from the overrides its multirun.yaml
  recorded, and launches its jobs into the same folders: a finished job returns its recorded result without
  training, an interrupted one resumes from its checkpoints/last.ckpt (as `resume=RUN` does), one never started runs
  fresh. An Optuna trial that was RUNNING when the sweep died is told FAIL, marked `interrupted` (not counted towards
  n_trials) and its configuration enqueued again, to run in the dead trial's folder.

Hydra instantiates sweepers only from the hydra_plugins namespace: hydra_plugins/cifar_lightning_sweepers/ gives
these classes the names configs/hydra/sweeper/ use.
"""

import contextlib
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

# Hydra's grid sweeper is not exported anywhere but its core plugins (hydra._internal.core_plugins, where Hydra itself
# finds it); subclassed here rather than rewritten, so grid sweeps stay exactly Hydra's
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, RunMode, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from cifar_lightning.blocks.errors import UserError
from cifar_lightning.blocks.paths import check_working_folder, quoted, user_path
from cifar_lightning.blocks.pruning import build_pruner, open_storage, optuna_object
from cifar_lightning.store.runs import RunFolder, sweep_root
from cifar_lightning.store.trust import run_config
from cifar_lightning.tasks.schema import LOWER_IS_BETTER
from cifar_lightning.tasks.search_space import search_space

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
    except (OSError, yaml.YAMLError, UnicodeDecodeError, TypeError, KeyError) as e:
        raise UserError(
            f"{record} is not a readable sweep record ({type(e).__name__}): the sweep cannot resume"
        ) from None
    if not all(isinstance(o, str) for o in (*hydra_overrides, *task)):
        raise UserError(f"{record} is not a readable sweep record (its overrides are not strings)")
    return hydra_overrides, task


# The Hydra overrides a resumed sweep takes from its multirun.yaml: which sweeper and launcher, and their search
# and resource keys; nothing that moves files (sweep.subdir, job_logging), sets the environment or runs commands
RECORDED_HYDRA = ("hydra.mode", "hydra/sweeper", "hydra/launcher")
RECORDED_SWEEPER = ("sampler", "direction", "study_name", "n_trials", "n_jobs", "max_failure_rate", "params", "pruner")
RECORDED_LAUNCHER = (
    "partition", "gpus_per_node", "tasks_per_node", "cpus_per_task", "mem_gb", "timeout_min", "array_parallelism",
    "nodes", "qos", "account", "constraint", "comment", "max_num_timeout", "n_jobs",
)  # fmt: skip
REMOTE_STORAGE = ("postgresql", "mysql", "oracle", "mssql")  # an RDB server: nothing written here


def check_recorded_hydra_override(override: str, sweep: Path, root: Path | None) -> None:
    """Refuses a Hydra override of a sweep's multirun.yaml that a resumed sweep does not take from disk (see
    RECORDED_HYDRA); an Optuna storage must be a database server or a SQLite file under the sweep's runs root.

    Raises:
        UserError: naming the record, the override and what to do."""
    key, _, value = override.lstrip("+~").partition("=")
    parts = key.split(".")
    allowed = (
        key in RECORDED_HYDRA
        or (parts[:2] == ["hydra", "sweeper"] and len(parts) > 2 and parts[2] in RECORDED_SWEEPER)
        or (parts[:2] == ["hydra", "launcher"] and len(parts) == 3 and parts[2] in RECORDED_LAUNCHER)
    )
    if key == "hydra.sweeper.storage":
        scheme, _, path = value.strip("'\"").partition(":///")
        inside = scheme == "sqlite" and Path(path).resolve().is_relative_to((root or sweep).resolve())
        allowed = scheme.split("+")[0] in REMOTE_STORAGE or inside
    if not allowed:
        raise UserError(
            f"{sweep / 'multirun.yaml'} records {override}, which a resumed sweep does not take from disk: "
            f"start the sweep anew"
        )


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
        which are the command's, and Hydra overrides outside RECORDED_HYDRA, refused), instantiates its sweeper
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
        config = self.hydra_context.config_loader.load_configuration(
            config_name=self.config.hydra.job.config_name,
            overrides=hydra_overrides + task,
            run_mode=RunMode.MULTIRUN,
        )
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
        config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(config):
            del config["hydra"]
        record = Path(self.config.hydra.sweep.dir) / "multirun.yaml"
        trusted = list(config.get("trusted_modules") or ())
        run_config(record, run.path, config.paths.root, trusted, text=OmegaConf.to_yaml(config))


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


# ------------------------------------------------------------------------------------------------ Optuna
def tell(study: Any, trial: Any, **result: Any) -> None:
    """study.tell(trial, **result). A GridSampler whose grid is done stops the study as it is told the last
    trial, which Optuna refuses outside study.optimize() by a RuntimeError raised after the trial is stored."""
    try:
        study.tell(trial, **result)
    except RuntimeError as e:
        if "Study.stop" not in str(e):
            raise


class OptunaSweeper(ResumableSweep, Sweeper):
    """Hyperparameter search on an Optuna study through ask/tell; configs/hydra/sweeper/optuna.yaml documents the
    keys (those of hydra-optuna-sweeper 1.3, plus `pruner`). n_trials counts this sweep's own trials: several
    workers sharing a study (same storage and study_name) each run theirs."""

    def __init__(
        self,
        sampler: Any = None,
        direction: str = "maximize",
        study_name: str | None = None,
        storage: str | None = None,
        n_trials: int = 20,
        n_jobs: int = 1,
        max_failure_rate: float = 0.0,
        params: Any = None,
        pruner: Any = None,
    ) -> None:
        self.sampler_config, self.pruner_config = sampler, pruner
        self.direction, self.study_name, self.storage = direction, study_name, storage
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        plain: Any = OmegaConf.to_container(params, resolve=True) if isinstance(params, DictConfig) else params
        self.params: dict[str, Any] = dict(plain or {})

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        """Checks the keys (here, not in __init__, which Hydra's instantiate calls and whose errors it rewraps)
        and builds the pruner, so that a mistake is refused in one line before any job runs."""
        if self.direction not in ("minimize", "maximize"):
            raise UserError(f"hydra.sweeper.direction={self.direction!r} must be minimize or maximize")
        if not 0 <= self.max_failure_rate <= 1:
            raise UserError(f"hydra.sweeper.max_failure_rate={self.max_failure_rate} must be between 0 and 1")
        if self.n_trials < 1 or self.n_jobs < 1:
            raise UserError("hydra.sweeper.n_trials and hydra.sweeper.n_jobs must be at least 1")
        metric = config.get("optimized_metric", "best_val_acc")
        direction = "minimize" if metric in LOWER_IS_BETTER else "maximize"
        if self.direction != direction:
            raise UserError(
                f"hydra.sweeper.direction={self.direction} would optimise optimized_metric={metric} the wrong way: "
                f"set hydra.sweeper.direction={direction}"
            )
        if direction == "minimize" and self.pruner_config is not None:  # OptunaPruning reports val/acc each epoch
            raise UserError(
                f"the pruner judges trials by their val/acc, which is to be maximised, not {metric}: "
                "add hydra.sweeper.pruner=null"
            )
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise UserError("hparams_search=optuna needs Optuna: pip install -e '.[search]'") from None
        self.pruner = build_pruner(self.pruner_config, "hydra.sweeper.pruner")
        self.config = config
        self.keep_context(hydra_context, task_function)
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )
        self.job_idx = 0

    def sampler(self, space: dict[str, Any]) -> tuple[Any, int]:
        """The sampler, and how many trials it can give (GridSampler: the grid of the categorical space)."""
        if self.sampler_config is None:
            return None, self.n_trials  # Optuna's default, TPE
        target = (self.sampler_config or {}).get("_target_")
        if target == "optuna.samplers.GridSampler" and "search_space" not in self.sampler_config:
            grid: dict[str, Any] = {k: getattr(d, "choices", None) for k, d in space.items()}
            if any(v is None for v in grid.values()):
                raise UserError("optuna.samplers.GridSampler needs choice() sweeps only (it has no intervals)")
            size = math.prod([len(v) for v in grid.values()])
            return optuna_object(self.sampler_config, "samplers", "BaseSampler", "hydra.sweeper.sampler",
                                 search_space=grid), min(self.n_trials, size)  # fmt: skip
        return optuna_object(self.sampler_config, "samplers", "BaseSampler", "hydra.sweeper.sampler"), self.n_trials

    def sweep(self, arguments: list[str]) -> None:
        folder = resume_requested(arguments)
        if folder is not None and not self.resuming:
            return self.resume_sweep(folder, arguments)
        import optuna

        assert self.config is not None  # setup() ran
        # the search space is checked before hydra.sweep.dir is read: reading it claims the sweep's folder
        space, fixed = search_space(arguments, self.params)
        sampler, n_trials = self.sampler(space)
        sweep = Path(self.config.hydra.sweep.dir).resolve()
        sweep.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep / "multirun.yaml")
        url = self.storage or f"sqlite:///{sweep / 'optuna.db'}"
        storage = open_storage(url)
        study = optuna.create_study(
            study_name=self.study_name or sweep.name,
            storage=storage,
            sampler=sampler,
            pruner=self.pruner,
            direction=optuna.study.StudyDirection[self.direction.upper()],
            load_if_exists=True,
        )
        log.info("Optuna study %s in %s: %d trials of %s", study.study_name, url, n_trials, ", ".join(space))

        def mine() -> list[Any]:  # this sweep's trials (workers sharing the study have theirs)
            return [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("sweep") == str(sweep)]

        if self.resuming:
            self.retry_interrupted(study, storage, mine())
        counted = [t for t in mine() if t.state.is_finished() and not t.user_attrs.get("interrupted")]
        to_go = n_trials - len(counted)
        next_job = 1 + max((int(t.user_attrs.get("job", -1)) for t in mine()), default=-1)
        self.run_trials(study, space, fixed, (sweep, url), to_go, next_job)
        self.write_results(study, sweep)

    def run_trials(
        self, study: Any, space: dict[str, Any], fixed: list[str], where: tuple[Path, str], to_go: int, next_job: int
    ) -> None:
        """Asks the study for `to_go` trials, n_jobs at a time, launches each as job `next_job`, ... of the sweep
        folder (a retried trial keeps its job number), and tells the study how each ended."""
        sweep, url = where
        while to_go > 0:
            trials = [study.ask(space) for _ in range(min(self.n_jobs, to_go))]
            jobs = []
            for trial in trials:
                if trial.user_attrs.get("sweep") != str(sweep) or "job" not in trial.user_attrs:
                    trial.set_user_attr("sweep", str(sweep))
                    trial.set_user_attr("job", next_job)
                    next_job += 1
                trial.set_user_attr("pruner", self.pruner_plain())
                jobs.append(int(trial.user_attrs["job"]))
            reporting = f"storage:{quoted(url)},study_name:{quoted(study.study_name)}"
            overrides = [
                self.job_overrides(
                    job,
                    [
                        *(f"{k}={v}" for k, v in trial.params.items()),
                        *fixed,
                        f"trial={{{reporting},number:{trial.number}}}",
                        f"hydra.sweep.subdir={job}",
                    ],
                )  # fmt: skip
                for trial, job in zip(trials, jobs)
            ]
            assert self.launcher is not None  # setup() made it
            returns = self.launcher.launch(overrides, initial_job_idx=self.job_idx)
            self.job_idx += len(returns)
            self.tell_results(study, trials, jobs, returns, sweep)
            to_go -= len(trials)

    def tell_results(self, study: Any, trials: list, jobs: list[int], returns: Sequence[Any], sweep: Path) -> None:
        """Tells the study each launched trial's value (pruned or failed as its job ended); raises the first failure
        when more than max_failure_rate of them failed."""
        from optuna.trial import TrialState

        failures = []
        for trial, job, result in zip(trials, jobs, returns):
            try:
                value = float(result.return_value)  # the job's own exception if it failed
            except Exception as e:
                tell(study, trial, state=TrialState.FAIL)
                log.warning("trial %d (job %d) failed: %s", trial.number, job, e)
                failures.append(e)
                continue
            if RunFolder(sweep / str(job)).summary_values().get("pruned"):
                tell(study, trial, state=TrialState.PRUNED)
            else:
                tell(study, trial, values=value)
        if len(failures) / len(returns) > self.max_failure_rate:
            rate = self.max_failure_rate
            log.error("%d of %d trials failed (max_failure_rate=%s)", len(failures), len(returns), rate)
            for result in returns:
                _ = result.return_value  # raises the first failure, with its traceback

    def pruner_plain(self) -> Any:
        """The pruner's config as a plain value (kept with each trial: the job builds the same pruner)."""
        config = self.pruner_config
        return OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else config

    @staticmethod
    def retry_interrupted(study: Any, storage: Any, trials: list[Any]) -> None:
        """Trials of this sweep left RUNNING by a process that died: each is marked `interrupted` (not counted
        towards n_trials) and told FAIL, and its configuration is enqueued again for the same job folder (where it
        resumes from last.ckpt), once."""
        from optuna.trial import TrialState

        study_id = storage.get_study_id_from_name(study.study_name)
        for trial in trials:
            if trial.state != TrialState.RUNNING:
                continue
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
            study.enqueue_trial(
                trial.params,
                user_attrs={
                    "sweep": trial.user_attrs["sweep"],
                    "job": trial.user_attrs["job"],
                    "retry_of": trial.number,
                },
            )
            storage.set_trial_user_attr(trial_id, "interrupted", True)
            tell(study, trial.number, state=TrialState.FAIL)
            log.info("trial %d was interrupted: told FAIL, its configuration tried again", trial.number)

    def write_results(self, study: Any, sweep: Path) -> None:
        """<sweep>/optimization_results.yaml: the study's best parameters and value (as hydra-optuna-sweeper)."""
        with contextlib.suppress(ValueError):  # no trial completed
            best = study.best_trial
            results = {"name": "optuna", "best_params": best.params, "best_value": best.value}
            OmegaConf.save(OmegaConf.create(results), sweep / "optimization_results.yaml")
            log.info("best parameters %s: %s", best.params, best.value)
            return
        log.warning("no trial completed: %s has no best parameters", study.study_name)
