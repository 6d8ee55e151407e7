"""Simulated human observers: systematic boundary offset, fat tendency, smooth noise, omissions.

Each observer has a style (fixed over the cohort); each (observer, case) pair adds its own
smooth boundary noise and occasional local omissions. Outlines are drawn on the subject's fine
grid as a shifted level set of the reference's signed distance, then averaged down like the
reference mask, so observers differ from the reference even on coarse slices.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from nnunet_xfer.phantom.shapes import Grid, block_mean, blob, smooth_noise
from nnunet_xfer.phantom.subject import Subject


@dataclass(frozen=True)
class ObserverStyle:
    """How one observer delineates muscle (mm; positive means outside the reference)."""

    bias_mm: float         # everywhere
    fat_mm: float          # extra, where muscle borders fat (tighter < 0 < looser; looser
    #                        observers also bridge thin fat planes between muscles)
    noise_mm: float        # SD of smooth random boundary wander
    corr_mm: float         # its correlation length along the boundary
    omissions: float       # expected local omissions per case
    omission_mm: float     # typical radius of an omitted piece


def observer_name(k: int, n_observers: int = 10) -> str:
    """``obs01``, ``obs02``, … (wider numbers when there are 100 or more observers)."""
    return f"obs{k + 1:0{max(2, len(str(n_observers)))}d}"


def observer_style(k: int, seed: int = 0) -> ObserverStyle:
    """The style of observer ``k`` (0-based) in a cohort drawn with ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 7_000_003, k]))
    return ObserverStyle(bias_mm=float(rng.normal(0.0, 0.25)), fat_mm=float(rng.normal(0.0, 0.35)),
                         noise_mm=float(rng.uniform(0.25, 0.55)), corr_mm=float(rng.uniform(6, 15)),
                         omissions=float(rng.uniform(0.1, 0.6)),
                         omission_mm=float(rng.uniform(4, 8)))


def observer_mask(subject: Subject, style: ObserverStyle, rng: np.random.Generator) -> np.ndarray:
    """One observer's uint8 0/1 outline of ``subject``'s skeletal muscle (shape of its mask)."""
    fine, f = subject.fine, subject.factor
    s = subject.spacing[0] / f
    ref = fine.muscle
    wander = smooth_noise(rng, ref.shape, style.corr_mm / s)
    offset = style.bias_mm + style.fat_mm * subject.fat_proximity + style.noise_mm * wander
    drawn = (subject.signed_distance_mm + offset > 0) & fine.body & (fine.hu < 300)
    if style.fat_mm > 0:
        # a looser observer also draws across fat planes between muscles up to ~2×fat_mm wide
        r = style.fat_mm
        closed = ndimage.distance_transform_edt(subject.signed_distance_mm > -r, sampling=s) > r
        drawn |= closed & fine.fat
    edge = np.flatnonzero(ref & ~ndimage.binary_erosion(ref))
    grid = Grid(ref.shape[0], s)
    for _ in range(rng.poisson(style.omissions) if edge.size else 0):
        i, j = np.unravel_index(rng.choice(edge), ref.shape)
        r = style.omission_mm * rng.uniform(0.6, 1.4)
        box, m = blob(grid, grid.coords[j], grid.coords[i], r, r * rng.uniform(0.5, 1.0),
                      angle=rng.uniform(0, np.pi))
        drawn[box] &= ~m
    return (block_mean(drawn, f) >= 0.5).astype(np.uint8)


def observer_rng(seed: int, k: int, index: int) -> np.random.Generator:
    """Generator for observer ``k`` on case ``index``."""
    return np.random.default_rng(np.random.SeedSequence([seed, 7_000_019, k, index]))
