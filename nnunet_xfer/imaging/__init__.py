"""Images in: the one reader, validator and namer of image files (the floor under every stage).

Every command reads images through this package (docs/layout.md#reading-images lists the
refusals), and only this package parses a NIfTI header, spells nnU-Net's ``_0000`` or keeps a
table of file endings. It imports nothing of the package but :mod:`nnunet_xfer.errors`.

* :func:`read_image` / :func:`read_mask` → :class:`Image`: voxels as stored, spacing, origin,
  direction, DICOM headers; refusals in one line naming the file.
* :func:`read_picture` / :func:`picture_size`: natural pictures (pretraining on natural images),
  read whole or sized from their header; a truncated or unreadable one refused in one line.
* :func:`check_pair`: an image and its mask on one grid (size, spacing, origin, direction).
* :meth:`Image.canonical`: the one orientation images reach the network and the measures in.
* :func:`fingerprint`, :meth:`Image.fingerprint`, :func:`content_fingerprints`: identity by
  voxel values, independent of type, format and storage order.
* :mod:`~nnunet_xfer.imaging.names`: case id ↔ file name (``image_file``, ``label_file``,
  ``case_id_from_filename``, ``list_cases``, ``images_for_cases``).
* :func:`load_slice` / :func:`load_mask` → :class:`Slice`: one 2D slice and its
  :class:`Geometry`, as the evaluation commands compare them (:func:`check_geometry`).
"""
from __future__ import annotations

import importlib

#: Public name → the submodule that defines it (imported on first use, so that
#: ``nnunet_xfer.imaging.names``, which ``layout`` needs, stays light).
_WHERE = {
    "DicomSeries": "dicom", "is_dicom_file": "dicom", "content_fingerprints": "identity",
    "Geometry": "image", "Image": "image", "Reorientation": "image", "Slice": "image",
    "fingerprint": "image",
    "CHANNEL_SUFFIX": "names", "case_id_from_filename": "names", "file_ending": "names",
    "has_slice_files": "names", "image_file": "names", "images_for_cases": "names",
    "label_file": "names", "list_cases": "names", "strip_ending": "names",
    "check_geometry": "pairs", "check_pair": "pairs", "check_path_pair": "pairs",
    "check_same_geometry": "pairs", "same_geometry": "pairs",
    "check_finite": "reader", "check_hu": "reader", "load_mask": "reader", "load_slice": "reader",
    "PREDICTION_HINT": "reader", "mask_of_label": "reader", "quiet_itk": "reader",
    "picture_size": "reader", "read_image": "reader", "read_mask": "reader",
    "read_picture": "reader",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
