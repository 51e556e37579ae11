"""Callbacks that tests add to real runs with +callbacks.NAME._target_=helpers.NAME (tests/ on PYTHONPATH)."""
from pathlib import Path

import lightning as L
import torch


class RecordIndices(L.Callback):
    """Saves the dataset indices each process trained on in epoch 0, to <dir>/indices_rank<R>.pt."""

    def __init__(self, dir: str):
        self.dir, self.seen = Path(dir), []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.current_epoch == 0:
            self.seen.append(batch[2].cpu())

    def on_train_epoch_end(self, trainer, module):
        if trainer.current_epoch == 0:
            torch.save(torch.cat(self.seen), self.dir / f"indices_rank{trainer.global_rank}.pt")


class SlowSteps(L.Callback):
    """Makes each training step take at least `seconds`, so that a test can kill a run mid-epoch."""

    def __init__(self, seconds: float = 0.03):
        self.seconds = seconds

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        import time

        time.sleep(self.seconds)


class StopAfterEpoch(L.Callback):
    """Ends fit() normally after epoch `epoch`, as if the run had been cut there (its checkpoints are written)."""

    def __init__(self, epoch: int = 0):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, module):
        if trainer.current_epoch == self.epoch:
            trainer.should_stop = True


class RecordTrainStart(L.Callback):
    """Keeps, in `RecordTrainStart.seen`, the other callbacks' and the net's state as training starts."""

    seen: list[dict] = []

    def on_train_start(self, trainer, module):
        lookahead = next((c for c in trainer.callbacks if type(c).__name__ == "Lookahead"), None)
        RecordTrainStart.seen.append({
            "slow": {k: v.clone() for k, v in lookahead.slow.items()} if lookahead else None,
            "net": {k: v.clone() for k, v in module.net.state_dict().items()},
            "compiled": getattr(module.net, "_compiled_call_impl", None) is not None})
