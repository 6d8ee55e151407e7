"""The one reader of environment variables: nnU-Net's folders and our ``nnUNet_xfer_*`` settings.

Values are read at call time (``nnunetv2.paths`` freezes them at import). Every ``nnUNet_xfer_*``
variable is listed in :data:`XFER_VARIABLES`, with one truthy rule for flags.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

from nnunet_xfer.errors import UserError

#: nnU-Net's three folders.
NNUNET_FOLDERS: tuple[str, ...] = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")

#: Every variable of ours, with what it does (``nnunet-xfer env --help`` and docs list them).
XFER_VARIABLES: dict[str, str] = {
    "nnUNet_xfer_epochs": "trainers: number of epochs (short runs, tests)",
    "nnUNet_xfer_iterations": "trainers: iterations per epoch (validation iterations scale with it)",
    "nnUNet_xfer_lr_factor": "trainers: LR factor of transferred parts (explicit option)",
    "nnUNet_xfer_warmup_fraction": "trainers: warm-up fraction of transferred parts (explicit option)",
    "nnUNet_xfer_freeze_epochs": "trainers: epochs the transferred encoder stays frozen (explicit option)",
    "nnUNet_xfer_save_initial": "trainers: save the weights after transfer (flag)",
    "nnUNet_xfer_seed": "trainers: seed torch, numpy and random at trainer start (reproducible runs)",
    "nnUNet_xfer_offline": "pretraining: never download torchvision weights (flag)",
    "nnUNet_xfer_pretrain_scope": "trainers: which store entry to load, 'fold' (default) or 'all'",
}

_TRUE = ("1", "true", "t", "yes", "y", "on")
_FALSE = ("", "0", "false", "f", "no", "n", "off")


def _environ(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def _known(name: str) -> None:
    if name.startswith("nnUNet_xfer_") and name not in XFER_VARIABLES:
        raise KeyError(f"{name} is not one of nnunet_xfer's variables; add it to XFER_VARIABLES")


def nnunet_folder(var: str, environ: Mapping[str, str] | None = None) -> Path:
    """An nnU-Net folder from its variable; :class:`UserError` in one line when it is unset."""
    value = _environ(environ).get(var)
    if not value:
        raise UserError(f"${var} is not set; export it as nnU-Net requires, e.g. "
                        f"`export {var}=/data/{var}` (see docs/troubleshooting.md)")
    return Path(value)


def nnunet_folder_or_none(var: str, environ: Mapping[str, str] | None = None) -> Path | None:
    """The folder of ``var`` or None when unset."""
    value = _environ(environ).get(var)
    return Path(value) if value else None


def other(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """A variable that is not ours (nnU-Net's ``nnUNet_n_proc_DA``, a proxy, …); None when unset."""
    value = _environ(environ).get(name)
    return value if value else None


def text(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The raw value of one of our variables (None when unset or empty)."""
    _known(name)
    value = _environ(environ).get(name)
    return value if value else None


def flag(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """A yes/no variable: 1/true/yes/on are true, unset/0/false/no/off false, anything else an error."""
    value = (text(name, environ) or "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise UserError(f"{name}={value!r} is not a yes/no value; use 1 or 0")


def positive_int(name: str, environ: Mapping[str, str] | None = None, minimum: int = 1) -> int | None:
    """An integer variable (None when unset), at least ``minimum``."""
    value = text(name, environ)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise UserError(f"{name}={value!r} is not an integer") from None
    if number < minimum:
        raise UserError(f"{name} must be at least {minimum}, got {number}")
    return number


def number(name: str, environ: Mapping[str, str] | None = None) -> float | None:
    """A float variable (None when unset)."""
    value = text(name, environ)
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        raise UserError(f"{name}={value!r} is not a number") from None


def choice(name: str, options: tuple[str, ...], environ: Mapping[str, str] | None = None) -> str | None:
    """One of ``options`` (None when unset)."""
    value = text(name, environ)
    if value is not None and value not in options:
        raise UserError(f"{name}={value!r}: use one of {', '.join(options)}")
    return value


#: nnU-Net on a small CPU (the demo, the tests, the benchmarks): augmentation in the training
#: process (no worker interpreters to start), one export and scoring worker (the ``Xfer*``
#: trainers then validate in a thread: ``trainers/xfer_validation.py``), no ``torch.compile``.
NNUNET_ON_CPU: dict[str, str] = {"nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1",
                                 "nnUNet_compile": "false"}
#: What ``nnUNetv2_plan_and_preprocess`` needs on top: its planner calls
#: ``torch.set_num_threads(nnUNet_n_proc_DA)``, which refuses 0.
NNUNET_PLANNER: dict[str, str] = {"nnUNet_n_proc_DA": "1"}


#: OpenMP's wait policy for our inference processes (see :func:`prefer_passive_omp_wait`).
OMP_WAIT_POLICY = "OMP_WAIT_POLICY"


def prefer_passive_omp_wait(environ: MutableMapping[str, str] | None = None) -> bool:
    """Make torch's OpenMP threads sleep rather than spin while they wait for each other, unless
    the user set ``OMP_WAIT_POLICY`` already; True when our setting is the one in force.

    Spinning threads on a CPU shared with other work (a clinic PC, a loaded server) each burn a
    core waiting for a thread that is not running: on the project's loaded 2-core machine one
    slice took 10-50× the time (docs/benchmarks.md). OpenMP reads the variable when torch loads
    it, so this binds only when called before the first ``import torch``.
    """
    import sys
    env = os.environ if environ is None else environ
    if env.get(OMP_WAIT_POLICY):
        return False
    env[OMP_WAIT_POLICY] = "PASSIVE"
    return "torch" not in sys.modules
