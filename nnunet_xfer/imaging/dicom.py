"""DICOM input: one CT file, or the axial CT series of a folder, checked for what SimpleITK would
silently accept.

SimpleITK's series reader (GDCM) orders the instances by position and applies rescale
slope/intercept, so values are HU. It also silently leaves out a file it cannot parse (a
truncated instance) and stacks a series with a missing slice as if nothing were missing. So every
DICOM file of the folder must be an instance of the one series, the instances must be evenly
spaced, and the headers (read with pydicom, pixel data left encoded) must describe one axial CT
series: no localiser, no other modality, no mixed or non-axial orientation.

A folder holding several series (a whole study) is read by :func:`choose_series`'s rule: the
series named by ``series_uid``, else the CT series (not a localiser, axial) whose ImageType says
ORIGINAL, PRIMARY and AXIAL, then the one with the most slices, then the thinnest; a tie is
refused, naming the series to choose from. :attr:`DicomSeries.choice` says how it was chosen.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_xfer.errors import UserError
from nnunet_xfer.imaging.names import DICOM_ENDING, file_ending

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
    #: how the series was chosen from its folder ("the only series", "series_uid", or the rule)
    choice: str = "the only series"

    @property
    def uid(self) -> str:
        """The SeriesInstanceUID ("" when the files state none)."""
        return str(self.first.get("SeriesInstanceUID", "") or "")

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
    if file_ending(path) == DICOM_ENDING:
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


def _is_localiser(h) -> bool:
    kinds = {str(v).upper() for v in (h.get("ImageType") or [])}
    return bool(kinds & {"LOCALIZER", "SCOUT", "TOPOGRAM"})


def _is_axial(h) -> bool:
    iop = h.get("ImageOrientationPatient")
    if iop is None:
        return True  # nothing says otherwise; check_headers judges the chosen series
    o = np.asarray(_numbers(iop), float)
    return o.size == 6 and bool(np.all(np.isfinite(o))) and abs(np.cross(o[:3], o[3:])[2]) >= 0.9


def _thickness(headers: list) -> float:
    """SliceThickness of a series, else its smallest gap between slices (inf when unknown)."""
    stated = _numbers(headers[0].get("SliceThickness", ""))
    if stated and np.isfinite(stated[0]) and stated[0] > 0:
        return stated[0]
    z = sorted(_numbers(h.get("ImagePositionPatient", [0, 0, 0]))[-1] for h in headers)
    gaps = [b - a for a, b in zip(z, z[1:]) if b - a > 1e-3]
    return min(gaps) if gaps else float("inf")


def _describe(uid: str, headers: list) -> str:
    text = str(headers[0].get("SeriesDescription", "") or "").strip()
    return f"{uid or '(no UID)'} ({len(headers)} slices{', ' + text if text else ''})"


def choose_series(series: dict[str, list], path: Path, case: str | None,
                  series_uid: str | None = None) -> tuple[str, str]:
    """(SeriesInstanceUID, how it was chosen) of the series to read from a folder's series
    (``uid → headers``), by the rule of the module doc."""
    if series_uid is not None:
        if series_uid not in series:
            listed = "; ".join(_describe(u, h) for u, h in series.items())
            raise UserError(f"{_case(case)}folder {path} holds no series {series_uid} (its series: "
                            f"{listed}); check series_uid")
        return series_uid, "series_uid"
    if len(series) == 1:
        return next(iter(series)), "the only series"
    ct = {u: h for u, h in series.items()
          if str(h[0].get("Modality", "CT") or "CT").upper() == "CT"
          and not any(_is_localiser(x) for x in h) and _is_axial(h[0])}
    if not ct:
        raise UserError(f"{_case(case)}folder {path} holds {len(series)} DICOM series and none is "
                        f"an axial CT series; point to the axial CT series")

    def rank(uid: str) -> tuple:
        h = ct[uid]
        kinds = {str(v).upper() for v in (h[0].get("ImageType") or [])}
        return ({"ORIGINAL", "PRIMARY", "AXIAL"} <= kinds, len(h), -_thickness(h))
    ranked = sorted(ct, key=rank, reverse=True)
    best = [u for u in ranked if rank(u) == rank(ranked[0])]
    if len(best) > 1:
        listed = "; ".join(_describe(u, ct[u]) for u in best)
        raise UserError(f"{_case(case)}folder {path} holds {len(series)} DICOM series and "
                        f"{len(best)} axial CT series alike by the rule (ORIGINAL/PRIMARY/AXIAL, "
                        f"slices, thickness): {listed}; name one in the series_uid column")
    original, n, thinnest = rank(best[0])
    return best[0], (f"rule: of {len(series)} series the axial CT"
                     f"{' ORIGINAL/PRIMARY/AXIAL' if original else ''} with most slices ({n}), "
                     f"thinnest ({-thinnest:g} mm)")


def _gdcm_files(path: Path, wanted: list[Path]) -> list[Path]:
    """The files of one series in GDCM's slice order (the order the series reader stacks)."""
    reader = sitk.ImageSeriesReader()
    wanted_set = set(wanted)
    best: list[Path] = []
    for gid in reader.GetGDCMSeriesIDs(str(path)):
        files = [Path(f) for f in reader.GetGDCMSeriesFileNames(str(path), gid)]
        if len(wanted_set & set(files)) > len(wanted_set & set(best)):
            best = [f for f in files if f in wanted_set]
    return best


def read_dicom(path: Path, case: str | None = None,
               series_uid: str | None = None) -> tuple[sitk.Image, DicomSeries]:
    """A DICOM file or series folder as a SimpleITK image (HU) and its :class:`DicomSeries`;
    a folder of several series is read by :func:`choose_series`."""
    path = Path(path)
    if path.is_dir():
        candidates = dicom_files(path)
        if not candidates:
            raise UserError(f"{_case(case)}folder {path} holds no DICOM series; point to a DICOM "
                            f"series folder or an image file")
        by_uid: dict[str, list[tuple[Path, object]]] = {}
        for f, h in zip(candidates, _headers(candidates, case)):
            by_uid.setdefault(str(h.get("SeriesInstanceUID", "") or ""), []).append((f, h))
        uid, choice = choose_series({u: [h for _f, h in fh] for u, fh in by_uid.items()}, path,
                                    case, series_uid)
        chosen = dict(by_uid[uid])
        files = _gdcm_files(path, list(chosen))
        if not files:
            raise UserError(f"{_case(case)}folder {path} holds no DICOM series the series reader "
                            f"can read; copy the series again")
        left_out = sorted(set(chosen) - set(files))
        if left_out:
            raise UserError(f"{_case(case)}{left_out[0]} is truncated or damaged (a DICOM file "
                            f"the series reader cannot read){_more(left_out)}; copy the series "
                            f"again")
        series = DicomSeries(files, [chosen[f] for f in files], choice)
        check_headers(series, path, case)
        _check_positions(series, path, case)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames([str(f) for f in files])
        image = reader.Execute()
    else:
        series = DicomSeries([path], _headers([path], case), "a single file")
        check_headers(series, path, case)
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.SetImageIO("GDCMImageIO")
        image = reader.Execute()
    return image, series


def _more(items: list) -> str:
    return f" (and {len(items) - 1} more)" if len(items) > 1 else ""
