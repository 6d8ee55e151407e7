"""Inter-observer study: pairwise agreement, Williams index, STAPLE consensus, muscle measures.

Raters are the reference, every observer (one sub-folder each, files named by case) and,
optionally, a model (a predictions folder or an nnU-Net fold/trainer folder with ``validation/``).
Only cases that the reference, every observer and the model all have are studied; the cases left
out are listed in ``summary.json`` so partial coverage is never silent.

Williams index (docs/definitions.md): agreement is Dice, or 1/RMS DTA for distances. A failed comparison
(exactly one mask empty, RMS undefined) counts as agreement 0 (an infinitely bad distance); identical
masks (RMS 0) get the agreement of the closest non-identical pair in the same comparison (the
smallest positive RMS), so 1/RMS stays finite and identical never scores below near-identical.
"""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_xfer.atomic import atomic_folder
from nnunet_xfer.errors import UserError
from nnunet_xfer.evaluation import agreement, io, measures, metrics

REFERENCE = "reference"
METRIC_COLUMNS = ("dice", "rms_dta_mm", "assd_mm", "hd95_mm", "hd_mm", "nsd")
MEASURE_COLUMNS = ("sma_cm2", "smd_hu", "imat_cm2", "sma_hu_refined_cm2")
WILLIAMS_METRICS = ("dice", "rms_dta_mm")
N_BOOT = 1000
SEED = 0

#: rater -> case_id -> (boolean mask, (row, column) spacing in mm)
Masks = dict[str, dict[str, tuple[np.ndarray, tuple[float, float]]]]


def _has_slices(folder: Path) -> bool:
    return folder.is_dir() and any(io.is_slice_file(p) for p in folder.iterdir())


def prediction_files(folder: Path) -> dict[str, Path]:
    """Prediction files by case id from a plain folder, a fold folder (``validation/``) or a
    trainer folder (``fold_*/validation/``, every fold's validation cases together)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"predictions folder {folder} does not exist")
    for candidate in (folder, folder / "validation"):
        if _has_slices(candidate):
            return io.list_cases(candidate, "predictions")
    files: dict[str, Path] = {}
    for fold in sorted(folder.glob("fold_*/validation")):
        if _has_slices(fold):
            files.update(io.list_cases(fold, "predictions"))
    if not files:
        raise UserError(f"predictions folder {folder} is empty: no mask files in it, in "
                        f"validation/ or in fold_*/validation/; point --predictions at "
                        f"nnU-Net's output")
    return files


def observer_files(folder: Path) -> dict[str, dict[str, Path]]:
    """``{observer: {case_id: path}}`` from one sub-folder per observer; needs at least two."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"observers folder {folder} does not exist")
    found = {d.name: io.list_cases(d, "observer masks") for d in sorted(folder.iterdir())
             if d.is_dir() and not d.name.startswith(".") and _has_slices(d)}
    if len(found) < 2:
        raise UserError(f"observers folder {folder} has {len(found)} observer sub-folder(s) with "
                        f"masks; the Williams index needs at least 2 observers (one sub-folder each)")
    if REFERENCE in found:
        raise UserError(f"observer sub-folder {folder / REFERENCE} clashes with the rater name "
                        f"'{REFERENCE}'; rename it")
    return found


def load_masks(files: dict[str, Path], cases: list[str], label: int, rater: str) -> dict:
    """Read ``cases`` of one rater as boolean masks of ``label``."""
    return {c: io.read_mask(files[c], label=label)
            for c in tqdm(cases, desc=f"read {rater}", unit="mask", leave=False)}


def check_geometry(masks: Masks, case_ids: list[str]) -> None:
    """Every rater's mask of a case must match the reference's shape and spacing."""
    for c in case_ids:
        ref, ref_spacing = masks[REFERENCE][c]
        for rater, per_case in masks.items():
            m, spacing = per_case[c]
            try:
                io.check_same_geometry(ref_spacing, ref.shape, spacing, m.shape, c)
            except UserError as e:
                raise UserError(f"{rater} mask of {e}") from None


def pairwise_table(masks: Masks, case_ids: list[str], pairs: list[tuple[str, str]],
                   desc: str = "pairwise") -> pd.DataFrame:
    """One row per case × rater pair with every segmentation metric (spacing of the first rater)."""
    rows = []
    for c in tqdm(case_ids, desc=desc, unit="case", leave=False):
        for a, b in pairs:
            (ma, spacing), (mb, _) = masks[a][c], masks[b][c]
            m = metrics.segmentation_metrics(ma, mb, spacing)
            rows.append({"case_id": c, "rater_a": a, "rater_b": b,
                         **{k: m[k] for k in METRIC_COLUMNS}, "failed": bool(m["failed"])})
    return pd.DataFrame(rows, columns=["case_id", "rater_a", "rater_b", *METRIC_COLUMNS, "failed"])


def _agreement(values: np.ndarray, metric: str, floor_mm: float) -> np.ndarray:
    """Dice as is; RMS as 1/RMS, failed (NaN) → 0 and 0 → 1/floor (see module docstring)."""
    if metric == "dice":
        return values.astype(float)
    rms = np.where(np.isnan(values), np.inf, np.maximum(values, floor_mm))
    return 1.0 / rms


def rms_floor(*rms: np.ndarray) -> float:
    """Smallest positive RMS DTA among the given values (1.0 mm when none is positive)."""
    values = np.concatenate([np.ravel(r) for r in rms])
    positive = values[np.isfinite(values) & (values > 0)]
    return float(positive.min()) if positive.size else 1.0


def williams_rows(pairwise: pd.DataFrame, rater: str, observers: list[str], case_ids: list[str],
                  n_boot: int = N_BOOT, seed: int = SEED) -> list[dict]:
    """Williams index of ``rater`` against ``observers`` (≥ 2) for Dice and 1/RMS, with its CI."""
    lookup = {}
    for r in pairwise.itertuples(index=False):
        for m in WILLIAMS_METRICS:
            value = getattr(r, m)
            lookup[(r.case_id, r.rater_a, r.rater_b, m)] = value
            lookup[(r.case_id, r.rater_b, r.rater_a, m)] = value
    obs_pairs = list(itertools.combinations(observers, 2))
    rows = []
    for m in WILLIAMS_METRICS:
        r_vs_o = np.array([[lookup[(c, rater, o, m)] for o in observers] for c in case_ids], float)
        o_vs_o = np.array([[lookup[(c, a, b, m)] for a, b in obs_pairs] for c in case_ids], float)
        floor_mm = rms_floor(r_vs_o, o_vs_o)
        wi = agreement.williams_index(_agreement(r_vs_o, m, floor_mm),
                                      _agreement(o_vs_o, m, floor_mm), n_boot=n_boot, seed=seed)
        rows.append({"rater": rater, "metric": m, "wi": float(wi["wi"]),
                     "ci_low": float(wi["ci_low"]), "ci_high": float(wi["ci_high"]),
                     "within_observer_variability": bool(wi["within_observer_variability"]),
                     "n_cases": len(case_ids), "n_observers": len(observers),
                     "rms_floor_mm": floor_mm if m == "rms_dta_mm" else None})
    return rows


def staple_consensus(observer_masks: list[np.ndarray]) -> np.ndarray:
    """STAPLE (SimpleITK) of the observers' masks, thresholded at probability 0.5."""
    images = [sitk.GetImageFromArray(m.astype(np.uint8)) for m in observer_masks]
    probability = sitk.GetArrayFromImage(sitk.STAPLE(images, 1.0))
    return probability >= 0.5


def _write_like(mask: np.ndarray, reference_file: Path, out_file: Path) -> None:
    """Write ``mask`` with the reference file's geometry (NIfTI)."""
    ref = sitk.ReadImage(str(reference_file))
    arr = mask.astype(np.uint8).reshape(sitk.GetArrayViewFromImage(ref).shape)
    img = sitk.GetImageFromArray(arr)
    img.CopyInformation(ref)
    sitk.WriteImage(img, str(out_file), useCompression=True)


def measures_tables(masks: Masks, images: dict[str, Path], case_ids: list[str]
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Muscle measures of every rater per case, and each rater's agreement with the reference."""
    rows = []
    for c in tqdm(case_ids, desc="measures", unit="case", leave=False):
        image, img_spacing = io.read_slice(images[c])
        for rater, per_case in masks.items():
            m, spacing = per_case[c]
            try:
                io.check_same_geometry(spacing, m.shape, img_spacing, image.shape, c)
            except UserError as e:
                raise UserError(f"image {images[c].name} of {e}") from None
            mm = measures.muscle_measures(image, m, spacing)
            rows.append({"case_id": c, "rater": rater, **{k: mm[k] for k in MEASURE_COLUMNS}})
    table = pd.DataFrame(rows)
    stats = []
    ref = table[table.rater == REFERENCE].set_index("case_id")
    for rater in masks:
        if rater == REFERENCE:
            continue
        sub = table[table.rater == rater].set_index("case_id")
        for measure in ("sma_cm2", "smd_hu"):
            stats.append({"rater": rater, "measure": measure,
                          **agreement.agreement_stats(sub.loc[case_ids, measure].to_numpy(float),
                                                      ref.loc[case_ids, measure].to_numpy(float))})
    return table, pd.DataFrame(stats)


def observer_study(reference: Path, observers: Path, predictions: Path | None = None,
                   name: str = "model", out: Path = Path("observer_study"), label: int = 1,
                   images: Path | None = None, overwrite: bool = False) -> Path:
    """Run the observer study and write its tables into ``out`` (see docs/evaluation.md).

    Writes ``pairwise.csv``, ``williams.csv``, ``staple/<case>.nii.gz`` + ``staple.csv``,
    ``summary.json`` and, with ``images``, ``measures.csv`` + ``measures_agreement.csv``.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"output folder {out} exists; pass --overwrite to replace it")
    reference = Path(reference)
    ref_files = io.list_cases(reference, "reference masks")
    obs_files = observer_files(observers)
    files: dict[str, dict[str, Path]] = {REFERENCE: ref_files, **obs_files}
    if predictions is not None:
        if name == REFERENCE or name in obs_files:
            raise UserError(f"--name {name!r} clashes with an observer or the reference; "
                            f"choose another")
        files[name] = prediction_files(predictions)
    case_ids = sorted(set.intersection(*(set(f) for f in files.values())))
    if not case_ids:
        raise UserError(f"no case is present for all raters ({', '.join(files)}); check that the "
                        f"files are named by the same case ids")
    image_files = io.images_for_cases(images, case_ids) if images is not None else None
    excluded = {r: sorted(set(f) - set(case_ids)) for r, f in files.items()}

    masks: Masks = {r: load_masks(f, case_ids, label, r) for r, f in files.items()}
    check_geometry(masks, case_ids)
    raters = list(files)
    observer_names = list(obs_files)
    pairwise = pairwise_table(masks, case_ids, list(itertools.combinations(raters, 2)))

    williams = []
    if len(observer_names) >= 3:  # an observer against the others needs ≥ 2 others
        for o in observer_names:
            others = [x for x in observer_names if x != o]
            williams += williams_rows(pairwise, o, others, case_ids)
    for r in [REFERENCE] + ([name] if predictions is not None else []):
        williams += williams_rows(pairwise, r, observer_names, case_ids)

    with atomic_folder(out) as tmp:
        (tmp / "staple").mkdir()
        staple_rows = []
        for c in tqdm(case_ids, desc="STAPLE", unit="case", leave=False):
            consensus = staple_consensus([masks[o][c][0] for o in observer_names])
            _write_like(consensus, ref_files[c], tmp / "staple" / f"{c}.nii.gz")
            for r in raters:
                m, spacing = masks[r][c]
                mt = metrics.segmentation_metrics(m, consensus, spacing)
                staple_rows.append({"case_id": c, "rater": r, **{k: mt[k] for k in METRIC_COLUMNS},
                                    "failed": bool(mt["failed"])})
        staple = pd.DataFrame(staple_rows)
        pairwise.to_csv(tmp / "pairwise.csv", index=False)
        pd.DataFrame(williams).to_csv(tmp / "williams.csv", index=False)
        staple.to_csv(tmp / "staple.csv", index=False)
        summary = {
            "raters": raters, "observers": observer_names,
            "model": name if predictions is not None else None,
            "cases": case_ids, "excluded_cases": {r: v for r, v in excluded.items() if v},
            "case_rule": "cases present for the reference, every observer and the model",
            "label": label, "williams": williams, "n_boot": N_BOOT, "seed": SEED,
            "vs_reference": _mean_by_rater(pairwise, REFERENCE),
            "vs_staple": staple.groupby("rater")[list(METRIC_COLUMNS)].mean().to_dict("index"),
        }
        if image_files is not None:
            table, stats = measures_tables(masks, image_files, case_ids)
            table.to_csv(tmp / "measures.csv", index=False)
            stats.to_csv(tmp / "measures_agreement.csv", index=False)
            summary["measures_agreement"] = stats.to_dict("records")
        write_json(tmp / "summary.json", summary)
    return out


def _mean_by_rater(pairwise: pd.DataFrame, rater: str) -> dict:
    """Mean metrics of every other rater against ``rater`` (e.g. each observer vs the reference)."""
    result = {}
    for other in pd.unique(pairwise[["rater_a", "rater_b"]].to_numpy().ravel()):
        if other == rater:
            continue
        sel = (((pairwise.rater_a == rater) & (pairwise.rater_b == other))
               | ((pairwise.rater_a == other) & (pairwise.rater_b == rater)))
        result[str(other)] = {k: float(pairwise.loc[sel, k].mean()) for k in METRIC_COLUMNS}
    return result


def json_ready(obj):
    """Plain JSON types: numpy scalars/arrays converted, NaN and infinities as null."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def write_json(path: Path, obj) -> None:
    """Write ``obj`` as strict JSON (NaN → null)."""
    Path(path).write_text(json.dumps(json_ready(obj), indent=2, allow_nan=False))
