"""Runs started together, checkpoint writes that fail, run folders whose files were damaged or crafted."""

import os

import pytest
import torch
from conftest import FAST, compose_train, run_script, start_script
from conftest import HELPERS_ENV as ENV

from cifar_lightning.blocks.errors import UserError
from cifar_lightning.store.checkpoints import load_checkpoint
from cifar_lightning.store.runs import claim
from cifar_lightning.tasks.cli import compose_config
from cifar_lightning.tasks.evaluate import evaluate
from cifar_lightning.tasks.train import train_or_resume


def test_new_folders_claimed_in_the_same_second_are_distinct_and_sort_by_time(tmp_path):
    folders = [str(claim(tmp_path).path) for _ in range(20)]
    assert len(set(folders)) == 20 and all(os.path.isdir(f) for f in folders)
    stamps = {os.path.basename(f).rsplit("_", 1)[0] for f in folders}
    assert len(stamps) <= 2 and all(len(s) == len("2026-01-01_12-00-00") for s in stamps)


@pytest.mark.slow
def test_runs_and_sweeps_started_together_never_share_a_folder(tmp_path):
    quick = ["data=synthetic", *FAST, f"paths.root={tmp_path}"]
    processes = [start_script("train.py", *quick, f"seed={i}", env=ENV) for i in range(3)]
    processes += [start_script("train.py", "-m", *quick, "seed=1", env=ENV) for _ in range(2)]
    for process in processes:
        assert process.wait(timeout=600) == 0, process.stderr[-2000:]
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 3
    assert sorted(int(r.joinpath(".hydra", "config.yaml").read_text().split("seed: ")[1].split()[0]) for r in runs) == [
        0,
        1,
        2,
    ]  # each run's own config
    sweeps = sorted((tmp_path / "multiruns").iterdir())
    assert len(sweeps) == 2
    assert [sorted(p.name for p in sweep.iterdir() if p.is_dir()) for sweep in sweeps] == [["0"], ["0"]]
    for run in [*runs, *(sweep / "0" for sweep in sweeps)]:
        for name in ("best", "last"):
            assert load_checkpoint(run / "checkpoints" / f"{name}.ckpt")["epoch"] == 0
        assert (run / "summary.json").is_file() and len((run / "metrics.csv").read_text().splitlines()) >= 3


@pytest.mark.slow
def test_a_full_disk_stops_the_run_in_one_line_and_keeps_the_checkpoints_before(tmp_path):
    run = tmp_path / "run"
    result = run_script(
        "train.py",
        "data=synthetic",
        *FAST,
        "epochs=3",
        "+callbacks.disk._target_=helpers.DiskFullAfter",
        "+callbacks.disk.saves=2",
        f"hydra.run.dir={run}",
        env=ENV,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"error: could not write {run}/checkpoints/last.ckpt (No space left on device)")
    assert "resume=" in last_line
    for name in ("best", "last"):  # epoch 0's, whole
        assert load_checkpoint(run / "checkpoints" / f"{name}.ckpt")["epoch"] == 0
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


@pytest.fixture
def finished(synthetic_run):
    return synthetic_run


@pytest.mark.parametrize("damage", ["truncated", "garbage", "pickle that runs code"])
def test_resume_from_a_damaged_last_checkpoint_is_one_line(finished, tmp_path, damage):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    for record in ("config.yaml", "overrides.yaml"):
        (run / ".hydra" / record).write_bytes((finished / ".hydra" / record).read_bytes())
    last, marker = run / "checkpoints" / "last.ckpt", tmp_path / "marker"
    good = (finished / "checkpoints" / "last.ckpt").read_bytes()
    if damage == "truncated":
        last.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        last.write_text("not a checkpoint at all")
    else:

        class Payload:
            def __reduce__(self):
                return (os.system, (f"touch {marker}",))

        torch.save({**torch.load(finished / "checkpoints" / "last.ckpt", weights_only=True), "x": Payload()}, last)
    result = run_script("train.py", f"resume={run}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: cannot resume: {last} ") and "copy checkpoints/best.ckpt over it" in line
    assert not marker.exists()


@pytest.mark.parametrize(
    "data, message",
    [
        ({"_target_": "os.system", "command": "touch {marker}"}, "was refused: its data is not"),
        (
            {
                "_target_": "cifar_lightning.blocks.data.ImageDataModule",
                "source": "synthetic",
                "root": "${oc.env:HOME}",
            },
            "data.root='${oc.env:HOME}' is not a string",
        ),
        (
            {"_target_": "cifar_lightning.blocks.data.ImageDataModule", "source": "synthetic", "evil": "{marker}"},
            "takes no argument 'evil'",
        ),
        (
            {"_target_": "cifar_lightning.blocks.data.ImageDataModule", "source": "synthetic", "val_size": [1, 2]},
            "data.val_size=[1, 2] must be a whole number of images",
        ),
        ("just a string", "was refused: its data is not"),
        (  # a download would make its root and write the archive there
            {
                "_target_": "cifar_lightning.blocks.data.ImageDataModule",
                "source": "cifar10",
                "root": "{marker}",
                "download": True,
            },
            "cifar10 is not in",
        ),
    ],
)
def test_a_crafted_run_config_is_refused_before_anything_is_built(finished, tmp_path, data, message):
    import yaml

    run, marker = tmp_path / "run", tmp_path / "marker"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best.ckpt").write_bytes((finished / "checkpoints" / "best.ckpt").read_bytes())
    data = (
        {k: v.replace("{marker}", str(marker)) if isinstance(v, str) else v for k, v in data.items()}
        if isinstance(data, dict)
        else data
    )
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"data": data, "batch_size": 32}))
    with pytest.raises(UserError, match=message.replace("$", r"\$").replace("[", r"\[")):
        evaluate(compose_config("evaluate", [f"ckpt={run}"]))
    assert not marker.exists() and not (run / "eval").exists()


OUTSIDE = "would make the resumed run write outside its folder"


def crafted_for_resume(finished, tmp_path, *changes: str) -> tuple:
    """A copy of the finished run to resume (its last.ckpt), `changes` appended to its recorded overrides
    ("{marker}" in one standing for a path that must never be made); returns (run, marker)."""
    import yaml

    run, marker = tmp_path / "run", tmp_path / "marker"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes((finished / "checkpoints" / "last.ckpt").read_bytes())
    overrides = yaml.safe_load((finished / ".hydra" / "overrides.yaml").read_text())
    overrides += [change.replace("{marker}", str(marker)) for change in changes]
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    return run, marker


CRAFTED_OVERRIDES = [
    (  # a callback that would write a file: allowed on the command line, not from a run folder on disk
        ["+callbacks.x._target_=pathlib.Path.touch", "+callbacks.x.self={marker}"],
        "callbacks.x._target_='pathlib.Path.touch' is not one of the classes a resumed run may build",
    ),
    (["model._target_=os.system", "+model.command='touch {marker}'"], "is not one of the nets"),
    (["data.root=${oc.env:HOME}"], "data.root='${oc.env:HOME}' calls a resolver"),
    (["callbacks.model_checkpoint.dirpath=${new_dir:{marker}}"], "calls a resolver"),
    # plain values that would send the resumed run's files elsewhere
    (["callbacks.model_checkpoint.dirpath={marker}"], OUTSIDE),
    (["logger.csv.save_dir={marker}"], OUTSIDE),
    (["trainer.default_root_dir={marker}/.."], OUTSIDE),
    (["callbacks.last_checkpoint.filename=../../last"], OUTSIDE),
    (["logger.csv.name=../../elsewhere"], OUTSIDE),
    (["trainer.default_root_dir=null"], "would write into the working folder"),
    # a class imported into a module of ours, not defined there: torchvision's CIFAR10 downloads anywhere
    (
        ["data._target_=cifar_lightning.blocks.data.CIFAR10", "data.root={marker}", "++data.download=true"],
        "its data is not a cifar_lightning.blocks.data.ImageDataModule config",
    ),
    (
        ["+callbacks.x._target_=cifar_lightning.blocks.callbacks.FlopCounterMode"],
        "callbacks.x._target_='cifar_lightning.blocks.callbacks.FlopCounterMode' is not one of the classes",
    ),
    # a run of the layout before blocks/store/tasks
    (["model._target_=cifar_lightning.models.cnn.CNN"], "names a module of an earlier layout of this package"),
    (
        [
            "+logger.mlflow._target_=lightning.pytorch.loggers.MLFlowLogger",
            "+logger.mlflow.tracking_uri='sqlite:///{marker}'",
        ],
        OUTSIDE,
    ),
    # what the configs cannot compose is refused too, before anything is built
    (["model=no_such_net"], "model=no_such_net chooses 'no_such_net', which is not a config of configs/model"),
    (["experiment=../../../../x"], "chooses '../../../../x', which is not a config of configs/experiment"),
    (["not an override ["], "was refused: LexerNoViableAltException"),
    # what acts while Hydra composes: a search path imports a module, a group chosen by a resolver runs it
    (["hydra.searchpath=[pkg://this]"], "hydra.searchpath=[pkg://this] sets a key of Hydra's"),
    (["model=${new_dir:{marker}}"], "model='${new_dir:"),
    # as Hydra parses them: escaped braces, a resolver named by a key, a reference to Hydra's folders, all
    # resolved by a deletion (~) while Hydra composes
    (["model=$\\{new_dir:{marker}\\}"], "calls a resolver"),
    (["+extras.a=$\\{new_dir:{marker}\\}", "~extras.a"], "calls a resolver"),
    (["+extras.k=new_dir", "+extras.a='${${extras.k}:{marker}}'", "~extras.a"], "is an interpolation"),
    (["paths.root={marker}", "+extras.a=${hydra.sweep.dir}", "~extras.a"], "is an interpolation"),
    (["+model@hydra.job_logging=cnn"], "places a config elsewhere (@package)"),
    (["+x={a:1}"], "holds a mapping"),
    (["module=null"], "its module is not a config"),
    (
        ["+logger.x._target_=lightning.pytorch.loggers.MLFlowLogger", "+logger.x.experiment_name=e"],
        "logger.x is an MLflow logger; only logger.mlflow may be one",
    ),
    # the module builds its own copies of the groups: only references to the groups the gate checks
    (["module.net={_target_:pathlib.Path.touch,self:'{marker}'}"], "holds a mapping"),
    (["~module.net", "+module.net._target_=pathlib.Path.touch", "+module.net.self={marker}"], "module.net must be"),
    (["+optimizer.params=[{_target_:pathlib.Path.touch,self:'{marker}'}]"], "optimizer.params="),
]


@pytest.mark.parametrize("changes, message", CRAFTED_OVERRIDES)
def test_a_crafted_run_config_is_refused_on_resume_and_runs_nothing(finished, tmp_path, changes, message):
    """In this process, as train.py runs it (resume.resume_config and the gates), every variant."""
    run, marker = crafted_for_resume(finished, tmp_path, *changes)
    with pytest.raises(UserError) as refused:
        train_or_resume(compose_train([f"resume={run}"], output_dir=run), [f"resume={run}"])
    line = str(refused.value)
    assert line.startswith(f"{run / '.hydra' / 'overrides.yaml'} was refused") and message in line, line
    assert "\n" not in line and not marker.exists() and not (run / "summary.json").exists()


@pytest.mark.parametrize("changes, message", CRAFTED_OVERRIDES[::6])
def test_a_crafted_run_config_is_one_error_line_of_train_py(finished, tmp_path, changes, message):
    """Every sixth variant through the command line: exit code 1, one error line, nothing run."""
    run, marker = crafted_for_resume(finished, tmp_path, *changes)
    result = run_script("train.py", f"resume={run}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {run / '.hydra' / 'overrides.yaml'} was refused") and message in line, line
    assert not marker.exists() and not (run / "summary.json").exists()


@pytest.mark.parametrize(
    "record, message",
    [
        (None, "cannot be read (FileNotFoundError), so the run's config is unknown"),
        ("{epochs: 2}", "is not a list of overrides"),
        ("- 1\n- 2\n", "is not a list of overrides"),
        ("[unclosed", "cannot be read (ParserError)"),
        (b"\xff\xfe", "cannot be read (UnicodeDecodeError)"),
    ],
)
def test_a_missing_or_damaged_record_of_overrides_is_one_line_on_resume(finished, tmp_path, record, message):
    run, _ = crafted_for_resume(finished, tmp_path)
    overrides = run / ".hydra" / "overrides.yaml"
    if record is None:
        overrides.unlink()
    else:
        overrides.write_bytes(record if isinstance(record, bytes) else record.encode())
    result = run_script("train.py", f"resume={run}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line == f"error: {overrides} {message}" or line.startswith(f"error: {overrides} {message}"), line
    assert not (run / "summary.json").exists()


def test_a_resumed_run_reads_its_data_where_its_config_says_and_never_downloads_there(finished, tmp_path):
    run, marker = crafted_for_resume(
        finished, tmp_path, "data.source=cifar10", "data.root={marker}", "++data.download=true"
    )
    result = run_script("train.py", f"resume={run}")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: cifar10 is not in {marker}")
    assert not marker.exists()


def test_a_run_configs_own_paths_root_is_not_where_the_resume_writes(finished, tmp_path):
    """paths.root decides where MLflow's store goes: a resumed run takes the command's, not the folder's."""
    root = tmp_path / "root"
    run, marker = crafted_for_resume(finished, tmp_path, "paths.root={marker}", "logger=mlflow")
    result = run_script("train.py", f"resume={run}", f"paths.root={root}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (root / "mlflow.db").is_file() and not marker.exists() and (run / "summary.json").is_file()
