"""Write nnU-Net v2 raw datasets: staged in a hidden temporary folder, then renamed into place.

Layout (docs/layout.md): ``imagesTr/<case>_0000.<ending>``, ``labelsTr/<case>.<ending>``, ``dataset.json``,
``splits_final.json``, ``subsets.json`` and ``cases.csv`` (per-case metadata for the evaluation).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pandas as pd
import SimpleITK as sitk

from nnunet_xfer import atomic
from nnunet_xfer.atomic import Claim, atomic_write_csv, atomic_write_json, make_folder
from nnunet_xfer.errors import UserError
from nnunet_xfer.imaging.names import NNUNET_ENDING
from nnunet_xfer.layout import (CASES_CSV, DATASET_JSON, FINGERPRINT_JSON, GT_SEGMENTATIONS,
                                OUTPUT_MARKER, SPLITS_FILE, SUBSETS_FILE, TEMP_PREFIX, image_file,
                                label_file)

FILE_ENDING = NNUNET_ENDING
CHANNEL_NAMES = {"0": "CT"}
LABELS = {"background": 0, "muscle": 1}
#: The command named in the marker of a dataset folder written by ``convert``.
COMMAND = "nnunet-xfer convert"


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
    sitk.WriteImage(image, str(folder / "imagesTr" / image_file(case_id, 0, FILE_ENDING)),
                    useCompression=True)
    sitk.WriteImage(mask, str(folder / "labelsTr" / label_file(case_id, FILE_ENDING)), useCompression=True)


def dataset_json(n_training: int, name: str, extra: dict) -> dict:
    """nnU-Net v2 ``dataset.json`` with a ``nnunet_xfer`` block of our own metadata."""
    return {"channel_names": CHANNEL_NAMES, "labels": LABELS, "numTraining": n_training,
            "file_ending": FILE_ENDING, "name": name,
            "description": "L3 CT skeletal-muscle slices converted by nnunet_xfer",
            "nnunet_xfer": extra}


def write_metadata(folder: Path, name: str, cases: pd.DataFrame, splits: list[dict] | None,
                   subsets: dict | None, extra: dict) -> None:
    """dataset.json, splits_final.json, subsets.json (without folds: neither) and cases.csv of one
    dataset folder, then the marker listing every file of it."""
    atomic_write_json(folder / DATASET_JSON, dataset_json(len(cases), name, extra))
    if splits is not None:
        atomic_write_json(folder / SPLITS_FILE, splits)
        atomic_write_json(folder / SUBSETS_FILE, subsets)
    atomic_write_csv(folder / CASES_CSV, cases)
    write_marker(folder)


def new_staging(root: Path) -> Path:
    """An empty hidden folder in ``root`` (same file system, so the final rename is atomic).

    Its name carries our pid, so a later run removes it if this one is killed
    (:func:`nnunet_xfer.atomic.remove_stale_temporaries`); ``mkdir`` makes it follow the umask.
    """
    make_folder(root)
    for _ in range(100):
        folder = Path(root) / f"{TEMP_PREFIX}.{os.getpid()}.staging.{secrets.token_hex(4)}"
        try:
            folder.mkdir()
            break
        except FileExistsError:
            continue
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


# ---------------------------------------------------------------- what convert wrote
def write_marker(folder: Path) -> None:
    """Record every file of a staged dataset folder as written by ``convert``."""
    atomic.write_marker(folder, "convert")


def written_by_convert(folder: Path) -> set[str] | None:
    """The files ``convert`` wrote into ``folder`` (None: ``convert`` did not write it).

    Read from the marker; a dataset converted before markers existed is recognised by the
    ``nnunet_xfer`` block of its ``dataset.json``, which lists every case.
    """
    folder = Path(folder)
    if (folder / OUTPUT_MARKER).exists():
        return atomic.marker_files(folder, "convert")
    try:
        block = json.loads((folder / DATASET_JSON).read_text()).get("nnunet_xfer")
        cases = list(block["cases"])
    except (OSError, ValueError, UnicodeDecodeError, AttributeError, KeyError, TypeError):
        return None
    ours = {DATASET_JSON, SPLITS_FILE, SUBSETS_FILE, CASES_CSV}
    for cid in cases:
        ours |= {f"imagesTr/{image_file(cid, 0, FILE_ENDING)}", f"labelsTr/{label_file(cid, FILE_ENDING)}"}
    return ours


def preprocessed_files(folder: Path) -> set[str]:
    """What nnU-Net's planning and preprocessing (and ``convert``, ``plan``) write into
    ``$nnUNet_preprocessed/<Dataset>/``: data made from the raw dataset, removed with it.

    ``dataset.json``, ``dataset_fingerprint.json``, ``splits_final.json``, every plans file (a JSON
    whose ``plans_name`` is its file name) with the folders of its ``data_identifier``, and
    ``gt_segmentations/``. Anything else there is a user's, and ``--overwrite`` is refused.
    """
    folder = Path(folder)
    names = {DATASET_JSON, FINGERPRINT_JSON, SPLITS_FILE}
    folders = {GT_SEGMENTATIONS}
    for path in folder.glob("*.json"):
        try:
            plans = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        if not (isinstance(plans, dict) and plans.get("plans_name") == path.stem
                and isinstance(plans.get("configurations"), dict)):
            continue
        names.add(path.name)
        for cfg in plans["configurations"].values():
            ident = cfg.get("data_identifier") if isinstance(cfg, dict) else None
            if isinstance(ident, str) and ident and "/" not in ident:
                folders.add(ident)
    return {f for f in atomic.listing(folder) if f in names or f.split("/", 1)[0] in folders}


def claim_dataset(folder: Path, overwrite: bool, inputs=(), preprocessed: bool = False) -> Claim:
    """The output guard's claim on a dataset folder: a raw one ``convert`` wrote (marker), or a
    preprocessed one holding only what nnU-Net and we made from it (:func:`preprocessed_files`)."""
    return atomic.check_replaceable(folder, "convert", overwrite, inputs=inputs,
                                    written=preprocessed_files if preprocessed else written_by_convert,
                                    nnunet_dataset=True)


def check_free(root: Path, dataset_id: int, folder_name: str, overwrite: bool,
               inputs=()) -> tuple[Claim, list[Claim]]:
    """The claim on ``root/folder_name`` and on the other folders with this id (to be removed);
    refuses unless ``overwrite`` when any exists, and then unless each holds only what
    ``convert`` wrote."""
    existing = folders_with_id(root, dataset_id)
    if existing and not overwrite:
        names = [p.name for p in existing]
        what = "already exists" if names == [folder_name] else "is taken by"
        raise UserError(f"dataset id {dataset_id} {what}: {', '.join(names)} in {root}; choose "
                        f"another -d or pass --overwrite to replace it")
    target = claim_dataset(Path(root) / folder_name, overwrite, inputs)
    others = [claim_dataset(p, overwrite, inputs) for p in existing if p.name != folder_name]
    return target, others


def commit(staged: Path, target: Claim, others: list[Claim]) -> None:
    """Swap ``staged`` into place at ``target`` (race-free, see :mod:`nnunet_xfer.atomic`), then
    remove the other folders with its id that convert wrote."""
    try:
        atomic.swap_into_place(staged, target)
    except OSError as e:
        raise UserError(f"cannot create {target.path}: {e.strerror or e}") from None
    for claim in others:
        atomic.remove_owned(claim)
