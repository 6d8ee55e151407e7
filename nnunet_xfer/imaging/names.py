"""Case id ↔ file name, both ways, and the one table of file endings.

nnU-Net names an image ``<case>_0000.nii.gz`` (channel 0) and a label or prediction
``<case>.nii.gz``. Users arrive with ``<case>.<ending>`` files, DICOM series folders and 2D
arrays. Every module that turns a file name into a case id, or a case id into a file name, asks
this one.
"""
from __future__ import annotations

import re
from pathlib import Path

from nnunet_xfer.errors import UserError

# ---------------------------------------------------------------- endings, by purpose
#: The NIfTI endings (``.nii.gz`` first, so it wins over ``.gz``).
NIFTI_ENDINGS: tuple[str, ...] = (".nii.gz", ".nii")
#: What nnU-Net datasets of ours are written as (``dataset.json``'s ``file_ending``).
NNUNET_ENDING = ".nii.gz"
#: Formats that carry real geometry (spacing, origin, direction): CT images and label volumes.
VOLUME_ENDINGS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")
#: A DICOM file (an instance, a DICOM-SEG).
DICOM_ENDING = ".dcm"
#: Edited masks (``measure --corrected``): label maps as ITK-SNAP or 3D Slicer save them
#: (``.seg.nrrd`` first, so it wins over ``.nrrd``), or a DICOM-SEG.
CORRECTION_ENDINGS: tuple[str, ...] = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha", ".mhd",
                                       DICOM_ENDING)
#: CT images without DICOM (pretraining's ``--data`` CT folders).
CT_ENDINGS: tuple[str, ...] = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
#: 2D array formats accepted for masks only: they carry no geometry (it is the image's).
ARRAY_ENDINGS: tuple[str, ...] = (".png", ".npy")
#: Slice files the evaluation commands list in a folder (images, labels, predictions, observers).
SLICE_ENDINGS: tuple[str, ...] = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr", ".png")
#: PNG: a picture, a 2D mask, or (``--allow-non-hu``) a slice; natural-image nnU-Net datasets
#: whose dataset.json names no ``file_ending`` are taken as PNG.
PNG_ENDING = ".png"
#: Pictures: no pixel spacing, usually no HU (natural images for pretraining).
PICTURE_ENDINGS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif",
                                    ".webp")
#: A Pascal-VOC image, in the order they are looked for, and its mask (a palette PNG).
VOC_IMAGE_ENDINGS: tuple[str, ...] = (".jpg", ".jpeg", ".png")
VOC_MASK_ENDING = ".png"

#: nnU-Net's suffix of the first (here: only) channel: ``<case>_0000.nii.gz``.
CHANNEL_SUFFIX = "_0000"
_CHANNEL = re.compile(r"^(.+)_(\d{4})$")


def file_ending(path: str | Path) -> str:
    """Lower-case ending, with ``.nii.gz`` kept whole (``""`` for a folder or no ending)."""
    name = Path(path).name.lower()
    for ending in NIFTI_ENDINGS:
        if name.endswith(ending):
            return ending
    return Path(name).suffix


def has_ending(path: str | Path, endings: tuple[str, ...]) -> bool:
    """Whether the file name ends in one of ``endings`` (case-insensitive)."""
    return Path(path).name.lower().endswith(endings)


def strip_ending(path: str | Path, endings: tuple[str, ...] | None = None) -> str:
    """File name without its ending (``case1.nii.gz`` → ``case1``); with ``endings``, only one of
    those is taken off."""
    name = Path(path).name
    if endings is None:
        ending = file_ending(path)
    else:
        ending = next((e for e in endings if name.lower().endswith(e)), "")
    return name[: len(name) - len(ending)] if ending else name


# ---------------------------------------------------------------- nnU-Net's names
def image_file(case_id: str, channel: int = 0, ending: str = NNUNET_ENDING) -> str:
    """nnU-Net's image file name of a case (``<case>_0000.nii.gz``)."""
    return f"{case_id}_{channel:04d}{ending}"


def label_file(case_id: str, ending: str = NNUNET_ENDING) -> str:
    """nnU-Net's label / prediction / mask file name of a case (``<case>.nii.gz``)."""
    return f"{case_id}{ending}"


def channel_of(stem: str) -> tuple[str, int] | None:
    """(case id, channel) when ``stem`` ends like nnU-Net's channel suffix (``x_0003`` → (x, 3))."""
    match = _CHANNEL.match(stem)
    return (match.group(1), int(match.group(2))) if match else None


def case_id_from_filename(name: str | Path, channel_suffix: bool = False) -> str:
    """Case id of an image or mask file: the name without its ending (and, with
    ``channel_suffix``, without nnU-Net's ``_0000`` channel suffix of image files).

    ``case_007.nii.gz`` → ``case_007``; ``case_007_0000.nii.gz`` → ``case_007`` with
    ``channel_suffix``. Masks never carry the suffix, so a mask ``L3_0000.nii.gz`` is case
    ``L3_0000``. The inverse of :func:`image_file` / :func:`label_file`.
    """
    stem = strip_ending(name, SLICE_ENDINGS + VOLUME_ENDINGS + ARRAY_ENDINGS)
    if channel_suffix and stem.endswith(CHANNEL_SUFFIX):
        stem = stem[: -len(CHANNEL_SUFFIX)]
    return stem


# ---------------------------------------------------------------- folders of slice files
def is_slice_file(path: Path) -> bool:
    """Whether a file has one of the endings in :data:`SLICE_ENDINGS` (skips json, csv, pkl...)."""
    return path.is_file() and has_ending(path, SLICE_ENDINGS)


def has_slice_files(folder: Path) -> bool:
    """Whether ``folder`` is a folder holding at least one slice file."""
    return folder.is_dir() and any(is_slice_file(p) for p in folder.iterdir())


def list_cases(folder: Path, what: str = "files",
               channel_suffix: bool | None = None) -> dict[str, Path]:
    """Map case id → file for every slice file in ``folder``; UserError if missing, empty or
    ambiguous.

    ``channel_suffix`` says whether file names end in nnU-Net's ``_0000`` channel suffix. None
    (default): yes for a folder of images (``what`` mentions images) in which every file ends in
    ``_0000``, as in nnU-Net's imagesTr/imagesTs; no otherwise (masks, or images named
    ``<case>.nii.gz`` whose case ids may themselves end in ``_0000``, like the phantom's).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder of {what}")
    paths = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not has_ending(p, SLICE_ENDINGS):
            continue
        if not p.is_file():  # a folder, pipe, device or broken link named like a slice file
            raise UserError(f"{p} is not a regular file (a folder, pipe, device or broken link); "
                            f"put the {what.split()[-1].rstrip('s')} file there or remove it")
        paths.append(p)
    if not paths:
        raise UserError(f"{folder}: no {what} found (expected "
                        f"{', '.join(SLICE_ENDINGS)} files named by case)")
    if channel_suffix is None:
        channel_suffix = "image" in what.lower() and all(
            case_id_from_filename(p).endswith(CHANNEL_SUFFIX) for p in paths)
    cases: dict[str, Path] = {}
    for path in paths:
        case = case_id_from_filename(path.name, channel_suffix)
        if case in cases:
            raise UserError(f"{folder}: case {case} appears twice ({cases[case].name}, {path.name});"
                            " keep one file per case")
        cases[case] = path
    return cases


def images_for_cases(folder: Path, case_ids: list[str], what: str = "images") -> dict[str, Path]:
    """The image of each case by exact case id: ``<case>.<ending>``, or nnU-Net's
    ``<case>_0000.<ending>``; one image is never given to two cases.

    In a folder where every image ends in ``_0000`` (nnU-Net's imagesTr/imagesTs) the suffix is
    the channel; elsewhere ``<case>.<ending>`` wins, so cases ``x`` and ``x_0000`` each get their
    own. UserError naming the first case without an image, or two cases sharing one.
    """
    folder = Path(folder)
    by_stem = list_cases(folder, what, channel_suffix=False)
    nnunet_style = all(stem.endswith(CHANNEL_SUFFIX) for stem in by_stem)
    found: dict[str, Path] = {}
    lacking = []
    for case in case_ids:
        path = (by_stem.get(case + CHANNEL_SUFFIX) if nnunet_style
                else by_stem.get(case, by_stem.get(case + CHANNEL_SUFFIX)))
        if path is None:
            lacking.append(case)
        else:
            found[case] = path
    if lacking:
        more = f"; {len(lacking) - 1} more cases lack one" if len(lacking) > 1 else ""
        raise UserError(f"case {lacking[0]}: no image in {folder} (expected "
                        f"{image_file(lacking[0])} or {label_file(lacking[0])}){more}")
    owner: dict[Path, str] = {}
    for case, path in found.items():
        if path in owner:
            raise UserError(f"cases {owner[path]} and {case} would both use {path.name}; name images "
                            f"{label_file('<case>')} (exact case id) or all {image_file('<case>')}")
        owner[path] = case
    return found


def entries_by_case(folder: Path, endings: tuple[str, ...]) -> dict[str, Path]:
    """``case id → path`` for the files of ``folder`` with one of ``endings`` and its sub-folders
    (DICOM series); hidden entries are skipped. UserError when two entries name one case."""
    found: dict[str, Path] = {}
    for p in sorted(Path(folder).iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            cid = p.name
        elif has_ending(p, endings):
            cid = strip_ending(p, endings)
        else:
            continue
        if cid in found:
            raise UserError(f"{folder} holds two entries for case {cid!r} ({found[cid].name}, "
                            f"{p.name}); keep one")
        found[cid] = p
    return found
