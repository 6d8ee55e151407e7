"""Names shared by every stage: source tasks, subset sizes, trainer names, store paths.

This is the one place the study's grid is defined; every other module reads it from here.
"""
from __future__ import annotations

import os
from pathlib import Path

#: Source tasks, in the order the study reports them. ``scratch`` has no pretraining.
SOURCES: tuple[str, ...] = ("scratch", "cls", "seg", "rec", "jigsaw")
#: Sources that need a pretrained checkpoint in the store.
PRETRAINED_SOURCES: tuple[str, ...] = ("cls", "seg", "rec", "jigsaw")
#: Nested training-subset sizes of the study.
SIZES: tuple[int, ...] = (5, 10, 25, 50, 75, 100, 125)
#: Trainer suffixes: the sizes plus ``all`` (the whole training fold).
SIZE_TAGS: tuple[str, ...] = tuple(str(s) for s in SIZES) + ("all",)
DEFAULT_FOLDS: int = 4
DEFAULT_SEED: int = 12345
STORE_FOLDER = "nnunet_xfer_pretrained"


def trainer_name(source: str, size: int | str) -> str:
    """``XferRecTrainer_n10`` for (``rec``, 10); ``size`` may be ``"all"``."""
    if source not in SOURCES:
        raise ValueError(f"unknown source task {source!r}; choose one of {', '.join(SOURCES)}")
    return f"Xfer{source.capitalize()}Trainer_n{size}"


def parse_trainer_name(name: str) -> tuple[str, int | None] | None:
    """Inverse of :func:`trainer_name`: (source, size or None for ``all``), or None if not ours."""
    if not name.startswith("Xfer") or "Trainer_n" not in name:
        return None
    head, tag = name[len("Xfer"):].split("Trainer_n", 1)
    source = head.lower()
    if source not in SOURCES or tag not in SIZE_TAGS:
        return None
    return source, (None if tag == "all" else int(tag))


def parse_int_list(text: str) -> list[int]:
    """``"5,10,25"`` → ``[5, 10, 25]`` with a clear error."""
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got {text!r}") from None


def env_path(var: str) -> Path:
    """An nnU-Net folder from its environment variable, with a one-line error when unset."""
    value = os.environ.get(var)
    if not value:
        raise RuntimeError(f"${var} is not set; export it as for nnU-Net (see `nnunet-xfer env`)")
    return Path(value)


def store_dir(dataset_name: str, plans: str = "nnUNetPlans", configuration: str = "2d",
              results: Path | None = None) -> Path:
    """``$nnUNet_results/<Dataset>/nnunet_xfer_pretrained/<plans>__<config>/``."""
    base = results if results is not None else env_path("nnUNet_results")
    return Path(base) / dataset_name / STORE_FOLDER / f"{plans}__{configuration}"


def store_checkpoint(dataset_name: str, source: str, plans: str = "nnUNetPlans",
                     configuration: str = "2d", results: Path | None = None) -> Path:
    """Path of ``<source>.pth`` in the pretrained store (its ``.json`` lies beside it)."""
    return store_dir(dataset_name, plans, configuration, results) / f"{source}.pth"
