"""metrics.csv, which a resumed run continues.

Lightning's CSVLogger deletes the metrics.csv it finds when it starts, so a resumed run would lose the rows of
the epochs before the kill. This logger writes the same file in the same format (a row per logging call, the
columns sorted, the header rewritten when a column first appears) and continues a file that is there: the train
task cuts it to the epochs the resumed checkpoint completed first (runs.RunFolder.keep_metrics).
"""

import contextlib
import csv
import os
from argparse import Namespace
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only


class CSVLogger(Logger):
    """<save_dir>/metrics.csv and hparams.yaml (`name` and `version` are kept for Lightning's progress bar)."""

    def __init__(self, save_dir: str, name: str | None = "", version: str | int | None = ""):
        super().__init__()
        self._save_dir, self._name, self._version = os.fspath(save_dir), name or "", version if version else ""
        self.rows: list[dict[str, Any]] = []  # logged, not yet written
        self.keys: list[str] | None = None  # the file's columns, read from it when it is first written to

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str | int:
        return self._version

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def log_dir(self) -> str:
        return self._save_dir

    @property
    def metrics_file(self) -> Path:
        return Path(self._save_dir) / "metrics.csv"

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace | None = None, *args: Any, **kwargs: Any) -> None:
        params = vars(params) if isinstance(params, Namespace) else dict(params or {})
        Path(self._save_dir).mkdir(parents=True, exist_ok=True)
        save_hparams_to_yaml(os.path.join(self._save_dir, "hparams.yaml"), params)

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        row = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}
        self.rows.append({**row, "step": len(self.rows) if step is None else step})

    @rank_zero_only
    def save(self) -> None:
        """Appends the rows logged since the last save; a column seen for the first time rewrites the file under
        the new header. A failed write (a full disk) leaves the file as it was, keeps the rows for the next save
        and raises its OSError, naming the file."""
        if not self.rows:
            return
        path = self.metrics_file
        if self.keys is None:
            self.keys = []
            if path.is_file():
                with open(path, newline="") as f:
                    self.keys = list(csv.DictReader(f).fieldnames or [])
        new = set().union(*self.rows) - set(self.keys)
        keys = sorted([*self.keys, *new]) if new else self.keys
        try:
            if new and path.is_file():
                self._rewrite(path, keys)
            else:
                self._append(path, keys)
        except OSError as e:
            e.filename = str(path)  # a failed write names no file
            raise
        self.keys, self.rows = keys, []

    def _rewrite(self, path: Path, keys: list[str]) -> None:
        """The file's rows and the new ones under the header `keys`, written beside it and renamed into place."""
        with open(path, newline="") as f:
            earlier = list(csv.DictReader(f))
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=keys)
                writer.writeheader()
                writer.writerows([*earlier, *self.rows])
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def _append(self, path: Path, keys: list[str]) -> None:
        """The new rows at the file's end (with the header, in a new file); cut back off if the write fails."""
        path.parent.mkdir(parents=True, exist_ok=True)
        size = path.stat().st_size if path.is_file() else 0
        try:
            with open(path, "a", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=keys)
                if not size:
                    writer.writeheader()
                writer.writerows(self.rows)
        except OSError:
            with contextlib.suppress(OSError):  # cutting a file shorter needs no space
                os.truncate(path, size)
            raise

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if status == "failed":  # the run's own error is the one to report, not a last save's on a full disk
            with contextlib.suppress(OSError):
                self.save()
        else:
            self.save()
