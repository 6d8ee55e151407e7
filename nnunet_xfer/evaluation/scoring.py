"""Scoring one case: its image and reference read once, then every prediction of it.

The unit of work of ``evaluate``: :func:`score_case` reads the case's CT slice and reference
label, checks that they share a grid, measures the reference, and for each prediction of the case
(one per run that validated it) checks the grid, computes the segmentation metrics and the muscle
measures. Masks are checked by their minimum and maximum rather than their set of values, and
measures see only the HU values under the mask (:func:`mask_measures`).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_xfer.errors import UserError
from nnunet_xfer.evaluation import measures, metrics, references
from nnunet_xfer.imaging import PREDICTION_HINT, check_geometry, load_mask, load_slice

#: Metric columns of a scored prediction (``failed``: exactly one of prediction and reference empty).
METRIC_COLUMNS = ("dice", "rms_dta_mm", "assd_mm", "hd95_mm", "hd_mm", "nsd")


@dataclass(frozen=True)
class CaseJob:
    """One case and the predictions of it to score; ``index`` orders the rows of the output."""

    case: str
    image: Path
    label: Path
    height_m: float | None
    #: (row index, prediction file) for every run that predicted this case
    predictions: tuple[tuple[int, Path], ...]
    #: (row index, reference name) for every no-learning reference row of this case
    #: (:mod:`~nnunet_xfer.evaluation.references`): its mask is made from the image here
    references: tuple[tuple[int, str], ...] = ()


def mask_measures(image_hu: np.ndarray, mask: np.ndarray, spacing: tuple[float, float],
                  height_m: float | None = None) -> dict:
    """:func:`measures.muscle_measures` of a mask, computed on the HU values under it only.

    The measures depend only on those values and the pixel size, so the image is not converted
    or copied as a whole.
    """
    values = np.asarray(image_hu)[np.asarray(mask, dtype=bool)].reshape(1, -1)
    return measures.muscle_measures(values, np.ones(values.shape, dtype=bool), spacing, height_m)


@functools.lru_cache(maxsize=1)
def measure_keys() -> tuple[str, ...]:
    """The names of the muscle measures, in the order ``muscle_measures`` returns them."""
    return tuple(mask_measures(np.zeros((1, 1)), np.zeros((1, 1), bool), (1.0, 1.0), 1.7))


def score_case(job: CaseJob) -> list[tuple[int, dict]]:
    """Metrics and measures of every prediction of ``job.case`` against its reference label, and
    of every no-learning reference row of it (its mask made from the image).

    Each result holds the metrics, ``failed``, ``worst_distance_mm`` (the image diagonal: the
    value a failed case takes in distance statistics) and the measures of reference and
    prediction (``<measure>_ref``, ``<measure>_pred``). UserError naming the file and case when a
    grid differs or a mask holds other labels.
    """
    image = load_slice(job.image)
    ref = load_mask(job.label)
    try:
        check_geometry(ref.geometry, image.geometry, job.case)
    except UserError as e:
        raise UserError(f"image {job.image} of {e}") from None
    spacing = ref.geometry.spacing
    ref_measures = mask_measures(image.array, ref.array, spacing, job.height_m)
    worst = ref.geometry.diagonal_mm

    def score(mask: np.ndarray) -> dict:
        m = metrics.segmentation_metrics(mask, ref.array, spacing)
        pm = mask_measures(image.array, mask, spacing, job.height_m)
        return {**{k: m[k] for k in METRIC_COLUMNS}, "failed": bool(m["failed"]),
                "worst_distance_mm": worst,
                **{f"{k}_ref": ref_measures[k] for k in ref_measures},
                **{f"{k}_pred": pm[k] for k in pm}}

    scored = []
    for index, path in job.predictions:
        pred = load_mask(path, hint=PREDICTION_HINT)
        try:
            check_geometry(ref.geometry, pred.geometry, job.case)
        except UserError as e:
            raise UserError(f"prediction {path} of {e}") from None
        scored.append((index, score(pred.array)))
    for index, name in job.references:
        scored.append((index, score(references.reference_mask(name, image.array))))
    return scored


def score_job(_shared, job: CaseJob) -> list[tuple[int, dict]]:
    """:func:`score_case` in the form :func:`~nnunet_xfer.evaluation.parallel.ordered_map` calls."""
    return score_case(job)
