"""``evaluate``: every transfer-learning run of a dataset, scored from nnU-Net's own fold outputs.

Four steps, each a function: :func:`find_runs` (``Xfer<Source>Trainer_n<N>`` and plain
``nnUNetTrainer`` folders, source ``nnunet``) → :func:`fold_predictions` (every fold of the
dataset's ``splits_final.json``: its validation predictions, and what is missing) →
:func:`score_predictions` (metrics and measures against ``$nnUNet_raw/<Dataset>``, over
``workers`` processes) → :func:`summarize` (per source × size × plans over all folds) and
:func:`write_evaluation` (``cases.csv``, ``summary.json``, ``observers_williams.csv``).
Never imports the trainers.
"""
from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nnunet_xfer.atomic import Claim, atomic_write_csv, check_replaceable, owned_output
from nnunet_xfer.errors import UserError
from nnunet_xfer.evaluation import agreement
from nnunet_xfer.evaluation.outputs import write_json
from nnunet_xfer.evaluation.parallel import available_workers, ordered_map
from nnunet_xfer.evaluation.raters import (METRIC_COLUMNS, observer_files, observer_verdicts,
                                           with_worst)
from nnunet_xfer.evaluation.scoring import CaseJob, measure_keys, score_job
from nnunet_xfer.imaging import has_slice_files, images_for_cases, list_cases
from nnunet_xfer.layout import (DEBUG_JSON, EVAL_CASES_CSV, EVAL_OBSERVERS_WILLIAMS_CSV,
                                EVAL_SUMMARY_JSON,
                                DatasetLayout, fold_folder_name,
                                read_cases, record_path,
                                validation_folder)
from nnunet_xfer.sources import PRETRAINED_SOURCES, SOURCES
from nnunet_xfer.splits import verify_dataset
from nnunet_xfer.study_grid import parse_trainer_name

COMMAND = "evaluate"
PLAIN_TRAINER = "nnUNetTrainer"
PLAIN_SOURCE = "nnunet"
GROUP = ["source", "size_tag", "plans", "configuration"]
WILLIAMS_CSV = EVAL_OBSERVERS_WILLIAMS_CSV
FAILURE_RULE = ("every case counts: a failed case (exactly one of prediction and reference "
                "empty) keeps Dice 0 and enters RMS DTA, ASSD, HD95 and HD at the image diagonal "
                "in mm (worst_distance_mm) and NSD at 0; n_failed counts them")


@dataclass(frozen=True)
class Run:
    """One nnU-Net run folder ``<Trainer>__<Plans>__<config>`` of ours (or plain nnU-Net's)."""

    folder: Path
    trainer: str
    plans: str
    configuration: str
    source: str
    #: training-set size of an ``_n<N>`` trainer; None for ``_nall`` and plain nnU-Net
    size: int | None

    @property
    def size_tag(self) -> str:
        """The trainer's own size tag: ``5``, …, or ``all``."""
        return "all" if self.size is None else str(self.size)

    def fold_folder(self, fold: int) -> Path:
        """``<run>/fold_<k>``."""
        return self.folder / fold_folder_name(fold)

    def training_size(self, split: dict) -> int:
        """Training slices of this run in a fold: its size, or the whole training fold."""
        return self.size if self.size is not None else len(split["train"])


@dataclass(frozen=True)
class Prediction:
    """One validation prediction of one run: ``case`` of ``fold``, trained on ``n`` slices."""

    run: Run
    fold: int
    n: int
    case: str
    path: Path


@dataclass
class Evaluation:
    """What :func:`evaluate` found and wrote."""

    out: Path
    n_rows: int
    n_runs: int
    n_failed: int
    incomplete: list[dict] = field(default_factory=list)
    verdicts: list[dict] = field(default_factory=list)


# ---------------------------------------------------------------- 1. find runs
def find_runs(layout: DatasetLayout, plans: str | None, configuration: str) -> list[Run]:
    """Every Xfer/nnUNetTrainer run folder of the dataset for ``configuration`` (and plans)."""
    runs = []
    for folder, trainer, run_plans in layout.run_folders(configuration):
        if plans is not None and run_plans != plans:
            continue
        if trainer == PLAIN_TRAINER:
            source, size = PLAIN_SOURCE, None
        else:
            parsed = parse_trainer_name(trainer)
            if parsed is None:
                continue
            source, size = parsed
        runs.append(Run(folder, trainer, run_plans, configuration, source, size))
    return runs


# ---------------------------------------------------------------- 2. fold predictions
def fold_predictions(runs: list[Run], folds: list[dict]) -> tuple[list[Prediction], list[dict]]:
    """Every validation prediction of every run's folds, and each run's gaps: folds without a
    ``validation/`` holding predictions, and validation cases without a prediction."""
    predictions, missing = [], []
    for run in runs:
        gap = {"trainer": run.trainer, "plans": run.plans, "configuration": run.configuration,
               "folder": str(run.folder), "missing_folds": [], "missing_predictions": {}}
        for fold, split in enumerate(folds):
            validation = validation_folder(run.fold_folder(fold))
            if not has_slice_files(validation):
                gap["missing_folds"].append(fold)
                continue
            preds = list_cases(validation, "predictions")
            lost = sorted(c for c in split["val"] if c not in preds)
            if lost:
                gap["missing_predictions"][str(fold)] = lost
            n = run.training_size(split)
            predictions += [Prediction(run, fold, n, c, preds[c])
                            for c in split["val"] if c in preds]
        if gap["missing_folds"] or gap["missing_predictions"]:
            missing.append(gap)
    return predictions, missing


def pretraining_records(layout: DatasetLayout, plans: str, configuration: str,
                        folds: int, all_cases: list[str]) -> dict:
    """``{source: {"shared": record, "folds": {k: record}}}`` of the store entries for these plans.

    A record is ``{"data", "scope", "case_ids"}``: the cases of this dataset its pretraining saw.
    A fold's own entry (``fold_<k>/<source>.json``) wins over the shared one. ``scope == "all"``,
    or no ``case_ids`` list with a ``data`` naming this dataset, means every case.
    """
    def read(path: Path) -> dict | None:
        if not path.is_file():
            return None
        try:
            meta = json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError, OSError):
            raise UserError(f"{path} is not valid JSON; re-run `nnunet-xfer pretrain` for it "
                            f"(or remove it)") from None
        if not isinstance(meta, dict):
            return None
        ids = meta.get("case_ids")
        data = str(meta.get("data", ""))
        if meta.get("scope") == "all" or (not isinstance(ids, list) and layout.name in data):
            ids = list(all_cases)
        elif not isinstance(ids, list):
            ids = []
        return {"data": data, "scope": meta.get("scope"), "case_ids": sorted(map(str, ids))}

    found = {}
    for source in PRETRAINED_SOURCES:
        shared = read(record_path(layout.store_entry(source, plans, configuration)))
        per_fold = {k: r for k in range(folds) if (r := read(record_path(
            layout.store_entry(source, plans, configuration, fold=k)))) is not None}
        if shared is not None or per_fold:
            found[source] = {"shared": shared, "folds": per_fold}
    return found


def _seen_in_pretraining(records: dict, source: str, fold: int) -> set[str]:
    entry = records.get(source)
    if not entry:
        return set()
    record = entry["folds"].get(fold) or entry["shared"]
    return set(record["case_ids"]) if record else set()


def explicit_schedule(run: Run, folds: list[int]) -> str | None:
    """The explicit fine-tuning options a run's folds recorded in ``debug.json``
    (``xfer_info.schedule`` with ``explicit`` true), as ``key=value`` text; None when every fold
    used the default schedule or recorded none."""
    found = []
    for fold in folds:
        path = run.fold_folder(fold) / DEBUG_JSON
        try:
            info = json.loads(path.read_text()).get("xfer_info") or {}
        except (OSError, ValueError, UnicodeDecodeError, AttributeError):
            continue
        schedule = info.get("schedule") if isinstance(info, dict) else None
        if isinstance(schedule, dict) and schedule.get("explicit") is True:
            text = ", ".join(f"{k}={v}" for k, v in sorted(schedule.items()) if k != "explicit")
            if text not in found:
                found.append(text or "explicit")
    return " | ".join(found) if found else None


# ---------------------------------------------------------------- 3. score cases
def score_predictions(predictions: list[Prediction], images: dict[str, Path],
                      labels: dict[str, Path], heights: dict[str, float],
                      workers: int = 1, desc: str | None = None) -> list[dict]:
    """Metrics and measures of every prediction, in the order given, whatever ``workers``.

    Work goes out by case (its image and reference are read once for all its predictions).
    """
    by_case: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    for i, p in enumerate(predictions):
        if p.case not in labels or p.case not in images:
            raise UserError(f"case {p.case} of {p.path} has no image/label in the raw dataset; "
                            f"predict only the dataset's own cases")
        by_case[p.case].append((i, p.path))
    jobs = [CaseJob(c, images[c], labels[c], heights.get(c), tuple(preds))
            for c, preds in by_case.items()]
    scored: list[dict | None] = [None] * len(predictions)
    for rows in ordered_map(score_job, jobs, workers, desc=desc):
        for index, values in rows:
            scored[index] = values
    return scored  # type: ignore[return-value]


def case_rows(predictions: list[Prediction], scored: list[dict], pretraining: dict[str, dict],
              images: dict[str, Path], labels: dict[str, Path]) -> pd.DataFrame:
    """``cases.csv``: one row per prediction, run and fold facts beside its scores."""
    rows = []
    for p, s in zip(predictions, scored):
        seen = _seen_in_pretraining(pretraining.get(p.run.plans, {}), p.run.source, p.fold)
        rows.append({"case_id": p.case, "source": p.run.source, "n": int(p.n),
                     "size_tag": p.run.size_tag, "fold": p.fold, "plans": p.run.plans,
                     "configuration": p.run.configuration, "trainer": p.run.trainer, **s,
                     "in_pretraining": p.case in seen, "image": str(images[p.case]),
                     "reference": str(labels[p.case]), "prediction": str(p.path)})
    return pd.DataFrame(rows, columns=case_columns())


def case_columns() -> list[str]:
    """The columns of ``cases.csv`` in order."""
    return ["case_id", "source", "n", "size_tag", "fold", "plans", "configuration", "trainer",
            *METRIC_COLUMNS, "failed", "worst_distance_mm",
            *[f"{k}_{w}" for k in measure_keys() for w in ("ref", "pred")],
            "in_pretraining", "image", "reference", "prediction"]


# ---------------------------------------------------------------- 4. summarise
def metric_stats(values, failed=None, worst=None, metric: str = "dice") -> dict:
    """Mean, SD, median, quartiles and n of one metric over cases, failed cases entered at their
    worst value (:func:`~nnunet_xfer.evaluation.raters.with_worst`) and counted in ``n_failed``."""
    v = np.asarray(values, dtype=np.float64)
    failed = np.zeros(v.shape, bool) if failed is None else np.asarray(failed, dtype=bool)
    if worst is not None:
        v = with_worst(v, failed, worst, metric)
    n_failed = int(failed.sum())
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"n": 0, "n_failed": n_failed}
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"n": int(v.size), "n_failed": n_failed, "mean": float(v.mean()),
            "sd": float(v.std(ddof=1)) if v.size > 1 else float("nan"),
            "median": float(med), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1)}


def group_order(entry: dict) -> tuple:
    """Sort key of a source × size entry: the study's source order, plans, then size."""
    order = {s: i for i, s in enumerate((*SOURCES, PLAIN_SOURCE))}
    return order.get(entry["source"], 99), entry["plans"], float(entry["n"])


def _mean_n(values) -> int | float:
    ns = sorted(set(int(v) for v in values))
    return ns[0] if len(ns) == 1 else float(np.mean(ns))


def summarize(cases: pd.DataFrame, missing: list[dict] | None = None,
              schedules: dict[tuple[str, str], str | None] | None = None) -> list[dict]:
    """Per source × size × plans over all folds: metric statistics with failures counted,
    missing predictions, pretraining overlap, explicit schedules, SMA/SMD agreement."""
    lost = defaultdict(int)
    for gap in missing or []:
        for cases_lost in gap["missing_predictions"].values():
            lost[(gap["trainer"], gap["plans"])] += len(cases_lost)
    groups = []
    for key, g in cases.groupby(GROUP, sort=False):
        entry = dict(zip(GROUP, key))
        trainers = sorted(set(g.trainer))
        explicit = [s for t in trainers if (s := (schedules or {}).get((t, entry["plans"])))]
        entry.update({
            "n": _mean_n(g.n), "n_per_fold": sorted(set(g.n.astype(int))),
            "folds": sorted(set(g.fold.astype(int))), "n_cases": int(len(g)),
            "n_failed": int(g.failed.sum()),
            "n_missing_predictions": int(sum(lost[(t, entry["plans"])] for t in trainers)),
            "n_in_pretraining": int(g.in_pretraining.sum()),
            "explicit_schedule": " | ".join(explicit) if explicit else None,
            "metrics": {m: metric_stats(g[m], g.failed, g.worst_distance_mm, m)
                        for m in METRIC_COLUMNS},
            "agreement": {m: agreement.agreement_stats(g[f"{m}_pred"].to_numpy(float),
                                                       g[f"{m}_ref"].to_numpy(float))
                          for m in ("sma_cm2", "smd_hu")},
        })
        groups.append(entry)
    groups.sort(key=group_order)
    return groups


def observer_groups(cases: pd.DataFrame) -> list[tuple[dict, list[tuple[str, Path]]]]:
    """(group key, [(case, prediction)]) of every source × size × plans, for the observer verdicts."""
    groups = []
    for key, g in cases.groupby(GROUP, sort=False):
        per_case = g.drop_duplicates("case_id")
        entry = {**dict(zip(GROUP, key)), "n": _mean_n(g.n)}
        groups.append((entry, [(c, Path(p)) for c, p in zip(per_case.case_id, per_case.prediction)]))
    groups.sort(key=lambda item: group_order(item[0]))
    return groups


def _williams_table(rows: pd.DataFrame) -> pd.DataFrame:
    if not len(rows):
        return rows
    rank = {s: i for i, s in enumerate((*SOURCES, PLAIN_SOURCE))}
    return rows.sort_values(["source", "plans", "n", "metric"], kind="stable",
                            key=lambda c: c.map(lambda s: rank.get(s, 99))
                            if c.name == "source" else c)


# ---------------------------------------------------------------- 5. write
def write_evaluation(out: Path | Claim, cases: pd.DataFrame, summary: dict,
                     williams: pd.DataFrame | None, overwrite: bool) -> Path:
    """``cases.csv``, ``summary.json`` (and ``observers_williams.csv``) as one owned folder
    (``out``: the claim taken before the work, or a path checked now)."""
    with owned_output(out, COMMAND, overwrite) as tmp:
        atomic_write_csv(tmp / EVAL_CASES_CSV, cases)
        if williams is not None:
            atomic_write_csv(tmp / WILLIAMS_CSV, williams)
        write_json(tmp / EVAL_SUMMARY_JSON, summary)
    return out.path if isinstance(out, Claim) else Path(out)


# ---------------------------------------------------------------- the command
def evaluate(dataset: str, plans: str | None = None, configuration: str = "2d",
             out: Path | None = None, observers: Path | None = None, overwrite: bool = False,
             workers: int | None = None, margin: float | None = None) -> Evaluation:
    """Evaluate every run of ``dataset``; write ``cases.csv`` and ``summary.json`` into ``out``.

    ``out`` defaults to ``$nnUNet_results/<Dataset>/nnunet_xfer_evaluation``; one that equals or
    holds an nnU-Net dataset folder is refused, and an existing one is replaced only with
    ``overwrite`` when it holds nothing but an earlier evaluation. With ``observers`` (one
    sub-folder per observer, masks named by case) also the Williams index of every
    source × size against the observers and its human-level verdict (``margin``: see
    :func:`~nnunet_xfer.evaluation.agreement.human_level`). ``workers`` processes
    (default: the available cores) score the cases; the output does not depend on their number.
    UserError when no case could be evaluated.
    """
    layout = DatasetLayout.of(dataset)
    out = Path(out) if out is not None else layout.evaluation_dir
    claim = check_replaceable(out, COMMAND, overwrite,
                              inputs=(observers, layout.raw))
    out = claim.path
    workers = available_workers() if workers is None else max(1, int(workers))
    margin = agreement.HUMAN_LEVEL_MARGIN if margin is None else float(margin)
    raw = layout.existing_raw()
    labels = list_cases(layout.labels_dir, "labels")
    images = images_for_cases(layout.images_dir, sorted(labels))
    runs = find_runs(layout, plans, configuration)
    claim.check_inputs(r.folder for r in runs)
    if not runs:
        raise UserError(f"no Xfer<Source>Trainer_n<N> or {PLAIN_TRAINER} runs with "
                        f"{'plans ' + plans + ' and ' if plans else ''}configuration "
                        f"{configuration} in {layout.results}; train one with nnUNetv2_train first")
    # the folds trained on are the folds the subsets came from (one-line refusal otherwise)
    folds = verify_dataset(layout)
    heights = _heights(raw, layout)
    obs_files = observer_files(observers) if observers is not None else None

    predictions, missing = fold_predictions(runs, folds)
    if not predictions:
        raise UserError(f"no prediction to evaluate: none of the {len(runs)} run(s) in "
                        f"{layout.results} has a fold_<k>/validation/ with predictions for the "
                        f"folds of {layout.raw_splits.name}; let nnU-Net finish training and "
                        f"validation (`nnUNetv2_train ... --val`) first")
    scored = score_predictions(predictions, images, labels, heights, workers,
                               desc=f"evaluate {layout.name}")
    pretraining = {p: pretraining_records(layout, p, configuration, len(folds), sorted(labels))
                   for p in sorted({r.plans for r in runs})}
    cases = case_rows(predictions, scored, pretraining, images, labels)
    folds_of: dict[Run, set[int]] = defaultdict(set)
    for p in predictions:
        folds_of[p.run].add(p.fold)
    schedules = {(r.trainer, r.plans): explicit_schedule(r, sorted(folds_of[r])) for r in runs}
    plans_seen = sorted(set(cases.plans))
    summary = {
        "dataset": layout.name, "configuration": configuration, "plans_filter": plans,
        "plans": plans_seen, "mixed_plans": len(plans_seen) > 1,
        "n_runs": len(runs), "n_rows": len(cases), "n_failed": int(cases.failed.sum()),
        "failure_rule": FAILURE_RULE,
        "groups": summarize(cases, missing, schedules),
        "missing": missing,
        "pretraining_overlap": _overlap_summary(pretraining),
        "heights_known": len(heights),
    }
    williams, verdicts = None, []
    if obs_files is not None:
        table, summary["observers"], verdicts = observer_verdicts(
            observer_groups(cases), obs_files, labels, workers, margin)
        williams = _williams_table(table)
        summary["human_level"] = verdicts
        summary["verdict_rule"] = agreement.verdict_rule(
            summary["observers"]["n_cases"], summary["observers"]["n_observers"], margin)
    write_evaluation(claim, cases, summary, williams, overwrite)
    return Evaluation(out=out, n_rows=len(cases), n_runs=len(runs),
                      n_failed=int(cases.failed.sum()), incomplete=missing, verdicts=verdicts)


def evaluate_dataset(dataset: str, plans: str | None = None, configuration: str = "2d",
                     out: Path | None = None, observers: Path | None = None,
                     overwrite: bool = False, workers: int | None = None) -> Path:
    """:func:`evaluate`, returning the output folder."""
    return evaluate(dataset, plans, configuration, out, observers, overwrite, workers).out


def _heights(raw: Path, layout: DatasetLayout) -> dict[str, float]:
    """Per-case heights in m from the raw dataset's ``cases.csv``, when it has them."""
    if not layout.cases_csv.is_file():
        return {}
    table = read_cases(raw)
    if "height_m" not in table.columns:
        return {}
    heights = pd.to_numeric(table["height_m"], errors="coerce")
    return {c: float(h) for c, h in zip(table["case_id"], heights) if np.isfinite(h)}


def _overlap_summary(pretraining: dict) -> dict:
    """Per plans and source: the data, scope and cases of this dataset its pretraining saw
    (shared entry and per-fold entries together)."""
    result = {}
    for plans, per_source in pretraining.items():
        result[plans] = {}
        for source, entry in per_source.items():
            records = ([entry["shared"]] if entry["shared"] else []) + list(entry["folds"].values())
            ids = sorted(set().union(*(r["case_ids"] for r in records)))
            result[plans][source] = {
                "data": records[0]["data"], "scope": records[0]["scope"], "n_cases": len(ids),
                "case_ids": ids,
                "folds": {str(k): len(r["case_ids"]) for k, r in entry["folds"].items()}}
    return result

