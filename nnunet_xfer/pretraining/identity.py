"""Is this the target? Identity by content, for ``pretrain --data`` and for the trainers.

Names and bytes do not tell whether a source task saw the target's images: a copy of the target
dataset stored as float32 (labels int16), renamed, re-compressed or reoriented has other bytes and
the same content. So the images and labels of the target's raw dataset (``imagesTr``/``labelsTr``)
are fingerprinted by voxel values (:mod:`nnunet_xfer.imaging.identity`), and:

* ``pretrain --data`` fingerprints every image under ``--data`` (:func:`data_fingerprints`: any
  slice of a volume, pictures too) and refuses data that holds a target image or label
  (:func:`refuse_target_content`), before a source task reads it;
* the store records those fingerprints with the entry (``image_fingerprints``: every image the
  entry could have seen), and a trainer refuses an entry that shares any of them with the
  images it must not have seen (:func:`shared_images`): every image of its dataset for an entry
  shared by all folds, the fold's validation images for a per-fold entry, none for
  ``--scope all`` (recorded as such).
"""
from __future__ import annotations

from pathlib import Path

from nnunet_xfer.errors import UserError
from nnunet_xfer.imaging.identity import CONTENT_ENDINGS, content_fingerprints
from nnunet_xfer.imaging.names import has_ending, has_slice_files, list_cases
from nnunet_xfer.layout import DatasetLayout

#: The store record's key: sorted fingerprints of every image the entry was trained on.
FINGERPRINTS_KEY = "image_fingerprints"


def dataset_files(dataset_name: str) -> dict[str, list[Path]]:
    """``case id → [image, label]`` of the target's raw dataset (what exists of them)."""
    layout = DatasetLayout(dataset_name)
    files: dict[str, list[Path]] = {}
    for folder, what in ((layout.images_dir, "images"), (layout.labels_dir, "labels")):
        if has_slice_files(folder):
            for case, path in list_cases(folder, what).items():
                files.setdefault(case, []).append(path)
    return files


def dataset_fingerprints(dataset_name: str, case_ids=None) -> dict[str, str]:
    """``fingerprint → "case X (file)"`` of the target's raw images and labels (of ``case_ids``
    only, when given)."""
    wanted = None if case_ids is None else {str(c) for c in case_ids}
    found: dict[str, str] = {}
    for case, paths in sorted(dataset_files(dataset_name).items()):
        if wanted is not None and case not in wanted:
            continue
        for path in paths:
            for fp in content_fingerprints(path):
                found.setdefault(fp, f"case {case} ({path.parent.name}/{path.name})")
    return found


def data_fingerprints(data: Path) -> dict[str, str]:
    """``fingerprint → file`` of every image under ``--data`` (a file or a folder, hidden files
    left out); UserError naming a file that cannot be read."""
    data = Path(data)
    files = [data] if data.is_file() and has_ending(data, CONTENT_ENDINGS) else sorted(
        p for p in (data.rglob("*") if data.is_dir() else ()) if p.is_file()
        and has_ending(p, CONTENT_ENDINGS)
        and not any(part.startswith(".") for part in p.relative_to(data).parts))
    found: dict[str, str] = {}
    for f in files:
        name = str(f.relative_to(data)) if data.is_dir() else f.name
        for fp in content_fingerprints(f):
            found.setdefault(fp, name)
    return found


def refuse_target_content(seen: dict[str, str], data: Path, dataset_name: str) -> None:
    """Refuse ``--data`` whose images (``seen``: fingerprint → image) include a target image or
    label, whatever its type, format, name or storage order."""
    if not seen:
        return
    target = dataset_fingerprints(dataset_name)
    shared = [fp for fp in seen if fp in target]
    if shared:
        more = f" and {len(shared) - 1} more" if len(shared) > 1 else ""
        raise UserError(f"--data {data} is the target dataset {dataset_name} ({seen[shared[0]]} "
                        f"has the same voxels as the target's {target[shared[0]]}{more}); a source "
                        f"task must not learn from the target's own images or labels: choose "
                        f"another dataset")


def shared_images(meta: dict, dataset_name: str, forbidden_cases=None) -> list[str]:
    """The images of ``dataset_name`` (of ``forbidden_cases`` only, when given) whose fingerprint
    the store record ``meta`` lists as seen; [] when it lists none."""
    seen = set(meta.get(FINGERPRINTS_KEY) or ())
    if not seen:
        return []
    target = dataset_fingerprints(dataset_name, forbidden_cases)
    return sorted({where for fp, where in target.items() if fp in seen})
