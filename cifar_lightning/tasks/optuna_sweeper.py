"""`OptunaSweeper` (`hydra/sweeper=optuna`, chosen by `hparams_search=optuna`): an Optuna study driven through its
ask/tell interface (https://optuna.readthedocs.io/en/stable/tutorial/20_recipes/009_ask_and_tell.html), with the keys
of hydra-optuna-sweeper (sampler, direction, study_name, storage, n_trials, n_jobs, max_failure_rate, params in Hydra's
sweep grammar) plus `pruner`; resumed as every sweep is (sweepers.py)."""

import contextlib
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Hydra's grid sweeper is not exported anywhere but its core plugins (hydra._internal.core_plugins, where Hydra itself
# finds it); subclassed here rather than rewritten, so grid sweeps stay exactly Hydra's
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from cifar_lightning.blocks.errors import UserError
from cifar_lightning.blocks.paths import quoted
from cifar_lightning.blocks.pruning import build_pruner, open_storage, optuna_object
from cifar_lightning.store.runs import RunFolder
from cifar_lightning.tasks.schema import LOWER_IS_BETTER
from cifar_lightning.tasks.search_space import search_space
from cifar_lightning.tasks.sweepers import ResumableSweep, resume_requested

log = logging.getLogger(__name__)


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
