"""Fine-tuning schedule: per-part parameter groups, discriminative LR, warm-up, frozen-encoder epochs.

Everything a group needs to know about its own schedule lives in the optimizer's param-group dict
(``xfer_*`` keys). nnU-Net saves the optimizer state in its checkpoints and ``--c`` restores it,
group keys included, so the schedule after continuing is the one the run started with; the LR of
an epoch is a pure function of that epoch and the group.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

from nnunet_xfer.architectures.parts import part_of

#: Order of the parameter groups (group 0 is the LR nnU-Net prints and plots).
GROUP_ORDER = ("encoder", "decoder", "head", "other")


@dataclass
class FineTuneSchedule:
    """How transferred parameters are trained; see docs/trainers.md for the why.

    ``lr_factor``: transferred parameters run at this fraction of nnU-Net's LR (nnssl's
    PretrainedTrainer fine-tunes at 1e-3, a tenth of nnU-Net's 1e-2). ``warmup_fraction``: linear
    warm-up of the transferred parameters over this fraction of the epochs (nnU-Net's
    ``nnUNetTrainer_warmup`` and nnssl: 50 of 1000 epochs), at least one epoch. ``freeze_epochs``:
    encoder frozen for this many epochs before its warm-up starts (0: off, as in both references).
    """

    lr_factor: float = 0.1
    warmup_fraction: float = 0.05
    freeze_epochs: int = 0

    def warmup_epochs(self, num_epochs: int) -> int:
        """Warm-up length in epochs for a run of ``num_epochs``."""
        return max(1, round(self.warmup_fraction * num_epochs))

    @classmethod
    def from_env(cls, base: "FineTuneSchedule") -> "FineTuneSchedule":
        """``base`` overridden by ``nnUNet_xfer_lr_factor`` / ``_warmup_fraction`` / ``_freeze_epochs``."""
        values = asdict(base)
        for name, cast in (("lr_factor", float), ("warmup_fraction", float), ("freeze_epochs", int)):
            text = os.environ.get(f"nnUNet_xfer_{name}")
            if text:
                try:
                    values[name] = cast(text)
                except ValueError:
                    raise SystemExit(f"nnunet_xfer: nnUNet_xfer_{name}={text!r} is not a number") from None
        return cls(**values)


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
