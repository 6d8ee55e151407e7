"""Which model measured, with which software, when: the provenance every output of ``measure``
carries (each row of ``measures.csv``, the DICOM-SEG, the DICOM SR, the corrections' audit).
"""
from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field

#: DICOM's limit on an LO value (SeriesDescription, ContentDescription, AlgorithmName…).
LO_MAX = 64


def package_version() -> str:
    from nnunet_xfer import __version__
    return __version__


def _now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


@dataclass(frozen=True)
class Provenance:
    """The model (as ``nnUNetv2_predict -d -tr -p -c -f`` names it), the package version and the
    time of the run."""

    dataset: str
    trainer: str
    plans: str
    configuration: str
    folds: tuple[str, ...]
    mirroring: bool = True
    version: str = field(default_factory=package_version)
    measured_at: str = field(default_factory=_now)

    @property
    def run(self) -> str:
        """nnU-Net's run folder name ``<trainer>__<plans>__<configuration>``."""
        return f"{self.trainer}__{self.plans}__{self.configuration}"

    @property
    def model(self) -> str:
        """The full model string, e.g. ``Dataset501_L3/XferSegTrainer_n125__nnUNetPlans__2d
        folds 0 1 2 3 4`` (never cut)."""
        return (f"{self.dataset}/{self.run} folds {' '.join(self.folds)}"
                + ("" if self.mirroring else ", no test-time mirroring"))

    def short(self, limit: int = LO_MAX) -> str:
        """The model in at most ``limit`` characters for DICOM's LO values (ASCII: DICOM's default
        character set): the folds are kept, the run name is cut before them if it must be."""
        text = f"{self.run} f{','.join(self.folds)}"
        if len(text) <= limit:
            return text
        tail = f"... f{','.join(self.folds)}"
        return text[: max(limit - len(tail), 1)] + tail

    def columns(self) -> dict:
        """The provenance columns of a ``measures.csv`` row."""
        return {"model_dataset": self.dataset, "model_trainer": self.trainer,
                "model_plans": self.plans, "model_configuration": self.configuration,
                "model_folds": " ".join(self.folds), "software_version": self.version,
                "measured_at": self.measured_at}


#: The provenance columns of ``measures.csv``, in order.
PROVENANCE_COLUMNS = ("model_dataset", "model_trainer", "model_plans", "model_configuration",
                      "model_folds", "software_version", "measured_at")
