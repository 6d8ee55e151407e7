"""The study's grid: subset sizes, fold and seed defaults, and the trainer names built from them.

Source tasks themselves live in the registry (``nnunet_xfer.sources``); file names in
``nnunet_xfer.layout``.
"""
from __future__ import annotations

from nnunet_xfer.sources import SOURCES, spec

#: Nested training-subset sizes of the study (the default of ``convert`` and ``experiment``).
SIZES: tuple[int, ...] = (5, 10, 25, 50, 75, 100, 125)
#: Sizes below the study's smallest, asked for explicitly (``--sizes 1,2,3,5,…``).
SMALL_SIZES: tuple[int, ...] = (1, 2, 3, 4)
#: Every size that has a trainer: the small sizes and the study's.
TRAINER_SIZES: tuple[int, ...] = SMALL_SIZES + SIZES
#: Trainer suffixes: the trainer sizes plus ``all`` (the whole training fold).
SIZE_TAGS: tuple[str, ...] = tuple(str(s) for s in TRAINER_SIZES) + ("all",)
DEFAULT_FOLDS: int = 4
DEFAULT_SEED: int = 12345


def trainer_name(source: str, size: int | str) -> str:
    """``XferRecTrainer_n10`` for (``rec``, 10); ``size`` may be ``"all"``."""
    return f"Xfer{spec(source).trainer_stem}Trainer_n{size}"


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


__all__ = ["SIZES", "SMALL_SIZES", "TRAINER_SIZES", "SIZE_TAGS", "DEFAULT_FOLDS", "DEFAULT_SEED", "SOURCES", "trainer_name",
           "parse_trainer_name", "parse_int_list"]
