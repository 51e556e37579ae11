"""Training callbacks of our own, next to Lightning's (configured in configs/callbacks/)."""
import math

import lightning as L

from cifar_lightning.cli import UserError


class TrainingDiverged(UserError):
    pass


class DivergenceGuard(L.Callback):
    """Stops the run as soon as the training loss is NaN or infinite, instead of finishing the epoch on
    garbage weights. The check reads the loss back from the device, so on a GPU it runs every few steps."""

    def __init__(self, every_n_steps: int = 10):
        self.every_n_steps = every_n_steps

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if batch_idx % self.every_n_steps and module.device.type != "cpu":
            return
        loss = float(outputs["loss"])
        if not math.isfinite(loss):
            lr = trainer.optimizers[0].param_groups[0]["lr"]
            raise TrainingDiverged(
                f"training diverged: the loss became {loss} at epoch {trainer.current_epoch}, step {batch_idx} "
                f"(learning rate {lr:.3g}); try a lower optimizer.lr. The best checkpoint so far is kept.")
