"""What every pixel of a phantom slice is: the structure ids of the rendering's label map, and the
classes of the segmentation source task (``nnunet-xfer phantom --source-task``).

The label map is drawn alongside the HU image (painter's order: a later structure replaces an
earlier one). The source task groups the structures into organs, fat compartments and bone;
skeletal muscle of any kind (the L3 muscles, the crura, the arms) is never one of its classes.
"""
from __future__ import annotations

import numpy as np

#: Structure ids of :attr:`Rendering.tissue` (uint8).
AIR, TABLE, SKIN, SUBCUT_FAT, VISCERAL_FAT, MUSCLE, BONE, MARROW, CSF, BOWEL_WALL, BOWEL_CONTENT, \
    BOWEL_GAS, KIDNEY, LIVER, SPLEEN, ARTERY, VEIN, CRUS, ARM_SKIN, ARM_FAT, ARM_MUSCLE, \
    ARM_BONE, INTERMUSCULAR_FAT = range(23)

STRUCTURES = {
    AIR: "air", TABLE: "table", SKIN: "skin", SUBCUT_FAT: "subcutaneous fat",
    VISCERAL_FAT: "visceral fat", MUSCLE: "L3 skeletal muscle", BONE: "cortical bone",
    MARROW: "cancellous bone", CSF: "spinal canal", BOWEL_WALL: "bowel wall",
    BOWEL_CONTENT: "bowel content", BOWEL_GAS: "bowel gas", KIDNEY: "kidney", LIVER: "liver",
    SPLEEN: "spleen", ARTERY: "aorta and arteries", VEIN: "IVC and veins",
    CRUS: "diaphragmatic crus", ARM_SKIN: "arm skin", ARM_FAT: "arm fat",
    ARM_MUSCLE: "arm muscle", ARM_BONE: "arm bone", INTERMUSCULAR_FAT: "intermuscular fat",
}

#: Classes of the segmentation source task (``dataset.json`` labels; 0 is everything else,
#: muscle included).
SOURCE_CLASSES = {
    "background": 0, "subcutaneous_fat": 1, "visceral_fat": 2, "bone": 3, "bowel": 4,
    "kidney": 5, "liver_spleen": 6, "vessels": 7,
}

_SOURCE_OF = {
    SKIN: 0, SUBCUT_FAT: 1, ARM_FAT: 1, VISCERAL_FAT: 2, INTERMUSCULAR_FAT: 2,
    BONE: 3, MARROW: 3, CSF: 3, ARM_BONE: 3,
    BOWEL_WALL: 4, BOWEL_CONTENT: 4, BOWEL_GAS: 4,
    KIDNEY: 5, LIVER: 6, SPLEEN: 6, ARTERY: 7, VEIN: 7,
}
#: Structure id → source-task class (muscle of every kind, air, table and skin → 0).
SOURCE_LUT = np.zeros(len(STRUCTURES), np.uint8)
for _structure, _cls in _SOURCE_OF.items():
    SOURCE_LUT[_structure] = _cls
assert not SOURCE_LUT[[MUSCLE, CRUS, ARM_MUSCLE]].any()  # never a muscle class


def source_labels(tissue: np.ndarray) -> np.ndarray:
    """The source task's class map (uint8) of a structure-id map."""
    return SOURCE_LUT[tissue]


def majority(labels: np.ndarray, f: int, n_labels: int = len(STRUCTURES)) -> np.ndarray:
    """Most frequent label of every ``f``×``f`` block (ties: the lower id)."""
    if f == 1:
        return labels.copy()
    n0, n1 = labels.shape[0] // f, labels.shape[1] // f
    blocks = labels.reshape(n0, f, n1, f).transpose(0, 2, 1, 3).reshape(n0 * n1, f * f)
    index = np.arange(n0 * n1)[:, None] * n_labels + blocks
    counts = np.bincount(index.ravel(), minlength=n0 * n1 * n_labels).reshape(n0 * n1, n_labels)
    return counts.argmax(axis=1).astype(labels.dtype).reshape(n0, n1)
