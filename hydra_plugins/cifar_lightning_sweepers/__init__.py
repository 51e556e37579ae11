"""The project's sweepers under the names Hydra instantiates: Hydra builds a sweeper only from a class of the
hydra_plugins namespace (configs/hydra/sweeper/ name these). The code is cifar_lightning/tasks/sweepers.py and
optuna_sweeper.py."""

from cifar_lightning.tasks import optuna_sweeper, sweepers


class GridSweeper(sweepers.GridSweeper):
    """cifar_lightning.tasks.sweepers.GridSweeper: Hydra's BasicSweeper that can resume a sweep."""


class OptunaSweeper(optuna_sweeper.OptunaSweeper):
    """cifar_lightning.tasks.optuna_sweeper.OptunaSweeper: an Optuna study through ask/tell, with pruning and resume."""
