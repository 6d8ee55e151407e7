"""Muscle-health measures of an L3 slice: SMA, SMD, IMAT, HU-refined SMA and SMI.

Definitions (docs/definitions.md): SMA (cm²) = mask pixels × pixel area; SMD = mean HU inside the mask;
IMAT (cm²) = mask pixels within −190..−30 HU; HU-refined SMA (cm²) = mask pixels within −29..150 HU;
SMI (cm²/m²) = SMA / height². HU ranges are inclusive at both ends.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from nnunet_xfer.errors import UserError
from nnunet_xfer.evaluation.mask_files import (check_same_geometry, images_for_cases,
                                               list_cases, read_mask, read_slice)

IMAT_HU = (-190.0, -30.0)
MUSCLE_HU = (-29.0, 150.0)
MEASURE_COLUMNS = ("case_id", "sma_cm2", "smd_hu", "imat_cm2", "sma_hu_refined_cm2", "smi_cm2_m2")


def _count_within(hu: np.ndarray, bounds: tuple[float, float]) -> int:
    return int(np.count_nonzero((hu >= bounds[0]) & (hu <= bounds[1])))


def muscle_measures(image_hu: np.ndarray, mask: np.ndarray, spacing: tuple[float, float],
                    height_m: float | None = None) -> dict:
    """SMA, SMD, IMAT, HU-refined SMA and SMI of one slice (HU image, boolean muscle mask).

    ``spacing`` is the (row, col) pixel size in mm. An empty mask gives areas 0 and SMD NaN;
    SMI is NaN when the height is unknown (None or NaN).
    """
    image_hu = np.asarray(image_hu, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if image_hu.shape != mask.shape:
        raise ValueError(f"image {image_hu.shape} and mask {mask.shape} differ in shape")
    pixel_cm2 = float(spacing[0]) * float(spacing[1]) / 100.0
    hu = image_hu[mask]
    sma = hu.size * pixel_cm2
    known_height = height_m is not None and not math.isnan(height_m)
    return dict(
        sma_cm2=sma,
        smd_hu=float(hu.mean()) if hu.size else math.nan,
        imat_cm2=_count_within(hu, IMAT_HU) * pixel_cm2,
        sma_hu_refined_cm2=_count_within(hu, MUSCLE_HU) * pixel_cm2,
        smi_cm2_m2=sma / float(height_m) ** 2 if known_height else math.nan,
    )


def read_heights(path: Path) -> dict[str, float]:
    """Heights in metres by case id from a CSV with columns ``case_id,height_m``."""
    path = Path(path)
    try:
        table = pd.read_csv(path, dtype={"case_id": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise UserError(f"{path}: cannot read heights CSV ({e})") from None
    missing = {"case_id", "height_m"} - set(table.columns)
    if missing:
        raise UserError(f"{path}: heights CSV lacks column(s) {', '.join(sorted(missing))};"
                        " expected case_id,height_m")
    heights = pd.to_numeric(table["height_m"], errors="coerce")
    bad = table["case_id"][heights.notna() & ((heights <= 0.3) | (heights > 3.0))]
    if len(bad):
        raise UserError(f"{path}: height of case {bad.iloc[0]} is not a height in metres "
                        "(give height_m in m, e.g. 1.72)")
    return dict(zip(table["case_id"], heights.astype(float)))


def measure_folder(images: Path, masks: Path, out_csv: Path, heights: Path | None = None,
                   label: int = 1, overwrite: bool = False,
                   other_labels: bool | None = None) -> pd.DataFrame:
    """Muscle measures of every mask in ``masks`` (e.g. ``nnUNetv2_predict`` output) → ``out_csv``.

    Images are ``<case>_0000.nii.gz`` (nnU-Net style) or ``<case>.nii.gz`` (also .nii/.mha/.nrrd),
    in HU; masks are ``<case>.<ending>`` with the same shape and spacing. ``label`` is the muscle
    value in the masks; ``other_labels`` as in :func:`~nnunet_xfer.evaluation.mask_files.read_mask`.
    ``heights`` is an optional CSV ``case_id,height_m`` for SMI. Writes one row per mask, columns
    :data:`MEASURE_COLUMNS`, atomically, and returns the table.
    """
    out_csv = Path(out_csv)
    if out_csv.exists() and not overwrite:
        raise UserError(f"{out_csv}: exists; pass --overwrite to replace it")
    mask_files = list_cases(Path(masks), "masks", channel_suffix=False)
    image_files = images_for_cases(Path(images), list(mask_files))
    height_of = read_heights(Path(heights)) if heights is not None else {}

    rows = []
    # disable=None: a bar on a terminal, none in logs and pipes (keeps errors one line there)
    for case, mask_path in tqdm(mask_files.items(), desc="measure", unit="case", disable=None):
        image, image_spacing = read_slice(image_files[case])
        mask, mask_spacing = read_mask(mask_path, label=label, other_labels=other_labels)
        check_same_geometry(image_spacing, image.shape, mask_spacing, mask.shape, case)
        rows.append({"case_id": case,
                     **muscle_measures(image, mask, image_spacing, height_of.get(case))})
    table = pd.DataFrame(rows, columns=list(MEASURE_COLUMNS))

    out_csv.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_csv.with_name(f".{out_csv.name}.tmp{os.getpid()}")
    table.to_csv(tmp, index=False)
    os.replace(tmp, out_csv)
    return table
