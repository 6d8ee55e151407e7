"""Cross-validation folds and nested training subsets: the one deterministic rule.

``splits_final.json`` is nnU-Net's own format: a list of ``{"train": [...], "val": [...]}``.
``subsets.json`` maps ``fold -> size -> [case ids]`` with string keys (JSON), e.g.
``{"seed": 12345, "sizes": [5, 10], "splits_sha256": "…", "folds": {"0": {"5": [...], "10": [...]}}}``;
the n=5 list is a prefix of the n=10 list, which is a prefix of the next, so the subsets are nested
by construction. ``splits_sha256`` binds the subsets to the folds they were drawn from
(:func:`splits_digest`); :func:`verify_dataset` refuses a dataset whose folds and subsets disagree
(the rules are in ``docs/conversion.md``).

The order in which a fold's training cases enter the subsets is the seeded rule
(:func:`subset_order`, strategy ``random``) unless ``convert --selection`` gave one
(``nnunet-xfer select``); then ``subsets.json`` also keeps that order per fold (``orders``) and the
selection's provenance (``selection``), and every size is a prefix of the stored order.
"""
from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nnunet_xfer import errors, settings
from nnunet_xfer.atomic import atomic_write_bytes, atomic_write_json
from nnunet_xfer.errors import UserError
from nnunet_xfer.layout import DATASET_JSON, SPLITS_FILE, SUBSETS_FILE, DatasetLayout
from nnunet_xfer.study_grid import DEFAULT_FOLDS, DEFAULT_SEED

#: Key of ``subsets.json`` holding the digest of the splits the subsets were drawn from.
SPLITS_DIGEST_KEY = "splits_sha256"
#: Keys of ``subsets.json`` written from a selection: each fold's order, and where it came from.
ORDERS_KEY, SELECTION_KEY = "orders", "selection"


def splits_digest(splits: list[dict]) -> str:
    """sha256 of the canonical JSON of ``splits`` (sorted keys, no spaces)."""
    text = json.dumps(splits, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def make_splits(case_ids: list[str], n_folds: int = DEFAULT_FOLDS, seed: int = DEFAULT_SEED) -> list[dict]:
    """Seeded k-fold split: disjoint validation sets that together cover every case once."""
    ids = sorted(case_ids)
    if n_folds < 2:
        raise UserError(f"--folds must be at least 2 (or 0: a dataset without folds, to predict on "
                        f"only), got {n_folds}")
    if len(ids) < n_folds:
        raise UserError(f"{len(ids)} cases cannot be split into {n_folds} folds; add cases, lower "
                        f"--folds, or pass --folds 0 for a dataset to predict on only")
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


def make_subsets(splits: list[dict], sizes: list[int], seed: int = DEFAULT_SEED,
                 warn: bool = True, orders: dict[str, list[str]] | None = None,
                 selection: dict | None = None) -> dict:
    """Nested training subsets per fold and size; sizes larger than a fold's training set are left out.

    ``orders`` (fold → case ids, first to annotate first; checked by the caller, see
    ``dataset_conversion.selection``) replaces the seeded rule; it is stored with ``selection``
    (its provenance) so that every later size is a prefix of the same order.
    """
    result: dict = {"seed": seed, "sizes": sorted(set(sizes)), SPLITS_DIGEST_KEY: splits_digest(splits),
                    "folds": {}}
    for fold, split in enumerate(splits):
        order = (list(orders[str(fold)]) if orders is not None
                 else subset_order(split["train"], fold, seed))
        per_size = {}
        for n in sorted(set(sizes)):
            if n > len(order):
                if warn:
                    errors.warn(f"fold {fold}: subset size {n} exceeds its {len(order)} "
                                f"{'selected' if orders is not None else 'training'} cases; "
                                f"left out of subsets.json")
                continue
            per_size[str(n)] = sorted(order[:n])
        result["folds"][str(fold)] = per_size
    if orders is not None:
        result[ORDERS_KEY] = {str(f): list(orders[str(f)]) for f in range(len(splits))}
        result[SELECTION_KEY] = dict(selection or {})
    return result


def subset_for(splits: list[dict], fold: int, size: int | None, subsets: dict | None = None,
               seed: int = DEFAULT_SEED) -> list[str]:
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
        orders = subsets.get(ORDERS_KEY)
        if orders is not None:  # a selection: every size is a prefix of its order, never the rule
            order = orders.get(str(fold)) or []
            if size > len(order):
                raise UserError(f"subset size n={size} exceeds the {len(order)} cases the "
                                f"selection orders in fold {fold}; use a smaller n or a selection "
                                f"that orders more cases")
            return sorted(order[:size])
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
        atomic_write_bytes(target, source.read_bytes())
    return target


# ---------------------------------------------------------------- folds and subsets bound together
def _load_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON; re-run `nnunet-xfer convert --overwrite`") from None


def dataset_block(raw: Path | None) -> dict:
    """The ``nnunet_xfer`` block convert wrote into the raw dataset's dataset.json ({} if none)."""
    if raw is None or not (raw / DATASET_JSON).is_file():
        return {}
    try:
        block = json.loads((raw / DATASET_JSON).read_text(encoding="utf-8")).get("nnunet_xfer")
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return {}
    return block if isinstance(block, dict) else {}


def convert_command(raw: Path | None, name: str, sizes: Sequence[int] | None = None,
                    n_folds: int | None = None, selection: Path | None = None) -> str:
    """The ``nnunet-xfer convert … --overwrite`` command that rewrites a dataset's folds and subsets
    (with the selection file it was converted with, or ``selection``)."""
    block = dataset_block(raw)
    source = str(block.get("source") or "")
    if " + " in source:
        images, masks = source.split(" + ", 1)
        given = f"--images {shlex.quote(images)} --masks {shlex.quote(masks)}"
    elif source:
        given = f"--cases {shlex.quote(source)}"
    else:
        given = "--cases CASES.csv"
    number, _, short = name.removeprefix("Dataset").partition("_")
    parts = [f"nnunet-xfer convert {given} -d {int(number) if number.isdigit() else number} -n {short}"]
    n_folds = block.get("n_folds") if n_folds is None else n_folds
    if n_folds not in (None, DEFAULT_FOLDS):
        parts.append(f"--folds {n_folds}")
    if sizes is not None:
        parts.append("--sizes " + ",".join(str(n) for n in sorted(set(sizes))))
    if block.get("seed") not in (None, DEFAULT_SEED):
        parts.append(f"--seed {block['seed']}")
    recorded = block.get(SELECTION_KEY)
    if selection is None and isinstance(recorded, dict) and recorded.get("file"):
        selection = recorded["file"]
    if selection is not None:
        parts.append(f"--selection {shlex.quote(str(selection))}")
    return " ".join(parts + ["--overwrite"])


def _ids(ids) -> str:
    ids = sorted(ids)
    return ", ".join(ids[:5]) + (f" … (+{len(ids) - 5} more)" if len(ids) > 5 else "")


def _check_splits(splits, path: Path, fix: str) -> None:
    ok = isinstance(splits, list) and splits and all(
        isinstance(s, dict) and isinstance(s.get("train"), list) and isinstance(s.get("val"), list)
        for s in splits)
    if not ok:
        raise UserError(f"{path} is not nnU-Net's list of {{'train': [...], 'val': [...]}} folds; "
                        f"re-run `{fix}`")
    for fold, split in enumerate(splits):
        both = set(split["train"]) & set(split["val"])
        if both:
            raise UserError(f"{path}: fold {fold} trains on its own validation case(s) "
                            f"({_ids(both)}); re-run `{fix}`")


def _check_subsets(subsets, path: Path, splits: list[dict], splits_path: Path,
                   folds: Sequence[int] | None, fix: str) -> None:
    if not isinstance(subsets, dict) or not isinstance(subsets.get("folds"), dict):
        raise UserError(f"{path} is not a subsets file written by nnunet-xfer; re-run `{fix}`")
    digest = subsets.get(SPLITS_DIGEST_KEY)
    if digest is not None and digest != splits_digest(splits):
        raise UserError(f"{path} was drawn from other folds than {splits_path} ({SPLITS_DIGEST_KEY} "
                        f"differs); re-run `{fix}` to write both again")
    for key, per_size in sorted(subsets["folds"].items()):
        if not key.isdigit() or int(key) >= len(splits):
            raise UserError(f"{path} has subsets of fold {key}, which {splits_path} does not have "
                            f"({len(splits)} folds); re-run `{fix}`")
        fold = int(key)
        if folds is not None and fold not in folds:
            continue
        train, val = set(splits[fold]["train"]), set(splits[fold]["val"])
        if ORDERS_KEY in subsets:
            _check_order((subsets[ORDERS_KEY] or {}).get(key), path, fold, train, per_size, fix)
        for size, ids in sorted(per_size.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0):
            shared = set(ids) & val
            if shared:
                raise UserError(f"{path}: the n={size} subset of fold {fold} lists validation "
                                f"case(s) of that fold in {splits_path} ({_ids(shared)}); re-run "
                                f"`{fix}` (never edit subsets.json by hand)")
            outside = set(ids) - train
            if outside:
                raise UserError(f"{path}: the n={size} subset of fold {fold} lists case(s) that are "
                                f"not training cases of fold {fold} in {splits_path} "
                                f"({_ids(outside)}); re-run `{fix}`")


def _check_order(order, path: Path, fold: int, train: set, per_size: dict, fix: str) -> None:
    """A selection's order of one fold: its cases are training cases of that fold, once each,
    and every subset is the prefix of the order (nested)."""
    if not isinstance(order, list) or len(set(order)) != len(order):
        raise UserError(f"{path}: the selection order of fold {fold} is missing or lists a case "
                        f"twice; re-run `{fix}`")
    if set(order) - train:
        raise UserError(f"{path}: the selection order of fold {fold} lists case(s) that are not "
                        f"training cases of fold {fold} ({_ids(set(order) - train)}); re-run "
                        f"`{fix}`")
    for size, ids in per_size.items():
        if not size.isdigit() or sorted(ids) != sorted(order[:int(size)]):
            raise UserError(f"{path}: the n={size} subset of fold {fold} is not the first {size} "
                            f"cases of its selection order (subsets must be nested); re-run "
                            f"`{fix}` (never edit subsets.json by hand)")


def verify_folders(raw: Path | None, preprocessed: Path | None, folds: Sequence[int] | None = None,
                   sizes: Sequence[int] | None = None) -> list[dict]:
    """:func:`verify_dataset` on explicit raw / preprocessed dataset folders (either may be None)."""
    raw = Path(raw) if raw is not None else None
    preprocessed = Path(preprocessed) if preprocessed is not None else None
    name = (raw or preprocessed).name if (raw or preprocessed) is not None else "the dataset"
    fix = convert_command(raw, name)
    raw_path = raw / SPLITS_FILE if raw is not None else None
    pre_path = preprocessed / SPLITS_FILE if preprocessed is not None else None
    raw_splits = _load_json(raw_path) if raw_path is not None and raw_path.is_file() else None
    pre_splits = _load_json(pre_path) if pre_path is not None and pre_path.is_file() else None
    if raw_splits is None and pre_splits is None:
        if dataset_block(raw).get("n_folds") == 0:
            raise UserError(f"{raw} has no folds (converted with --folds 0, for inference only); "
                            f"to train on it, re-run `{convert_command(raw, name, n_folds=DEFAULT_FOLDS)}`")
        where = " nor ".join(str(p) for p in (raw_path, pre_path) if p is not None)
        raise UserError(f"{name} has no folds: neither {where} exists; run `nnunet-xfer convert` "
                        f"first" if raw_path and pre_path else
                        f"{name} has no folds: {where} does not exist; run `nnunet-xfer convert` first")
    if raw_splits is not None and pre_splits is not None and raw_splits != pre_splits:
        how = (f"{len(pre_splits)} folds vs {len(raw_splits)}; nnU-Net writes its own 5 folds when "
               f"none are there" if isinstance(pre_splits, list) and isinstance(raw_splits, list)
               and len(pre_splits) != len(raw_splits) else "other cases in the folds")
        raise UserError(f"{pre_path}, the folds nnU-Net trains on, differ from {raw_path}, the folds "
                        f"the subsets were drawn from ({how}); remove {pre_path} (the Xfer trainers "
                        f"copy the raw one there) or re-run `{fix}`")
    splits, splits_path = (raw_splits, raw_path) if raw_splits is not None else (pre_splits, pre_path)
    _check_splits(splits, splits_path, fix)
    for fold in folds or ():
        if not 0 <= int(fold) < len(splits):
            raise UserError(f"fold {fold} does not exist: {splits_path} has {len(splits)} folds "
                            f"(0..{len(splits) - 1}); choose another fold")
    folds = None if folds is None else [int(f) for f in folds]
    chosen = None
    for folder in (raw, preprocessed):
        path = folder / SUBSETS_FILE if folder is not None else None
        if path is not None and path.is_file():
            subsets = _load_json(path)
            _check_subsets(subsets, path, splits, splits_path, folds, fix)
            chosen = chosen if chosen is not None else (subsets, path)
    for fold in (folds if folds is not None else range(len(splits))) if sizes else ():
        n_train = len(splits[fold]["train"])
        for n in sorted(set(sizes)):
            if n > n_train:
                raise UserError(f"subset size n={n} exceeds the {n_train} training cases of fold "
                                f"{fold} in {splits_path}; drop n={n} from --sizes or add cases")
            if chosen is not None:
                subsets, path = chosen
                if str(n) not in subsets["folds"].get(str(fold), {}):
                    given = sorted({int(k) for f in subsets["folds"].values() for k in f}
                                   | set(subsets.get("sizes", [])))
                    raise UserError(
                        f"subset size n={n} is not among the sizes chosen at convert (--sizes "
                        f"{','.join(map(str, given))}, in {path}); drop n={n} or re-run "
                        f"`{convert_command(raw, name, given + [n])}`")
    return splits


def verify_dataset(layout: "DatasetLayout | str | int", folds: Sequence[int] | None = None,
                   sizes: Sequence[int] | None = None) -> list[dict]:
    """Check that a dataset's folds and subsets belong together; return its folds.

    The preprocessed ``splits_final.json`` (the folds nnU-Net trains on), if present, must equal
    the raw one (the folds ``convert`` drew the subsets from); each ``subsets.json`` must carry the
    digest of those folds (a file without a digest is checked by content only); every subset lies
    inside its fold's training cases and shares nothing with its validation cases. With ``folds``
    only those folds' subsets are checked; with ``sizes`` each size must be one the dataset was
    converted with and fit each fold. Refuses in one line naming both files and the command that
    fixes it.
    """
    layout = DatasetLayout.of(layout)
    raw = layout.raw if settings.nnunet_folder_or_none("nnUNet_raw") is not None else None
    pre = (layout.preprocessed if settings.nnunet_folder_or_none("nnUNet_preprocessed") is not None
           else None)
    return verify_folders(raw, pre, folds, sizes)


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    atomic_write_json(path, obj)
