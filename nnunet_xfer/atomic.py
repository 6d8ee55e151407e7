"""Writing outputs so that nothing half-written is ever left behind.

A folder is built under a hidden temporary name beside its destination and renamed into place
only when complete; a file is written beside its destination and renamed over it.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nnunet_xfer.errors import UserError


@contextmanager
def atomic_folder(out: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces ``out``, on error it is removed.

    Callers decide beforehand whether an existing ``out`` may be replaced (``--overwrite``).
    """
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as e:
        raise UserError(f"cannot create {out}: {e.strerror}; choose a writable folder") from None
    try:
        yield tmp
        if out.exists() or out.is_symlink():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()
        else:
            tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_json(path: Path, obj, indent: int = 2, **kwargs) -> Path:
    """``json.dumps(obj)`` written atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, **kwargs))
