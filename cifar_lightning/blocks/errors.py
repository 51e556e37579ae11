"""The one error type for user mistakes: the entry points print its message as one `error:` line and exit 1; and
the one line of a Ctrl-C while they import."""

import os
import signal
import sys


class UserError(Exception):
    """A mistake in what the user asked for or gave us; the message says what was wrong and what to do."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message, for a one-line refusal; its type's name when the message is empty."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def stop_while_importing(signum: int, frame: object) -> None:
    """The SIGINT handler of an entry point's imports (stop_quietly_while_importing): one line, exit code 130."""
    print("error: stopped by SIGINT", file=sys.stderr, flush=True)
    os._exit(128 + signum)  # no unwinding through a half-imported library; nothing is written yet


def stop_quietly_while_importing() -> None:
    """Called first by the entry points run as scripts: until cli.run restores Python's own handler
    (KeyboardInterrupt, which the runs turn into one line), Ctrl-C ends the command with one line and exit code 130
    instead of a traceback of whichever import it cut (the imports take seconds). An ignored SIGINT (a command
    started in the background by a script) stays ignored."""
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, stop_while_importing)
