"""What the entry points share: user mistakes end in one line on stderr and exit code 1, no traceback."""
import contextlib
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from cifar_lightning.data import DataError


class UserError(Exception):
    """A mistake in what the user asked for; the message says what was wrong and what to do."""


@contextlib.contextmanager
def exit_on_user_error():
    """Single runs: print the message and exit 1. Under -m the error is re-raised, for Hydra to record the
    job as failed and go on with the sweep (an exit would end every job after it)."""
    try:
        yield
    except (UserError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            raise
        sys.exit(1)


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def compose_config(name: str, overrides=()) -> DictConfig:
    """A config composed as `python NAME.py OVERRIDES` would, outside a Hydra app (tests, benchmarks);
    a train config then needs paths.output_dir set, which Hydra would have filled in."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides))
