"""``evaluate``: every transfer-learning run of a dataset, scored from nnU-Net's own fold outputs.

Four steps, each a function: :func:`find_runs` (``Xfer<Source>Trainer_n<N>`` folders and those
of the registry's sources with their own nnU-Net trainer, e.g. ``nnUNetTrainer``) →
:func:`fold_predictions` (every fold of the dataset's ``splits_final.json``: its validation
predictions, and what is missing) →
:func:`score_predictions` (metrics and measures against ``$nnUNet_raw/<Dataset>``, over
``workers`` processes; beside them the no-learning reference rows, ``threshold``, of every
validation case: :mod:`~nnunet_xfer.evaluation.references`) → :func:`summarize` (per
source × size × plans over all folds, each model group compared with the reference rows case by
case) and :func:`write_evaluation` (``cases.csv``, ``summary.json``, ``observers_williams.csv``).
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
                                read_cases,
                                validation_folder)
from nnunet_xfer.evaluation.references import (BEATS_RULE, REFERENCE_PLANS, REFERENCE_SIZE,
                                               REFERENCE_TRAINER, versus_references)
from nnunet_xfer.sources import PRETRAINED_SOURCES, REFERENCES, REGISTRY, is_reference, rank
from nnunet_xfer.splits import verify_dataset
from nnunet_xfer.study_grid import parse_trainer_name

COMMAND = "evaluate"
GROUP = ["source", "size_tag", "plans", "configuration"]
WILLIAMS_CSV = EVAL_OBSERVERS_WILLIAMS_CSV
FAILURE_RULE = ("every case counts: a failed case (exactly one of prediction and reference "
                "empty) keeps Dice 0 and enters RMS DTA, ASSD, HD95 and HD at the image diagonal "
                "in mm (worst_distance_mm) and NSD at 0; n_failed counts them")


@dataclass(frozen=True)
class Run:
    """One nnU-Net run folder ``<Trainer>__<Plans>__<config>`` the source registry knows."""

    folder: Path
    trainer: str
    plans: str
    configuration: str
    source: str
    #: training-set size of an ``_n<N>`` trainer; None for ``_nall`` and nnU-Net's own trainer
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
    """Every run folder of the dataset for ``configuration`` (and plans) whose trainer the source
    registry knows (``study_grid.parse_trainer_name``)."""
    runs = []
    for folder, trainer, run_plans in layout.run_folders(configuration):
        if plans is not None and run_plans != plans:
            continue
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


def debug_record(run: Run, fold: int) -> dict:
    """A run's fold's ``debug.json`` (nnU-Net's dump of the trainer, with our ``xfer_info``), read
    defensively: an empty dict when the file is missing or not a JSON object."""
    try:
        record = json.loads((run.fold_folder(fold) / DEBUG_JSON).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def xfer_record(run: Run, fold: int, key: str) -> dict | None:
    """``xfer_info[key]`` of a run's fold's ``debug.json`` (read defensively: None when the file,
    the key or a dict there is missing)."""
    info = debug_record(run, fold).get("xfer_info") or {}
    record = info.get(key) if isinstance(info, dict) else None
    return record if isinstance(record, dict) else None


def training_iterations(run: Run, fold: int) -> int | None:
    """Training iterations of a run's fold (epochs × iterations per epoch, as nnU-Net's own
    ``debug.json`` records them); None when not recorded."""
    record = debug_record(run, fold)
    try:
        return int(record["num_epochs"]) * int(record["num_iterations_per_epoch"])
    except (KeyError, TypeError, ValueError):
        return None


def transfer_record(run: Run, fold: int) -> dict | None:
    """The store entry a run's fold loaded, as the trainer recorded it in ``debug.json``
    (``xfer_info.transfer``: entry path, sha256, scope, the case ids it saw); None when the fold
    recorded none."""
    return xfer_record(run, fold, "transfer")


@dataclass(frozen=True)
class Pretraining:
    """What the pretraining of one run's fold saw of this dataset: ``seen`` (None: unknown) and
    where that comes from: ``none`` (no pretraining), ``debug.json`` (the run's own record of the
    entry it loaded) or ``missing`` (a pretrained source whose fold recorded nothing)."""

    seen: frozenset[str] | None
    origin: str
    record: dict | None = None


def run_pretraining(run: Run, fold: int, all_cases: list[str]) -> Pretraining:
    """The cases of this dataset that the entry loaded by ``run``'s fold saw, from that fold's
    ``debug.json`` (:func:`transfer_record`), never from the store as it is now: its case ids;
    every case for ``scope`` all without ids; none for ``scope`` fold without ids (the trainer
    refuses an entry that saw a validation case of its fold)."""
    if run.source not in PRETRAINED_SOURCES:
        return Pretraining(frozenset(), "none")
    record = transfer_record(run, fold)
    if record is None:
        return Pretraining(None, "missing")
    ids = record.get("case_ids")
    if isinstance(ids, list):
        seen = frozenset(map(str, ids))
    elif record.get("scope") == "all":
        seen = frozenset(all_cases)
    elif record.get("scope") == "fold":
        seen = frozenset()
    else:
        return Pretraining(None, "missing", record)
    return Pretraining(seen, "debug.json", record)


def explicit_schedule(run: Run, folds: list[int]) -> str | None:
    """The explicit fine-tuning options a run's folds recorded in ``debug.json``
    (``xfer_info.schedule`` with ``explicit`` true), as ``key=value`` text; None when every fold
    used the default schedule or recorded none."""
    found = []
    for fold in folds:
        schedule = xfer_record(run, fold, "schedule")
        if schedule is not None and schedule.get("explicit") is True:
            text = ", ".join(f"{k}={v}" for k, v in sorted(schedule.items()) if k != "explicit")
            if text not in found:
                found.append(text or "explicit")
    return " | ".join(found) if found else None


# ---------------------------------------------------------------- 3. score cases
@dataclass(frozen=True)
class ReferenceRow:
    """One no-learning reference row (``threshold``) of one validation ``case`` of ``fold``."""

    name: str
    fold: int
    case: str


def reference_rows(folds: list[dict]) -> list[ReferenceRow]:
    """A row of every reference of the registry for every validation case of every fold."""
    return [ReferenceRow(name, k, c) for name in REFERENCES for k, split in enumerate(folds)
            for c in split["val"]]


def score_predictions(predictions: list[Prediction], images: dict[str, Path],
                      labels: dict[str, Path], heights: dict[str, float],
                      workers: int = 1, desc: str | None = None,
                      references: list[ReferenceRow] = ()) -> list[dict]:
    """Metrics and measures of every prediction, then of every reference row, in the order
    given, whatever ``workers``.

    Work goes out by case (its image and reference are read once for all its predictions and
    reference rows).
    """
    by_case: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    refs_of: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for i, p in enumerate(predictions):
        if p.case not in labels or p.case not in images:
            raise UserError(f"case {p.case} of {p.path} has no image/label in the raw dataset; "
                            f"predict only the dataset's own cases")
        by_case[p.case].append((i, p.path))
    for i, r in enumerate(references, start=len(predictions)):
        if r.case not in labels or r.case not in images:
            raise UserError(f"validation case {r.case} of fold {r.fold} has no image/label in the "
                            f"raw dataset; re-run `nnunet-xfer convert`")
        refs_of[r.case].append((i, r.name))
    jobs = [CaseJob(c, images[c], labels[c], heights.get(c), tuple(by_case.get(c, ())),
                    tuple(refs_of.get(c, ())))
            for c in dict.fromkeys([*by_case, *refs_of])]
    scored: list[dict | None] = [None] * (len(predictions) + len(references))
    for rows in ordered_map(score_job, jobs, workers, desc=desc):
        for index, values in rows:
            scored[index] = values
    return scored  # type: ignore[return-value]


def case_rows(predictions: list[Prediction], scored: list[dict],
              pretraining: dict[tuple[Run, int], Pretraining], images: dict[str, Path],
              labels: dict[str, Path], references: list[ReferenceRow] = (),
              configuration: str = "2d") -> pd.DataFrame:
    """``cases.csv``: one row per prediction, run and fold facts beside its scores, then one
    per reference row (``scored`` holds the predictions' scores, then the reference rows')."""
    rows = []
    for p, s in zip(predictions, scored):
        pre = pretraining[(p.run, p.fold)]
        rows.append({"case_id": p.case, "source": p.run.source, "n": int(p.n),
                     "size_tag": p.run.size_tag, "fold": p.fold, "plans": p.run.plans,
                     "configuration": p.run.configuration, "trainer": p.run.trainer, **s,
                     "in_pretraining": pre.seen is not None and p.case in pre.seen,
                     "pretraining_record": pre.origin, "image": str(images[p.case]),
                     "reference": str(labels[p.case]), "prediction": str(p.path)})
    for r, s in zip(references, scored[len(predictions):]):
        rows.append({"case_id": r.case, "source": r.name, "n": REFERENCE_SIZE,
                     "size_tag": str(REFERENCE_SIZE), "fold": r.fold, "plans": REFERENCE_PLANS,
                     "configuration": configuration, "trainer": REFERENCE_TRAINER, **s,
                     "in_pretraining": False, "pretraining_record": "none",
                     "image": str(images[r.case]), "reference": str(labels[r.case]),
                     "prediction": ""})
    return pd.DataFrame(rows, columns=case_columns())


def case_columns() -> list[str]:
    """The columns of ``cases.csv`` in order."""
    return ["case_id", "source", "n", "size_tag", "fold", "plans", "configuration", "trainer",
            *METRIC_COLUMNS, "failed", "worst_distance_mm",
            *[f"{k}_{w}" for k in measure_keys() for w in ("ref", "pred")],
            "in_pretraining", "pretraining_record", "image", "reference", "prediction"]


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
    return rank(entry["source"]), entry["plans"], float(entry["n"])


def _mean_n(values) -> int | float:
    ns = sorted(set(int(v) for v in values))
    return ns[0] if len(ns) == 1 else float(np.mean(ns))


def summarize(cases: pd.DataFrame, missing: list[dict] | None = None,
              schedules: dict[tuple[str, str], str | None] | None = None,
              expected_cases: list[str] | None = None,
              pretraining_images: dict[tuple[str, str], dict[int, int]] | None = None,
              run_facts: dict[tuple[str, str], dict[str, list]] | None = None) -> list[dict]:
    """Per source × size × plans over all folds: metric statistics with failures counted,
    missing folds and predictions, whether the group has every validation case
    (``expected_cases``: those of every fold), pretraining overlap, how many images of this
    dataset its pretraining saw per fold (``pretraining_images`` by trainer and plans), explicit
    schedules, SMA/SMD agreement, the training iterations and pretraining data kinds its runs
    recorded (``run_facts`` by trainer and plans: ``iterations``, ``data_kinds``); for a model
    group also its paired comparison with every
    reference row on the same cases (``vs_reference``), and ``reference`` (True for the
    no-learning reference rows)."""
    lost, lost_folds = defaultdict(int), defaultdict(int)
    for gap in missing or []:
        lost_folds[(gap["trainer"], gap["plans"])] += len(gap["missing_folds"])
        for cases_lost in gap["missing_predictions"].values():
            lost[(gap["trainer"], gap["plans"])] += len(cases_lost)
    expected = set(expected_cases) if expected_cases is not None else None
    groups = []
    for key, g in cases.groupby(GROUP, sort=False):
        entry = dict(zip(GROUP, key))
        trainers = sorted(set(g.trainer))
        explicit = [s for t in trainers if (s := (schedules or {}).get((t, entry["plans"])))]
        entry.update({
            "n": _mean_n(g.n), "n_per_fold": sorted(set(g.n.astype(int))),
            "folds": sorted(set(g.fold.astype(int))), "n_cases": int(len(g)),
            "n_failed": int(g.failed.sum()),
            "n_missing_folds": int(sum(lost_folds[(t, entry["plans"])] for t in trainers)),
            "n_missing_predictions": int(sum(lost[(t, entry["plans"])] for t in trainers)),
            "n_expected_cases": len(expected) if expected is not None else None,
            "complete_cases": expected is None or set(g.case_id) == expected,
            "n_in_pretraining": int(g.in_pretraining.sum()),
            "n_pretraining_unknown": int((g.pretraining_record == "missing").sum()),
            "pretraining_images_per_fold": sorted({n for t in trainers for n in (
                pretraining_images or {}).get((t, entry["plans"]), {}).values()}),
            "explicit_schedule": " | ".join(explicit) if explicit else None,
            "training_iterations": sorted({i for t in trainers for i in (run_facts or {}).get(
                (t, entry["plans"]), {}).get("iterations", [])}),
            "pretraining_data_kinds": sorted({k for t in trainers for k in (run_facts or {}).get(
                (t, entry["plans"]), {}).get("data_kinds", [])}),
            "metrics": {m: metric_stats(g[m], g.failed, g.worst_distance_mm, m)
                        for m in METRIC_COLUMNS},
            "agreement": {m: agreement.agreement_stats(g[f"{m}_pred"].to_numpy(float),
                                                       g[f"{m}_ref"].to_numpy(float))
                          for m in ("sma_cm2", "smd_hu")},
            "reference": is_reference(entry["source"]),
        })
        if not entry["reference"]:
            entry["vs_reference"] = versus_references(g, cases)
        groups.append(entry)
    groups.sort(key=group_order)
    return groups


def observer_groups(cases: pd.DataFrame) -> list[tuple[dict, list[tuple[str, Path]]]]:
    """(group key, [(case, prediction)]) of every model's source × size × plans, for the observer
    verdicts (reference rows are not tested)."""
    groups = []
    for key, g in cases[~cases.source.map(is_reference)].groupby(GROUP, sort=False):
        per_case = g.drop_duplicates("case_id")
        entry = {**dict(zip(GROUP, key)), "n": _mean_n(g.n)}
        groups.append((entry, [(c, Path(p)) for c, p in zip(per_case.case_id, per_case.prediction)]))
    groups.sort(key=lambda item: group_order(item[0]))
    return groups


def _williams_table(rows: pd.DataFrame) -> pd.DataFrame:
    if not len(rows):
        return rows
    return rows.sort_values(["source", "plans", "n", "metric"], kind="stable",
                            key=lambda c: c.map(rank) if c.name == "source" else c)


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
    sub-folder per observer, masks named by case) also the human-level test of every
    source × size against the observers (``margin``: see
    :func:`~nnunet_xfer.evaluation.agreement.disagreement_ratio`), Holm-adjusted over the
    groups. ``workers`` processes
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
        own = " or ".join(s.trainer for s in REGISTRY.values() if s.trainer)
        raise UserError(f"no Xfer<Source>Trainer_n<N> or {own} runs with "
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
    references = reference_rows(folds)
    scored = score_predictions(predictions, images, labels, heights, workers,
                               desc=f"evaluate {layout.name}", references=references)
    pretraining = {(p.run, p.fold): None for p in predictions}
    pretraining = {key: run_pretraining(key[0], key[1], sorted(labels)) for key in pretraining}
    cases = case_rows(predictions, scored, pretraining, images, labels, references,
                      configuration)
    models = cases[~cases.source.map(is_reference)]
    folds_of: dict[Run, set[int]] = defaultdict(set)
    for p in predictions:
        folds_of[p.run].add(p.fold)
    schedules = {(r.trainer, r.plans): explicit_schedule(r, sorted(folds_of[r])) for r in runs}
    run_facts = {(r.trainer, r.plans): {
        "iterations": sorted({i for k in folds_of[r] if (i := training_iterations(r, k))}),
        "data_kinds": sorted({str(kind) for k in folds_of[r] if (kind := (
            pretraining[(r, k)].record or {}).get("data_kind"))})} for r in runs}
    plans_seen = sorted(set(models.plans))
    summary = {
        "dataset": layout.name, "configuration": configuration, "plans_filter": plans,
        "plans": plans_seen, "mixed_plans": len(plans_seen) > 1,
        "n_runs": len(runs), "n_rows": len(models), "n_failed": int(models.failed.sum()),
        "n_reference_rows": len(references), "references": list(REFERENCES),
        "reference_rule": BEATS_RULE,
        "failure_rule": FAILURE_RULE,
        "groups": summarize(cases, missing, schedules,
                            sorted(c for split in folds for c in split["val"]),
                            _pretraining_images(pretraining, sorted(labels)), run_facts),
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
        # the cases the tests rest on: observer cases that have predictions (the most of any
        # group; each verdict states its own), not every observer case
        summary["verdict_rule"] = agreement.verdict_rule(
            max((v["n_cases"] for v in verdicts), default=0),
            summary["observers"]["n_observers"], margin, len(verdicts))
    summary["case_sets_differ"] = not all(g["complete_cases"] for g in summary["groups"])
    summary["fold_training_sizes"] = [len(split["train"]) for split in folds]
    write_evaluation(claim, cases, summary, williams, overwrite)
    return Evaluation(out=out, n_rows=len(models), n_runs=len(runs),
                      n_failed=int(models.failed.sum()), incomplete=missing, verdicts=verdicts)


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


def _pretraining_images(pretraining: dict[tuple[Run, int], Pretraining],
                        all_cases: list[str]) -> dict[tuple[str, str], dict[int, int]]:
    """Per trainer and plans: how many images of this dataset each fold's pretraining saw."""
    counts: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
    cases = set(all_cases)
    for (run, fold), pre in pretraining.items():
        if pre.seen is not None:
            counts[(run.trainer, run.plans)][fold] = len(pre.seen & cases)
    return counts


def _overlap_summary(pretraining: dict[tuple[Run, int], Pretraining]) -> dict:
    """Per plans and trainer of a pretrained source: the entries its folds loaded (from their
    ``debug.json``), their data, its kind (``sources.DATA_KINDS``) and scope, the cases of this dataset they saw, per fold, and the
    folds that recorded nothing."""
    result: dict = {}
    for (run, fold), pre in sorted(pretraining.items(), key=lambda kv: (kv[0][0].trainer, kv[0][1])):
        if pre.origin == "none":
            continue
        entry = result.setdefault(run.plans, {}).setdefault(run.trainer, {
            "source": run.source, "entries": [], "data": [], "data_kind": [], "scope": [],
            "case_ids": [],
            "folds": {}, "unknown_folds": []})
        if pre.seen is None:
            entry["unknown_folds"].append(fold)
            continue
        record = pre.record or {}
        for key, value in (("entries", record.get("entry") or record.get("checkpoint")),
                           ("data", record.get("data")), ("data_kind", record.get("data_kind")),
                           ("scope", record.get("scope"))):
            if value is not None and str(value) not in entry[key]:
                entry[key].append(str(value))
        entry["case_ids"] = sorted(set(entry["case_ids"]) | pre.seen)
        entry["folds"][str(fold)] = len(pre.seen)
    for per_trainer in result.values():
        for entry in per_trainer.values():
            entry["n_cases"] = len(entry["case_ids"])
    return result
