"""Train a classifier: `python train.py model=cnn epochs=20`, sweeps with `-m`, `resume=RUN|latest`. See README.md."""

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cifar_lightning import precision, runs
from cifar_lightning.cli import exit_on_user_error, run
from cifar_lightning.tasks.resume import resume_config
from cifar_lightning.tasks.train import train

runs.register_resolvers()  # before Hydra composes: the run folder depends on resume=
precision.register_resolver()


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with exit_on_user_error():
        if cfg.resume:
            cfg, last = resume_config(cfg, list(HydraConfig.get().overrides.task))
            if last is None:
                logging.getLogger(__name__).info("%s finished already: nothing to resume", cfg.paths.output_dir)
                return (
                    runs.RunFolder(cfg.paths.output_dir)
                    .summary_values()
                    .get(cfg.get("optimized_metric", "best_val_acc"))
                )
            return train(cfg, last)[cfg.get("optimized_metric", "best_val_acc")]
        # returned for sweepers to optimise
        return train(cfg)[cfg.get("optimized_metric", "best_val_acc")]


if __name__ == "__main__":
    run(main)
