"""A run stopped from outside (SIGTERM from kill, timeout, docker stop, Kubernetes or Slurm; SIGINT from Ctrl-C) exits
with 128 + the signal's number and one line, on the console and in train.log, saying after which saved epoch it
stopped and how to resume it; a sweep stops with it; evaluate.py stopped so leaves the eval folder as it was."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST, ROOT, run_script
from conftest import HELPERS_ENV as ENV

from cifar_lightning.store.checkpoints import load_checkpoint

pytestmark = pytest.mark.slow
# validation in 3 batches: Lightning stops an evaluation at a batch that is not its last
EPOCHS = [*(o for o in FAST if "eval_batch_size" not in o), "data.eval_batch_size=16"]
EPOCHS += ["data=synthetic", "epochs=2", "callbacks.early_stopping=null"]


def stopped_by(signum: int, point: str, epoch: int = 1, once: Path | None = None) -> list[str]:
    return [
        *([f"+callbacks.stop.once={once}"] if once else []),
        "+callbacks.stop._target_=helpers.SignalAt",
        f"+callbacks.stop.signum={int(signum)}",
        f"+callbacks.stop.point={point}",
        f"+callbacks.stop.epoch={epoch}",
    ]


def the_error_line(result) -> str:
    """The one `error:` line of a run that must have exactly one, and no traceback."""
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize(
    "signum, point, epoch, saved",
    [
        (signal.SIGTERM, "train_step", 1, 0),
        (signal.SIGTERM, "train_step", 0, None),  # no checkpoint yet: nothing to resume
        (signal.SIGTERM, "validation", 1, 0),
        (signal.SIGTERM, "test", 1, 1),  # every epoch saved, the summary not written
        (signal.SIGINT, "train_step", 1, 0),
    ],
)
def test_a_stopped_run_exits_nonzero_and_says_how_to_resume(tmp_path, signum, point, epoch, saved):
    run = tmp_path / "run"
    result = run_script("train.py", *EPOCHS, *stopped_by(signum, point, epoch), f"hydra.run.dir={run}", env=ENV)

    assert result.returncode == 128 + signum
    line = the_error_line(result)
    assert f"training stopped by {signal.Signals(signum).name}" in line
    if saved is None:
        assert "nothing to resume" in line and "resume=" not in line
        assert not (run / "checkpoints" / "last.ckpt").exists()
    else:
        assert f"after epoch {saved}," in line and line.endswith(f"python train.py resume={run}")
        assert load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == saved
    assert line.removeprefix("error: ") in (run / "train.log").read_text().splitlines()[-1]
    assert not (run / "summary.json").exists()


def test_a_run_stopped_by_sigterm_resumes_to_the_end(tmp_path):
    run = tmp_path / "run"
    once = stopped_by(signal.SIGTERM, "train_step", once=tmp_path / "sent")  # the resumed run goes on
    stopped = run_script("train.py", *EPOCHS, *once, f"hydra.run.dir={run}", env=ENV)
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    command = the_error_line(stopped).split("resume it with ")[1].split()

    resumed = run_script(*command[1:], "trusted_modules=[helpers]", env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2


def test_a_sweep_stopped_by_sigterm_exits_nonzero_after_the_job_it_stopped_and_resumes_whole(tmp_path):
    sweep = tmp_path / "sweep"
    once = stopped_by(signal.SIGTERM, "train_step", once=tmp_path / "sent")  # the resumed sweep goes on
    result = run_script("train.py", "-m", *EPOCHS, *once, f"hydra.sweep.dir={sweep}", "seed=0,1", env=ENV)

    assert result.returncode == 143
    line = the_error_line(result)
    assert line.endswith(f"python train.py -m resume={sweep}")  # the sweep, not its job: job 1 has not started
    assert not (sweep / "1").exists()  # the sweep ended with the stopped job

    command = line.split("resume it with ")[1].split()
    resumed = run_script(*command[1:], "trusted_modules=[helpers]", env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [json.loads((sweep / job / "summary.json").read_text())["epochs"] for job in ("0", "1")] == [2, 2]


EVALUATE_STOPPED_BY = """
import os, runpy, signal, sys
import cifar_lightning.blocks.figures as figures
def report(*args, **kwargs):  # the last file of the evaluation: the others are written by now
    os.kill(os.getpid(), {signum})
figures.report = report
sys.argv[0] = {evaluate!r}
runpy.run_path({evaluate!r}, run_name="__main__")
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_an_evaluation_stopped_midway_exits_nonzero_and_keeps_the_previous_report(synthetic_run, tmp_path, signum):
    run = tmp_path / "run"
    shutil.copytree(synthetic_run, run)
    assert run_script("evaluate.py", f"ckpt={run}").returncode == 0
    report = run / "eval" / "test"
    before = {p.name: p.read_bytes() for p in report.iterdir()}
    folders = sorted(p.name for p in report.parent.iterdir())  # the shared run may hold other evaluations too
    script = tmp_path / "evaluate_stopped.py"
    script.write_text(EVALUATE_STOPPED_BY.format(signum=int(signum), evaluate=str(ROOT / "evaluate.py")))

    result = run_script(script, f"ckpt={run}")

    assert result.returncode in (128 + signum, -signum)  # SIGTERM outside a trainer: the default action, a kill
    if signum == signal.SIGINT:
        assert (
            the_error_line(result)
            == "error: stopped by SIGINT before it finished (its files are written whole or not at all)"
        )
        assert sorted(p.name for p in report.parent.iterdir()) == folders  # no temporary folder left
    assert {p.name: p.read_bytes() for p in report.iterdir()} == before
    assert torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)["epoch"] == 0
    assert Path(run / "summary.json").is_file()


@pytest.mark.parametrize("script", ["train.py", "evaluate.py", "predict.py", "export.py"])
def test_ctrl_c_while_a_command_imports_ends_in_one_line(tmp_path, script):
    """A fresh interpreter (not the forked one of run_script, which has imported everything) spends its first
    seconds importing torch, Lightning and Hydra: Ctrl-C then is one line and exit code 130, not a traceback."""
    process = subprocess.Popen(
        [sys.executable, str(ROOT / script), f"hydra.run.dir={tmp_path / 'run'}", "data=synthetic"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as a terminal's: pytest's may ignore it
    )
    time.sleep(0.3)  # the interpreter has started; torch, Lightning and Hydra take seconds to import
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    assert the_error_line(subprocess.CompletedProcess([], 130, stdout, stderr)) == "error: stopped by SIGINT"
    assert stdout == "" and stderr == "error: stopped by SIGINT\n" and not (tmp_path / "run").exists()
