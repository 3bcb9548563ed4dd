"""The one exception type for bad user input (the CLI prints its message on one line and exits 1), and the wording
helpers of messages."""


class UserError(Exception):
    """Bad input from the user (a file, a recipe, a flag): the message says what and where."""

    exit_code = 1


# What a Ctrl-C outside a training loop ends with (the loop says what it saved).
INTERRUPTED = "interrupted (sedaug writes each file whole, then renames it: nothing is half-written)"


class Interrupted(UserError):
    """Ctrl-C: what was saved, and how to continue, is in the message."""

    exit_code = 130  # the shell's convention for SIGINT


def one_line(err: BaseException) -> str:
    """An exception's message on one line (a library's may span several), or its type's name when it has none."""
    return " ".join(str(err).split()) or type(err).__name__


def counted(n: int, noun: str) -> str:
    """"1 epoch", "3 epochs": a count and its noun (plural by an s)."""
    return f"{n:,} {noun}{'s' * (n != 1)}"


def listed(items, most: int = 3) -> str:
    """"a, b, c and 2 more": the first `most` of `items`, and how many are left unnamed."""
    items = [str(item) for item in items]
    return ", ".join(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")
