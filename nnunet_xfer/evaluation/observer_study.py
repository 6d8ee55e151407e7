"""The ``observers`` command: an inter-observer study with Williams index, STAPLE and measures.

Raters are the reference, every observer (one sub-folder each, files named by case) and,
optionally, a model (a predictions folder or an nnU-Net fold/trainer folder with ``validation/``).
Only cases that the reference, every observer and the model all have are studied; the cases left
out are listed in ``summary.json`` so partial coverage is never silent. Rater files, geometry
checks, pairwise tables and Williams rows live in :mod:`nnunet_xfer.evaluation.raters`.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk

from nnunet_xfer.atomic import atomic_write_csv, check_replaceable, owned_output
from nnunet_xfer.errors import UserError
from nnunet_xfer.evaluation import agreement, metrics
from nnunet_xfer.evaluation.outputs import write_json
from nnunet_xfer.evaluation.parallel import available_workers
from nnunet_xfer.evaluation.raters import (METRIC_COLUMNS, N_BOOT, REFERENCE, SEED, Masks,
                                           check_rater_geometry, load_masks, observer_files,
                                           pairwise_table, prediction_files, williams_rows,
                                           with_worst)
from nnunet_xfer.evaluation.scoring import mask_measures
from nnunet_xfer.imaging import (check_geometry, images_for_cases, label_file, list_cases,
                                 load_slice, read_mask)
from nnunet_xfer.layout import (EVAL_SUMMARY_JSON, OBS_MEASURES_AGREEMENT_CSV, OBS_MEASURES_CSV,
                                OBS_PAIRWISE_CSV,
                                OBS_STAPLE_CSV, OBS_WILLIAMS_CSV)

COMMAND = "observers"
MEASURE_COLUMNS = ("sma_cm2", "smd_hu", "imat_cm2", "sma_hu_refined_cm2")
STAPLE_FOLDER = "staple"
FAILURE_RULE = ("a failed comparison (exactly one mask empty) enters the mean of a distance at the "
                "image diagonal in mm and NSD at 0 (Dice is 0); n_failed counts them")


@dataclass
class ObserverStudy:
    """What :func:`observer_study` wrote: the folder and the Williams rows with their verdicts."""

    out: Path
    cases: list[str]
    williams: list[dict] = field(default_factory=list)


def staple_consensus(observer_masks: list[np.ndarray]) -> np.ndarray:
    """STAPLE (SimpleITK) of the observers' masks, thresholded at probability 0.5."""
    images = [sitk.GetImageFromArray(m.astype(np.uint8)) for m in observer_masks]
    probability = sitk.GetArrayFromImage(sitk.STAPLE(images, 1.0))
    return probability >= 0.5


def _write_like(mask: np.ndarray, reference_file: Path, out_file: Path) -> None:
    """Write ``mask`` with the reference file's geometry (NIfTI)."""
    ref = read_mask(reference_file)
    arr = mask.astype(np.uint8).reshape(ref.shape)
    sitk.WriteImage(ref.to_sitk(arr), str(out_file), useCompression=True)


def measures_tables(masks: Masks, images: dict[str, Path], case_ids: list[str]
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Muscle measures of every rater per case, and each rater's agreement with the reference."""
    rows = []
    for c in case_ids:
        image = load_slice(images[c])
        for rater, per_case in masks.items():
            m = per_case[c]
            try:
                check_geometry(m.geometry, image.geometry, c)
            except UserError as e:
                raise UserError(f"image {images[c].name} of {e}") from None
            mm = mask_measures(image.array, m.array, m.geometry.spacing)
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
                   images: Path | None = None, overwrite: bool = False,
                   workers: int | None = None, margin: float | None = None) -> Path:
    """Run the observer study and write its tables into ``out`` (see docs/evaluation.md).

    Writes ``pairwise.csv``, ``williams.csv``, ``staple/<case>.nii.gz`` + ``staple.csv``,
    ``summary.json`` and, with ``images``, ``measures.csv`` + ``measures_agreement.csv``.
    """
    return run_observer_study(reference, observers, predictions, name, out, label, images,
                              overwrite, workers, margin).out


def run_observer_study(reference: Path, observers: Path, predictions: Path | None = None,
                       name: str = "model", out: Path = Path("observer_study"), label: int = 1,
                       images: Path | None = None, overwrite: bool = False,
                       workers: int | None = None, margin: float | None = None) -> ObserverStudy:
    """:func:`observer_study`, returning what it found (the CLI prints the verdicts)."""
    margin = agreement.HUMAN_LEVEL_MARGIN if margin is None else float(margin)
    claim = check_replaceable(out, COMMAND, overwrite,
                              inputs=(reference, observers, predictions, images))
    out = claim.path
    workers = available_workers() if workers is None else max(1, int(workers))
    reference = Path(reference)
    ref_files = list_cases(reference, "reference masks")
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
    image_files = images_for_cases(images, case_ids) if images is not None else None
    excluded = {r: sorted(set(f) - set(case_ids)) for r, f in files.items()}

    masks: Masks = {r: load_masks(f, case_ids, label) for r, f in files.items()}
    check_rater_geometry(masks, case_ids)
    raters = list(files)
    observer_names = list(obs_files)
    pairwise = pairwise_table(masks, case_ids, list(itertools.combinations(raters, 2)), workers,
                              desc="pairwise")
    worst = {c: masks[REFERENCE][c].geometry.diagonal_mm for c in case_ids}

    williams = []
    if len(observer_names) >= 3:  # an observer against the others needs ≥ 2 others
        for o in observer_names:
            others = [x for x in observer_names if x != o]
            williams += williams_rows(pairwise, o, others, case_ids, margin=margin)
    for r in [REFERENCE] + ([name] if predictions is not None else []):
        williams += williams_rows(pairwise, r, observer_names, case_ids, margin=margin)

    with owned_output(claim) as tmp:
        (tmp / STAPLE_FOLDER).mkdir()
        staple_rows = []
        for c in case_ids:
            consensus = staple_consensus([masks[o][c].array for o in observer_names])
            _write_like(consensus, ref_files[c], tmp / STAPLE_FOLDER / label_file(c))
            for r in raters:
                m = masks[r][c]
                mt = metrics.segmentation_metrics(m.array, consensus, m.geometry.spacing)
                staple_rows.append({"case_id": c, "rater": r, **{k: mt[k] for k in METRIC_COLUMNS},
                                    "failed": bool(mt["failed"])})
        staple = pd.DataFrame(staple_rows)
        atomic_write_csv(tmp / OBS_PAIRWISE_CSV, pairwise)
        atomic_write_csv(tmp / OBS_WILLIAMS_CSV, pd.DataFrame(williams))
        atomic_write_csv(tmp / OBS_STAPLE_CSV, staple)
        summary = {
            "raters": raters, "observers": observer_names,
            "model": name if predictions is not None else None,
            "cases": case_ids, "excluded_cases": {r: v for r, v in excluded.items() if v},
            "case_rule": "cases present for the reference, every observer and the model",
            "label": label, "williams": williams, "n_boot": N_BOOT, "seed": SEED,
            "verdict_rule": agreement.verdict_rule(len(case_ids), len(observer_names), margin),
            "failure_rule": FAILURE_RULE,
            "vs_reference": _mean_by_rater(pairwise, REFERENCE, worst),
            "vs_staple": {str(r): _means(g, worst) for r, g in staple.groupby("rater")},
        }
        if image_files is not None:
            table, stats = measures_tables(masks, image_files, case_ids)
            atomic_write_csv(tmp / OBS_MEASURES_CSV, table)
            atomic_write_csv(tmp / OBS_MEASURES_AGREEMENT_CSV, stats)
            summary["measures_agreement"] = stats.to_dict("records")
        write_json(tmp / EVAL_SUMMARY_JSON, summary)
    return ObserverStudy(out=out, cases=case_ids, williams=williams)


def _means(rows: pd.DataFrame, worst: dict[str, float]) -> dict:
    """Mean of every metric over ``rows`` with failed cases at their worst value, and how many
    failed."""
    diag = rows.case_id.map(worst).to_numpy(float)
    means = {k: float(np.mean(with_worst(rows[k], rows.failed, diag, k))) if len(rows) else None
             for k in METRIC_COLUMNS}
    return {**means, "n_cases": int(len(rows)), "n_failed": int(rows.failed.sum())}


def _mean_by_rater(pairwise: pd.DataFrame, rater: str, worst: dict[str, float]) -> dict:
    """Mean metrics of every other rater against ``rater`` (e.g. each observer vs the reference)."""
    result = {}
    for other in pd.unique(pairwise[["rater_a", "rater_b"]].to_numpy().ravel()):
        if other == rater:
            continue
        sel = (((pairwise.rater_a == rater) & (pairwise.rater_b == other))
               | ((pairwise.rater_a == other) & (pairwise.rater_b == rater)))
        result[str(other)] = _means(pairwise.loc[sel], worst)
    return result
