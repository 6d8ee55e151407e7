"""Simulated experts: the reference annotator and the observers, each outlining the truth.

Every expert has a style (fixed over the cohort): a systematic boundary offset, a tendency where
muscle borders fat, smooth boundary wander and occasional local omissions; each (expert, case)
pair draws its own wander and omissions. An outline is drawn on the subject's fine grid as a
shifted level set of the *true* muscle's signed distance, then averaged down (≥ 50 % rule). The
reference mask (``Subject.mask``) is one such expert, with its own style and random stream; the
observers are others, so their errors are independent of the reference's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from nnunet_xfer.phantom.shapes import Grid, block_mean, blob, smooth_noise

if TYPE_CHECKING:
    from nnunet_xfer.phantom.subject import Subject


#: How expert styles vary (mm): SD of the systematic offset and of the fat tendency, range of the
#: boundary wander's SD, of omissions per case and of an omission's radius. Calibrated so that
#: two experts agree at Dice 0.92–0.96 (benchmarks/phantom_calibration.py).
BIAS_SD = 0.22
FAT_SD = 0.36
NOISE_MM = (0.2, 0.45)
OMISSIONS = (0.1, 0.5)
OMISSION_MM = (3.5, 7.0)


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
    return _style(np.random.default_rng(np.random.SeedSequence([seed, 7_000_003, k])))


def reference_style(seed: int = 0) -> ObserverStyle:
    """The style of the expert whose outlines are the reference masks of cohort ``seed``."""
    return _style(np.random.default_rng(np.random.SeedSequence([seed, 7_000_029])))


def _style(rng: np.random.Generator) -> ObserverStyle:
    return ObserverStyle(bias_mm=float(rng.normal(0.0, BIAS_SD)), fat_mm=float(rng.normal(0.0, FAT_SD)),
                         noise_mm=float(rng.uniform(*NOISE_MM)), corr_mm=float(rng.uniform(6, 15)),
                         omissions=float(rng.uniform(*OMISSIONS)),
                         omission_mm=float(rng.uniform(*OMISSION_MM)))


def observer_mask(subject: Subject, style: ObserverStyle, rng: np.random.Generator) -> np.ndarray:
    """One expert's uint8 0/1 outline of ``subject``'s true skeletal muscle (shape of its mask).

    Drawn on the fine grid inside ``subject.roi`` (the muscle and a margin), then averaged down.
    """
    fine, f, roi = subject.fine, subject.factor, subject.roi
    s = subject.spacing[0] / f
    ref, sd = fine.muscle[roi], subject.signed_distance_mm
    wander = smooth_noise(rng, ref.shape, style.corr_mm / s) if ref.size else np.zeros(ref.shape)
    offset = style.bias_mm + style.fat_mm * subject.fat_proximity + style.noise_mm * wander
    drawn = (sd + offset > 0) & fine.body[roi] & (fine.hu[roi] < 300)
    if style.fat_mm > 0:
        # a looser observer also draws across fat planes between muscles up to ~2×fat_mm wide
        r = style.fat_mm
        closed = ndimage.distance_transform_edt(sd > -r, sampling=s) > r
        drawn |= closed & fine.fat[roi]
    edge = np.flatnonzero(ref & ~ndimage.binary_erosion(ref))
    grid = Grid(fine.muscle.shape[0], s)
    r0, c0 = roi[0].start, roi[1].start
    for _ in range(rng.poisson(style.omissions) if edge.size else 0):
        i, j = np.unravel_index(rng.choice(edge), ref.shape)
        r = style.omission_mm * rng.uniform(0.6, 1.4)
        (br, bc), m = blob(grid, grid.coords[c0 + j], grid.coords[r0 + i], r,
                           r * rng.uniform(0.5, 1.0), angle=rng.uniform(0, np.pi))
        local = (slice(br.start - r0, br.stop - r0), slice(bc.start - c0, bc.stop - c0))
        lo = (max(0, -local[0].start), max(0, -local[1].start))  # a blob cut by the window
        view = drawn[max(0, local[0].start):local[0].stop, max(0, local[1].start):local[1].stop]
        view &= ~m[lo[0]:lo[0] + view.shape[0], lo[1]:lo[1] + view.shape[1]]
    out = np.zeros((fine.muscle.shape[0] // f,) * 2, np.uint8)
    out[roi[0].start // f:roi[0].stop // f, roi[1].start // f:roi[1].stop // f] = \
        block_mean(drawn, f) >= 0.5
    return out


def observer_rng(seed: int, k: int, index: int) -> np.random.Generator:
    """Generator for observer ``k`` on case ``index``."""
    return np.random.default_rng(np.random.SeedSequence([seed, 7_000_019, k, index]))


def reference_rng(seed: int, index: int, stream: int | None = None) -> np.random.Generator:
    """Generator for the reference expert on case ``index`` (of subject ``stream``, if any)."""
    key = [seed, 7_000_031, index] if stream is None else [seed, 7_000_031, stream, index]
    return np.random.default_rng(np.random.SeedSequence(key))
