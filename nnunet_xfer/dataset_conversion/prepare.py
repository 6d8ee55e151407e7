"""Turn one :class:`CaseSpec` into a checked 2D image slice and a 0/1 muscle mask.

Files are read and checked by :mod:`nnunet_xfer.imaging` (format, truncation, spacing, NaN, HU,
image/mask grid); what is the case's own lives here: which slice, and which mask values are
muscle. The slice is written in canonical orientation (docs/conversion.md#orientation), the
orientation ``measure`` gives the network, so a model sees every image the same way round.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_xfer.dataset_conversion.labels import format_label_values, parse_label_values
from nnunet_xfer.dataset_conversion.manifest import CaseSpec
from nnunet_xfer.dataset_conversion.slice_selection import choose_slice
from nnunet_xfer.errors import UserError
from nnunet_xfer.imaging import Image, check_pair, read_image, read_mask


@dataclass
class PreparedCase:
    """A case ready to write: 2D HU slice, 2D uint8 mask with its geometry, and the chosen index."""

    image: sitk.Image
    mask: sitk.Image
    slice_index: int | None
    muscle_pixels: int


def parse_label_map(label_map: str | None) -> list[int] | None:
    """``"1,86-89"`` → ``[1, 86, 87, 88, 89]``: the mask values that count as muscle.

    None or blank: no label map (the mask must be 0/1). The syntax is
    :func:`~nnunet_xfer.dataset_conversion.labels.parse_label_values`.
    """
    if label_map is None or str(label_map).strip() == "":
        return None
    return parse_label_values(str(label_map), option="--label-map")


def _shown_values(values: np.ndarray, limit: int = 12) -> str:
    """Mask values for an error message: all of them, as label ranges where they are integers."""
    if np.array_equal(values, np.round(values)):
        return format_label_values(values.astype(np.int64), limit=limit)
    text = ", ".join(f"{v:g}" for v in values[:limit])
    return text + (f" … (+{values.size - limit} more)" if values.size > limit else "")


def _muscle(values: np.ndarray, labels: list[int] | None, path: Path, case: str) -> np.ndarray:
    """0/1 uint8 muscle mask from the mask's values."""
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise UserError(f"case {case}: mask {path} contains NaN or inf values; fix the mask")
    if values.dtype.kind in "biu":  # integer masks: no np.unique on the fast paths (convert's CPU)
        if labels is not None:
            return np.isin(values, labels).astype(np.uint8)
        if values.size and values.min() >= 0 and values.max() <= 1:
            return values.astype(np.uint8, copy=False)
    uniq = np.unique(values)
    if labels is None:
        bad = uniq[~np.isin(uniq, (0, 1))]
        if bad.size:
            raise UserError(f"case {case}: mask {path} has values other than 0/1 "
                            f"(it holds {_shown_values(uniq)}); pass "
                            f"--label-map with the muscle label(s), e.g. --label-map 1 or "
                            f"--label-map 1,86-89")
        return values.astype(np.uint8)
    if not np.array_equal(uniq, np.round(uniq)):
        raise UserError(f"case {case}: mask {path} has non-integer values; a label map needs "
                        f"integer labels")
    return np.isin(values, labels).astype(np.uint8)


def _mask_values(spec: CaseSpec, image: Image, slice_image: Image, index: int | None) -> np.ndarray:
    """The mask's values on the chosen slice, in the image's stored orientation."""
    cid = spec.case_id
    mask = read_mask(spec.mask, cid)
    if not mask.geometry_known:  # a PNG/NPY array: the image's geometry
        check_pair(slice_image, mask, cid)
        return mask.array
    if mask.is_volume:
        if index is None:
            raise UserError(f"case {cid}: mask {spec.mask} is 3D but image {spec.image} is one "
                            f"slice; give the mask of that slice")
        check_pair(image, mask, cid)
        return mask.slice(index).array
    mask_slice = mask.slice(0)
    check_pair(slice_image, mask_slice, cid)
    return mask_slice.array


def prepare_case(spec: CaseSpec, labels: list[int] | None = None,
                 allow_non_hu: bool = False) -> PreparedCase:
    """Read, select the slice, and check one case; raises :class:`UserError` naming case and file.

    The slice and its mask come out in canonical orientation (voxel values unchanged).
    """
    cid = spec.case_id
    image = read_image(spec.image, cid, allow_non_hu=allow_non_hu, series_uid=spec.series_uid)
    if not image.geometry_known:
        raise UserError(f"case {cid}: image {spec.image} is a picture without pixel spacing; use "
                        f"DICOM, NIfTI, NRRD or MHA with the true spacing")
    index, _source = choose_slice(spec, image)
    slice_image = image.slice(index if index is not None else 0)
    muscle = _muscle(_mask_values(spec, image, slice_image, index), labels, spec.mask, cid)
    canonical, turn = slice_image.canonical()
    muscle = np.ascontiguousarray(turn.apply(muscle))
    return PreparedCase(image=canonical.to_sitk(), mask=canonical.to_sitk(muscle),
                        slice_index=index, muscle_pixels=int(np.count_nonzero(muscle)))
