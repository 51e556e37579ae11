"""The console of a run holds what the user can act on, not Lightning's advertisements or deprecations inside
Lightning's own code (cifar_lightning/blocks/console.py)."""

import logging
import os
import warnings

from conftest import FAST, run_script

from cifar_lightning.blocks import console

NOT_ACTIONABLE = (
    "litlogger",
    "litmodels",
    "Tip:",
    "LeafSpec",
    "GPU available",
    "TPU available",
    "Automatic Mixed Precision",
    "log_every_n_steps",
    "Loading `train_dataloader`",
    "Total FLOPs",
    "Restoring states",
    "srun",
)


def test_train_and_evaluate_print_what_the_user_can_act_on_and_nothing_else(tmp_path):
    run = tmp_path / "run"
    # the module logs once per epoch: Lightning's warning that an epoch is shorter than the logging interval concerns
    # nothing it logs; the devices and precision are said once, in the run's first line; on a machine with Slurm,
    # Lightning's hint to start every run under srun is not this project's way (its launcher submits the jobs)
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    (bin_folder / "srun").write_text("#!/bin/sh\n")
    (bin_folder / "srun").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_folder}{os.pathsep}{os.environ['PATH']}"}
    result = run_script("train.py", *FAST, "data=synthetic", f"hydra.run.dir={run}", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "best val acc" in output and str(run) in output
    first = next(line for line in output.splitlines() if "training: " in line)
    assert "CNN (" in first and "M parameters), 1 epoch of batch 32" in first and f"on cpu x 1 -> {run}" in first
    assert not [word for word in NOT_ACTIONABLE if word in output], output[-3000:]
    assert "_target_" not in output  # the config tree is in config_tree.txt, printed only with extras.print_config

    result = run_script("evaluate.py", f"ckpt={run}")
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "accuracy" in output and f"wrote {run / 'eval' / 'test'}/" in output
    assert not [word for word in NOT_ACTIONABLE if word in output], output[-3000:]


def test_quiet_drops_only_the_advertisement_and_lightnings_own_leafspec_warning():
    logger = logging.getLogger(console.TIPS_LOGGER)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            console.quiet()
            console.quiet()  # idempotent: the entry points and a test may both call it
            assert logger.filters.count(console.actionable) == 1

            def record(message):
                return logging.LogRecord(console.TIPS_LOGGER, logging.INFO, __file__, 1, message, None, None)

            assert not logger.filter(record(console.TIPS[0] + "(https://pypi.org/project/litlogger/) ..."))
            assert not logger.filter(record("GPU available: False, used: False"))
            assert logger.filter(record("Trainer was signaled to stop but the required `min_epochs=9` ..."))

            message = "`isinstance(treespec, LeafSpec)` is deprecated, use ... instead."
            warnings.warn_explicit(message, FutureWarning, "_pytree.py", 21, "lightning.pytorch.utilities._pytree")
            warnings.warn_explicit(message, FutureWarning, "mine.py", 1, "my_callbacks")  # the user's own code
            warnings.warn_explicit("another deprecation", FutureWarning, "_pytree.py", 22, "lightning.pytorch.x")
        assert [(w.filename, str(w.message)) for w in caught] == [
            ("mine.py", message),
            ("_pytree.py", "another deprecation"),
        ]
    finally:
        logger.removeFilter(console.actionable)
