"""No command writes over a file it reads (store.runs.output_file): predict.py csv= and export.py output= naming an
image, the checkpoint, the data or a file of the run, by any spelling, end in one line and change nothing."""

import os
import shutil

import numpy as np
import pytest
from conftest import CLASSES, run_script, write_folder
from PIL import Image

from cifar_lightning.blocks.errors import UserError
from cifar_lightning.store.runs import RunFolder, output_file
from cifar_lightning.tasks.cli import compose_config
from cifar_lightning.tasks.export import export
from cifar_lightning.tasks.predict import predict


@pytest.fixture
def run(synthetic_run, tmp_path):
    """A copy of the shared finished run (a failing test may not damage the shared one), and two images."""
    copy = shutil.copytree(synthetic_run, tmp_path / "run")
    for name in ("keep.png", "other.png"):
        Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(tmp_path / name)
    return copy


def files(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_the_issues_command_exits_1_in_one_line_and_keeps_the_image(run, tmp_path):
    before = files(tmp_path)
    result = run_script("predict.py", f"ckpt={run}", f"images={tmp_path}/keep.png", f"csv={tmp_path}/keep.png")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line == (
        f"error: csv={tmp_path}/keep.png would write over {tmp_path}/keep.png, a file this command reads: name another"
    )
    assert files(tmp_path) == before


SPELLINGS = {
    "as given": lambda tmp, target: str(target),
    "relative": lambda tmp, target: os.path.relpath(target),
    "with ..": lambda tmp, target: f"{target.parent}/../{target.parent.name}/{target.name}",
    "a symlink": lambda tmp, target: str(_link(tmp / "link", target)),
    "a hard link": lambda tmp, target: str(_link(tmp / "hard", target, hard=True)),
}


def _link(link, target, hard=False):
    (os.link if hard else os.symlink)(target, link)
    return link


INPUTS = ["keep.png", "checkpoint"]  # what predict reads
RUN_FILES = [".hydra/config.yaml", "summary.json", "metrics.csv", "checkpoints/last.ckpt"]  # not read, the run's
# a hard link to a run's file is left out: the atomic write replaces the link's name, never the run's file
CASES = [(t, s) for t in INPUTS + RUN_FILES for s in SPELLINGS if t in INPUTS or s != "a hard link"]


@pytest.mark.parametrize("target, spelling", CASES)
def test_predict_never_writes_its_csv_over_an_input_or_a_file_of_the_run(run, tmp_path, target, spelling):
    path = {"keep.png": tmp_path / "keep.png", "checkpoint": run / "checkpoints" / "best.ckpt"}.get(target)
    csv = SPELLINGS[spelling](tmp_path, path or run / target)
    before = files(tmp_path)
    with pytest.raises(UserError, match="would write over .*: name another$"):
        predict(compose_config("predict", [f"ckpt={run}", f"images='{tmp_path}/*.png'", f"csv='{csv}'"]))
    assert files(tmp_path) == before


@pytest.mark.parametrize("spelling", ["as given", "a symlink", "with .."])
@pytest.mark.parametrize("target", ["checkpoint", "summary.json", ".hydra/config.yaml", "checkpoints/last.ckpt"])
def test_export_never_writes_its_model_over_the_checkpoint_or_a_file_of_the_run(run, tmp_path, spelling, target):
    path = run / "checkpoints" / "best.ckpt" if target == "checkpoint" else run / target
    output = SPELLINGS[spelling](tmp_path, path)
    before = files(tmp_path)
    with pytest.raises(UserError, match="would write over .*: name another$"):
        export(compose_config("export", [f"ckpt={run}", f"output='{output}'"]))
    assert files(tmp_path) == before


def test_export_never_writes_over_a_file_of_the_data_it_checks_on(run, tmp_path):
    data = write_folder(tmp_path / "folder", classes=[f"class_{i}" for i in range(len(CLASSES))], per_class=2)
    image = data / "test" / "class_3" / "0.png"
    before = files(tmp_path)
    with pytest.raises(UserError, match=f"would write over {image}, a file in {data} this command reads"):
        export(
            compose_config(
                "export", [f"ckpt={run}", "data=folder", f"data.root={data}", "data.val_size=0", f"output={image}"]
            )
        )
    assert files(tmp_path) == before


def test_new_files_beside_the_inputs_and_the_runs_own_exports_may_be_written(run, tmp_path):
    """Only what the command reads or the run recorded is protected: a new CSV in the run folder or beside the
    images, one written again, and export's model.<format> (its default output) are written."""
    ckpt = run / "checkpoints" / "best.ckpt"
    reads = [ckpt, tmp_path / "keep.png"]
    for name in ("predictions.csv", "model.onnx", "notes.txt"):
        assert output_file(str(run / name), "csv", reads, RunFolder(run)) == run / name
        (run / name).write_text("written before")
        assert output_file(str(run / name), "csv", reads, RunFolder(run)) == run / name
    assert output_file(str(tmp_path / "p.csv"), "csv", reads, RunFolder(run)) == tmp_path / "p.csv"
    rows = predict(compose_config("predict", [f"ckpt={run}", f"images={tmp_path}", f"csv={tmp_path}/p.csv"]))
    assert len(rows) == 2 and (tmp_path / "p.csv").read_text().startswith("path,class_1,prob_1")


def test_a_loose_checkpoints_folder_is_no_run_and_only_the_checkpoint_is_protected(run, tmp_path):
    loose = tmp_path / "home" / "model.ckpt"
    (loose.parent / "results").mkdir(parents=True)
    shutil.copyfile(run / "checkpoints" / "best.ckpt", loose)
    (loose.parent / "results" / "p.csv").write_text("an earlier prediction")
    assert output_file(str(loose.parent / "results" / "p.csv"), "csv", [loose], RunFolder.of_checkpoint(loose))
    with pytest.raises(UserError, match="a file this command reads"):
        output_file(str(loose), "csv", [loose], RunFolder.of_checkpoint(loose))
