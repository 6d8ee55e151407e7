"""One synthetic subject in memory: CT slice in HU, skeletal-muscle mask, spacing, height, sex.

The anatomy is drawn on a fine grid (pixels of at most ~1.5 mm) and averaged down to the
requested size, so small slices get true partial-volume edges and the same anatomy as large ones.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage

from nnunet_xfer.phantom.anatomy import Params, Rendering, render, sample_params
from nnunet_xfer.phantom.shapes import Grid, block_mean

#: Size the spacing rule refers to: at 512² the pixel spacing is FOV/512 (0.6–0.9 mm).
REFERENCE_SIZE = 512
#: Coarsest pixel (mm) the anatomy is drawn at before averaging down to the output size.
FINE_MM = 1.5
#: In-plane resolution of the simulated scanner (Gaussian sigma, mm).
PSF_MM = 0.5


@dataclass
class Subject:
    """A phantom subject. ``image`` int16 HU and ``mask`` uint8 0/1 share shape and ``spacing``
    (row, col) in mm; ``fine`` is the noise-free rendering on the supersampled grid
    (``factor`` fine pixels per output pixel along each axis), used to simulate observers."""

    image: np.ndarray
    mask: np.ndarray
    spacing: tuple[float, float]
    height_m: float
    sex: str
    params: Params
    fine: Rendering
    factor: int

    @cached_property
    def signed_distance_mm(self) -> np.ndarray:
        """Fine-grid distance (mm) to the muscle outline: > 0 inside the muscle, < 0 outside."""
        s = self.spacing[0] / self.factor
        ref = self.fine.muscle
        inside = ndimage.distance_transform_edt(ref, sampling=s)
        outside = ndimage.distance_transform_edt(~ref, sampling=s)
        return np.where(ref, inside - s / 2, -(outside - s / 2))

    @cached_property
    def fat_proximity(self) -> np.ndarray:
        """Fine-grid 0…1: how much fat lies within ~1.5 mm (saturates at half the neighbourhood)."""
        s = self.spacing[0] / self.factor
        return np.clip(2 * ndimage.gaussian_filter(self.fine.fat.astype(np.float32), 1.5 / s), 0, 1)


def subject_rngs(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent generators for the anatomy and for the pixel texture of subject ``index``."""
    a, t = np.random.SeedSequence([seed, index]).spawn(2)
    return np.random.default_rng(a), np.random.default_rng(t)


def spacing_for(params: Params, size: int) -> float:
    """Pixel spacing (mm): the subject's FOV / 512 at 512², scaled by 512/size otherwise."""
    return params.fov_mm / REFERENCE_SIZE * (REFERENCE_SIZE / size)


def make_subject(index: int, size: int = 512, seed: int = 0) -> Subject:
    """Draw subject ``index`` of the cohort with ``seed`` as a ``size``×``size`` slice.

    The same (seed, index) gives the same anatomy at every size and identical arrays for the
    same size.
    """
    rng, tex = subject_rngs(seed, index)
    p = sample_params(rng)
    spacing = spacing_for(p, size)
    # Slices coarser than 1 mm are always supersampled (≥ 2×2) so edges get partial volume.
    factor = max(1 if spacing <= 1.0 else 2, math.ceil(spacing / FINE_MM - 1e-9))
    grid = Grid(size * factor, spacing / factor)
    fine = render(p, grid, tex)
    hu = ndimage.gaussian_filter(fine.hu, PSF_MM / grid.spacing)
    hu = block_mean(hu, factor)
    mask = block_mean(fine.muscle, factor) >= 0.5
    # CT noise: correlated over ~a pixel, stronger in larger patients, averaged down on
    # coarse slices like a thick-pixel reconstruction would be.
    sigma = (9 + 12 * (p.half_width - 112) / 90) * min(1.0, size / REFERENCE_SIZE)
    noise = ndimage.gaussian_filter(tex.standard_normal((size, size)), 0.6)
    noise *= max(sigma, 3.0) / noise.std()
    image = np.clip(np.rint(hu + noise), -1024, 3071).astype(np.int16)
    return Subject(image=image, mask=mask.astype(np.uint8), spacing=(spacing, spacing),
                   height_m=p.height_m, sex=p.sex, params=p, fine=fine, factor=factor)
