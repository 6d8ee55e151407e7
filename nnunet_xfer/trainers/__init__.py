"""nnU-Net trainer classes (this folder is what ``nnUNet_extTrainer`` points at).

nnU-Net imports every module in this folder as a top-level module, so the folder stays flat and
its modules import the package absolutely. This ``__init__`` stays light (no torch import).
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from nnunet_xfer.errors import UserError

#: First nnunetv2 release whose ``nnUNet_extTrainer`` discovery this folder relies on.
MIN_NNUNET_VERSION = "2.8.1"


def check_nnunet_version() -> str:
    """The installed nnunetv2 version; :class:`UserError` if it is missing or older than 2.8.1."""
    import re
    from importlib.metadata import PackageNotFoundError, version

    def release(text: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", text.split("+")[0])[:3])
    try:
        installed = version("nnunetv2")
    except PackageNotFoundError:
        raise UserError(f"nnunetv2 is not installed; pip install 'nnunetv2>={MIN_NNUNET_VERSION}'") from None
    if release(installed) < release(MIN_NNUNET_VERSION):
        raise UserError(f"nnunetv2 {installed} is too old: the trainers need nnunetv2 >= {MIN_NNUNET_VERSION} "
                        f"(external trainer discovery via nnUNet_extTrainer); "
                        f"pip install -U 'nnunetv2>={MIN_NNUNET_VERSION}'")
    return installed


def trainer_folder() -> Path:
    """The folder to put in ``nnUNet_extTrainer``."""
    return Path(__file__).resolve().parent


def trainer_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``environ`` (default: this process's) whose ``nnUNet_extTrainer`` starts with
    the trainer folder, keeping the user's own entries: the environment of nnU-Net subprocesses."""
    import os
    env = dict(os.environ if environ is None else environ)
    folder = str(trainer_folder())
    current = [p for p in env.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    env["nnUNet_extTrainer"] = os.pathsep.join([folder] + [p for p in current if p != folder])
    return env


def environment_exports() -> str:
    """Shell line(s) for ``eval "$(nnunet-xfer env)"``."""
    import shlex
    check_nnunet_version()
    return f"export nnUNet_extTrainer={shlex.quote(trainer_environment()['nnUNet_extTrainer'])}"
