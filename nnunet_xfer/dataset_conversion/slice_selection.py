"""Choose the L3 slice of a 3D volume from a vertebra label map.

The slice index is the index along the volume's third axis as SimpleITK reads it, i.e. numpy
``array[k]`` of the :class:`~nnunet_xfer.imaging.Image`'s voxels; cutting the slice
(:meth:`~nnunet_xfer.imaging.Image.slice`) and checking an index
(:meth:`~nnunet_xfer.imaging.Image.check_index`) are the image's own.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nnunet_xfer.errors import UserError
from nnunet_xfer.imaging import Image


def middle_slice_of_label(vertebra: Image, label: int, path: Path, case: str) -> int:
    """Middle slice (``(first + last) // 2``) of the extent of ``label`` along the third axis."""
    arr = vertebra.array
    if arr.ndim != 3:
        raise UserError(f"case {case}: vertebra mask {path} is 2D; it must be the 3D label volume "
                        f"of the image")
    present = np.flatnonzero((arr == label).any(axis=(1, 2)))
    if present.size == 0:
        values = np.unique(arr)
        raise UserError(f"case {case}: vertebra label {label} does not occur in {path} (labels: "
                        f"{', '.join(str(v) for v in values[:20])}); set vertebra_label correctly")
    return int(present[0] + present[-1]) // 2
