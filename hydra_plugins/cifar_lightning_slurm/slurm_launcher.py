"""hydra/launcher=slurm: Hydra's submitit launcher for Slurm, refusing in one line a cluster that is not there.

Without a cluster, submitit would fail on its first `sbatch` with a traceback; this launcher asks the controller
first (`scontrol ping`, before any job is submitted; a refused sweep leaves no folder), and turns sbatch's refusal
of the request (a partition that does not exist, more CPUs, memory or GPUs than a node has) into one line as well.
Hydra instantiates launchers only from the hydra_plugins package, hence this module's place.
"""

import contextlib
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from hydra.core.utils import JobReturn
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from cifar_lightning.blocks.errors import UserError

START = "start this machine's one-node cluster with `make slurm-up` (as root), or run the sweep where a cluster is"


def check_cluster() -> None:
    """Returns if a Slurm controller answers here (`scontrol ping`, which reads slurm.conf as sbatch does).

    Raises:
        UserError: sbatch or scontrol is not installed, or the controller does not answer within 60 s; the message
            says how to start one.
    """
    if shutil.which("sbatch") is None or shutil.which("scontrol") is None:
        raise UserError(f"hydra/launcher=slurm: Slurm is not installed here (no sbatch): {START}")
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        ping = subprocess.CompletedProcess(["scontrol", "ping"], 1, "", "no answer within 60 s")
    if ping.returncode != 0:
        answer = (ping.stdout + ping.stderr).strip().split("\n")[0] or f"exit code {ping.returncode}"
        raise UserError(f"hydra/launcher=slurm: the Slurm controller does not answer ({answer}): {START}")


try:
    from hydra_plugins.hydra_submitit_launcher import submitit_launcher
    from submitit.core.utils import FailedJobError
except ImportError:  # without .[cluster] there is nothing to extend (and Hydra imports every plugin module)
    pass
else:

    class SlurmLauncher(submitit_launcher.SlurmLauncher):
        """submitit's SlurmLauncher (hydra-submitit-launcher) with the cluster checked before the sweep starts."""

        def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
            """Hydra's set-up of the launcher, after check_cluster(): its UserError ends the sweep in one line
            (cifar_lightning.tasks.cli.run prints it)."""
            try:
                check_cluster()
            except UserError:
                with contextlib.suppress(OSError):  # the sweep's folder, claimed as Hydra composed, if still empty
                    Path(str(config.hydra.sweep.dir)).rmdir()
                raise
            super().setup(hydra_context=hydra_context, task_function=task_function, config=config)

        def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
            """Submits the jobs as one Slurm job array and waits for their results (submitit). A request that
            sbatch refuses ends in one line naming sbatch's reason (submitit prints sbatch's message just before)."""
            try:
                return super().launch(job_overrides, initial_job_idx)
            except FailedJobError as e:
                cause = e.__cause__  # submitit raises it from sbatch's CalledProcessError
                if not (isinstance(cause, subprocess.CalledProcessError) and cause.cmd[0] == "sbatch"):
                    raise
                lines = [line.split("error:", 1)[-1].strip() for line in str(e).splitlines() if "error:" in line]
                reason = "; ".join(lines) or str(e).strip()
                raise UserError(
                    f"sbatch refused the jobs ({reason}): fit hydra.launcher.partition, cpus_per_task, mem_gb and "
                    "gpus_per_node to the cluster (sinfo -o '%P %c %m %G' lists what each partition's nodes have)"
                ) from None
