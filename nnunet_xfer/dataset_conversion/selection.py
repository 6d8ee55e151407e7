"""The selection file: per fold, the order in which its training cases are to be annotated.

``nnunet-xfer select`` writes it (or a person does); ``nnunet-xfer convert --selection FILE``
reads it and takes each subset as a prefix of its fold's order, so subsets stay nested::

    {"format": "nnunet_xfer.selection/1", "strategy": "diverse", "features": "histogram",
     "seed": 12345, "dataset": "Dataset501_L3", "n_folds": 4, "splits_sha256": "…",
     "order": {"0": ["case_017", "case_003", …], "1": […], …}}

``order[f]`` lists training cases of fold f (never one of its validation cases), each once, first
to annotate first; it may stop before the fold's last training case (sizes beyond it are left out).
``splits_sha256`` is :func:`nnunet_xfer.splits.splits_digest` of the folds the order was made for:
convert refuses a file made for other folds. The format is documented in docs/conversion.md.
"""
from __future__ import annotations

import json
from pathlib import Path

from nnunet_xfer.errors import UserError
from nnunet_xfer.splits import SPLITS_DIGEST_KEY, splits_digest

#: The ``format`` value of a selection file (bumped when the format changes).
SELECTION_FORMAT = "nnunet_xfer.selection/1"


def selection_record(order: dict[str, list[str]], splits: list[dict], strategy: str, seed: int,
                     features: str | None = None, dataset: str | None = None) -> dict:
    """The JSON object of a selection file for ``order`` (fold → case ids) drawn on ``splits``."""
    return {"format": SELECTION_FORMAT, "strategy": strategy, "features": features, "seed": seed,
            "dataset": dataset, "n_folds": len(splits), SPLITS_DIGEST_KEY: splits_digest(splits),
            "order": {str(f): [str(c) for c in order[str(f)]] for f in range(len(splits))}}


def is_selection_file(path: Path) -> bool:
    """Whether ``path`` is a selection file (a JSON object with this module's ``format``)."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(obj, dict) and obj.get("format") == SELECTION_FORMAT


def read_selection(path: Path) -> dict:
    """The selection file's JSON object; one-line :class:`UserError` when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"selection file {path} does not exist; write it with `nnunet-xfer select`")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise UserError(f"selection file {path} is not readable JSON; write it again with "
                        f"`nnunet-xfer select`") from None
    if not isinstance(obj, dict) or obj.get("format") != SELECTION_FORMAT:
        raise UserError(f"{path} is not a selection file (no \"format\": \"{SELECTION_FORMAT}\"); "
                        f"write it with `nnunet-xfer select` (format: docs/conversion.md)")
    if not isinstance(obj.get("order"), dict):
        raise UserError(f"selection file {path} has no \"order\" object (fold → case ids)")
    return obj


def _ids(ids) -> str:
    ids = sorted(map(str, ids))
    return ", ".join(ids[:5]) + (f" … (+{len(ids) - 5} more)" if len(ids) > 5 else "")


def selection_orders(selection: dict, splits: list[dict], path: Path) -> dict[str, list[str]]:
    """Each fold's order from a selection, checked against the folds ``splits`` it must fit.

    Refuses (one line naming the file and fold) a selection made for other folds, a missing or
    extra fold, an empty order, a case listed twice, and a case that is not a training case of its
    fold (a validation case of the fold is named as such).
    """
    digest = selection.get(SPLITS_DIGEST_KEY)
    if digest is not None and digest != splits_digest(splits):
        raise UserError(
            f"selection file {path} was made for other folds than these cases give with this "
            f"--seed and --folds (its seed {selection.get('seed')}, {selection.get('n_folds')} "
            f"folds); convert with the seed and folds it was made for, or run `nnunet-xfer "
            f"select` again on this dataset")
    order = selection["order"]
    expected = {str(f) for f in range(len(splits))}
    if set(order) != expected:
        missing, extra = sorted(expected - set(order)), sorted(set(order) - expected)
        what = (f"has no order for fold(s) {', '.join(missing)}" if missing
                else f"orders fold(s) {', '.join(extra)} that these {len(splits)} folds lack")
        raise UserError(f"selection file {path} {what}; it must order every fold 0..{len(splits) - 1}")
    orders = {}
    for key in sorted(expected, key=int):
        fold, ids = int(key), order[key]
        if not isinstance(ids, list) or not ids or not all(isinstance(c, str) for c in ids):
            raise UserError(f"selection file {path}: the order of fold {fold} must be a non-empty "
                            f"list of case ids")
        twice = {c for c in ids if ids.count(c) > 1}
        if twice:
            raise UserError(f"selection file {path}: fold {fold} lists case(s) twice ({_ids(twice)})")
        val = set(ids) & set(splits[fold]["val"])
        if val:
            raise UserError(f"selection file {path}: fold {fold} orders validation case(s) of that "
                            f"fold ({_ids(val)}); a subset never holds its fold's validation cases")
        outside = set(ids) - set(splits[fold]["train"])
        if outside:
            raise UserError(f"selection file {path}: fold {fold} orders case(s) that are not in "
                            f"this dataset ({_ids(outside)})")
        orders[key] = list(ids)
    return orders


def selection_provenance(selection: dict, path: Path) -> dict:
    """What ``subsets.json`` and ``dataset.json`` record of the selection a dataset was made with."""
    import hashlib
    path = Path(path).resolve()
    return {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "strategy": selection.get("strategy"), "features": selection.get("features"),
            "seed": selection.get("seed")}
