"""MLflow tracking (`logger=mlflow`): one MLflow run per training run, in a local SQLite store by default.

The run folder records which MLflow run it logs to (mlflow_run.json): a resumed run goes on logging to the same
one, and evaluate.py attaches its files to it.
"""

import contextlib
import fcntl
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from lightning.pytorch.loggers import Logger, MLFlowLogger
from omegaconf import DictConfig, OmegaConf, open_dict

from cifar_lightning.errors import UserError
from cifar_lightning.runs import write_atomic

log = logging.getLogger(__name__)
RECORD = "mlflow_run.json"
PROJECT = Path(__file__).resolve().parents[1]


def local_store(root: Path) -> tuple[str, str]:
    """The tracking URI and artifact folder of the store under a runs root: <root>/mlflow.db, <root>/mlruns/."""
    root = root.resolve()
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
        if client.get_experiment_by_name(config.experiment_name) is None:
            client.create_experiment(config.experiment_name, artifact_location=config.get("artifact_location"))
        if config.get("run_id"):  # from the run folder's record, which may be stale or crafted
            try:
                client.get_run(config.run_id)
            except Exception:
                raise UserError(
                    f"{out / RECORD} names MLflow run {config.run_id!r}, which {config.tracking_uri} does not hold: "
                    f"delete that file to log the resumed run as a new MLflow run"
                ) from None


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


def attach(run_dir: Path, folder: Path) -> str | None:
    """Logs `folder`'s files as artifacts eval/<folder name>/ of the run's MLflow run. Only to a store the user
    owns: the local store of a folder that holds this run, or $MLFLOW_TRACKING_URI; a record naming any other
    store is ignored. Returns where they went, or None."""
    record = read_record(run_dir)
    if record is None:
        return None
    owned = {local_store(parent)[0] for parent in run_dir.resolve().parents} | {os.environ.get("MLFLOW_TRACKING_URI")}
    if record["tracking_uri"] not in owned:
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
        log.warning("evaluation not attached to MLflow run %s: %s", record["run_id"], str(e).splitlines()[0])
        return None
    return f"MLflow run {record['run_id']} ({record['tracking_uri']})"
