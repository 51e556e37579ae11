"""A file that cannot be written (a full disk, a quota, a read-only or forbidden folder) ends the command in one
`error:` line naming the file and what to do (for a training run, how to resume it), exit code 1, no traceback, and
the file as it was before: checkpoints, run.json, config_tree.txt, summary.json, metrics.csv, the evaluation folder,
predict's csv= and export's output=."""

import contextlib
import csv
import errno
import shutil
import subprocess
import uuid

import numpy as np
import pytest
import torch
from conftest import FAST, ROOT, WITHOUT_NARROW, run_script
from conftest import HELPERS_ENV as ENV
from PIL import Image

from cifar_lightning.blocks.loggers import CSVLogger
from cifar_lightning.store import checkpoints
from cifar_lightning.store.checkpoints import AtomicCheckpointIO, load_checkpoint
from cifar_lightning.store.runs import RunFolder, write_atomic
from cifar_lightning.tasks.cli import exit_on_user_error

TORCH_SHORT_WRITE = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"


def full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")  # as a failed write: naming no file


def test_torch_s_short_write_is_an_oserror_naming_the_checkpoint_which_stays_whole(tmp_path, monkeypatch):
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 0}, path)

    def cut_short(obj, f, *args, **kwargs):
        open(f, "wb").write(b"PK\x03\x04 half")
        raise RuntimeError(TORCH_SHORT_WRITE)

    monkeypatch.setattr(checkpoints.torch, "save", cut_short)
    with pytest.raises(OSError) as failed:
        AtomicCheckpointIO().save_checkpoint({"epoch": 1}, path)
    assert failed.value.errno == errno.EIO and failed.value.filename == str(path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"epoch": 0}
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_another_runtime_error_of_a_save_is_not_taken_for_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints.torch, "save", lambda *_: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        AtomicCheckpointIO().save_checkpoint({}, tmp_path / "last.ckpt")


def test_write_atomic_names_the_file_of_a_failed_write_and_keeps_the_old_one(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old")

    def write(tmp):
        with open(tmp, "w") as f:
            f.write = full
            f.write("new")

    with pytest.raises(OSError) as failed:
        write_atomic(path, write)
    assert failed.value.filename == str(path) and failed.value.errno == errno.ENOSPC
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_replace_folder_names_the_folder_of_a_failed_write_and_keeps_the_old_one(tmp_path):
    run = RunFolder(tmp_path)
    folder = run.eval_dir("test")
    with run.replace_folder(folder) as tmp:
        (tmp / "metrics.json").write_text("old")
    with pytest.raises(OSError) as failed, run.replace_folder(folder) as tmp:
        (tmp / "metrics.json").write_text("new")
        full()
    assert failed.value.filename == str(folder)
    assert (folder / "metrics.json").read_text() == "old" and [p.name for p in folder.parent.iterdir()] == ["test"]


@pytest.mark.parametrize("new_column", [False, True])  # an append, or the file rewritten under a new header
def test_a_metrics_csv_save_that_fails_leaves_the_file_and_keeps_the_rows(tmp_path, monkeypatch, new_column):
    logger = CSVLogger(str(tmp_path))
    logger.log_metrics({"epoch": 0, "train/loss": 1.0}, step=0)
    logger.save()
    before = logger.metrics_file.read_text()
    logger.log_metrics({"epoch": 0, "val/acc" if new_column else "train/loss": 0.5}, step=1)
    real_writerows = csv.DictWriter.writerows

    def writing_half(self, rows):  # a row reaches the file (the file's buffer, written when it is closed), then no more
        real_writerows(self, rows[:1])
        full()

    monkeypatch.setattr("csv.DictWriter.writerows", writing_half)
    with pytest.raises(OSError) as failed:
        logger.save()
    assert failed.value.filename == str(logger.metrics_file)
    assert logger.metrics_file.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]
    monkeypatch.undo()
    logger.save()  # the disk has space again: the rows kept are written
    assert len(logger.metrics_file.read_text().splitlines()) == 3


@pytest.mark.parametrize(
    "error, line",
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "/r/summary.json"),
            "could not write /r/summary.json (No space left on device); free space on its disk",
        ),
        (
            OSError(errno.EROFS, "Read-only file system", "/r/m.onnx"),
            "could not write /r/m.onnx (Read-only file system); its filesystem is read-only: choose a writable folder",
        ),
        (
            PermissionError(errno.EACCES, "Permission denied", "/r/x.csv"),
            "could not write /r/x.csv (Permission denied); fix the folder's permissions or choose another folder",
        ),
    ],
)
def test_a_write_error_is_one_line_and_exit_1(capsys, error, line):
    with pytest.raises(SystemExit) as exited, exit_on_user_error():
        raise error
    assert exited.value.code == 1 and capsys.readouterr().err == f"error: {line}\n"


def test_the_first_write_error_of_a_chain_is_the_one_named(capsys):
    """Lightning winds a failed run down (its loggers' last save) before it re-raises: that error comes second."""
    with pytest.raises(SystemExit), exit_on_user_error():
        try:
            raise OSError(errno.ENOSPC, "No space left on device", "/r/checkpoints/last.ckpt")
        except OSError:
            raise OSError(errno.ENOSPC, "No space left on device", "/r/metrics.csv") from None
    assert capsys.readouterr().err.startswith("error: could not write /r/checkpoints/last.ckpt ")


def test_other_os_errors_are_left_alone():
    with pytest.raises(FileNotFoundError), exit_on_user_error():
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/nowhere")


# ------------------------------------------------------------------------------------------ real runs
def the_error_line(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


def how_to_go_on(run) -> str:
    """The end of the error line of a training run: resume from the epoch last.ckpt holds, or start again."""
    last = run / "checkpoints" / "last.ckpt"
    if not last.exists():
        return "then start the run again"
    return f"then resume it from epoch {load_checkpoint(last)['epoch']}: python train.py resume={run}"


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, writes",
    [
        ("last.ckpt", 1),  # epoch 1's save, failing as torch.save fails on a full disk
        ("best.ckpt", 1),  # a later copy to best.ckpt, after its last.ckpt was saved
        ("metrics.csv", 2),
        ("summary.json", 0),  # every epoch saved: resuming tests the run and writes it
        ("config_tree.txt", 0),  # before any checkpoint: nothing to resume
    ],
)
def test_a_full_disk_during_training_is_one_line_naming_the_file_and_how_to_go_on(tmp_path, name, writes):
    run = tmp_path / "run"
    result = run_script(
        "train.py",
        "data=synthetic",
        *FAST,
        "epochs=2",
        "callbacks.early_stopping=null",
        "+callbacks.disk._target_=helpers.DiskFull",
        f"+callbacks.disk.name={name}",
        f"+callbacks.disk.writes={writes}",
        f"hydra.run.dir={run}",
        env=ENV,
    )
    line = the_error_line(result)
    file = run / "checkpoints" / name if name.endswith(".ckpt") else run / name
    assert line.startswith(f"error: could not write {file} (") and line.endswith(how_to_go_on(run))
    if name == "last.ckpt":  # epoch 0's, whole
        assert load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 0
    if name == "best.ckpt":
        assert load_checkpoint(run / "checkpoints" / "best.ckpt")["epoch"] in (0, 1)
    if name == "config_tree.txt":
        assert not (run / "checkpoints").exists() and not (run / name).exists()
    if (run / "metrics.csv").exists():  # whole rows only
        with open(run / "metrics.csv") as f:
            assert all(int(row["step"]) >= 0 and None not in row for row in csv.DictReader(f))
    assert not list(run.glob("**/.*.tmp")) and not (run / "summary.json").exists()
    assert line.removeprefix("error: ") in (run / "train.log").read_text()


RUN_WITH_A_FULL_DISK = """
import runpy, sys
sys.path.insert(0, {tests!r})
from helpers import DiskFull
DiskFull({name!r})
sys.argv[0] = {script!r}
runpy.run_path({script!r}, run_name="__main__")
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    "script, args, name, written",
    [
        ("evaluate.py", [], "metrics.json", "{run}/eval/test"),
        ("predict.py", ["images={images}/*", "csv={out}/top.csv"], "top.csv", "{out}/top.csv"),
        ("export.py", ["output={out}/model.onnx", "check_images=8"], "model.onnx", "{out}/model.onnx"),
    ],
)
def test_a_full_disk_in_the_other_commands_is_one_line_and_keeps_the_old_file(
    synthetic_run, tmp_path, script, args, name, written
):
    run, images, out = tmp_path / "run", tmp_path / "images", tmp_path / "out"
    shutil.copytree(synthetic_run, run)
    images.mkdir()
    out.mkdir()
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(images / "black.png")
    args = [f"ckpt={run}", *(a.format(images=images, out=out) for a in args)]
    target = tmp_path / f"{script}_full.py"
    target.write_text(RUN_WITH_A_FULL_DISK.format(tests=str(ROOT / "tests"), name=name, script=str(ROOT / script)))
    assert run_script(script, *args).returncode == 0  # once with space: the file a failed write must keep
    written = written.format(run=run, out=out)
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.glob("**/*") if p.is_file()}

    line = the_error_line(run_script(target, *args))

    assert line.startswith(f"error: could not write {written} (No space left on device); free space on its disk")
    assert {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.glob("**/*") if p.is_file()} == before


# ------------------------------------------------------------------------------------------ a real full disk
@pytest.fixture
def small_disk(tmp_path, trained):
    """A tmpfs of room for two checkpoints of the full-width CNN and a half (a run's best.ckpt and last.ckpt, not
    epoch 1's temporary last.ckpt beside them); skipped where mounting is not permitted. Unmounted afterwards."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode != 0:  # before training the run that sizes it
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()[:200]}")
    checkpoint = trained.source([*WITHOUT_NARROW, "data=synthetic"]) / "checkpoints" / "last.ckpt"
    size = int(2.5 * checkpoint.stat().st_size) + 256 * 1024
    subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True, capture_output=True)
    yield mount
    with contextlib.suppress(OSError):
        subprocess.run(["umount", str(mount)], check=True, capture_output=True)


@pytest.mark.slow
def test_a_really_full_disk_stops_training_in_one_line_and_keeps_the_checkpoints(small_disk):
    run = small_disk / "run"
    result = run_script(
        "train.py",
        "data=synthetic",
        *WITHOUT_NARROW,
        "epochs=3",
        "callbacks.early_stopping=null",
        f"hydra.run.dir={run}",
    )
    line = the_error_line(result)
    assert line.startswith(f"error: could not write {run}/"), line
    assert f"python train.py resume={run}" in line
    assert load_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] >= 0
    assert load_checkpoint(run / "checkpoints" / "best.ckpt")["epoch"] >= 0
    assert not list(run.glob("**/.*.tmp"))
