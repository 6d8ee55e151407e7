"""The canvas a phantom slice is painted on: HU and structure id per fine-grid pixel."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from nnunet_xfer.phantom.shapes import Grid


@dataclass
class Canvas:
    """HU (float) and structure id (uint8, :mod:`~nnunet_xfer.phantom.structures`) of every pixel;
    painting a region sets both, so a later structure replaces an earlier one."""

    hu: np.ndarray
    tissue: np.ndarray

    @classmethod
    def empty(cls, n: int, hu: float, tissue: int) -> Canvas:
        return cls(np.full((n, n), float(hu)), np.full((n, n), tissue, np.uint8))

    def paint(self, region: np.ndarray, hu, tissue: int,
              box: tuple[slice, slice] | None = None) -> None:
        """Set ``region`` (a mask of ``box``, or of the whole grid) to ``hu`` (a value, or one
        value per pixel of the region) and ``tissue``."""
        h, t = (self.hu, self.tissue) if box is None else (self.hu[box], self.tissue[box])
        h[region] = hu
        t[region] = tissue

    def where(self, *tissues: int, box: tuple[slice, slice] | None = None) -> np.ndarray:
        """Mask of the pixels (of ``box``) that are one of ``tissues``."""
        t = self.tissue if box is None else self.tissue[box]
        return np.isin(t, tissues)


def disk(grid: Grid, mm: float) -> np.ndarray:
    """A disk-shaped structuring element of radius ``mm`` (at least the 3×3 cross)."""
    r = max(1, int(round(mm / grid.spacing)))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    return (xx * xx + yy * yy) <= r * r + 0.5


def grow(mask: np.ndarray, grid: Grid, mm: float) -> np.ndarray:
    """``mask`` dilated by about ``mm`` millimetres (a disk; cheap, pixel-accurate)."""
    if mm <= 0:
        return mask.copy()
    return ndimage.binary_dilation(mask, disk(grid, mm))


@dataclass(frozen=True)
class Landmarks:
    """Where the viscera are placed relative to the spine and the retroperitoneal muscles (mm)."""

    vx: float          # vertebral body centre
    vy: float
    vw: float          # vertebral body width and depth
    vd: float
    y_back: float      # posterior surface of the back muscles
    ps_x: float        # psoas centre offset from the midline, and its depth
    ps_y: float
    psoas_a: float
    ql_x: float        # quadratus lumborum centre offset from the midline, and its depth
    ql_y: float
    wall: np.ndarray   # thickness of the abdominal wall (mm) along each ray of the grid
