"""Every option of every config group composes from the real configs and instantiates."""
import functools

import pytest
import torch
from hydra.utils import instantiate

from cifar_lightning.module import ImageClassifier
from cifar_lightning.training import instantiate_all
from conftest import ROOT, compose_train


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "configs" / group).glob("*.yaml"))


def test_every_group_has_options():
    for group in ("data", "model", "optimizer", "scheduler", "augmentation", "trainer", "callbacks", "logger",
                  "experiment"):
        assert options(group), group


@pytest.mark.parametrize("name", options("model"))
def test_model_maps_images_to_logits(name):
    cfg = compose_train([f"model={name}"])
    net = instantiate(cfg.model, num_classes=7)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 7)


@pytest.mark.parametrize("name", options("optimizer"))
@pytest.mark.parametrize("scheduler", options("scheduler"))
def test_optimizer_and_scheduler_build_and_step(name, scheduler, tmp_path):
    cfg = compose_train([f"optimizer={name}", f"scheduler={scheduler}"])
    module = ImageClassifier(net=cfg.model, optimizer=cfg.optimizer, scheduler=cfg.scheduler, class_names=list("ab"))
    module.trainer = type("FakeTrainer", (), {"estimated_stepping_batches": 10})()  # configure_optimizers reads it
    built = module.configure_optimizers()
    optimizer = built["optimizer"] if isinstance(built, dict) else built
    assert isinstance(optimizer, torch.optim.Optimizer)
    assert optimizer.param_groups[0]["lr"] > 0
    if isinstance(built, dict):
        optimizer.step()
        built["lr_scheduler"]["scheduler"].step()


@pytest.mark.parametrize("name", options("augmentation"))
def test_augmentation_builds(name):
    cfg = compose_train([f"augmentation={name}"])
    augment = instantiate(cfg.augmentation) if cfg.augmentation else None
    if name == "none":
        assert augment is None
    else:
        assert augment(torch.zeros(4, 3, 32, 32), torch.arange(4), 0).shape == (4, 3, 32, 32)


@pytest.mark.parametrize("name", options("data"))
def test_data_builds(name, tmp_path):
    cfg = compose_train([f"data={name}", f"data.root={tmp_path}"])
    datamodule = instantiate(cfg.data)
    assert datamodule.source == cfg.data.source


@pytest.mark.parametrize("trainer", options("trainer"))
@pytest.mark.parametrize("logger", options("logger"))
@pytest.mark.parametrize("callbacks", options("callbacks"))
def test_trainer_callbacks_logger_build(trainer, logger, callbacks, tmp_path):
    cfg = compose_train([f"trainer={trainer}", f"logger={logger}", f"callbacks={callbacks}"], output_dir=tmp_path)
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        # composes as it is; to instantiate it here, put the same trainer on the CPU
        cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.precision = "cpu", 1, "32-true"
    built = instantiate(cfg.trainer, callbacks=instantiate_all(cfg.callbacks), logger=instantiate_all(cfg.logger))
    assert built.max_epochs == cfg.epochs
    assert built.checkpoint_callback is not None and built.checkpoint_callback.monitor == "val/acc"


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_composes(name):
    cfg = compose_train([f"experiment={name}"])
    instantiate(cfg.model, num_classes=10)
    functools.partial(instantiate(cfg.optimizer))


def test_seed_baseline_is_the_original_recipe():
    cfg = compose_train(["experiment=seed_baseline"])
    assert cfg.model._target_.endswith("CNN") and list(cfg.model.widths) == [32, 64, 128]
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 1e-3
    assert cfg.batch_size == 64 and cfg.epochs == 20 and cfg.data.batch_size == 64
    assert cfg.scheduler._target_.endswith("StepLR") and cfg.scheduler.step_size == 10 and cfg.scheduler.gamma == 0.5
    assert cfg.callbacks.early_stopping.patience == 5
    assert set(cfg.augmentation) == {"_target_", "crop", "flip"}
