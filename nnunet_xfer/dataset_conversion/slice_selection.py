"""Choose the L3 slice of a 3D volume and cut images and masks at it.

The slice index is the index along the volume's third axis as SimpleITK reads it, i.e. numpy
``array[k]`` of ``sitk.GetArrayFromImage``. A slice is returned as a 2D SimpleITK image that keeps
the voxel values bit for bit, the in-plane spacing and the slice's in-plane origin/direction.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_xfer.errors import UserError


def n_slices(image: sitk.Image) -> int:
    """Number of slices along the third axis (1 for a 2D image)."""
    return image.GetSize()[2] if image.GetDimension() == 3 else 1


def is_volume(image: sitk.Image) -> bool:
    """True for a 3D image with more than one slice (a slice must then be chosen)."""
    return n_slices(image) > 1


def extract_slice(image: sitk.Image, index: int) -> sitk.Image:
    """Slice ``index`` (numpy ``array[index]``) as a 2D image; a 2D image is returned unchanged."""
    if image.GetDimension() == 2:
        return image
    size = list(image.GetSize())
    size[2] = 0  # a zero size collapses the axis
    return sitk.Extract(image, size, [0, 0, int(index)],
                        sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOGUESS)


def middle_slice_of_label(vertebra: sitk.Image, label: int, path: Path, case: str) -> int:
    """Middle slice (``(first + last) // 2``) of the extent of ``label`` along the third axis."""
    arr = sitk.GetArrayViewFromImage(vertebra)
    if arr.ndim != 3:
        raise UserError(f"case {case}: vertebra mask {path} is 2D; it must be the 3D label volume "
                        f"of the image")
    present = np.flatnonzero((arr == label).any(axis=(1, 2)))
    if present.size == 0:
        values = np.unique(arr)
        raise UserError(f"case {case}: vertebra label {label} does not occur in {path} (labels: "
                        f"{', '.join(str(v) for v in values[:20])}); set vertebra_label correctly")
    return int(present[0] + present[-1]) // 2


def check_index(image: sitk.Image, index: int, path: Path, case: str) -> int:
    """Validate a slice index against the volume's third axis."""
    n = n_slices(image)
    if not 0 <= index < n:
        raise UserError(f"case {case}: slice_index {index} is out of range for {path}, which has "
                        f"{n} slices (valid 0..{n - 1})")
    return index
