"""The no-learning baseline: skeletal muscle as the muscle HU range inside the body.

The rule (docs/definitions.md#the-threshold-baseline), on one 2D slice in HU:

1. air is every pixel at or below :data:`BODY_AIR_HU` (−500 HU); everything above it is tissue;
2. the body is the largest 4-connected component of tissue (ties: the lowest label), with its
   holes filled (gas in the bowel, lungs) — a CT table or an arm separated by air is not body;
3. the baseline's muscle is every body pixel within :data:`~nnunet_xfer.evaluation.measures.MUSCLE_HU`
   (−29…+150 HU, both ends included), the range of the published SMA convention.

It is what a measurement tool does with no learned knowledge of anatomy: whatever inside the
body has muscle's HU (bowel, kidneys, vessels, liver, arms that touch the body) counts as muscle.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from nnunet_xfer.evaluation.measures import MUSCLE_HU

#: Pixels above this (HU) are tissue when the body is found; air reads about −1000 HU.
BODY_AIR_HU = -500.0


def body_mask(image_hu: np.ndarray, air_hu: float = BODY_AIR_HU) -> np.ndarray:
    """The body of a 2D HU slice: the largest 4-connected component above ``air_hu``, holes
    filled. An image with no pixel above ``air_hu`` gives an all-False mask."""
    image_hu = np.asarray(image_hu, dtype=np.float64)
    if image_hu.ndim != 2:
        raise ValueError(f"expected a 2D slice, got shape {image_hu.shape}")
    labels, n = ndimage.label(image_hu > air_hu)
    if n == 0:
        return np.zeros(image_hu.shape, bool)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    sizes[0] = 0
    return ndimage.binary_fill_holes(labels == int(np.argmax(sizes)))


def threshold_segmentation(image_hu: np.ndarray, muscle_hu: tuple[float, float] = MUSCLE_HU,
                           air_hu: float = BODY_AIR_HU) -> np.ndarray:
    """uint8 0/1 mask: pixels of :func:`body_mask` within ``muscle_hu`` (inclusive)."""
    image_hu = np.asarray(image_hu, dtype=np.float64)
    inside = (image_hu >= muscle_hu[0]) & (image_hu <= muscle_hu[1])
    return (body_mask(image_hu, air_hu) & inside).astype(np.uint8)
