"""The console of a run holds what the user can act on, not Lightning's advertisements or deprecations inside
Lightning's own code (cifar_lightning/console.py)."""

import logging
import warnings

from conftest import FAST, run_script

from cifar_lightning.blocks import console

NOT_ACTIONABLE = ("litlogger", "litmodels", "Tip:", "LeafSpec")


def test_train_and_evaluate_print_what_the_user_can_act_on_and_nothing_else(tmp_path):
    run = tmp_path / "run"
    # batches of 32 log every 1000 steps: Lightning warns the user that no training step will be logged, which they
    # can act on (trainer.log_every_n_steps), so that warning must stay
    result = run_script("train.py", *FAST, "data=synthetic", "trainer.log_every_n_steps=1000", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    assert "best val acc" in output and str(run) in output
    assert "Set a lower value for log_every_n_steps" in output
    assert not [word for word in NOT_ACTIONABLE if word in output], output[-3000:]

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
            assert logger.filters.count(console.not_an_advertisement) == 1

            def record(message):
                return logging.LogRecord(console.TIPS_LOGGER, logging.INFO, __file__, 1, message, None, None)

            assert not logger.filter(record(console.TIPS[0] + "(https://pypi.org/project/litlogger/) ..."))
            assert logger.filter(record("GPU available: False, used: False"))

            message = "`isinstance(treespec, LeafSpec)` is deprecated, use ... instead."
            warnings.warn_explicit(message, FutureWarning, "_pytree.py", 21, "lightning.pytorch.utilities._pytree")
            warnings.warn_explicit(message, FutureWarning, "mine.py", 1, "my_callbacks")  # the user's own code
            warnings.warn_explicit("another deprecation", FutureWarning, "_pytree.py", 22, "lightning.pytorch.x")
        assert [(w.filename, str(w.message)) for w in caught] == [
            ("mine.py", message),
            ("_pytree.py", "another deprecation"),
        ]
    finally:
        logger.removeFilter(console.not_an_advertisement)
