"""Crafted checkpoints: each one would write a marker file if anything it names were built unchecked. Loading
them through evaluate.py, predict.py and export.py must refuse them in one line and run nothing."""

import copy

import pytest
import torch
from conftest import compose_train, run_script
from hydra.utils import instantiate
from PIL import Image

from cifar_lightning.blocks.errors import UserError, first_line
from cifar_lightning.store.checkpoints import load_model
from cifar_lightning.store.trust import check_model_config
from cifar_lightning.tasks.cli import compose_config
from cifar_lightning.tasks.evaluate import evaluate
from cifar_lightning.tasks.export import export
from cifar_lightning.tasks.predict import predict

CNN = "cifar_lightning.blocks.models.cnn.CNN"


def writes(marker, target="torch.save") -> dict:
    """A config that, built by Hydra, calls torch.save(1, marker): proof that code ran."""
    return {"_target_": target, "obj": 1, "f": str(marker)}


# (what is crafted, which hyperparameter it changes, how) — `m` is the marker file's path
CRAFTED = {
    "net target walks through a module's imports": (
        "net",
        lambda m: writes(m, "cifar_lightning.blocks.models.airbench.torch.save"),
    ),
    "net target outside the project": ("net", lambda m: writes(m)),
    "net _args_ injection": (
        "net",
        lambda m: {"_target_": "cifar_lightning.blocks.models.airbench.torch.save", "_args_": [1, str(m)]},
    ),
    "net target nested in a keyword": ("net", lambda m: {"_target_": CNN, "widths": writes(m)}),
    "net target nested in a list": ("net", lambda m: {"_target_": CNN, "widths": [8, writes(m)]}),
    "net _recursive_ / _convert_ keys": ("net", lambda m: {"_target_": CNN, "_recursive_": True, "_convert_": "all"}),
    "net unexpected keyword": ("net", lambda m: {"_target_": CNN, "widths": [8], "f": str(m)}),
    "net value of the wrong type": ("net", lambda m: {"_target_": CNN, "widths": "8,16"}),
    "net value is an interpolation": ("net", lambda m: {"_target_": CNN, "widths": "${oc.decode:'[8]'}"}),
    "net names a class imported into a models module": (
        "net",
        lambda m: {"_target_": "cifar_lightning.blocks.models.cnn.nn", "f": str(m)},
    ),
    "augmentation target walks through imports": (
        "augmentation",
        lambda m: writes(m, "cifar_lightning.blocks.augment.torch.save"),
    ),
    "augmentation part of Compose is hostile": (
        "augmentation",
        lambda m: {
            "_target_": "cifar_lightning.blocks.augment.Compose",
            "flip": writes(m, "cifar_lightning.blocks.augment.torch.save"),
        },
    ),
    "augmentation _partial_": (
        "augmentation",
        lambda m: {"_target_": "cifar_lightning.blocks.augment.RandomFlip", "_partial_": True},
    ),
    "optimizer target walks through imports": (
        "optimizer",
        lambda m: {**writes(m, "torch.optim.adam.torch.save"), "_partial_": True},
    ),
    "optimizer _args_ injection": (
        "optimizer",
        lambda m: {"_target_": "torch.optim.Adam", "_partial_": True, "_args_": [str(m)]},
    ),
    "optimizer unexpected keyword": (
        "optimizer",
        lambda m: {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1, "path": str(m)},
    ),
    "optimizer lr of the wrong type": (
        "optimizer",
        lambda m: {"_target_": "torch.optim.SGD", "_partial_": True, "lr": [str(m)]},
    ),
    "optimizer params holds a config": (  # params is Iterable: any list fits its annotation, but a mapping never
        "optimizer",
        lambda m: {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1, "params": [writes(m)]},
    ),
    "scheduler target outside torch's schedulers": ("scheduler", lambda m: {**writes(m), "_partial_": True}),
    "scheduler factory imported, not defined, in schedules": (
        "scheduler",
        lambda m: {"_target_": "cifar_lightning.blocks.schedules.LinearLR", "_partial_": False},
    ),
    "scheduler nested target in a list": (
        "scheduler",
        lambda m: {"_target_": "torch.optim.lr_scheduler.MultiStepLR", "_partial_": True, "milestones": [writes(m)]},
    ),
    "hyperparameters not a mapping": (None, lambda m: ["net", str(m)]),
    "class names not strings": ("class_names", lambda m: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]),
    "mean not numbers": ("mean", lambda m: "0.5"),
    "unknown hyperparameter": ("evil", lambda m: writes(m)),
}


@pytest.fixture(scope="module")
def checkpoint(synthetic_run):
    return torch.load(synthetic_run / "checkpoints" / "best.ckpt", weights_only=True)


def craft(checkpoint, kind, tmp_path):
    marker = tmp_path / "marker"
    key, make = CRAFTED[kind]
    crafted = copy.deepcopy(checkpoint)
    if key is None:
        crafted["hyper_parameters"] = make(marker)
    else:
        crafted["hyper_parameters"][key] = make(marker)
    path = tmp_path / "crafted.ckpt"
    torch.save(crafted, path)
    return path, marker


def test_the_payloads_do_run_code_when_built_unchecked(tmp_path):
    """The marker proves something: built by Hydra without the checks, these configs write it."""
    for kind in (
        "net target walks through a module's imports",
        "net target nested in a keyword",
        "augmentation part of Compose is hostile",
        "net _args_ injection",
        "optimizer params holds a config",
    ):
        marker = tmp_path / "marker"
        config = CRAFTED[kind][1](marker)
        try:
            instantiate(config)
        except Exception:  # the outer constructor may fail once the nested payload has run
            pass
        assert marker.exists(), kind
        marker.unlink()


@pytest.mark.parametrize("kind", CRAFTED)
def test_crafted_checkpoint_is_refused_by_every_task_and_runs_nothing(checkpoint, tmp_path, kind):
    path, marker = craft(checkpoint, kind, tmp_path)
    image = an_image(tmp_path)  # predict finds its images before it reads the checkpoint
    tasks = [(evaluate, "evaluate", []), (predict, "predict", [f"images={image}"]), (export, "export", [])]
    for task, config, extra in tasks:
        with pytest.raises(UserError, match="refused|not a cifar-lightning checkpoint") as error:
            task(compose_config(config, [f"ckpt={path}", *extra]))
        assert "\n" not in str(error.value)
    assert not marker.exists()


def an_image(folder):
    path = folder / "image.png"
    Image.new("RGB", (32, 32), (120, 30, 200)).save(path)
    return path


@pytest.mark.parametrize("index, kind", list(enumerate(CRAFTED))[::3])
def test_crafted_checkpoint_through_the_command_line_is_one_error_line(checkpoint, tmp_path, index, kind):
    """Every third kind (all of them are refused in-process above), through one of the three scripts in turn:
    net, augmentation, optimizer and scheduler kinds, each script at least twice."""
    path, marker = craft(checkpoint, kind, tmp_path)
    image = an_image(tmp_path)
    script, extra = [("evaluate.py", []), ("predict.py", [f"images={image}"]), ("export.py", [])][(index // 3) % 3]
    result = run_script(script, f"ckpt={path}", *extra)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0]
    assert "refused" in errors[0] or "not a cifar-lightning checkpoint" in errors[0]
    assert not marker.exists()


@pytest.mark.parametrize(
    "group, kind",
    [("model", "net"), ("augmentation", "augmentation"), ("optimizer", "optimizer"), ("scheduler", "scheduler")],
)
def test_every_config_the_project_ships_passes_the_checks(group, kind):
    from conftest import ROOT
    from omegaconf import OmegaConf

    choices = [[f"{group}={p.stem}"] for p in sorted((ROOT / "configs" / group).glob("*.yaml"))]
    choices += [[f"experiment={p.stem}"] for p in sorted((ROOT / "configs" / "experiment").glob("*.yaml"))]
    for overrides in choices:
        config = compose_train(overrides)[group]
        if config is not None:
            check_model_config(OmegaConf.to_container(config, resolve=True), kind, kind)


def test_a_compiled_run_loads_without_compiling(checkpoint, tmp_path):
    crafted = copy.deepcopy(checkpoint)
    crafted["hyper_parameters"]["compile"] = True
    torch.save(crafted, tmp_path / "compiled.ckpt")
    model = load_model(tmp_path / "compiled.ckpt")
    assert model.hparams.compile is False and getattr(model.net, "_compiled_call_impl", None) is None


@pytest.mark.parametrize("error", [KeyError(), RuntimeError(""), ValueError("  \n"), TypeError("first\nsecond")])
def test_a_checkpoint_that_does_not_fit_is_one_line_whatever_the_errors_message(checkpoint, tmp_path, error):
    """A refusal quotes the first line of its cause's message, or the cause's type where the message is empty."""
    path = tmp_path / "run" / "checkpoints" / "best.ckpt"
    path.parent.mkdir(parents=True)
    torch.save(checkpoint, path)

    def fails(*args, **kwargs):
        raise error

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("cifar_lightning.store.checkpoints.ImageClassifier.on_load_checkpoint", fails)
        with pytest.raises(UserError) as refusal:
            load_model(path)
    cause = "first" if str(error).strip() else type(error).__name__
    assert str(refusal.value) == f"{path} does not fit this version's model ({type(error).__name__}: {cause})"


def test_first_line_of_an_error_is_its_message_or_its_type():
    assert first_line(ValueError("  bad value\n  at line 2")) == "bad value"
    assert first_line(KeyError()) == "KeyError" and first_line(RuntimeError(" \n ")) == "RuntimeError"
