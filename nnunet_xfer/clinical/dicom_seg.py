"""Files a viewer opens: a DICOM-SEG for DICOM inputs (highdicom), a NIfTI mask for the others.

The DICOM-SEG is a binary segmentation with one segment (SNOMED CT "Skeletal muscle") and one
frame, referencing the source CT instance of the measured slice and its series and study, so it
opens over the CT in 3D Slicer, OHIF or a PACS. The NIfTI mask lies on the input volume's grid
(only the measured slice is non-zero), so it overlays the volume in any viewer. Both take the
mask in the input's own stored orientation (rows and columns as the file stores them).

The model that drew the mask is named in full in the segment's AlgorithmParameters (an LT value,
never cut), and within DICOM's 64 characters, folds kept, in ContentDescription; AlgorithmName
is the package's name.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_xfer.clinical.provenance import Provenance
from nnunet_xfer.errors import UserError
from nnunet_xfer.imaging import Image

SEG_SERIES_NUMBER = 9301
SEG_SERIES_DESCRIPTION = "nnunet-xfer skeletal muscle at L3"
#: What a derived object must reference in its source instance.
REFERENCED_UIDS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "SOPClassUID")
#: DICOM's PatientSex values (highdicom copies the patient module and refuses any other).
_DICOM_SEX = {"M": "M", "F": "F", "O": "O", "MALE": "M", "FEMALE": "F"}


def read_source(source_file: Path, case: str):
    """The header of the CT instance a SEG or SR derives from (pixel data left encoded), checked
    for the UIDs a reference needs, PatientSex in DICOM's spelling (else empty: unknown)."""
    import pydicom
    source = pydicom.dcmread(source_file, stop_before_pixels=True)
    for keyword in REFERENCED_UIDS:
        if not str(source.get(keyword, "")).strip():
            raise UserError(f"case {case}: {source_file} has no {keyword}; a DICOM-SEG cannot "
                            f"reference it")
    # highdicom copies the patient module and accepts DICOM's M/F/O only: any other spelling
    # (``m``, ``female``) would stop the case, so it becomes the DICOM value or empty (unknown)
    sex = str(source.get("PatientSex", "") or "").strip().upper()
    source.PatientSex = _DICOM_SEX.get(sex, "")
    return source


def algorithm(provenance: Provenance):
    """highdicom's algorithm identification of the model: the package, its version, the model."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    return hd.AlgorithmIdentificationSequence(
        name="nnunet_xfer", version=provenance.version,
        family=codes.cid7162.ArtificialIntelligence, parameters={"model": provenance.model})


def write_dicom_seg(path: Path, source_file: Path, mask: np.ndarray, provenance: Provenance,
                    case: str, corrected: bool = False):
    """Write the DICOM-SEG of ``mask`` (rows × cols, bool) on the CT instance ``source_file``;
    returns the written dataset. ``corrected``: a person edited the model's mask (the segment's
    algorithm type is then SEMIAUTOMATIC, and the series says so)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    source = read_source(source_file, case)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (int(source.Rows), int(source.Columns)):
        raise UserError(f"case {case}: mask {mask.shape} does not match {source_file} "
                        f"({source.Rows} x {source.Columns})")
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="skeletal muscle",
        segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.SkeletalMuscle,
        algorithm_type=(hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC if corrected else
                        hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC),
        algorithm_identification=algorithm(provenance))
    seg = hd.seg.Segmentation(
        source_images=[source], pixel_array=mask[None],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[segment],
        series_instance_uid=hd.UID(), series_number=SEG_SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="nnunet_xfer",
        manufacturer_model_name="nnunet_xfer measure", software_versions=provenance.version,
        device_serial_number="none",
        series_description=SEG_SERIES_DESCRIPTION + (" (corrected)" if corrected else ""),
        content_description=provenance.short(), omit_empty_frames=False)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(str(path))
    return seg


def write_nifti_mask(path: Path, volume: Image, slice_index: int | None,
                     mask: np.ndarray) -> Path:
    """The mask (in the volume's stored orientation) on the input's grid: a 2D image for a 2D
    input, else the volume with one slice set."""
    mask = np.asarray(mask, dtype=np.uint8)
    if slice_index is None or volume.dimension == 2:
        arr = mask.reshape(volume.shape)
    else:
        arr = np.zeros(volume.shape, np.uint8)
        arr[slice_index] = mask
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(volume.to_sitk(arr), str(path), useCompression=True)
    return Path(path)
