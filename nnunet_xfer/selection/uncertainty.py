"""What ``uncertain`` ranks by: how much the folds of a trained ensemble disagree on a slice.

Each fold model of the run (nnU-Net's predictor, through ``clinical.predict.SlicePredictor``, which
opens every checkpoint safely) segments the slice; the disagreement is 1 − the mean Dice over all
pairs of fold masks: 0 when every fold draws the same muscle, 1 when no two overlap. Two empty
masks agree (Dice 1).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from itertools import combinations
from pathlib import Path

import numpy as np

from nnunet_xfer.errors import UserError
from nnunet_xfer.evaluation.metrics import dice
from nnunet_xfer.imaging import load_slice


def mask_disagreement(masks: Sequence[np.ndarray]) -> float:
    """1 − mean pairwise Dice of two or more masks of one slice."""
    if len(masks) < 2:
        raise ValueError("disagreement needs the masks of at least two models")
    return 1.0 - float(np.mean([dice(a, b) for a, b in combinations(masks, 2)]))


def ensemble_disagreement(images: Mapping[str, Path],
                          fold_masks: Callable[[np.ndarray, tuple[float, float]], Sequence[np.ndarray]]
                          ) -> dict[str, float]:
    """:func:`mask_disagreement` of each image; ``fold_masks(array, spacing)`` gives each fold's
    mask of one slice (see :func:`predictor_masks`)."""
    scores = {}
    for case, path in images.items():
        array, geometry = load_slice(path, canonical=True)  # as the network sees it
        scores[case] = mask_disagreement(fold_masks(array, geometry.spacing))
    return scores


def predictor_masks(dataset: str, trainer: str, plans: str, configuration: str,
                    folds: Sequence[str | int] | None = None, device: str | None = None
                    ) -> Callable[[np.ndarray, tuple[float, float]], list[np.ndarray]]:
    """``fold_masks`` of a trained run's fold ensemble (every finished fold by default)."""
    import SimpleITK as sitk

    from nnunet_xfer.clinical.predict import SlicePredictor
    predictor = SlicePredictor(dataset, trainer, plans, configuration, folds=folds, device=device)
    if len(predictor.folds) < 2:
        raise UserError(f"uncertain needs a fold ensemble: {predictor.run.name} has only fold "
                        f"{predictor.folds[0]} finished; train another fold or pass -f with two "
                        f"or more folds")

    def fold_masks(array: np.ndarray, spacing: tuple[float, float]) -> list[np.ndarray]:
        image = sitk.GetImageFromArray(np.asarray(array))
        image.SetSpacing((float(spacing[1]), float(spacing[0])))
        prediction = predictor.predict(image)
        return [prediction.fold_masks[f] for f in predictor.folds]

    return fold_masks
