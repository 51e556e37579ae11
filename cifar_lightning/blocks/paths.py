"""Paths as the user typed them: every path option (data.root=, ckpt=, resume=, images=, csv=, output=, outputs=,
paths.root=, hydra.run.dir=, hydra.sweep.dir=) means what it means in the shell the command was typed in.

A shell expands `~` only at the start of a word and in variable assignments: in `data.root=~/x` (not an assignment:
the key has a dot) and in a quoted `'~/x'` it reaches the program as typed, and the program must expand it, or it
names a folder called `~` in the working folder. A relative path is relative to the folder the command was
started in; Hydra's hydra.job.chdir=true (its default before 1.2) would move the working folder into the run
folder before our code runs and give every relative path a second meaning, so it is refused (check_working_folder)
rather than each path made absolute against Hydra's original folder: one rule, nothing to forget at a new option.
"""

import glob
import os
from pathlib import Path

from cifar_lightning.blocks.errors import UserError


def user_path(value: str | Path) -> Path:
    """`value` as the shell it was typed in means it: `~` and `~user` expanded, a relative path made absolute
    against the working folder (the one the command was started in). Not resolved: a symlink stays the name the
    user gave, and messages show the absolute path that was checked."""
    return Path(os.path.expanduser(str(value))).absolute()


def user_pattern(pattern: str) -> str:
    """A glob pattern as user_path reads a path: `~` expanded (the home folder's own characters escaped, so they
    match themselves), relative to the working folder (its characters escaped likewise)."""
    head, sep, rest = pattern.partition("/")
    if head.startswith("~"):
        pattern = glob.escape(os.path.expanduser(head)) + sep + rest
    return pattern if os.path.isabs(pattern) else os.path.join(glob.escape(os.getcwd()), pattern)


def quoted(value: str | Path) -> str:
    """A string as a quoted value of Hydra's override grammar (a path may hold spaces, commas, colons)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def check_working_folder(chdir: bool | None) -> None:
    """Refuses hydra.job.chdir=true (see the module's docstring).

    Raises:
        UserError: one line saying what to do."""
    if chdir:
        raise UserError(
            "hydra.job.chdir=true is not supported: paths (data.root=, ckpt=, resume=, ...) are relative to the "
            "folder the command is started in, and the run folder is hydra.run.dir either way; drop it"
        )
