"""The package's one user-facing error type, and its one way to warn."""
from __future__ import annotations

import sys


class UserError(Exception):
    """Bad input or a missing prerequisite: the CLI prints the message as one line and exits 2.

    The message names the file or case at fault and what to do about it.
    """


def warn(message: str) -> None:
    """A safety warning (empty mask, thick slice, …) as one printed line on stderr.

    Printed, not ``warnings.warn``: a warnings filter (``-W ignore``, ``PYTHONWARNINGS``, a
    library's ``simplefilter``) must never hide it. Written around a progress bar on a terminal.
    Whatever the line says is also in the command's output where it concerns a case (CSV flags).
    """
    from tqdm import tqdm
    tqdm.write("warning: " + " ".join(str(message).split()), file=sys.stderr)
