"""Read a converted dataset's folds, subsets and case metadata; put its splits where nnU-Net looks.

Later stages (trainers, pretraining, evaluation) use these instead of parsing the files themselves.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd

from nnunet_xfer.dataset_conversion.raw_writer import CASES_CSV
from nnunet_xfer.errors import UserError
from nnunet_xfer.names import env_path


def dataset_name(dataset: str | int) -> str:
    """``Dataset501_L3`` from an id (501, ``"501"``) or a full name, as nnU-Net resolves it.

    Looks in the nnU-Net folders named by the environment at call time (nnunetv2.paths is frozen
    at import).
    """
    text = str(dataset)
    if text.startswith("Dataset"):
        return text
    if not text.isdigit():
        raise UserError(f"dataset {text!r} is neither an id (e.g. 501) nor a name (Dataset501_L3)")
    prefix = f"Dataset{int(text):03d}_"
    found = set()
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        root = os.environ.get(var)
        if root and Path(root).is_dir():
            found.update(p.name for p in Path(root).iterdir() if p.is_dir() and p.name.startswith(prefix))
    if len(found) != 1:
        what = ("not found: no dataset" if not found
                else f"is ambiguous: several datasets ({', '.join(sorted(found))})")
        raise UserError(f"dataset {int(text)} {what} with id {int(text)} in $nnUNet_raw/"
                        f"$nnUNet_preprocessed/$nnUNet_results; convert it first "
                        f"(`nnunet-xfer convert`), give the full dataset name or fix the folders")
    return found.pop()


def raw_dataset_dir(dataset: str | int) -> Path:
    """``$nnUNet_raw/<Dataset>`` of a converted dataset (id or name)."""
    try:
        folder = env_path("nnUNet_raw") / dataset_name(dataset)
    except RuntimeError as e:
        raise UserError(str(e)) from None
    if not folder.is_dir():
        raise UserError(f"raw dataset {folder} does not exist; run `nnunet-xfer convert` first")
    return folder


def _read_json(path: Path, what: str):
    if not path.is_file():
        raise UserError(f"{path} is missing; (re-)run `nnunet-xfer convert` to write the {what}")
    try:
        return json.loads(path.read_text())
    except ValueError:
        raise UserError(f"{path} is not valid JSON; re-run `nnunet-xfer convert --overwrite`") from None


def read_splits(dataset: str | int | Path) -> list[dict]:
    """The dataset's ``splits_final.json`` (list of ``{"train": [...], "val": [...]}``).

    ``dataset`` is an id, a name, or the raw dataset folder itself.
    """
    folder = Path(dataset) if isinstance(dataset, Path) else raw_dataset_dir(dataset)
    return _read_json(folder / "splits_final.json", "folds")


def read_subsets(dataset: str | int | Path) -> dict:
    """The dataset's ``subsets.json`` (``{"seed", "sizes", "folds": {fold: {size: [ids]}}}``)."""
    folder = Path(dataset) if isinstance(dataset, Path) else raw_dataset_dir(dataset)
    return _read_json(folder / "subsets.json", "nested subsets")


def read_cases(dataset: str | int | Path) -> pd.DataFrame:
    """Per-case metadata ``cases.csv`` (case_id, height_m, sex, observer, source files, spacing)."""
    folder = Path(dataset) if isinstance(dataset, Path) else raw_dataset_dir(dataset)
    path = folder / CASES_CSV
    if not path.is_file():
        raise UserError(f"{path} is missing; (re-)run `nnunet-xfer convert`")
    return pd.read_csv(path, dtype={"case_id": str})


def ensure_splits_in_preprocessed(dataset: str | int) -> Path:
    """Copy the raw dataset's ``splits_final.json`` to ``$nnUNet_preprocessed/<Dataset>/`` if absent.

    nnU-Net reads its folds only from there; an existing file is left alone (nnU-Net's own rule).
    Returns the path of the file nnU-Net will use.
    """
    name = dataset_name(dataset)
    try:
        target_dir = env_path("nnUNet_preprocessed") / name
    except RuntimeError as e:
        raise UserError(str(e)) from None
    target = target_dir / "splits_final.json"
    if not target.is_file():
        source = raw_dataset_dir(name) / "splits_final.json"
        if not source.is_file():
            raise UserError(f"{source} is missing; (re-)run `nnunet-xfer convert`")
        target_dir.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        shutil.copyfile(source, tmp)
        tmp.replace(target)
    return target
