"""Arms beside the torso (part of the cohort is scanned with the arms down): skin, fat, muscle
compartments with fat planes between them, and one or two bones. Arm muscle has muscle's HU but
is not L3 skeletal muscle: the reference and the observers never outline it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np

from nnunet_xfer.phantom import structures as st
from nnunet_xfer.phantom.canvas import Canvas
from nnunet_xfer.phantom.shapes import Grid, blob_ratio, harmonics

if TYPE_CHECKING:
    from nnunet_xfer.phantom.anatomy import Params

#: Share of arms-down subjects whose arm touches the torso (else a gap of air between).
TOUCHING = 0.5


def sample(rng: np.random.Generator, p: Params) -> list[dict]:
    """Both arms (most subjects) or one, beside the torso at the level of the elbow."""
    adip = p.adiposity
    sides = [-1, 1] if rng.random() < 0.85 else [int(rng.choice([-1, 1]))]
    out = []
    for sgn in sides:
        n_bones = int(rng.integers(1, 3))  # distal humerus, or radius and ulna
        out.append({
            "side": sgn,
            "a": rng.uniform(32, 42) * (1 + 0.5 * adip) * p.muscularity ** 0.5,  # lateral
            "b": rng.uniform(34, 46) * (1 + 0.4 * adip) * p.muscularity ** 0.5,  # AP
            "fat": (3 + 16 * adip) * rng.uniform(0.7, 1.3),
            "gap": rng.uniform(-14, -4) if rng.random() < TOUCHING else rng.uniform(3, 25),
            "dy": rng.uniform(-15, 30), "angle": rng.uniform(-0.4, 0.4),
            "coeffs": harmonics(rng, 0.05, 4),
            "planes": [(rng.uniform(0, np.pi), rng.uniform(-8, 8)) for _ in range(3)],
            "bones": [((rng.uniform(-0.3, 0.3), rng.uniform(-0.3, 0.3)),
                       (rng.uniform(10, 13), rng.uniform(7, 9)) if n_bones == 1
                       else (rng.uniform(5, 7.5),) * 2) for _ in range(n_bones)],
            "muscle_hu": rng.normal(0, 5), "marrow_hu": rng.uniform(-80, -20),
        })
    return out


def _centre(p: Params, arm: dict, body_outline: Callable) -> tuple[float, float]:
    theta = np.arctan2(arm["dy"], arm["side"] * p.half_width)
    r = float(body_outline(p, np.array(theta)))
    edge = p.body_dx + r * np.cos(theta)
    return edge + arm["side"] * (arm["gap"] + arm["a"]), p.body_dy + arm["dy"]


def lateral_extent(p: Params, arm: dict, body_outline: Callable) -> float:
    """Largest |x| (mm) the arm reaches from the image centre."""
    cx, _ = _centre(p, arm, body_outline)
    return abs(cx) + 1.1 * max(arm["a"], arm["b"])


def draw(cv: Canvas, grid: Grid, p: Params, arm: dict, body_outline: Callable) -> None:
    """Paint one arm (the torso, painted afterwards, covers any overlap)."""
    cx, cy = _centre(p, arm, body_outline)
    a, b = arm["a"], arm["b"]
    box, ratio = blob_ratio(grid, cx, cy, a, b, angle=arm["angle"], coeffs=arm["coeffs"])
    outer = ratio < 1
    core = ratio < 1 - arm["fat"] / min(a, b)
    cv.paint(outer, p.hu["subcut_fat"], st.ARM_FAT, box)
    cv.paint(outer & (ratio > 1 - 1.6 / min(a, b)), p.hu["skin"], st.ARM_SKIN, box)
    cv.paint(core, p.hu["muscle"] + arm["muscle_hu"], st.ARM_MUSCLE, box)
    x, y = grid.xy(box)
    for phi, off in arm["planes"]:  # fat planes between the muscle compartments
        d = np.abs((x - cx) * np.sin(phi) - (y - cy) * np.cos(phi) - off)
        cv.paint(core & (d < 0.7), p.hu["subcut_fat"] + 15, st.ARM_FAT, box)
    for (fx, fy), (ra, rb) in arm["bones"]:
        bx, by = cx + fx * a, cy + fy * b
        bbox, br = blob_ratio(grid, bx, by, ra, rb, angle=arm["angle"])
        cv.paint(br < 1, p.hu["cortex"], st.ARM_BONE, bbox)
        cv.paint(br < 1 - 2.0 / rb, arm["marrow_hu"], st.ARM_BONE, bbox)
