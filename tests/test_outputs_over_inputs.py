"""No command writes over a file it reads or did not write (store.outputs.output_file): predict.py csv= and export.py
output= naming an image, the checkpoint, the data, a file of the run or of a sweep, or any file that is no earlier
output of theirs, by any spelling, end in one line and change nothing."""

import os
import shutil

import numpy as np
import pytest
from conftest import CLASSES, run_script, write_folder
from PIL import Image

from cifar_lightning.blocks.errors import UserError
from cifar_lightning.store.outputs import output_file
from cifar_lightning.store.runs import RunFolder
from cifar_lightning.tasks.cli import compose_config
from cifar_lightning.tasks.export import export, is_onnx_model
from cifar_lightning.tasks.predict import is_prediction_csv, predict


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
    """An image of the data is no model export wrote (refused before any work); an ONNX model kept in the data's
    folder is a file the command reads (refused once the data, and so its folder, is known)."""
    data = write_folder(tmp_path / "folder", classes=[f"class_{i}" for i in range(len(CLASSES))], per_class=2)
    shutil.copyfile(export(compose_config("export", [f"ckpt={run}", "check_images=4"])), data / "model.onnx")
    on_the_data = ["data=folder", f"data.root={data}", "data.val_size=0"]
    before = files(tmp_path)
    for target, message in [
        (data / "test" / "class_3" / "0.png", "which it did not write: name a new file"),
        (data / "model.onnx", f"a file in {data} this command reads: name another"),
    ]:
        with pytest.raises(UserError, match=f"would write over {target}, {message}$"):
            export(compose_config("export", [f"ckpt={run}", *on_the_data, f"output={target}"]))
    assert files(tmp_path) == before


def test_new_files_and_earlier_outputs_of_the_same_option_may_be_written(run, tmp_path):
    """Outside what the command reads or the run recorded, a new file, or one the option wrote before, is written:
    a prediction CSV again, export's model.onnx again."""
    ckpt = run / "checkpoints" / "best.ckpt"
    reads = [ckpt, tmp_path / "keep.png"]
    for name in ("predictions.csv", "notes.txt"):
        assert output_file(str(run / name), "csv", reads, [RunFolder(run)], is_prediction_csv) == run / name
    assert output_file(str(tmp_path / "p.csv"), "csv", reads, [RunFolder(run)], is_prediction_csv) == tmp_path / "p.csv"
    rows = predict(compose_config("predict", [f"ckpt={run}", f"images={tmp_path}", f"csv={tmp_path}/p.csv"]))
    assert len(rows) == 2 and (tmp_path / "p.csv").read_text().startswith("path,class_1,prob_1")
    again = predict(compose_config("predict", [f"ckpt={run}", f"images={tmp_path}", f"csv={tmp_path}/p.csv"]))
    assert again == rows
    model = export(compose_config("export", [f"ckpt={run}", "check_images=4"]))
    assert model == run / "model.onnx" and is_onnx_model(model)
    assert export(compose_config("export", [f"ckpt={run}", "check_images=4", f"output={model}"])) == model


@pytest.mark.parametrize("command", ["predict", "export"])
@pytest.mark.parametrize(
    "target",
    ["README.md", "photo.png", "sweep/multirun.yaml", "sweep/summary.csv", "sweep/eval/test/metrics.json", "empty.csv"],
)
def test_a_file_the_option_did_not_write_is_never_replaced(run, tmp_path, command, target):
    """Not read, not a run's record, and still no CSV of predictions or ONNX model: a README, a photo, a sweep's
    record, summary or evaluation, an empty file. Each is refused in one line and kept."""
    path = tmp_path / target
    path.parent.mkdir(parents=True, exist_ok=True)
    if target == "photo.png":
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
    elif target == "sweep/summary.csv":
        path.write_text("run,seed,best_val_acc\n0,0,0.5\n")
    elif target != "empty.csv":
        path.write_text("something of the user's\n")
    else:
        path.touch()
    before = files(tmp_path)
    overrides = [f"ckpt={run}", "check_images=4", f"output={path}"]
    if command == "predict":
        overrides = [f"ckpt={run}", f"images={tmp_path}/keep.png", f"csv={path}"]
    with pytest.raises(UserError, match=f"^{command == 'predict' and 'csv' or 'output'}=.* would write over {path}, "
                       "which it did not write: name a new file$"):  # fmt: skip
        (predict if command == "predict" else export)(compose_config(command, overrides))
    assert files(tmp_path) == before


def test_a_loose_checkpoints_folder_is_no_run_and_only_the_checkpoint_is_protected(run, tmp_path):
    loose = tmp_path / "home" / "model.ckpt"
    (loose.parent / "results").mkdir(parents=True)
    shutil.copyfile(run / "checkpoints" / "best.ckpt", loose)
    (loose.parent / "results" / "p.csv").write_text("path,class_1,prob_1\n")  # an earlier prediction
    earlier = [RunFolder.of_checkpoint(loose)], is_prediction_csv
    assert output_file(str(loose.parent / "results" / "p.csv"), "csv", [loose], *earlier)
    with pytest.raises(UserError, match="a file this command reads"):
        output_file(str(loose), "csv", [loose], *earlier)
