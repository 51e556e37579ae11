"""resume= when the run's record changed after it stopped: its .hydra/overrides.yaml edited (what last.ckpt restores
must fit what the config builds), its MLflow run or experiment deleted (one line saying how to restore it)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from conftest import FAST, compose_train, run_script, train_run
from conftest import HELPERS_ENV as ENV
from mlflow import MlflowClient
from mlflow.entities import ViewType

from cifar_lightning.blocks.errors import UserError
from cifar_lightning.store import tracking
from cifar_lightning.store.locate import resolve
from cifar_lightning.store.runs import LOCK
from cifar_lightning.tasks.resume import check_resumable, differences, resume_config
from cifar_lightning.tasks.train import train_or_resume

# Two epochs, stopped after the first as a kill would leave them: last.ckpt of epoch 0, no summary.json
STOPPED = [
    *FAST,
    "epochs=2",
    "data=synthetic",
    "callbacks.early_stopping=null",
    "+callbacks.stop._target_=helpers.StopAfterEpoch",
]
TRUSTED = "trusted_modules=[helpers]"


def stopped_run(run: Path, *overrides: str) -> Path:
    train_run([*STOPPED, *overrides], run)
    (run / "summary.json").unlink()
    return run


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A stopped run with the default OneCycle schedule (built for the run's length)."""
    return stopped_run(tmp_path_factory.mktemp("base") / "run")


def edited(base: Path, tmp_path: Path, *changes: str) -> Path:
    """A copy of `base` in a runs root under tmp_path, `changes` appended to its .hydra/overrides.yaml (the last
    override of a key wins)."""
    run = tmp_path / "outputs" / "runs" / "run"
    shutil.copytree(base, run)
    record_overrides(run, [*recorded(run), *changes])
    return run


def recorded(run: Path) -> list[str]:
    return yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())


def record_overrides(run: Path, overrides: list[str]) -> None:
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))


def resume(run: Path) -> float | None:
    """train.py resume=RUN, in this process."""
    overrides = [f"resume={run}", TRUSTED]
    return train_or_resume(compose_train(overrides, output_dir=run), overrides)


def files(run: Path) -> dict:
    """The run's files and contents but its log, Hydra's records of each call and the lock (each holder's id)."""
    kept = [p for p in run.rglob("*") if p.is_file() and p.name not in ("train.log", LOCK) and ".hydra" not in p.parts]
    return {p: p.read_bytes() for p in kept}


def steps_of(run: Path) -> int:
    return torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["total_steps"]


CHANGES = {
    "epochs": ("epochs=4", "the run's length changed from {steps} to {twice} optimizer steps"),
    "batch_size": ("batch_size=16", "the run's length changed from {steps} to {twice} optimizer steps"),
    "lr": ("optimizer.lr=0.01", "optimizer.lr 0.003 -> 0.01"),
    "optimizer": ("optimizer=sgd", "optimizer._target_ 'torch.optim.AdamW' -> 'torch.optim.SGD'"),
    "scheduler": (
        "scheduler=step",
        "scheduler._target_ 'cifar_lightning.blocks.schedules.OneCycle' -> 'torch.optim.lr_scheduler.StepLR'",
    ),
    "no scheduler": ("scheduler=none", "scheduler {{'_target_'"),
    "model": ("model.widths=[8,16,32]", "model.widths [16, 32, 64] -> [8, 16, 32]"),
    "augmentation": ("augmentation=none", "augmentation {{'_target_'"),
    "label smoothing": ("module.label_smoothing=0.2", "module.label_smoothing 0.1 -> 0.2"),
    "data": ("data.val_size=400", "the data's mean"),  # another training split
}


@pytest.mark.parametrize("change", CHANGES)
def test_a_config_edited_after_the_run_stopped_is_refused_before_training(base, tmp_path, change):
    edit, message = CHANGES[change]
    run = edited(base, tmp_path, edit)
    before = files(run)
    with pytest.raises(UserError) as refused:
        resume(run)
    steps = steps_of(base)
    expected = message.format(steps=steps, twice=2 * steps)
    assert str(refused.value).startswith(f"cannot resume {run}") and expected in str(refused.value)
    assert "\n" not in str(refused.value)
    assert files(run) == before  # checkpoints, metrics.csv, run.json as they were


def test_the_refusal_is_one_line_and_putting_the_value_back_resumes(base, tmp_path):
    run = edited(base, tmp_path, "epochs=4")
    refused = run_script("train.py", f"resume={run}", TRUSTED, env=ENV)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith("error: cannot resume") and "a resumed run keeps its schedule" in line
    assert f"changed from {steps_of(base)} to {2 * steps_of(base)} optimizer steps" in line

    record_overrides(run, recorded(run)[:-1])
    resume(run)
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2


def test_a_run_whose_schedule_ignores_its_length_may_be_extended(tmp_path):
    """A constant learning rate restores nothing that depends on the run's length; how the module runs (its memory
    layout, compiling) is not what it learns."""
    run = stopped_run(tmp_path / "outputs" / "runs" / "run", "scheduler=none")
    record_overrides(run, [*recorded(run), "epochs=3", "module.channels_last=false"])
    resume(run)
    assert json.loads((run / "summary.json").read_text())["epochs"] == 3


def test_an_older_checkpoint_is_checked_by_its_schedule_state():
    """Checkpoints from before total_steps was saved in them: OneCycle's state holds its total; a schedule whose
    state does not is not checked for length."""
    hparams = {"net": {"_target_": "n"}, "optimizer": {"lr": 1}, "scheduler": {"total_steps": None}}
    cfg = compose_train(["epochs=2", "batch_size=8"], output_dir="run")
    onecycle = {"hyper_parameters": hparams, "lr_schedulers": [{"total_steps": 100}]}
    with pytest.raises(UserError, match="changed from 100 to 200 optimizer steps"):
        check_resumable(onecycle, hparams, 200, cfg)
    check_resumable(onecycle, hparams, 100, cfg)
    check_resumable({"hyper_parameters": hparams, "lr_schedulers": [{"last_epoch": 5}]}, hparams, 200, cfg)
    fixed = {**hparams, "scheduler": {"total_steps": 100}}  # a length of its own: the run's is free
    check_resumable({"hyper_parameters": fixed, "total_steps": 100}, fixed, 200, cfg)


def test_numbers_differing_by_float_rounding_are_the_same():
    assert differences({"mean": [0.5, 0.25]}, {"mean": [0.5 + 1e-9, 0.25]}, "x") == []
    assert differences({"a": 1, "b": [1, 2]}, {"b": [1, 2, 3], "c": None}, "m") == [
        "m.a 1 -> unset",
        "m.b [1, 2] -> [1, 2, 3]",
        "m.c unset -> None",
    ]


# ----------------------------------------------------------------------------------------- MLflow run deleted
@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A stopped run logged to the MLflow store of its runs root: (root, run, client, MLflow run id). Each test
    restores what it deletes."""
    outputs = tmp_path_factory.mktemp("tracked") / "outputs"
    before = os.environ.get("MLFLOW_TRACKING_URI")
    run = stopped_run(outputs / "runs" / "tracked", "logger=mlflow", f"paths.root={outputs}")
    mlflow.set_tracking_uri(before)  # Lightning's MLFlowLogger sets it for the whole process and its environment
    client = MlflowClient(tracking.local_store(outputs)[0])
    return outputs, run, client, json.loads((run / "mlflow_run.json").read_text())["run_id"]


def prepared(run: Path, *extra: str) -> None:
    """tracking.prepare of the config `resume=RUN *extra` resumes with (what train.build does before the logger)."""
    overrides = [f"resume={run}", TRUSTED, *extra]
    config, _ = resume_config(compose_train(overrides, output_dir=run), overrides)
    tracking.prepare(config)


def restore_command(message: str) -> str:
    return re.search(r'python -c "([^"]+)"', message).group(1)


def test_resuming_a_run_whose_mlflow_run_was_deleted_says_how_to_restore_it(tracked, tmp_path):
    outputs, run, client, run_id = tracked
    client.delete_run(run_id)
    experiment = client.get_run(run_id).info.experiment_id
    before, runs = files(run), len(client.search_runs([experiment], run_view_type=ViewType.ALL))
    try:
        refused = run_script("train.py", f"resume={run}", TRUSTED, env=ENV)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
        line = refused.stderr.strip().splitlines()[-1]
        assert f"names MLflow run {run_id}, which was deleted from" in line
        assert f"restore_run('{run_id}')" in line and f"or delete {run / 'mlflow_run.json'}" in line
        assert files(run) == before  # nothing written, and no other MLflow run made
        assert len(client.search_runs([experiment], run_view_type=ViewType.ALL)) == runs

        copy = tmp_path / "copy"  # the other way out: without its record, the run logs to a new MLflow run
        shutil.copytree(run, copy)
        with pytest.raises(UserError, match="which was deleted from"):
            prepared(copy, f"paths.root={outputs}")
        (copy / "mlflow_run.json").unlink()
        prepared(copy, f"paths.root={outputs}")

        subprocess.run([sys.executable, "-c", restore_command(line)], check=True)  # the command it gives
        assert client.get_run(run_id).info.lifecycle_stage == "active"
        prepared(run)
    finally:
        client.restore_run(run_id)


def test_a_deleted_experiment_is_one_line_for_a_resumed_and_a_new_run(tracked):
    outputs, run, client, run_id = tracked
    experiment = client.get_run(run_id).info.experiment_id
    client.delete_experiment(experiment)
    try:
        with pytest.raises(UserError, match=re.escape(f"its experiment {experiment} was deleted")) as resumed:
            prepared(run)
        new = compose_train([*FAST, "data=synthetic", "logger=mlflow", f"paths.root={outputs}"], outputs / "new")
        with pytest.raises(UserError, match="MLflow experiment 'cifar-lightning' was deleted from") as started:
            tracking.prepare(new)
        assert f"restore_experiment('{experiment}')" in str(started.value)
        subprocess.run([sys.executable, "-c", restore_command(str(resumed.value))], check=True)
        prepared(run)  # the experiment and its runs are back
        tracking.prepare(new)
    finally:
        if client.get_experiment(experiment).lifecycle_stage == "deleted":
            client.restore_experiment(experiment)


def test_an_mlflow_run_id_of_a_deleted_run_is_one_line(tracked):
    outputs, run, client, run_id = tracked
    client.delete_run(run_id)
    try:
        with pytest.raises(UserError, match=f"mlflow:{run_id}: that MLflow run was deleted") as refused:
            resolve(f"mlflow:{run_id}", outputs)
        assert f"restore_run('{run_id}')" in str(refused.value) and f"pass its run folder {run}" in str(refused.value)
        result = run_script("train.py", f"resume=mlflow:{run_id}", f"paths.root={outputs}")
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
        assert "that MLflow run was deleted" in result.stderr.strip().splitlines()[-1]
        assert [p.name for p in (outputs / "runs").iterdir()] == ["tracked"]  # no new folder left behind
    finally:
        client.restore_run(run_id)
