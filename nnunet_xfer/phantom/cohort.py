"""Write a synthetic L3 cohort to disk: images, reference masks, observer masks, cases.csv.

Layout (paths in ``cases.csv`` are relative to OUT)::

    OUT/images/L3-0000.nii.gz          2D int16 HU, spacing set
    OUT/masks/L3-0000.nii.gz           uint8 0/1, same geometry
    OUT/observers/obs01/L3-0000.nii.gz observer masks of the first M cases
    OUT/cases.csv                      case_id,image,mask,height_m,sex
    OUT/.nnunet_xfer_output.json       the marker listing every file above (see atomic.owned_output)
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_xfer.atomic import atomic_write_csv, check_replaceable, owned_output
from nnunet_xfer.errors import UserError, warn
from nnunet_xfer.layout import PHANTOM_MANIFEST, label_file
from nnunet_xfer.phantom.observers import observer_mask, observer_name, observer_rng, observer_style
from nnunet_xfer.phantom.subject import Subject, make_subject

MIN_SIZE = 32


def case_id(index: int, n_cases: int = 40) -> str:
    """``L3-0000``, ``L3-0001``, … (wider numbers for cohorts of 10 000 or more).

    A hyphen, not an underscore: ``L3`` + underscore + four digits would end like nnU-Net's
    channel suffix (``imaging.names.CHANNEL_SUFFIX``).
    """
    return f"L3-{index:0{max(4, len(str(n_cases - 1)))}d}"


def write_image(array: np.ndarray, spacing: tuple[float, float], path: Path) -> None:
    """Write a 2D array with (row, col) ``spacing`` in mm as a compressed NIfTI/MHA file."""
    img = sitk.GetImageFromArray(array)
    img.SetSpacing((float(spacing[1]), float(spacing[0])))  # SimpleITK order is (x=col, y=row)
    sitk.WriteImage(img, str(path), useCompression=True)


def write_cohort(out: Path, n_cases: int = 40, size: int = 512, n_observers: int = 10,
                 n_observer_cases: int = 20, seed: int = 0, overwrite: bool = False,
                 source_task: Path | None = None, source_cases: int = 100) -> Path:
    """Write ``n_cases`` phantom subjects and ``n_observers`` observers' masks of the first
    ``n_observer_cases`` cases to ``out``; returns ``out``.

    Built in a hidden temporary folder beside ``out`` and renamed into place, with a marker listing
    every file written. An existing ``out`` is refused unless ``overwrite``, and even then when it
    holds anything a phantom run did not write. ``n_observer_cases`` larger than ``n_cases`` is
    clamped to ``n_cases`` with a warning. With ``source_task``, ``source_cases`` slices of the
    segmentation source task are written there too (:mod:`~nnunet_xfer.phantom.source_task`),
    none of them one of the cohort's images.
    """
    from nnunet_xfer.phantom.source_task import COMMAND as SOURCE_COMMAND
    from nnunet_xfer.phantom.source_task import write_source_task
    out = Path(out)
    if n_cases < 1:
        raise UserError(f"--cases must be at least 1 (got {n_cases})")
    if size < MIN_SIZE:
        raise UserError(f"--size must be at least {MIN_SIZE} pixels (got {size})")
    if n_observers < 0 or n_observer_cases < 0:
        raise UserError("--observers and --observer-cases must not be negative")
    claim = check_replaceable(out, "phantom", overwrite)
    source_claim = None
    if source_task is not None:
        source_task = Path(source_task)
        a, b = out.absolute(), source_task.absolute()
        if a == b or a in b.parents or b in a.parents:
            raise UserError(f"--source-task {source_task} must be a folder apart from {out} "
                            f"(neither inside the other)")
        if source_cases < 1:
            raise UserError(f"--source-cases must be at least 1 (got {source_cases})")
        source_claim = check_replaceable(source_task, SOURCE_COMMAND, overwrite)
    if n_observer_cases > n_cases:
        warn(f"--observer-cases {n_observer_cases} > --cases {n_cases}: observers "
             f"delineate all {n_cases} cases")
        n_observer_cases = n_cases
    if n_observers == 0:
        n_observer_cases = 0

    with owned_output(claim) as tmp:
        digests = _fill(tmp, n_cases, size, n_observers, n_observer_cases, seed)
    if source_claim is not None:
        write_source_task(source_claim, n_cases=source_cases, size=size, seed=seed,
                          exclude=digests)
    return out


def _fill(root: Path, n_cases: int, size: int, n_observers: int, n_observer_cases: int,
          seed: int) -> set[str]:
    """Write the cohort into ``root``; returns the pixel digests of its images."""
    from nnunet_xfer.phantom.source_task import pixel_digest
    (root / "images").mkdir()
    (root / "masks").mkdir()
    names = [observer_name(k, n_observers) for k in range(n_observers)]
    styles = [observer_style(k, seed) for k in range(n_observers)]
    (root / "observers").mkdir()
    for name in names:
        (root / "observers" / name).mkdir()
    rows, digests = [], set()
    # disable=None: a bar on a terminal only
    for i in tqdm(range(n_cases), desc="phantom", unit="case", mininterval=1.0, disable=None):
        cid = case_id(i, n_cases)
        subj: Subject = make_subject(i, size=size, seed=seed)
        write_image(subj.image, subj.spacing, root / "images" / label_file(cid))
        digests.add(pixel_digest(subj.image))
        write_image(subj.mask, subj.spacing, root / "masks" / label_file(cid))
        if i < n_observer_cases:
            for k, (name, style) in enumerate(zip(names, styles, strict=True)):
                m = observer_mask(subj, style, observer_rng(seed, k, i))
                write_image(m, subj.spacing, root / "observers" / name / label_file(cid))
        rows.append({"case_id": cid, "image": f"images/{label_file(cid)}", "mask": f"masks/{label_file(cid)}",
                     "height_m": f"{subj.height_m:.3f}", "sex": subj.sex})
    atomic_write_csv(root / PHANTOM_MANIFEST,
                     pd.DataFrame(rows, columns=["case_id", "image", "mask", "height_m", "sex"]))
    return digests
