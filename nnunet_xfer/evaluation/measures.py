"""Muscle-health measures of an L3 slice: SMA, SMD, IMAT and SMI, and plausibility flags.

Definitions (docs/measure.md, docs/definitions.md). By default the measures follow the
convention behind published sarcopenia cut-offs: only mask pixels within −29…+150 HU count as
muscle.

* SMA (cm²) = mask pixels within −29…+150 HU × pixel area;
* SMD (HU) = mean HU of those pixels;
* SMI (cm²/m²) = SMA / height²;
* IMAT (cm²) = pixels within −190…−30 HU in the muscle compartment (the mask with its holes
  filled: fat between and inside the muscles counts whether or not the mask left it out; holes
  larger than :data:`MAX_IMAT_HOLE_CM2` are not filled);
* ``imat_mask_cm2``: the earlier definition, mask pixels within −190…−30 HU;
* ``sma_mask_cm2``, ``smd_mask_hu``, ``smi_mask_cm2_m2``: the same over the whole mask (no HU range).

HU ranges are inclusive at both ends.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage
from tqdm import tqdm

from nnunet_xfer.atomic import atomic_write_csv, check_replaceable
from nnunet_xfer.errors import UserError, warn
from nnunet_xfer.imaging import (Image, Slice, check_path_pair, images_for_cases, list_cases,
                                 mask_of_label, read_image, read_mask)

#: What to do about a multi-label mask in ``measure --images/--masks`` (its real option).
LABEL_MAP_HINT = ("use --label-map to name the muscle label(s), e.g. --label-map 1 or "
                  "--label-map 1,86-89")

IMAT_HU = (-190.0, -30.0)
#: A hole of the muscle mask larger than this (cm²) is not part of the muscle compartment: where
#: the abdominal wall muscles close a ring, the hole is the abdominal cavity (visceral fat).
MAX_IMAT_HOLE_CM2 = 20.0
#: Muscle HU range of the published sarcopenia convention (Mitsiopoulos 1998; Prado 2008).
MUSCLE_HU = (-29.0, 150.0)
#: Columns of ``measure --images/--masks``'s CSV.
MEASURE_COLUMNS = ("case_id", "sma_cm2", "smd_hu", "imat_cm2", "smi_cm2_m2", "sma_mask_cm2",
                   "smd_mask_hu", "smi_mask_cm2_m2", "imat_mask_cm2", "muscle_pixels", "flags")
#: The measures of :func:`muscle_measures` in the order they are reported.
MEASURE_KEYS = ("sma_cm2", "smd_hu", "imat_cm2", "smi_cm2_m2", "sma_mask_cm2", "smd_mask_hu",
                "smi_mask_cm2_m2", "imat_mask_cm2")

# ---------------------------------------------------------------- quality-control thresholds
#: Plausible adult L3 SMA (cm²) and SMD (HU); outside them a case is flagged for a look.
PLAUSIBLE_SMA_CM2 = (40.0, 350.0)
PLAUSIBLE_SMD_HU = (10.0, 80.0)
#: Slices thicker than this (mm) blur muscle and fat (partial volume): flagged.
MAX_SLICE_THICKNESS_MM = 5.0
#: A fold model whose Dice against the ensemble is below this is flagged as disagreeing.
MIN_FOLD_DICE = 0.8
#: Air in a calibrated CT reads about −1000 HU; its median must fall in this range.
AIR_HU = (-1100.0, -850.0)
#: Values at or below this are scanner padding outside the reconstruction circle, not air.
PADDING_HU = -1500.0

#: Flag names (the ``flags`` column lists them separated by ``;``), with what they mean.
FLAGS = {
    "empty_mask": "the mask holds no muscle pixel",
    "fov_edge": "the mask touches the edge of the field of view (muscle may be cut off)",
    "thick_slice": f"slice thicker than {MAX_SLICE_THICKNESS_MM:g} mm",
    "sma_implausible": f"SMA outside {PLAUSIBLE_SMA_CM2[0]:g}–{PLAUSIBLE_SMA_CM2[1]:g} cm²",
    "smd_implausible": f"SMD outside {PLAUSIBLE_SMD_HU[0]:g}–{PLAUSIBLE_SMD_HU[1]:g} HU",
    "fold_disagreement": f"a fold model's Dice against the ensemble is below {MIN_FOLD_DICE:g}",
    "hu_not_calibrated": "the slice does not look like CT in HU (air not near −1000 HU)",
    "sex_unknown": "the sex given is neither male nor female (no sex-specific cut-off applied)",
}


def flag_line(case: str, flags: list[str]) -> str:
    """The printed warning of a case's quality flags (the CSV's ``flags`` column holds them too)."""
    return (f"case {case}: " + "; ".join(FLAGS.get(f, f) for f in flags)
            + f" (flagged {';'.join(flags)})")


def _within(hu: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    return (hu >= bounds[0]) & (hu <= bounds[1])


def muscle_compartment(mask: np.ndarray, pixel_cm2: float,
                       max_hole_cm2: float = MAX_IMAT_HOLE_CM2) -> np.ndarray:
    """The muscle compartment of a slice: the mask with its holes (4-connected background regions
    that do not reach the border) filled, each hole up to ``max_hole_cm2``."""
    mask = np.asarray(mask, dtype=bool)
    holes = ndimage.binary_fill_holes(mask) & ~mask
    if not holes.any():
        return mask
    labels, n = ndimage.label(holes)
    sizes = np.bincount(labels.ravel(), minlength=n + 1) * pixel_cm2
    small = sizes <= max_hole_cm2
    small[0] = False
    return mask | small[labels]


def muscle_measures(image_hu: np.ndarray, mask: np.ndarray, spacing: tuple[float, float],
                    height_m: float | None = None,
                    muscle_hu: tuple[float, float] = MUSCLE_HU) -> dict:
    """SMA, SMD, IMAT and SMI of one slice (HU image, boolean muscle mask), see the module doc.

    ``spacing`` is the (row, col) pixel size in mm. SMA/SMD/SMI count the mask pixels within
    ``muscle_hu``; ``*_mask_*`` count the whole mask. IMAT counts −190…−30 HU pixels of the
    muscle compartment (:func:`muscle_compartment`), ``imat_mask_cm2`` those of the mask only.
    An empty mask (or no pixel in range) gives areas 0 and SMD NaN; SMI is NaN when the height
    is unknown (None or NaN).
    ``sma_hu_refined_cm2`` is kept as an alias of ``sma_cm2`` for older callers.
    """
    image_hu = np.asarray(image_hu, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if image_hu.shape != mask.shape:
        raise ValueError(f"image {image_hu.shape} and mask {mask.shape} differ in shape")
    pixel_cm2 = float(spacing[0]) * float(spacing[1]) / 100.0
    hu = image_hu[mask]
    muscle = hu[_within(hu, muscle_hu)]
    sma, sma_mask = muscle.size * pixel_cm2, hu.size * pixel_cm2
    compartment = image_hu[muscle_compartment(mask, pixel_cm2)]
    known_height = height_m is not None and not math.isnan(height_m)
    h2 = float(height_m) ** 2 if known_height else math.nan
    return dict(
        sma_cm2=sma,
        smd_hu=float(muscle.mean()) if muscle.size else math.nan,
        imat_cm2=int(np.count_nonzero(_within(compartment, IMAT_HU))) * pixel_cm2,
        smi_cm2_m2=sma / h2 if known_height else math.nan,
        sma_mask_cm2=sma_mask,
        smd_mask_hu=float(hu.mean()) if hu.size else math.nan,
        smi_mask_cm2_m2=sma_mask / h2 if known_height else math.nan,
        imat_mask_cm2=int(np.count_nonzero(_within(hu, IMAT_HU))) * pixel_cm2,
        sma_hu_refined_cm2=sma,
    )


def check_finite_in_mask(image_hu: np.ndarray, mask: np.ndarray, case: str, path: Path) -> None:
    """Refuse NaN/inf image values inside the muscle (they would make SMD meaningless)."""
    values = np.asarray(image_hu)[np.asarray(mask, dtype=bool)]
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        bad = int(np.count_nonzero(~np.isfinite(values)))
        raise UserError(f"case {case}: image {path} has {bad} NaN/inf value(s) inside the muscle "
                        f"mask; fix the image")


def hu_looks_calibrated(image_hu: np.ndarray) -> bool:
    """Whether a CT slice looks like HU: the air around the body reads about −1000 HU.

    Scanner padding (≤ −1500 HU) is left out; a slice without any air (< −500 HU) is not
    judged calibrated either, because nothing in it can be checked.
    """
    values = np.asarray(image_hu, dtype=np.float64)
    values = values[np.isfinite(values) & (values > PADDING_HU)]
    air = values[values < -500]
    if air.size < 0.005 * max(values.size, 1):
        return False
    return AIR_HU[0] <= float(np.median(air)) <= AIR_HU[1]


def touches_edge(mask: np.ndarray) -> bool:
    """Whether the mask has a pixel in the first or last row or column."""
    mask = np.asarray(mask, dtype=bool)
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())


def quality_flags(image_hu: np.ndarray, mask: np.ndarray, measures: dict,
                  slice_thickness_mm: float | None = None,
                  fold_dice: list[float] | None = None) -> list[str]:
    """Names of the :data:`FLAGS` that apply to one measured slice (empty when nothing is odd)."""
    flags = []
    if not np.asarray(mask, dtype=bool).any():
        flags.append("empty_mask")
    elif touches_edge(mask):
        flags.append("fov_edge")
    if slice_thickness_mm is not None and slice_thickness_mm > MAX_SLICE_THICKNESS_MM:
        flags.append("thick_slice")
    if flags[:1] != ["empty_mask"]:
        sma, smd = measures["sma_cm2"], measures["smd_hu"]
        if not PLAUSIBLE_SMA_CM2[0] <= sma <= PLAUSIBLE_SMA_CM2[1]:
            flags.append("sma_implausible")
        if not (math.isfinite(smd) and PLAUSIBLE_SMD_HU[0] <= smd <= PLAUSIBLE_SMD_HU[1]):
            flags.append("smd_implausible")
    if fold_dice and min(fold_dice) < MIN_FOLD_DICE:
        flags.append("fold_disagreement")
    if not hu_looks_calibrated(image_hu):
        flags.append("hu_not_calibrated")
    return flags


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
    ids = table["case_id"].astype(str).str.strip()
    repeated = sorted(set(ids[ids.duplicated()]))
    if repeated:
        raise UserError(f"{path}: case {repeated[0]} has more than one height"
                        f"{f' (and {len(repeated) - 1} more case(s))' if len(repeated) > 1 else ''};"
                        f" give one line per case")
    heights = pd.to_numeric(table["height_m"], errors="coerce")
    bad = table["case_id"][heights.notna() & ((heights <= 0.3) | (heights > 3.0))]
    if len(bad):
        raise UserError(f"{path}: height of case {bad.iloc[0]} is not a height in metres "
                        "(give height_m in m, e.g. 1.72)")
    return dict(zip(ids, heights.astype(float)))


def _warn_no_spacing(image: Image, case: str) -> None:
    """A picture (``--allow-non-hu``) carries no pixel spacing: areas assume 1 mm pixels."""
    if not image.geometry_known:
        warn(f"case {case}: {image.path.name} has no pixel spacing; areas assume 1 mm pixels")


def _muscle_of(mask: Image, labels: list[int] | None, case: str) -> Slice:
    """The boolean muscle slice of a mask file and its grid: 0/1 values, or ``labels``."""
    arr, geometry = mask.plane(case)
    if labels is None:
        return Slice(mask_of_label(arr, 1, False, mask.path, hint=LABEL_MAP_HINT), geometry)
    if arr.dtype.kind == "f" and not np.all(np.equal(np.mod(arr, 1), 0)):
        raise UserError(f"{mask.path}: mask has non-integer values; give a label image")
    return Slice(np.isin(arr, labels), geometry)


def read_case(image_path: Path, mask_path: Path, case: str, labels: list[int] | None = None,
              allow_non_hu: bool = False) -> tuple[Image, np.ndarray]:
    """One case of ``measure --images/--masks``: the image slice in canonical orientation and its
    boolean muscle mask, after the reader's checks (``nnunet_xfer.imaging``) and the pair check
    (shape, spacing, origin, direction; a PNG/NPY file has no grid to compare)."""
    image = read_image(image_path, case, allow_non_hu=allow_non_hu)
    mask_image = read_mask(mask_path, case)
    plane, muscle = image.plane(case), _muscle_of(mask_image, labels, case)
    if image.geometry_known and mask_image.geometry_known:
        check_path_pair(plane.geometry, muscle.geometry, case, mask_path, "mask")
    elif plane.array.shape != muscle.array.shape:
        raise UserError(f"case {case}: mask {mask_path} has shape {muscle.array.shape} but image "
                        f"{image_path} is {plane.array.shape} (rows x columns); use the image's shape")
    _warn_no_spacing(image, case)
    canonical, turn = image.canonical()
    mask = np.ascontiguousarray(turn.apply(muscle.array.reshape(image.shape)))
    return canonical, mask.reshape(canonical.plane(case).array.shape)


def is_measure_csv(path: Path) -> bool:
    """Whether ``path`` is a CSV ``measure --images/--masks`` wrote (its header line is ours)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            header = f.readline().strip()
    except OSError:
        return False
    return header == ",".join(MEASURE_COLUMNS)


def measure_folder(images: Path, masks: Path, out_csv: Path, heights: Path | None = None,
                   label_map: list[int] | None = None, overwrite: bool = False,
                   allow_non_hu: bool = False) -> pd.DataFrame:
    """Muscle measures of every mask in ``masks`` (e.g. ``nnUNetv2_predict`` output) → ``out_csv``.

    Images, in HU, are named by case as nnU-Net names them or by the bare case id (any ending the
    reader knows), paired with the masks by exact case id (:func:`~nnunet_xfer.imaging.images_for_cases`);
    masks are ``<case>.<ending>`` on the image's grid (shape, spacing, origin, direction).
    ``label_map``: the mask values that are muscle (None: masks must be binary 0/1). ``heights``
    is an optional CSV ``case_id,height_m`` for SMI. Files are read by
    :func:`nnunet_xfer.imaging.read_image` (truncated files, invalid spacing, NaN/inf and, unless
    ``allow_non_hu``, 8-bit pictures are refused); an empty mask is warned about and flagged.
    Writes one row per mask, columns :data:`MEASURE_COLUMNS`, atomically, and returns the table.
    """
    claim = check_replaceable(out_csv, "measure", overwrite, folder=False,
                              written=is_measure_csv, inputs=(images, masks, heights))
    mask_paths = list_cases(Path(masks), "masks", channel_suffix=False)
    image_files = images_for_cases(Path(images), list(mask_paths))
    height_of = read_heights(Path(heights)) if heights is not None else {}

    rows, flagged = [], []
    # disable=None: a bar on a terminal, none in logs and pipes (keeps errors one line there)
    for case, mask_path in tqdm(mask_paths.items(), desc="measure", unit="case", disable=None):
        image_path = image_files[case]
        image, mask = read_case(image_path, mask_path, case, label_map, allow_non_hu)
        values, geometry = image.plane(case)
        check_finite_in_mask(values, mask, case, image_path)
        m = muscle_measures(values, mask, geometry.spacing, height_of.get(case))
        flags = quality_flags(values, mask, m)
        if flags:
            flagged.append(flag_line(case, flags))
        rows.append({"case_id": case, **{k: m[k] for k in MEASURE_KEYS},
                     "muscle_pixels": int(mask.sum()), "flags": ";".join(flags)})
    table = pd.DataFrame(rows, columns=list(MEASURE_COLUMNS))
    atomic_write_csv(claim, table)
    for line in flagged:  # about what was written (a refused run writes nothing to warn about)
        warn(line)
    return table
