"""``read_image`` and ``read_mask``: every image file the package reads comes through here.

Formats: NIfTI (``.nii``/``.nii.gz``, read whole by :mod:`~nnunet_xfer.imaging.nifti`), NRRD,
MetaImage (``.mha``/``.mhd``), a DICOM file or series folder (:mod:`~nnunet_xfer.imaging.dicom`),
and for masks also 2D PNG and NPY arrays (no geometry: the image's applies). Each refusal is one
:class:`UserError` line naming the file (and the case, when given) and what to do:

* a missing file, something that is not a regular file, an unreadable, truncated or corrupt file
  (the whole payload is read and checked);
* a pixel spacing the header does not state, or states as zero, negative or NaN (SimpleITK would
  silently read 1 mm or a flipped axis);
* NaN or inf voxels;
* RGB / vector images, and images that are neither 2D nor 3D;
* images only: pictures without spacing (PNG, JPEG…) and 8-bit / non-HU values, unless
  ``allow_non_hu``.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_xfer.errors import UserError
from nnunet_xfer.imaging import nifti
from nnunet_xfer.imaging.dicom import is_dicom_file, read_dicom
from nnunet_xfer.imaging.image import Image, Slice
from nnunet_xfer.imaging.names import (ARRAY_ENDINGS, NIFTI_ENDINGS, PICTURE_ENDINGS, PNG_ENDING,
                                       file_ending)

#: ITK reader of each ending handled by ITK (naming it skips ITK's probing of every reader).
_ITK_IO = {".mha": "MetaImageIO", ".mhd": "MetaImageIO", ".nrrd": "NrrdImageIO",
           ".nhdr": "NrrdImageIO"}
_FORMAT = {".mha": "metaimage", ".mhd": "metaimage", ".nrrd": "nrrd", ".nhdr": "nrrd"}


def _case(case: str | None) -> str:
    return f"case {case}: " if case else ""


@contextmanager
def quiet_itk() -> Iterator[None]:
    """ITK's own warnings off (e.g. "No Series were found"): our one-line errors say what failed."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


@contextmanager
def _c_stderr(said: list[str]) -> Iterator[None]:
    """Keep what C++ code prints on the process's stderr (file descriptor 2) meanwhile, appended to
    ``said``: MetaIO prints "data not read completely" there, past ITK's warning switch, before
    it raises; the one-line error says it instead."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            said.append(caught.read(4096).decode("utf-8", errors="replace"))


# ---------------------------------------------------------------- spacing stated in the header
def _text_header(path: Path, limit: int = 8192) -> str:
    with open(path, "rb") as f:
        return f.read(limit).split(b"\n\n", 1)[0].decode("latin-1", errors="replace")


def _header_field(header: str, names: tuple[str, ...], separator: str) -> str | None:
    for line in header.splitlines():
        key, sep, value = line.partition(separator)
        if sep and key.strip().lower() in names:
            return value.strip()
    return None


def _numbers(text: str) -> list[float]:
    values = []
    for token in re.split(r"[\s,\\()]+", text):
        if token and token.lower() != "none":
            try:
                values.append(float(token))
            except ValueError:
                values.append(float("nan"))
    return values


def _nrrd_spacing(header: str) -> list[float] | None:
    spacings = _header_field(header, ("spacings",), ":")
    if spacings is not None:
        return _numbers(spacings)
    directions = _header_field(header, ("space directions",), ":")
    if directions is None:
        return None
    vectors = re.findall(r"\(([^)]*)\)", directions)
    return [float(np.linalg.norm(v)) if v and np.all(np.isfinite(v)) else float("nan")
            for v in (_numbers(vec) for vec in vectors)]


def declared_spacing(path: Path) -> list[float] | None:
    """The pixel spacing an NRRD or MetaImage header states, as written (None: it states none;
    ``[]`` for other formats, whose spacing is checked elsewhere)."""
    ending = file_ending(path)
    if ending in (".nrrd", ".nhdr"):
        return _nrrd_spacing(_text_header(path))
    if ending in (".mha", ".mhd"):
        field = _header_field(_text_header(path), ("elementspacing", "elementsize"), "=")
        return None if field is None else _numbers(field)
    return []


def _check_spacing(spacing, path: Path, case: str | None, what: str) -> None:
    """Refuse a spacing that is missing (None), zero, negative or not finite."""
    if spacing is None:
        raise UserError(f"{_case(case)}{what} {path} does not state its pixel spacing; "
                        f"write the true spacing (mm) into the file")
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        shown = ", ".join(f"{s:g}" for s in spacing)
        raise UserError(f"{_case(case)}{what} {path} has invalid pixel spacing ({shown}) in its "
                        f"header (zero, negative or not a number); write the true spacing (mm) "
                        f"into the file")


# ---------------------------------------------------------------- value checks
def check_finite(values: np.ndarray, path: Path, case: str | None = None,
                 what: str = "image") -> None:
    """Refuse NaN / inf voxels (a mask: as non-integer values)."""
    values = np.asarray(values)
    if values.dtype.kind not in "fc" or np.isfinite(values).all():
        return
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if what == "image":
        raise UserError(f"{_case(case)}image {path} contains NaN or inf values ({bad} NaN/inf "
                        f"voxels); fix the image")
    raise UserError(f"{_case(case)}{what} {path} has non-integer values ({bad} NaN or inf); "
                    f"give a label image")


def check_hu(values: np.ndarray, path: Path, case: str | None = None,
             allow_non_hu: bool = False) -> None:
    """Refuse values that look 8-bit rather than CT in HU, unless ``allow_non_hu``."""
    values = np.asarray(values)
    if allow_non_hu or values.size == 0:
        return
    lo, hi = values.min(), values.max()
    if values.dtype in (np.uint8, np.int8, np.bool_) or (lo >= 0 and hi <= 255):
        raise UserError(f"{_case(case)}image {path} looks 8-bit / not in HU (dtype {values.dtype}, "
                        f"values {lo}..{hi}); give CT in Hounsfield units, or pass --allow-non-hu "
                        f"if you really mean it")


# ---------------------------------------------------------------- formats
def _itk_error(e: Exception) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return (lines[-1] if lines else type(e).__name__)[:160]


def _from_sitk(img: sitk.Image, path: Path, fmt: str, **extra) -> Image:
    return Image.from_sitk(img, path, fmt, **extra)


def _shape_error(path: Path, case: str | None, what: str, dimension: int,
                 components: int) -> UserError | None:
    if components != 1:
        return UserError(f"{_case(case)}{what} {path} has {components} channels per pixel (colour "
                         f"or vector image); give a single-channel 2D slice or 3D volume")
    if dimension not in (2, 3):
        return UserError(f"{_case(case)}{what} {path} is {dimension}D; give a 2D slice or a 3D "
                         f"volume")
    return None


def _read_nifti(path: Path, case: str | None, what: str) -> Image:
    try:
        header, raw = nifti.read_payload(path)
    except UserError as e:
        raise UserError(f"{_case(case)}{e}") from None
    ndim = len(header.dims)
    error = _shape_error(path, case, what, ndim if any(n > 1 for n in header.dims[3:]) else 3,
                         header.components)
    if error is not None:
        raise error
    spatial = header.spatial_pixdim
    _check_spacing([s for k, s in enumerate(spatial) if k < 2 or header.dims[k] > 1],
                   path, case, what)  # before ITK, which would silently read 1 mm
    try:
        read = nifti.decode(path, header, raw)
    except UserError as e:
        raise UserError(f"{_case(case)}{e}") from None
    info = read.info
    error = _shape_error(path, case, what, len(info.size), info.components)
    if error is not None:
        raise error
    if read.array is None:  # not a plain scalar type: ITK decodes it
        with quiet_itk():
            img = sitk.ReadImage(str(path), imageIO="NiftiImageIO")
        return _from_sitk(img, path, "nifti")
    return Image(path, read.array, info.spacing, info.origin, info.direction, "nifti",
                 plane_header=_stated_plane(header, len(info.size)))


def _stated_plane(header: nifti.NiftiHeader, dimension: int) -> tuple[float | None, float | None]:
    """What a 2D NIfTI's header states about its slice: z offset and thickness (pixdim[3]; ITK
    writes 1 there as a placeholder, so 1 states nothing)."""
    if dimension != 2:
        return None, None
    z = header.z_offset if np.isfinite(header.z_offset) else None
    t = header.pixdim3
    return z, (float(t) if np.isfinite(t) and t > 0 and t != 1.0 else None)


def _read_array_file(path: Path, case: str | None, what: str) -> Image:
    """A 2D PNG / NPY array (no geometry)."""
    try:
        if file_ending(path) == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            from PIL import Image as PILImage
            with PILImage.open(path) as im:
                im.load()
                arr = np.asarray(im)
    except Exception as e:  # noqa: BLE001 - numpy and PIL raise many types for a bad file
        raise UserError(f"{_case(case)}cannot read {what} {path} ({type(e).__name__}: "
                        f"{str(e)[:120]}); it is truncated or damaged: check the file") from None
    arr = np.squeeze(arr)
    if arr.ndim != 2:
        raise UserError(f"{_case(case)}{what} {path} has shape {arr.shape}; a PNG/NPY {what} must "
                        f"be one 2D slice (grey-scale, rows x columns)")
    return Image(path, arr, (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0),
                 "npy" if file_ending(path) == ".npy" else "png", geometry_known=False)


def _read_dicom_image(path: Path, case: str | None, what: str,
                      series_uid: str | None = None) -> Image:
    with quiet_itk():
        try:
            img, series = read_dicom(path, case, series_uid)
        except RuntimeError as e:
            raise UserError(f"{_case(case)}cannot read {what} {path} ({_itk_error(e)}); it is "
                            f"truncated or damaged, or not DICOM") from None
    return _from_sitk(img, path, "dicom", dicom=series)


def _read_itk(path: Path, case: str | None, what: str) -> Image:
    """NRRD or MetaImage: the spacing its header states is checked before ITK reads it."""
    ending = file_ending(path)
    _check_spacing(declared_spacing(path), path, case, what)
    said: list[str] = []
    try:
        with quiet_itk(), _c_stderr(said):
            img = sitk.ReadImage(str(path), imageIO=_ITK_IO[ending])
    except RuntimeError as e:
        why = " ".join(" ".join(said).split())[:160] or _itk_error(e)
        raise UserError(f"{_case(case)}cannot read {what} {path} ({why}); it is truncated or "
                        f"damaged, or not a {_FORMAT[ending]} file") from None
    error = _shape_error(path, case, what, img.GetDimension(), img.GetNumberOfComponentsPerPixel())
    if error is not None:
        raise error
    return _from_sitk(img, path, _FORMAT[ending])


def _read(path: Path, case: str | None, what: str, arrays: bool,
          series_uid: str | None = None) -> Image:
    """Read one file or DICOM folder by its kind; every structural check but values."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{_case(case)}{what} file {path} does not exist; check the path")
    ending = file_ending(path)
    if series_uid is not None and not path.is_dir():
        raise UserError(f"{_case(case)}series_uid names a series of a DICOM folder, but {what} "
                        f"{path} is a file; leave series_uid empty or point to the folder")
    if path.is_dir():
        image = _read_dicom_image(path, case, what, series_uid)
    elif not path.is_file():
        raise UserError(f"{_case(case)}{what} {path} is not a regular file (a pipe, socket or "
                        f"device); give the {what} file itself")
    elif ending in NIFTI_ENDINGS:
        image = _read_nifti(path, case, what)
    elif arrays and ending in ARRAY_ENDINGS:
        image = _read_array_file(path, case, what)
    elif ending in _ITK_IO:
        image = _read_itk(path, case, what)
    elif is_dicom_file(path):
        image = _read_dicom_image(path, case, what)
    else:
        known = "NIfTI, NRRD, MHA, DICOM" + (", PNG or NPY" if arrays else "")
        raise UserError(f"{_case(case)}{what} {path}: {ending or 'a file without ending'} is not "
                        f"supported; use {known}")
    if image.geometry_known:
        error = _shape_error(path, case, what, image.dimension, 1)
        if error is not None:
            raise error
        _check_spacing(image.spacing, path, case, what)
    return image


def read_image(path: Path, case: str | None = None, what: str = "image",
               allow_non_hu: bool = False, series_uid: str | None = None) -> Image:
    """Read and check a CT image (NIfTI, NRRD, MHA, DICOM file or series folder).

    Values as stored (DICOM: rescale slope/intercept applied, i.e. HU). A DICOM folder holding
    several series is read by :func:`~nnunet_xfer.imaging.dicom.choose_series` (``series_uid``
    names one). ``allow_non_hu`` also
    admits a 2D PNG (no spacing: 1 mm is assumed and :attr:`Image.geometry_known` is False) and
    8-bit values. Raises :class:`UserError` for everything the module doc lists.
    """
    path = Path(path)
    if file_ending(path) in PICTURE_ENDINGS and not (allow_non_hu
                                                     and file_ending(path) == PNG_ENDING):
        raise UserError(f"{_case(case)}{what} {path} is a picture (no HU, no pixel spacing); give "
                        f"CT in Hounsfield units (DICOM, NIfTI, NRRD or MHA)"
                        + (", or pass --allow-non-hu if you really mean it (areas then assume 1 "
                           "mm pixels)" if file_ending(path) == PNG_ENDING else ""))
    image = _read(path, case, what, arrays=allow_non_hu, series_uid=series_uid)
    check_finite(image.array, path, case)
    check_hu(image.array, path, case, allow_non_hu)
    return image


def read_mask(path: Path, case: str | None = None, what: str = "mask") -> Image:
    """Read and check a mask or label map: the formats of :func:`read_image`, or a 2D PNG/NPY
    array whose geometry is the image's (:attr:`Image.geometry_known` False)."""
    path = Path(path)
    ending = file_ending(path)
    if ending in PICTURE_ENDINGS and ending != PNG_ENDING:
        raise UserError(f"{_case(case)}{what} {path}: {ending} is not supported; use PNG, NPY, "
                        f"NIfTI, NRRD, MHA or DICOM")
    image = _read(path, case, what, arrays=True)
    check_finite(image.array, path, case, what)
    return image


def _open_picture(path: Path, what: str):
    from PIL import Image as PILImage
    if not path.is_file():
        raise UserError(f"cannot read {what} {path}: not a regular file (a folder, pipe, device or "
                        f"broken link); fix or remove it")
    return PILImage.open(path)


def read_picture(path: Path, what: str = "image"):
    """A natural picture (JPEG, PNG, …: pretraining on natural images) read whole with Pillow, as
    a ``PIL.Image``. No HU, no spacing: these are not CT. UserError naming the file when it is no
    regular file, no picture, or truncated (Pillow refuses a picture cut short when it decodes
    every pixel, which this does)."""
    path = Path(path)
    try:
        im = _open_picture(path, what)
        im.load()
        return im
    except OSError as e:  # PIL's UnidentifiedImageError and "image file is truncated" included
        raise UserError(f"cannot read {what} {path} ({e}); fix or remove it") from None


def picture_size(path: Path, what: str = "image") -> tuple[int, int]:
    """(rows, columns) of a natural picture from its header (cheap: no pixel is decoded)."""
    path = Path(path)
    try:
        with _open_picture(path, what) as im:
            return im.size[1], im.size[0]
    except OSError as e:
        raise UserError(f"cannot read {what} {path} ({e}); fix or remove it") from None


# ---------------------------------------------------------------- slices for the evaluation
def load_slice(path: str | Path, case: str | None = None, canonical: bool = False) -> Slice:
    """A 2D image (or a 3D image with exactly one slice) as (rows, cols) values and its grid;
    ``canonical``: in canonical orientation (what the network sees).

    No HU check: evaluation reads the images ``convert`` already checked."""
    image = read_image(Path(path), case, allow_non_hu=True)
    return (image.canonical()[0] if canonical else image).plane(case)


#: What to do about a multi-label *prediction* (no option picks its label: it is a wrong model).
PREDICTION_HINT = ("a prediction of a muscle dataset holds 0 and 1 only: predict with this "
                   "dataset's own model")


def _label_error(path: Path, arr: np.ndarray, label: int, option: str,
                 hint: str | None = None) -> UserError:
    values = np.unique(arr)
    if not np.all(np.equal(np.mod(values, 1), 0)):
        return UserError(f"{path}: mask has non-integer values; give a label image")
    extra = [v for v in values.astype(np.int64).tolist() if v not in (0, label)]
    shown = ", ".join(map(str, extra[:5])) + (", ..." if len(extra) > 5 else "")
    return UserError(f"{path}: mask has label values other than 0/{label} ({shown});"
                     f" {hint or f'use {option} to pick the muscle label'}")


def mask_of_label(arr: np.ndarray, label: int, allow_others: bool, path: Path,
                  option: str = "--label", hint: str | None = None) -> np.ndarray:
    """``arr == label`` after checking the values: integers only, and (unless ``allow_others``)
    none but 0 and ``label``. Integer arrays are checked by their minimum and maximum (one pass
    each), the rest by counting; the set of values is listed only in the error message, with
    ``option`` (the command's option that picks the label) or, where no option can, ``hint``
    (e.g. :data:`PREDICTION_HINT`)."""
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
        raise _label_error(path, arr, label, option, hint)
    mask = arr == label
    if not allow_others and np.count_nonzero(mask) + np.count_nonzero(arr == 0) == arr.size:
        return mask
    with np.errstate(invalid="ignore"):
        integral = bool(np.all(np.mod(arr, 1) == 0))
    if integral and allow_others:
        return mask
    raise _label_error(path, arr, label, option, hint)


def load_mask(path: str | Path, label: int = 1, other_labels: bool | None = None,
              case: str | None = None, hint: str | None = None) -> Slice:
    """Read a mask file as a boolean array (True where the value equals ``label``) and its grid.

    ``other_labels`` says whether values other than 0 and ``label`` may be present (and are then
    ignored). The default (None) allows them only when a non-default ``label`` was chosen: a plain
    muscle mask must be binary 0/1, so a multi-label map read with label 1 raises a UserError that
    names the file and suggests ``--label`` (or says ``hint``).
    """
    path = Path(path)
    arr, geometry = read_mask(path, case).plane(case)
    allow_others = (label != 1) if other_labels is None else other_labels
    return Slice(mask_of_label(arr, label, allow_others, path, hint=hint), geometry)
