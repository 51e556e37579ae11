"""What the entry points share: user mistakes end in one line on stderr and exit code 1, no traceback."""
import contextlib
import sys

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
