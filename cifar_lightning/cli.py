"""What the entry points share: user mistakes end in one line on stderr and exit code 1, no traceback."""
import contextlib
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from cifar_lightning.data import DataError


class UserError(Exception):
    """A mistake in what the user asked for; the message says what was wrong and what to do."""


@contextlib.contextmanager
def exit_on_user_error():
    try:
        yield
    except (UserError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def compose_config(name: str, overrides=(), output_dir: str | Path = ".") -> DictConfig:
    """A config composed as `python NAME.py OVERRIDES` would, outside a Hydra app (tests, benchmarks)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=name, overrides=[*overrides, f"paths.output_dir={output_dir}"])
