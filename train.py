"""Train a classifier: `python train.py model=cnn epochs=20`, sweeps with `-m`. See README.md."""
import hydra
from omegaconf import DictConfig

from cifar_lightning.cli import exit_on_user_error
from cifar_lightning.training import train


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with exit_on_user_error():
        return train(cfg)["best_val_acc"]  # returned for sweepers that optimise it


if __name__ == "__main__":
    main()
