"""Evaluate every transfer-learning run of a dataset from nnU-Net's own fold outputs.

Reads ``$nnUNet_results/<Dataset>/<Trainer>__<Plans>__<config>/fold_*/validation/*`` for
``Xfer<Source>Trainer_n<N>`` trainers and plain ``nnUNetTrainer`` (source ``nnunet``), the raw
images and labels of ``$nnUNet_raw/<Dataset>``, and writes ``cases.csv`` (one row per case × run)
and ``summary.json`` (per source × size × plans over all folds). Never imports the trainers.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from nnunet_xfer.atomic import atomic_folder
from nnunet_xfer import settings
from nnunet_xfer.layout import EVALUATION_FOLDER, DatasetLayout, resolve_dataset_name as dataset_name
from nnunet_xfer.errors import UserError
from nnunet_xfer.evaluation import agreement, io, measures, metrics
from nnunet_xfer.evaluation.observer_study import (
    METRIC_COLUMNS,
    REFERENCE,
    check_geometry,
    load_masks,
    observer_files,
    pairwise_table,
    williams_rows,
    write_json,
)
from nnunet_xfer.sources import PRETRAINED_SOURCES, SOURCES
from nnunet_xfer.splits import verify_dataset
from nnunet_xfer.study_grid import parse_trainer_name

PLAIN_TRAINER = "nnUNetTrainer"
PLAIN_SOURCE = "nnunet"
MEASURES = ("sma_cm2", "smd_hu", "imat_cm2", "smi_cm2_m2")
GROUP = ["source", "size_tag", "plans", "configuration"]


def _env(var: str) -> Path:
    return settings.nnunet_folder(var)



def find_runs(results_dataset: Path, plans: str | None, configuration: str) -> list[dict]:
    """Every Xfer/nnUNetTrainer output folder of the dataset for ``configuration`` (and plans)."""
    runs = []
    for folder in sorted(results_dataset.glob(f"*__*__{configuration}")):
        parts = folder.name.split("__")
        trainer, run_plans = parts[0], "__".join(parts[1:-1])
        if not folder.is_dir() or (plans is not None and run_plans != plans):
            continue
        if trainer == PLAIN_TRAINER:
            source, size = PLAIN_SOURCE, None
        else:
            parsed = parse_trainer_name(trainer)
            if parsed is None:
                continue
            source, size = parsed
        runs.append({"folder": folder, "trainer": trainer, "plans": run_plans,
                     "configuration": configuration, "source": source, "size": size,
                     "size_tag": "all" if size is None else str(size)})
    return runs


def read_splits(name: str) -> list[dict]:
    """nnU-Net's ``splits_final.json`` (preprocessed folder first, then the raw dataset)."""
    for base in (_env("nnUNet_preprocessed"), _env("nnUNet_raw")):
        path = base / name / "splits_final.json"
        if path.is_file():
            return json.loads(path.read_text())
    raise UserError(f"no splits_final.json for {name} in $nnUNet_preprocessed or $nnUNet_raw; "
                    f"convert the dataset with `nnunet-xfer convert` (or run nnU-Net once)")


def read_heights(raw: Path) -> dict[str, float]:
    """Per-case heights in m from the raw dataset's ``cases.csv``, if it has them."""
    path = raw / "cases.csv"
    if not path.is_file() or "height_m" not in pd.read_csv(path, nrows=0).columns:
        return {}
    return {c: h for c, h in measures.read_heights(path).items() if np.isfinite(h)}


def pretraining_cases(name: str, plans: str, configuration: str, all_cases: list[str]) -> dict:
    """``{source: {"data", "case_ids"}}`` of the store entries for these plans.

    A store record without a ``case_ids`` list whose ``data`` names this dataset is taken to have
    used every case (jigsaw/rec pretrained on the dataset's own preprocessed slices).
    """
    found = {}
    folder = DatasetLayout(name).store_dir(plans, configuration)
    for source in PRETRAINED_SOURCES:
        path = folder / f"{source}.json"
        if not path.is_file():
            continue
        meta = json.loads(path.read_text())
        ids = meta.get("case_ids")
        if not isinstance(ids, list):
            ids = list(all_cases) if name in str(meta.get("data", "")) else []
        found[source] = {"data": str(meta.get("data", "")), "case_ids": sorted(map(str, ids))}
    return found


def _stats(values: pd.Series) -> dict:
    v = values.dropna().to_numpy(float)
    if v.size == 0:
        return {"n": 0}
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"n": int(v.size), "mean": float(v.mean()),
            "sd": float(v.std(ddof=1)) if v.size > 1 else float("nan"),
            "median": float(med), "q1": float(q1), "q3": float(q3), "iqr": float(q3 - q1)}


def group_order(entry: dict) -> tuple:
    """Sort key of a source × size entry: the study's source order, plans, then size."""
    order = {s: i for i, s in enumerate((*SOURCES, PLAIN_SOURCE))}
    return order.get(entry["source"], 99), entry["plans"], float(entry["n"])


def summarize(cases: pd.DataFrame) -> list[dict]:
    """Per source × size × plans over all folds: metric statistics, failures, SMA/SMD agreement."""
    groups = []
    for key, g in cases.groupby(GROUP, sort=False):
        entry = dict(zip(GROUP, key))
        ns = sorted(set(g.n.astype(int)))
        entry.update({
            "n": ns[0] if len(ns) == 1 else float(np.mean(ns)), "n_per_fold": ns,
            "folds": sorted(set(g.fold.astype(int))), "n_cases": int(len(g)),
            "n_failed": int(g.failed.sum()), "n_in_pretraining": int(g.in_pretraining.sum()),
            "metrics": {m: _stats(g[m]) for m in METRIC_COLUMNS},
            "agreement": {m: agreement.agreement_stats(g[f"{m}_pred"].to_numpy(float),
                                                       g[f"{m}_ref"].to_numpy(float))
                          for m in ("sma_cm2", "smd_hu")},
        })
        groups.append(entry)
    groups.sort(key=group_order)
    return groups


def evaluate_dataset(dataset: str, plans: str | None = None, configuration: str = "2d",
                     out: Path | None = None, observers: Path | None = None,
                     overwrite: bool = False) -> Path:
    """Evaluate every run of ``dataset``; write ``cases.csv`` and ``summary.json`` into ``out``.

    ``out`` defaults to ``$nnUNet_results/<Dataset>/nnunet_xfer_evaluation``. With ``observers``
    (one sub-folder per observer, masks named by case) also the Williams index of every
    source × size against the observers and its human-level verdict.
    """
    name = dataset_name(dataset)
    results = _env("nnUNet_results") / name
    out = Path(out) if out is not None else results / EVALUATION_FOLDER
    if out.exists() and not overwrite:
        raise UserError(f"output folder {out} exists; pass --overwrite to replace it")
    raw = _env("nnUNet_raw") / name
    labels = io.list_cases(raw / "labelsTr", "labels")
    images = io.images_for_cases(raw / "imagesTr", sorted(labels))
    runs = find_runs(results, plans, configuration)
    if not runs:
        raise UserError(f"no Xfer<Source>Trainer_n<N> or {PLAIN_TRAINER} runs with "
                        f"{'plans ' + plans + ' and ' if plans else ''}configuration "
                        f"{configuration} in {results}; train one with nnUNetv2_train first")
    splits = verify_dataset(name)  # the folds trained on are the folds the subsets came from
    heights = read_heights(raw)
    obs_files = observer_files(observers) if observers is not None else None

    missing, rows, ref_cache = [], [], {}
    overlap = {p: pretraining_cases(name, p, configuration, sorted(labels))
               for p in sorted({r["plans"] for r in runs})}
    todo = []
    for run in runs:
        gap = {"trainer": run["trainer"], "plans": run["plans"], "configuration": configuration,
               "folder": str(run["folder"]), "missing_folds": [], "missing_predictions": {}}
        for fold, split in enumerate(splits):
            validation = run["folder"] / f"fold_{fold}" / "validation"
            preds = io.list_cases(validation, "predictions") if _has_any(validation) else None
            if preds is None:
                gap["missing_folds"].append(fold)
                continue
            lost = sorted(c for c in split["val"] if c not in preds)
            if lost:
                gap["missing_predictions"][str(fold)] = lost
            n = run["size"] if run["size"] is not None else len(split["train"])
            todo += [(run, fold, n, c, preds[c]) for c in split["val"] if c in preds]
        if gap["missing_folds"] or gap["missing_predictions"]:
            missing.append(gap)

    for run, fold, n, case, pred_path in tqdm(todo, desc=f"evaluate {name}", unit="case"):
        if case not in labels or case not in images:
            raise UserError(f"case {case} of {pred_path} has no image/label in {raw}")
        if case not in ref_cache:
            image, _ = io.read_slice(images[case])
            ref, spacing = io.read_mask(labels[case])
            ref_cache[case] = (image, ref, spacing,
                               measures.muscle_measures(image, ref, spacing, heights.get(case)))
        image, ref, spacing, ref_measures = ref_cache[case]
        pred, pred_spacing = io.read_mask(pred_path)
        io.check_same_geometry(spacing, ref.shape, pred_spacing, pred.shape, case)
        m = metrics.segmentation_metrics(pred, ref, spacing)
        pm = measures.muscle_measures(image, pred, spacing, heights.get(case))
        source_ids = overlap[run["plans"]].get(run["source"], {}).get("case_ids", [])
        rows.append({
            "case_id": case, "source": run["source"], "n": int(n), "size_tag": run["size_tag"],
            "fold": fold, "plans": run["plans"], "configuration": configuration,
            "trainer": run["trainer"], **{k: m[k] for k in METRIC_COLUMNS},
            "failed": bool(m["failed"]),
            **{f"{k}_ref": ref_measures.get(k) for k in MEASURES},
            **{f"{k}_pred": pm.get(k) for k in MEASURES},
            "in_pretraining": case in source_ids,
            "image": str(images[case]), "reference": str(labels[case]), "prediction": str(pred_path),
        })
    cases = pd.DataFrame(rows, columns=_columns())
    summary = {
        "dataset": name, "configuration": configuration, "plans_filter": plans,
        "n_runs": len(runs), "n_rows": len(cases), "groups": summarize(cases) if rows else [],
        "missing": missing,
        "pretraining_overlap": {p: {s: {"data": v["data"], "n_cases": len(v["case_ids"]),
                                        "case_ids": v["case_ids"]} for s, v in per.items()}
                                for p, per in overlap.items()},
        "heights_known": len(heights),
    }
    williams = None
    if obs_files is not None:
        williams, summary["observers"], summary["human_level"] = observer_verdicts(
            cases, obs_files, labels)

    with atomic_folder(out) as tmp:
        cases.to_csv(tmp / "cases.csv", index=False)
        if williams is not None:
            williams.to_csv(tmp / "observers_williams.csv", index=False)
        write_json(tmp / "summary.json", summary)
    print(f"evaluated {len(cases)} case(s) of {len(runs)} run(s); "
          f"{len(missing)} run(s) incomplete; wrote {out}")
    return out


def _has_any(folder: Path) -> bool:
    return folder.is_dir() and any(io.is_slice_file(p) for p in folder.iterdir())


def _columns() -> list[str]:
    return ["case_id", "source", "n", "size_tag", "fold", "plans", "configuration", "trainer",
            *METRIC_COLUMNS, "failed", *[f"{k}_{w}" for k in MEASURES for w in ("ref", "pred")],
            "in_pretraining", "image", "reference", "prediction"]


def observer_verdicts(cases: pd.DataFrame, obs_files: dict[str, dict[str, Path]],
                      labels: dict[str, Path]) -> tuple[pd.DataFrame, dict, list[dict]]:
    """Williams index of every source × size × plans against the observers on the observer cases.

    A group reaches human level when the 95% CI of its Williams index includes 1 or lies above it,
    for Dice and for 1/RMS DTA alike.
    """
    observer_names = list(obs_files)
    study = sorted(set.intersection(*(set(f) for f in obs_files.values())) & set(labels))
    if not study:
        raise UserError("no observer case is a case of the dataset (or delineated by every "
                        "observer); name observer masks by the dataset's case ids")
    masks = {REFERENCE: load_masks(labels, study, 1, REFERENCE),
             **{o: load_masks(f, study, 1, o) for o, f in obs_files.items()}}
    check_geometry(masks, study)
    base_pairs = [(a, b) for i, a in enumerate(masks) for b in list(masks)[i + 1:]]
    base = pairwise_table(masks, study, base_pairs, desc="observer pairs")
    info = {"names": observer_names, "cases": study,
            "vs_reference": {}, "band": {}, "williams": []}
    for o in observer_names:
        sel = base[(base.rater_a == REFERENCE) & (base.rater_b == o)]
        info["vs_reference"][o] = {k: float(sel[k].mean()) for k in METRIC_COLUMNS}
    for k in ("dice", "rms_dta_mm"):
        vals = [v[k] for v in info["vs_reference"].values()]
        info["band"][k] = [float(np.nanmin(vals)), float(np.nanmax(vals))]
    if len(observer_names) >= 3:
        for o in observer_names:
            info["williams"] += williams_rows(base, o, [x for x in observer_names if x != o],
                                              study)

    rows, verdicts = [], []
    for key, g in cases[cases.case_id.isin(study)].groupby(GROUP, sort=False):
        group = dict(zip(GROUP, key))
        rater = "model"
        per_case = g.drop_duplicates("case_id").set_index("case_id")
        have = sorted(per_case.index)
        masks[rater] = {c: io.read_mask(per_case.loc[c, "prediction"]) for c in have}
        check_geometry({REFERENCE: masks[REFERENCE], rater: masks[rater]}, have)
        pw = pairwise_table(masks, have, [(rater, o) for o in observer_names],
                            desc=f"{group['source']} n={group['size_tag']} vs observers")
        obs = base[base.rater_a.isin(observer_names) & base.rater_b.isin(observer_names)]
        wr = williams_rows(pd.concat([pw, obs[obs.case_id.isin(have)]]), rater, observer_names,
                           have)
        n = sorted(set(g.n.astype(int)))
        for r in wr:
            rows.append({**group, "n": n[0] if len(n) == 1 else float(np.mean(n)),
                         **{k: v for k, v in r.items() if k != "rater"}})
        verdicts.append({**group, "n": rows[-1]["n"], "n_cases": len(have),
                         "wi": {r["metric"]: [r["wi"], r["ci_low"], r["ci_high"]] for r in wr},
                         "human_level": all(r["within_observer_variability"] for r in wr)})
    verdicts.sort(key=group_order)
    table = pd.DataFrame(rows)
    if len(table):
        table = table.sort_values(["source", "plans", "n", "metric"], kind="stable",
                                  key=lambda c: c.map(lambda s: group_order(
                                      {"source": s, "plans": "", "n": 0})[0])
                                  if c.name == "source" else c)
    return table, info, verdicts
