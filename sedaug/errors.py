"""The one exception type for bad user input: the CLI prints its message on one line and exits 1."""


class UserError(Exception):
    """Bad input from the user (a file, a recipe, a flag): the message says what and where."""

    exit_code = 1
