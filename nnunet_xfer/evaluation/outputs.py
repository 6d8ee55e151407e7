"""Where evaluation commands may write, and strict JSON.

``evaluate``, ``observers`` and ``report`` check their output before any work
(:func:`check_output_folder`) and write through :func:`nnunet_xfer.atomic.owned_output`, so
``--overwrite`` replaces only what an earlier run of ours wrote and a folder holding anything else
is refused, naming the foreign files.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from nnunet_xfer.atomic import atomic_write_text, check_replaceable, refuse_protected
from nnunet_xfer.errors import UserError


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))


def check_output_folder(out: Path, command: str, overwrite: bool,
                        inputs: Iterable[Path | None] = ()) -> Path:
    """The absolute output folder of ``command``, refused (one line) before any work when it

    * equals or contains an nnU-Net folder or one of its datasets (raw, preprocessed, results),
    * is the current folder or one holding it (``-o .``),
    * equals or contains one of the command's ``inputs``,
    * exists and may not be replaced (no ``--overwrite``, or it holds files we did not write),
    * cannot be created (under a file, or in a folder that is not writable).
    """
    out = _absolute(out)
    refuse_protected(out)
    cwd = _absolute(Path.cwd())
    if out == cwd or out in cwd.parents:
        raise UserError(f"output folder {out} is the current folder or holds it; give a new "
                        f"folder of its own, e.g. -o {command}_output")
    for path in inputs:
        if path is None:
            continue
        path = _absolute(path)
        if out == path or out in path.parents:
            raise UserError(f"output folder {out} would replace the input {path}; "
                            f"choose a folder of its own")
    check_replaceable(out, command, overwrite)
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"cannot create output folder {out}: {ancestor} is a file; choose a "
                        f"folder of its own")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"cannot create output folder {out}: {ancestor} is not writable; choose "
                        f"a writable folder")
    return out


def json_ready(obj):
    """Plain JSON types: numpy scalars/arrays converted, NaN and infinities as null."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as strict JSON (NaN → null), atomically."""
    atomic_write_text(Path(path), json.dumps(json_ready(obj), indent=2, allow_nan=False))
