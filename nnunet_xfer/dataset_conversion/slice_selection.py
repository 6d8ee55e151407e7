"""Choose the L3 slice of a 3D volume: by index, by DICOM InstanceNumber, from a vertebra label map,
or from an automatic vertebra labelling (``measure --l3 auto``).

The slice index is the index along the volume's third axis as SimpleITK reads it, i.e. numpy
``array[k]`` of the :class:`~nnunet_xfer.imaging.Image`'s voxels: for an axial volume it counts
from the feet to the head, whatever order the files or the viewer use. ``instance_number`` is
DICOM's InstanceNumber, what a PACS viewer shows; it is turned into the index by the instance's
position. Cutting the slice (:meth:`~nnunet_xfer.imaging.Image.slice`) and checking an index
(:meth:`~nnunet_xfer.imaging.Image.check_index`) are the image's own. ``convert`` and
``measure`` choose by :func:`choose_slice`, so a row means the same slice to both.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from nnunet_xfer.dataset_conversion.manifest import CaseSpec
from nnunet_xfer.errors import UserError
from nnunet_xfer.imaging import Image, check_pair, read_mask

#: How a slice was chosen (the ``slice_source`` column of ``measure``).
SLICE_SOURCES = ("slice_index", "instance_number", "vertebra_mask", "l3_auto", "2d")


def middle_slice_of_label(vertebra: Image, label: int, path: Path, case: str) -> int:
    """Middle slice (``(first + last) // 2``) of the extent of ``label`` along the third axis."""
    arr = vertebra.array
    if arr.ndim != 3:
        raise UserError(f"case {case}: vertebra mask {path} is 2D; it must be the 3D label volume "
                        f"of the image")
    present = np.flatnonzero((arr == label).any(axis=(1, 2)))
    if present.size == 0:
        values = np.unique(arr)
        raise UserError(f"case {case}: no L3 in the volume: vertebra label {label} does not occur "
                        f"in {path} (labels: {', '.join(str(v) for v in values[:20])}); the scan "
                        f"may not cover L3, or vertebra_label is wrong: check them, or give "
                        f"slice_index")
    return int(present[0] + present[-1]) // 2


def index_of_instance(image: Image, number: int, case: str) -> int:
    """The slice index of the DICOM instance whose InstanceNumber is ``number``."""
    series = image.dicom
    if series is None:
        raise UserError(f"case {case}: instance_number applies to DICOM series; {image.path} is "
                        f"{image.format}: give slice_index instead")
    found = [h for h in series.headers if int_or_none(h.get("InstanceNumber")) == int(number)]
    numbers = sorted(n for n in (int_or_none(h.get("InstanceNumber")) for h in series.headers)
                     if n is not None)
    shown = f"{numbers[0]}–{numbers[-1]}" if numbers else "none"
    if not found:
        raise UserError(f"case {case}: no instance of {image.path} has InstanceNumber {number} "
                        f"(its instances are numbered {shown}); check instance_number")
    if len(found) > 1:
        raise UserError(f"case {case}: {len(found)} instances of {image.path} have InstanceNumber "
                        f"{number}; give slice_index instead")
    if not image.is_volume:
        return 0
    index = image.index_at(found[0].get("ImagePositionPatient"))
    if index is None:
        raise UserError(f"case {case}: the instance with InstanceNumber {number} lies on no slice "
                        f"of {image.path}; give slice_index instead")
    return index


def int_or_none(value) -> int | None:
    """A DICOM IS value (InstanceNumber) as an int, None when absent or not a number."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def choose_slice(spec: CaseSpec, image: Image,
                 auto_l3: Callable[[Image], tuple[Image, int]] | None = None,
                 hint: str = "") -> tuple[int | None, str]:
    """(slice index, how it was chosen: one of :data:`SLICE_SOURCES`) of one manifest row.

    A 2D image or a one-slice volume has no index to choose (None, ``2d``). ``auto_l3`` (``measure
    --l3 auto``) labels the vertebrae of a volume whose row gives no choice: it returns a label
    map on the image's grid and L3's label in it. ``hint`` ends the refusal of a volume without a
    choice (what else the command offers).
    """
    cid = spec.case_id
    given = [k for k, v in (("slice_index", spec.slice_index),
                            ("instance_number", spec.instance_number),
                            ("vertebra_mask", spec.vertebra_mask)) if v is not None]
    if len(given) > 1:
        raise UserError(f"case {cid}: give one of slice_index, instance_number or vertebra_mask, "
                        f"not {' and '.join(given)}")
    if spec.instance_number is not None:
        index = index_of_instance(image, spec.instance_number, cid)
        return (index if image.is_volume else None), "instance_number"
    if not image.is_volume:
        if spec.slice_index not in (None, 0):
            image.check_index(spec.slice_index, cid)
        return None, "2d"
    if spec.slice_index is not None:
        return image.check_index(spec.slice_index, cid), "slice_index"
    if spec.vertebra_mask is not None:
        vertebra = read_mask(spec.vertebra_mask, cid, what="vertebra mask")
        check_pair(image, vertebra, cid, "vertebra mask")
        return middle_slice_of_label(vertebra, spec.vertebra_label, spec.vertebra_mask, cid), \
            "vertebra_mask"
    if auto_l3 is not None:
        vertebra, label = auto_l3(image)
        check_pair(image, vertebra, cid, "the automatic vertebra map")
        return middle_slice_of_label(vertebra, label, vertebra.path, cid), "l3_auto"
    raise UserError(f"case {cid}: image {spec.image} is a 3D volume of {image.n_slices} slices; "
                    f"add slice_index, instance_number or vertebra_mask + vertebra_label to the "
                    f"manifest{hint}")

