"""Cross-validation folds and nested training subsets: the one deterministic rule.

``splits_final.json`` is nnU-Net's own format: a list of ``{"train": [...], "val": [...]}``.
``subsets.json`` maps ``fold -> size -> [case ids]`` with string keys (JSON), e.g.
``{"seed": 12345, "sizes": [5, 10], "folds": {"0": {"5": [...], "10": [...]}}}``; the n=5 list is a
prefix of the n=10 list, which is a prefix of the next, so the subsets are nested by construction.
"""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np

from nnunet_xfer.atomic import atomic_write_json
from nnunet_xfer.errors import UserError
from nnunet_xfer.layout import SPLITS_FILE, SUBSETS_FILE, DatasetLayout


def make_splits(case_ids: list[str], n_folds: int = 4, seed: int = 12345) -> list[dict]:
    """Seeded k-fold split: disjoint validation sets that together cover every case once."""
    ids = sorted(case_ids)
    if n_folds < 2:
        raise UserError(f"--folds must be at least 2, got {n_folds}")
    if len(ids) < n_folds:
        raise UserError(f"{len(ids)} cases cannot be split into {n_folds} folds; add cases or lower --folds")
    order = np.random.default_rng(seed).permutation(len(ids))
    shuffled = [ids[i] for i in order]
    folds = [sorted(shuffled[k::n_folds]) for k in range(n_folds)]
    return [{"train": sorted(c for j, f in enumerate(folds) if j != k for c in f), "val": folds[k]}
            for k in range(n_folds)]


def subset_order(train_ids: list[str], fold: int, seed: int) -> list[str]:
    """The fold's training cases in the order in which subsets take them (prefixes are nested)."""
    ids = sorted(train_ids)
    order = np.random.default_rng([seed, fold]).permutation(len(ids))
    return [ids[i] for i in order]


def make_subsets(splits: list[dict], sizes: list[int], seed: int = 12345,
                 warn: bool = True) -> dict:
    """Nested training subsets per fold and size; sizes larger than a fold's training set are left out."""
    result: dict = {"seed": seed, "sizes": sorted(set(sizes)), "folds": {}}
    for fold, split in enumerate(splits):
        order = subset_order(split["train"], fold, seed)
        per_size = {}
        for n in sorted(set(sizes)):
            if n > len(order):
                if warn:
                    warnings.warn(f"fold {fold}: subset size {n} exceeds its {len(order)} training "
                                  f"cases; left out of subsets.json", stacklevel=2)
                continue
            per_size[str(n)] = sorted(order[:n])
        result["folds"][str(fold)] = per_size
    return result


def subset_for(splits: list[dict], fold: int, size: int | None, subsets: dict | None = None,
               seed: int = 12345) -> list[str]:
    """Training case ids of ``fold`` at ``size`` (None: the whole training fold).

    Uses ``subsets`` when it has the entry, otherwise the same deterministic rule.
    Raises :class:`UserError` when ``size`` exceeds the fold's training set.
    """
    if fold >= len(splits):
        raise UserError(f"fold {fold} does not exist: splits_final.json has {len(splits)} folds")
    train = splits[fold]["train"]
    if size is None:
        return sorted(train)
    if size > len(train):
        raise UserError(f"subset size n={size} exceeds the {len(train)} training cases of fold {fold}; "
                        f"use a smaller n or more cases")
    if subsets is not None:
        entry = subsets.get("folds", {}).get(str(fold), {}).get(str(size))
        if entry is not None:
            return list(entry)
        seed = subsets.get("seed", seed)
    return sorted(subset_order(train, fold, seed)[:size])


def _folder(dataset: "str | int | Path | DatasetLayout") -> Path:
    """The raw dataset folder of an id, a name, a layout or the folder itself."""
    if isinstance(dataset, Path):
        return dataset
    return DatasetLayout.of(dataset).existing_raw()


def _read_json(path: Path, what: str):
    if not path.is_file():
        raise UserError(f"{path} is missing; (re-)run `nnunet-xfer convert` to write the {what}")
    try:
        return json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON; re-run `nnunet-xfer convert --overwrite`") from None


def read_splits(dataset: "str | int | Path | DatasetLayout") -> list[dict]:
    """The dataset's folds: ``splits_final.json`` of the raw dataset (id, name, layout or folder)."""
    return _read_json(_folder(dataset) / SPLITS_FILE, "folds")


def read_subsets(dataset: "str | int | Path | DatasetLayout") -> dict:
    """The dataset's nested subsets: ``subsets.json`` (``{"seed", "sizes", "folds": {...}}``)."""
    return _read_json(_folder(dataset) / SUBSETS_FILE, "nested subsets")


def ensure_splits_in_preprocessed(dataset: "str | int | DatasetLayout") -> Path:
    """Copy the raw dataset's folds to ``$nnUNet_preprocessed/<Dataset>/`` if absent.

    nnU-Net reads its folds only from there; an existing file is left alone (nnU-Net's own rule).
    Returns the path of the file nnU-Net will use.
    """
    layout = DatasetLayout.of(dataset)
    target = layout.preprocessed_splits
    if not target.is_file():
        source = layout.raw_splits
        if not source.is_file():
            raise UserError(f"{source} is missing; (re-)run `nnunet-xfer convert`")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(source, tmp)
        tmp.replace(target)
    return target


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    atomic_write_json(path, obj)
