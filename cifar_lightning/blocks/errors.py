"""The one error type for user mistakes: the entry points print its message as one `error:` line and exit 1."""


class UserError(Exception):
    """A mistake in what the user asked for or gave us; the message says what was wrong and what to do."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message, for a one-line refusal; its type's name when the message is empty."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
