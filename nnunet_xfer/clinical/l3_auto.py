"""``--l3 auto``: find the L3 vertebra with TotalSegmentator (optional extra ``nnunet_xfer[totalseg]``).

TotalSegmentator is not installed with nnunet_xfer: ``pip install 'nnunet_xfer[totalseg]'``. Its
licence terms and the download of its weights (on first use, into ``~/.totalsegmentator``) are
the user's to accept. The middle of its L3 label is the slice, as ``convert`` picks it from any
vertebra label map. :class:`L3Finder` is the one caller of TotalSegmentator.

A run that cannot use TotalSegmentator (not installed; weights missing and not downloadable,
e.g. offline) fails the ``--l3 auto`` rows alone: the first with one line saying what to do, the
others with a short line, without calling TotalSegmentator again. What TotalSegmentator prints
for the user (its usage-statistics notice, a CPU warning) is passed on once per run.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import tempfile
from pathlib import Path
from typing import Callable

import SimpleITK as sitk

from nnunet_xfer.errors import UserError
from nnunet_xfer.imaging import Image, label_file, read_mask

#: ``vertebrae_L3`` in TotalSegmentator v2's ``total`` task (used if its class map is not found).
TOTALSEG_L3_LABEL = 29
#: The ``total`` task's weights ``--l3 auto`` uses: ``--fast`` (3 mm) and, for ``roi_subset``,
#: the 6 mm model TotalSegmentator crops with first.
WEIGHT_TASKS = {297: "total_fast", 298: "total_fastest"}
INSTALL_HINT = ("pip install 'nnunet_xfer[totalseg]' (TotalSegmentator: its licence and weight "
                "download are yours to accept), or give slice_index or vertebra_mask + "
                "vertebra_label in the manifest")
#: Lines TotalSegmentator prints that are progress, not news for the user.
_CHATTER = ("Using Device", "Generating rough", "Resampling", "Predicting", "Saving",
            "Download finished", "Using 'fast'", "Using 'fastest'", "Converting", "Cropping",
            "Downloading", "Extracting", "  downloaded in", "  Predicted in", "  cropping",
            "  saved in", "If you use this tool please cite")


def totalseg_available() -> bool:
    """Whether the ``totalsegmentator`` package can be imported."""
    return importlib.util.find_spec("totalsegmentator") is not None


def not_installed_message() -> str:
    return f"--l3 auto needs TotalSegmentator, which is not installed: {INSTALL_HINT}"


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


def weights_dir() -> Path:
    """Where TotalSegmentator looks for its weights (``$TOTALSEG_WEIGHTS_PATH``, else
    ``$TOTALSEG_HOME_DIR/nnunet/results``, else ``~/.totalsegmentator/nnunet/results``)."""
    try:
        from totalsegmentator.config import get_weights_dir
        return Path(get_weights_dir())
    except (ImportError, AttributeError):
        home = os.environ.get("TOTALSEG_HOME_DIR")
        return (Path(home) if home else Path.home() / ".totalsegmentator") / "nnunet" / "results"


def missing_weights() -> list[int]:
    """The task ids of :data:`WEIGHT_TASKS` whose weights folder is not in :func:`weights_dir`."""
    root = weights_dir()
    return [t for t in WEIGHT_TASKS
            if not (root.is_dir() and any(root.glob(f"Dataset{t}_*")))]


def offline_message(cause: BaseException) -> str:
    root = weights_dir()
    tasks = " and ".join(f"-t {WEIGHT_TASKS[t]}" for t in missing_weights() or WEIGHT_TASKS)
    return (f"--l3 auto: TotalSegmentator's weights are not in {root} and could not be downloaded "
            f"({type(cause).__name__}; offline?): place them beforehand — on a machine with "
            f"network run totalseg_download_weights {tasks}, copy its weights folder to {root} "
            f"(or set TOTALSEG_WEIGHTS_PATH to it) — or give slice_index in the manifest")


class L3Finder:
    """``--l3 auto`` for one run: TotalSegmentator's L3 on a volume, failures remembered.

    ``notify`` receives what TotalSegmentator prints for the user, each line once.
    """

    def __init__(self, device: str | None = None, notify: Callable[[str], None] | None = None):
        self.device = device
        self.notify = notify or (lambda line: None)
        self._seen: set[str] = set()
        #: why TotalSegmentator cannot run in this run (set by the first failure), in short
        self.unusable: str | None = None

    def __call__(self, volume: Image) -> tuple[Image, int]:
        """The vertebra label map of ``volume`` on its grid, and L3's label in it."""
        if self.unusable is not None:
            raise UserError(f"--l3 auto cannot run: {self.unusable} (see the first --l3 auto "
                            f"case); give slice_index in the manifest")
        if not totalseg_available():
            self.unusable = "TotalSegmentator is not installed"
            raise UserError(not_installed_message())
        labels = self._run(volume.to_sitk())
        return Image.from_sitk(labels, Path("TotalSegmentator's vertebra map")), _l3_label()

    def _pass_on(self, printed: str) -> None:
        for line in printed.splitlines():
            line = line.strip()
            if line and not line.startswith(_CHATTER) and line not in self._seen:
                self._seen.add(line)
                self.notify(f"TotalSegmentator: {line}")

    def _run(self, volume: sitk.Image) -> sitk.Image:
        """Runs the ``total`` task (``fast``, 3 mm) restricted to the lumbar vertebrae."""
        from totalsegmentator.python_api import totalsegmentator
        missing = missing_weights()
        printed = io.StringIO()
        with tempfile.TemporaryDirectory(prefix="nnunet_xfer_totalseg_") as tmp:
            src, out = Path(tmp) / label_file("ct"), Path(tmp) / label_file("vertebrae")
            sitk.WriteImage(volume, str(src))
            try:
                with contextlib.redirect_stdout(printed):
                    totalsegmentator(src, out, ml=True, fast=True, quiet=True,
                                     device=_ts_device(self.device),
                                     roi_subset=["vertebrae_L2", "vertebrae_L3", "vertebrae_L4"])
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as e:  # noqa: BLE001 - TotalSegmentator raises anything
                self._pass_on(printed.getvalue())
                if missing and missing_weights():
                    self.unusable = "TotalSegmentator's weights are missing and cannot be downloaded"
                    raise UserError(offline_message(e)) from None
                raise
            self._pass_on(printed.getvalue())
            labels = read_mask(out, what="TotalSegmentator's vertebra map").to_sitk()
        if (labels.GetSize() != volume.GetSize() or labels.GetSpacing() != volume.GetSpacing()
                or labels.GetOrigin() != volume.GetOrigin()):
            labels = sitk.Resample(labels, volume, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                   labels.GetPixelID())
        labels.CopyInformation(volume)
        return labels

