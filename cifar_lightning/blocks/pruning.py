"""Optuna's side of a search that a training run talks to: the sampler and pruner built from a config, the study's
storage, and the callback that reports each epoch to the run's trial. Optuna is imported where it is used, as it
is an optional dependency (pip install -e '.[search]')."""

import importlib
import inspect
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

from cifar_lightning.blocks.errors import UserError, first_line


def optuna_object(config: Any, module_name: str, base_name: str, where: str, **kwargs: Any) -> Any:
    """A sampler or pruner built from a config `{_target_: optuna.<module>.<Class>, ...}`: the class must be one
    that `optuna.<module>` defines (looked up in its namespace: also the check for a config read from a study's
    storage, which may come from anywhere). UserError naming `where` otherwise."""
    module = importlib.import_module(f"optuna.{module_name}")
    base = getattr(module, base_name)
    plain: Any = OmegaConf.to_container(config, resolve=True) if isinstance(config, DictConfig) else config
    target = plain.get("_target_") if isinstance(plain, dict) else None
    name = str(target).removeprefix(f"optuna.{module_name}.")
    cls = vars(module).get(name) if isinstance(target, str) and target.startswith(f"optuna.{module_name}.") else None
    choices = sorted(n for n, c in vars(module).items() if inspect.isclass(c) and issubclass(c, base) and c is not base)
    if not (inspect.isclass(cls) and issubclass(cls, base)):
        raise UserError(
            f"{where}._target_={target!r} is not an Optuna {module_name[:-1]}: use one of optuna.{module_name}."
            f"{{{', '.join(choices)}}}" + (f" ({where}=null: no pruning)" if module_name == "pruners" else "")
        )
    assert isinstance(plain, dict)
    arguments = {k: v for k, v in plain.items() if k != "_target_"}
    try:
        return cls(**arguments, **kwargs)
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: {target} refused its arguments: {first_line(e)}") from None


def build_pruner(config: Any, where: str) -> Any:
    """The pruner of a config (None: NopPruner, nothing pruned)."""
    import optuna

    return optuna.pruners.NopPruner() if config is None else optuna_object(config, "pruners", "BasePruner", where)


def open_storage(url: str) -> Any:
    """An Optuna RDB storage; SQLite waits for a lock held by another worker instead of failing at once."""
    import optuna

    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite:") else {}
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)


class OptunaPruning(L.Callback):
    """Reports each epoch's `monitor` to an Optuna trial (`trial.report(value, epoch)`) and ends the run after that
    epoch's checkpoints when the trial's pruner says so (`trial.should_prune()`); the run then finishes as any run
    does (test, summary.json with `pruned: true`) and the sweeper tells the study it was PRUNED. The trial is found
    through its study's RDB storage, so the job may run in another process than the sweeper (submitit, workers);
    its pruner is the config the sweeper kept with the trial (user attr `pruner`). Only rank 0 talks to the study;
    under DDP its decision is broadcast. Optuna's own PyTorchLightningPruningCallback raises instead, which would
    end fit() before the epoch's checkpoints are written and without a summary."""

    def __init__(self, storage: str, study_name: str, number: int, monitor: str = "val/acc"):
        self.storage, self.study_name, self.number, self.monitor = storage, study_name, number, monitor
        self.trial: Any = None
        self.pruned = False

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero:
            return
        import optuna

        storage = open_storage(self.storage)
        try:
            study_id = storage.get_study_id_from_name(self.study_name)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.number)
        except KeyError:
            raise UserError(
                f"trial={{study_name: {self.study_name}, number: {self.number}}} is not in {self.storage}: the "
                f"trial key is set by hparams_search=optuna's sweeper; drop it to train without a study"
            ) from None
        pruner = build_pruner(storage.get_trial(trial_id).user_attrs.get("pruner"), f"trial {self.number}'s pruner")
        study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=pruner)
        self.trial = optuna.trial.Trial(study, trial_id)

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        prune = False
        if trainer.is_global_zero and self.monitor in trainer.callback_metrics:
            self.trial.report(float(trainer.callback_metrics[self.monitor]), trainer.current_epoch)
            prune = self.trial.should_prune()
        if trainer.strategy.broadcast(prune):
            self.pruned = trainer.should_stop = True
