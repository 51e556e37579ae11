"""Every option of every config group composes from the real configs and instantiates."""

import functools

import pytest
import torch
import yaml
from conftest import ROOT, compose_train, write_cifar, write_folder
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint

from cifar_lightning.blocks import precision
from cifar_lightning.blocks.errors import UserError
from cifar_lightning.blocks.module import ImageClassifier
from cifar_lightning.store import tracking
from cifar_lightning.tasks.train import instantiate_all


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "configs" / group).glob("*.yaml"))


def test_every_group_has_options_and_its_default_exists():
    chosen = {}
    for task in ROOT.joinpath("configs").glob("*.yaml"):
        for entry in yaml.safe_load(task.read_text())["defaults"]:
            if isinstance(entry, dict):
                chosen.update({(task.stem, group.removeprefix("override ")): option for group, option in entry.items()})
    groups = sorted(p.name for p in (ROOT / "configs").iterdir() if p.is_dir())
    assert sorted({group.split("/")[0] for _, group in chosen}) == groups  # every folder a group of a task, and back
    assert {group for task, group in chosen if task == "train"} >= {"data", "model", "optimizer", "augmentation"}
    for (task, group), option in chosen.items():
        if "/" not in group:  # hydra/job_logging is Hydra's own
            assert options(group), f"configs/{group}/ has no options"
            assert option is None or option in options(group), f"{task}.yaml: the default {group}={option} has no YAML"


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
def test_data_builds_and_serves_uint8_batches(name, tmp_path):
    writers = {
        "cifar10": write_cifar,
        "cifar100": functools.partial(write_cifar, name="cifar100"),
        "folder": write_folder,
        "synthetic": lambda root: root,
    }
    root = writers[name](tmp_path / "data")
    cfg = compose_train([f"data={name}", f"data.root={root}", "data.verify=false", "data.val_size=0.1", "batch_size=4"])
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    expected_classes = {"cifar10": 10, "cifar100": 100, "folder": 3, "synthetic": 10}[name]
    assert datamodule.source == name and datamodule.num_classes == expected_classes
    images, labels, _ = next(iter(datamodule.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 32, 32)
    assert labels.max() < expected_classes and "val" in datamodule.splits


@pytest.mark.parametrize("trainer", options("trainer"))
@pytest.mark.parametrize("logger", options("logger"))
@pytest.mark.parametrize("callbacks", options("callbacks"))
def test_trainer_callbacks_logger_build(trainer, logger, callbacks, tmp_path):
    overrides = [f"trainer={trainer}", f"logger={logger}", f"callbacks={callbacks}", f"paths.root={tmp_path}"]
    cfg = compose_train(overrides, output_dir=tmp_path)
    tracking.prepare(cfg)  # as build() does: the MLflow store under paths.root
    if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
        # composes as it is; to instantiate it here, put the same trainer on the CPU
        cfg.trainer.accelerator, cfg.trainer.devices, cfg.trainer.precision = "cpu", 1, "32-true"
    built = instantiate(cfg.trainer, callbacks=instantiate_all(cfg.callbacks), logger=instantiate_all(cfg.logger))
    assert "max_epochs" not in cfg.trainer  # the run's length is epochs, handed to the Trainer by train.build
    saved = [
        (c.filename if isinstance(c, ModelCheckpoint) else c.path.stem, c.monitor) for c in built.checkpoint_callbacks
    ]
    assert saved == [("last", None), ("best", "val/acc")]  # last.ckpt first: see configs/callbacks/default.yaml


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_sets_what_its_file_says_and_builds(name):
    cfg = compose_train([f"experiment={name}"])
    spec = yaml.safe_load((ROOT / "configs" / "experiment" / f"{name}.yaml").read_text()) or {}  # default: empty
    for entry in spec.get("defaults", []):
        for key, option in entry.items() if isinstance(entry, dict) else ():
            group = key.removeprefix("override /")
            if group in options_groups():
                assert cfg[group]._target_ == compose_train([f"{group}={option}"])[group]._target_, group
    for key, value in spec.items():
        if key != "defaults" and not isinstance(value, dict):
            assert cfg[key] == value, key
    net = instantiate(cfg.model, num_classes=10)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    optimizer = instantiate(cfg.optimizer)(
        net.named_parameters() if cfg.optimizer._target_.startswith("cifar_lightning") else net.parameters()
    )
    assert isinstance(optimizer, torch.optim.Optimizer) and optimizer.param_groups[0]["lr"] > 0


def options_groups() -> set[str]:
    return {p.name for p in (ROOT / "configs").iterdir() if p.is_dir()}


def test_seed_baseline_is_the_original_recipe():
    cfg = compose_train(["experiment=seed_baseline"])
    assert cfg.model._target_.endswith("CNN") and list(cfg.model.widths) == [32, 64, 128]
    assert cfg.optimizer._target_ == "torch.optim.Adam" and cfg.optimizer.lr == 1e-3
    assert cfg.batch_size == 64 and cfg.epochs == 20 and cfg.data.batch_size == 64
    assert cfg.scheduler._target_.endswith("StepLR") and cfg.scheduler.step_size == 10 and cfg.scheduler.gamma == 0.5
    assert cfg.callbacks.early_stopping.patience == 5
    assert set(cfg.augmentation) == {"_target_", "crop", "flip"}


@pytest.mark.parametrize(
    ("cuda", "cuda_bf16", "cpu_bf16", "amx", "accelerator", "expected"),
    [
        (True, True, False, False, "auto", "bf16-mixed"),
        (True, False, False, False, "gpu", "16-mixed"),  # pre-Ampere GPUs: fp16 with loss scaling
        (True, True, False, False, "cpu", "32-true"),  # the GPU is not used, and this CPU has no bf16
        (False, False, True, False, "auto", "bf16-mixed"),  # AVX-512 BF16
        (False, False, False, True, "cpu", "bf16-mixed"),  # AMX
        (False, False, False, False, "auto", "32-true"),  # emulated bf16 would be slower than fp32
        (False, False, True, False, "gpu", "32-true"),  # no GPU here: Lightning itself says so
        (False, False, True, False, "mps", "32-true"),
    ],
)
def test_precision_is_16_bit_only_where_the_hardware_computes_in_it(
    monkeypatch, cuda, cuda_bf16, cpu_bf16, amx, accelerator, expected
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: cuda_bf16)
    capabilities = {"architecture": "x86_64", "avx512_bf16": cpu_bf16, "amx_bf16": amx, "amx_tile": amx}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    assert precision.fastest(accelerator) == expected


@pytest.mark.parametrize("trainer", ["default", "cpu", "gpu", "ddp_cpu"])
def test_every_trainer_resolves_its_precision_on_this_machine(trainer):
    cfg = compose_train([f"trainer={trainer}"])
    assert cfg.trainer.precision == precision.fastest(cfg.trainer.accelerator)
    assert compose_train([f"trainer={trainer}", "trainer.precision=32-true"]).trainer.precision == "32-true"


@pytest.mark.parametrize(
    ("current", "accelerator", "expected"),
    [
        (None, "auto", "cpu"),
        (None, "cpu", "cpu"),
        ("cuda", "auto", "cuda"),
        ("cuda", "gpu", "cuda"),
        ("cuda", "cuda", "cuda"),
        ("cuda", "cpu", "cpu"),  # asked for: the GPU stays unused
        ("mps", "mps", "mps"),
        (None, "gpu", "this machine has no accelerator"),
        ("mps", "cuda", "this machine has mps"),
        (None, "gpux", "is not an accelerator"),
    ],
)
def test_inference_device_is_the_accelerator_asked_for_without_a_trainer(monkeypatch, current, accelerator, expected):
    monkeypatch.setattr(torch.accelerator, "is_available", lambda: current is not None)
    monkeypatch.setattr(torch.accelerator, "current_accelerator", lambda: torch.device(current) if current else None)
    if expected == "is not an accelerator":
        with pytest.raises(UserError, match=f"^trainer.accelerator={accelerator} is not an accelerator: use one of"):
            precision.inference_device(accelerator)
    elif expected.startswith("this machine"):
        with pytest.raises(UserError, match=f"trainer.accelerator={accelerator}: {expected}; use trainer.accelerator"):
            precision.inference_device(accelerator)
    else:
        assert precision.inference_device(accelerator) == torch.device(expected)
