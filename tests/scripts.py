"""The project's scripts run as a user runs them (`python train.py ARGS`), each in a process of its own that is forked
from a server which imported torch, Lightning and Hydra once: a test waits for the script's work, not for the ~5 s
of imports every fresh interpreter pays. The forked process gets the script's argv, folder, environment and
output files, exits with the script's code (a SIGKILL gives -9, as with subprocess) and runs its atexit handlers."""

import atexit
import multiprocessing
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

_forkserver = multiprocessing.get_context("forkserver")
_forkserver.set_forkserver_preload(["torch", "lightning", "hydra", "cifar_lightning.tasks.train"])


def _as_python_would(args: list[str], cwd: str, env: dict, stdout: str, stderr: str) -> None:
    """In the forked process: what `python *args` does in `cwd`."""
    os.chdir(cwd)
    # Ctrl-C as in a terminal: Python raises KeyboardInterrupt on SIGINT unless its parent ignored the signal, which a
    # pytest-xdist worker does (so would every script it starts, and Ctrl-C would do nothing)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ.clear()
    os.environ.update(env)
    sys.path[:0] = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    for fd, path in ((1, stdout), (2, stderr)):
        file = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(file, fd)
        os.close(file)
    sys.stderr.reconfigure(line_buffering=True)  # as Python's own stderr: what was written survives a SIGKILL
    try:
        if args[0] == "-m":
            sys.argv = args[1:]
            runpy.run_module(args[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = args
            sys.path.insert(0, str(Path(args[0]).resolve().parent))
            runpy.run_path(args[0], run_name="__main__")
    finally:
        atexit._run_exitfuncs()  # a forked process leaves with os._exit, which would skip them


class Script:
    """A running script, with the parts of subprocess.Popen the tests use; stdout and stderr are text once it ended."""

    def __init__(self, args, cwd: Path, env: dict | None = None):
        self.args = [str(a) for a in args]
        self._folder = Path(tempfile.mkdtemp(prefix="script-"))
        self._files = self._folder / "stdout", self._folder / "stderr"
        for file in self._files:
            file.touch()  # read back even if the process dies before it writes
        self._process = _forkserver.Process(
            target=_as_python_would,
            args=(self.args, str(cwd), dict(os.environ if env is None else env), *map(str, self._files)),
        )
        self._process.start()
        self.pid = self._process.pid
        self.stdout = self.stderr = None

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, signal: int) -> None:
        os.kill(self.pid, signal)

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self.returncode is None:
            self._process.kill()
            self._process.join()
            raise subprocess.TimeoutExpired(self.args, timeout)
        if self.stdout is None:
            self.stdout, self.stderr = (f.read_text(errors="replace") for f in self._files)
            shutil.rmtree(self._folder, ignore_errors=True)
        return self.returncode


def run(*args, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    script = Script(args, cwd, env)
    script.wait(timeout)
    return subprocess.CompletedProcess(script.args, script.returncode, script.stdout, script.stderr)
