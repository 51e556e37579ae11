"""The LightningModule: normalisation, augmentation, net, loss, metrics, optimizer and schedule.

Its constructor takes plain configs (dicts with `_target_`) rather than built objects, and stores them
with `save_hyperparameters()`: a checkpoint alone then rebuilds the same model, normalisation and class
names, and holds nothing but plain containers and tensors (so it loads with `weights_only=True`).
"""

import math
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from annotated_types import Ge, Gt, Interval
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn
from torchmetrics import MeanMetric, Metric
from torchmetrics.classification import MulticlassAccuracy
from tqdm import tqdm

from cifar_lightning.blocks.checks import check_value
from cifar_lightning.blocks.data import Batch

# 0: the image alone; 1: the mean with its mirror image; 2 (airbench): half that, half the same over the image
# shifted 1 px up-left and 1 px down-right (six views)
# a range, not Literal[0, 1, 2]: pydantic matches a Literal number by equality, and True == 1
TTA = Annotated[int, Interval(ge=0, le=2), "must be 0 (off), 1 (mirror) or 2 (six views)"]
VIEWS = {0: 1, 1: 2, 2: 6}  # forward passes per image of each TTA level
TTA_FRACTION = Annotated[float, Interval(gt=0, le=1), "must be a share in (0, 1]: 1 gives every image the TTA views"]
# the normalisation (the training split's channel statistics, data.channel_stats): images are divided by the std
MEAN = Annotated[Sequence[Annotated[float, Interval(ge=0, le=1)]], "must be a number from 0 to 1 per channel"]
STD = Annotated[Sequence[Annotated[float, Gt(0)]], "must be a finite number above 0 per channel (it divides)"]


def forward_passes_per_image(tta: int, tta_fraction: float) -> float:
    """The net's forward passes per image of `logits(images, tta, tta_fraction=...)` (up to the rounding up of
    each batch's selected images): the plain pass of every image, and the other views of the selected share."""
    return 1 + (VIEWS[tta] - 1) * tta_fraction


def plain(config: Any) -> Any:
    """An OmegaConf node as plain dicts and lists, anything else unchanged."""
    if isinstance(config, (DictConfig, ListConfig)):
        return OmegaConf.to_container(config, resolve=True)
    return config


def _fit_conformal_scores(module: "ImageClassifier", state_dict: dict, prefix: str, *_: Any) -> None:
    """A load_state_dict pre-hook: a checkpoint's conformal scores are as many as its validation images, and a
    checkpoint saved before they were kept has none (empty); the buffer takes their size before they are copied."""
    scores = state_dict.setdefault(f"{prefix}conformal_scores", torch.empty(0))
    module.conformal_scores = module.conformal_scores.new_empty(scores.shape)


def stage_metrics(num_classes: int) -> nn.ModuleDict:
    """The loss (mean) and accuracy of each stage (train, val, test), apart so that running states never mix.
    Steps only update them and each epoch logs them once: self.log at every step adds Lightning's bookkeeping to
    every step; validate_args=False skips a per-step input check, and nan_strategy="disable" a NaN check that reads
    the loss back from the device every step (a NaN loss then shows in the epoch's mean, validation and test ones
    too, instead of being dropped with a warning; DivergenceGuard stops a training run at one). Under DDP, compute()
    gathers the states of all ranks."""
    metrics = nn.ModuleDict()
    for stage in ("train", "val", "test"):
        metrics[f"{stage}_loss"] = MeanMetric(nan_strategy="disable")
        metrics[f"{stage}_acc"] = MulticlassAccuracy(num_classes, average="micro", validate_args=False)
    return metrics


class ImageClassifier(L.LightningModule):
    """The LightningModule of every recipe: uint8 (N, 3, H, W) batches are augmented and normalised on the device,
    the net gives logits (N, classes); cross-entropy training, accuracy per stage, optional test-time augmentation
    and a calibration temperature and conformal scores (buffers, saved in checkpoints)."""

    # buffers (register_buffer): declared here, as torch types a Module's attributes Tensor | Module
    mean: torch.Tensor
    std: torch.Tensor
    temperature: torch.Tensor
    conformal_scores: torch.Tensor

    def __init__(
        self,
        net: dict,
        optimizer: dict,
        scheduler: dict | None = None,
        augmentation: dict | None = None,
        class_names: Sequence[str] = (),
        mean: MEAN = (0.5, 0.5, 0.5),
        std: STD = (0.25, 0.25, 0.25),
        image_size: Annotated[int, Ge(1)] = 32,
        label_smoothing: Annotated[float, Interval(ge=0, lt=1)] = 0.0,
        loss_reduction: Annotated[Literal["mean", "sum"], "must be mean or sum"] = "mean",
        channels_last: bool = False,
        compile: bool = False,
        tta: TTA = 0,
        tta_fraction: TTA_FRACTION = 1.0,
    ):
        """
        Args:
            net, optimizer, scheduler, augmentation: configs with a `_target_` (the optimizer and scheduler
                `_partial_`); the net is built with `num_classes=len(class_names)`.
            class_names: the data's classes, in label order.
            mean, std: per-channel normalisation on the 0..1 scale (the training split's); checked here, before
                any training: a std of 0 or a NaN would make every loss NaN, which no learning rate causes.
            image_size: height and width of the images, in pixels.
            label_smoothing: of the training loss (Szegedy et al., 2016).
            loss_reduction: "sum" makes the gradient grow with the batch (airbench).
            channels_last, compile: NHWC memory layout for the net and its inputs; torch.compile the net to train.
            tta, tta_fraction: the test-time augmentation of validation and test, and the share of each batch's
                images, least confident first, that get its views; the others keep their plain logits (`logits`).
        """
        super().__init__()
        net, optimizer, scheduler, augmentation = map(plain, (net, optimizer, scheduler, augmentation))
        class_names, mean, std = list(class_names), list(mean), list(std)
        check_value("module.mean", mean, MEAN)
        check_value("module.std", std, STD)
        self.save_hyperparameters()
        self.net = instantiate(net, num_classes=len(class_names))
        self.augment = instantiate(augmentation) if augmentation else None
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        # divides the logits wherever probabilities are shown (calibration.py); 1 until fitted on validation
        self.register_buffer("temperature", torch.ones(()))
        self.total_steps: int | None = None  # the run's optimizer steps, once the trainer has counted them
        # the validation split's conformal scores, sorted (conformal.py): empty until fitted, or without validation
        self.register_buffer("conformal_scores", torch.empty(0))
        self.register_load_state_dict_pre_hook(_fit_conformal_scores)
        if channels_last:
            self.net.to(memory_format=torch.channels_last)
        self.metrics = stage_metrics(len(class_names))

    # ------------------------------------------------------------------------------------- forward
    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor) -> None:
        """Nets that initialise from the data (airbench's whitening) get these uint8 training images, normalised."""
        init_from_data = getattr(self.net, "init_from_data", None)
        if init_from_data is not None:
            init_from_data(self.normalize(images))

    def configure_model(self) -> None:
        if self.hparams["compile"]:
            self.net.compile()  # in place: parameter names, and so checkpoints, stay the same

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, C, H, W) in 0..255 -> normalised float32 (N, C, H, W)."""
        return (images.float() / 255 - self.mean) / self.std

    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        """Training batches are normalised and augmented here, on the device; other batches stay uint8 for
        `logits`, the one inference path."""
        images, labels, indices = batch
        if not self.trainer.training:
            return batch
        x = self.normalize(images)
        if self.augment is not None:
            x = self.augment(x, indices, self.current_epoch)
        if self.hparams["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, labels, indices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # ------------------------------------------------------------------------------------- inference
    def logits(
        self,
        images: torch.Tensor,
        tta: int | None = None,
        calibrated: bool = False,
        tta_fraction: float | None = None,
    ) -> torch.Tensor:
        """The one inference path: uint8 images (N, C, H, W) on the module's device -> logits (N, classes).

        Args:
            images: uint8, 0..255, `image_size` pixels high and wide.
            tta: 0 the image alone; 1 the mean with its mirror image; 2 (airbench) half that, half the same over
                the image shifted 1 px up-left and 1 px down-right; None: the module's own `tta`.
            calibrated: divide by the temperature fitted on validation (calibration.py).
            tta_fraction: selective TTA (hiverge/cifar10-speedrun): only the ceil(tta_fraction x N) images whose
                plain logits are least confident (lowest top softmax probability) get the `tta` views, the others
                keep their plain logits; 1 gives every image the views. None: the module's own `tta_fraction`.
        """
        tta = self.hparams["tta"] if tta is None else int(tta)
        fraction = self.hparams["tta_fraction"] if tta_fraction is None else float(tta_fraction)
        x = self.normalize(images)
        if self.hparams["channels_last"]:
            x = x.contiguous(memory_format=torch.channels_last)
        if tta == 0:
            logits = self.net(x)
        elif fraction >= 1:
            logits = self._views(x, tta)
        else:
            logits = self.net(x)
            confidence = logits.detach().float().softmax(dim=1).amax(dim=1)
            chosen = confidence.topk(math.ceil(fraction * len(x)), largest=False).indices
            logits = logits.index_put((chosen,), self._views(x[chosen], tta, logits[chosen]))
        return logits / self.temperature if calibrated else logits

    def _views(self, x: torch.Tensor, tta: int, plain: torch.Tensor | None = None) -> torch.Tensor:
        """The `tta` (1 or 2) logits of normalised images, reusing their `plain` logits when already computed."""

        def with_mirror(v: torch.Tensor, logits: torch.Tensor | None = None) -> torch.Tensor:
            return ((self.net(v) if logits is None else logits) + self.net(v.flip(3))) / 2

        logits = with_mirror(x, plain)
        if tta >= 2:
            padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
            h, w = x.shape[-2:]
            up_left, down_right = padded[..., :h, :w], padded[..., 2:, 2:]
            logits = logits / 2 + (with_mirror(up_left) + with_mirror(down_right)) / 4
        return logits

    @torch.inference_mode()
    def predict_logits(
        self,
        images: torch.Tensor,
        tta: int | None = None,
        batch_size: int = 500,
        calibrated: bool = False,
        tta_fraction: float | None = None,
    ) -> torch.Tensor:
        """`logits` of any number of uint8 images (N, C, H, W), `batch_size` at a time on the module's device, in
        eval mode, without gradients; float32 (N, classes) on the CPU. Shows a progress bar on a terminal once it
        has taken a second.
        Selective TTA (`tta_fraction` < 1) chooses the least confident images of each batch."""
        self.eval()
        starts = range(0, len(images), batch_size)
        batches = tqdm(starts, desc="predicting", unit="batch", leave=False, delay=1, disable=None)  # None: tty only
        out = [
            self.logits(images[i : i + batch_size].to(self.device), tta, calibrated, tta_fraction).float().cpu()
            for i in batches
        ]
        return torch.cat(out) if out else torch.empty(0, len(self.hparams["class_names"]))

    # ------------------------------------------------------------------------------------- steps
    @staticmethod
    def logged_metrics(validates: bool = True) -> list[str]:
        """The metrics a training run logs each epoch (callbacks may watch these)."""
        return [f"{stage}/{name}" for stage in ("train", "val")[: 1 + validates] for name in ("loss", "acc")]

    def _metric(self, name: str) -> Metric:
        metric = self.metrics[name]
        assert isinstance(metric, Metric)  # a ModuleDict's items type as Module
        return metric

    def _step(self, stage: str, batch: Batch, logits: torch.Tensor) -> torch.Tensor:
        _, labels, _ = batch
        smoothing = self.hparams["label_smoothing"] if stage == "train" else 0.0
        losses = F.cross_entropy(logits, labels, label_smoothing=smoothing, reduction="none")
        self._metric(f"{stage}_loss").update(losses.detach())
        self._metric(f"{stage}_acc").update(logits.detach(), labels)
        # "sum" (airbench) makes the gradient grow with the batch size; the logged loss is a mean either way
        return losses.sum() if self.hparams["loss_reduction"] == "sum" else losses.mean()

    def _log_epoch(self, stage: str) -> None:
        for name in ("loss", "acc"):
            metric = self._metric(f"{stage}_{name}")
            # compute() has gathered all ranks already; sync_dist only tells Lightning so (the values are equal)
            self.log(f"{stage}/{name}", metric.compute(), prog_bar=True, sync_dist=True)
            metric.reset()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Lightning writes an epoch's rows to metrics.csv only after its checkpoints: a run killed in between resumes
        # with them from here (tasks/resume.py)
        checkpoint["epoch_metrics"] = {
            k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith(("train/", "val/"))
        }
        # the length the optimizer and schedule were built for: a resumed run must have the same (tasks/resume.py)
        checkpoint["total_steps"] = self.total_steps

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return self._step("train", batch, self(batch[0]))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._step("val", batch, self.logits(batch[0]))

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._step("test", batch, self.logits(batch[0]))

    # ------------------------------------------------------------------------------------- optimization
    def configure_optimizers(self) -> Any:
        self.total_steps = int(self.trainer.estimated_stepping_batches)
        optimizer, scheduler, interval = self.optimizer_and_schedule(self.total_steps)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    @staticmethod
    def takes_run_length(hparams: dict) -> bool:
        """Whether the optimizer or schedule these hyperparameters name is built for the run's number of optimizer
        steps (their total_steps is null; see optimizer_and_schedule)."""
        return any((hparams.get(k) or {}).get("total_steps", 0) is None for k in ("optimizer", "scheduler"))

    def optimizer_and_schedule(self, total_steps: int) -> tuple[torch.optim.Optimizer, Any, str | None]:
        """The optimizer, its schedule (or None) and the schedule's interval (step|epoch) for a run of `total_steps`
        optimizer steps; the benchmarks' plain loop builds its own from here too."""

        def whole_run(config: dict) -> dict:  # a null total_steps means "the whole run"
            return {**config, "total_steps": total_steps} if config.get("total_steps", 0) is None else dict(config)

        # named, so that a factory can treat groups of parameters differently (cifar_lightning.blocks.optim)
        optimizer = instantiate(whole_run(self.hparams["optimizer"]))(self.named_parameters())
        if not self.hparams["scheduler"]:
            return optimizer, None, None
        config = whole_run(self.hparams["scheduler"])
        interval = config.pop("interval", "epoch")
        return optimizer, instantiate(config)(optimizer), interval
