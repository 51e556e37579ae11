"""One training run from a composed config: check, data, module, trainer, fit, calibrate, test, summary."""

import contextlib
import json
import logging
import math
import platform
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, Timer
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from cifar_lightning.blocks.calibration import fit_on_validation
from cifar_lightning.blocks.callbacks import CountTrainingFlops, KeepRandomState, StopAtMaxSteps
from cifar_lightning.blocks.data import ImageDataModule
from cifar_lightning.blocks.module import ImageClassifier
from cifar_lightning.blocks.pruning import OptunaPruning
from cifar_lightning.store import tracking
from cifar_lightning.store.checkpoints import BestCheckpoint, read_weights, write_temperature
from cifar_lightning.store.runs import RunFolder
from cifar_lightning.store.trust import RECORDED_DATA
from cifar_lightning.tasks.cli import config_tree
from cifar_lightning.tasks.resume import check_resumable, read_last, resume_config
from cifar_lightning.tasks.schema import TrainOptions, check_reportable, check_train_config, refused, run_length

log = logging.getLogger(__name__)


def instantiate_all(configs: DictConfig | dict | None) -> list:
    """Builds every entry of a group like callbacks or logger; entries set to null are off."""
    return [instantiate(c) for c in (configs or {}).values() if c is not None]


def print_config(cfg: DictConfig) -> bool:
    return (cfg.get("extras") or {}).get("print_config", False)


def build(cfg: DictConfig, resumed: dict | None = None) -> tuple[ImageDataModule, ImageClassifier, L.Trainer]:
    """The data (loaded), the module (with the data's classes and normalisation) and the trainer of a checked
    config. Callbacks and loggers are built before the data loads, so that their refusals come first; the trainer
    after it, with the run's length (schema.run_length checks it: at least one optimizer step). A run resumed from
    the checkpoint `resumed` (its contents) has its data built as any data read from a run folder
    (trust.RECORDED_DATA), and its module and length checked against what that checkpoint restores."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)  # the seed is in the config tree and summary
    try:
        group = "data"
        datamodule = instantiate(cfg.data, **(RECORDED_DATA if resumed is not None else {}))
        group = "trainer"
        processes = trainer_processes(cfg.trainer)
        group = "callbacks"
        callbacks = instantiate_all(without_validation(cfg.callbacks, datamodule))
        group = "logger"
        tracking.prepare(cfg)
        loggers = instantiate_all(cfg.logger)
    except InstantiationException as e:
        raise refused(group, e) from None
    datamodule.setup("fit")
    if cfg.get("trial"):
        check_reportable(cfg.optimized_metric, datamodule)
    steps = run_length(cfg, datamodule, processes, callbacks)
    # whole epochs end the run by max_epochs, as Lightning counts them (a resumed last epoch stays counted);
    # a fractional one also by the optimizer step inside the last epoch
    max_steps = -1 if float(cfg.epochs).is_integer() else steps
    stop_inside = [StopAtMaxSteps()] if max_steps > 0 else []  # a callback at every step only where it is needed
    # a job of an Optuna search reports to its trial, whose pruner may stop it (optuna_sweeper.py)
    pruning = [OptunaPruning(**cfg.trial)] if cfg.get("trial") else []
    try:
        trainer = instantiate(
            cfg.trainer,
            callbacks=[*callbacks, CountTrainingFlops(), Timer(), *stop_inside, KeepRandomState(), *pruning],
            logger=loggers,
            max_epochs=math.ceil(cfg.epochs),
            max_steps=max_steps,
        )
    except InstantiationException as e:
        raise refused("trainer", e) from None
    mean, std = datamodule.channel_stats()
    of_data = {"class_names": datamodule.class_names, "mean": mean, "std": std, "image_size": datamodule.image_size}
    module = instantiate(cfg.module, **of_data, _recursive_=False)
    if resumed is not None:  # before anything is trained or written: once fit() has started it is too late
        check_resumable(resumed, dict(module.hparams), steps, cfg)
    module.init_from_data(datamodule.training_images(5000))  # a resumed run then loads its own weights over these
    for callback in callbacks:  # a callback that needs something of the module refuses it before the run starts
        if hasattr(callback, "check_module"):
            callback.check_module(module)
    return datamodule, module, trainer


def trainer_processes(trainer_config: DictConfig) -> int:
    """How many processes the trainer config runs (devices x nodes, as Lightning resolves them): a Trainer of its
    device keys alone is asked, quietly (the real one reports the devices)."""
    keys = {k: trainer_config[k] for k in ("accelerator", "devices", "num_nodes", "strategy") if k in trainer_config}
    quiet = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        device_keys = OmegaConf.to_container(OmegaConf.create(keys), resolve=True)
        assert isinstance(device_keys, dict)  # OmegaConf.create of a dict is a DictConfig
        probe = instantiate(
            {"_target_": "lightning.pytorch.Trainer", **device_keys},
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
    finally:
        quiet.setLevel(level)
    return probe.world_size


def without_validation(callbacks: DictConfig, datamodule: ImageDataModule) -> DictConfig | dict:
    """With data.val_size=0 nothing is validated: best.ckpt then follows the latest epoch, and callbacks that
    watch a val/ metric (early stopping) are left out."""
    if datamodule.validates:
        return callbacks
    kept = {}
    configs = OmegaConf.to_container(callbacks, resolve=True) if callbacks else {}
    assert isinstance(configs, dict)  # of a DictConfig
    for name, callback in configs.items():
        watches_val = callback is not None and str(callback.get("monitor", "")).startswith("val/")
        if watches_val and callback["_target_"].endswith(("ModelCheckpoint", "BestCheckpoint")):
            callback["monitor"] = None
        elif watches_val:
            continue
        kept[name] = callback
    return kept


def train_or_resume(cfg: DictConfig, task_overrides: list[str]) -> float | None:
    """What train.py runs: a new run, or with resume= the run it names continued (nothing, if it finished); returns
    the run's `optimized_metric` for a sweeper to optimise, None when the run has none (no validation, no test)."""
    metric = cfg.get("optimized_metric", "best_val_acc")
    if not cfg.resume:
        return train(cfg).get(metric)
    cfg, last = resume_config(cfg, task_overrides)
    if last is not None:
        return train(cfg, last).get(metric)
    log.info("%s finished already: nothing to resume", cfg.paths.output_dir)
    return RunFolder(cfg.paths.output_dir).summary_values().get(metric)


def train(cfg: DictConfig, resume_from: Path | None = None) -> dict:
    """Trains (from a checkpoint of the same run, if given), tests the best checkpoint, writes summary.json
    into the run folder and returns the summary. The run folder is held from start to end (RunFolder.training:
    UserError if another process trains in it); under DDP rank 0 holds it for the processes that share it."""
    check_train_config(cfg, TrainOptions)
    run = RunFolder(cfg.paths.output_dir)
    rank = rank_zero_only.rank  # type: ignore[attr-defined]  # set on the function by Lightning, not in its type
    with run.training() if rank == 0 else contextlib.nullcontext():
        return fit_and_test(cfg, run, rank, resume_from)


def fit_and_test(cfg: DictConfig, run: RunFolder, rank: int, resume_from: Path | None) -> dict:
    """train() in its held run folder, on process `rank`."""
    if rank != 0:  # under DDP every process runs this; one reports (Lightning's own logs do the same)
        logging.getLogger("cifar_lightning").setLevel(logging.WARNING)
    tree = config_tree(cfg, show=print_config(cfg)) if rank == 0 else None
    last = read_last(resume_from, cfg.get("trusted_modules") or ()) if resume_from else None
    datamodule, module, trainer = build(cfg, resumed=last)
    if trainer.is_global_zero:
        run.mark_started()
        if tree:  # written once nothing has refused the config: a refused run leaves no checkpoints or tree
            run.write("config_tree.txt", tree)
        log.info("%s", headline(cfg, module, trainer, resume_from))
        tracking.start(trainer.loggers, cfg)
    if last is not None:
        run.keep_metrics(last["global_step"], last["epoch"], last.get("epoch_metrics", {}))
    elif trainer.is_global_zero:
        run.metrics_csv.unlink(missing_ok=True)  # a new run in a folder used before: its rows only

    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    # read now: testing from best.ckpt restores the states saved with it
    callbacks: list[L.Callback] = trainer.callbacks  # type: ignore[attr-defined]  # Lightning sets it, undeclared
    cost = next(c for c in callbacks if isinstance(c, CountTrainingFlops))
    # Lightning's Timer keeps the training time in checkpoints: a resumed run adds on
    timer = next(c for c in callbacks if isinstance(c, Timer))
    training_flops, fit_seconds = cost.total_flops, timer.time_elapsed("train")

    best = best_checkpoint(trainer)
    best_path = best.best_model_path if best else ""
    summary: dict[str, Any] = {
        "temperature": calibrate(cfg, trainer, module, datamodule, best_path),
        "best_val_acc": None if best is None or best.best_model_score is None else float(best.best_model_score),
        "epochs": trainer.current_epoch,
        "fit_seconds": round(fit_seconds, 1),
        "training_pflop": training_flops / 1e15,
        "best_checkpoint": best_path,
        "hardware": hardware(trainer),
        "commit": tracking.git_commit(),
    }
    pruning = next((c for c in callbacks if isinstance(c, OptunaPruning)), None)
    if pruning is not None:
        summary["pruned"] = pruning.pruned  # a pruned run is finished too: resume= leaves it as it is
    if "test" in datamodule.splits:
        results = trainer.test(module, datamodule=datamodule, ckpt_path=best_path or None, verbose=False)
        summary.update(test_acc=results[0]["test/acc"], test_loss=results[0]["test/loss"])
    if trainer.is_global_zero:
        finish(run, trainer, callbacks, summary)
    return summary


def finish(run: RunFolder, trainer: L.Trainer, callbacks: list[L.Callback], summary: dict) -> None:
    """On rank 0 at the end of a run: summary.json written and sent to the trackers; the console's last lines."""
    path = run.write(run.summary.name, json.dumps(summary, indent=2) + "\n")
    tracking.finish(trainer.loggers, summary, path)
    stopped = next((c for c in callbacks if isinstance(c, EarlyStopping) and c.stopped_epoch), None)
    if stopped is not None:
        log.info("early stopping: %s did not improve for %d epochs", stopped.monitor, stopped.patience)
    log.info(
        "best val acc %s | test acc %s | wall time %.0f s | %s",
        _pct(summary["best_val_acc"]),
        _pct(summary.get("test_acc")),
        summary["fit_seconds"],
        run.path,
    )


def headline(cfg: DictConfig, module: ImageClassifier, trainer: L.Trainer, resume_from: Path | None) -> str:
    """The run in one line: what trains on what, how long, how, on which device, and where it writes."""
    net = type(module.net).__name__
    parameters = sum(p.numel() for p in module.net.parameters())
    optimizer = str(cfg.optimizer._target_).rsplit(".", 1)[-1]
    lr = f" lr {cfg.optimizer.lr:g}" if cfg.optimizer.get("lr") is not None else ""
    scheduler = "" if cfg.scheduler is None else f", {str(cfg.scheduler._target_).rsplit('.', 1)[-1]}"
    what = f"resuming from {resume_from}" if resume_from else "training"
    epochs = f"{cfg.epochs:g} epoch{'' if cfg.epochs == 1 else 's'}"
    return (
        f"{what}: {net} ({parameters / 1e6:.2f} M parameters), {epochs} of batch {cfg.batch_size}, "
        f"{optimizer}{lr}{scheduler}, {trainer.precision} on "
        f"{trainer.strategy.root_device.type} x {trainer.world_size} -> {cfg.paths.output_dir}"
    )


def best_checkpoint(trainer: L.Trainer) -> BestCheckpoint | None:
    """What writes best.ckpt; None with callbacks.model_checkpoint=null."""
    return next((c for c in trainer.checkpoint_callbacks if isinstance(c, BestCheckpoint)), None)


def calibrate(
    cfg: DictConfig, trainer: L.Trainer, module: ImageClassifier, datamodule: ImageDataModule, best_path: str
) -> float:
    """Fitted on the validation split with the best weights, set in the module and written into every checkpoint of
    the run: the temperature (calibration=temperature) and the conformal scores (conformal.py; with either
    calibration). Returns the temperature (1 when it was not fitted)."""
    if not datamodule.validates:
        log.info("calibration: data.val_size=0 leaves no validation images to fit it on; the temperature stays 1")
        return 1.0
    if not best_path:
        log.info("calibration: no checkpoint was saved (trainer.fast_dev_run?); the temperature stays 1")
        return 1.0
    if trainer.world_size > 1:  # each process holds only its shard of the validation split
        log.info(
            "calibration: the temperature and the conformal scores are not fitted under DDP: run python evaluate.py "
            "ckpt=%s calibrate=true",
            Path(cfg.paths.output_dir),
        )
        return 1.0
    # the run's own best weights into the module: trainer.test loads them again, with what is written below
    module.load_state_dict(read_weights(Path(best_path)))
    validation = datamodule.splits["val"]
    fitted = cfg.calibration == "temperature"
    temperature = fit_on_validation(module, validation, datamodule.eval_batch_size, temperature=fitted)
    saved = {best_path} | {c.best_model_path for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)}
    for path in saved - {""}:  # best.ckpt and last.ckpt
        write_temperature(Path(path), temperature, module.conformal_scores)
    log.info(
        "calibration: %s and conformal scores fitted on %d validation images",
        f"temperature {temperature:.4f}" if fitted else "no temperature (calibration=none)",
        len(validation),
    )
    return temperature


def hardware(trainer: L.Trainer) -> dict[str, Any]:
    """What the run's times were measured on: a time means little without it."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    gpu = torch.cuda.get_device_name() if trainer.strategy.root_device.type == "cuda" else None
    return {
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "gpu": gpu,
        "devices": trainer.world_size,
        "precision": trainer.precision,
        "torch": torch.__version__,
        "lightning": L.__version__,
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"
