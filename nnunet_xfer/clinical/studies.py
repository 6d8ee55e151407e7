"""CT studies to measure: the convert manifest without a mask column, and the L3 slice of each.

The slice is picked by ``convert``'s own code (``dataset_conversion``: readers, slice selection
and HU checks): ``slice_index``, a vertebra label map + label, or ``--l3 auto``
(TotalSegmentator, :mod:`nnunet_xfer.clinical.l3_auto`). DICOM series are checked first for what
SimpleITK would silently accept: several series in one folder, mixed orientations, a localiser
(scout) or a non-axial series. Patient height, sex and weight come from the manifest, else from
the DICOM header (``PatientSize``, ``PatientSex``, ``PatientWeight``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from nnunet_xfer.dataset_conversion.manifest import CaseSpec, read_manifest
from nnunet_xfer.dataset_conversion.prepare import _check_hu, _require_same  # convert's checks
from nnunet_xfer.dataset_conversion.readers import is_dicom_file, read_image
from nnunet_xfer.dataset_conversion.slice_selection import (check_index, extract_slice, is_volume,
                                                            middle_slice_of_label, n_slices)
from nnunet_xfer.errors import UserError, warn

#: Heights outside this range (m) are not heights in metres.
HEIGHT_RANGE_M = (0.3, 3.0)
#: What a DICOM-SEG must reference in its source instance.
_SEG_UIDS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")
_SEX = {"m": "M", "male": "M", "man": "M", "f": "F", "female": "F", "woman": "F"}


@dataclass
class DicomSource:
    """The DICOM instance the measured slice came from, and the header of the series."""

    path: Path
    header: object  # pydicom Dataset of the instance (pixel data not decoded)
    n_instances: int


@dataclass
class Study:
    """One case with its L3 slice chosen and checked."""

    spec: CaseSpec
    volume: sitk.Image
    slice_image: sitk.Image
    slice_index: int | None
    slice_source: str
    dicom: DicomSource | None = None
    height_m: float | None = None
    height_source: str = ""
    sex: str | None = None
    weight_kg: float | None = None
    slice_thickness_mm: float | None = None
    notes: list[str] = field(default_factory=list)
    #: quality flags the study itself raises (e.g. ``sex_unknown``), added to the measured ones
    flags: list[str] = field(default_factory=list)

    @property
    def case_id(self) -> str:
        return self.spec.case_id

    @property
    def values(self) -> np.ndarray:
        """The slice's HU values as (rows, cols)."""
        return sitk.GetArrayFromImage(self.slice_image)


def read_studies(csv_path: Path) -> list[CaseSpec]:
    """The cases of a ``measure --cases`` manifest (convert's format; the mask column is optional)."""
    specs = read_manifest(Path(csv_path), mask_required=False)
    if any(s.mask is not None for s in specs):
        warn(f"{csv_path}: the mask column is ignored; measure predicts the muscle with "
                      f"the model")
    return specs


def normalise_sex(value) -> str | None:
    """``M`` / ``F`` from common spellings (DICOM ``M``/``F``, ``male``, ``female``); else None."""
    if value is None:
        return None
    return _SEX.get(str(value).strip().lower())


def patient_sex(*values) -> tuple[str, str | None]:
    """(``M``, ``F`` or ``unknown``, the value given that was neither) from the first of
    ``values`` (manifest, then DICOM ``PatientSex``) that is given; never raises.

    Any spelling of male/female (``m``, ``Female``, ``MALE`` …) counts; an empty DICOM value, ``O``
    or anything else is unknown and returned as the second item (the case is flagged
    ``sex_unknown``); ``None`` values (not given) are skipped.
    """
    for value in values:
        if value is None:
            continue
        try:
            text = str(value).strip()
        except Exception:  # noqa: BLE001 - an odd header value must not stop the case
            text = "?"
        return (normalise_sex(text) or "unknown", None if normalise_sex(text) else text)
    return "unknown", None


def _float_or_none(value) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


# ---------------------------------------------------------------- DICOM checks
def _dicom_headers(path: Path) -> list[tuple[Path, object]]:
    import pydicom
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.is_file() and not p.name.startswith(".") and is_dicom_file(p))
    headers = []
    for f in files:
        try:
            headers.append((f, pydicom.dcmread(f, stop_before_pixels=True)))
        except Exception:  # noqa: BLE001 - not DICOM after all: SimpleITK will say so
            continue
    return headers


def check_dicom(path: Path, case: str) -> list[tuple[Path, object]]:
    """Refuse a DICOM input SimpleITK would read wrongly; return (file, header) of its instances."""
    headers = _dicom_headers(Path(path))
    if not headers:
        return headers
    series = {str(h.get("SeriesInstanceUID", "")) for _f, h in headers}
    if len(series) > 1:
        raise UserError(f"case {case}: folder {path} holds {len(series)} DICOM series; put each "
                        f"series in its own folder and point the manifest at the axial CT series")
    for f, h in headers:
        kinds = [str(v).upper() for v in (h.get("ImageType") or [])]
        if "LOCALIZER" in kinds or "SCOUT" in kinds or "TOPOGRAM" in kinds:
            raise UserError(f"case {case}: {f.name if Path(path).is_dir() else path} is a localiser "
                            f"(scout) image, not an axial CT series; point the manifest at the "
                            f"axial series")
        modality = str(h.get("Modality", "CT")).upper()
        if modality not in ("CT", ""):
            raise UserError(f"case {case}: {path} is a {modality} series, not CT; give the CT series")
    orientations = [np.asarray(h.ImageOrientationPatient, float) for _f, h in headers
                    if h.get("ImageOrientationPatient") is not None]
    if orientations:
        first = orientations[0]
        if any(not np.allclose(o, first, atol=1e-3) for o in orientations[1:]):
            raise UserError(f"case {case}: series {path} mixes image orientations (e.g. axial and "
                            f"reformatted slices); export one orientation per series")
        normal = np.cross(first[:3], first[3:])
        if abs(normal[2]) < 0.9:
            raise UserError(f"case {case}: series {path} is not axial (slice normal "
                            f"{np.round(normal, 2).tolist()}); give the axial CT series")
    return headers


def _dicom_instance(volume: sitk.Image, index: int | None,
                    headers: list[tuple[Path, object]]) -> tuple[Path, object] | None:
    """The instance whose ImagePositionPatient is the chosen slice's position."""
    if len(headers) == 1:
        return headers[0]
    if index is None:
        return None
    position = np.asarray(volume.TransformIndexToPhysicalPoint((0, 0, int(index))))
    tolerance = 0.01 * (volume.GetSpacing()[2] if volume.GetDimension() == 3 else 1.0) + 1e-3
    for f, h in headers:
        ipp = h.get("ImagePositionPatient")
        if ipp is not None and np.allclose(np.asarray(ipp, float), position, atol=tolerance):
            return f, h
    return None


# ---------------------------------------------------------------- slice choice
def _l3_index(volume: sitk.Image, vertebra: sitk.Image, label: int, source: str,
              case: str) -> int:
    """Middle slice of the vertebra label, with a plain refusal when it is not in the volume."""
    if not (sitk.GetArrayViewFromImage(vertebra) == label).any():
        raise UserError(f"case {case}: no L3 in the volume ({source} has no label {label}); the "
                        f"scan may not cover L3: check it, or give slice_index in the manifest")
    return middle_slice_of_label(vertebra, label, Path(source), case)


def choose_slice(spec: CaseSpec, volume: sitk.Image,
                 auto_l3: Callable[[sitk.Image], tuple[sitk.Image, int]] | None) -> tuple[int | None, str]:
    """(slice index, how it was chosen) of one case, by convert's rules; ``auto_l3`` for ``--l3 auto``."""
    cid = spec.case_id
    if not is_volume(volume):
        if spec.slice_index not in (None, 0):
            check_index(volume, spec.slice_index, spec.image, cid)
        return None, "2d"
    if spec.slice_index is not None and spec.vertebra_mask is not None:
        raise UserError(f"case {cid}: give slice_index or vertebra_mask, not both")
    if spec.slice_index is not None:
        return check_index(volume, spec.slice_index, spec.image, cid), "slice_index"
    if spec.vertebra_mask is not None:
        vertebra = read_image(spec.vertebra_mask, cid, what="vertebra mask")
        _require_same(volume, vertebra, "vertebra mask", spec.vertebra_mask, spec.image, cid)
        return _l3_index(volume, vertebra, spec.vertebra_label, str(spec.vertebra_mask), cid), \
            "vertebra_mask"
    if auto_l3 is not None:
        vertebra, label = auto_l3(volume)
        _require_same(volume, vertebra, "TotalSegmentator's vertebra map", Path("(TotalSegmentator)"),
                      spec.image, cid)
        return _l3_index(volume, vertebra, label, "TotalSegmentator's vertebra map", cid), "l3_auto"
    raise UserError(f"case {cid}: image {spec.image} is a 3D volume of {n_slices(volume)} slices; "
                    f"add slice_index or vertebra_mask + vertebra_label to the manifest, or pass "
                    f"--l3 auto")


def load_study(spec: CaseSpec, allow_non_hu: bool = False,
               auto_l3: Callable[[sitk.Image], tuple[sitk.Image, int]] | None = None,
               heights: dict[str, float] | None = None) -> Study:
    """Read one case, refuse what cannot be measured, pick its L3 slice and its patient data."""
    cid = spec.case_id
    path = Path(spec.image)
    headers = check_dicom(path, cid) if path.exists() and (path.is_dir() or is_dicom_file(path)) \
        else []
    volume = read_image(path, cid)
    index, source = choose_slice(spec, volume, auto_l3)
    slice_image = extract_slice(volume, index if index is not None else 0)
    _check_hu(sitk.GetArrayFromImage(slice_image), path, index, cid, allow_non_hu)
    study = Study(spec=spec, volume=volume, slice_image=slice_image, slice_index=index,
                  slice_source=source)

    found = _dicom_instance(volume, index, headers) if headers else None
    if headers:
        missing = [k for k in _SEG_UIDS if found and not str(found[1].get(k, "")).strip()]
        if found is None:
            study.notes.append("the DICOM instance of the slice was not found: a NIfTI mask "
                               "instead of a DICOM-SEG")
        elif missing:
            study.notes.append(f"{found[0].name} has no {', '.join(missing)}: a NIfTI mask instead "
                               f"of a DICOM-SEG (which must reference them)")
        else:
            study.dicom = DicomSource(path=found[0], header=found[1], n_instances=len(headers))
    header = found[1] if found else (headers[0][1] if headers else None)

    height, height_source = spec.height_m, "manifest" if spec.height_m is not None else ""
    if height is None and heights and cid in heights and math.isfinite(heights[cid]):
        height, height_source = heights[cid], "heights csv"
    if height is None and header is not None:
        height = _float_or_none(header.get("PatientSize"))
        height_source = "dicom" if height is not None else ""
    if height is not None and not HEIGHT_RANGE_M[0] <= height <= HEIGHT_RANGE_M[1]:
        raise UserError(f"case {cid}: height {height:g} ({height_source}) is not a height in "
                        f"metres; give height_m in m, e.g. 1.72")
    study.height_m, study.height_source = height, height_source
    study.sex, odd = patient_sex(spec.sex, header.get("PatientSex") if header is not None else None)
    if odd is not None:  # printed and in the CSV with the case's other flags
        study.flags.append("sex_unknown")
    study.weight_kg = spec.weight_kg if spec.weight_kg is not None else (
        _float_or_none(header.get("PatientWeight")) if header is not None else None)
    thickness = _float_or_none(header.get("SliceThickness")) if header is not None else None
    if thickness is None and volume.GetDimension() == 3 and is_volume(volume):
        thickness = float(volume.GetSpacing()[2])  # slice spacing stands in for the thickness
    study.slice_thickness_mm = thickness
    return study

