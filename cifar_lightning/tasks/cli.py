"""What the entry points share: user mistakes end in one line on stderr and exit code 1, no traceback; so do files
that cannot be written (a full disk), and a run stopped from outside (SIGTERM, Ctrl-C) ends in one line and exit
code 128 + the signal's number."""

import contextlib
import difflib
import errno
import io
import logging
import os
import signal
import sys
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import CompactHydraException, HydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException
from rich.console import Console
from rich.syntax import Syntax
from rich.tree import Tree

from cifar_lightning.blocks import precision
from cifar_lightning.blocks.console import quiet
from cifar_lightning.blocks.errors import UserError, first_line, stop_while_importing
from cifar_lightning.blocks.paths import check_working_folder, quoted, user_path
from cifar_lightning.store.checkpoints import saved_epoch
from cifar_lightning.store.runs import RunFolder, check_unused, resume_command

REPORTED: "weakref.WeakSet[UserError]" = weakref.WeakSet()  # the errors printed in this process already


@contextlib.contextmanager
def exit_on_user_error(training: bool = False) -> Iterator[None]:
    """Single runs: print the message and exit 1. Under -m the error is re-raised, for Hydra to record the
    job as failed and go on with the sweep (an exit would end every job after it). A file that cannot be written
    (write_error) is a user error too; a stop from outside (stop_signal) exits 128 + the signal's number, under -m
    as well: the sweep stops with it. A `training` run's line says how to resume it."""
    try:
        try:
            if HydraConfig.initialized():
                check_working_folder(HydraConfig.get().job.chdir)
            yield
        except OmegaConfBaseException as e:  # an interpolation that does not resolve, a key that is not there
            raise UserError(config_error(e)) from None
        except OSError as e:
            line = write_error(e)
            if line is None:
                raise
            raise UserError(f"{line}, {resume_hint()}" if training else line) from None
        except (KeyboardInterrupt, SystemExit) as e:
            signum = stop_signal(e)
            if signum is None:
                raise
            elsewhere = f"stopped by {signum.name} before it finished (its files are written whole or not at all)"
            report(resume_hint(signum) if training else elsewhere)
            sys.exit(128 + signum)
    except UserError as e:
        report(str(e))
        REPORTED.add(e)
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise  # the sweep's summary lists the failed job by its folder
        if HydraConfig.initialized():  # a run refused before it started leaves no folder behind
            logging.shutdown()  # train.log closed first
            RunFolder(HydraConfig.get().runtime.output_dir).discard_if_unused()
        sys.exit(1)


def report(message: str) -> None:
    """Prints `error: message` on stderr and adds the message to the log files of the run (Hydra's train.log),
    which is what a job's user reads later; a log file that cannot be written (a full disk) is left as it is."""
    print(f"error: {message}", file=sys.stderr)
    record = logging.makeLogRecord({"name": __name__, "levelno": logging.ERROR, "levelname": "ERROR", "msg": message})
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            with contextlib.suppress(OSError), open(handler.baseFilename, "a") as log_file:
                log_file.write(handler.format(record) + "\n")


# What to do about a file that cannot be written, by errno. EIO: torch's report of a write cut short (save_atomic)
WRITE_ADVICE = {
    errno.ENOSPC: "free space on its disk",
    errno.EDQUOT: "free space within your disk quota",
    errno.EIO: "free space on its disk or check the disk",
    errno.EROFS: "its filesystem is read-only: choose a writable folder",
    errno.EACCES: "fix the folder's permissions or choose another folder",
    errno.EPERM: "fix the folder's permissions or choose another folder",
}


def write_error(error: OSError) -> str | None:
    """One line for an OSError of a write (a full disk, a quota, a read-only or forbidden folder) naming the file
    and what to do; None for other errors. The first such error of a chain is the one named: an error while
    Lightning winds down the run (its loggers' last save) follows the one that stopped it."""
    while isinstance(error.__context__, OSError) and error.__context__.errno in WRITE_ADVICE:
        error = error.__context__
    if error.errno not in WRITE_ADVICE:
        return None
    return f"could not write {error.filename or 'a file'} ({error.strerror or error}); {WRITE_ADVICE[error.errno]}"


def stop_signal(error: KeyboardInterrupt | SystemExit) -> signal.Signals | None:
    """The signal that stopped the process, told by what it raised; None for an exit of another cause. On SIGTERM
    Lightning ends fit and test with SIGTERMException, a SystemExit without a code (exit status 0:
    Lightning-AI/pytorch-lightning#19916); Ctrl-C raises KeyboardInterrupt, which Lightning's trainer ends in
    sys.exit(1) inside its handler: the KeyboardInterrupt is the exit's __context__."""
    if isinstance(error, SIGTERMException):
        return signal.SIGTERM
    if isinstance(error, KeyboardInterrupt) or isinstance(error.__context__, KeyboardInterrupt):
        return signal.SIGINT
    return None


def resume_hint(signum: signal.Signals | None = None) -> str:
    """For a training run (Hydra's run folder): how to resume it from the last epoch its last.ckpt holds, after a
    write error or, with `signum`, after that signal stopped it; a sweep's job, by resuming its sweep (which also
    runs the jobs not started yet). Epochs are counted from 0, as Lightning does."""
    hydra = HydraConfig.get()
    run = RunFolder(hydra.runtime.output_dir)
    epoch = saved_epoch(run.checkpoint("last"))
    swept = hydra.mode == RunMode.MULTIRUN
    command = resume_command(hydra.sweep.dir if swept else run.path, sweep=swept)
    if signum is None:
        return "then start the run again" if epoch is None else f"then resume it from epoch {epoch}: {command}"
    stopped = f"training stopped by {signum.name}"
    if epoch is None:
        return f"{stopped} before the first epoch's checkpoint was saved: nothing to resume, start the run again"
    return f"{stopped} after epoch {epoch}, the last whose checkpoint is saved; resume it with {command}"


def config_error(error: OmegaConfBaseException) -> str:
    """OmegaConf's message on one line, naming the key whose value could not be resolved."""
    message = " ".join(str(error).split("\n")[0].split())
    key = getattr(error, "full_key", None)
    return f"{key}: {message}; fix that value on the command line or in its config" if key else message


def run(hydra_main: Callable) -> None:
    """Calls a @hydra.main entry point so that mistakes on the command line (an unknown option, a typo in a key,
    a bad override) end in one line too: Hydra would print them over several lines with a hint, so it is asked
    to raise them instead (HYDRA_FULL_ERROR) and they are printed here from the exception's parts. A user who
    sets HYDRA_FULL_ERROR=1 still gets Hydra's full report."""
    if signal.getsignal(signal.SIGINT) is stop_while_importing:  # the imports are done: Python's own handler again
        signal.signal(signal.SIGINT, signal.default_int_handler)
    quiet()
    sys.argv[1:] = typed_paths(sys.argv[1:])
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        return hydra_main()
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra_main()
    except CompactHydraException as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(1)
    except UserError as e:  # a job of a sweep failed, or the launcher refused the sweep
        if e not in REPORTED:  # a job in a process of its own (submitit, Slurm) printed it to its own log only
            print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C outside a job (while Hydra composes, between a sweep's jobs)
        print("error: stopped by SIGINT", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)


class NewFolders(Callback):
    """Hydra's hooks before it makes a run's or a sweep's folder and writes into it (configs/hydra/default.yaml): a
    new run or sweep never writes into a folder that holds files (store.runs.check_unused). Only a folder the
    user chose is looked at: the project's own resolvers claim a new one, and resume= continues one on purpose."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        # the processes Lightning's DDP starts after the first run in the first one's folder
        if os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("RANK", "0") == "0":
            self.check(config, "run")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.check(config, "sweep")

    @staticmethod
    def check(config: DictConfig, kind: str) -> None:
        unresolved = OmegaConf.to_container(config.hydra[kind], resolve=False)
        assert isinstance(unresolved, dict)  # of a DictConfig
        if config.get("resume") or str(unresolved["dir"]).startswith(("${new_dir:", "${run_dir:")):
            return
        try:
            check_unused(Path(config.hydra[kind].dir), f"hydra.{kind}.dir")
        except UserError as e:
            sys.exit(f"error: {e}")  # Hydra turns a callback's exception into a warning; it lets an exit through


HYDRA_FOLDERS = ("hydra.run.dir", "hydra.sweep.dir")


def typed_paths(arguments: list[str]) -> list[str]:
    """The command line with `~` expanded (as user_path expands it, blocks/paths.py) where code of ours would see
    it too late: in a bare `key=~/x`, which a shell expands only when the key has no dot and Hydra's grammar
    refuses, and in hydra.run.dir= and hydra.sweep.dir=, whose folders Hydra makes from the command line before
    any code of ours runs (a resolver cannot wrap a value typed in its place). Every other path option is expanded
    where it is read. A bare `~` value with commas, quotes or `${` is left to Hydra, which says what it refuses."""
    expanded = []
    for argument in arguments:
        key, sep, value = argument.partition("=")
        if sep and not key.startswith("-") and value.startswith("~") and not any(c in value for c in ",'\"$"):
            argument = f"{key}={quoted(user_path(value))}"
        elif sep and key.lstrip("+") in HYDRA_FOLDERS:
            try:
                parsed = OverridesParser.create().parse_override(argument).value()
            except HydraException:  # a value the grammar refuses: Hydra reports it
                parsed = None
            if isinstance(parsed, str) and parsed.startswith("~"):
                argument = f"{key}={quoted(user_path(parsed))}"
        expanded.append(argument)
    return expanded


def run_composing(main: Callable[[], None]) -> None:
    """Calls the main of a script that composes configs itself (benchmarks/) so that a bad override or a user
    mistake ends in one `error:` line and exit 1, as with the Hydra entry points."""
    quiet()
    with exit_on_user_error():
        try:
            main()
        except CompactHydraException as e:
            print(f"error: {one_line(e)}", file=sys.stderr)
            sys.exit(1)


def one_line(error: CompactHydraException) -> str:
    """Hydra's message, the options it offers (a missing config's `options`) and its cause, on one line. The
    message's first paragraph is what Hydra says; a missing config adds its option list and search path below.
    An override of a key the config lacks is most often a typo, not a wish to add one (Hydra's hint, `+key=`):
    it names the keys nearest in spelling instead."""
    unknown = unknown_key(error)
    if unknown:
        return unknown
    message = str(error).split("\n\n")[0]
    line = ". ".join(part.strip().rstrip(".") for part in message.splitlines() if part.strip())
    options = getattr(error, "options", None)  # only a MissingConfigException has them
    if options:
        line += f" (options: {', '.join(options)})"
    if error.__cause__ is not None:
        line += f" ({first_line(error.__cause__)})"
    return line


def unknown_key(error: CompactHydraException) -> str | None:
    """For an override of a key its config does not have (omegaconf's ConfigKeyError or ConfigAttributeError,
    whose `parent_node` is the config that lacks it): one line naming the key and its nearest existing
    neighbours. None for every other error."""
    cause = error.__cause__
    if not isinstance(cause, ConfigKeyError | ConfigAttributeError) or not isinstance(cause.parent_node, DictConfig):
        return None
    key, full_key = str(cause.key), str(cause.full_key)
    parent = full_key[: -len(key)].rstrip(".") or "the config"
    keys = [str(k) for k in cause.parent_node.keys() if str(k) != "hydra"]
    near = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
    advice = f"did you mean {' or '.join(near)}?" if near else f"its keys are {', '.join(keys)}."
    if not keys:  # below a plain value (epochs.x=1) or an empty group
        advice = f"it has none; set {parent}=... itself."
    return f"{full_key}: {parent} has no key {key!r}: {advice} (A leading + adds a key on purpose.)"


CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


def compose_config(name: str, overrides: Sequence[str] = ()) -> DictConfig:
    """A config composed as `python NAME.py OVERRIDES` would, inside a Hydra app (with its search path: a resumed
    run's config) or outside one (tests, benchmarks); a train config then needs paths.output_dir set, which Hydra
    would have filled in."""
    precision.register_resolver()
    if GlobalHydra.instance().is_initialized():
        return compose(config_name=name, overrides=list(overrides))
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))


def composed_record(record: Path, compose: Callable[[], DictConfig]) -> DictConfig:
    """`compose()`, Hydra composing what a run's or sweep's `record` holds; any failure (an override the configs no
    longer have, one they cannot hold) is one line naming the record."""
    try:
        return compose()
    except Exception as e:
        raise UserError(f"{record} was refused: it does not compose with today's configs: {first_line(e)}") from None


def config_tree(cfg: DictConfig, show: bool) -> str:
    """The composed config as a tree: the run's own values first, then one branch per group (model, optimizer,
    ...) in YAML, printed with rich when `show`; returns the same as plain text, for <run>/config_tree.txt. The
    module's branch keeps its interpolations (net: ${model}, ...): resolved, it would repeat four groups."""
    tree = Tree("[bold]config", guide_style="dim")
    values = {k: v for k, v in cfg.items() if not isinstance(v, DictConfig)}
    tree.add("[bold]run").add(Syntax(OmegaConf.to_yaml(values, resolve=True).strip(), "yaml", theme="ansi_dark"))
    for key, value in cfg.items():
        if isinstance(value, DictConfig):
            assert isinstance(key, str)  # a composed config's keys are its YAML's, strings
            text = OmegaConf.to_yaml(value, resolve=key != "module").strip() or "{}"
            tree.add(f"[bold]{key}").add(Syntax(text, "yaml", theme="ansi_dark"))
    console = Console(record=True, file=io.StringIO(), width=120)
    console.print(tree)
    if show:
        Console().print(tree)
    return console.export_text()
