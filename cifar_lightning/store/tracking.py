"""MLflow tracking (`logger=mlflow`): one MLflow run per training run, in a local SQLite store by default.

The run folder records which MLflow run it logs to (mlflow_run.json): a resumed run goes on logging to the same
one, and evaluate.py attaches its files to it. The other way, `ckpt=mlflow:RUN_ID` and `resume=mlflow:RUN_ID`
find the run folder of an MLflow run by its run_dir tag (run_folder).
"""

import contextlib
import fcntl
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import Logger, MLFlowLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from cifar_lightning.blocks.errors import UserError, first_line
from cifar_lightning.blocks.paths import user_path
from cifar_lightning.store.runs import write_atomic

log = logging.getLogger(__name__)
RECORD = "mlflow_run.json"
PREFIX = "mlflow:"  # ckpt=mlflow:RUN_ID, resume=mlflow:RUN_ID
PROJECT = Path(__file__).resolve().parents[2]


def local_store(root: Path) -> tuple[str, str]:
    """The tracking URI and artifact folder of the store under a runs root: <root>/mlflow.db, <root>/mlruns/."""
    root = user_path(root).resolve()
    return f"sqlite:///{root / 'mlflow.db'}", str(root / "mlruns")


def prepare(cfg: DictConfig) -> None:
    """Completes an MLflow logger's config before it is built: the local store when no tracking URI is given,
    the run folder's name as run name, the run's tags, and for a resumed run the MLflow run it logged to."""
    config = (cfg.get("logger") or {}).get("mlflow")
    if config is None:
        return
    out = Path(cfg.paths.output_dir)
    with open_dict(config):
        if config.get("tracking_uri") is None:
            config.tracking_uri, config.artifact_location = local_store(Path(cfg.paths.root))
        config.run_name = config.get("run_name") or out.name
        config.tags = {**(config.get("tags") or {}), **tags(cfg)}
        recorded = read_record(out)
        if recorded and recorded["tracking_uri"] == config.tracking_uri:
            config.run_id = recorded["run_id"]
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise UserError("logger=mlflow needs MLflow: pip install -e '.[track]'") from None
    # the logger's constructor opens the store, which creates a new SQLite store's tables: done here, once
    with _serialised(config.tracking_uri):
        client = MlflowClient(config.tracking_uri)
        experiment = client.get_experiment_by_name(config.experiment_name)
        if experiment is None:
            client.create_experiment(config.experiment_name, artifact_location=config.get("artifact_location"))
        elif experiment.lifecycle_stage == "deleted" and not config.get("run_id"):
            raise UserError(
                f"MLflow experiment {config.experiment_name!r} was deleted from {config.tracking_uri}: "
                f"{restoring(config.tracking_uri, 'experiment', experiment.experiment_id)}, or log to another with "
                f"logger.mlflow.experiment_name=NAME"
            )
        if config.get("run_id"):  # from the run folder's record, which may be stale or crafted
            check_recorded_run(client, config.tracking_uri, config.run_id, out)


def check_recorded_run(client: Any, tracking_uri: str, run_id: str, out: Path) -> None:
    """Raises UserError (one line) unless the MLflow run that run folder `out` records is in the store and not
    deleted (a deleted run refuses every value logged to it)."""
    try:
        run = client.get_run(run_id)
    except Exception:
        raise UserError(
            f"{out / RECORD} names MLflow run {run_id!r}, which {tracking_uri} does not hold: "
            f"delete that file to log the resumed run as a new MLflow run"
        ) from None
    if run.info.lifecycle_stage == "deleted":
        raise UserError(
            f"{out / RECORD} names MLflow run {run_id}, which was deleted from {tracking_uri}: "
            f"{restoring_run(client, tracking_uri, run)}, or delete {out / RECORD} to log the resumed run as a new "
            f"MLflow run"
        )


def restoring(tracking_uri: str, what: str, id: str) -> str:
    """How to restore a deleted MLflow run or experiment (`what`): possible until `mlflow gc` removes it for good."""
    return (
        f'restore it (until mlflow gc removes it) with python -c "from mlflow import MlflowClient; '
        f"MlflowClient('{tracking_uri}').restore_{what}('{id}')\""
    )


def restoring_run(client: Any, tracking_uri: str, run: Any) -> str:
    """restoring() of a deleted MLflow run: of its experiment when that was deleted with it (restoring it restores
    its runs; the run alone would stay in a deleted experiment)."""
    experiment_id = run.info.experiment_id
    if client.get_experiment(experiment_id).lifecycle_stage == "deleted":
        return f"its experiment {experiment_id} was deleted: {restoring(tracking_uri, 'experiment', experiment_id)}"
    return restoring(tracking_uri, "run", run.info.run_id)


def git_commit() -> str:
    """The project's git commit, or "unknown" outside a git checkout."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() or "unknown"


def tags(cfg: DictConfig) -> dict[str, str]:
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    return {
        "experiment": str(choices.get("experiment") or "none"),
        "seed": str(cfg.seed),
        "git_commit": git_commit(),
        "run_dir": str(Path(cfg.paths.output_dir).resolve()),
    }


@contextlib.contextmanager
def _serialised(tracking_uri: str) -> Iterator[None]:
    """Several processes (a parallel sweep) creating a SQLite store's schema or experiment at once race: one
    process at a time, under a lock file beside the database."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    database = Path(tracking_uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_suffix(".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def start(loggers: list[Logger], cfg: DictConfig) -> None:
    """Creates the MLflow experiment and run now (one process at a time), logs the composed config as params
    (config/<key>) and records the run in the run folder."""
    for logger in loggers:
        if not isinstance(logger, MLFlowLogger):
            continue
        tracking_uri = cfg.logger.mlflow.tracking_uri
        with _serialised(tracking_uri):
            _ = logger.experiment  # the property creates the experiment and the run
        logger.log_hyperparams({"config": OmegaConf.to_container(cfg, resolve=True)})
        record = {"tracking_uri": tracking_uri, "run_id": logger.run_id}
        write_atomic(Path(cfg.paths.output_dir) / RECORD, json.dumps(record, indent=2) + "\n")


def finish(loggers: list[Logger], summary: dict, summary_path: Path) -> None:
    """The run's summary as MLflow metrics (summary/<key>) and summary.json as an artifact."""
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            values = {f"summary/{k}": v for k, v in summary.items() if isinstance(v, (int, float)) and v is not None}
            logger.log_metrics(values)
            logger.experiment.log_artifact(logger.run_id, str(summary_path))


def read_record(run_dir: Path) -> dict | None:
    """mlflow_run.json of a run folder if it holds two strings, else None (it may come from anywhere)."""
    try:
        record = json.loads((run_dir / RECORD).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("tracking_uri", "run_id")):
        return None
    return record


def owned_record(run_dir: Path) -> dict | None:
    """read_record(run_dir) if it names a store the user owns, where the project writes (evaluation files, a
    registered model): the local store of a folder that holds this run, or $MLFLOW_TRACKING_URI. Else None."""
    record = read_record(run_dir)
    owned = {local_store(parent)[0] for parent in run_dir.resolve().parents} | {os.environ.get("MLFLOW_TRACKING_URI")}
    return record if record is not None and record["tracking_uri"] in owned else None


def attach(run_dir: Path, folder: Path) -> str | None:
    """Logs `folder`'s files as artifacts eval/<folder name>/ of the run's MLflow run. Only to a store the user
    owns: the local store of a folder that holds this run, or $MLFLOW_TRACKING_URI; a record naming any other
    store is ignored. Returns where they went, or None."""
    if read_record(run_dir) is None:
        return None
    record = owned_record(run_dir)
    if record is None:
        log.warning("%s names an MLflow store outside this run's folders: evaluation not attached", run_dir / RECORD)
        return None
    try:
        from mlflow import MlflowClient
    except ImportError:
        log.warning("the run was tracked with MLflow, which is not installed here: evaluation not attached")
        return None
    try:
        MlflowClient(record["tracking_uri"]).log_artifacts(record["run_id"], str(folder), f"eval/{folder.name}")
    except Exception as e:  # a run deleted from the store, a server gone: the evaluation itself is written
        log.warning("evaluation not attached to MLflow run %s: %s", record["run_id"], first_line(e))
        return None
    return f"MLflow run {record['run_id']} ({record['tracking_uri']})"


def lookup_stores(root: Path) -> list[str]:
    """Where `mlflow:RUN_ID` is looked up, in this order: the local store under the runs root (<root>/mlflow.db,
    where logger=mlflow logs unless logger.mlflow.tracking_uri says otherwise), then $MLFLOW_TRACKING_URI when set
    (a server, or a store of one's own). A SQLite store whose file does not exist is left out: opening it would
    create it."""
    stores: list[str] = []
    for uri in (local_store(root)[0], os.environ.get("MLFLOW_TRACKING_URI")):
        if not uri or uri in stores:
            continue
        if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
            continue
        stores.append(uri)
    return stores


def run_folder(run_id: str, root: Path) -> Path:
    """The run folder of MLflow run `run_id`: the folder its run_dir tag names, the run found in the first of
    lookup_stores(root) that holds it. The tag comes from a database, so the folder must exist and record that
    same run in its mlflow_run.json (what logger=mlflow writes there); its checkpoints are then checked like any
    other (checkpoints.load_checkpoint). Raises UserError, one line each: MLflow not installed, no store, an
    unknown run id, a run without a run_dir tag, a folder that is gone or is not that run's."""
    try:
        from mlflow import MlflowClient
    except ImportError:
        raise UserError(f"{PREFIX}{run_id} needs MLflow: pip install -e '.[track]'") from None
    stores = lookup_stores(root)
    if not stores:
        raise UserError(
            f"{PREFIX}{run_id}: there is no MLflow store at {local_store(root)[0].removeprefix('sqlite:///')} "
            f"(where logger=mlflow logs runs under this runs root) and MLFLOW_TRACKING_URI is not set: set the "
            f"runs root (outputs=, paths.root=) or MLFLOW_TRACKING_URI to the store that holds the run"
        )
    run, why, client = None, "", None
    for uri in stores:
        try:
            client = MlflowClient(uri)
            run = client.get_run(run_id)
            break
        except Exception as e:  # MlflowException for an unknown id; a server that does not answer raises others
            why = first_line(e)[:200]
    if run is None:
        raise UserError(f"{PREFIX}{run_id}: no such MLflow run in {' or '.join(stores)} ({why}): check the run id")
    tag = run.data.tags.get("run_dir")
    if run.info.lifecycle_stage == "deleted":
        raise UserError(
            f"{PREFIX}{run_id}: that MLflow run was deleted from {uri}: {restoring_run(client, uri, run)}, or pass "
            f"its run folder{' ' + tag if tag else ''} instead"
        )
    if not tag:
        raise UserError(
            f"{PREFIX}{run_id}: that MLflow run has no run_dir tag, so its run folder is unknown (train.py "
            f"logger=mlflow tags its runs): pass the run folder or a .ckpt file instead"
        )
    folder = Path(tag)
    if not (folder.is_absolute() and folder.is_dir()):
        raise UserError(
            f"{PREFIX}{run_id}: its run folder {tag} is gone (moved or deleted): pass the folder's new place instead"
        )
    record = read_record(folder)
    if record is None or record["run_id"] != run_id:
        raise UserError(
            f"{PREFIX}{run_id}: {folder} is not that MLflow run's folder (its {RECORD} names "
            f"{'no run' if record is None else 'run ' + record['run_id']}): pass the run folder instead"
        )
    return folder
