"""Write nnU-Net v2 raw datasets: staged in a hidden temporary folder, then renamed into place.

Layout (docs/layout.md): ``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz``, ``dataset.json``,
``splits_final.json``, ``subsets.json`` and ``cases.csv`` (per-case metadata for the evaluation).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pandas as pd
import SimpleITK as sitk

from nnunet_xfer.dataset_conversion.splits import write_json
from nnunet_xfer.errors import UserError

FILE_ENDING = ".nii.gz"
CHANNEL_NAMES = {"0": "CT"}
LABELS = {"background": 0, "muscle": 1}
CASES_CSV = "cases.csv"
_STAGING_PREFIX = ".nnunet_xfer_staging_"  # must not start with "Dataset": nnU-Net scans by prefix


def dataset_folder_name(dataset_id: int, name: str) -> str:
    """``Dataset501_L3`` for (501, ``L3``)."""
    return f"Dataset{dataset_id:03d}_{name}"


def folders_with_id(root: Path, dataset_id: int) -> list[Path]:
    """Existing ``Dataset<ID>_*`` folders under ``root`` (nnU-Net resolves ids by this prefix)."""
    root = Path(root)
    if not root.is_dir():
        return []
    prefix = f"Dataset{dataset_id:03d}_"
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith(prefix))


def write_case(folder: Path, case_id: str, image: sitk.Image, mask: sitk.Image) -> None:
    """Write one case's image (values and geometry as given) and its 0/1 label."""
    sitk.WriteImage(image, str(folder / "imagesTr" / f"{case_id}_0000{FILE_ENDING}"),
                    useCompression=True)
    sitk.WriteImage(mask, str(folder / "labelsTr" / f"{case_id}{FILE_ENDING}"), useCompression=True)


def dataset_json(n_training: int, name: str, extra: dict) -> dict:
    """nnU-Net v2 ``dataset.json`` with a ``nnunet_xfer`` block of our own metadata."""
    return {"channel_names": CHANNEL_NAMES, "labels": LABELS, "numTraining": n_training,
            "file_ending": FILE_ENDING, "name": name,
            "description": "L3 CT skeletal-muscle slices converted by nnunet_xfer",
            "nnunet_xfer": extra}


def write_metadata(folder: Path, name: str, cases: pd.DataFrame, splits: list[dict],
                   subsets: dict, extra: dict) -> None:
    """dataset.json, splits_final.json, subsets.json and cases.csv of one dataset folder."""
    write_json(folder / "dataset.json", dataset_json(len(cases), name, extra))
    write_json(folder / "splits_final.json", splits)
    write_json(folder / "subsets.json", subsets)
    cases.to_csv(folder / CASES_CSV, index=False)


def new_staging(root: Path) -> Path:
    """An empty hidden folder in ``root`` (same file system, so the final rename is atomic)."""
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=root))
    (folder / "imagesTr").mkdir()
    (folder / "labelsTr").mkdir()
    return folder


@contextmanager
def staging(root: Path) -> Iterator[list[Path]]:
    """Collect staging folders; all of them are removed if the block raises."""
    made: list[Path] = []
    try:
        yield made
    finally:
        for folder in made:
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard link ``src`` to ``dst`` where the file system allows it, else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def share_cases(src: Path, dst: Path) -> None:
    """Give dataset ``dst`` the images and labels of ``src`` (hard links where possible)."""
    for sub in ("imagesTr", "labelsTr"):
        for f in sorted((src / sub).iterdir()):
            link_or_copy(f, dst / sub / f.name)


def check_free(root: Path, dataset_id: int, folder_name: str, overwrite: bool) -> list[Path]:
    """Existing folders with this id that would be replaced; refuses unless ``overwrite``."""
    existing = folders_with_id(root, dataset_id)
    if existing and not overwrite:
        names = [p.name for p in existing]
        what = "already exists" if names == [folder_name] else "is taken by"
        raise UserError(f"dataset id {dataset_id} {what}: {', '.join(names)} in {root}; choose "
                        f"another -d or pass --overwrite to replace it")
    return existing


def commit(staged: Path, final: Path, replace: list[Path]) -> None:
    """Move ``staged`` to ``final``, replacing the folders in ``replace`` (kept until the swap)."""
    trash = []
    for old in replace:
        aside = old.with_name(_STAGING_PREFIX + "old_" + old.name)
        if aside.exists():
            shutil.rmtree(aside)
        old.rename(aside)
        trash.append(aside)
    try:
        staged.rename(final)
    except OSError:
        for aside in trash:  # put the old datasets back
            aside.rename(aside.with_name(aside.name[len(_STAGING_PREFIX + "old_"):]))
        raise
    for aside in trash:
        shutil.rmtree(aside, ignore_errors=True)
