"""Train a classifier: `python train.py model=cnn epochs=20`, sweeps with `-m`, `resume=RUN|latest`. See README.md."""

from cifar_lightning.blocks.errors import stop_quietly_while_importing

if __name__ == "__main__":  # not in a process spawned from it (a data loader's worker), which cli.run never resets
    stop_quietly_while_importing()  # first: Ctrl-C during the imports below ends in one line

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from cifar_lightning.blocks import precision
from cifar_lightning.store import locate
from cifar_lightning.tasks.cli import exit_on_user_error, run
from cifar_lightning.tasks.train import train_or_resume

locate.register_resolvers()  # before Hydra composes: the run folder depends on resume=
precision.register_resolver()


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with exit_on_user_error(training=True):
        overrides = OmegaConf.to_container(HydraConfig.get().overrides.task)  # as typed: ${...} in them unresolved
        assert isinstance(overrides, list)  # of a ListConfig
        return train_or_resume(cfg, overrides)  # returned for sweepers to optimise


if __name__ == "__main__":
    run(main)
