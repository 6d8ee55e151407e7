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
from nnunet_xfer.atomic import atomic_write_json, make_folder
from nnunet_xfer.errors import UserError
from nnunet_xfer.imaging.names import NNUNET_ENDING
from nnunet_xfer.layout import (CASES_CSV, DATASET_JSON, OUTPUT_MARKER, SPLITS_FILE, SUBSETS_FILE,
                                TEMP_PREFIX, image_file, label_file)

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
    cases.to_csv(folder / CASES_CSV, index=False)
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
    try:
        marker = json.loads((folder / OUTPUT_MARKER).read_text())
        if isinstance(marker, dict) and marker.get("command") == COMMAND:
            return {str(f) for f in marker.get("files", [])}
        return None
    except FileNotFoundError:
        pass
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    try:
        block = json.loads((folder / DATASET_JSON).read_text()).get("nnunet_xfer")
        cases = list(block["cases"])
    except (OSError, ValueError, UnicodeDecodeError, AttributeError, KeyError, TypeError):
        return None
    ours = {DATASET_JSON, SPLITS_FILE, SUBSETS_FILE, CASES_CSV}
    for cid in cases:
        ours |= {f"imagesTr/{image_file(cid, 0, FILE_ENDING)}", f"labelsTr/{label_file(cid, FILE_ENDING)}"}
    return ours


def check_replaceable(folder: Path) -> None:
    """Refuse to replace a dataset folder ``convert`` did not write, or one holding foreign files."""
    if folder.is_symlink() or not folder.is_dir():
        raise UserError(f"--overwrite refused: {folder} is not a dataset folder written by "
                        f"nnunet-xfer convert; remove it yourself or choose another -d")
    written = written_by_convert(folder)
    if written is None:
        raise UserError(f"--overwrite refused: {folder} was not written by nnunet-xfer convert; "
                        f"remove it yourself or choose another -d")
    foreign = [f for f in atomic.listing(folder) if f not in written]
    if foreign:
        raise UserError(f"--overwrite refused: {folder} holds files nnunet-xfer convert did not "
                        f"write ({atomic.shown(foreign)}); move them or choose another -d")


def check_free(root: Path, dataset_id: int, folder_name: str, overwrite: bool) -> list[Path]:
    """Existing folders with this id that would be replaced; refuses unless ``overwrite`` and
    each of them holds only what ``convert`` wrote."""
    existing = folders_with_id(root, dataset_id)
    if existing and not overwrite:
        names = [p.name for p in existing]
        what = "already exists" if names == [folder_name] else "is taken by"
        raise UserError(f"dataset id {dataset_id} {what}: {', '.join(names)} in {root}; choose "
                        f"another -d or pass --overwrite to replace it")
    for folder in existing:
        check_replaceable(folder)
    return existing


def _set_aside(folder: Path) -> Path:
    """Rename ``folder`` to a hidden temporary name beside it (removed later, or by a next run)."""
    aside = folder.with_name(f"{TEMP_PREFIX}.{os.getpid()}.old.{folder.name}")
    folder.rename(aside)
    return aside


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def remove_folders(folders: list[Path]) -> None:
    """Remove ``folders`` (each first renamed aside, so no half-deleted folder keeps its name)."""
    for aside in [_set_aside(f) for f in folders]:
        _remove(aside)


def commit(staged: Path, final: Path, replace: list[Path]) -> None:
    """Move ``staged`` to ``final``, replacing the folders in ``replace`` (kept until the swap)."""
    trash = [(old, _set_aside(old)) for old in replace]
    try:
        staged.rename(final)
    except OSError as e:
        for old, aside in trash:  # put the old datasets back
            aside.rename(old)
        raise UserError(f"cannot create {final}: {e.strerror or e}") from None
    for _, aside in trash:
        _remove(aside)
