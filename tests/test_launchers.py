"""Sweeps beyond one process: submitit's local launcher (with MLflow tracking), the Slurm config, and two Optuna
workers sharing one study through an RDB storage."""

import optuna
import pytest
import yaml
from conftest import FAST, ROOT, run_script, start_script
from hydra import compose, initialize_config_dir
from mlflow import MlflowClient

pytestmark = pytest.mark.slow
TINY = [o for o in FAST if not o.startswith("data.val_size=")] + ["data=synthetic", "extras.print_config=false"]


def test_a_parallel_local_sweep_gives_one_folder_and_one_mlflow_run_per_job(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "hydra/launcher=submitit_local",
        "seed=1,2",  # a process each: every job a fresh interpreter
        *TINY,
        "data.val_size=200",
        "logger=mlflow",
        f"paths.root={tmp_path}",
        f"hydra.sweep.dir={sweep}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if (p / "summary.json").is_file())
    assert jobs == ["0", "1"]
    assert len(list((sweep / ".submitit").glob("*/*_result.pkl"))) == 2  # two processes, not one
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("cifar-lightning").experiment_id])
    assert sorted(r.data.tags["seed"] for r in runs) == ["1", "2"]
    assert {r.data.tags["run_dir"] for r in runs} == {str((sweep / j).resolve()) for j in jobs}


def test_slurm_launcher_config_has_the_cluster_fields():
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("train", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher") and launcher.partition == "gpu"
    assert launcher.gpus_per_node == 1 and launcher.timeout_min == 240 and launcher.array_parallelism == 16


def test_two_optuna_workers_share_one_study(tmp_path):
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="shared", storage=storage, direction="maximize")  # once, before the workers
    workers = [
        start_script(
            "train.py",
            "-m",
            "hparams_search=optuna",
            f"hydra.sweeper.storage={storage}",
            "hydra.sweeper.study_name=shared",
            "hydra.sweeper.n_trials=2",
            f"hydra.sweeper.sampler.seed={seed}",
            *TINY,
            "data.val_size=200",
            "optimized_metric=test_acc",
            f"paths.root={tmp_path}",
            f"hydra.sweep.dir={tmp_path / f'worker{seed}'}",
        )
        for seed in (1, 2)
    ]
    for worker in workers:
        assert worker.wait(timeout=300) == 0, worker.stderr[-3000:]
    trials = optuna.load_study(study_name="shared", storage=storage).trials
    assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # 2 + 2, numbered once across both
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert all(list(t.intermediate_values) == [0] for t in trials)  # each job reported its epoch to its own trial
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4  # each worker's own seed: no repeats
    # the value each trial reports is the optimized_metric of its run
    for worker in ("worker1", "worker2"):
        for job in (tmp_path / worker).glob("[0-9]*"):
            summary = yaml.safe_load((job / "summary.json").read_text())
            assert any(t.value == pytest.approx(summary["test_acc"]) for t in trials)
