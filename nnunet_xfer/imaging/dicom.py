"""DICOM input: one CT file, or one axial CT series per folder, checked for what SimpleITK would
silently accept.

SimpleITK's series reader (GDCM) orders the instances by position and applies rescale
slope/intercept, so values are HU. It also silently leaves out a file it cannot parse (a
truncated instance) and stacks a series with a missing slice as if nothing were missing. So every
DICOM file of the folder must be an instance of the one series, the instances must be evenly
spaced, and the headers (read with pydicom, pixel data left encoded) must describe one axial CT
series: no second series, no localiser, no other modality, no mixed or non-axial orientation.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_xfer.errors import UserError
from nnunet_xfer.imaging.names import file_ending

#: Tags that state the pixel spacing (PixelSpacing, ImagerPixelSpacing), in the order trusted.
SPACING_KEYWORDS = ("PixelSpacing", "ImagerPixelSpacing")
#: A gap between neighbouring instances this many times the smallest one means a missing slice.
MISSING_SLICE_FACTOR = 1.5


@dataclass
class DicomSeries:
    """The instances of a DICOM input in slice order, with their headers (pixel data not read)."""

    files: list[Path]
    #: pydicom Datasets read with ``stop_before_pixels``, in the order of :attr:`files`
    headers: list

    @property
    def first(self):
        """The header of the first instance (patient and series attributes)."""
        return self.headers[0]

    def instance_at(self, position, tolerance: float) -> tuple[Path, object] | None:
        """The (file, header) whose ImagePositionPatient is ``position`` (mm), if any."""
        if len(self.files) == 1:
            return self.files[0], self.headers[0]
        for f, h in zip(self.files, self.headers):
            ipp = h.get("ImagePositionPatient")
            if ipp is not None and np.allclose(np.asarray(ipp, float), position, atol=tolerance):
                return f, h
        return None


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


def dicom_files(folder: Path) -> list[Path]:
    """The DICOM files of a folder (hidden files and DICOMDIR left out)."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name.upper() != "DICOMDIR"
                  and is_dicom_file(p))


def _case(case: str | None) -> str:
    return f"case {case}: " if case else ""


def _numbers(value) -> list[float]:
    """A DICOM decimal string or multi-value as floats (NaN for what is not a number)."""
    from pydicom.multival import MultiValue
    items = value if isinstance(value, (list, tuple, MultiValue)) else [value]
    out = []
    for v in items:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            out.append(float("nan"))
    return out


def _headers(files: list[Path], case: str | None) -> list:
    import pydicom
    headers = []
    for f in files:
        try:
            headers.append(pydicom.dcmread(f, stop_before_pixels=True))
        except Exception as e:  # noqa: BLE001 - pydicom raises many types for a damaged file
            raise UserError(f"{_case(case)}{f} is truncated or damaged (not a readable DICOM "
                            f"file: {type(e).__name__}); export it again") from None
    return headers


def check_headers(series: DicomSeries, path: Path, case: str | None) -> None:
    """Refuse a second series, a localiser, another modality, mixed or non-axial orientations and
    a missing or invalid pixel spacing."""
    headers = series.headers
    uids = {str(h.get("SeriesInstanceUID", "")) for h in headers}
    if len(uids) > 1:
        raise UserError(f"{_case(case)}folder {path} holds {len(uids)} DICOM series; put each "
                        f"series in its own folder and point to the axial CT series")
    for f, h in zip(series.files, headers):
        kinds = [str(v).upper() for v in (h.get("ImageType") or [])]
        if "LOCALIZER" in kinds or "SCOUT" in kinds or "TOPOGRAM" in kinds:
            raise UserError(f"{_case(case)}{f.name if Path(path).is_dir() else path} is a localiser "
                            f"(scout) image, not an axial CT series; point to the axial series")
        modality = str(h.get("Modality", "CT")).upper()
        if modality not in ("CT", ""):
            raise UserError(f"{_case(case)}{path} is a {modality} series, not CT; give the CT series")
    orientations = [np.asarray(h.ImageOrientationPatient, float) for h in headers
                    if h.get("ImageOrientationPatient") is not None]
    if orientations:
        first = orientations[0]
        if any(not np.allclose(o, first, atol=1e-3) for o in orientations[1:]):
            raise UserError(f"{_case(case)}series {path} mixes image orientations (e.g. axial and "
                            f"reformatted slices); export one orientation per series")
        normal = np.cross(first[:3], first[3:])
        if abs(normal[2]) < 0.9:
            raise UserError(f"{_case(case)}series {path} is not axial (slice normal "
                            f"{np.round(normal, 2).tolist()}); give the axial CT series")
    for h in headers[:1]:
        stated = next((h.get(k) for k in SPACING_KEYWORDS if h.get(k) not in (None, "")), None)
        if stated is None:
            raise UserError(f"{_case(case)}image {path} does not state its pixel spacing; "
                            f"write the true spacing (mm) into the file")
        values = _numbers(stated)
        if not values or not all(np.isfinite(v) and v > 0 for v in values):
            shown = ", ".join(f"{v:g}" for v in values)
            raise UserError(f"{_case(case)}image {path} has invalid pixel spacing ({shown}) in its "
                            f"header (zero, negative or not a number); write the true spacing "
                            f"(mm) into the file")


def _check_positions(series: DicomSeries, path: Path, case: str | None) -> None:
    """Refuse instances that share a position or leave a gap (a missing or unreadable slice)."""
    positions, normal = [], None
    for h in series.headers:
        ipp, iop = h.get("ImagePositionPatient"), h.get("ImageOrientationPatient")
        if ipp is None or iop is None:
            return  # nothing to check against; ITK orders by instance
        if normal is None:
            iop = np.asarray(iop, float)
            normal = np.cross(iop[:3], iop[3:])
        positions.append(float(np.asarray(ipp, float) @ normal))
    if len(positions) < 2:
        return
    gaps = np.diff(np.sort(positions))
    if np.any(gaps < 1e-3):
        raise UserError(f"{_case(case)}series {path} holds two instances at one position; export "
                        f"the series again (one file per slice)")
    usual = float(gaps.min())
    if gaps.max() > MISSING_SLICE_FACTOR * usual:
        raise UserError(f"{_case(case)}series {path} has a gap of {gaps.max():.3g} mm between "
                        f"slices {usual:.3g} mm apart: a slice is missing or unreadable; copy "
                        f"the whole series")


def read_dicom(path: Path, case: str | None = None) -> tuple[sitk.Image, DicomSeries]:
    """A DICOM file or series folder as a SimpleITK image (HU) and its :class:`DicomSeries`."""
    path = Path(path)
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        series_ids = reader.GetGDCMSeriesIDs(str(path))
        if not series_ids:
            raise UserError(f"{_case(case)}folder {path} holds no DICOM series; point to a DICOM "
                            f"series folder or an image file")
        if len(series_ids) > 1:
            raise UserError(f"{_case(case)}folder {path} holds {len(series_ids)} DICOM series; put "
                            f"each series in its own folder and point to the axial CT series")
        files = [Path(f) for f in reader.GetGDCMSeriesFileNames(str(path), series_ids[0])]
        left_out = sorted(set(dicom_files(path)) - set(files))
        if left_out:
            raise UserError(f"{_case(case)}{left_out[0]} is truncated or damaged (a DICOM file "
                            f"the series reader cannot read){_more(left_out)}; copy the series "
                            f"again")
        series = DicomSeries(files, _headers(files, case))
        check_headers(series, path, case)
        _check_positions(series, path, case)
        reader.SetFileNames([str(f) for f in files])
        image = reader.Execute()
    else:
        series = DicomSeries([path], _headers([path], case))
        check_headers(series, path, case)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.SetImageIO("GDCMImageIO")
        image = reader.Execute()
    return image, series


def _more(items: list) -> str:
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""
