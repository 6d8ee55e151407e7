"""The study's grid as one object: which dataset, plans, sources, sizes, folds — with one set of defaults.

``cli.py`` builds a :class:`Grid` once from the command line; :func:`~nnunet_xfer.experiment.dry_run`,
:func:`~nnunet_xfer.experiment.run` and :func:`~nnunet_xfer.experiment.write_slurm` take it.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from nnunet_xfer.errors import UserError
from nnunet_xfer.layout import DEFAULT_CONFIGURATION, DEFAULT_PLANS
from nnunet_xfer.sources import SOURCES, check_names
from nnunet_xfer.study_grid import DEFAULT_FOLDS, SIZES, TRAINER_SIZES

#: ``--pretrain-scope``: ``fold`` pretrains sources that read the target's images once per fold
#: on that fold's training images; ``all`` once on every image (validation cases included).
PRETRAIN_SCOPES: tuple[str, ...] = ("fold", "all")
DEVICES: tuple[str, ...] = ("cuda", "cpu", "mps")


@dataclass(frozen=True)
class Grid:
    """One experiment: the trainings source × size × fold and everything they need."""

    #: dataset id (``501``) or name (``Dataset501_L3``), as the user gave it
    dataset: str
    #: plans the trainings use; with ``arch`` the plans the variant is derived from
    plans: str = DEFAULT_PLANS
    configuration: str = DEFAULT_CONFIGURATION
    sources: tuple[str, ...] = SOURCES
    sizes: tuple[int, ...] = SIZES
    folds: tuple[int, ...] = tuple(range(DEFAULT_FOLDS))
    device: str = "cuda"
    #: observer folder handed to ``evaluate --observers``
    observers: Path | None = None
    #: iterations per pretraining (None: the pretrain command's default)
    pretrain_iterations: int | None = None
    pretrain_scope: str = "fold"
    #: torchvision-backbone architecture (``unet_resnet34``): plan it, then run every source on it
    arch: str | None = None

    def __post_init__(self) -> None:
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731  (frozen dataclass)
        set_("dataset", str(self.dataset).strip())
        set_("sources", tuple(check_names(self.sources)))
        set_("sizes", tuple(int(n) for n in self.sizes))
        set_("folds", tuple(int(f) for f in self.folds))
        if self.observers is not None:
            set_("observers", Path(self.observers))
        if not self.dataset:
            raise UserError("no dataset given; pass -d ID (e.g. -d 501)")
        if not self.sizes or min(self.sizes) < 1 or not self.folds or min(self.folds) < 0:
            raise UserError("--sizes must be positive and --folds non-negative, "
                            "e.g. --sizes 5,10 --folds 0")
        untrained = [n for n in self.sizes if n not in TRAINER_SIZES]
        if untrained:
            raise UserError(f"--sizes {','.join(map(str, untrained))}: no Xfer trainer has that "
                            f"size; choose from {','.join(map(str, TRAINER_SIZES))}")
        for what, values in (("--sizes", self.sizes), ("--folds", self.folds),
                             ("--sources", self.sources)):
            if len(set(values)) != len(values):
                raise UserError(f"{what} lists a value twice: {','.join(map(str, values))}")
        if self.pretrain_scope not in PRETRAIN_SCOPES:
            raise UserError(f"--pretrain-scope {self.pretrain_scope!r}: use one of "
                            f"{', '.join(PRETRAIN_SCOPES)}")
        if self.pretrain_iterations is not None and self.pretrain_iterations < 1:
            raise UserError(f"--pretrain-iterations must be positive, got {self.pretrain_iterations}")
        if not str(self.device).startswith(DEVICES):
            raise UserError(f"--device {self.device!r}: use one of {', '.join(DEVICES)}")
        if self.arch is not None:
            from nnunet_xfer.architectures import ARCHITECTURES
            if self.arch not in ARCHITECTURES:
                raise UserError(f"unknown architecture {self.arch!r}; known: "
                                f"{', '.join(ARCHITECTURES)}")

    @property
    def trained_plans(self) -> str:
        """Plans of pretraining and trainings: ``<plans>_<arch>`` (as ``nnunet-xfer plan`` names
        the variant) with ``arch``, else ``plans``."""
        return f"{self.plans}_{self.arch}" if self.arch else self.plans

    @classmethod
    def default(cls, name: str):
        """The default of one field (for ``--help`` texts)."""
        f = next(f for f in fields(cls) if f.name == name)
        return f.default
