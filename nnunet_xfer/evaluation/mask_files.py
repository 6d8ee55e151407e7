"""Reading evaluation inputs: one CT slice or one mask per file, with its grid in physical space.

Every evaluation command (measure, evaluate, observers) reads through these functions so that file
naming, label handling and geometry checks behave the same everywhere. A slice's grid
(:class:`Geometry`) is its shape, (row, col) spacing in mm, the position of its first pixel and the
directions of its rows and columns; two masks are compared only when their grids agree
(:func:`check_geometry`).
"""
from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import SimpleITK as sitk

from nnunet_xfer.errors import UserError

# Our one-line errors carry ITK's reason; its own warning lines on stderr would precede them.
sitk.ProcessObject.SetGlobalWarningDisplay(False)

#: File endings the evaluation commands read (longest first so `.nii.gz` wins over `.gz`).
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".png")

#: ITK reader of each ending (naming it skips ITK's probing of every reader).
_IMAGE_IO = {".nii.gz": "NiftiImageIO", ".nii": "NiftiImageIO", ".mha": "MetaImageIO",
             ".mhd": "MetaImageIO", ".nrrd": "NrrdImageIO", ".nhdr": "NrrdImageIO",
             ".png": "PNGImageIO"}

#: nnU-Net's suffix of the first (here: only) image channel, `<case>_0000.nii.gz`.
CHANNEL_SUFFIX = "_0000"

#: Relative tolerance when comparing spacings of an image and its mask.
SPACING_RTOL = 1e-4
#: Tolerance of the first pixel's position, as a fraction of the smallest pixel spacing.
ORIGIN_TOL_PIXELS = 0.01
#: Tolerance of the direction cosines of rows and columns.
DIRECTION_ATOL = 1e-4


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


def has_slice_files(folder: Path) -> bool:
    """Whether ``folder`` is a folder holding at least one slice file."""
    return folder.is_dir() and any(is_slice_file(p) for p in folder.iterdir())


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
    """The image of each case by exact case id: ``<case>.<ending>``, or nnU-Net's
    ``<case>_0000.<ending>``; one image is never given to two cases.

    In a folder where every image ends in ``_0000`` (nnU-Net's imagesTr/imagesTs) the suffix is
    the channel; elsewhere ``<case>.<ending>`` wins, so cases ``x`` and ``x_0000`` each get their
    own. UserError naming the first case without an image, or two cases sharing one.
    """
    folder = Path(folder)
    by_stem = list_cases(folder, what, channel_suffix=False)
    nnunet_style = all(stem.endswith(CHANNEL_SUFFIX) for stem in by_stem)
    found: dict[str, Path] = {}
    lacking = []
    for case in case_ids:
        path = (by_stem.get(case + CHANNEL_SUFFIX) if nnunet_style
                else by_stem.get(case, by_stem.get(case + CHANNEL_SUFFIX)))
        if path is None:
            lacking.append(case)
        else:
            found[case] = path
    if lacking:
        more = f"; {len(lacking) - 1} more cases lack one" if len(lacking) > 1 else ""
        raise UserError(f"case {lacking[0]}: no image in {folder} (expected {lacking[0]}"
                        f"{CHANNEL_SUFFIX}.nii.gz or {lacking[0]}.nii.gz){more}")
    owner: dict[Path, str] = {}
    for case, path in found.items():
        if path in owner:
            raise UserError(f"cases {owner[path]} and {case} would both use {path.name}; name images "
                            f"<case>.nii.gz (exact case id) or all <case>{CHANNEL_SUFFIX}.nii.gz")
        owner[path] = case
    return found


@dataclass(frozen=True)
class Geometry:
    """Where a slice's pixels lie: shape, spacing and, in physical space (mm), the position of
    pixel [0, 0] and the unit directions in which the row and the column index grow."""

    shape: tuple[int, int]
    #: (row, col) pixel size in mm
    spacing: tuple[float, float]
    #: position of pixel [0, 0] (x, y, z) in mm; a 2D file lies at z = 0
    origin: tuple[float, float, float]
    #: direction of growing row index (x, y, z)
    row_axis: tuple[float, float, float]
    #: direction of growing column index (x, y, z)
    col_axis: tuple[float, float, float]
    #: True for a 2D file, which carries no slice position
    planar: bool = False

    @property
    def diagonal_mm(self) -> float:
        """Length of the image's diagonal in mm: no two of its pixels lie further apart."""
        return float(np.hypot(self.shape[0] * self.spacing[0], self.shape[1] * self.spacing[1]))


class Slice(NamedTuple):
    """A 2D array and its grid."""

    array: np.ndarray
    geometry: Geometry


def _pad3(v) -> tuple[float, float, float]:
    v = [float(x) for x in v]
    return tuple(v + [0.0] * (3 - len(v)))[:3]  # type: ignore[return-value]


def _read_image(path: Path) -> sitk.Image:
    io = next((v for k, v in _IMAGE_IO.items() if path.name.lower().endswith(k)), "")
    try:
        return sitk.ReadImage(str(path), imageIO=io)
    except RuntimeError as e:
        lines = [line for line in str(e).strip().splitlines() if line.strip()]
        raise UserError(f"{path}: cannot read ({lines[-1] if lines else 'unknown error'})") from None


def load_slice(path: str | Path) -> Slice:
    """Read a 2D image (or a 3D image with exactly one slice) as a (rows, cols) array and its grid.

    A NIfTI file that ends before its image data does is refused (ITK would fill the gap)."""
    return _load_nifti(Path(path), remember=False)


def _load_itk(path: Path) -> Slice:
    img = _read_image(path)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise UserError(f"{path}: has {img.GetNumberOfComponentsPerPixel()} channels per pixel;"
                        " give a single-channel (grey or label) image")
    arr = sitk.GetArrayFromImage(img)
    dim = img.GetDimension()
    if arr.ndim not in (2, 3) or dim != arr.ndim:
        raise UserError(f"{path}: has {arr.ndim} dimensions; give a 2D slice")
    if arr.ndim == 3:
        keep = [ax for ax in range(3) if arr.shape[ax] != 1]
        if len(keep) != 2:
            raise UserError(f"{path}: is a 3D image of shape {arr.shape}; give one slice "
                            "(convert the volume with `nnunet-xfer convert` first)")
        arr = arr.reshape(arr.shape[keep[0]], arr.shape[keep[1]])
    else:
        keep = [0, 1]
    spacing_xyz = img.GetSpacing()
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(dim, dim)
    # numpy axis a is ITK axis dim-1-a; an ITK axis's direction is a column of the matrix
    itk_axes = [dim - 1 - a for a in keep]
    geometry = Geometry(
        shape=(int(arr.shape[0]), int(arr.shape[1])),
        spacing=(float(spacing_xyz[itk_axes[0]]), float(spacing_xyz[itk_axes[1]])),
        origin=_pad3(img.GetOrigin()),
        row_axis=_pad3(direction[:, itk_axes[0]]), col_axis=_pad3(direction[:, itk_axes[1]]),
        planar=dim == 2)
    return Slice(arr, geometry)



# A NIfTI file's grid and voxel layout are a function of its 348-byte header. nnU-Net writes every
# prediction of a case with the same header, so after ITK has read one file with a given header
# (and the raw bytes decoded the same), later files with byte-identical headers are decoded
# directly: the same array and grid at half the cost. Anything unusual falls back to ITK.
_NIFTI_HEADER = 348
_MAX_LAYOUTS = 4096
_layouts: dict[bytes, "tuple[int, np.dtype, tuple[int, ...], Geometry] | None"] = {}


def _nifti_bytes(path: Path) -> tuple[bytes | None, bool]:
    """(the uncompressed bytes of a single-member ``.nii.gz`` or a ``.nii``, or None; whether a
    ``.nii.gz`` ends before its compressed stream does)."""
    name = path.name.lower()
    try:
        if name.endswith(".nii.gz"):
            inflate = zlib.decompressobj(31)
            raw = inflate.decompress(path.read_bytes())
            if not inflate.eof:
                return None, True
            if inflate.unused_data:
                return None, False
        elif name.endswith(".nii"):
            raw = path.read_bytes()
        else:
            return None, False
    except (OSError, zlib.error):
        return None, False
    return (raw if len(raw) > _NIFTI_HEADER + 4 else None), False


def _truncated(path: Path) -> UserError:
    return UserError(f"{path}: is truncated or damaged (it ends before its image data does); "
                     f"write it again")


def _layout_of(raw: bytes, read: Slice, path: Path
               ) -> "tuple[int, np.dtype, tuple[int, ...], Geometry] | None":
    """How ``raw`` holds the array ITK read from it, when decoding it directly gives that array.

    UserError when the file is shorter than its header says: ITK would read the missing voxels as
    whatever its buffer held.
    """
    if struct.unpack("<i", raw[:4])[0] != _NIFTI_HEADER:
        return None
    offset = int(struct.unpack("<f", raw[108:112])[0])
    arr = read.array
    if offset < _NIFTI_HEADER:
        return None
    if offset + arr.nbytes > len(raw):
        raise _truncated(path)
    dtype = arr.dtype.newbyteorder("<")
    direct = np.frombuffer(raw, dtype=dtype, count=arr.size, offset=offset)
    if not np.array_equal(direct.reshape(arr.shape), arr):
        return None
    return offset, dtype, arr.shape, read.geometry


def _load_nifti(path: Path, remember: bool = True) -> Slice:
    """:func:`load_slice` that refuses truncated NIfTI files and, with ``remember``, decodes a
    file directly when ITK already read a file with the same header."""
    if not path.name.lower().endswith((".nii.gz", ".nii")):
        return _load_itk(path)
    raw, truncated = _nifti_bytes(path)
    if truncated:
        raise _truncated(path)
    if raw is None:
        return _load_itk(path)
    key = raw[:_NIFTI_HEADER]
    layout = _layouts.get(key) if remember else None
    if layout is not None:
        offset, dtype, shape, geometry = layout
        count = int(np.prod(shape))
        if offset + count * dtype.itemsize > len(raw):
            raise _truncated(path)
        arr = np.frombuffer(raw, dtype=dtype, count=count, offset=offset).reshape(shape)
        return Slice(arr.astype(dtype.newbyteorder("="), copy=True), geometry)
    read = _load_itk(path)
    found = _layout_of(raw, read, path)
    if remember and key not in _layouts:
        if len(_layouts) >= _MAX_LAYOUTS:
            _layouts.clear()
        _layouts[key] = found
    return read


#: What to do about a multi-label mask, by the command that reads it (its real option).
LABEL_HINT = "use --label to pick the muscle label"
LABEL_MAP_HINT = "use --label-map to name the muscle label(s), e.g. --label-map 1 or --label-map 1,86-89"
PREDICTION_HINT = ("a prediction of a muscle dataset holds 0 and 1 only: predict with this "
                   "dataset's own model")


def _label_error(path: Path, arr: np.ndarray, label: int, hint: str = LABEL_HINT) -> UserError:
    values = np.unique(arr)
    if not np.all(np.equal(np.mod(values, 1), 0)):
        return UserError(f"{path}: mask has non-integer values; give a label image")
    extra = [v for v in values.astype(np.int64).tolist() if v not in (0, label)]
    shown = ", ".join(map(str, extra[:5])) + (", ..." if len(extra) > 5 else "")
    return UserError(f"{path}: mask has label values other than 0/{label} ({shown}); {hint}")


def mask_of_label(arr: np.ndarray, label: int, allow_others: bool, path: Path,
                  hint: str = LABEL_HINT) -> np.ndarray:
    """``arr == label`` after checking the values: integers only, and (unless ``allow_others``)
    none but 0 and ``label``. Integer arrays are checked by their minimum and maximum (one pass
    each), the rest by counting; the set of values is listed only in the error message."""
    kind = arr.dtype.kind
    if kind == "b":
        arr = arr.view(np.uint8)
        kind = "u"
    if kind in "ui":
        lo, hi = arr.min(), arr.max()
        if lo >= 0 and hi <= 1 and label == 1:  # the usual binary mask
            return arr.astype(bool)
        mask = arr == label
        if allow_others or np.count_nonzero(mask) + np.count_nonzero(arr == 0) == arr.size:
            return mask
        raise _label_error(path, arr, label, hint)
    mask = arr == label
    if not allow_others and np.count_nonzero(mask) + np.count_nonzero(arr == 0) == arr.size:
        return mask
    with np.errstate(invalid="ignore"):
        integral = bool(np.all(np.mod(arr, 1) == 0))
    if integral and allow_others:
        return mask
    raise _label_error(path, arr, label, hint)


def load_mask(path: str | Path, label: int = 1, other_labels: bool | None = None,
              hint: str = LABEL_HINT) -> Slice:
    """Read a mask file as a boolean array (True where the value equals ``label``) and its grid.

    ``other_labels`` says whether values other than 0 and ``label`` may be present (and are then
    ignored). The default (None) allows them only when a non-default ``label`` was chosen: a plain
    muscle mask must be binary 0/1, so a multi-label map read with label 1 raises a UserError that
    names the file and says what to do (``hint``: the calling command's own option; pass
    ``other_labels=True`` to pick label 1 from a multi-label map).
    """
    path = Path(path)
    arr, geometry = _load_nifti(path)
    allow_others = (label != 1) if other_labels is None else other_labels
    return Slice(mask_of_label(arr, label, allow_others, path, hint), geometry)


def read_slice(path: str | Path) -> tuple[np.ndarray, tuple[float, float]]:
    """Read a 2D image (or a 3D image with exactly one slice) as a (rows, cols) array.

    Returns the array and its (row, col) spacing in mm, i.e. SimpleITK's (x, y) spacing reversed.
    """
    arr, geometry = load_slice(path)
    return arr, geometry.spacing


def read_mask(path: str | Path, label: int = 1, other_labels: bool | None = None,
              hint: str = LABEL_HINT) -> tuple[np.ndarray, tuple[float, float]]:
    """:func:`load_mask` as (boolean array, (row, col) spacing in mm)."""
    mask, geometry = load_mask(path, label, other_labels, hint)
    return mask, geometry.spacing


def check_same_geometry(a_spacing: tuple[float, float], a_shape: tuple[int, ...],
                        b_spacing: tuple[float, float], b_shape: tuple[int, ...],
                        case: str) -> None:
    """UserError naming ``case`` when two slices differ in shape or (row, col) spacing."""
    if tuple(a_shape) != tuple(b_shape):
        raise UserError(f"case {case}: shape {tuple(b_shape)} differs from its reference "
                        f"{tuple(a_shape)}; resample it onto the reference grid")
    a0, a1 = (float(s) for s in a_spacing)
    b0, b1 = (float(s) for s in b_spacing)
    if abs(a0 - b0) > SPACING_RTOL * abs(b0) or abs(a1 - b1) > SPACING_RTOL * abs(b1):
        raise UserError(f"case {case}: spacing {(round(b0, 6), round(b1, 6))} mm differs "
                        f"from its reference {(round(a0, 6), round(a1, 6))} mm;"
                        " resample it onto the reference grid")


def _fmt(v) -> str:
    return "(" + ", ".join(f"{x:.3g}" for x in v) + ")"


def check_geometry(reference: Geometry, other: Geometry, case: str) -> None:
    """UserError naming ``case`` when ``other`` does not lie on ``reference``'s grid.

    Compared: shape, spacing, the directions of rows and columns, and the position of pixel [0, 0]
    (within :data:`ORIGIN_TOL_PIXELS` of a pixel). When either file is 2D only the in-plane offset
    counts, since a 2D file carries no slice position.
    """
    check_same_geometry(reference.spacing, reference.shape, other.spacing, other.shape, case)
    for name, a, b in (("row", reference.row_axis, other.row_axis),
                       ("column", reference.col_axis, other.col_axis)):
        if max(abs(x - y) for x, y in zip(a, b)) > DIRECTION_ATOL:
            raise UserError(f"case {case}: {name} direction {_fmt(b)} differs from its reference "
                            f"{_fmt(a)}; resample it onto the reference grid")
    shift = np.subtract(other.origin, reference.origin)
    if reference.planar or other.planar:
        shift = np.array([shift @ np.asarray(reference.row_axis),
                          shift @ np.asarray(reference.col_axis)])
    tolerance = ORIGIN_TOL_PIXELS * min(reference.spacing)
    if np.abs(shift).max() > tolerance:
        raise UserError(f"case {case}: origin {_fmt(other.origin)} mm lies "
                        f"{float(np.linalg.norm(shift)):.3g} mm from its reference's "
                        f"{_fmt(reference.origin)} mm (another grid position); "
                        "resample it onto the reference grid")
