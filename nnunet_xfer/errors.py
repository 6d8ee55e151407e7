"""The package's one user-facing error type."""


class UserError(Exception):
    """Bad input or a missing prerequisite: the CLI prints the message as one line and exits 2.

    The message names the file or case at fault and what to do about it.
    """
