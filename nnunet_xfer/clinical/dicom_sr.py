"""The measures as a DICOM Structured Report a PACS stores as numbers (TID 1500, highdicom).

One Comprehensive 3D SR per measured DICOM case, in the case's own study: an Imaging Measurement
Report (TID 1500) with one Planar ROI group (TID 1410) whose region is the skeletal-muscle
segment of the case's DICOM-SEG on the source CT instance. It holds

* SMA (SNOMED CT "Area", ``cm2``), SMD (DCM "Mean Attenuation Coefficient", ``[hnsf'U]``),
  IMAT and SMI (local codes of :data:`CODING_SCHEME`, ``cm2`` and ``cm2/m2``; no standard code
  exists for them), each with the model as its algorithm (TID 4019) — a measure that is not a
  number (SMD of an empty mask, SMI without a height) is left out;
* with cut-offs, the low-SMI and low-SMD findings as qualitative evaluations (Yes/No), the cut-off
  and its publication as the measurement's normal range (TID 312: description and authority).

The evidence (the CT instance and the SEG) is listed in the SR, so a PACS can fetch both; the
local coding scheme is declared in its Coding Scheme Identification Sequence.
"""
from __future__ import annotations

import math
from pathlib import Path

from nnunet_xfer.clinical.dicom_seg import read_source
from nnunet_xfer.clinical.provenance import Provenance

SR_SERIES_NUMBER = 9302
SR_SERIES_DESCRIPTION = "nnunet-xfer L3 muscle measures"
#: Coding scheme of the measures DICOM and SNOMED CT have no code for ("99" = private, PS3.16).
CODING_SCHEME = "99NNUNETXFER"
_LOCAL = {
    "imat": ("IMAT", "Intermuscular adipose tissue area"),
    "smi": ("SMI", "Skeletal muscle index"),
    "low_smi": ("LOWSMI", "Low skeletal muscle index"),
    "low_smd": ("LOWSMD", "Low skeletal muscle density"),
}


def _code(key: str):
    from highdicom.sr import CodedConcept
    value, meaning = _LOCAL[key]
    return CodedConcept(value=value, scheme_designator=CODING_SCHEME, meaning=meaning)


def is_number(value) -> bool:
    """Whether a CSV cell holds a finite number (not empty, not NaN)."""
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _verdict(value) -> bool | None:
    """A low_smi / low_smd cell as True/False, None when there is no verdict."""
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return None
    return bool(value)


def _frame_or_segment(items) -> None:
    """A reference to a segmentation frame names the frame only: DICOM's SOP Instance Reference
    Macro forbids ReferencedSegmentNumber beside ReferencedFrameNumber (the frame says which
    segment), though highdicom writes both."""
    for item in items:
        for ref in item.get("ReferencedSOPSequence", []):
            if "ReferencedFrameNumber" in ref and "ReferencedSegmentNumber" in ref:
                del ref.ReferencedSegmentNumber
        _frame_or_segment(item.get("ContentSequence", []))


def write_dicom_sr(path: Path, source_file: Path, seg, row: dict, provenance: Provenance,
                   case: str, rules: dict | None = None, corrected: bool = False):
    """Write the SR of one measured ``row`` (a ``measures.csv`` row) on the CT instance
    ``source_file`` and its segmentation ``seg`` (the highdicom dataset); returns the SR.

    ``rules``: ``{"smi": text, "smd": text}`` — each finding's cut-off in words; the
    publication is ``row["cutoff_source"]``. ``corrected``: the mask was edited by a person.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    source = read_source(source_file, case)
    ucum = {"cm2": hd.sr.CodedConcept("cm2", "UCUM", "square centimeter"),
            "hu": hd.sr.CodedConcept("[hnsf'U]", "UCUM", "Hounsfield unit"),
            "cm2/m2": hd.sr.CodedConcept("cm2/m2", "UCUM", "square centimeter per square meter")}
    algorithm = hd.sr.AlgorithmIdentification(name="nnunet_xfer", version=provenance.version,
                                              parameters=[provenance.model])
    rules = rules or {}
    source_name = str(row.get("cutoff_source") or "")

    def normal_range(key: str):
        if not (rules.get(key) and source_name):
            return None
        return hd.sr.MeasurementProperties(normal_range_properties=hd.sr.NormalRangeProperties(
            values=[], description=rules[key], authority=source_name))

    def measurement(name, value, unit, key=None):
        return hd.sr.Measurement(name=name, value=float(value), unit=unit,
                                 algorithm_id=algorithm,
                                 properties=normal_range(key) if key else None)

    measurements = [measurement(codes.SCT.Area, row["sma_cm2"], ucum["cm2"])]
    if is_number(row.get("smd_hu")):
        measurements.append(measurement(codes.DCM.MeanAttenuationCoefficient, row["smd_hu"],
                                        ucum["hu"], "smd"))
    measurements.append(measurement(_code("imat"), row["imat_cm2"], ucum["cm2"]))
    if is_number(row.get("smi_cm2_m2")):
        measurements.append(measurement(_code("smi"), row["smi_cm2_m2"], ucum["cm2/m2"], "smi"))
    evaluations = []
    for key in ("low_smi", "low_smd"):
        verdict = _verdict(row.get(key))
        if verdict is not None:
            evaluations.append(hd.sr.QualitativeEvaluation(
                name=_code(key), value=codes.SCT.Yes if verdict else codes.SCT.No))

    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(), identifier=f"L3 skeletal muscle {case}"
            + (" (corrected mask)" if corrected else "")),
        referenced_segment=hd.sr.ReferencedSegmentationFrame(
            sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, frame_number=1,
            segment_number=1, source_image=hd.sr.SourceImageForSegmentation(
                source.SOPClassUID, source.SOPInstanceUID)),
        finding_type=codes.SCT.SkeletalMuscle,
        finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.L3Vertebra)],
        algorithm_id=algorithm, measurements=measurements,
        qualitative_evaluations=evaluations or None)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="nnunet_xfer", manufacturer_name="nnunet_xfer",
            model_name=provenance.model))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=[group])
    _frame_or_segment(group)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source, seg], content=report[0], series_instance_uid=hd.UID(),
        series_number=SR_SERIES_NUMBER, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="nnunet_xfer", is_complete=True,
        coding_schemes=[hd.coding_schemes.CodingSchemeIdentificationItem(
            designator=CODING_SCHEME, name="nnunet_xfer local codes",
            responsible_organization="nnunet_xfer")],
        series_description=SR_SERIES_DESCRIPTION + (" (corrected mask)" if corrected else ""))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sr.save_as(str(path))
    return sr
