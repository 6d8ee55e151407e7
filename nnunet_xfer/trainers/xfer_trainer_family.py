"""The trainer classes nnU-Net finds by name: ``Xfer{Scratch,Cls,Seg,Rec,Jigsaw}Trainer_n{5,…,125,all}``.

Generated from ``names.SOURCES`` × ``names.SIZE_TAGS`` (see ``xfer_trainer_base.build_family``)
and bound here as module-level names, which is where nnU-Net's ``nnUNet_extTrainer`` discovery
looks for them.
"""
from __future__ import annotations

from nnunet_xfer.trainers.xfer_trainer_base import XferTrainerBase, build_family

_FAMILY = build_family()
globals().update(_FAMILY)
__all__ = ["XferTrainerBase", *sorted(_FAMILY)]
