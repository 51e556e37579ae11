"""A run folder held by a live process is never resumed or written by another: the lock of RunFolder.training,
held by a real training process and by this test process itself, and freed the moment its holder dies."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAST, ROOT, compose_train, run_script, start_script, train_run
from conftest import HELPERS_ENV as ENV
from test_resume import epochs_logged

from cifar_lightning.blocks.errors import UserError
from cifar_lightning.store.locate import nothing_to_resume, to_resume
from cifar_lightning.store.runs import RunFolder
from cifar_lightning.tasks.train import train

STOPPED = [*FAST, "epochs=2", "data=synthetic", "callbacks.early_stopping=null"]
STOP = "+callbacks.stop._target_=helpers.StopAfterEpoch"
TRUSTED = "trusted_modules=[helpers]"


def one_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ")
    return line


def files(run: Path) -> dict:
    """The run's files and contents but its log and Hydra's records of each call."""
    kept = [p for p in run.rglob("*") if p.is_file() and p.name != "train.log" and ".hydra" not in p.parts]
    return {p: p.read_bytes() for p in kept}


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> Path:
    """A run stopped after its first of two epochs (last.ckpt, no summary.json), to copy."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    train_run([*STOPPED, STOP], run)
    (run / "summary.json").unlink()
    return run


def copy(stopped: Path, root: Path, name: str, started: float) -> RunFolder:
    run = RunFolder(root / "runs" / name)
    shutil.copytree(stopped, run.path)
    (run.path / "run.json").write_text(json.dumps({"started": started}))
    return run


HOLD = """
import os, sys, time
from cifar_lightning.store.runs import RunFolder
with RunFolder(sys.argv[1]).training():
    ready, running = os.pipe()
    child = os.fork()
    if child == 0:  # a child, as a data loader's worker: it lives on, and must not keep the folder held
        os.write(running, b"x")  # its fork hooks have run
        time.sleep(60)
        os._exit(0)
    os.read(ready, 1)
    print("held", child, flush=True)
    time.sleep(60)
"""


def test_the_lock_is_held_while_its_process_lives_and_freed_the_moment_it_dies(tmp_path):
    run = RunFolder(tmp_path / "run")
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run.path)], stdout=subprocess.PIPE, text=True, cwd=ROOT, env=ENV
    )
    held, child = holder.stdout.readline().split()
    try:
        assert held == "held"
        assert run.trained_by() == f"process {holder.pid}"
        with pytest.raises(UserError, match=f"is being trained by process {holder.pid}"), run.training():
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    try:
        assert run.trained_by() is None  # at once, though the holder's forked child still sleeps
    finally:
        os.kill(int(child), signal.SIGKILL)
    with run.training():
        assert run.trained_by() == f"process {os.getpid()}"
    assert run.trained_by() is None


def test_a_run_held_here_is_not_resumed_nor_trained_by_another(stopped, tmp_path):
    root = tmp_path / "outputs"
    older, newer = copy(stopped, root, "older", 1.0), copy(stopped, root, "newer", 2.0)
    with newer.training():
        assert to_resume("latest", str(root)).path == older.path  # resume=latest passes the live run by
        assert to_resume(str(newer.path), str(root)) is None
        refused = run_script("train.py", f"resume={newer.path}", TRUSTED, env=ENV)
        line = one_line(refused)
        assert f"{newer.path} is being trained by process {os.getpid()}" in line
        assert sorted(p.name for p in (root / "runs").iterdir()) == ["newer", "older"]  # none claimed and left
        with older.training():  # the only runs with a last.ckpt are live
            line = one_line(run_script("train.py", "resume=latest", f"paths.root={root}", TRUSTED, env=ENV))
            assert f"(the newest, {newer.path}, by process {os.getpid()})" in line
        before = files(newer.path)
        overrides = [f"resume={newer.path}", TRUSTED]
        with pytest.raises(UserError, match="is being trained by process"):  # what a race past locate meets
            train(compose_train(overrides, output_dir=newer.path), newer.checkpoint("last"))
        assert files(newer.path) == before
    assert to_resume("latest", str(root)).path == newer.path  # free again
    assert "does not exist" in nothing_to_resume(str(tmp_path), root)
    # a checkpoint file given for its run folder: the folder is named, not <file>/checkpoints/last.ckpt
    last = str(newer.checkpoint("last"))
    assert nothing_to_resume(last, root) == (
        "that is a file, and resume= takes a run folder, which continues from its checkpoints/last.ckpt: "
        f"resume={newer.path}"
    )


def test_a_refusal_after_the_lock_was_taken_leaves_no_folder(tmp_path):
    refused = run_script("train.py", "data=synthetic", "batch_size=5000", f"paths.root={tmp_path}")
    assert "is larger than the training split" in one_line(refused)
    assert not list((tmp_path / "runs").iterdir())


@pytest.mark.slow
def test_resume_while_a_real_run_trains_leaves_it_alone(tmp_path):
    root = tmp_path / "outputs"
    run = root / "runs" / "live"
    go = tmp_path / "go"  # made once both resumes were refused: the live run then ends at full speed
    slow = ["+callbacks.slow._target_=helpers.SlowSteps", "+callbacks.slow.seconds=0.15", f"+callbacks.slow.until={go}"]
    three = [o for o in STOPPED if not o.startswith("epochs=")] + ["epochs=3"]
    process = start_script("train.py", *three, *slow, f"hydra.run.dir={run}", env=ENV)
    deadline = time.time() + 240
    while not (run / "checkpoints" / "last.ckpt").is_file():
        assert process.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.1)
    for args in ([f"resume={run}"], ["resume=latest", f"paths.root={root}"]):
        line = one_line(run_script("train.py", *args, TRUSTED, env=ENV))
        assert f"by process {process.pid}" in line
    assert process.poll() is None, "the run ended before both resumes were refused: slow it down"
    go.touch()
    assert process.wait(timeout=300) == 0, process.stderr[-3000:]
    assert epochs_logged(run) == [0, 1, 2]  # each epoch once, in its own columns
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3
    assert [p.name for p in (root / "runs").iterdir()] == ["live"]


@pytest.mark.slow
def test_a_sweep_resume_does_not_take_over_a_live_job(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_script(
        "train.py", "-m", *STOPPED, STOP, "seed=1,2", f"hydra.sweep.dir={sweep}", f"paths.root={tmp_path}", env=ENV
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        (sweep / job / "summary.json").unlink()  # both interrupted
    job = RunFolder(sweep / "1")
    with job.training():
        before = {j: files(sweep / j) for j in ("0", "1")}
        line = one_line(run_script("train.py", "-m", f"resume={sweep}", f"paths.root={tmp_path}", TRUSTED, env=ENV))
        assert {j: files(sweep / j) for j in ("0", "1")} == before  # neither job resumed
    assert f"its job {job.path} is being trained by process {os.getpid()}" in line


def test_calibrate_true_never_rewrites_the_checkpoints_of_a_live_run(synthetic_run, tmp_path):
    from cifar_lightning.blocks.errors import UserError
    from cifar_lightning.store.runs import RunFolder
    from cifar_lightning.tasks.cli import compose_config
    from cifar_lightning.tasks.evaluate import evaluate

    run = tmp_path / "run"
    shutil.copytree(synthetic_run, run)
    before = (run / "checkpoints" / "best.ckpt").read_bytes()
    with RunFolder(run).training():  # as a trainer holds it
        with pytest.raises(UserError, match=r"calibrate=true rewrites .* being trained by process \d+"):
            evaluate(compose_config("evaluate", [f"ckpt={run}", "calibrate=true"]))
    assert (run / "checkpoints" / "best.ckpt").read_bytes() == before
