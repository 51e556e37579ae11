"""Evaluate a checkpoint: `python evaluate.py ckpt=best [split=val] [tta=true]`. See README.md."""

import hydra
from omegaconf import DictConfig

from cifar_lightning.tasks.cli import exit_on_user_error, run
from cifar_lightning.tasks.evaluate import evaluate


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        evaluate(cfg)


if __name__ == "__main__":
    run(main)
