"""``--l3 auto``: find the L3 vertebra with TotalSegmentator (optional extra ``nnunet_xfer[totalseg]``).

TotalSegmentator is not installed with nnunet_xfer: ``pip install 'nnunet_xfer[totalseg]'``. Its
licence terms and the download of its weights (on first use, into ``~/.totalsegmentator``) are
the user's to accept. The middle of its L3 label is the slice, as ``convert`` picks it from any
vertebra label map. :func:`run_totalsegmentator` is the one function that calls it.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import tempfile
from pathlib import Path

import SimpleITK as sitk

from nnunet_xfer.errors import UserError
from nnunet_xfer.imaging import read_mask

#: ``vertebrae_L3`` in TotalSegmentator v2's ``total`` task (used if its class map is not found).
TOTALSEG_L3_LABEL = 29
INSTALL_HINT = ("pip install 'nnunet_xfer[totalseg]' (TotalSegmentator: its licence and weight "
                "download are yours to accept), or give slice_index or vertebra_mask + "
                "vertebra_label in the manifest")


def totalseg_available() -> bool:
    """Whether the ``totalsegmentator`` package can be imported."""
    return importlib.util.find_spec("totalsegmentator") is not None


def require_totalseg() -> None:
    """One-line :class:`UserError` saying what to install when TotalSegmentator is missing."""
    if not totalseg_available():
        raise UserError(f"--l3 auto needs TotalSegmentator, which is not installed: {INSTALL_HINT}")


def _l3_label() -> int:
    try:
        from totalsegmentator.map_to_binary import class_map
        return {name: k for k, name in class_map["total"].items()}["vertebrae_L3"]
    except (ImportError, KeyError):
        return TOTALSEG_L3_LABEL


def _ts_device(device: str | None) -> str:
    if device is None or device.startswith("cuda"):
        return "gpu" if device in (None, "cuda") else device.replace("cuda", "gpu")
    return device


def run_totalsegmentator(volume: sitk.Image, device: str | None = None) -> tuple[sitk.Image, int]:
    """TotalSegmentator's vertebra labels of a CT volume on the volume's grid, and the L3 label.

    Runs the ``total`` task (``fast``, 3 mm) restricted to the lumbar vertebrae.
    """
    require_totalseg()
    from totalsegmentator.python_api import totalsegmentator
    with tempfile.TemporaryDirectory(prefix="nnunet_xfer_totalseg_") as tmp:
        src, out = Path(tmp) / "ct.nii.gz", Path(tmp) / "vertebrae.nii.gz"
        sitk.WriteImage(volume, str(src))
        with contextlib.redirect_stdout(io.StringIO()):
            totalsegmentator(src, out, ml=True, fast=True, quiet=True, device=_ts_device(device),
                             roi_subset=["vertebrae_L2", "vertebrae_L3", "vertebrae_L4"])
        labels = read_mask(out, what="TotalSegmentator's vertebra map").to_sitk()
    if (labels.GetSize() != volume.GetSize() or labels.GetSpacing() != volume.GetSpacing()
            or labels.GetOrigin() != volume.GetOrigin()):
        labels = sitk.Resample(labels, volume, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                               labels.GetPixelID())
    labels.CopyInformation(volume)
    return labels, _l3_label()
