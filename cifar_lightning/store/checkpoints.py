"""Saving and loading checkpoints. A checkpoint may come from anywhere: loading one runs no code
(`torch.load(weights_only=True)` refuses pickled objects) and builds nothing its hyperparameters name before
trust.py has checked them."""

import contextlib
import errno
import pickle
import shutil
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn

from cifar_lightning.blocks.errors import UserError, first_line
from cifar_lightning.blocks.module import ImageClassifier
from cifar_lightning.store.runs import write_atomic
from cifar_lightning.store.trust import check_hyperparameters


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, then renames it into place: a run killed while
    saving leaves the previous best.ckpt/last.ckpt whole. (Lightning's own save goes through a temporary
    file in the system temp folder, whose move is a copy when that is another filesystem.)"""

    def save_checkpoint(self, checkpoint: dict, path: str | Path, storage_options: Any = None) -> None:
        save_atomic(Path(path), lambda tmp: torch.save(checkpoint, tmp))


# How torch.save reports a write cut short (a full disk): a RuntimeError, not an OSError (pytorch/pytorch#10577)
TORCH_WRITE_FAILED = ("unexpected pos", "PytorchStreamWriter failed writing file", "file write failed")


def save_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """A checkpoint file written through runs.write_atomic (`write(tmp)`, then renamed into place): a failed write
    leaves the previous file whole, and the run stops (the entry points report it in one line, cli.write_error).

    Raises:
        OSError: the write failed (disk full, quota, permissions), naming `path`; torch's RuntimeError for a
            write cut short is raised as an OSError with errno EIO."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomic(path, write)
    except RuntimeError as e:
        if not any(text in str(e) for text in TORCH_WRITE_FAILED):
            raise
        raise OSError(errno.EIO, "the write was cut short: is the disk full?", str(path)) from None


def saved_epoch(path: Path) -> int | None:
    """The epoch (counted from 0) at whose end a checkpoint file was saved; None without a readable one."""
    with contextlib.suppress(pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        epoch = checkpoint.get("epoch") if isinstance(checkpoint, dict) else None
        return epoch if isinstance(epoch, int) else None
    return None


class BestCheckpoint(Checkpoint):
    """checkpoints/best.ckpt: a copy of last.ckpt from the epoch whose `monitor` was best so far (of every epoch's
    when `monitor` is None, as with nothing to validate).

    Why a copy, not a second ModelCheckpoint(monitor=...): two callbacks write two files one after the other, and
    a run killed between them resumes with best.ckpt and last.ckpt disagreeing, which only rewriting
    ModelCheckpoint's state inside the checkpoint could mend. Here the best epoch travels in last.ckpt as this
    callback's own state (decided at validation, before the epoch's checkpoint is saved), the copy follows the save
    (Lightning runs checkpoint callbacks after the others, in their configured order: configs/callbacks/ lists
    last.ckpt's first), and a resumed run repeats a copy that a kill cut off.

    Args:
        dirpath: the run's checkpoints/ folder, holding `<source>.ckpt` (saved each epoch by a ModelCheckpoint
            with save_on_train_epoch_end=True) and `<filename>.ckpt`.
        monitor: the logged metric that ranks epochs (a float scalar), or None.
        mode: "max" or "min": which way `monitor` is better.
    """

    def __init__(
        self,
        dirpath: str,
        monitor: str | None = "val/acc",
        mode: Literal["max", "min"] = "max",
        filename: str = "best",
        source: str = "last",
    ):
        self.dirpath, self.monitor, self.mode = Path(dirpath), monitor, mode
        self.path, self.source = self.dirpath / f"{filename}.ckpt", self.dirpath / f"{source}.ckpt"
        self.best_model_score: float | None = None
        self.best_epoch: int | None = None

    @property
    def best_model_path(self) -> str:
        """best.ckpt once an epoch has been chosen, else ""."""
        return str(self.path) if self.best_epoch is not None else ""

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        score = trainer.callback_metrics.get(self.monitor) if self.monitor else None
        if trainer.sanity_checking or trainer.fast_dev_run or score is None:  # type: ignore[attr-defined]
            return
        best = self.best_model_score
        if best is None or (float(score) > best if self.mode == "max" else float(score) < best):
            self.best_model_score, self.best_epoch = float(score), trainer.current_epoch

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.fast_dev_run:  # type: ignore[attr-defined]  # Lightning sets it, undeclared; it saves nothing
            return
        if self.monitor is None:
            self.best_epoch = trainer.current_epoch
        if self.best_epoch == trainer.current_epoch:
            self._copy(trainer, self.source)

    def on_load_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # resuming from the checkpoint of the best epoch: its copy may be the one a kill cut off
        state, epoch = checkpoint.get("callbacks", {}).get(self.state_key, {}), checkpoint.get("epoch")
        was_best = self.monitor is None or (state.get("monitor") == self.monitor and state.get("best_epoch") == epoch)
        if trainer.state.fn == TrainerFn.FITTING and trainer.ckpt_path and was_best:
            self._copy(trainer, Path(trainer.ckpt_path))

    def _copy(self, trainer: L.Trainer, source: Path) -> None:
        if trainer.is_global_zero:
            save_atomic(self.path, lambda tmp: shutil.copyfile(source, tmp))
        trainer.strategy.barrier("best_checkpoint")

    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "best_model_score": self.best_model_score, "best_epoch": self.best_epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("monitor") == self.monitor:  # a different metric's best says nothing about this one
            self.best_model_score, self.best_epoch = state_dict["best_model_score"], state_dict["best_epoch"]


def load_checkpoint(path: Path, trusted_modules: Sequence[str] = ()) -> dict:
    """A checkpoint file's contents, refused (UserError) unless it is a zip archive torch.save wrote holding
    only tensors and plain values, with model hyperparameters that trust.py accepts."""
    if not zipfile.is_zipfile(path):  # torch.save writes zip archives; a cut-off one loses its directory
        raise UserError(f"{path} is not a readable checkpoint (truncated, or not a file torch.save wrote)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        why = next((line.strip() for line in str(e).splitlines() if "Unsupported global" in line), "")
        raise UserError(
            f"{path} was refused: it holds objects other than tensors and plain values, which could "
            f"run code when loaded ({why[:200] or type(e).__name__})"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise UserError(
            f"{path} is not a readable checkpoint (truncated or not a torch file: {type(e).__name__})"
        ) from None
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if not isinstance(hparams, dict) or "net" not in hparams or not isinstance(checkpoint.get("state_dict"), dict):
        raise UserError(f"{path} is not a cifar-lightning checkpoint (no model hyperparameters in it)")
    try:
        check_hyperparameters(checkpoint["hyper_parameters"], trusted_modules)
    except UserError as e:
        raise UserError(f"{path} was refused: {e}") from None
    return checkpoint


def load_model(path: Path, trusted_modules: Sequence[str] = ()) -> ImageClassifier:
    """The trained model, rebuilt from the checkpoint alone, in eval mode on the CPU. Never compiled: compiling
    would run a C compiler and write its cache outside the run folder."""
    checkpoint = load_checkpoint(path, trusted_modules)
    try:
        model = ImageClassifier(**{**checkpoint["hyper_parameters"], "compile": False})
        model.on_load_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["state_dict"])
    except (TypeError, RuntimeError, KeyError, ValueError) as e:
        raise UserError(
            f"{path} does not fit this version's model ({type(e).__name__}: {first_line(e)[:200]})"
        ) from None
    if not (model.temperature.isfinite() and model.temperature > 0):
        raise UserError(f"{path} was refused: its temperature {float(model.temperature)} is not a positive number")
    scores = model.conformal_scores
    if not (scores.dim() == 1 or (scores.dim() == 2 and scores.shape[1] == 2)) or not scores.isfinite().all():
        raise UserError(f"{path} was refused: its conformal scores are not a list of finite numbers (or of pairs)")
    return model.eval()


def _read_tensors(path: Path) -> dict:
    """A checkpoint file's contents with nothing built from them (tensors and plain values only)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as e:
        raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise UserError(f"{path} is not a cifar-lightning checkpoint (no state_dict in it)")
    return checkpoint


def read_weights(path: Path) -> dict:
    """The state_dict of a checkpoint (weights, normalisation, temperature): names to tensors."""
    return _read_tensors(path)["state_dict"]


def write_temperature(path: Path, temperature: float, conformal_scores: torch.Tensor | None = None) -> None:
    """Sets the calibration temperature in a checkpoint file (and its conformal scores, when given: both in one
    write, so that they never disagree), rewritten atomically. Its hyperparameters are not read: the caller has
    loaded the model it holds through load_model, or wrote the file itself."""
    checkpoint = _read_tensors(Path(path))
    checkpoint["state_dict"]["temperature"] = torch.tensor(temperature)
    if conformal_scores is not None:
        checkpoint["state_dict"]["conformal_scores"] = conformal_scores.detach().float().cpu()
    AtomicCheckpointIO().save_checkpoint(checkpoint, path)
