"""The one place that decides which library messages the console leaves out: those the user cannot act on (an
advertisement, a deprecation inside a library's own code, a warning about a choice this project makes on purpose).
Everything else a library prints stays, above all what a user can change with an override."""

import logging
import os
import re
import warnings

# Lightning's advertisements for its cloud services, logged at INFO by every Trainer (also with logger=false);
# Lightning has no switch for them (Lightning-AI/pytorch-lightning#21294), so they are dropped by their exact text.
TIPS = (
    "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]",
    "💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels]",
)
TIPS_LOGGER = "lightning.pytorch.utilities.rank_zero"  # the logger of Lightning's rank_zero_info
# What Lightning reports of itself at every start, which the run's first line (tasks/train.py headline) says once in
# the user's terms: the devices and precision, and how it computes the run's length or reloads best.ckpt to test it
ANNOUNCEMENTS = (
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "Using bfloat16 Automatic Mixed Precision",
    "Using 16bit Automatic Mixed Precision",
    "Loading `train_dataloader` to estimate number of stepping batches",
    "Restoring states from the checkpoint path at",
    "Loaded model weights from the checkpoint at",
    "Restored all states from the checkpoint at",
    "`Trainer.fit` stopped: `max_epochs=",
    "`Trainer.fit` stopped: `max_steps=",
)
# Lightning's note of a SIGTERM ("[rank: 0] Received SIGTERM: 15"): the project's own line says which epoch is saved
# and how to resume
SIGNALS_LOGGER, SIGTERM_NOTE = "lightning.pytorch.trainer.connectors.signal_connector", "Received SIGTERM:"


# MLflow warns that a pyfunc model given as an object is pickled; registry.py's pickle is a reference to its class,
# on purpose (the checkpoint goes through the trusted loader, not pickle)
PICKLED_MODEL = "Passing a Python object as `python_model`"


def actionable(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not message.startswith(TIPS + ANNOUNCEMENTS) and SIGTERM_NOTE not in message


def not_the_pickled_model_warning(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(PICKLED_MODEL)


def quiet() -> None:
    """Installs the filters; the entry points call it before they run (cli.run, cli.run_composing)."""
    logging.getLogger(TIPS_LOGGER).addFilter(actionable)
    logging.getLogger(SIGNALS_LOGGER).addFilter(actionable)  # added once however often quiet() runs
    logging.getLogger("mlflow.pyfunc").addFilter(not_the_pickled_model_warning)
    # Lightning's own utilities/_pytree.py builds torch's deprecated LeafSpec on every fit, test and predict: only
    # a Lightning release can change that. A LeafSpec in the user's own code still warns (other module).
    warnings.filterwarnings(
        "ignore",
        message=re.escape("`isinstance(treespec, LeafSpec)` is deprecated"),
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    # Normalisation and augmentation live in the LightningModule on purpose (a checkpoint must carry them).
    warnings.filterwarnings("ignore", message=".*overridden `on_after_batch_transfer` in `LightningModule`.*")
    # The module logs its metrics once per epoch (a log call every step costs every step), so the logging interval
    # Lightning warns about when an epoch is shorter than it applies to nothing the project logs
    warnings.filterwarnings("ignore", message=".*is smaller than the logging interval Trainer\\(log_every_n_steps.*")
    # metrics.csv shares the run folder with .hydra/ and train.log by design
    warnings.filterwarnings("ignore", message=".*Experiment logs directory .* exists and is not empty.*")
    # a resumed run saves its checkpoints where it saved them before, by design
    warnings.filterwarnings("ignore", message=".*Checkpoint directory .* exists and is not empty.*")
    # bf16-mixed keeps fp32 weights, so the model summary's fallback to 32 bits gives the right size
    warnings.filterwarnings("ignore", message=".*is not supported by the model summary.*")
    # on any machine with Slurm's srun, every local run is told to start under srun; this project submits to Slurm
    # through its launcher (hydra/launcher=slurm, docs/slurm.md), whose jobs srun starts. Inside an allocation the
    # hint may be right, and stays
    if "SLURM_JOB_ID" not in os.environ:
        warnings.filterwarnings("ignore", message=".*The `srun` command is available on your system but is not used.*")
