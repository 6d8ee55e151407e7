"""Raters and their agreement: rater files, geometry checks, pairwise tables, Williams rows and
the human-level verdicts of models against observers.

A rater is the reference, an observer (one sub-folder each, files named by case) or a model (a
predictions folder, an nnU-Net fold folder with ``validation/`` or a trainer folder with
``fold_*/validation/``). Used by ``observers`` (observer_study.py) and ``evaluate --observers``
(fold_evaluation.py).

Williams index (docs/definitions.md#williams-index): agreement is Dice, or 1/RMS DTA for
distances. A failed comparison (exactly one mask empty, RMS undefined) counts as agreement 0 (an
infinitely bad distance); identical masks (RMS 0) get the agreement of the closest non-identical
pair in the same comparison (the smallest positive RMS), so 1/RMS stays finite and identical never
scores below near-identical. The interval resamples cases and observers (two levels); the verdict
rule is :func:`~nnunet_xfer.evaluation.agreement.verdict_rule`.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from nnunet_xfer.errors import UserError
from nnunet_xfer.evaluation import agreement, metrics
from nnunet_xfer.evaluation.parallel import ordered_map
from nnunet_xfer.imaging import Slice, check_geometry, has_slice_files, list_cases, load_mask
from nnunet_xfer.layout import VALIDATION_FOLDER, fold_folder_name

REFERENCE = "reference"
METRIC_COLUMNS = ("dice", "rms_dta_mm", "assd_mm", "hd95_mm", "hd_mm", "nsd")
#: Metrics that are distances in mm: a failed case enters their statistics at the worst value.
DISTANCE_COLUMNS = ("rms_dta_mm", "assd_mm", "hd95_mm", "hd_mm")
WILLIAMS_METRICS = ("dice", "rms_dta_mm")
N_BOOT = 1000
SEED = 0

#: rater -> case_id -> (boolean mask, its grid)
Masks = dict[str, dict[str, Slice]]


# ---------------------------------------------------------------- rater files
def prediction_files(folder: Path) -> dict[str, Path]:
    """Prediction files by case id from a plain folder, a fold folder (``validation/``) or a
    trainer folder (``fold_*/validation/``, every fold's validation cases together)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"predictions folder {folder} does not exist")
    for candidate in (folder, folder / VALIDATION_FOLDER):
        if has_slice_files(candidate):
            return list_cases(candidate, "predictions")
    files: dict[str, Path] = {}
    for fold in sorted(folder.glob(f"{fold_folder_name('*')}/{VALIDATION_FOLDER}")):
        if has_slice_files(fold):
            files.update(list_cases(fold, "predictions"))
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
    found = {d.name: list_cases(d, "observer masks") for d in sorted(folder.iterdir())
             if d.is_dir() and not d.name.startswith(".") and has_slice_files(d)}
    if len(found) < 2:
        raise UserError(f"observers folder {folder} has {len(found)} observer sub-folder(s) with "
                        f"masks; the Williams index needs at least 2 observers (one sub-folder each)")
    if REFERENCE in found:
        raise UserError(f"observer sub-folder {folder / REFERENCE} clashes with the rater name "
                        f"'{REFERENCE}'; rename it")
    return found


def load_masks(files: dict[str, Path], cases: list[str], label: int = 1) -> dict[str, Slice]:
    """Read ``cases`` of one rater as boolean masks of ``label`` with their grids."""
    return {c: load_mask(files[c], label=label) for c in cases}


def check_rater_geometry(masks: Masks, case_ids: list[str]) -> None:
    """Every rater's mask of a case must lie on the reference's grid (shape, spacing, origin,
    direction); UserError naming the rater and the case otherwise."""
    for c in case_ids:
        ref = masks[REFERENCE][c].geometry
        for rater, per_case in masks.items():
            try:
                check_geometry(ref, per_case[c].geometry, c)
            except UserError as e:
                raise UserError(f"{rater} mask of {e}") from None


# ---------------------------------------------------------------- pairwise agreement
def _pair_rows(masks: Masks, case: str, pairs: list[tuple[str, str]]) -> list[dict]:
    rows = []
    for a, b in pairs:
        ma, mb = masks[a][case], masks[b][case]
        m = metrics.segmentation_metrics(ma.array, mb.array, ma.geometry.spacing)
        rows.append({"case_id": case, "rater_a": a, "rater_b": b,
                     **{k: m[k] for k in METRIC_COLUMNS}, "failed": bool(m["failed"])})
    return rows


def _pair_rows_job(shared: tuple[Masks, list[tuple[str, str]]], case: str) -> list[dict]:
    masks, pairs = shared
    return _pair_rows(masks, case, pairs)


def pairwise_table(masks: Masks, case_ids: list[str], pairs: list[tuple[str, str]],
                   workers: int = 1, desc: str | None = None) -> pd.DataFrame:
    """One row per case × rater pair with every segmentation metric (spacing of the first rater)."""
    per_case = ordered_map(_pair_rows_job, case_ids, workers, shared=(masks, pairs), desc=desc)
    return pd.DataFrame([r for rows in per_case for r in rows],
                        columns=["case_id", "rater_a", "rater_b", *METRIC_COLUMNS, "failed"])


def with_worst(values: np.ndarray, failed: np.ndarray, worst: np.ndarray | float,
               metric: str) -> np.ndarray:
    """A metric's values with failed cases entered at their worst: distances at ``worst`` (mm, the
    image diagonal), NSD at 0; Dice is 0 already."""
    values = np.asarray(values, dtype=np.float64).copy()
    failed = np.asarray(failed, dtype=bool)
    if metric in DISTANCE_COLUMNS:
        values[failed] = np.broadcast_to(np.asarray(worst, dtype=np.float64), values.shape)[failed]
    elif metric == "nsd":
        values[failed] = 0.0
    return values


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
                  n_boot: int = N_BOOT, seed: int = SEED,
                  margin: float = agreement.HUMAN_LEVEL_MARGIN) -> list[dict]:
    """Williams index of ``rater`` against ``observers`` (≥ 2) for Dice and 1/RMS, with its
    two-level CI (cases and observers), the published reading and the human-level verdict."""
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
                                      _agreement(o_vs_o, m, floor_mm), n_boot=n_boot, seed=seed,
                                      margin=margin)
        rows.append({"rater": rater, "metric": m, "wi": float(wi["wi"]),
                     "ci_low": float(wi["ci_low"]), "ci_high": float(wi["ci_high"]),
                     "within_observer_variability": bool(wi["within_observer_variability"]),
                     "human_level": bool(wi["human_level"]),
                     "n_cases": len(case_ids), "n_observers": len(observers),
                     "rms_floor_mm": floor_mm if m == "rms_dta_mm" else None,
                     "rule": agreement.verdict_rule(len(case_ids), len(observers), margin)})
    return rows


# ---------------------------------------------------------------- models against observers
def observer_baseline(masks: Masks, observers: list[str], study: list[str], workers: int = 1,
                      margin: float = agreement.HUMAN_LEVEL_MARGIN) -> tuple[pd.DataFrame, dict]:
    """Pairwise table of the reference and the observers on the ``study`` cases, and the observers'
    summary: mean agreement of each with the reference (failures at the worst value), its range
    (the band of the report's headline figure) and each observer's Williams index (≥ 3)."""
    raters = [REFERENCE, *observers]
    base = pairwise_table(masks, study, list(itertools.combinations(raters, 2)), workers,
                          desc="observer pairs")
    worst = {c: masks[REFERENCE][c].geometry.diagonal_mm for c in study}
    info: dict = {"names": list(observers), "cases": list(study), "n_cases": len(study),
                  "n_observers": len(observers), "vs_reference": {}, "band": {}, "williams": []}
    for o in observers:
        sel = base[(base.rater_a == REFERENCE) & (base.rater_b == o)]
        diag = sel.case_id.map(worst).to_numpy(float)
        info["vs_reference"][o] = {k: float(np.mean(with_worst(sel[k], sel.failed, diag, k)))
                                   for k in METRIC_COLUMNS}
        info["vs_reference"][o]["n_failed"] = int(sel.failed.sum())
    for k in ("dice", "rms_dta_mm"):
        vals = [v[k] for v in info["vs_reference"].values()]
        info["band"][k] = [float(np.nanmin(vals)), float(np.nanmax(vals))]
    if len(observers) >= 3:
        for o in observers:
            info["williams"] += williams_rows(base, o, [x for x in observers if x != o], study,
                                              margin=margin)
    return base, info


def _model_rows_job(shared: tuple[Masks, pd.DataFrame, list[str], float],
                    group: tuple[dict, list[tuple[str, str]]]) -> tuple[list[dict], dict]:
    """Worker: the Williams rows and the verdict of one run group against the observers."""
    masks, base, observers, margin = shared
    key, predictions = group
    have = [c for c, _ in predictions]
    model = {c: load_mask(p) for c, p in predictions}
    rater = "model"
    scoped: Masks = {**masks, rater: model}
    check_rater_geometry({REFERENCE: masks[REFERENCE], rater: model}, have)
    pw = pd.DataFrame([r for c in have for r in _pair_rows(scoped, c, [(rater, o) for o in observers])])
    obs = base[base.rater_a.isin(observers) & base.rater_b.isin(observers)]
    wr = williams_rows(pd.concat([pw, obs[obs.case_id.isin(have)]]), rater, observers, have,
                       margin=margin)
    rows = [{**key, **{k: v for k, v in r.items() if k != "rater"}} for r in wr]
    verdict = {**key, "n_cases": len(have), "n_observers": len(observers),
               "wi": {r["metric"]: [r["wi"], r["ci_low"], r["ci_high"]] for r in wr},
               "within_observer_variability": all(r["within_observer_variability"] for r in wr),
               "human_level": all(r["human_level"] for r in wr),
               "rule": agreement.verdict_rule(len(have), len(observers), margin)}
    return rows, verdict


def observer_verdicts(groups: list[tuple[dict, list[tuple[str, Path]]]],
                      obs_files: dict[str, dict[str, Path]], labels: dict[str, Path],
                      workers: int = 1, margin: float = agreement.HUMAN_LEVEL_MARGIN
                      ) -> tuple[pd.DataFrame, dict, list[dict]]:
    """Williams index of every run group against the observers on the observer cases.

    ``groups``: (key, [(case, prediction file)]) per group, ``key`` a dict of what identifies the
    group (source, size, plans, …). A group reaches human level when the two-level CI of its
    Williams index passes the verdict rule for Dice and for 1/RMS DTA alike.
    Returns (Williams rows, the observers' summary, verdicts).
    """
    observers = list(obs_files)
    study = sorted(set.intersection(*(set(f) for f in obs_files.values())) & set(labels))
    if not study:
        raise UserError("no observer case is a case of the dataset (or delineated by every "
                        "observer); name observer masks by the dataset's case ids")
    masks: Masks = {REFERENCE: load_masks(labels, study),
                    **{o: load_masks(f, study) for o, f in obs_files.items()}}
    check_rater_geometry(masks, study)
    base, info = observer_baseline(masks, observers, study, workers, margin)
    jobs = [(key, [(c, p) for c, p in preds if c in set(study)]) for key, preds in groups]
    jobs = [j for j in jobs if j[1]]
    results = ordered_map(_model_rows_job, jobs, workers, shared=(masks, base, observers, margin),
                          desc="models vs observers")
    rows = [r for wr, _ in results for r in wr]
    return pd.DataFrame(rows), info, [v for _, v in results]
