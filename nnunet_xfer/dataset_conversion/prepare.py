"""Turn one :class:`CaseSpec` into a checked 2D image slice and a 0/1 muscle mask.

All bad-input checks of one case live here, so each failure names the case and the file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_xfer.dataset_conversion.labels import format_label_values, parse_label_values
from nnunet_xfer.dataset_conversion.manifest import CaseSpec
from nnunet_xfer.dataset_conversion.readers import nifti_has_nonfinite, read_image, read_mask
from nnunet_xfer.dataset_conversion.slice_selection import (check_index, extract_slice, is_volume,
                                                            middle_slice_of_label, n_slices)
from nnunet_xfer.errors import UserError


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


def same_geometry(a: sitk.Image, b: sitk.Image) -> str | None:
    """None when ``a`` and ``b`` share size, spacing, origin and direction; else what differs."""
    if a.GetDimension() != b.GetDimension() or a.GetSize() != b.GetSize():
        return f"size {a.GetSize()} vs {b.GetSize()}"
    sa, sb = np.array(a.GetSpacing()), np.array(b.GetSpacing())
    if not np.allclose(sa, sb, rtol=1e-4, atol=1e-6):
        return f"spacing {tuple(sa)} vs {tuple(sb)}"
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), rtol=0, atol=1e-3 * float(sa.max()) + 1e-4):
        return f"origin {a.GetOrigin()} vs {b.GetOrigin()}"
    if not np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=1e-4):
        return f"direction {a.GetDirection()} vs {b.GetDirection()}"
    return None


def _require_same(image: sitk.Image, other: sitk.Image, what: str, path: Path, image_path: Path,
                  case: str) -> None:
    diff = same_geometry(image, other)
    if diff is not None:
        raise UserError(f"case {case}: {what} {path} does not match image {image_path} ({diff}); "
                        f"the {what} must have the image's geometry")


def _check_hu(image: np.ndarray, path: Path, index: int | None, case: str,
              allow_non_hu: bool) -> None:
    if image.dtype.kind == "f" and (not np.isfinite(image).all()
                                    or nifti_has_nonfinite(path, index)):
        raise UserError(f"case {case}: image {path} contains NaN or inf values in the chosen slice; "
                        f"fix the image")
    if allow_non_hu:
        return
    if image.dtype in (np.uint8, np.int8, np.bool_) or (image.min() >= 0 and image.max() <= 255):
        raise UserError(f"case {case}: image {path} looks 8-bit / not in HU (dtype {image.dtype}, "
                        f"values {image.min()}..{image.max()}); give CT in Hounsfield units, or "
                        f"pass --allow-non-hu if you really mean it")


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


def prepare_case(spec: CaseSpec, labels: list[int] | None = None,
                 allow_non_hu: bool = False) -> PreparedCase:
    """Read, select the slice, and check one case; raises :class:`UserError` naming case and file."""
    cid = spec.case_id
    image = read_image(spec.image, cid)
    index: int | None = None
    if is_volume(image):
        if spec.slice_index is not None and spec.vertebra_mask is not None:
            raise UserError(f"case {cid}: give slice_index or vertebra_mask, not both")
        if spec.slice_index is not None:
            index = check_index(image, spec.slice_index, spec.image, cid)
        elif spec.vertebra_mask is not None:
            vertebra = read_image(spec.vertebra_mask, cid, what="vertebra mask")
            _require_same(image, vertebra, "vertebra mask", spec.vertebra_mask, spec.image, cid)
            index = middle_slice_of_label(vertebra, spec.vertebra_label, spec.vertebra_mask, cid)
        else:
            raise UserError(f"case {cid}: image {spec.image} is a 3D volume of {n_slices(image)} "
                            f"slices; add slice_index or vertebra_mask + vertebra_label to the "
                            f"manifest")
    elif spec.slice_index not in (None, 0):
        check_index(image, spec.slice_index, spec.image, cid)
    slice_img = extract_slice(image, index if index is not None else 0)
    values = sitk.GetArrayViewFromImage(slice_img)
    _check_hu(values, spec.image, index, cid, allow_non_hu)

    mask = read_mask(spec.mask, cid)
    if isinstance(mask, np.ndarray):
        if mask.shape != values.shape:
            raise UserError(f"case {cid}: mask {spec.mask} has shape {mask.shape} but the image "
                            f"slice is {values.shape} (rows x columns); use the slice's shape")
        mask_values = mask
    else:
        if is_volume(mask):
            if index is None:
                raise UserError(f"case {cid}: mask {spec.mask} is 3D but image {spec.image} is one "
                                f"slice; give the mask of that slice")
            _require_same(image, mask, "mask", spec.mask, spec.image, cid)
            mask_slice = extract_slice(mask, index)
        else:
            mask_slice = extract_slice(mask, 0)
            _require_same(slice_img, mask_slice, "mask", spec.mask, spec.image, cid)
        mask_values = sitk.GetArrayViewFromImage(mask_slice)
    muscle = _muscle(mask_values, labels, spec.mask, cid)
    out = sitk.GetImageFromArray(muscle)
    out.CopyInformation(slice_img)
    return PreparedCase(image=slice_img, mask=out, slice_index=index,
                        muscle_pixels=int(np.count_nonzero(muscle)))
