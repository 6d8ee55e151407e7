"""Strict JSON for the evaluation commands' outputs.

``evaluate``, ``observers`` and ``report`` claim their outputs before any work with the one
output guard (:func:`nnunet_xfer.atomic.check_replaceable`) and write through
:func:`nnunet_xfer.atomic.owned_output`, so ``--overwrite`` replaces only what an earlier run of
the same command wrote and a folder holding anything else is refused, naming the foreign files.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nnunet_xfer.atomic import atomic_write_text


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
