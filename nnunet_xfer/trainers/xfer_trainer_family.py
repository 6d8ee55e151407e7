"""The trainer classes nnU-Net finds by name: ``Xfer{Scratch,Cls,Seg,Rec,Jigsaw}Trainer_n{1,…,4,5,…,125,all}``.

Generated from the source registry × ``study_grid.SIZE_TAGS`` (:func:`build_family`) and bound
here as module-level names, which is where nnU-Net's ``nnUNet_extTrainer`` discovery looks for them.
Scratch trainers derive from ``XferTrainerBase``; the others from ``XferTransferTrainer``.
"""
from __future__ import annotations

import functools

from nnunet_xfer.sources import SOURCES, spec
from nnunet_xfer.study_grid import SIZE_TAGS, trainer_name
from nnunet_xfer.trainers.xfer_trainer_base import XferTrainerBase
from nnunet_xfer.trainers.xfer_transfer import XferTransferTrainer


@functools.cache
def build_family() -> dict[str, type]:
    """All ``Xfer<Source>Trainer_n<N>`` classes, built once from the source registry × ``study_grid.SIZE_TAGS``.

    The classes claim the package module ``nnunet_xfer.trainers.xfer_trainer_family`` so that they
    are picklable by name and the same objects whether that file was imported as a package module
    or (by nnU-Net's discovery) as the top-level module ``xfer_trainer_family``.
    """
    family = {}
    for source in SOURCES:
        base = XferTransferTrainer if spec(source).pretrained else XferTrainerBase
        for tag in SIZE_TAGS:
            name = trainer_name(source, tag)
            family[name] = type(name, (base,), {
                "__module__": "nnunet_xfer.trainers.xfer_trainer_family", "__qualname__": name,
                "__doc__": f"nnU-Net trainer: source '{source}', "
                           f"{'whole training fold' if tag == 'all' else f'{tag} training cases'}.",
                "source": source, "subset_size": None if tag == "all" else int(tag)})
    return family


_FAMILY = build_family()
globals().update(_FAMILY)
__all__ = ["XferTrainerBase", "XferTransferTrainer", *sorted(_FAMILY)]
