"""Shared fixtures: tiny datasets written into temp folders, and configs composed from configs/."""

import os

# The suite runs several training processes at once on a machine of few cores (a pytest-xdist worker per core, and
# the concurrency, sweep and launcher tests): with OpenMP's default of a thread per core in each, their waiting threads
# take the cores from each other and the processes crawl. One thread each, unless the caller chose; set before torch is
# imported, and inherited by every script the tests start.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import json
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image
from scripts import Script, run

from cifar_lightning.tasks.cli import compose_config
from cifar_lightning.tasks.train import train

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar(root: Path, per_batch: int = 40, test: int = 50, seed: int = 0, name: str = "cifar10") -> Path:
    """CIFAR in the python-version layout: for cifar10, 5 training batches of `per_batch` images; for cifar100,
    one `train` file of 5 * per_batch images over 100 classes. Each class has its own mean colour."""
    rng = np.random.default_rng(seed)
    classes, folder, key = (
        (CLASSES, "cifar-10-batches-py", "labels")
        if name == "cifar10"
        else ([f"class{i:02d}" for i in range(100)], "cifar-100-python", "fine_labels")
    )
    folder = root / folder
    folder.mkdir(parents=True)

    def batch(n, label):
        labels = rng.integers(0, len(classes), n)
        colours = np.linspace(20, 235, len(classes))[labels][:, None]
        data = np.clip(colours + rng.normal(0, 25, (n, 3072)), 0, 255).astype(np.uint8)
        return {
            "batch_label": label,
            key: labels.tolist(),
            "data": data,
            "filenames": [f"{label}_{i}.png" for i in range(n)],
        }

    def write(file, content):
        (folder / file).write_bytes(pickle.dumps(content, protocol=2))

    if name == "cifar10":
        for i in range(1, 6):
            write(f"data_batch_{i}", batch(per_batch, f"training batch {i}"))
        write("test_batch", batch(test, "testing batch"))
        write("batches.meta", {"label_names": classes, "num_vis": 3072})
    else:
        write("train", batch(5 * per_batch, "training"))
        write("test", batch(test, "testing"))
        write("meta", {"fine_label_names": classes, "coarse_label_names": ["all"]})
    return root


def write_folder(root: Path, classes=("cat", "dog", "frog"), per_class: int = 12, test: bool = True) -> Path:
    """An ImageFolder tree of PNGs of mixed sizes (they are resized on load)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 4)) if test else (("train", per_class),):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                size = 32 if i % 2 else 40
                pixels = np.clip(60 * c + rng.normal(40, 20, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture
def cifar_root(tmp_path):
    return write_cifar(tmp_path / "data")


@pytest.fixture
def folder_root(tmp_path):
    return write_folder(tmp_path / "folder")


def compose_train(overrides=(), output_dir: Path | str = "unused"):
    """The real train config, composed as `python train.py OVERRIDES` would, with the run folder set."""
    return compose_config("train", [*overrides, f"paths.output_dir={output_dir}"])


def train_run(overrides, run_dir: Path) -> dict:
    """train() in-process on a composed config, with the .hydra/config.yaml and overrides.yaml that train.py would
    leave."""
    cfg = compose_train(overrides, output_dir=run_dir)
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(list(overrides)), run_dir / ".hydra" / "overrides.yaml")
    return train(cfg)


class TrainedRuns:
    """train_run once per list of overrides in this test process; each caller gets a copy of its own (tests that
    train the same tiny run share its training, never its folder)."""

    def __init__(self, root: Path):
        self.root, self.runs = root, {}

    def source(self, overrides) -> Path:
        """The run of `overrides`, trained on first use: read it, never write into it."""
        key = tuple(overrides)
        if key not in self.runs:
            self.runs[key] = self.root / str(len(self.runs))
            train_run(list(overrides), self.runs[key])
        return self.runs[key]

    def __call__(self, overrides, run_dir: Path) -> dict:
        """A copy of the run of `overrides` at `run_dir`; returns its summary."""
        shutil.copytree(self.source(overrides), run_dir)
        return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> TrainedRuns:
    return TrainedRuns(tmp_path_factory.mktemp("trained"))


@pytest.fixture(scope="session")
def synthetic_run(trained):
    """One finished training run on synthetic data, shared read-only by the tests that need a checkpoint."""
    return trained.source([*FAST, "data=synthetic"])


# The default CNN at half its widths: a quarter of its compute, for the tests that need a trained model, not its
# accuracy. Tests of a net without widths (mlp), of resnet18 (it would lose a stage) or of the CNN's size or capacity
# leave it out (WITHOUT_NARROW); a test of airbench sets its own widths after it.
NARROW = "model.widths=[16,32,64]"

# Overrides that make a training run take seconds: tiny data, no progress bar.
FAST = [
    "epochs=1",
    "batch_size=32",
    "data.val_size=40",
    "data.eval_batch_size=64",
    "callbacks.progress_bar=null",
    "trainer.enable_model_summary=false",
    NARROW,
]
WITHOUT_NARROW = [o for o in FAST if o != NARROW]


# for scripts that load test callbacks (+callbacks.x._target_=helpers.X): tests/ on their import path
HELPERS_ENV = {**os.environ, "PYTHONPATH": f"{ROOT / 'tests'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def start_script(*args, env=None) -> Script:
    """A script started in the background from the project folder (run_script waits for one)."""
    return Script(args, ROOT, env)


def run_script(*args, cwd: Path = ROOT, timeout: int = 300, env=None) -> subprocess.CompletedProcess:
    """`python *args` in `cwd` (scripts.py: a forked process, without the interpreter's start-up and imports)."""
    return run(*args, cwd=cwd, timeout=timeout, env=env)
