"""hydra/launcher=slurm on a real Slurm cluster (`make slurm-up`: one node on this machine): a sweep as a job array,
DDP over two Slurm tasks, and the one-line refusals when there is no cluster or sbatch refuses the request."""

import json
import os
import shutil
import subprocess
import time

import pytest
import torch
import yaml
from conftest import HELPERS_ENV, run_script
from test_launchers import TINY


def cluster_answers() -> bool:
    """A Slurm controller answers here and has a node that responds and takes jobs."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return False
    try:
        states = subprocess.run(["sinfo", "-h", "-r", "-o", "%T"], capture_output=True, text=True, timeout=30).stdout
    except subprocess.TimeoutExpired:
        return False
    return any(state.strip() in ("idle", "mixed", "allocated") for state in states.splitlines())


needs_cluster = pytest.mark.skipif(
    not cluster_answers(), reason="no Slurm cluster answers here (sinfo): start one with `make slurm-up` (as root)"
)
# what a job may ask of the node `make slurm-up` configures (the config's defaults are for GPU clusters)
FITS = [
    "hydra/launcher=slurm",
    "hydra.launcher.partition=debug",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.timeout_min=10",
]


def sacct(job_id: str, jobs: int, steps: bool = False) -> list[dict[str, str]]:
    """sacct's rows of a Slurm job (with its steps if asked), once `jobs` of its allocations are accounted for:
    slurmctld sends a finished job to the accounting database a moment after the job ends."""
    fields = ["JobID", "State", "ExitCode", "NTasks"]
    command = ["sacct", "-j", job_id, "-n", "-P", "-o", ",".join(fields), *([] if steps else ["-X"])]
    for _ in range(60):
        rows = [dict(zip(fields, line.split("|"))) for line in subprocess.check_output(command, text=True).split()]
        allocations = [r for r in rows if "." not in r["JobID"]]
        if len(allocations) == jobs and all(r["State"] not in ("PENDING", "RUNNING") for r in allocations):
            return rows
        time.sleep(1)
    return rows


def job_id(sweep) -> str:
    """The Slurm job (array) id of a sweep, from submitit's folders <id>_<task>/ or <id>/."""
    return min(p.name for p in (sweep / ".submitit").iterdir() if p.is_dir()).split("_")[0]


@pytest.mark.cluster
@pytest.mark.slow
@needs_cluster
def test_a_sweep_runs_as_a_slurm_job_array_to_the_end(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_script(
        "train.py",
        "-m",
        *FITS,
        "seed=1,2,3",
        *TINY,
        "data.val_size=200",
        f"paths.root={tmp_path}",
        f"hydra.sweep.dir={sweep}",
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if (p / "summary.json").is_file())
    assert jobs == ["0", "1", "2"]
    assert {yaml.safe_load((sweep / j / ".hydra" / "config.yaml").read_text())["seed"] for j in jobs} == {1, 2, 3}
    array = job_id(sweep)
    rows = sacct(array, jobs=3)
    assert sorted((r["JobID"], r["State"], r["ExitCode"]) for r in rows) == [
        (f"{array}_{i}", "COMPLETED", "0:0") for i in range(3)
    ]


@pytest.mark.cluster
@pytest.mark.slow
@needs_cluster
def test_one_job_trains_ddp_on_two_slurm_tasks_with_one_set_of_outputs(tmp_path):
    sweep, records = tmp_path / "sweep", tmp_path / "records"
    records.mkdir()
    result = run_script(
        "train.py",
        "-m",
        *FITS,
        "hydra.launcher.tasks_per_node=2",  # srun starts the two processes; Lightning must not start its own
        "trainer=ddp_cpu",
        "trainer.devices=2",
        "data=synthetic",
        *[o for o in TINY if not o.startswith("batch_size=")],
        "batch_size=50",
        "data.val_size=200",
        "+callbacks.record._target_=helpers.RecordProcess",
        f"+callbacks.record.dir={records}",
        f"paths.root={tmp_path}",
        f"hydra.sweep.dir={sweep}",
        env=HELPERS_ENV,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    processes = [json.loads((records / f"process_rank{r}.json").read_text()) for r in (0, 1)]
    job = job_id(sweep)
    for rank, process in enumerate(processes):
        assert process["cluster_environment"] == "SLURMEnvironment" and process["world_size"] == 2
        assert process["slurm_procid"] == str(rank) and process["slurm_job_id"] == job  # rank = Slurm's task
    assert processes[0]["pid"] != processes[1]["pid"]
    # one job, one run folder, one set of checkpoints and one summary, written by rank 0
    run = sweep / "0"
    assert sorted(p.name for p in sweep.iterdir() if not p.name.startswith(".")) == ["0", "multirun.yaml"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert json.loads((run / "summary.json").read_text())["hardware"]["devices"] == 2
    # each process trained on its half: 1,800 training images, 900 each in batches of 50, 18 steps in the epoch
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 18
    # Slurm's record: the job, and its step of two tasks (srun), completed
    rows = {r["JobID"]: r for r in sacct(job, jobs=1, steps=True)}
    assert rows[job]["State"] == "COMPLETED"
    assert rows[f"{job}.0"]["NTasks"] == "2" and rows[f"{job}.0"]["State"] == "COMPLETED"


@pytest.mark.cluster
@needs_cluster
def test_a_request_that_sbatch_refuses_ends_in_one_line(tmp_path):
    sweep = tmp_path / "sweep"
    # the config's defaults ask for a GPU, which the one-node cluster has not
    result = run_script(
        "train.py", "-m", "hydra/launcher=slurm", "seed=1,2", f"paths.root={tmp_path}", f"hydra.sweep.dir={sweep}"
    )
    assert result.returncode == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: sbatch refused the jobs (") and "hydra.launcher" in line, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not [p for p in sweep.iterdir() if p.name.isdigit()]  # no job ran


@pytest.mark.cluster
@needs_cluster
def test_a_job_refused_on_the_cluster_says_why_on_the_sweeps_console(tmp_path):
    # the job's own error line goes to its Slurm log; the sweep's console gets it too, last
    result = run_script("train.py", "-m", *FITS, "batch_size=0", f"paths.root={tmp_path}", timeout=600)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: batch_size=0 "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_a_sweep_without_slurm_ends_in_one_line_and_leaves_no_folder(tmp_path):
    env = {**os.environ, "PATH": str(tmp_path)}  # no sbatch on it
    result = run_script("train.py", "-m", "hydra/launcher=slurm", "seed=1,2", f"paths.root={tmp_path}", env=env)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: hydra/launcher=slurm: Slurm is not installed here (no sbatch): start this machine's one-node "
        "cluster with `make slurm-up` (as root), or run the sweep where a cluster is"
    ]
    assert not any(tmp_path.glob("multiruns/*"))  # the sweep's folder was not left behind


@pytest.mark.skipif(shutil.which("scontrol") is None, reason="Slurm's commands are not installed")
def test_a_sweep_whose_controller_does_not_answer_ends_in_one_line(tmp_path):
    # a cluster whose controller is down: a slurm.conf naming a port nothing listens on
    conf = tmp_path / "slurm.conf"
    conf.write_text(
        "ClusterName=gone\nSlurmctldHost=gone(127.0.0.1)\nSlurmctldPort=9\n"
        "NodeName=gone CPUs=1 State=UNKNOWN\nPartitionName=debug Nodes=gone\n"
    )
    env = {**os.environ, "SLURM_CONF": str(conf)}
    result = run_script("train.py", "-m", "hydra/launcher=slurm", "seed=1,2", f"paths.root={tmp_path}", env=env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: hydra/launcher=slurm: the Slurm controller does not answer")
    assert "make slurm-up" in lines[0]
    assert not any(tmp_path.glob("multiruns/*"))
