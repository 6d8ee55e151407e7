"""Fine-tuning schedule: nnU-Net's own by default; per-part LR, warm-up and freezing as explicit options.

By default every source, scratch included, fine-tunes with nnU-Net's optimiser, learning rate and
poly schedule: only the initial weights differ (docs/trainers.md). The options below shape the
transferred parts only when set explicitly (``nnUNet_xfer_lr_factor`` / ``_warmup_fraction`` /
``_freeze_epochs``, or a trainer variant's ``fine_tune``).

Everything a group needs to know about its own schedule lives in the optimizer's param-group dict
(``xfer_*`` keys). nnU-Net saves the optimizer state in its checkpoints and ``--c`` restores it,
group keys included, so the schedule after continuing is the one the run started with; the LR of
an epoch is a pure function of that epoch and the group.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

from nnunet_xfer import settings
from nnunet_xfer.architectures.parts import part_of
from nnunet_xfer.errors import UserError

#: Order of the parameter groups (group 0 is the LR nnU-Net prints and plots).
GROUP_ORDER = ("encoder", "decoder", "head", "other")


@dataclass(frozen=True)
class FineTuneSchedule:
    """How transferred parameters are trained; the defaults are nnU-Net's own schedule (docs/trainers.md).

    ``lr_factor``: transferred parameters run at this fraction of nnU-Net's LR (1: nnU-Net's LR;
    nnssl's PretrainedTrainer fine-tunes at 0.1). ``warmup_fraction``: linear warm-up of the
    transferred parameters over this fraction of the epochs, at least one epoch when above 0
    (0: none; nnU-Net's ``nnUNetTrainer_warmup`` and nnssl use 0.05). ``freeze_epochs``: encoder
    frozen for this many epochs before its warm-up starts (0: off).
    """

    lr_factor: float = 1.0
    warmup_fraction: float = 0.0
    freeze_epochs: int = 0

    @property
    def explicit(self) -> bool:
        """True when the schedule differs from nnU-Net's own (an explicit option is in force)."""
        return self != FineTuneSchedule()

    def warmup_epochs(self, num_epochs: int) -> int:
        """Warm-up length in epochs for a run of ``num_epochs`` (0 without warm-up)."""
        return max(1, round(self.warmup_fraction * num_epochs)) if self.warmup_fraction > 0 else 0

    def record(self) -> dict:
        """What ``debug.json`` records as ``xfer_info["schedule"]``."""
        return {"explicit": self.explicit, **asdict(self)}

    @classmethod
    def from_env(cls, base: "FineTuneSchedule", environ: Mapping[str, str] | None = None) -> "FineTuneSchedule":
        """``base`` overridden by ``nnUNet_xfer_lr_factor`` / ``_warmup_fraction`` / ``_freeze_epochs``.

        :class:`UserError` (one line) for a value that is not a number or out of range.
        """
        lr_factor = settings.number("nnUNet_xfer_lr_factor", environ)
        warmup = settings.number("nnUNet_xfer_warmup_fraction", environ)
        freeze = settings.positive_int("nnUNet_xfer_freeze_epochs", environ, minimum=0)
        if lr_factor is not None and not lr_factor > 0:
            raise UserError(f"nnUNet_xfer_lr_factor must be above 0 (1: nnU-Net's LR), got {lr_factor}")
        if warmup is not None and not 0 <= warmup <= 1:
            raise UserError(f"nnUNet_xfer_warmup_fraction must lie in 0…1, got {warmup}")
        changes = {k: v for k, v in (("lr_factor", lr_factor), ("warmup_fraction", warmup),
                                     ("freeze_epochs", freeze)) if v is not None}
        return replace(base, **changes)


#: nnU-Net's own schedule: what every trainer uses unless an option is set.
NNUNET_SCHEDULE = FineTuneSchedule()


def part_param_groups(network: torch.nn.Module, parts: dict[str, tuple[str, ...]]) -> list[dict]:
    """One SGD param group per network part (empty parts left out), untransferred to begin with."""
    by_part: dict[str, list[torch.nn.Parameter]] = {p: [] for p in GROUP_ORDER}
    for name, param in network.named_parameters():  # de-duplicates aliased parameters
        by_part[part_of(name, parts)].append(param)
    return [{"params": params, "xfer_part": part, "xfer_transferred": False, "xfer_lr_scale": 1.0,
             "xfer_warmup_start": 0, "xfer_warmup_epochs": 0, "xfer_freeze_epochs": 0}
            for part, params in by_part.items() if params]


def mark_transferred(optimizer: torch.optim.Optimizer, transferred_parts: list[str],
                     schedule: FineTuneSchedule, num_epochs: int) -> None:
    """Give the groups of the transferred parts their lower LR, warm-up and (encoder) freeze."""
    warmup = schedule.warmup_epochs(num_epochs)
    for group in optimizer.param_groups:
        if group.get("xfer_part") in transferred_parts:
            freeze = schedule.freeze_epochs if group["xfer_part"] == "encoder" else 0
            group.update(xfer_transferred=True, xfer_lr_scale=schedule.lr_factor,
                         xfer_freeze_epochs=freeze, xfer_warmup_start=freeze, xfer_warmup_epochs=warmup)


def group_lr(base_lr: float, group: dict, epoch: int) -> float:
    """LR of one group at ``epoch`` given the poly LR ``base_lr`` of that epoch."""
    if not group.get("xfer_transferred", False):
        return base_lr
    if epoch < group["xfer_freeze_epochs"]:
        return 0.0
    lr = base_lr * group["xfer_lr_scale"]
    since = epoch - group["xfer_warmup_start"]
    if since < group["xfer_warmup_epochs"]:
        lr *= (since + 1) / group["xfer_warmup_epochs"]
    return lr


def is_frozen(group: dict, epoch: int) -> bool:
    """True while a transferred group is in its frozen epochs."""
    return group.get("xfer_transferred", False) and epoch < group.get("xfer_freeze_epochs", 0)


class PartPolyLRScheduler(PolyLRScheduler):
    """nnU-Net's poly schedule, shaped per group by the group's ``xfer_*`` keys."""

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        base = self.initial_lr * (1 - current_step / self.max_steps) ** self.exponent
        for group in self.optimizer.param_groups:
            group["lr"] = group_lr(base, group, current_step)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
