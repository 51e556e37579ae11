"""Evaluate a checkpoint: `python evaluate.py ckpt=best [split=val] [tta=true]`, or an ensemble (ckpt=SWEEP_DIR,
ckpt=[RUN1,RUN2] out=DIR). See README.md."""

from cifar_lightning.blocks.errors import stop_quietly_while_importing

if __name__ == "__main__":  # not in a process spawned from it (a data loader's worker), which cli.run never resets
    stop_quietly_while_importing()  # first: Ctrl-C during the imports below ends in one line

import hydra
from omegaconf import DictConfig

from cifar_lightning.tasks.cli import exit_on_user_error, run
from cifar_lightning.tasks.ensemble import evaluate_any


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        evaluate_any(cfg)


if __name__ == "__main__":
    run(main)
