"""Finding a run: `ckpt=` and `resume=` as a user names them (best, last, latest, a folder, a .ckpt file,
mlflow:RUN_ID), and the resolvers through which Hydra chooses a run's folder (configs/hydra/default.yaml)."""

import time
from pathlib import Path

from omegaconf import OmegaConf

from cifar_lightning.blocks.errors import UserError
from cifar_lightning.blocks.paths import user_path
from cifar_lightning.store import tracking
from cifar_lightning.store.runs import STAMP, RunFolder, claim, resume_command


def newest(outputs: Path, name: str, idle: bool = False) -> RunFolder | None:
    """The run under `outputs` that started last among those holding checkpoints/<name>.ckpt (and, if `idle`, not
    being trained by a live process: RunFolder.trained_by)."""
    runs = [RunFolder(p.parent.parent) for p in Path(outputs).glob(f"**/checkpoints/{name}.ckpt")]
    runs = [run for run in runs if not (idle and run.trained_by())]
    return max(runs, key=lambda run: (run.started, str(run.path)), default=None)


def named(value: str, outputs: Path) -> Path:
    """A run folder or checkpoint as ckpt= or resume= names it: a path (as user_path reads it), or mlflow:RUN_ID,
    the folder of that MLflow run in the store of the runs root `outputs` (tracking.run_folder, which raises
    UserError when it has none)."""
    if value.startswith(tracking.PREFIX):
        return tracking.run_folder(value.removeprefix(tracking.PREFIX), user_path(outputs))
    return user_path(value)


def resolve(ckpt: str, outputs: Path) -> Path:
    """ckpt= -> a checkpoint file: best / last of the newest run under `outputs`, a .ckpt file, or a run folder
    (its best, else its last) given as a path or as mlflow:RUN_ID. Raises UserError saying what to pass when there
    is none."""
    if ckpt in ("best", "last"):
        outputs = user_path(outputs)
        run = newest(outputs, ckpt)
        if run is None:
            raise UserError(
                f"no training runs with a {ckpt}.ckpt under {outputs}/: train one first (python train.py), "
                f"or pass ckpt=PATH"
            )
        return run.checkpoint(ckpt)
    path = named(ckpt, outputs)
    if path.is_dir():
        run = RunFolder(path)
        for candidate in (run.checkpoint("best"), path / "best.ckpt", run.checkpoint("last")):
            if candidate.is_file():
                return candidate
        if (path / ".hydra").is_dir():  # a run stopped before its first epoch ended
            raise UserError(f"{path} holds no checkpoint yet (stopped in its first epoch): train it again")
        raise UserError(f"{path} holds no checkpoints/best.ckpt or last.ckpt: is it a run folder?")
    if not path.is_file():
        raise UserError(
            f"checkpoint {path} does not exist: use ckpt=best, ckpt=last, a .ckpt file, a run folder, a sweep folder "
            "or ckpt=mlflow:RUN_ID"
        )
    return path


def is_run_folder(path: Path) -> bool:
    """Whether a folder is one run's (resolve finds its checkpoint) rather than a sweep's or another folder."""
    return (path / ".hydra").is_dir() or (path / "checkpoints").is_dir() or (path / "best.ckpt").is_file()


def checkpoints_of(value: str) -> tuple[list[Path], str]:
    """The checkpoints one value names, and a note of the jobs left out ("" for none): a run folder's best (else
    last) checkpoint, a .ckpt file, or the best checkpoints of a sweep's finished, unpruned jobs (sorted); pruned
    jobs stopped early, unfinished ones (no summary.json) are counted with the command that finishes them.

    Raises:
        UserError: it does not exist, is no run and no sweep, or is a sweep with no finished job."""
    path = user_path(value)
    if path.is_file() or is_run_folder(path):
        return [resolve(str(path), Path("outputs"))], ""
    if not path.is_dir():
        raise UserError(f"{path} does not exist: give a run folder, a sweep folder or a .ckpt file")
    # a sweep's jobs are its subfolders (<sweep>/<job>): not every run below a folder (ckpt=outputs)
    finished = [RunFolder(s.parent) for s in sorted(path.glob("*/summary.json"))]
    jobs = [run for run in finished if not run.summary_values().get("pruned")]
    unfinished = [RunFolder(job.parent) for job in path.glob("*/.hydra") if not (job.parent / "summary.json").exists()]
    training = sum(bool(run.trained_by()) for run in unfinished)
    counts = {
        "pruned (stopped early)": len(finished) - len(jobs),
        "still training": training,
        f"unfinished ({resume_command(path, sweep=True)} finishes them)": len(unfinished) - training,
    }
    note = ", ".join(f"{n} {what}" for what, n in counts.items() if n)
    if jobs:
        return [resolve(str(run.path), Path("outputs")) for run in jobs], note and f"{path}: {note} left out"
    if finished:
        others = "".join(f"; {n} {what}" for what, n in list(counts.items())[1:] if n)  # all but the pruned
        raise UserError(f"{path} holds only pruned jobs (stopped early): nothing finished to use{others}")
    if (path / "multirun.yaml").is_file() or unfinished:
        raise UserError(
            f"{path} is a sweep with no finished job (none has summary.json): let it finish or resume it: "
            f"{resume_command(path, sweep=True)}"
        )
    raise UserError(
        f"{path} is no run folder (.hydra/, checkpoints/) and no sweep folder (jobs with summary.json): give one of "
        "those or a .ckpt file"
    )


def is_group(ckpt: object) -> bool:
    """Whether ckpt= (plain values) names several runs, an ensemble: a list, or a folder that is no run folder (a
    sweep's, or none: checkpoints_of says why)."""
    if isinstance(ckpt, (list, tuple)):
        return True
    if not isinstance(ckpt, str) or ckpt in ("best", "last") or ckpt.startswith(tracking.PREFIX):
        return False
    path = user_path(ckpt)
    return path.is_dir() and not is_run_folder(path)


def group_checkpoints(ckpt: str | list[str]) -> tuple[list[Path], list[str]]:
    """The checkpoints of an ensemble's ckpt= (a sweep folder, or a list of runs, sweeps or .ckpt files), each once,
    and the notes of jobs left out (checkpoints_of).

    Raises:
        UserError: as checkpoints_of, for an empty list, or for a checkpoint named twice."""
    values = [ckpt] if isinstance(ckpt, str) else list(ckpt)
    if not values:
        raise UserError("ckpt=[] names no run: list the runs of the ensemble, e.g. ckpt=[RUN1,RUN2]")
    checkpoints: list[Path] = []
    notes = []
    for value in values:
        found, left_out = checkpoints_of(str(value))
        notes += [left_out] if left_out else []
        for checkpoint in found:
            if any(checkpoint.resolve() == c.resolve() for c in checkpoints):
                raise UserError(f"ckpt= names {checkpoint} twice: each run counts once in an ensemble")
            checkpoints.append(checkpoint)
    return checkpoints, notes


def register_resolvers() -> None:
    """Hydra's run folder is chosen through these (configs/hydra/default.yaml): each new one claimed on disk, a
    resumed run's own, and the resuming call's config beside the original. Cached, so a folder is chosen once
    per run (Hydra copies the cache into every job of a sweep)."""
    OmegaConf.register_new_resolver(
        "new_dir", lambda parent: str(claim(user_path(parent)).path), replace=True, use_cache=True
    )
    OmegaConf.register_new_resolver("run_dir", run_dir, replace=True, use_cache=True)
    OmegaConf.register_new_resolver("config_subdir", config_subdir, replace=True)


def to_resume(resume: str | None, outputs: str) -> RunFolder | None:
    """resume=RUN (a folder or mlflow:RUN_ID): RUN, if it holds a last.ckpt; resume=latest: the newest run with a
    last.ckpt under `outputs`. Never a run that a live process is training (RunFolder.trained_by): Hydra would
    write into its folder, and the resumed run train over it."""
    if resume == "latest":
        return newest(user_path(outputs), "last", idle=True)
    if not resume:
        return None
    try:
        run = RunFolder(named(resume, Path(outputs)))
    except UserError:  # resume_config says why, once Hydra has started
        return None
    return run if run.checkpoint("last").is_file() and not run.trained_by() else None


LAYOUT = " (a run folder holds .hydra/ and checkpoints/)"


def nothing_to_resume(resume: str, outputs: Path) -> str:
    """Why to_resume(resume, outputs) found no run. Raises UserError of `named` for an unknown mlflow:RUN_ID."""
    if resume == "latest":
        live = newest(outputs, "last")
        holder = live.trained_by() if live else None
        if live and holder:  # then every run with a last.ckpt is live (to_resume found no idle one)
            return (
                f"every run under {outputs}/ with a checkpoints/last.ckpt is being trained now (the newest, "
                f"{live.path}, by {holder}): a run is resumed once its process has ended"
            )
        return f"no run under {outputs}/ has a checkpoints/last.ckpt, so there is nothing to resume{LAYOUT}"
    run = RunFolder(named(resume, outputs))
    if run.path.is_file():
        folder = RunFolder.of_checkpoint(run.path)
        hint = f": resume={folder.path}" if folder.checkpoint("last").is_file() else ""
        return f"that is a file, and resume= takes a run folder, which continues from its checkpoints/last.ckpt{hint}"
    holder = run.trained_by()
    if holder:
        return (
            f"{run.path} is being trained by {holder}: a run is resumed once its process has ended "
            f"(wait for it, or stop it first)"
        )
    return f"{run.checkpoint('last')} does not exist, so there is nothing to resume{LAYOUT}"


def run_dir(resume: str | None, outputs: str) -> str:
    """The run to resume, else a new folder under outputs/runs (where resume_config then finds nothing to resume,
    rather than Hydra making a folder wherever resume= pointed)."""
    run = to_resume(resume, outputs)
    return str(run.path) if run else str(claim(user_path(outputs) / "runs").path)


def config_subdir(resume: str | None, outputs: str = "outputs") -> str | None:
    """.hydra for a new run; .hydra/resume_<time> beside it for a resuming call; none for a finished run, which
    a resume leaves as it is."""
    if not resume:
        return ".hydra"
    run = to_resume(resume, outputs)
    return None if run is not None and run.finished else f".hydra/resume_{time.strftime(STAMP)}"
