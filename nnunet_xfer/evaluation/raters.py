"""Raters and their agreement: rater files, geometry checks, pairwise tables, Williams rows and
the human-level verdicts of models against observers.

A rater is the reference, an observer (one sub-folder each, files named by case) or a model (a
predictions folder, an nnU-Net fold folder with ``validation/`` or a trainer folder with
``fold_*/validation/``). Used by ``observers`` (observer_study.py) and ``evaluate --observers``
(fold_evaluation.py).

Human level (docs/definitions.md#human-level): the rater's disagreement with the observers against
the observers' disagreement with each other, on 1 − Dice and on RMS DTA in mm. Identical masks
disagree by exactly 0 (one fixed baseline for every rater); a failed comparison (exactly one mask
empty) enters at its worst: 1 − Dice = 1, RMS DTA = the image diagonal in mm, as in every summary.
The test resamples cases and observers (two levels); the verdicts of raters judged together are
Holm-adjusted (:func:`holm_verdicts`); the rule is
:func:`~nnunet_xfer.evaluation.agreement.verdict_rule`.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd

from nnunet_xfer.errors import UserError
from nnunet_xfer.evaluation import agreement, metrics
from nnunet_xfer.evaluation.parallel import ordered_map
from nnunet_xfer.imaging import (PREDICTION_HINT, Slice, check_geometry, has_slice_files, list_cases,
                                 load_mask)
from nnunet_xfer.layout import VALIDATION_FOLDER, fold_folder_name

REFERENCE = "reference"
METRIC_COLUMNS = ("dice", "rms_dta_mm", "assd_mm", "hd95_mm", "hd_mm", "nsd")
#: Metrics that are distances in mm: a failed case enters their statistics at the worst value.
DISTANCE_COLUMNS = ("rms_dta_mm", "assd_mm", "hd95_mm", "hd_mm")
WILLIAMS_METRICS = ("dice", "rms_dta_mm")
N_BOOT = agreement.N_BOOT
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
    """``{observer: {case_id: path}}`` from one sub-folder per observer; needs at least three
    (:data:`~nnunet_xfer.evaluation.agreement.MIN_OBSERVERS_FOR_VERDICT`)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"observers folder {folder} does not exist")
    found = {d.name: list_cases(d, "observer masks") for d in sorted(folder.iterdir())
             if d.is_dir() and not d.name.startswith(".") and has_slice_files(d)}
    need = agreement.MIN_OBSERVERS_FOR_VERDICT
    if len(found) < need:
        raise UserError(f"observers folder {folder} has {len(found)} observer sub-folder(s) with "
                        f"masks; the human-level test needs at least {need} observers (one "
                        f"sub-folder each): with fewer, how much observers disagree among "
                        f"themselves cannot be resampled")
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


#: What each human-level metric measures as a disagreement (0 for identical masks).
DISAGREEMENT = {"dice": "1 - Dice", "rms_dta_mm": "RMS DTA mm"}


def disagreement(values: np.ndarray, failed: np.ndarray, worst: np.ndarray | float,
                 metric: str) -> np.ndarray:
    """A metric as a disagreement that is 0 for identical masks: 1 − Dice, or RMS DTA in mm with
    a failed comparison at ``worst`` (the image diagonal); NaN stays NaN (not read)."""
    values = np.asarray(values, dtype=np.float64)
    if metric == "dice":
        return 1.0 - values
    return with_worst(values, failed, worst, metric)


def williams_rows(pairwise: pd.DataFrame, rater: str, observers: list[str], case_ids: list[str],
                  worst: dict[str, float], n_boot: int = N_BOOT, seed: int = SEED,
                  margin: float = agreement.HUMAN_LEVEL_MARGIN) -> list[dict]:
    """The human-level test of ``rater`` against ``observers`` (≥ 3) on 1 − Dice and on RMS DTA:
    one row per metric with the disagreement ratio, its two-level 95 % interval, its one-sided
    p-value and the single-test verdict (:func:`holm_verdicts` adjusts a family of raters)."""
    lookup = {}
    for r in pairwise.itertuples(index=False):
        for m in WILLIAMS_METRICS:
            value = (getattr(r, m), bool(r.failed))
            lookup[(r.case_id, r.rater_a, r.rater_b, m)] = value
            lookup[(r.case_id, r.rater_b, r.rater_a, m)] = value
    obs_pairs = list(itertools.combinations(observers, 2))
    diag = np.array([worst[c] for c in case_ids], float)[:, None]
    rows = []
    for m in WILLIAMS_METRICS:
        def matrix(pairs: list[tuple[str, str]]) -> np.ndarray:
            cells = [[lookup[(c, a, b, m)] for a, b in pairs] for c in case_ids]
            values = np.array([[v for v, _ in row] for row in cells], float)
            failed = np.array([[f for _, f in row] for row in cells], bool)
            return disagreement(values, failed, np.broadcast_to(diag, values.shape), m)
        test = agreement.disagreement_ratio(matrix([(rater, o) for o in observers]),
                                            matrix(obs_pairs), margin=margin, n_boot=n_boot,
                                            seed=seed)
        rows.append({"rater": rater, "metric": m, "disagreement": DISAGREEMENT[m],
                     **{k: test[k] for k in ("rater_disagreement", "observer_disagreement",
                                             "ratio", "ci_low", "ci_high", "p_value")},
                     "p_holm": test["p_value"], "n_tests": 1, "margin": margin,
                     "human_level": bool(test["human_level"]),
                     "within_observer_variability": bool(test["within_observer_variability"]),
                     "n_cases": len(case_ids), "n_observers": len(observers),
                     "n_boot": test["n_boot"], "n_redrawn": test["n_redrawn"],
                     "n_zero_baseline": test["n_zero_baseline"],
                     "rule": agreement.verdict_rule(len(case_ids), len(observers), margin)})
    return rows


def holm_verdicts(rows: list[dict], key: tuple[str, ...] = ("rater",),
                  margin: float = agreement.HUMAN_LEVEL_MARGIN) -> list[dict]:
    """The verdicts of raters judged together, Holm-adjusted over the raters (groups by ``key``).

    A rater's p-value is the larger of its two metrics' (intersection–union: human level needs
    both, so no adjustment within a rater); Holm's step-down adjusts it over the raters; a rater
    is human level when its adjusted p ≤ :data:`~nnunet_xfer.evaluation.agreement.ALPHA`.
    Returns the rows with ``p_holm``, ``n_tests``, ``human_level`` and ``rule`` set."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(tuple(r[k] for k in key), []).append(r)
    p = [max(r["p_value"] for r in g) for g in groups.values()]
    adjusted = agreement.holm(p)
    out = []
    for g, p_holm in zip(groups.values(), adjusted):
        for r in g:
            out.append({**r, "p_holm": p_holm, "n_tests": len(groups),
                        "human_level": bool(p_holm <= agreement.ALPHA),
                        "rule": agreement.verdict_rule(r["n_cases"], r["n_observers"], margin,
                                                       len(groups))})
    return out


def verdict_of(rows: list[dict]) -> dict:
    """One rater's (or group's) verdict from its rows (one per metric)."""
    first = rows[0]
    return {"n_cases": first["n_cases"], "n_observers": first["n_observers"],
            "ratio": {r["metric"]: [r["ratio"], r["ci_low"], r["ci_high"]] for r in rows},
            "p_value": max(r["p_value"] for r in rows), "p_holm": first["p_holm"],
            "n_tests": first["n_tests"],
            "within_observer_variability": all(r["within_observer_variability"] for r in rows),
            "human_level": all(r["human_level"] for r in rows),
            "n_redrawn": max(r["n_redrawn"] for r in rows), "rule": first["rule"]}


# ---------------------------------------------------------------- models against observers
def observer_rows(pairwise: pd.DataFrame, observers: list[str], case_ids: list[str],
                  worst: dict[str, float], margin: float = agreement.HUMAN_LEVEL_MARGIN
                  ) -> list[dict]:
    """Each observer against the others (leave one out), unadjusted; needs one observer more than
    the test's minimum (the others must still be 3), else no rows."""
    if len(observers) <= agreement.MIN_OBSERVERS_FOR_VERDICT:
        return []
    return [r for o in observers
            for r in williams_rows(pairwise, o, [x for x in observers if x != o], case_ids, worst,
                                   margin=margin)]


def observer_baseline(masks: Masks, observers: list[str], study: list[str], workers: int = 1,
                      margin: float = agreement.HUMAN_LEVEL_MARGIN) -> tuple[pd.DataFrame, dict]:
    """Pairwise table of the reference and the observers on the ``study`` cases, and the observers'
    summary: mean agreement of each with the reference (failures at the worst value), its range
    (the band of the report's headline figure) and each observer's test against the others
    (≥ 4 observers; Holm-adjusted over the observers)."""
    raters = [REFERENCE, *observers]
    base = pairwise_table(masks, study, list(itertools.combinations(raters, 2)), workers,
                          desc="observer pairs")
    worst = case_worst(masks, study)
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
    info["williams"] = holm_verdicts(observer_rows(base, observers, study, worst, margin),
                                     margin=margin)
    return base, info


def case_worst(masks: Masks, case_ids: list[str]) -> dict[str, float]:
    """The worst distance of each case: its reference's image diagonal in mm."""
    return {c: masks[REFERENCE][c].geometry.diagonal_mm for c in case_ids}


def _model_rows_job(shared: tuple[Masks, pd.DataFrame, list[str], float],
                    group: tuple[dict, list[tuple[str, str]]]) -> list[dict]:
    """Worker: the unadjusted human-level rows of one run group against the observers."""
    masks, base, observers, margin = shared
    key, predictions = group
    have = [c for c, _ in predictions]
    model = {c: load_mask(p, hint=PREDICTION_HINT) for c, p in predictions}
    rater = "model"
    scoped: Masks = {**masks, rater: model}
    check_rater_geometry({REFERENCE: masks[REFERENCE], rater: model}, have)
    pw = pd.DataFrame([r for c in have for r in _pair_rows(scoped, c, [(rater, o) for o in observers])])
    obs = base[base.rater_a.isin(observers) & base.rater_b.isin(observers)]
    wr = williams_rows(pd.concat([pw, obs[obs.case_id.isin(have)]]), rater, observers, have,
                       case_worst(masks, have), margin=margin)
    return [{**key, **{k: v for k, v in r.items() if k != "rater"}} for r in wr]


def observer_verdicts(groups: list[tuple[dict, list[tuple[str, Path]]]],
                      obs_files: dict[str, dict[str, Path]], labels: dict[str, Path],
                      workers: int = 1, margin: float = agreement.HUMAN_LEVEL_MARGIN
                      ) -> tuple[pd.DataFrame, dict, list[dict]]:
    """The human-level test of every run group against the observers on the observer cases.

    ``groups``: (key, [(case, prediction file)]) per group, ``key`` a dict of what identifies the
    group (source, size, plans, …). The groups form one family: a group reaches human level when
    its Holm-adjusted p (over all groups) is at most α for 1 − Dice and RMS DTA alike.
    Returns (rows, the observers' summary, verdicts).
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
    keys = [tuple(sorted(key)) for key, _ in jobs]
    key_fields = keys[0] if keys else ()
    rows = holm_verdicts([r for wr in results for r in wr], key=key_fields, margin=margin)
    verdicts = []
    for key, _ in jobs:
        mine = [r for r in rows if all(r[k] == key[k] for k in key)]
        verdicts.append({**key, **verdict_of(mine)})
    return pd.DataFrame(rows), info, verdicts
