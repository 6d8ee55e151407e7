"""Identity by content: which images are the same, whatever their type, format or name.

A fingerprint (:func:`~nnunet_xfer.imaging.image.fingerprint`) hashes the shape and the voxel
values in canonical orientation, so a copy stored as float32 instead of int16, as NRRD instead of
NIfTI, or with rows stored the other way round has the fingerprint of the original. A volume
contributes one fingerprint per slice, because a 2D dataset's image may be one slice of it.
Constant images (every voxel equal: an empty mask, a blank picture) carry no content and are left
out, so two empty masks never make two datasets "the same".
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from nnunet_xfer.errors import UserError
from nnunet_xfer.imaging.image import fingerprint
from nnunet_xfer.imaging.names import PICTURE_ENDINGS, SLICE_ENDINGS, VOLUME_ENDINGS, has_ending

#: Files whose content is fingerprinted (medical images and pictures).
CONTENT_ENDINGS = tuple(dict.fromkeys(VOLUME_ENDINGS + SLICE_ENDINGS + PICTURE_ENDINGS + (".npy",)))


def _informative(arr: np.ndarray) -> bool:
    return arr.size > 0 and arr.min() != arr.max()


def picture_fingerprint(arr: np.ndarray) -> str | None:
    """The fingerprint of a picture's pixels ((H, W) or (H, W, C)); None when constant."""
    arr = np.asarray(arr)
    return fingerprint(arr) if _informative(arr) else None


def content_fingerprints(path: Path) -> list[str]:
    """Fingerprints of the content of one file: one per slice of a medical image (canonical
    in-plane order), one for a picture; constant slices left out. UserError when unreadable."""
    from nnunet_xfer.imaging.reader import read_mask
    path = Path(path)
    if has_ending(path, PICTURE_ENDINGS):
        from PIL import Image as PILImage
        try:
            with PILImage.open(path) as im:
                arr = np.asarray(im)
        except Exception as e:  # noqa: BLE001 - PIL raises many types for a bad file
            raise UserError(f"cannot read image {path} ({type(e).__name__}: {str(e)[:120]}); fix "
                            f"or remove it") from None
        found = picture_fingerprint(arr)
        return [found] if found else []
    image = read_mask(path, what="image")
    canonical = image.canonical()[0].array
    planes = [canonical] if canonical.ndim == 2 else list(canonical)
    return [fingerprint(p) for p in planes if _informative(p)]
