"""What the benchmarks share: the real pipeline built from overrides, a step timer, the machine's matmul peak."""

import sys
import time
from pathlib import Path

import lightning as L
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cifar_lightning.tasks.cli import compose_config  # noqa: E402 (after the sys.path line that makes the package importable from a checkout)
from cifar_lightning.tasks.schema import check_train_config  # noqa: E402 (as above)
from cifar_lightning.tasks.train import TrainOptions, build  # noqa: E402 (after the sys.path line that makes the package importable from a checkout)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class StepTimer(L.Callback):
    """Times the training steps after the first `warmup` ones (which pay for allocation and caches), waiting for the
    device at the start and after the last step only, as the plain loop does: a wait after every step would add a
    host-device sync (and on a CPU torch.cuda.is_available's NVML probe) to the pipeline's steps alone."""

    def __init__(self, warmup: int = 10):
        self.warmup, self.images, self.start, self.end = warmup, 0, None, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == self.warmup:
            sync()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx >= self.warmup:
            self.images += len(batch[1])
            if batch_idx == trainer.num_training_batches - 1:
                sync()
                self.end = time.perf_counter()

    @property
    def images_per_second(self) -> float:
        return self.images / (self.end - self.start)


def pipeline(overrides, output_dir, steps: int | None = None, warmup: int = 10, validate: bool = False):
    """The real pipeline (datamodule, module, trainer) for one epoch, with its validation only if `validate`,
    timed by a StepTimer."""
    extra = ["epochs=1", "callbacks.early_stopping=null", "trainer.num_sanity_val_steps=0"]
    if not validate:
        extra.append("+trainer.limit_val_batches=0")
    if steps:
        extra.append(f"+trainer.limit_train_batches={steps}")
    cfg = compose_config("train", [*overrides, *extra, f"paths.output_dir={output_dir}"])
    check_train_config(cfg, TrainOptions)  # as train.py does: a bad value is one line, before the data loads
    datamodule, module, trainer = build(cfg)
    timer = StepTimer(warmup)
    trainer.callbacks.append(timer)
    return cfg, datamodule, module, trainer, timer


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """The best of `repeats` fp32 n x n matmuls, in FLOP/s: what this machine's BLAS can reach."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start
