"""nnU-Net trainer classes (this folder is what ``nnUNet_extTrainer`` points at).

nnU-Net imports every module in this folder as a top-level module, so the folder stays flat and
its modules import the package absolutely. This ``__init__`` stays light (no torch import).
"""
from __future__ import annotations

from pathlib import Path


def trainer_folder() -> Path:
    """The folder to put in ``nnUNet_extTrainer``."""
    return Path(__file__).resolve().parent


def environment_exports() -> str:
    """Shell line(s) for ``eval "$(nnunet-xfer env)"``."""
    import os
    import shlex
    folder = str(trainer_folder())
    current = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    paths = [folder] + [p for p in current if p != folder]
    return f"export nnUNet_extTrainer={shlex.quote(os.pathsep.join(paths))}"
