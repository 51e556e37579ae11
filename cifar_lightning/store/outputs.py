"""The files that output options name (predict.py csv=, export.py output=): written only where nothing is lost."""

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from cifar_lightning.blocks.errors import UserError
from cifar_lightning.blocks.paths import user_path
from cifar_lightning.store.runs import RunFolder


def output_file(
    value: str, option: str, reads: Sequence[Path], runs: Sequence[RunFolder], earlier: Callable[[Path], bool]
) -> Path:
    """The file an output option (predict.py csv=, export.py output=) names, as user_path reads it, once it is
    clear that writing it destroys nothing: it is not a folder, its folder exists, it is none of the `runs`' own
    files (RunFolder.holds: their records and anything in their subfolders, new or not), and if it exists it is none
    of `reads` (the files the command reads, or folders whose files it reads), by whatever spelling (relative, `..`,
    a symlink, a hard link), and it is what the option wrote before (`earlier(path)`: a README, an image or a
    sweep's record are never replaced).

    Raises:
        UserError: one line naming the option and the absolute path checked; nothing is written."""
    path = user_path(value)
    if path.is_dir():
        raise UserError(f"{option}={value}: {path} is a folder: name a file (in a folder that exists)")
    if not path.parent.is_dir():
        raise UserError(f"{option}={value}: the folder {path.parent} does not exist: create it first")
    if path.exists():
        read = next((r for r in reads if _same_or_inside(path, r)), None)
        if read is not None:
            what = f"a file in {read}" if read.is_dir() else "a file"
            raise UserError(f"{option}={value} would write over {path}, {what} this command reads: name another")
    run = next((run for run in runs if run.holds(path)), None)
    if run is not None:
        raise UserError(f"{option}={value} would write over {path}, a file of the run {run.path}: name another")
    if path.exists():
        if not earlier(path):
            raise UserError(f"{option}={value} would write over {path}, which it did not write: name a new file")
    return path


def _same_or_inside(path: Path, read: Path) -> bool:
    """Whether the existing file `path` is the file `read` or lies in the folder `read`."""
    if read.is_dir():
        return path.resolve().is_relative_to(read.resolve())
    with contextlib.suppress(OSError):
        return os.path.samefile(path, read)
    return False
