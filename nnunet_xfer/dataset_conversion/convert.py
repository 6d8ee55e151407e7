"""`nnunet-xfer convert`: cases → nnU-Net raw dataset with fixed folds and nested subsets.

Everything is built in hidden staging folders inside ``$nnUNet_raw`` and renamed into place only
when every case passed its checks, so bad input never leaves a dataset folder behind and never
touches an existing one. Each dataset folder carries a marker listing the files convert wrote;
``--overwrite`` replaces only such folders, and removes the dataset's ``$nnUNet_preprocessed``
folder, so no plans or arrays of the old data survive. A killed run leaves hidden
``.nnunet_xfer_tmp.<pid>.*`` folders that the next run removes.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pandas as pd
from tqdm import tqdm

from nnunet_xfer import settings
from nnunet_xfer.atomic import Claim, atomic_write_json, remove_owned, remove_stale_temporaries
from nnunet_xfer.dataset_conversion.manifest import CaseSpec, match_folders, read_manifest
from nnunet_xfer.dataset_conversion.prepare import parse_label_map, prepare_case
from nnunet_xfer.dataset_conversion.raw_writer import (check_free, claim_dataset, commit,
                                                       dataset_folder_name, folders_with_id,
                                                       new_staging, share_cases, staging,
                                                       write_case, write_metadata)
from nnunet_xfer.dataset_conversion.selection import (read_selection, selection_orders,
                                                      selection_provenance)
from nnunet_xfer.errors import UserError, warn
from nnunet_xfer.layout import SPLITS_FILE
from nnunet_xfer.splits import ORDERS_KEY, SELECTION_KEY, make_splits, make_subsets
from nnunet_xfer.study_grid import DEFAULT_FOLDS, DEFAULT_SEED, SIZES

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


class Target(NamedTuple):
    """One dataset folder to write: the main dataset (``size`` None) or a per-size one."""

    name: str
    dataset_id: int
    splits: list[dict] | None
    subsets: dict | None
    size: int | None


@dataclass
class ConversionResult:
    """What ``convert`` wrote and what it removed."""

    #: the main dataset folder ``$nnUNet_raw/Dataset<ID>_<NAME>``
    folder: Path
    #: every raw dataset folder written (the main one first, then the per-size ones)
    datasets: list[Path] = field(default_factory=list)
    #: ``splits_final.json`` files written into ``$nnUNet_preprocessed``
    preprocessed_splits: list[Path] = field(default_factory=list)
    #: folders removed: raw datasets replaced under ``--overwrite`` and their preprocessed folders
    removed: list[Path] = field(default_factory=list)


def per_size_datasets_plan(dataset_id: int, name: str, sizes: list[int]) -> list[tuple[int, int, str]]:
    """``(size, id, folder name)`` of the per-size datasets: id = ID + k, k = 1.. over sorted sizes."""
    return [(n, dataset_id + k, dataset_folder_name(dataset_id + k, f"{name}_n{n}"))
            for k, n in enumerate(sorted(set(sizes)), start=1)]


def plan_targets(dataset_id: int, name: str, splits: list[dict] | None, subsets: dict | None,
                 per_size_datasets: bool) -> list[Target]:
    """The main dataset and, if asked, one dataset per subset size that every fold can hold.

    A per-size dataset trains fold f on fold f's nested subset and validates on the full fold f.
    """
    targets = [Target(dataset_folder_name(dataset_id, name), dataset_id, splits, subsets, None)]
    if not per_size_datasets:
        return targets
    if splits is None or subsets is None:
        raise UserError("--per-size-datasets needs folds; drop --folds 0")
    folds = [str(f) for f in range(len(splits))]
    for n, sub_id, sub_name in per_size_datasets_plan(dataset_id, name, subsets["sizes"]):
        if sub_id > 999:
            raise UserError(f"per-size dataset {sub_name} would need id {sub_id} > 999; "
                            f"choose a smaller -d")
        if not all(str(n) in subsets["folds"][f] for f in folds):
            warn(f"no per-size dataset {sub_name}: n={n} exceeds the training cases "
                          f"of a fold")
            continue
        train = {f: subsets["folds"][f][str(n)] for f in folds}
        sub_splits = [{"train": train[f], "val": splits[int(f)]["val"]} for f in folds]
        sub_subsets = {**make_subsets(sub_splits, [n], subsets["seed"], warn=False),
                       "folds": {f: {str(n): train[f]} for f in folds}}
        targets.append(Target(sub_name, sub_id, sub_splits, sub_subsets, n))
    return targets


def _nnunet_dir(var: str) -> Path | None:
    if var == "nnUNet_raw":
        return settings.nnunet_folder(var)
    return settings.nnunet_folder_or_none(var)


def _check_args(dataset_id: int, name: str, sizes: list[int], n_folds: int) -> None:
    if not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise UserError(f"dataset id {dataset_id} must be an integer in 1..999 (nnU-Net's DatasetXXX)")
    if not _SAFE_NAME.match(name):
        raise UserError(f"dataset name {name!r} must use letters, digits, '_' and '-' only")
    if not sizes or any(int(n) < 1 for n in sizes):
        raise UserError(f"--sizes {sizes} must be positive integers, e.g. 5,10,25")
    if n_folds < 0:
        raise UserError(f"--folds must be 0 (no folds: a dataset to predict on only) or at least 2, "
                        f"got {n_folds}")


def _specs(cases_csv: Path | None, images_dir: Path | None, masks_dir: Path | None) -> list[CaseSpec]:
    if cases_csv is not None:
        if images_dir is not None or masks_dir is not None:
            raise UserError("give either --cases CSV or --images DIR --masks DIR, not both")
        return read_manifest(Path(cases_csv))
    if images_dir is None or masks_dir is None:
        raise UserError("give --cases CSV, or both --images DIR and --masks DIR")
    return match_folders(Path(images_dir), Path(masks_dir))


def _plan_preprocessed(preprocessed: Path | None, target: Target,
                       replaced: list[Path], overwrite: bool, inputs) -> list[Claim]:
    """Claims on the preprocessed folders of ``target``'s id to remove (``--overwrite``: each may
    hold only what nnU-Net and we made from the raw data); refuses a stale ``splits_final.json``
    or another dataset with this id that we cannot regenerate."""
    if preprocessed is None:
        return []
    remove = []
    replaced_names = {p.name for p in replaced}
    for folder in folders_with_id(preprocessed, target.dataset_id):
        if folder.name != target.name and not overwrite:
            raise UserError(f"dataset id {target.dataset_id} is taken by {folder.name} in "
                            f"{preprocessed}; choose another -d or pass --overwrite to replace it")
        if folder.name != target.name and folder.name not in replaced_names:
            raise UserError(f"dataset id {target.dataset_id} is taken by {folder} (preprocessed, "
                            f"with no raw dataset to make it again); remove it yourself or choose "
                            f"another -d")
        if overwrite:
            remove.append(claim_dataset(folder, True, inputs, preprocessed=True))
            continue
        existing = folder / SPLITS_FILE
        if existing.is_file():
            try:
                same = json.loads(existing.read_text()) == target.splits
            except (ValueError, UnicodeDecodeError):
                same = False
            if not same:
                raise UserError(f"{existing} holds different splits; pass --overwrite to replace "
                                f"them (it removes {folder}; then re-run "
                                f"nnUNetv2_plan_and_preprocess)")
    return remove


def _check_results(target: Target, replacing: bool) -> list[str]:
    """Refuse a second dataset name for the id in ``$nnUNet_results``; return warnings about runs
    trained on a dataset that ``target`` replaces."""
    results = settings.nnunet_folder_or_none("nnUNet_results")
    notes = []
    for folder in folders_with_id(results, target.dataset_id) if results is not None else []:
        if folder.name != target.name:
            raise UserError(f"dataset id {target.dataset_id} is used by {folder} (trained runs); "
                            f"convert under its name ({folder.name.split('_', 1)[1]}), choose "
                            f"another -d, or move that folder away")
        if replacing and any(folder.iterdir()):
            notes.append(f"{folder} keeps what was trained on the replaced dataset; those runs do "
                         f"not match the new data")
    return notes


def _convert_case(folder: Path, spec: CaseSpec, labels: list[int] | None, allow_non_hu: bool,
                  empty: list[str]) -> dict:
    """Check and write one case; returns its cases.csv row (appends to ``empty`` if no muscle)."""
    case = prepare_case(spec, labels, allow_non_hu)
    write_case(folder, spec.case_id, case.image, case.mask)
    if case.muscle_pixels == 0:
        empty.append(spec.case_id)
    sx, sy = case.image.GetSpacing()[:2]
    return {"case_id": spec.case_id, "height_m": spec.height_m, "sex": spec.sex,
            "observer": spec.observer, "image": str(Path(spec.image).resolve()),
            "mask": str(Path(spec.mask).resolve()), "slice_index": case.slice_index,
            "spacing_x_mm": sx, "spacing_y_mm": sy, "rows": case.image.GetSize()[1],
            "cols": case.image.GetSize()[0], "muscle_pixels": case.muscle_pixels}


def _describe_source(cases_csv: Path | None, images_dir: Path | None,
                     masks_dir: Path | None) -> str:
    if cases_csv is not None:
        return str(Path(cases_csv).resolve())
    return f"{Path(images_dir).resolve()} + {Path(masks_dir).resolve()}"


def _warn_left_out(subsets: dict, splits: list[dict]) -> None:
    """One warning for the subset sizes that some folds are too small for."""
    short = {}
    for n in subsets["sizes"]:
        folds = [f for f in range(len(splits)) if str(n) not in subsets["folds"][str(f)]]
        if folds:
            short[n] = folds
    if not short:
        return
    folds = sorted({f for fs in short.values() for f in fs})
    orders = subsets.get(ORDERS_KEY)
    smallest = min(len(orders[str(f)]) if orders else len(splits[f]["train"]) for f in folds)
    sizes = ",".join(map(str, short))
    what = (f"subset size n={sizes} exceeds" if len(short) == 1
            else f"subset sizes n={sizes} exceed")
    warn(f"{what} the {'selected' if orders else 'training'} cases of fold(s) "
         f"{','.join(map(str, folds))} ({smallest} cases); left out of subsets.json")


def convert(cases_csv: Path | None = None, images_dir: Path | None = None,
            masks_dir: Path | None = None, dataset_id: int = 501, name: str = "L3",
            n_folds: int = DEFAULT_FOLDS, sizes: list[int] = SIZES, seed: int = DEFAULT_SEED,
            overwrite: bool = False, label_map: str | None = None, allow_non_hu: bool = False,
            per_size_datasets: bool = False, selection: Path | None = None) -> ConversionResult:
    """Convert cases to ``$nnUNet_raw/Dataset{id:03d}_{name}``; returns what was written and removed.

    Writes one 2D slice per case (HU values and geometry unchanged), 0/1 muscle labels,
    ``dataset.json``, ``splits_final.json`` (``n_folds`` seeded folds), ``subsets.json`` (nested
    per-fold subsets of ``sizes``, bound to the folds by their digest), ``cases.csv`` and a marker
    listing these files; copies ``splits_final.json`` to ``$nnUNet_preprocessed/<Dataset>/`` when
    that variable is set, so ``nnUNetv2_train`` uses these folds. ``n_folds=0`` writes a dataset
    without folds or subsets (1–3 cases to predict on). With ``per_size_datasets`` also writes
    ``Dataset<ID+k>_<name>_n<N>`` per size. ``overwrite`` replaces only datasets convert wrote (no
    foreign files) and removes their ``$nnUNet_preprocessed`` folders. ``selection``: a selection
    file (``nnunet-xfer select``) whose per-fold order replaces the seeded draw of the subsets
    (each subset the first n cases of its fold's order; recorded in subsets.json and dataset.json).
    """
    sizes = sorted({int(n) for n in sizes})
    _check_args(dataset_id, name, sizes, n_folds)
    labels = parse_label_map(label_map)
    raw = _nnunet_dir("nnUNet_raw")
    preprocessed = _nnunet_dir("nnUNet_preprocessed")
    for root in (raw, preprocessed):
        if root is not None:
            remove_stale_temporaries(root)  # what a killed run left
    specs = _specs(cases_csv, images_dir, masks_dir)
    inputs = [cases_csv, images_dir, masks_dir, selection,
              *(p for spec in specs for p in (spec.image, spec.mask, spec.vertebra_mask))]

    ids = [s.case_id for s in specs]
    splits = make_splits(ids, n_folds=n_folds, seed=seed) if n_folds else None
    orders, chosen = None, None
    if selection is not None:
        if splits is None:
            raise UserError("--selection orders each fold's training cases; it needs folds (drop "
                            "--folds 0)")
        record = read_selection(Path(selection))
        orders = selection_orders(record, splits, Path(selection))
        chosen = selection_provenance(record, Path(selection))
    subsets = (make_subsets(splits, sizes, seed=seed, warn=False, orders=orders, selection=chosen)
               if splits is not None else None)
    targets = plan_targets(dataset_id, name, splits, subsets, per_size_datasets)
    main_name = targets[0].name
    # every refusal happens before anything is written
    claims = {t.name: check_free(raw, t.dataset_id, t.name, overwrite, inputs) for t in targets}
    replaced = {name: [c.path for c in (target, *others) if c.found is not None]
                for name, (target, others) in claims.items()}
    stale, notes = [], []
    for t in targets:
        stale += _plan_preprocessed(preprocessed, t, replaced[t.name], overwrite, inputs)
        notes += _check_results(t, bool(replaced[t.name]))

    rows, empty = [], []
    with staging(raw) as staged:
        main = new_staging(raw)
        staged.append(main)
        with tqdm(specs, desc=f"convert {main_name}", unit="case", disable=None) as bar:
            for spec in bar:
                rows.append(_convert_case(main, spec, labels, allow_non_hu, empty))
        if empty:
            warn(f"{len(empty)} case(s) have an empty muscle mask: {', '.join(empty)}")
        if subsets is not None:
            _warn_left_out(subsets, splits)
        cases = pd.DataFrame(rows)
        common = {"seed": seed, "n_folds": n_folds, "label_map": labels,
                  "source": _describe_source(cases_csv, images_dir, masks_dir),
                  "cases": {r["case_id"]: {"height_m": r["height_m"], "sex": r["sex"]} for r in rows}}
        if chosen is not None:
            common[SELECTION_KEY] = chosen
        folders = {}
        for t in targets:
            folder = main
            extra = {**common, "sizes": t.subsets["sizes"] if t.subsets is not None else []}
            if t.size is not None:
                folder = new_staging(raw)
                staged.append(folder)
                share_cases(main, folder)
                extra.update({"subset_size": t.size, "parent_dataset": main_name})
            write_metadata(folder, t.name, cases, t.splits, t.subsets, extra)
            folders[t.name] = folder
        # the old preprocessed data goes first: a kill in between leaves no stale plans behind
        for claim in stale:
            remove_owned(claim)
        for t in targets:
            commit(folders[t.name], *claims[t.name])
    for note in notes:
        warn(note)
    result = ConversionResult(folder=raw / main_name, datasets=[raw / t.name for t in targets])
    result.removed = [p for t in targets for p in replaced[t.name]] + [c.path for c in stale]
    if preprocessed is not None:
        for t in targets:
            if t.splits is not None:
                result.preprocessed_splits.append(
                    atomic_write_json(preprocessed / t.name / SPLITS_FILE, t.splits))
    return result
