"""The one error type for user mistakes: the entry points print its message as one `error:` line and exit 1."""


class UserError(Exception):
    """A mistake in what the user asked for or gave us; the message says what was wrong and what to do."""
