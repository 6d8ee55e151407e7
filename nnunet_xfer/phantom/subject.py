"""One synthetic subject in memory: CT slice in HU, reference muscle mask, spacing, height, sex.

The anatomy is drawn on a fine grid (pixels of at most ~1.5 mm), passed through the simulated
scanner (``scanner.py``) and averaged down to the requested size, so small slices get true
partial-volume edges and the same anatomy as large ones. The reference mask is the reference
expert's outline of the true muscle (``observers.py``), not the truth itself.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy import ndimage

from nnunet_xfer.phantom import scanner
from nnunet_xfer.phantom.anatomy import Params, Rendering, render, sample_params
from nnunet_xfer.phantom.observers import observer_mask, reference_rng, reference_style
from nnunet_xfer.phantom.shapes import Grid, block_mean
from nnunet_xfer.phantom.structures import majority

#: Size the spacing rule refers to: at 512² the pixel spacing is FOV/512 (0.6–0.98 mm).
REFERENCE_SIZE = scanner.REFERENCE_SIZE
#: Coarsest pixel (mm) the anatomy is drawn at before averaging down to the output size.
FINE_MM = 1.5
#: How far beyond the true muscle (mm) an expert's outline is computed: far more than any
#: expert's offset, fat bridging or omission reaches.
ROI_MARGIN_MM = 12.0


@dataclass
class Subject:
    """A phantom subject. ``image`` int16 HU and ``mask`` uint8 0/1 (the reference expert's
    outline) share shape and ``spacing`` (row, col) in mm; ``fine`` is the noise-free rendering
    on the supersampled grid (``factor`` fine pixels per output pixel along each axis), which
    holds the true anatomy the experts outline."""

    image: np.ndarray
    spacing: tuple[float, float]
    height_m: float
    sex: str
    params: Params
    fine: Rendering
    factor: int
    #: (seed, index, stream) of the subject: what the reference expert's random stream derives from
    key: tuple[int, int, int | None] = (0, 0, None)

    @cached_property
    def mask(self) -> np.ndarray:
        """uint8 0/1: the reference expert's outline of the true L3 skeletal muscle."""
        seed, index, stream = self.key
        return observer_mask(self, reference_style(seed), reference_rng(seed, index, stream))

    @cached_property
    def truth(self) -> np.ndarray:
        """uint8 0/1: the true L3 skeletal muscle at the output size (≥ 50 % of a pixel)."""
        return (block_mean(self.fine.muscle, self.factor) >= 0.5).astype(np.uint8)

    @cached_property
    def tissue(self) -> np.ndarray:
        """Structure id (``structures.py``) of every output pixel: the most frequent one."""
        return majority(self.fine.tissue, self.factor)

    @cached_property
    def roi(self) -> tuple[slice, slice]:
        """Fine-grid window around the true muscle (``ROI_MARGIN_MM`` beyond it, whole output
        pixels): experts draw only there, so their distance maps need no more."""
        muscle, f = self.fine.muscle, self.factor
        rows, cols = np.flatnonzero(muscle.any(axis=1)), np.flatnonzero(muscle.any(axis=0))
        if rows.size == 0:
            return slice(0, 0), slice(0, 0)
        m = int(math.ceil(ROI_MARGIN_MM / (self.spacing[0] / f)))
        n = muscle.shape[0]

        def window(lo: int, hi: int) -> slice:
            return slice(max(0, (lo - m) // f * f), min(n, -(-(hi + 1 + m) // f) * f))
        return window(rows[0], rows[-1]), window(cols[0], cols[-1])

    @cached_property
    def signed_distance_mm(self) -> np.ndarray:
        """Distance (mm) to the true muscle outline over :attr:`roi`: > 0 inside, < 0 outside."""
        s = self.spacing[0] / self.factor
        ref = self.fine.muscle[self.roi]
        inside = ndimage.distance_transform_edt(ref, sampling=s)
        outside = ndimage.distance_transform_edt(~ref, sampling=s)
        return np.where(ref, inside - s / 2, -(outside - s / 2))

    @cached_property
    def fat_proximity(self) -> np.ndarray:
        """0…1 over :attr:`roi`: how much fat lies within ~1.5 mm (saturates at half the
        neighbourhood)."""
        s = self.spacing[0] / self.factor
        fat = self.fine.fat[self.roi].astype(np.float32)
        return np.clip(2 * ndimage.gaussian_filter(fat, 1.5 / s), 0, 1)


def subject_rngs(seed: int, index: int, stream: int | None = None
                 ) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent generators for the anatomy and for the pixel texture of subject ``index``
    (of another set of subjects than the cohort's when ``stream`` is given)."""
    key = [seed, index] if stream is None else [seed, stream, index]
    a, t = np.random.SeedSequence(key).spawn(2)
    return np.random.default_rng(a), np.random.default_rng(t)


def spacing_for(params: Params, size: int) -> float:
    """Pixel spacing (mm): the subject's FOV / 512 at 512², scaled by 512/size otherwise."""
    return params.fov_mm / REFERENCE_SIZE * (REFERENCE_SIZE / size)


def make_subject(index: int, size: int = 512, seed: int = 0, stream: int | None = None) -> Subject:
    """Draw subject ``index`` of the cohort with ``seed`` as a ``size``×``size`` slice.

    The same (seed, index) gives the same anatomy at every size and identical arrays for the
    same size. ``stream`` draws from another set of subjects (the source task's).
    """
    rng, tex = subject_rngs(seed, index, stream)
    p = sample_params(rng)
    spacing = spacing_for(p, size)
    # Slices coarser than 1 mm are always supersampled (≥ 2×2) so edges get partial volume.
    factor = max(1 if spacing <= 1.0 else 2, math.ceil(spacing / FINE_MM - 1e-9))
    grid = Grid(size * factor, spacing / factor)
    fine = render(p, grid, tex)
    hu = scanner.acquire(p, fine, grid, factor, size, tex)
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    return Subject(image=image, spacing=(spacing, spacing), height_m=p.height_m, sex=p.sex,
                   params=p, fine=fine, factor=factor, key=(seed, index, stream))
