"""A real training process killed mid-epoch (SIGKILL) and resumed, once and twice in a row."""

import csv
import json
import signal
import subprocess
import time

import pytest
import torch
from conftest import FAST, run_script, start_script
from conftest import HELPERS_ENV as ENV
from helpers import KillAt

pytestmark = pytest.mark.slow
SLOW = ["+callbacks.slow._target_=helpers.SlowSteps", "+callbacks.slow.seconds=0.04", "callbacks.early_stopping=null"]


def start(*args) -> subprocess.Popen:
    return start_script("train.py", *args, env=ENV)


def kill_mid_epoch(process: subprocess.Popen, last, epoch: int) -> None:
    """SIGKILL once last.ckpt holds `epoch` and the next epoch is under way."""
    deadline = time.time() + 240
    while time.time() < deadline:
        try:
            if last.is_file() and torch.load(last, weights_only=True)["epoch"] >= epoch:
                break
        except Exception:  # being written
            pass
        assert process.poll() is None, "the run ended before it could be killed"
        time.sleep(0.05)
    time.sleep(1.0)  # into the next epoch: ~56 steps of >= 0.04 s each
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert torch.load(last, weights_only=True)["epoch"] == epoch, "killed at an epoch boundary, not mid-epoch"


def epochs_logged(run) -> list[int]:
    with open(run / "metrics.csv") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f) if r["val/acc"]]


@pytest.mark.parametrize("kills", [2])  # one kill mid-epoch: test_a_run_killed_at_any_point...[train_step]
def test_killed_run_resumes_without_losing_or_repeating_an_epoch(tmp_path, kills):
    run, go = tmp_path / "run", tmp_path / "go"  # go: made before the last resume, which runs at full speed
    last = run / "checkpoints" / "last.ckpt"
    slow = [*SLOW, f"+callbacks.slow.until={go}"]
    process = start("data=synthetic", *FAST, f"epochs={kills + 1}", *slow, f"hydra.run.dir={run}")
    kill_mid_epoch(process, last, epoch=0)
    for kill in range(1, kills):
        process = start(f"resume={run}", "trusted_modules=[helpers]")
        kill_mid_epoch(process, last, epoch=kill)
    best_before = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    go.touch()
    result = run_script("train.py", f"resume={run}", "trusted_modules=[helpers]", env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    assert epochs_logged(run) == list(range(kills + 1))
    assert torch.load(last, weights_only=True)["epoch"] == kills
    best_after = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)

    def score(ckpt):
        return ckpt["callbacks"]["BestCheckpoint"]["best_model_score"]

    assert score(best_after) >= score(best_before)
    assert (run / "summary.json").is_file() and (run / ".hydra" / "config.yaml").is_file()
    assert len(list((run / ".hydra").glob("resume_*"))) >= 1  # the resuming calls' configs, beside the original


def read_metrics(run) -> list[dict]:
    with open(run / "metrics.csv") as f:
        return list(csv.DictReader(f))


def killed_and_resumed(tmp_path, point, *extra):
    """A 2-epoch run SIGKILLed once at `point` of its last epoch, then resumed to the end; returns its folder and
    the `callbacks` state of the last.ckpt the kill left."""
    run, once = tmp_path / "run", tmp_path / "killed"
    first = run_script(
        "train.py",
        "data=synthetic",
        *FAST,
        "epochs=2",
        "callbacks.early_stopping=null",
        "+callbacks.kill._target_=helpers.KillAt",
        f"+callbacks.kill.point={point}",
        f"+callbacks.kill.once={once}",
        *extra,
        f"hydra.run.dir={run}",
        env=ENV,
    )
    assert first.returncode == -signal.SIGKILL and once.exists(), first.stderr[-2000:]
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
    resumed = run_script("train.py", f"resume={run}", "trusted_modules=[helpers]", env=ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return run, saved


@pytest.mark.parametrize("point", KillAt.POINTS)
def test_a_run_killed_at_any_point_resumes_and_loses_nothing(tmp_path, point):
    """Killed in the last of 2 epochs (or after it): the resumed run ends as an uninterrupted one would."""
    run, _ = killed_and_resumed(tmp_path, point)

    rows = read_metrics(run)
    val = [(int(r["epoch"]), float(r["val/acc"])) for r in rows if r["val/acc"]]
    assert [epoch for epoch, _ in val] == [0, 1]  # every epoch once
    assert [int(r["epoch"]) for r in rows if r["train/acc"]] == [0, 1]
    assert sum(1 for r in rows if r["test/acc"]) == 1
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert dict(val)[best["epoch"]] == max(acc for _, acc in val)  # best.ckpt holds the best logged epoch
    if point == "after_checkpoint":  # killed between last.ckpt and best.ckpt of epoch 1: best.ckpt must catch up
        assert dict(val)[1] > dict(val)[0] and best["epoch"] == 1
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_val_acc"] == pytest.approx(max(acc for _, acc in val), abs=1e-7) and summary["epochs"] == 2
    assert not list(run.glob("**/.*.tmp"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["resume={tmp}"], "does not exist, so there is nothing to resume"),
        (["resume=latest", "paths.root={tmp}"], "has a checkpoints/last.ckpt, so there is nothing to resume"),
    ],
)
def test_resume_without_a_checkpoint_is_one_line(tmp_path, args, message):
    result = run_script("train.py", *(a.format(tmp=tmp_path) for a in args))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]


def test_fit_seconds_of_a_killed_and_resumed_run_count_both_parts(tmp_path):
    slow = ["+callbacks.slow._target_=helpers.SlowSteps", "+callbacks.slow.seconds=0.05"]
    run, saved = killed_and_resumed(tmp_path, "train_step", *slow)
    before = next(v["time_elapsed"]["train"] for k, v in saved.items() if k.startswith("Timer"))
    assert before > 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["fit_seconds"] >= round(before, 1) + 0.05 * 5  # the resumed epoch's slowed steps on top
