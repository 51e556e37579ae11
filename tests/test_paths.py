"""Paths as a shell user types them (blocks/paths.py): `~` expanded in every path option, relative paths relative to
the folder the command was started in (hydra.job.chdir=true refused), error lines naming the absolute path checked;
and an images= path that exists is that file before it is a glob pattern."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import FAST, ROOT, run_script, write_folder
from PIL import Image

from cifar_lightning.blocks.paths import quoted, user_path, user_pattern
from cifar_lightning.tasks.cli import compose_config, typed_paths
from cifar_lightning.tasks.evaluate import evaluate
from cifar_lightning.tasks.predict import find_images


@pytest.fixture
def shell(tmp_path):
    """A home folder and a working folder of their own (both with spaces in their names), and the environment
    a script started there sees."""
    home, work = tmp_path / "my home", tmp_path / "work dir"
    home.mkdir()
    work.mkdir()
    return home, work, {**os.environ, "HOME": str(home)}


def script(name, *args, cwd, env):
    return run_script(ROOT / name, *args, cwd=cwd, env=env)


def one_error_line(result):
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return lines[-1]


def test_user_path_expands_home_and_is_absolute_against_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    monkeypatch.chdir(tmp_path)
    assert user_path("~") == tmp_path / "h"
    assert user_path("~/runs/t 1") == tmp_path / "h" / "runs" / "t 1"
    assert user_path("data/base") == tmp_path / "data" / "base"
    assert user_path("../x") == tmp_path / ".." / "x"  # not resolved: the spelling the user gave, made absolute
    assert user_path("/abs/~x") == Path("/abs/~x")  # `~` only at the start, as in a shell
    assert user_path("a~b") == tmp_path / "a~b"


def test_glob_patterns_expand_home_and_match_in_a_working_folder_with_glob_characters(tmp_path, monkeypatch):
    home, work = tmp_path / "h[0]", tmp_path / "w[1] *"
    for folder in (home, work):
        folder.mkdir()
        (folder / "a.png").write_bytes(b"")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    assert find_images("*.png") == [work / "a.png"]
    assert find_images("~/*.png") == [home / "a.png"]
    assert user_pattern("/abs/*.png") == "/abs/*.png"


def test_the_command_line_gets_home_expanded_where_hydra_would_act_on_it_first(tmp_path, monkeypatch):
    """Hydra makes hydra.run.dir and hydra.sweep.dir before our code runs, and its grammar refuses a bare ~."""
    monkeypatch.setenv("HOME", str(tmp_path))
    kept = ["hydra.run.dir=outputs/x", "data.root='~/d'", "-m", "--cfg=~x", "seed=1,2", "data.root=~/a,~/b", "a=b~"]
    args = ["hydra.run.dir='~/runs/t 1'", '++hydra.sweep.dir="~"', "data.root=~/my data", "ckpt=~", *kept]
    assert typed_paths(args) == [
        f"hydra.run.dir={quoted(tmp_path / 'runs' / 't 1')}",
        f"++hydra.sweep.dir={quoted(tmp_path)}",
        f"data.root={quoted(tmp_path / 'my data')}",
        f"ckpt={quoted(tmp_path)}",
        *kept,  # data.root='~/d' is expanded where it is read (user_path); Hydra refuses the bare ~ in a list
    ]


def test_a_run_typed_with_tilde_paths_lands_in_the_home_folder_and_every_command_finds_it(shell):
    """The issue's command: hydra.run.dir='~/runs/t1' made a folder named `~` in the working folder (which a later
    `rm -rf ~` deletes the home of); data.root='~/base' did not exist. Paths with spaces on the way."""
    home, work, env = shell
    write_folder(home / "base data", per_class=6)
    trained = script(
        "train.py",
        *FAST,
        "batch_size=4",
        "data=folder",
        "data.val_size=3",
        "data.root='~/base data'",
        "hydra.run.dir='~/runs/t 1'",
        cwd=work,
        env=env,
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    run = home / "runs" / "t 1"
    assert (run / "summary.json").is_file() and (run / "checkpoints" / "best.ckpt").is_file()
    assert list(work.iterdir()) == []  # no `~` folder, nothing else either

    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(home / "a cat.png")
    predicted = script(
        "predict.py", "ckpt='~/runs/t 1'", "images='~/*.png'", "csv='~/predictions.csv'", cwd=work, env=env
    )
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    assert str(home / "a cat.png") in (home / "predictions.csv").read_text()
    evaluated = script("evaluate.py", "ckpt='~/runs/t 1/checkpoints/last.ckpt'", cwd=work, env=env)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert json.loads((run / "eval" / "test" / "metrics.json").read_text())["data_root"] == str(home / "base data")
    exported = script("export.py", "ckpt='~/runs/t 1'", "output='~/model.onnx'", "check_images=8", cwd=work, env=env)
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert (home / "model.onnx").is_file()
    resumed = script("train.py", "resume='~/runs/t 1'", cwd=work, env=env)
    assert resumed.returncode == 0 and "finished already" in (run / "train.log").read_text(), resumed.stderr[-2000:]
    assert list(work.iterdir()) == []


def test_a_sweep_and_a_runs_root_typed_with_tilde_go_to_the_home_folder(shell):
    home, work, env = shell
    refused = ["data=synthetic", "epochs=0"]  # Hydra makes the folders, then the run is refused: no training
    script("train.py", "-m", *refused, "hydra.sweep.dir='~/sweep 1'", "seed=1,2", cwd=work, env=env)
    assert (home / "sweep 1" / "multirun.yaml").is_file()
    script("train.py", *refused, "paths.root='~/my runs'", cwd=work, env=env)
    assert (home / "my runs" / "runs").is_dir()
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("multirun", [False, True])
def test_hydra_job_chdir_true_is_refused_in_one_line_before_anything_runs(shell, multirun):
    """Hydra's old default moved the working folder into the run folder: data.root=data/base then named
    <run>/data/base, and logger=mlflow's store went inside the run, where ckpt=mlflow:ID could not find it."""
    home, work, env = shell
    write_folder(work / "data" / "base", per_class=6)
    sweep = ["-m", f"hydra.sweep.dir={work / 'sweep'}", "seed=1,2"] if multirun else []
    result = script(
        "train.py", *sweep, *FAST, "data=folder", "data.root=data/base", "hydra.job.chdir=true", cwd=work, env=env
    )
    assert one_error_line(result).startswith("error: hydra.job.chdir=true is not supported")
    # the run folder Hydra made is removed again; a sweep is refused before its folder is made
    assert not list(work.glob("outputs/runs/*")) and not (work / "sweep").exists()


@pytest.mark.parametrize(
    "name, args, checked",
    [
        ("train.py", ["data=folder", "data.root=missing/base"], "missing/base/train does not exist"),
        ("train.py", ["resume=missing/run"], "missing/run/checkpoints/last.ckpt does not exist"),
        ("evaluate.py", ["ckpt=missing/x.ckpt"], "checkpoint {work}/missing/x.ckpt does not exist"),
        ("evaluate.py", ["ckpt=best", "outputs=missing"], "no training runs with a best.ckpt under {work}/missing/"),
        ("predict.py", ["ckpt=missing", "images=x.png"], "checkpoint {work}/missing does not exist"),
        ("export.py", ["ckpt=~/missing"], "checkpoint {home}/missing does not exist"),
        ("export.py", ["ckpt='~/missing'"], "checkpoint {home}/missing does not exist"),
    ],
)
def test_error_lines_name_the_absolute_path_they_checked(shell, name, args, checked):
    home, work, env = shell
    line = one_error_line(script(name, *args, cwd=work, env=env))
    assert checked.format(work=work, home=home) in line
    if "{" not in checked:
        assert f"{work}/{checked}" in line


def test_predict_options_name_absolute_paths(synthetic_run, shell):
    home, work, env = shell
    missing = one_error_line(script("predict.py", f"ckpt={synthetic_run}", "images=pics/*.png", cwd=work, env=env))
    assert f"(looked for {work}/pics/*.png)" in missing
    (work / "pics").mkdir()
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(work / "pics" / "a.png")
    no_folder = script("predict.py", f"ckpt={synthetic_run}", "images=pics", "csv=out/p.csv", cwd=work, env=env)
    assert f"the folder {work}/out does not exist" in one_error_line(no_folder)
    a_folder = script("predict.py", f"ckpt={synthetic_run}", "images=pics", "csv=~", cwd=work, env=env)
    assert f"{home} is a folder" in one_error_line(a_folder)


def test_an_existing_path_is_a_path_before_it_is_a_glob_pattern(synthetic_run, tmp_path):
    """`cat[1].png` as a pattern matches cat1.png; the file named cat[1].png is what the user meant."""
    for name in ("cat[1].png", "cat1.png"):
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / name)
    result = run_script("predict.py", f"ckpt={synthetic_run}", f'images="{tmp_path}/cat[1].png"')
    assert result.returncode == 0, result.stderr[-2000:]
    predicted = [line.split(": ")[0] for line in result.stdout.splitlines() if "%" in line]
    assert predicted == [str(tmp_path / "cat[1].png")]
    assert find_images(str(tmp_path / "cat*.png")) == [tmp_path / "cat1.png", tmp_path / "cat[1].png"]
    assert find_images(str(tmp_path / "cat[0-9].png")) == [tmp_path / "cat1.png"]  # no such file: a pattern


def test_a_runs_relative_data_root_is_read_from_the_folder_the_run_was_started_in(synthetic_run, tmp_path, monkeypatch):
    """evaluate.py (and export.py) rebuild the run's data from its config: data.root=rel/folder meant the folder
    under where train.py was started (Hydra's hydra.runtime.cwd, recorded in .hydra/hydra.yaml), not under where
    evaluate.py is started."""
    run = shutil.copytree(synthetic_run, tmp_path / "run")
    started, elsewhere = tmp_path / "started here", tmp_path / "elsewhere"
    write_folder(started / "rel" / "folder", classes=[f"class_{i}" for i in range(10)], per_class=2)
    elsewhere.mkdir()
    config = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    config["data"].update(source="folder", root="rel/folder", val_size=0)
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    (run / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"runtime": {"cwd": str(started)}}}))
    monkeypatch.chdir(elsewhere)
    metrics = evaluate(compose_config("evaluate", [f"ckpt={run}", "misclassified=0"]))
    assert metrics["data_root"] == str(started / "rel" / "folder")
