"""Read CT images and muscle masks from the formats users arrive with.

Images: a DICOM file, a DICOM series folder (ordered by SimpleITK's ImageSeriesReader, which applies
rescale slope/intercept so the values are HU), NIfTI, NRRD or MHA/MHD, 2D or 3D. Masks: the same
formats, or a 2D PNG/NPY array of the slice's shape. Every failure becomes a one-line
:class:`UserError` naming the file.
"""
from __future__ import annotations

import gzip
import re
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_xfer.errors import UserError

#: Volume formats SimpleITK reads with real geometry, by file ending.
VOLUME_ENDINGS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
#: 2D array formats accepted for masks only (no geometry: it is taken from the image).
ARRAY_ENDINGS: tuple[str, ...] = (".png", ".npy")
_PICTURE_ENDINGS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif")


def file_ending(path: Path) -> str:
    """Lower-case ending, with ``.nii.gz`` kept whole (``""`` for a folder or no ending)."""
    name = Path(path).name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return Path(name).suffix


def strip_ending(path: Path) -> str:
    """File name without its ending (``case1.nii.gz`` → ``case1``)."""
    name = Path(path).name
    ending = file_ending(path)
    return name[: len(name) - len(ending)] if ending else name


def is_dicom_file(path: Path) -> bool:
    """True for a ``.dcm`` file or any file with the DICOM preamble (``DICM`` at byte 128)."""
    path = Path(path)
    if file_ending(path) == ".dcm":
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _check_exists(path: Path, what: str, case: str) -> None:
    if not Path(path).exists():
        raise UserError(f"case {case}: {what} file {path} does not exist; fix the path in the manifest")


@contextmanager
def quiet_itk() -> Iterator[None]:
    """ITK's own warnings off (e.g. "No Series were found"): our one-line errors say what failed."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def _nifti_pixdim(path: Path) -> tuple[float, ...] | None:
    """The spatial ``pixdim`` entries of a NIfTI-1 header (ITK silently replaces zeros and NaN
    by 1 and turns a negative one into a flipped axis)."""
    opener = gzip.open if file_ending(path) == ".nii.gz" else open
    try:
        with opener(path, "rb") as f:
            header = f.read(348)
    except (OSError, EOFError):
        return None
    if len(header) < 348:
        return None
    for endian in ("<", ">"):
        if struct.unpack(endian + "i", header[:4])[0] == 348:
            ndim = struct.unpack(endian + "h", header[40:42])[0]
            if not 1 <= ndim <= 7:
                return None
            return struct.unpack(endian + "7f", header[80:108])[: min(ndim, 3)]
    return None  # NIfTI-2 or unknown: trust SimpleITK


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


def declared_spacing(path: Path, dicom_meta: dict | None = None) -> list[float] | None:
    """The pixel spacing a file states in its header, as written (None: it states none).

    SimpleITK silently reads a missing, zero or NaN spacing as 1 mm and a negative one as a
    flipped axis, so the header is read here. Formats without a readable header: ``[]`` (trusted).
    """
    ending = file_ending(path)
    if dicom_meta is not None:
        for tag in ("0028|0030", "0018|1164"):  # PixelSpacing, ImagerPixelSpacing
            if dicom_meta.get(tag, "").strip():
                return _numbers(dicom_meta[tag])
        return None
    if ending in (".nii", ".nii.gz"):
        pixdim = _nifti_pixdim(path)
        return [] if pixdim is None else list(pixdim)
    if ending in (".nrrd", ".nhdr"):
        return _nrrd_spacing(_text_header(path))
    if ending in (".mha", ".mhd"):
        field = _header_field(_text_header(path), ("elementspacing", "elementsize"), "=")
        return None if field is None else _numbers(field)
    return []


def check_declared_spacing(path: Path, case: str, what: str = "image",
                           dicom_meta: dict | None = None) -> None:
    """Refuse a file whose header states no spacing, or a zero, negative or non-finite one."""
    spacing = declared_spacing(path, dicom_meta)
    if spacing is None:
        raise UserError(f"case {case}: {what} {path} does not state its pixel spacing; "
                        f"write the true spacing (mm) into the file")
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        shown = ", ".join(f"{s:g}" for s in spacing)
        raise UserError(f"case {case}: {what} {path} has invalid pixel spacing ({shown}) in its "
                        f"header (zero, negative or not a number); write the true spacing (mm) "
                        f"into the file")


def check_spacing(image: sitk.Image, path: Path, case: str) -> None:
    """Refuse zero, negative or non-finite spacing."""
    spacing = image.GetSpacing()
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise UserError(f"case {case}: {path} has invalid pixel spacing {spacing}; "
                        f"write the true spacing (mm) into the file")


def _read_dicom_series(folder: Path, case: str) -> tuple[sitk.Image, dict]:
    reader = sitk.ImageSeriesReader()
    series = reader.GetGDCMSeriesIDs(str(folder))
    if not series:
        raise UserError(f"case {case}: folder {folder} holds no DICOM series; "
                        f"point the manifest at a DICOM series folder or an image file")
    if len(series) > 1:
        raise UserError(f"case {case}: folder {folder} holds {len(series)} DICOM series; "
                        f"put each series in its own folder")
    files = reader.GetGDCMSeriesFileNames(str(folder), series[0])
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    image = reader.Execute()
    meta = {k: reader.GetMetaData(0, k) for k in reader.GetMetaDataKeys(0)}
    return image, meta


def read_image(path: Path, case: str = "?", what: str = "image") -> sitk.Image:
    """Read an image (DICOM file/series folder, NIfTI, NRRD, MHA) with its true geometry.

    Values are kept as read (DICOM: rescale slope/intercept applied, i.e. HU). Raises
    :class:`UserError` for a missing or unreadable file or a missing/zero pixel spacing.
    """
    path = Path(path)
    _check_exists(path, what, case)
    if path.is_file() and file_ending(path) in _PICTURE_ENDINGS:
        raise UserError(f"case {case}: {what} {path} is a picture without pixel spacing; "
                        f"use DICOM, NIfTI, NRRD or MHA with the true spacing")
    if path.is_file() and file_ending(path) in (".nii", ".nii.gz", ".mha", ".mhd"):
        check_declared_spacing(path, case, what)  # before ITK, which warns or fails unclearly
    dicom_meta = None
    try:
        with quiet_itk():
            if path.is_dir():
                image, dicom_meta = _read_dicom_series(path, case)
            elif is_dicom_file(path):
                reader = sitk.ImageFileReader()
                reader.SetFileName(str(path))
                reader.SetImageIO("GDCMImageIO")
                image = reader.Execute()
                dicom_meta = {k: reader.GetMetaData(k) for k in reader.GetMetaDataKeys()}
            else:
                image = sitk.ReadImage(str(path))
    except UserError:
        raise
    except Exception as e:  # SimpleITK raises RuntimeError with a multi-line ITK message
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise UserError(f"case {case}: cannot read {what} {path} ({first[:160]}); "
                        f"check that it is a DICOM, NIfTI, NRRD or MHA file") from None
    if image.GetDimension() not in (2, 3):
        raise UserError(f"case {case}: {what} {path} is {image.GetDimension()}D; give a 2D slice "
                        f"or a 3D volume")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise UserError(f"case {case}: {what} {path} has {image.GetNumberOfComponentsPerPixel()} "
                        f"channels per pixel (colour or vector image); give a single-channel CT "
                        f"image")
    check_spacing(image, path, case)
    check_declared_spacing(path, case, what, dicom_meta)
    return image


def nifti_has_nonfinite(path: Path, index: int | None) -> bool:
    """Whether a float NIfTI holds NaN/inf in slice ``index`` (None: the whole 2D image).

    ITK's NIfTI reader silently turns NaN and inf into 0, so the file is checked with nibabel.
    """
    if file_ending(path) not in (".nii", ".nii.gz"):
        return False
    import nibabel as nib  # a dependency of nnunetv2
    data = nib.load(str(path)).dataobj
    values = np.asarray(data[..., index] if index is not None and len(data.shape) >= 3 else data)
    return values.dtype.kind == "f" and not np.isfinite(values).all()


def read_mask(path: Path, case: str = "?") -> sitk.Image | np.ndarray:
    """Read a mask: a 2D ``np.ndarray`` for PNG/NPY (geometry comes from the image), else an image."""
    path = Path(path)
    _check_exists(path, "mask", case)
    ending = file_ending(path)
    if ending in ARRAY_ENDINGS:
        try:
            if ending == ".npy":
                arr = np.load(path, allow_pickle=False)
            else:
                from PIL import Image
                with Image.open(path) as im:
                    arr = np.asarray(im)
        except Exception as e:
            raise UserError(f"case {case}: cannot read mask {path} ({type(e).__name__}: "
                            f"{str(e)[:120]}); check the file") from None
        arr = np.squeeze(arr)
        if arr.ndim != 2:
            raise UserError(f"case {case}: mask {path} has shape {arr.shape}; a PNG/NPY mask must "
                            f"be one 2D slice (grey-scale, rows x columns)")
        return arr
    if path.is_file() and ending in _PICTURE_ENDINGS:
        raise UserError(f"case {case}: mask {path}: {ending} is not supported; use PNG, NPY, "
                        f"NIfTI, NRRD, MHA or DICOM")
    return read_image(path, case, what="mask")
