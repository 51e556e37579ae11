"""The run folder: which run is the newest, resuming a finished run, fit time over resumes, atomic folders."""

import json
import os
import stat
import time

import pytest
from conftest import FAST, ROOT, run_script

from cifar_lightning.blocks.errors import UserError
from cifar_lightning.store.locate import newest, resolve, to_resume
from cifar_lightning.store.runs import RunFolder, claim


def fake_run(root, name, started=None, checkpoints=("best", "last")):
    run = RunFolder(root / name)
    for ckpt in checkpoints:
        run.checkpoint(ckpt).parent.mkdir(parents=True, exist_ok=True)
        run.checkpoint(ckpt).write_bytes(b"x")
    if started is not None:
        (run.path / "run.json").write_text(json.dumps({"started": started}))
    return run


def touch_later(path):
    later = time.time() + 3600
    os.utime(path, (later, later))


@pytest.mark.parametrize("rewritten", ["best", "last", "both"])
def test_the_newest_run_is_the_one_that_started_last_whatever_its_files_times(tmp_path, rewritten):
    """evaluate.py calibrate=true rewrites an older run's checkpoint: it must not become the newest run."""
    older = fake_run(tmp_path / "runs", "a", started=1000.0)
    newer = fake_run(tmp_path / "runs", "b", started=2000.0)
    for name in ("best", "last") if rewritten == "both" else (rewritten,):
        touch_later(older.checkpoint(name))
    assert newest(tmp_path, "best").path == newer.path
    assert resolve("best", tmp_path) == newer.checkpoint("best")
    assert resolve("last", tmp_path) == newer.checkpoint("last")
    assert to_resume("latest", str(tmp_path)).path == newer.path  # resume=latest


def test_a_run_records_its_start_once(tmp_path):
    run = claim(tmp_path)
    before = time.time()
    run.mark_started()
    after = time.time()
    first = run.started
    time.sleep(0.01)
    run.mark_started()  # a resume
    assert run.started == first and before <= first <= after  # no bound on how long anything took


def test_newest_ignores_runs_without_that_checkpoint(tmp_path):
    fake_run(tmp_path, "a", started=1.0)
    fake_run(tmp_path, "b", started=2.0, checkpoints=("last",))
    assert newest(tmp_path, "best").path.name == "a" and newest(tmp_path, "last").path.name == "b"
    with pytest.raises(UserError, match="no training runs with a best.ckpt"):
        resolve("best", tmp_path / "nothing")


def test_a_folder_is_replaced_only_when_its_block_ends_without_error(tmp_path):
    run = RunFolder(tmp_path)
    out = run.eval_dir("test")
    with run.replace_folder(out) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), run.replace_folder(out) as tmp:
        (tmp / "a.txt").write_text("second")
        raise RuntimeError("killed halfway")
    assert (out / "a.txt").read_text() == "first" and sorted(p.name for p in tmp_path.glob("eval/*")) == ["test"]


def test_a_replaced_folder_gets_the_mode_of_any_new_folder_not_a_private_one(tmp_path):
    run = RunFolder(tmp_path)
    previous = os.umask(0o022)
    try:
        with run.replace_folder(run.eval_dir("test")):
            pass
        (tmp_path / "plain").mkdir()
    finally:
        os.umask(previous)
    assert stat.S_IMODE(run.eval_dir("test").stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert stat.S_IMODE(run.eval_dir("test").stat().st_mode) == 0o755


@pytest.mark.slow
def test_resuming_a_finished_run_says_so_and_changes_nothing(tmp_path):
    run = tmp_path / "run"
    first = run_script("train.py", "data=synthetic", *FAST, f"hydra.run.dir={run}")
    assert first.returncode == 0, first.stderr[-2000:]
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "train.log"}
    before = (run / "train.log").read_text()
    for resume in (str(run), "latest"):
        again = run_script("train.py", f"resume={resume}", f"paths.root={tmp_path}")
        assert again.returncode == 0, again.stderr[-2000:]
        assert "finished already: nothing to resume" in again.stdout + again.stderr
        assert "Epoch 0" not in again.stderr and "Testing" not in again.stderr
        after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != "train.log"}
        assert after == files  # summary.json's fit_seconds included, and no .hydra/resume_* folder
        log = (run / "train.log").read_text()  # the log only records the attempt, one line
        assert (
            log.startswith(before) and log[len(before) :].count("\n") == 1 and "finished already" in log[len(before) :]
        )
        before = log


def test_a_run_refused_before_it_started_leaves_no_folder_and_other_folders_stay(tmp_path):
    refused = run_script("train.py", "data=synthetic", "epochs=0", f"paths.root={tmp_path}")
    assert refused.returncode == 1 and refused.stderr.strip().splitlines()[-1].startswith("error: epochs=0")
    assert not list((tmp_path / "runs").iterdir())  # Hydra had made one, with .hydra/ and train.log
    kept = tmp_path / "mine"
    kept.mkdir()
    (kept / "notes.txt").write_text("a file of the user's")
    again = run_script("train.py", "data=synthetic", "epochs=0", f"hydra.run.dir={kept}")
    assert again.returncode == 1 and (kept / "notes.txt").read_text() == "a file of the user's"


def test_a_new_run_or_sweep_never_writes_into_a_used_folder(tmp_path):
    """hydra.run.dir= or hydra.sweep.dir= naming an earlier run, sweep or any folder with files (hidden ones too) is
    refused in one line before Hydra makes or writes anything there (tasks/cli.NewFolders): not its .hydra/, its
    multirun.yaml nor its log; the line says how to continue a run or sweep found there. An empty folder is a new
    run's, and so is the folder claimed for a run whatever its log is named."""
    run = fake_run(tmp_path, "run")
    (run.path / ".hydra").mkdir()
    (run.path / ".hydra" / "overrides.yaml").write_text("- seed=3\n")
    sweep = tmp_path / "sweep"
    fake_run(sweep, "0")
    (sweep / "multirun.yaml").write_text("hydra: {}\n")
    photos, hidden = tmp_path / "photos", tmp_path / "hidden"
    (photos / "cat.png").parent.mkdir()
    (photos / "cat.png").write_bytes(b"x")
    (hidden / ".notes").parent.mkdir()
    (hidden / ".notes").write_text("mine")
    continue_run, continue_sweep = f"python train.py resume={run.path}", f"python train.py -m resume={sweep}"
    cases = [
        (["train.py", f"hydra.run.dir={run.path}"], continue_run),
        (["train.py", f"hydra.run.dir={run.path}", "hydra.output_subdir=null"], continue_run),
        (["train.py", "-m", "seed=0,1", f"hydra.sweep.dir={sweep}"], continue_sweep),
        (["train.py", "-m", "hparams_search=optuna", f"hydra.sweep.dir={sweep}"], continue_sweep),
        (["train.py", f"hydra.run.dir={sweep}"], continue_sweep),
        (["train.py", f"hydra.run.dir={photos}"], "choose a new or empty folder"),
        (["train.py", f"hydra.run.dir={hidden}"], "choose a new or empty folder"),
    ]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    for args, advice in cases:
        result = run_script(*args, "data=synthetic", *FAST)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
        (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert " already: a new run or sweep never writes over files" in line and line.endswith(advice), line
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # no log either
    empty = tmp_path / "empty"
    empty.mkdir()  # taken: refused by its epochs, not by its folder
    refused = run_script("train.py", "data=synthetic", "epochs=0", f"hydra.run.dir={empty}")
    assert refused.returncode == 1 and refused.stderr.strip().splitlines()[-1].startswith("error: epochs=0")
    named = run_script("train.py", "data=synthetic", "epochs=0", "hydra.job.name=mine", f"paths.root={tmp_path}")
    assert named.stderr.strip().splitlines()[-1].startswith("error: epochs=0")
    assert not list((tmp_path / "runs").iterdir())  # the folder claimed for it, with its mine.log, discarded


def test_discard_keeps_a_folder_that_holds_anything_but_what_hydra_writes_first(tmp_path):
    empty = RunFolder(tmp_path / "a")
    (empty.path / ".hydra").mkdir(parents=True)
    (empty.path / "train.log").write_text("")
    started = RunFolder(tmp_path / "b")
    (started.path / ".hydra").mkdir(parents=True)
    started.mark_started()
    not_a_run = RunFolder(tmp_path / "c")  # no .hydra/: a folder Hydra did not make for a run
    not_a_run.path.mkdir()
    assert empty.discard_if_unused() and not empty.path.exists()
    assert not started.discard_if_unused() and started.path.exists()
    assert not not_a_run.discard_if_unused() and not_a_run.path.exists()


@pytest.mark.parametrize("script", ["evaluate.py", "predict.py", "export.py"])
def test_a_refused_command_keeps_the_empty_folder_it_runs_in(tmp_path, script):
    """evaluate, predict and export write into the folder they run in (hydra/inplace): an error leaves it be."""
    here = tmp_path / "here"
    here.mkdir()
    result = run_script(ROOT / script, f"ckpt={tmp_path / 'missing.ckpt'}", cwd=here)
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert here.is_dir() and list(here.iterdir()) == []
