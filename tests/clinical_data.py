"""Test material for `measure --cases`: synthetic CT series/volumes and a two-fold model tree.

Shared by tests/integration/test_clinical.py and tests/reliability/test_measure_faults.py.
"""
from __future__ import annotations

import datetime
import json
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

TRAINER = "XferScratchTrainer_n5"
RUN = f"{TRAINER}__nnUNetPlans__2d"
DATASET = "Dataset501_L3"


def phantom_volume(phantom_dir: Path, n: int = 5) -> tuple[np.ndarray, tuple[float, float]]:
    """(z, y, x) int16 HU stack of the first ``n`` phantom slices, and their (row, col) spacing."""
    slices, spacing = [], None
    for i in range(n):
        img = sitk.ReadImage(str(phantom_dir / "images" / f"L3-{i:04d}.nii.gz"))
        slices.append(sitk.GetArrayFromImage(img).astype(np.int16))
        spacing = (img.GetSpacing()[1], img.GetSpacing()[0])
    return np.stack(slices), spacing


def write_volume(path: Path, volume: np.ndarray, spacing_rc: tuple[float, float],
                 z_mm: float = 3.0) -> Path:
    """A 3D NIfTI/NRRD/MHA of ``volume`` (z, y, x) with spacing (col, row, z)."""
    img = sitk.GetImageFromArray(volume)
    img.SetSpacing((float(spacing_rc[1]), float(spacing_rc[0]), float(z_mm)))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def write_ct_series(folder: Path, volume_hu: np.ndarray, spacing_rc: tuple[float, float],
                    z_mm: float = 3.0, orientation=(1, 0, 0, 0, 1, 0), image_type=None,
                    patient: dict | None = None, series_uid: str | None = None,
                    study_uid: str | None = None, per_slice=None) -> list[Path]:
    """A CT DICOM series (uncompressed, rescale intercept −1024), one file per slice.

    ``per_slice(k, ds)`` may change slice ``k``'s dataset (mixed orientations, a localiser…).
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    row_dir, col_dir = np.array(orientation[:3], float), np.array(orientation[3:], float)
    normal = np.cross(row_dir, col_dir)
    paths = []
    for k, plane in enumerate(volume_hu):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.Modality = "CT"
        ds.ImageType = image_type or ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PatientName, ds.PatientID = "Phantom^Test", "PH0001"
        ds.PatientBirthDate, ds.PatientSex = "", ""
        ds.StudyDate = ds.SeriesDate = datetime.date.today().strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = "120000"
        ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
        ds.Manufacturer = "nnunet_xfer tests"
        ds.SeriesNumber, ds.InstanceNumber = 3, k + 1
        ds.PositionReferenceIndicator = ""
        for key, value in (patient or {}).items():
            setattr(ds, key, value)
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.ImagePositionPatient = [float(v) for v in (-100.0, -120.0, 50.0) + normal * k * z_mm]
        ds.SliceThickness = z_mm
        ds.PixelSpacing = [float(spacing_rc[0]), float(spacing_rc[1])]
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.PixelData = (plane.astype(np.int32) + 1024).astype(np.int16).tobytes()
        if per_slice is not None:
            per_slice(k, ds)
        path = folder / f"IM{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def two_fold_results(scratch_fold0: Path, root: Path, noise: float = 0.3, seed: int = 0) -> Path:
    """``root/Dataset501_L3/<run>`` with the trained fold 0 and a fold 1 of perturbed weights
    (conftest's session fixture ``two_fold_model`` builds it once).

    Returns the results root to put in ``$nnUNet_results``.
    """
    import torch
    src_run = scratch_fold0.parent
    run = root / DATASET / RUN
    run.mkdir(parents=True)
    for name in ("plans.json", "dataset.json"):
        shutil.copy2(src_run / name, run / name)
    # what a finished fold needs (checkpoint_best.pth, as large as the final one, is never read)
    shutil.copytree(scratch_fold0, run / "fold_0",
                    ignore=shutil.ignore_patterns("checkpoint_best.pth", "progress.png"))
    ckpt = torch.load(scratch_fold0 / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    gen = torch.Generator().manual_seed(seed)
    for key, w in ckpt["network_weights"].items():
        if w.is_floating_point() and w.ndim > 1:
            w += noise * w.std() * torch.randn(w.shape, generator=gen)
    ckpt["init_args"]["fold"] = 1
    (run / "fold_1").mkdir()
    torch.save(ckpt, run / "fold_1" / "checkpoint_final.pth")
    return root


def plant_other_plans(results: Path, plans_name: str = "OtherPlans") -> Path:
    """A run folder named for other plans holding fold 0 trained with nnUNetPlans."""
    src = results / DATASET / RUN
    dst = results / DATASET / f"{TRAINER}__{plans_name}__2d"
    shutil.copytree(src, dst)
    plans = json.loads((dst / "plans.json").read_text())
    plans["plans_name"] = plans_name
    (dst / "plans.json").write_text(json.dumps(plans))
    return dst


def studies_csv(path: Path, rows: list[dict]) -> Path:
    """Write a ``measure --cases`` manifest from dicts (missing cells left empty)."""
    import pandas as pd
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path
