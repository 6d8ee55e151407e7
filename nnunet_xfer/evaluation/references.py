"""The reference rows of every evaluation: no-learning baselines scored beside the models.

A reference is an entry of the source registry with ``reference=True``
(:data:`~nnunet_xfer.sources.REFERENCES`; today ``threshold``): not a source, no trainer, never a
"best source". Its mask is a function of the case's CT slice alone (:data:`MASKS`). ``evaluate``
scores it on every validation case of every fold, as rows of ``cases.csv`` that learned from no
annotated slice (``n`` 0, plans :data:`REFERENCE_PLANS`), and compares every model group with it
case by case (:func:`versus_references`): mean paired difference and its 95 % t interval, and
whether the model beats it by :data:`BEATS_RULE`.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import special

from nnunet_xfer.evaluation.raters import with_worst
from nnunet_xfer.evaluation.threshold_baseline import threshold_segmentation
from nnunet_xfer.sources import REFERENCES, is_reference

#: How each reference row's mask is made from a case's slice in HU.
MASKS: dict[str, Callable[[np.ndarray], np.ndarray]] = {"threshold": threshold_segmentation}
#: The plans, trainer and size tag of a reference row in ``cases.csv`` (it has no network).
REFERENCE_PLANS = "none"
REFERENCE_TRAINER = "none"
REFERENCE_SIZE = 0
#: Metrics the models are compared on; better is higher for Dice, lower for a distance.
COMPARED = {"dice": 1.0, "rms_dta_mm": -1.0}
#: The rule of "beats the reference", in words (summary.json, report, demo).
BEATS_RULE = ("a model beats a no-learning reference when, on the same validation cases, its "
              "mean paired difference is better on Dice (higher) and on RMS DTA (lower) with the "
              "95 % t interval of each difference excluding 0 (failed cases at their worst value)")

missing = set(REFERENCES) - set(MASKS)
assert not missing, f"reference rows without a mask maker: {missing}"  # registry and MASKS agree
del missing


def reference_mask(name: str, image_hu: np.ndarray) -> np.ndarray:
    """The uint8 0/1 mask of reference ``name`` for one 2D slice in HU."""
    return MASKS[name](image_hu)


def model_groups(groups: list[dict]) -> list[dict]:
    """The groups of trained models (every summary group that is not a reference row)."""
    return [g for g in groups if not is_reference(g["source"])]


def reference_groups(groups: list[dict]) -> list[dict]:
    """The summary groups of the reference rows."""
    return [g for g in groups if is_reference(g["source"])]


def mean_interval(values: np.ndarray, ci: float = 0.95) -> dict:
    """Mean of per-case values (or paired differences) with its two-sided ``ci`` t interval over the
    ``n`` finite values.

    Fewer than 2 cases give a mean without an interval (NaN ends)."""
    d = np.asarray(values, dtype=np.float64)
    d = d[np.isfinite(d)]
    n = int(d.size)
    if n == 0:
        return {"n": 0, "mean": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    mean = float(d.mean())
    if n < 2:
        return {"n": n, "mean": mean, "ci_low": math.nan, "ci_high": math.nan}
    half = float(special.stdtrit(n - 1, 0.5 + ci / 2)) * float(d.std(ddof=1)) / math.sqrt(n)
    return {"n": n, "mean": mean, "ci_low": mean - half, "ci_high": mean + half}


def case_scores(rows: pd.DataFrame, metric: str) -> pd.Series:
    """One metric per (fold, case), failed cases at their worst value."""
    values = with_worst(rows[metric], rows.failed, rows.worst_distance_mm, metric)
    return pd.Series(values, index=pd.MultiIndex.from_arrays(
        [rows.fold.astype(int).to_numpy(), rows.case_id.astype(str).to_numpy()]))


def versus_references(model_rows: pd.DataFrame, cases: pd.DataFrame) -> dict:
    """``{reference: {metric: paired difference (model − reference), "beats": bool}}`` of one
    model group against every reference scored in ``cases``, on the (fold, case) pairs both have.

    A difference is model − reference; ``beats`` applies :data:`BEATS_RULE`.
    """
    found = {}
    for name in sorted(set(cases.source) & set(REFERENCES)):
        ref_rows = cases[cases.source == name]
        entry: dict = {}
        for metric, better in COMPARED.items():
            model, ref = case_scores(model_rows, metric), case_scores(ref_rows, metric)
            common = model.index.intersection(ref.index)
            entry[metric] = mean_interval((model[common] - ref[common]).to_numpy())
        entry["beats"] = all(
            entry[m]["n"] > 1 and (entry[m]["ci_low"] > 0 if better > 0 else entry[m]["ci_high"] < 0)
            for m, better in COMPARED.items())
        found[name] = entry
    return found
