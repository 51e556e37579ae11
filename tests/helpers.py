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
    """Makes each training step take at least `seconds`, so that a test can kill a run mid-epoch; once the file
    `until` exists (if given), steps run at full speed again: the test has seen what it waited for."""

    def __init__(self, seconds: float = 0.03, until: str | None = None):
        self.seconds, self.until = seconds, until

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        import time

        if self.until is None or not Path(self.until).exists():
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
        RecordTrainStart.seen.append(
            {
                "slow": {k: v.clone() for k, v in lookahead.slow.items()} if lookahead else None,
                "net": {k: v.clone() for k, v in module.net.state_dict().items()},
                "compiled": getattr(module.net, "_compiled_call_impl", None) is not None,
            }
        )


class KillAt(L.Callback):
    """SIGKILLs its own process, once (a `once` file records it), at `point` of epoch `epoch`: a crash with no chance
    to clean up. Points: train_step, validation, checkpoint_save (halfway through writing the epoch's first
    checkpoint), after_checkpoint (right after the epoch's first checkpoint is in place), test, summary (while
    summary.json is written)."""

    POINTS = ("train_step", "validation", "checkpoint_save", "after_checkpoint", "test", "summary")

    def __init__(self, point: str, once: str, epoch: int = 1):
        import os
        from pathlib import Path

        import cifar_lightning.store.checkpoints as checkpoints
        import cifar_lightning.store.runs as runs

        assert point in self.POINTS, point
        self.point, self.once, self.epoch, self.current_epoch = point, Path(once), epoch, -1
        if self.once.exists():
            return
        if point in ("checkpoint_save", "after_checkpoint"):
            save, replace = torch.save, os.replace

            def saving(obj, f, *args, **kwargs):
                if point == "checkpoint_save" and self.current_epoch == self.epoch and str(f).endswith(".ckpt.tmp"):
                    Path(f).write_bytes(b"PK\x03\x04 half a checkpoint")
                    self.kill()
                return save(obj, f, *args, **kwargs)

            def replacing(src, dst, *args, **kwargs):
                replace(src, dst, *args, **kwargs)
                if point == "after_checkpoint" and self.current_epoch == self.epoch and str(dst).endswith(".ckpt"):
                    self.kill()

            checkpoints.torch.save, runs.os.replace = saving, replacing
        if point == "summary":
            write = runs.write_atomic

            def writing(path, text):
                if path.name == "summary.json":
                    path.with_name(f".{path.name}.tmp").write_text(text[: len(text) // 2])
                    self.kill()
                return write(path, text)

            runs.write_atomic = writing  # RunFolder.write writes every file of the run folder through it

    def kill(self):
        import os
        import signal

        self.once.touch()
        os.kill(os.getpid(), signal.SIGKILL)

    def on_train_epoch_start(self, trainer, module):
        self.current_epoch = trainer.current_epoch

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if (
            self.point == "train_step"
            and trainer.current_epoch == self.epoch
            and batch_idx == 2
            and not self.once.exists()
        ):
            self.kill()

    def on_validation_batch_end(self, trainer, module, *args):
        if (
            self.point == "validation"
            and not trainer.sanity_checking
            and trainer.current_epoch == self.epoch
            and not self.once.exists()
        ):
            self.kill()

    def on_test_batch_start(self, trainer, module, *args):
        if self.point == "test" and not self.once.exists():
            self.kill()


class DiskFullAfter(L.Callback):
    """Makes every checkpoint write (a save or best.ckpt's copy) after the first `saves` fail as on a full disk
    (OSError ENOSPC)."""

    def __init__(self, saves: int):
        import errno

        import cifar_lightning.store.checkpoints as checkpoints

        save, copy, count = checkpoints.torch.save, checkpoints.shutil.copyfile, [0]

        def full(f):
            if str(f).endswith(".ckpt.tmp"):
                count[0] += 1
                if count[0] > saves:
                    raise OSError(errno.ENOSPC, "No space left on device", str(f))

        def saving(obj, f, *args, **kwargs):
            full(f)
            return save(obj, f, *args, **kwargs)

        def copying(src, dst, *args, **kwargs):
            full(dst)
            return copy(src, dst, *args, **kwargs)

        checkpoints.torch.save, checkpoints.shutil.copyfile = saving, copying


class RecordProcess(L.Callback):
    """Writes, as training starts, what each process knows of the run to <dir>/process_rank<R>.json: its rank,
    the world size, the cluster environment Lightning detected, its pid and the Slurm task it runs as."""

    def __init__(self, dir: str):
        self.dir = Path(dir)

    def on_train_start(self, trainer, module):
        import json
        import os

        record = {
            "global_rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "cluster_environment": type(trainer.strategy.cluster_environment).__name__,
            "pid": os.getpid(),
            "slurm_procid": os.environ.get("SLURM_PROCID"),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        }
        (self.dir / f"process_rank{trainer.global_rank}.json").write_text(json.dumps(record))


class PoisonWeights(L.Callback):
    """Fills the net's weights with NaN before optimizer step `step` (0: before any), so that the loss is NaN."""

    def __init__(self, step: int = 0):
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                for parameter in module.net.parameters():
                    parameter.fill_(float("nan"))


class SignalAt(L.Callback):
    """Sends `signum` (a number: 15 SIGTERM, 2 SIGINT) to its own process, as `kill` or Ctrl-C would, at `point` of
    epoch `epoch`: train_step (the epoch's third step), validation (its first batch, not the sanity check) or test
    (the first test batch). Once per process, or with `once` (a file it creates) once for good: a resumed run
    carries the callback in its config."""

    def __init__(self, signum: int, point: str, epoch: int = 1, once: str | None = None):
        assert point in ("train_step", "validation", "test"), point
        self.signum, self.point, self.epoch, self.sent = signum, point, epoch, False
        self.once = Path(once) if once else None

    def send(self):
        import os

        if not self.sent and not (self.once and self.once.exists()):
            self.sent = True
            if self.once:
                self.once.touch()
            os.kill(os.getpid(), self.signum)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.point == "train_step" and trainer.current_epoch == self.epoch and batch_idx == 2:
            self.send()

    def on_validation_batch_start(self, trainer, module, *args):
        if self.point == "validation" and not trainer.sanity_checking and trainer.current_epoch == self.epoch:
            self.send()

    def on_test_batch_start(self, trainer, module, *args):
        if self.point == "test":
            self.send()


class DiskFull(L.Callback):
    """Makes the writes of run-folder files named `name` (summary.json, metrics.csv, run.json, config_tree.txt, or
    last.ckpt / best.ckpt) fail as on a full disk once the first `writes` of them succeeded: a file opened through
    open() or Path.write_text opens, and its first write raises OSError ENOSPC naming no file, as a real one does; a
    checkpoint's torch.save raises the RuntimeError torch raises there (pytorch/pytorch#10577), its copy an OSError."""

    def __init__(self, name: str, writes: int = 0):
        import builtins
        import errno
        import io

        import cifar_lightning.store.checkpoints as checkpoints

        count, real_open, save, copy = [0], builtins.open, checkpoints.torch.save, checkpoints.shutil.copyfile

        def full(file) -> bool:
            if Path(str(file)).name not in (name, f".{name}.tmp"):
                return False
            count[0] += 1
            return count[0] > writes

        def opening(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            if any(m in mode for m in "wax") and not isinstance(file, int) and full(file):

                def write(*_):
                    raise OSError(errno.ENOSPC, "No space left on device")

                f.write = write
            return f

        def saving(obj, f, *args, **kwargs):
            if full(f):
                Path(f).write_bytes(b"PK\x03\x04 half")
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
            return save(obj, f, *args, **kwargs)

        def copying(src, dst, *args, **kwargs):  # best.ckpt's copy (os.sendfile, not a write)
            if full(dst):
                raise OSError(errno.ENOSPC, "No space left on device")
            return copy(src, dst, *args, **kwargs)

        builtins.open = io.open = opening
        checkpoints.torch.save, checkpoints.shutil.copyfile = saving, copying
