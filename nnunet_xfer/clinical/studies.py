"""CT studies to measure: the convert manifest without a mask column, and the L3 slice of each.

Images are read and checked by :mod:`nnunet_xfer.imaging` (truncated files, spacing, NaN, HU, and
for DICOM what SimpleITK would silently accept: a missing slice, mixed orientations, a localiser
or a non-axial series; a study folder's axial CT series is chosen by the reader's rule or the
``series_uid`` column). The slice is picked by ``convert``'s rules
(:func:`~nnunet_xfer.dataset_conversion.slice_selection.choose_slice`): ``slice_index``,
``instance_number``, a vertebra label map + label, or ``--l3 auto`` (TotalSegmentator,
:mod:`nnunet_xfer.clinical.l3_auto`). Patient height, sex and weight come from the manifest, else
from the DICOM header (``PatientSize``, ``PatientSex``, ``PatientWeight``). :class:`Study` also
records which slice it is: its UIDs and InstanceNumber (DICOM) and its z position (mm).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from nnunet_xfer.dataset_conversion.manifest import BadRow, CaseSpec, read_manifest
from nnunet_xfer.dataset_conversion.slice_selection import choose_slice, int_or_none
from nnunet_xfer.errors import UserError, warn
from nnunet_xfer.imaging import Image, Reorientation, read_image

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
    #: the image as stored (its grid is the one masks are written back on)
    volume: Image
    #: the chosen slice, as stored
    slice_image: Image
    slice_index: int | None
    slice_source: str
    dicom: DicomSource | None = None
    height_m: float | None = None
    height_source: str = ""
    sex: str | None = None
    weight_kg: float | None = None
    slice_thickness_mm: float | None = None
    notes: list[str] = field(default_factory=list)
    #: which slice: DICOM UIDs and InstanceNumber (empty for other inputs), z (mm, LPS)
    study_uid: str = ""
    series_uid: str = ""
    sop_instance_uid: str = ""
    instance_number: int | None = None
    slice_z_mm: float | None = None
    #: how the DICOM series was chosen from its folder ("" for other inputs)
    series_choice: str = ""
    #: quality flags the study itself raises (e.g. ``sex_unknown``), added to the measured ones
    flags: list[str] = field(default_factory=list)

    @property
    def case_id(self) -> str:
        return self.spec.case_id

    def canonical(self) -> tuple[Image, Reorientation]:
        """The slice in canonical orientation (what the network and the measures see), and how
        to turn a mask of it back into the stored orientation (``turn.undo``)."""
        return self.slice_image.canonical()


def read_studies(csv_path: Path) -> list[CaseSpec | BadRow]:
    """The rows of a ``measure --cases`` manifest (convert's format; the mask column is optional),
    a bad row as a :class:`BadRow` in its place."""
    specs = read_manifest(Path(csv_path), mask_required=False, per_row=True)
    if any(isinstance(s, CaseSpec) and s.mask is not None for s in specs):
        warn(f"{csv_path}: the mask column is ignored; measure predicts the muscle with the "
             f"model")
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


# ---------------------------------------------------------------- DICOM source
def _dicom_instance(volume: Image, index: int | None) -> tuple[Path, object] | None:
    """The instance whose ImagePositionPatient is the chosen slice's position."""
    series = volume.dicom
    if series is None:
        return None
    if len(series.files) == 1:
        return series.files[0], series.first
    if index is None:
        return None
    tolerance = 0.01 * (volume.spacing[2] if volume.dimension == 3 else 1.0) + 1e-3
    return series.instance_at(volume.position_of(index), tolerance)


def load_study(spec: CaseSpec, allow_non_hu: bool = False,
               auto_l3: Callable[[Image], tuple[Image, int]] | None = None,
               heights: dict[str, float] | None = None, hint: str = "") -> Study:
    """Read one case, refuse what cannot be measured, pick its L3 slice and its patient data.

    ``auto_l3`` labels the vertebrae of a volume whose row gives no slice (``--l3 auto``);
    ``hint`` ends the refusal of a volume without a slice choice."""
    cid = spec.case_id
    volume = read_image(Path(spec.image), cid, allow_non_hu=allow_non_hu,
                        series_uid=spec.series_uid)
    if not volume.geometry_known:
        raise UserError(f"case {cid}: image {spec.image} is a picture without pixel spacing; give "
                        f"the CT as DICOM, NIfTI, NRRD or MHA")
    index, source = choose_slice(spec, volume, auto_l3, hint)
    slice_image = volume.slice(index if index is not None else 0)
    study = Study(spec=spec, volume=volume, slice_image=slice_image, slice_index=index,
                  slice_source=source, slice_z_mm=volume.z_mm(index or 0))

    found = _dicom_instance(volume, index)
    if volume.dicom is not None:
        missing = [k for k in _SEG_UIDS if found and not str(found[1].get(k, "")).strip()]
        if found is None:
            study.notes.append("the DICOM instance of the slice was not found: a NIfTI mask "
                               "instead of a DICOM-SEG")
        elif missing:
            study.notes.append(f"{found[0].name} has no {', '.join(missing)}: a NIfTI mask instead "
                               f"of a DICOM-SEG (which must reference them)")
        else:
            study.dicom = DicomSource(path=found[0], header=found[1],
                                      n_instances=len(volume.dicom.files))
    header = found[1] if found else (volume.dicom.first if volume.dicom is not None else None)
    if volume.dicom is not None:
        series_header = volume.dicom.first
        study.study_uid = str(series_header.get("StudyInstanceUID", "") or "")
        study.series_uid = volume.dicom.uid
        study.series_choice = volume.dicom.choice
        if found is not None:
            study.sop_instance_uid = str(found[1].get("SOPInstanceUID", "") or "")
            study.instance_number = int_or_none(found[1].get("InstanceNumber"))

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
    if thickness is None:  # the slice spacing, or what a one-slice file states
        thickness = volume.thickness_mm()
    study.slice_thickness_mm = thickness
    return study
