"""One writer per dataset: the lock ``experiment --run`` holds while it runs.

The lock is an ``flock`` on ``layout.experiment_lock`` holding the runner's pid. The kernel
drops it when the process ends, however it ends, so a lock file left by a dead runner is simply
taken over; a second runner while the first lives is refused in one line naming the first's pid.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from nnunet_xfer.errors import UserError


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


@contextmanager
def exclusive_lock(path: Path, what: str) -> Iterator[Path]:
    """Hold ``path`` for the ``with`` block; :class:`UserError` when another process holds it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _holder(fd)
            os.close(fd)
            raise UserError(f"{what} is already running (pid {pid}, lock {path}); wait for it to "
                            f"finish or stop it, then run again") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file after we opened it: retry
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        try:
            path.unlink()  # while still locked, so nobody can lock this inode in between
        except FileNotFoundError:
            pass
        os.close(fd)
