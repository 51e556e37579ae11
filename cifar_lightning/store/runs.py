"""The run folder: its layout, a unique claim, its age, the lock of the process training in it,
`ckpt=best|last|PATH|RUN` and atomic writes.

    outputs/runs/<date_time>_<6 hex>/        (outputs/multiruns/<date_time>_<6 hex>/<job>/ under -m)
      .hydra/config.yaml, overrides.yaml       the composed config (a resume adds .hydra/resume_<time>/)
      run.json                                 when the run started (its age: `newest` compares these)
      checkpoints/best.ckpt, last.ckpt         the best val/acc so far, and every epoch's (for resume=)
      metrics.csv, hparams.yaml, train.log     per-epoch metrics, Lightning's and Hydra's logs
      config_tree.txt                          the composed config as printed at the start
      summary.json                             written last: a run that has it finished (pruned: true for a trial
                                               an Optuna pruner stopped, finished too)
      eval/<split>[_<data>]/                   evaluate.py's report, written whole or not at all
      model.onnx                               export.py's model
      mlflow_run.json                          with logger=mlflow: the MLflow run it logs to (tracking.py)
      .lock                                    locked (flock) by the process training in the folder, with its id

Everything else in the project asks this module where a file of a run lives. A run is named by its folder, or
as mlflow:RUN_ID by the MLflow run it logged to (`named`).
"""

import contextlib
import csv
import fcntl
import json
import os
import secrets
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import yaml

from cifar_lightning.blocks.errors import UserError
from cifar_lightning.blocks.paths import user_path

STAMP = "%Y-%m-%d_%H-%M-%S"
LOCK = ".lock"
HELD: set[IO] = set()  # the lock files of the folders this process trains in
# A process forked from a trainer (a data loader's worker) holds no run: closing its copies leaves the lock with the
# trainer alone, so that the kernel frees it the moment the trainer dies, whatever the workers do
os.register_at_fork(after_in_child=lambda: [lock.close() for lock in HELD])


def write_atomic(path: Path, content: str | Callable[[Path], object]) -> None:
    """A file written beside its place (the text, or what `content(tmp)` writes into tmp) and renamed into it:
    never seen half-written, even after a kill. Raises the OSError of a failed write (a full disk), naming `path`;
    the old file stays."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(content) if isinstance(content, str) else content(tmp)
        os.replace(tmp, path)
    except OSError as e:
        if e.filename in (None, str(tmp)):  # a failed write names no file, a failed open the temporary one
            e.filename = str(path)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def sweep_root(sweep: Path) -> Path | None:
    """The runs root that holds a sweep's folder by the layout (<root>/multiruns/<sweep>), or None."""
    return sweep.parent.parent if sweep.parent.name == "multiruns" else None


# The files of a run folder besides its subfolders (.hydra/, checkpoints/, eval/, tensorboard/, ...): what the
# layout above names, with debug=profiler's report; the files of its subfolders are the run's too
RECORDS = frozenset(
    ("run.json", "metrics.csv", "hparams.yaml", "train.log", "config_tree.txt", "summary.json", "mlflow_run.json",
     "fit-profile.txt", LOCK)
)  # fmt: skip


class RunFolder:
    """One training run's folder (see the module's docstring for its layout)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @classmethod
    def of_checkpoint(cls, checkpoint: Path) -> "RunFolder":
        """Checkpoints live in <run>/checkpoints/; a loose file's run folder is its own folder."""
        checkpoint = Path(checkpoint)
        return cls(checkpoint.parent.parent if checkpoint.parent.name == "checkpoints" else checkpoint.parent)

    # ------------------------------------------------------------------------------------- layout
    @property
    def root(self) -> Path | None:
        """The runs root that holds this folder by the layout (<root>/runs/<run>, <root>/multiruns/<sweep>/<job>),
        or None for a folder placed elsewhere (hydra.run.dir=...)."""
        if self.path.parent.name == "runs":
            return self.path.parent.parent
        return sweep_root(self.path.parent)

    def holds(self, path: Path) -> bool:
        """Whether `path` names one of the run's own files (RECORDS, or anything in a subfolder), by whatever
        spelling; export.py's model.<format> and files of the user's beside them are not. A folder without .hydra/
        is no run (a loose checkpoint's folder, say) and holds none."""
        inside = user_path(path).resolve()
        folder = self.path.resolve()
        if not (folder / ".hydra").is_dir() or not inside.is_relative_to(folder) or inside == folder:
            return False
        parts = inside.relative_to(folder).parts
        return len(parts) > 1 or parts[0] in RECORDS

    def checkpoint(self, name: str) -> Path:
        """<run>/checkpoints/<name>.ckpt (name: best or last)."""
        return self.path / "checkpoints" / f"{name}.ckpt"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def metrics_csv(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def config(self) -> Path:
        return self.path / ".hydra" / "config.yaml"

    @property
    def overrides(self) -> Path:
        return self.path / ".hydra" / "overrides.yaml"

    def recorded_overrides(self) -> list[str]:
        """The command-line overrides the run was started with (.hydra/overrides.yaml), read as plain YAML.

        Raises:
            UserError: the file is missing or is not a list of strings (one line naming it)."""
        try:
            overrides = yaml.safe_load(self.overrides.read_text())
        except (OSError, ValueError, RecursionError, yaml.YAMLError) as e:  # UnicodeDecodeError is a ValueError
            raise UserError(
                f"{self.overrides} cannot be read ({type(e).__name__}), so the run's config is unknown"
            ) from None
        if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
            raise UserError(f"{self.overrides} is not a list of overrides, so the run's config is unknown")
        return overrides

    def export_file(self, format: str) -> Path:
        """<run>/model.<format>: what export.py writes by default."""
        return self.path / f"model.{format}"

    def eval_dir(self, split: str, data_root: Path | None = None) -> Path:
        """eval/<split>/ for the run's own data; data chosen on the command line gets eval/<split>_<its folder>/."""
        return self.path / "eval" / (split if data_root is None else f"{split}_{Path(data_root).name}")

    # ------------------------------------------------------------------------------------- state
    @property
    def finished(self) -> bool:
        """summary.json is the last file a run writes."""
        return self.summary.is_file()

    def mark_started(self) -> None:
        """Records when the run started, once: a resumed run keeps its first start."""
        record = self.path / "run.json"
        if not record.is_file():
            self.path.mkdir(parents=True, exist_ok=True)
            write_atomic(record, json.dumps({"started": time.time()}) + "\n")

    @property
    def started(self) -> float:
        """When the run started (seconds since the epoch): run.json's record, else 0. Never a file's modification
        time, which rewriting a checkpoint (evaluate.py calibrate=true) moves."""
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            started = json.loads((self.path / "run.json").read_text())["started"]
            if isinstance(started, (int, float)) and not isinstance(started, bool):
                return float(started)
        return 0.0

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """Holds the folder for this process while the block runs: an exclusive flock on its .lock file, which
        records the process id. No other process trains in a held folder (train.py takes it as a run starts;
        resume= passes a held one by, see trained_by); the kernel frees it when the process ends, a SIGKILL
        too, so a killed run can be resumed at once. Under DDP one process (rank 0) holds it for all.

        Raises:
            UserError: another process, or another block of this one, holds it."""
        made = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / LOCK, "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UserError(
                    f"{self.path} is being trained by {self.trained_by() or 'another process'}: a run folder is "
                    f"trained by one process at a time; wait for it to end (or stop it), then resume={self.path}"
                ) from None
            lock.truncate(0)
            lock.write(f"{os.getpid()}\n")
            lock.flush()
            HELD.add(lock)
            try:
                yield
            except BaseException:
                # a run refused before it wrote anything leaves no folder it made (it still holds the lock)
                if made and [p.name for p in self.path.iterdir()] == [LOCK]:
                    shutil.rmtree(self.path, ignore_errors=True)
                raise
            finally:
                HELD.discard(lock)

    def trained_by(self) -> str | None:
        """ "process <id>" while a live process holds the folder (see training), else None. Only looks: it
        creates no file."""
        try:
            lock = open(self.path / LOCK)
        except OSError:  # never held
            return None
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = lock.read().strip()
                return f"process {pid}" if pid.isdigit() else "another process"
        return None

    def summary_values(self) -> dict:
        """summary.json as a dict ({} if it is missing or unreadable)."""
        with contextlib.suppress(OSError, ValueError):
            values = json.loads(self.summary.read_text())
            return values if isinstance(values, dict) else {}
        return {}

    def keep_metrics(self, step: int, epoch: int, epoch_metrics: dict[str, float]) -> None:
        """metrics.csv cut to the rows of the optimizer steps before `step` (a resumed checkpoint's global step:
        the rows of an epoch cut short go, it runs again), plus a row of `epoch_metrics` (that checkpoint's epoch,
        saved in it) for the metrics whose row the kill kept from the file."""
        header: list[str] = []
        rows: list[dict[str, str]] = []
        if self.metrics_csv.is_file():
            with open(self.metrics_csv, newline="") as f:
                reader = csv.DictReader(f)
                header, rows = list(reader.fieldnames or []), [r for r in reader if int(r["step"]) < step]
        missing = {
            k: v for k, v in epoch_metrics.items() if not any(r["epoch"] == str(epoch) and r.get(k) for r in rows)
        }
        if missing:
            header += [k for k in ("epoch", "step", *missing) if k not in header]
            rows.append({"epoch": str(epoch), "step": str(step - 1), **{k: str(v) for k, v in missing.items()}})
        if header:

            def write(tmp: Path) -> None:
                with open(tmp, "w", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=header)
                    writer.writeheader()
                    writer.writerows(rows)

            write_atomic(self.metrics_csv, write)

    def discard_if_unused(self) -> bool:
        """Removes the folder when a run refused before it started left nothing in it but what Hydra writes first
        (.hydra/, train.log) and the lock it took; anything else (a start record, a checkpoint, a file of the
        user's) keeps it, and so does a folder without .hydra/: Hydra did not make it for a run (the folder
        evaluate.py runs in, say). Returns whether it was removed."""
        if not self.path.is_dir() or (self.path / "run.json").exists():
            return False
        names = {p.name for p in self.path.iterdir()}
        logs = {n for n in names if n.endswith(".log")}  # Hydra's, named by hydra.job.name (train.log)
        if ".hydra" not in names or not names <= {".hydra", LOCK, *logs}:
            return False
        shutil.rmtree(self.path, ignore_errors=True)
        return True

    # ------------------------------------------------------------------------------------- writing
    def write(self, name: str, text: str) -> Path:
        """<run>/<name>, written atomically."""
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path / name, text)
        return self.path / name

    @contextlib.contextmanager
    def replace_folder(self, folder: Path) -> Iterator[Path]:
        """Yields an empty temporary folder beside `folder`; once the block ends without an error it replaces
        `folder` whole. An error while the block runs leaves the previous `folder` as it was; the swap itself is two
        renames (POSIX has no atomic exchange of folders), and a kill between them leaves the previous one as
        `.<name>-old-*` beside it. An OSError of a write into the temporary folder (a full disk) names `folder`."""
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would make it the one private folder of the run
        old = tmp.with_name(f".{folder.name}-old-{tmp.name.rsplit('-', 1)[-1]}")
        try:
            yield tmp
            if folder.exists():
                folder.rename(old)
            tmp.rename(folder)
        except OSError as e:
            if e.filename is None or str(e.filename).startswith(str(tmp)):  # as write_atomic: named by its place
                e.filename = str(folder)
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------- finding runs
def check_unused(folder: Path, option: str) -> None:
    """Raises UserError (one line) when `folder` holds anything: a new run or sweep (`option`: hydra.run.dir or
    hydra.sweep.dir, as the user set it) never writes over files, an earlier run's, a sweep's or the user's. The
    line says how to continue an earlier run or sweep found there."""
    held = sorted(p.name for p in folder.glob("*"))  # pathlib's * matches .hydra too
    if not held:
        return
    if (folder / "multirun.yaml").is_file():
        what = f", or continue that sweep with {resume_command(folder, sweep=True)}"
    elif RunFolder(folder).checkpoint("last").is_file():
        what = f", or continue that run with {resume_command(folder)}"
    else:
        what = ""
    raise UserError(
        f"{option}={folder} holds {', '.join(held[:3])}{', ...' * (len(held) > 3)} already: a new run or sweep "
        f"never writes over files; choose a new or empty folder{what}"
    )


def resume_command(folder: str | Path, sweep: bool = False) -> str:
    """The command that continues the run in `folder` (with `sweep`, the sweep), quoted for a shell."""
    return f"python train.py {'-m ' if sweep else ''}{shlex.quote(f'resume={folder}')}"


def claim(parent: str | Path) -> RunFolder:
    """A new folder in `parent` named by the time (so names sort by start) and a random suffix, created here:
    mkdir fails if the name is taken, by another process too, and another suffix is drawn."""
    stamp = time.strftime(STAMP)
    while True:
        folder = Path(parent) / f"{stamp}_{secrets.token_hex(3)}"
        try:
            folder.mkdir(parents=True)
            return RunFolder(folder)
        except FileExistsError:
            continue
