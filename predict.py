"""Classify image files: `python predict.py ckpt=best images='photos/*.png' [csv=predictions.csv]`."""

from cifar_lightning.blocks.errors import stop_quietly_while_importing

if __name__ == "__main__":  # not in a process spawned from it (a data loader's worker), which cli.run never resets
    stop_quietly_while_importing()  # first: Ctrl-C during the imports below ends in one line

import hydra
from omegaconf import DictConfig

from cifar_lightning.tasks.cli import exit_on_user_error, run
from cifar_lightning.tasks.predict import predict


@hydra.main(version_base="1.3", config_path="configs", config_name="predict")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        predict(cfg)


if __name__ == "__main__":
    run(main)
