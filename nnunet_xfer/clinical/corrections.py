"""``measure --corrected DIR``: masks a person edited come back, are measured, and are audited.

A corrected mask is the case's file in ``DIR`` — ``<case>.nii.gz`` / ``.nii`` / ``.nrrd`` /
``.seg.nrrd`` / ``.mha`` as ITK-SNAP or 3D Slicer save a label map, or ``<case>.dcm`` a DICOM-SEG
as 3D Slicer exports it — on the case's own image:

* a label map lies on the input's grid: the whole volume (only the measured slice may hold
  muscle), a sub-box of it (3D Slicer crops ``.seg.nrrd`` to the segment's extent), or the
  measured slice alone (a 2D file on the slice's grid); its muscle is every non-zero voxel of
  its one label;
* a DICOM-SEG references the measured slice's SOP instance; its muscle is its one segment, or
  its one "Skeletal muscle" segment.

The audit of a case (:func:`audit`) records the file (path, sha256, modification time), when it
was measured with which model, the model's and the corrected SMA and their difference, the Dice
of the two masks and the pixels added and removed. ``measure`` also writes each corrected mask
as a NIfTI label map on the input's grid and a ``convert`` manifest of the corrected cases: the
way to grow the training set (docs/measure.md#corrections).
"""
from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path

import numpy as np

from nnunet_xfer.clinical.studies import Study
from nnunet_xfer.errors import UserError
from nnunet_xfer.evaluation.metrics import dice
from nnunet_xfer.imaging import Image, check_pair, is_dicom_file, read_mask
from nnunet_xfer.imaging.names import CORRECTION_ENDINGS, DICOM_ENDING, has_ending, strip_ending
from nnunet_xfer.pretraining.store import file_sha256

#: What a segment of a corrected DICOM-SEG must be (SNOMED CT "Skeletal muscle").
MUSCLE_CODE = "127954009"


def corrected_files(folder: Path, case_ids: list[str]) -> dict[str, Path]:
    """``case id → corrected mask`` in ``folder``; UserError for a folder that is none, two files of
    one case, or a file that names no case of the manifest (it would be silently ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--corrected {folder} is not a folder; give the folder of edited masks "
                        f"(<case>.nii.gz, <case>.seg.nrrd or <case>.dcm)")
    known = set(case_ids)
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not has_ending(p, CORRECTION_ENDINGS):
            continue
        if not p.is_file():  # skipped, the case would be measured without its correction
            raise UserError(f"--corrected {folder}: {p.name} is not a regular file (a folder, pipe, "
                            f"device or broken link); put the corrected mask there or remove it")
        cid = strip_ending(p, CORRECTION_ENDINGS)
        ending = p.name[len(cid):]
        if cid not in known:
            raise UserError(f"--corrected {folder}: {p.name} names no case of the manifest; name "
                            f"a corrected mask <case_id>{ending} or move it out")
        if cid in found:
            raise UserError(f"--corrected {folder} holds two corrected masks of case {cid} "
                            f"({found[cid].name}, {p.name}); keep one")
        found[cid] = p
    return found


def _muscle(values: np.ndarray, path: Path, case: str) -> np.ndarray:
    labels = np.unique(values[values != 0])
    if labels.size > 1:
        shown = ", ".join(f"{v:g}" for v in labels[:6])
        raise UserError(f"case {case}: corrected mask {path} holds several labels ({shown}); keep "
                        f"the skeletal-muscle segment only")
    return values != 0


def _sub_box(volume: Image, mask: Image) -> tuple[int, int, int] | None:
    """Where ``mask`` (same spacing and direction) starts inside ``volume``'s grid, as
    (slice, row, col) voxel offsets, if it lies on the grid and inside it."""
    if mask.dimension != 3 or volume.dimension != 3:
        return None
    if not (np.allclose(mask.spacing, volume.spacing, rtol=1e-4)
            and np.allclose(mask.axes3(), volume.axes3(), atol=1e-4)):
        return None
    steps = volume.axes3() * volume.spacing3()  # columns: one voxel step along each ITK axis
    ijk = np.linalg.solve(steps, mask.origin3() - volume.origin3())
    if not np.allclose(ijk, np.round(ijk), atol=0.01):
        return None
    i, j, k = (int(round(v)) for v in ijk)
    rows, cols, slices = mask.shape[1], mask.shape[2], mask.shape[0]
    if min(i, j, k) < 0 or k + slices > volume.shape[0] or j + rows > volume.shape[1] \
            or i + cols > volume.shape[2]:
        return None
    return k, j, i


def _label_map_slice(path: Path, study: Study) -> np.ndarray:
    """The corrected muscle of the measured slice from a label-map file (stored orientation)."""
    cid, volume = study.case_id, study.volume
    mask = read_mask(path, cid, what="corrected mask")
    if not mask.geometry_known:
        check_pair(study.slice_image, mask, cid, "corrected mask")
        return _muscle(mask.array, path, cid)
    if mask.dimension == 2 or volume.dimension == 2:
        plane = mask if mask.dimension == 2 else mask.slice(0)
        if mask.n_slices != 1:
            check_pair(volume, mask, cid, "corrected mask")  # refuses, naming what differs
        check_pair(study.slice_image, plane, cid, "corrected mask")
        return _muscle(plane.array, path, cid)
    box = _sub_box(volume, mask)
    if box is None:
        check_pair(volume, mask, cid, "corrected mask")  # refuses, naming what differs
        box = (0, 0, 0)
    k, j, i = box
    full = np.zeros(volume.shape, dtype=mask.array.dtype)
    full[k:k + mask.shape[0], j:j + mask.shape[1], i:i + mask.shape[2]] = mask.array
    muscle = _muscle(full, path, cid)
    index = study.slice_index or 0
    elsewhere = np.flatnonzero(muscle.any(axis=(1, 2)))
    elsewhere = elsewhere[elsewhere != index]
    if elsewhere.size and not muscle[index].any():
        raise UserError(f"case {cid}: corrected mask {path} holds muscle on slice(s) "
                        f"{', '.join(map(str, elsewhere[:5]))} but not on the measured slice "
                        f"{index}; correct the measured slice (or change the case's slice choice)")
    return muscle[index]


def _seg_slice(path: Path, study: Study) -> np.ndarray:
    """The corrected muscle of the measured slice from a DICOM-SEG (stored orientation)."""
    import highdicom as hd
    cid = study.case_id
    if study.dicom is None or not study.sop_instance_uid:
        raise UserError(f"case {cid}: corrected mask {path} is a DICOM-SEG but the case's image "
                        f"is not a DICOM instance it can reference; give a NIfTI label map")
    try:
        seg = hd.seg.segread(path)
    except Exception as e:  # noqa: BLE001 - highdicom/pydicom raise many types
        raise UserError(f"case {cid}: corrected mask {path} is not a readable DICOM-SEG "
                        f"({type(e).__name__}); export it again") from None
    segments = list(seg.SegmentSequence)
    muscle = [int(s.SegmentNumber) for s in segments
              if any(str(c.CodeValue) == MUSCLE_CODE
                     for c in s.get("SegmentedPropertyTypeCodeSequence", []))]
    number = muscle[0] if len(muscle) == 1 else (
        int(segments[0].SegmentNumber) if len(segments) == 1 else None)
    if number is None:
        raise UserError(f"case {cid}: corrected DICOM-SEG {path} holds {len(segments)} segments "
                        f"({len(muscle)} skeletal muscle); keep one skeletal-muscle segment")
    referenced = {str(u[2]) for u in seg.get_source_image_uids()}
    if study.sop_instance_uid not in referenced:
        where = f"InstanceNumber {study.instance_number}" if study.instance_number else "it"
        raise UserError(f"case {cid}: corrected DICOM-SEG {path} holds no frame on the measured "
                        f"slice ({where}, SOP instance {study.sop_instance_uid}); correct the "
                        f"measured slice")
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[study.sop_instance_uid], segment_numbers=[number])
    arr = np.asarray(pixels)[0, ..., 0] != 0
    if arr.shape != study.slice_image.shape:
        raise UserError(f"case {cid}: corrected DICOM-SEG {path} is {arr.shape} but the slice is "
                        f"{study.slice_image.shape} (rows x columns)")
    return arr


def read_correction(path: Path, study: Study) -> np.ndarray:
    """The corrected muscle mask of the measured slice, in the slice's stored orientation."""
    path = Path(path)
    if has_ending(path, (DICOM_ENDING,)) or (not has_ending(path, CORRECTION_ENDINGS)
                                       and is_dicom_file(path)):
        return _seg_slice(path, study)
    return _label_map_slice(path, study)


def audit(case: str, path: Path, model_mask: np.ndarray, corrected: np.ndarray,
          model_measures: dict, corrected_measures: dict, pixel_cm2: float,
          provenance: dict) -> dict:
    """The audit record of one corrected case (JSON-ready)."""
    model_mask, corrected = np.asarray(model_mask, bool), np.asarray(corrected, bool)
    sma0, sma1 = model_measures["sma_cm2"], corrected_measures["sma_cm2"]
    stat = Path(path).stat()

    def clean(d: dict) -> dict:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in d.items()}
    return {
        "case_id": case,
        "corrected_file": str(Path(path).resolve()),
        "sha256": file_sha256(path),
        "file_modified": _dt.datetime.fromtimestamp(stat.st_mtime).astimezone()
        .isoformat(timespec="seconds"),
        **provenance,
        "dice_model_vs_corrected": float(dice(model_mask, corrected)),
        "pixels_added": int(np.count_nonzero(corrected & ~model_mask)),
        "pixels_removed": int(np.count_nonzero(model_mask & ~corrected)),
        "area_added_cm2": float(np.count_nonzero(corrected & ~model_mask) * pixel_cm2),
        "area_removed_cm2": float(np.count_nonzero(model_mask & ~corrected) * pixel_cm2),
        "sma_model_cm2": float(sma0),
        "sma_corrected_cm2": float(sma1),
        "sma_change_cm2": float(sma1 - sma0),
        "sma_change_percent": float(100 * (sma1 - sma0) / sma0) if sma0 else None,
        "model_measures": clean(model_measures),
        "corrected_measures": clean(corrected_measures),
    }
