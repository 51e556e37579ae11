"""Training callbacks of our own, next to Lightning's (configured in configs/callbacks/)."""

import copy
import math
from pathlib import Path
from typing import Annotated, Any

import lightning as L
import torch
from annotated_types import Ge, Gt, Interval
from torch.utils.flop_counter import FlopCounterMode

from cifar_lightning.blocks.data import Batch
from cifar_lightning.blocks.errors import UserError


def _net(module: L.LightningModule) -> torch.nn.Module:
    """ImageClassifier's net, which a callback's LightningModule types as Tensor | Module (torch's __getattr__)."""
    net = module.net
    assert isinstance(net, torch.nn.Module)
    return net


class TrainingDiverged(UserError):
    pass


class DivergenceGuard(L.Callback):
    """Stops the run once the training loss is NaN or infinite, instead of training on garbage weights. Reading the
    loss back from a GPU waits for it (a host-device synchronisation), so there it is read on the run's first batch
    and then only when asked: every step a finite-so-far flag is kept on the device and read at the epoch's end, and
    `every_n_steps=N` also reads the loss every N steps. On a CPU the loss is read every step (no device to wait
    for). Its message tells a loss that diverged (after optimizer steps: the learning rate is a likely cause) from
    one that was never finite (on the first batch, before any step: the data or the net, not the learning rate), and
    names the checkpoints saved so far, if any."""

    def __init__(self, every_n_steps: Annotated[int, Ge(1)] | None = None):
        self.every_n_steps = every_n_steps
        self.steps_before = 0  # optimizer steps taken before the batch under way
        self.finite: torch.Tensor | None = None  # on a GPU: whether all of this epoch's losses were finite

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Batch, batch_idx: int) -> None:
        self.steps_before = trainer.global_step

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Batch, batch_idx: int
    ) -> None:
        loss = outputs["loss"].detach()
        asked = self.every_n_steps is not None and batch_idx % self.every_n_steps == 0
        if module.device.type == "cpu" or asked or self.steps_before == 0:  # the first batch: data or net at fault?
            value = float(loss)
            if not math.isfinite(value):
                where = f"the loss was {value} at epoch {trainer.current_epoch}, step {batch_idx}"
                raise TrainingDiverged(self.message(trainer, where, first_batch=self.steps_before == 0))
        else:
            finite = torch.isfinite(loss)
            self.finite = finite if self.finite is None else self.finite & finite

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        finite, self.finite = self.finite, None
        if finite is not None and not bool(finite):  # read once an epoch; the first batch was read on its own
            where = f"the loss was not finite in epoch {trainer.current_epoch}"
            raise TrainingDiverged(self.message(trainer, where, first_batch=False))

    def message(self, trainer: L.Trainer, where: str, first_batch: bool) -> str:
        """What went wrong (`where`), the likely cause (`first_batch`: before any optimizer step, so not the learning
        rate), and what is kept: one line."""
        saved = sorted(
            {
                path
                for c in trainer.checkpoint_callbacks
                for path in (getattr(c, "best_model_path", ""), getattr(c, "last_model_path", ""))
                if path and Path(path).is_file()
            }
        )
        kept = f"the checkpoints saved so far are kept ({', '.join(saved)})" if saved else "no checkpoint was saved"
        if first_batch:
            return (
                f"training failed: {where}, the first batch, before any optimizer step, so the learning rate is not "
                f"the cause: the net's output on these images is not finite (debug=default turns on anomaly "
                f"detection, which names the operation); {kept}"
            )
        lr = trainer.optimizers[0].param_groups[0]["lr"]
        return f"training diverged: {where} (learning rate {lr:.3g}); try a lower optimizer.lr; {kept}"


class Lookahead(L.Callback):
    """Every `every` steps, pull the weights into a slow copy, w_slow <- decay * w_slow + (1 - decay) * w, and
    continue from the slow weights (Zhang et al., 2019, as airbench schedules it). The decay grows as
    base_decay**every * (t / T)**power: free steps early, heavy averaging late. Training ends on the slow weights."""

    def __init__(
        self,
        every: Annotated[int, Ge(1)] = 5,
        base_decay: Annotated[float, Interval(ge=0, le=1)] = 0.95,
        power: Annotated[float, Gt(0)] = 3.0,
    ):
        self.every, self.base_decay, self.power = every, base_decay, power
        self.slow: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not self.slow:  # a resumed run brings its own from the checkpoint
            self.start(_net(module))

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Batch, batch_idx: int
    ) -> None:
        self.step(_net(module), trainer.global_step, trainer.estimated_stepping_batches)

    def start(self, net: torch.nn.Module) -> None:
        self.slow = {k: v.detach().clone() for k, v in net.state_dict().items() if v.is_floating_point()}

    def step(self, net: torch.nn.Module, step: int, total: float) -> None:
        """After optimizer step `step` of `total` (Lightning's estimate, inf for a run without a length)."""
        if step >= total:
            self.pull(net, decay=1.0)  # the last step: keep the slow weights, before the last checkpoint
        elif step % self.every == 0:
            self.pull(net, decay=self.base_decay**self.every * (step / total) ** self.power)

    @torch.no_grad()
    def pull(self, net: torch.nn.Module, decay: float) -> None:
        for name, value in net.state_dict().items():
            if name in self.slow:
                self.slow[name].lerp_(value, 1 - decay)
                value.copy_(self.slow[name])

    def state_dict(self) -> dict:
        return {"slow": self.slow}

    def load_state_dict(self, state_dict: dict) -> None:
        self.slow = state_dict["slow"]


class FreezeAfterEpochs(L.Callback):
    """Trains one parameter (e.g. net.whiten.bias) only for its first `epochs` epochs."""

    def __init__(self, parameter: str, epochs: Annotated[int, Ge(0)]):
        self.parameter, self.epochs = parameter, epochs

    def check_module(self, module: L.LightningModule) -> None:
        """Raises UserError when the net has no such parameter (the recipe's model was swapped for another); called
        by tasks.train.build once the module exists, before the run starts."""
        if self.parameter not in dict(module.named_parameters()):
            raise UserError(
                f"{type(self).__name__}: the model has no parameter {self.parameter!r} to freeze; drop the callback "
                "that names it (e.g. callbacks.whiten_bias=null) or use the model it was written for"
            )

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        module.get_parameter(self.parameter).requires_grad_(trainer.current_epoch < self.epochs)


class StopAtMaxSteps(L.Callback):
    """Ends a run that stops inside an epoch (a fractional `epochs`, e.g. 9.9) the way a whole epoch ends.
    At max_steps Lightning leaves the epoch without validating (Lightning-AI/pytorch-lightning#9855, closed as
    "working as intended"), so the final weights, the ones the schedule and lookahead aimed for, would
    never be validated nor become best.ckpt. Asking it to stop validates first."""

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Batch, batch_idx: int
    ) -> None:
        if 0 < trainer.max_steps <= trainer.global_step:
            trainer.should_stop = True


def training_flops_per_image(net: torch.nn.Module, image_size: int = 32, batch: int = 8) -> float:
    """Forward + backward FLOPs of one training image, counted by torch's FlopCounterMode (convolutions and
    matrix products) on a copy, so the net's gradients and normalisation statistics stay as they are."""
    clone = copy.deepcopy(net).cpu().train()
    images = torch.randn(batch, 3, image_size, image_size)
    with FlopCounterMode(display=False) as counter:
        clone(images).sum().backward()
    return counter.get_total_flops() / batch


class CountTrainingFlops(L.Callback):
    """The run's training compute, a cost no machine's speed changes: FLOPs per training image (forward +
    backward, counted once before the net is compiled) times the training images of every step, all processes
    together. Validation and test-time augmentation are not counted. Kept in checkpoints, so a resumed run adds on."""

    def __init__(self):
        self.flops_per_image = 0.0
        self.images = 0

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.flops_per_image = training_flops_per_image(_net(module), module.hparams["image_size"])

    def on_train_batch_end(
        self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Batch, batch_idx: int
    ) -> None:
        self.images += len(batch[0]) * trainer.world_size

    @property
    def total_flops(self) -> float:
        return self.flops_per_image * self.images

    def state_dict(self) -> dict:
        return {"images": self.images}

    def load_state_dict(self, state_dict: dict) -> None:
        images = state_dict.get("images")
        if not isinstance(images, int) or isinstance(images, bool) or images < 0:
            raise UserError(f"the checkpoint's count of trained images ({images!r}) is not a whole number")
        self.images = images


class KeepRandomState(L.Callback):
    """Keeps torch's global random generators (CPU and CUDA: they shuffle the batches and draw the augmentations) in
    every checkpoint and restores them on resume, so that a run resumed from the end of an epoch continues as the
    uninterrupted run did: the same batches and augmentations, hence the same weights and results."""

    def state_dict(self) -> dict:
        return {
            "cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state_dict(self, state_dict: dict) -> None:
        cpu, cuda = state_dict.get("cpu"), state_dict.get("cuda") or []
        if not isinstance(cpu, torch.Tensor) or cpu.dtype != torch.uint8:
            raise UserError("the checkpoint's random state is not a byte tensor")
        torch.set_rng_state(cpu)
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
