"""Reading evaluation inputs: one CT slice or one mask per file, with its (row, col) spacing in mm.

Every evaluation command (measure, evaluate, observers) reads through these functions so that file
naming, label handling and geometry checks behave the same everywhere.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_xfer.errors import UserError

#: File endings the evaluation commands read (longest first so `.nii.gz` wins over `.gz`).
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".png")

#: nnU-Net's suffix of the first (here: only) image channel, `<case>_0000.nii.gz`.
CHANNEL_SUFFIX = "_0000"

#: Relative tolerance when comparing spacings of an image and its mask.
SPACING_RTOL = 1e-4


def case_id_from_filename(name: str | Path, channel_suffix: bool = False) -> str:
    """Case id of an image or mask file: the name without its ending (and, with
    ``channel_suffix``, without nnU-Net's ``_0000`` channel suffix of image files).

    `case_007.nii.gz` → `case_007`; `case_007_0000.nii.gz` → `case_007` with ``channel_suffix``.
    Masks never carry the suffix, so a mask `L3_0000.nii.gz` is case `L3_0000`.
    """
    name = Path(name).name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    if channel_suffix and name.endswith(CHANNEL_SUFFIX):
        name = name[: -len(CHANNEL_SUFFIX)]
    return name


def is_slice_file(path: Path) -> bool:
    """Whether a file has one of the endings in :data:`IMAGE_SUFFIXES` (skips json, csv, pkl...)."""
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def list_cases(folder: Path, what: str = "files",
               channel_suffix: bool | None = None) -> dict[str, Path]:
    """Map case id → file for every slice file in ``folder``; UserError if missing, empty or ambiguous.

    ``channel_suffix`` says whether file names end in nnU-Net's ``_0000`` channel suffix. None
    (default): yes for a folder of images (``what`` mentions images) in which every file ends in
    ``_0000``, as in nnU-Net's imagesTr/imagesTs; no otherwise (masks, or images named
    ``<case>.nii.gz`` whose case ids may themselves end in ``_0000``, like the phantom's).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder of {what}")
    paths = [p for p in sorted(folder.iterdir()) if is_slice_file(p)]
    if not paths:
        raise UserError(f"{folder}: no {what} found (expected "
                        f"{', '.join(IMAGE_SUFFIXES)} files named by case)")
    if channel_suffix is None:
        channel_suffix = "image" in what.lower() and all(
            case_id_from_filename(p).endswith(CHANNEL_SUFFIX) for p in paths)
    cases: dict[str, Path] = {}
    for path in paths:
        case = case_id_from_filename(path.name, channel_suffix)
        if case in cases:
            raise UserError(f"{folder}: case {case} appears twice ({cases[case].name}, {path.name});"
                            " keep one file per case")
        cases[case] = path
    return cases


def images_for_cases(folder: Path, case_ids: list[str], what: str = "images") -> dict[str, Path]:
    """The image of each case in ``folder``: ``<case>_0000.<ending>`` (nnU-Net style) if present,
    else ``<case>.<ending>``; naming may differ between files. UserError naming the first case
    without an image."""
    by_stem = list_cases(folder, what, channel_suffix=False)
    found: dict[str, Path] = {}
    lacking = []
    for case in case_ids:
        path = by_stem.get(case + CHANNEL_SUFFIX, by_stem.get(case))
        if path is None:
            lacking.append(case)
        else:
            found[case] = path
    if lacking:
        more = f"; {len(lacking) - 1} more cases lack one" if len(lacking) > 1 else ""
        raise UserError(f"case {lacking[0]}: no image in {folder} (expected {lacking[0]}"
                        f"{CHANNEL_SUFFIX}.nii.gz or {lacking[0]}.nii.gz){more}")
    return found


def read_slice(path: str | Path) -> tuple[np.ndarray, tuple[float, float]]:
    """Read a 2D image (or a 3D image with exactly one slice) as a (rows, cols) array.

    Returns the array and its (row, col) spacing in mm, i.e. SimpleITK's (x, y) spacing reversed.
    """
    path = Path(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise UserError(f"{path}: cannot read ({str(e).strip().splitlines()[-1]})") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise UserError(f"{path}: has {img.GetNumberOfComponentsPerPixel()} channels per pixel;"
                        " give a single-channel (grey or label) image")
    arr = sitk.GetArrayFromImage(img)
    spacing_zyx = tuple(float(s) for s in reversed(img.GetSpacing()))
    if arr.ndim == 3:
        keep = [ax for ax in range(3) if arr.shape[ax] != 1]
        if len(keep) != 2:
            raise UserError(f"{path}: is a 3D image of shape {arr.shape}; give one slice "
                            "(convert the volume with `nnunet-xfer convert` first)")
        arr = arr.reshape(arr.shape[keep[0]], arr.shape[keep[1]])
        spacing = (spacing_zyx[keep[0]], spacing_zyx[keep[1]])
    elif arr.ndim == 2:
        spacing = (spacing_zyx[0], spacing_zyx[1])
    else:
        raise UserError(f"{path}: has {arr.ndim} dimensions; give a 2D slice")
    return arr, spacing


def read_mask(path: str | Path, label: int = 1,
              other_labels: bool | None = None) -> tuple[np.ndarray, tuple[float, float]]:
    """Read a mask file as a boolean array (True where the value equals ``label``) and its spacing.

    ``other_labels`` says whether values other than 0 and ``label`` may be present (and are then
    ignored). The default (None) allows them only when a non-default ``label`` was chosen: a plain
    muscle mask must be binary 0/1, so a multi-label map read with label 1 raises a UserError that
    names the file and suggests ``--label`` (pass ``other_labels=True`` to pick label 1 from a
    multi-label map).
    """
    arr, spacing = read_slice(path)
    values = np.unique(arr)
    if not np.all(np.equal(np.mod(values, 1), 0)):
        raise UserError(f"{path}: mask has non-integer values; give a label image")
    allow_others = (label != 1) if other_labels is None else other_labels
    extra = sorted(int(v) for v in values if v not in (0, label))
    if extra and not allow_others:
        shown = ", ".join(map(str, extra[:5])) + (", ..." if len(extra) > 5 else "")
        raise UserError(f"{path}: mask has label values other than 0/{label} ({shown});"
                        " use --label to pick the muscle label")
    return arr == label, spacing


def check_same_geometry(a_spacing: tuple[float, float], a_shape: tuple[int, ...],
                        b_spacing: tuple[float, float], b_shape: tuple[int, ...],
                        case: str) -> None:
    """UserError naming ``case`` when two slices differ in shape or (row, col) spacing."""
    if tuple(a_shape) != tuple(b_shape):
        raise UserError(f"case {case}: shape {tuple(b_shape)} differs from its reference "
                        f"{tuple(a_shape)}; resample it onto the reference grid")
    if not np.allclose(a_spacing, b_spacing, rtol=SPACING_RTOL, atol=0):
        raise UserError(f"case {case}: spacing {tuple(round(s, 6) for s in b_spacing)} mm differs "
                        f"from its reference {tuple(round(s, 6) for s in a_spacing)} mm;"
                        " resample it onto the reference grid")
