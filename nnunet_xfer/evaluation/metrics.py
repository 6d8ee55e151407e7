"""Segmentation metrics of a predicted 2D mask against a reference: Dice and boundary distances.

Definitions (docs/definitions.md, "Segmentation metrics"): the boundary of a mask is the mask minus
its erosion by a 3×3 square, with everything outside the image counted as outside the mask;
distances are between pixel centres in mm. All distance metrics come from one routine,
:func:`directed_boundary_distances`.

Nearest boundary pixels are found with a k-d tree over the boundary pixels' coordinates in mm
rather than a distance transform of the whole bounding box: both are exact, but an L3 muscle
boundary has ~2,000 pixels against ~75,000 in its bounding box, and a distance transform per
direction is the very work that DeepMind's surface-distance does (see benchmarks/metrics_speed.py).
"""
from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

METRIC_KEYS = ("dice", "rms_dta_mm", "assd_mm", "hd95_mm", "hd_mm", "nsd", "failed")

#: Slack (mm) in "within τ" so that a distance equal to τ is not lost to float rounding
#: (0.8 mm × 3 pixels may come out as 2.3999999999999986 or 2.4000000000000004).
NSD_SLACK_MM = 1e-9


def _as_mask(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2D mask, got shape {x.shape}")
    return x.astype(bool, copy=False)


def _boundary_of_padded(m: np.ndarray) -> np.ndarray:
    """Boundary of the interior of ``m``, whose outermost rows and columns are all False.

    The 3×3 erosion is done as two separable 3-pixel ANDs on shifted views (no copy of the image
    per neighbour, no per-pixel Python); the False frame stands for "outside the image".
    """
    rows = m[:-2] & m[1:-1] & m[2:]
    eroded = rows[:, :-2] & rows[:, 1:-1] & rows[:, 2:]
    return m[1:-1, 1:-1] & ~eroded


def boundary(mask: np.ndarray) -> np.ndarray:
    """Mask pixels with at least one of their 8 neighbours outside the mask (or outside the image)."""
    mask = _as_mask(mask, "mask")
    return _boundary_of_padded(np.pad(mask, 1))


def _crop_padded(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union, with one row/column of False around.

    The False frame makes the erosion at the crop edge identical to the erosion in the full image,
    including masks touching the image border (outside the image is outside the mask).
    """
    union = a | b
    rows = np.flatnonzero(union.any(axis=1))
    cols = np.flatnonzero(union.any(axis=0))
    window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return np.pad(a[window], 1), np.pad(b[window], 1)


def directed_boundary_distances(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float]
                                ) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each boundary pixel of ``a`` to the nearest boundary pixel of ``b``, and back.

    Both masks must be non-empty. Works on the union's bounding box; one exact nearest-neighbour
    query per direction (``scipy.spatial.cKDTree`` over boundary-pixel centres in mm) for the
    boundary pixels that are not on the other boundary (those are at distance 0).
    Returns ``(d_ab, d_ba)`` as float64 arrays in row-major order of the boundary pixels.
    """
    a, b = _as_mask(a, "a"), _as_mask(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    if not a.any() or not b.any():
        raise ValueError("directed_boundary_distances needs two non-empty masks")
    a, b = _crop_padded(a, b)
    edge_a, edge_b = _boundary_of_padded(a), _boundary_of_padded(b)
    scale = np.asarray(spacing, dtype=np.float64).reshape(1, 2)
    pts_a, pts_b = np.argwhere(edge_a) * scale, np.argwhere(edge_b) * scale
    return _nearest(pts_a, ~edge_b[edge_a], pts_b), _nearest(pts_b, ~edge_a[edge_b], pts_a)


def _nearest(pts_from: np.ndarray, only_from: np.ndarray, pts_to: np.ndarray) -> np.ndarray:
    """Distance from each of ``pts_from`` to the nearest of ``pts_to`` (boundary pixels in mm).

    ``only_from`` flags the points that are not on the other boundary; the rest are at distance 0
    without a query: in a good segmentation most are, and k-d tree queries that land exactly on a
    tree point are the slow ones (ties at every split).
    """
    dist = np.zeros(len(pts_from))
    if only_from.any():
        tree = cKDTree(pts_to, balanced_tree=False, compact_nodes=False)
        dist[only_from] = tree.query(pts_from[only_from])[0]
    return dist


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient 2|P∩R| / (|P| + |R|); 1.0 when both masks are empty."""
    pred, ref = _as_mask(pred, "pred"), _as_mask(ref, "ref")
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & ref)) / total


def segmentation_metrics(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float],
                         nsd_tolerance_mm: float = 2.0) -> dict:
    """Dice, RMS distance-to-agreement, ASSD, HD95, HD (mm) and surface Dice of two 2D masks.

    ``spacing`` is the (row, col) pixel size in mm. Over the union U = d(P→R) ∪ d(R→P) of directed
    boundary distances: RMS DTA = sqrt(mean(U²)), ASSD = mean(U), HD = max(U); HD95 = the larger of
    the two directed 95th percentiles (numpy's default linear interpolation); NSD = fraction of U
    that is ≤ ``nsd_tolerance_mm`` (+ :data:`NSD_SLACK_MM`). Both masks empty: Dice 1, distances 0, NSD 1. Exactly one empty:
    Dice 0, distances and NSD NaN, ``failed`` True.
    """
    pred, ref = _as_mask(pred, "pred"), _as_mask(ref, "ref")
    if pred.shape != ref.shape:
        raise ValueError(f"mask shapes differ: pred {pred.shape} vs ref {ref.shape}")
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return dict(dice=1.0, rms_dta_mm=0.0, assd_mm=0.0, hd95_mm=0.0, hd_mm=0.0, nsd=1.0,
                    failed=False)
    if has_pred != has_ref:
        nan = math.nan
        return dict(dice=0.0, rms_dta_mm=nan, assd_mm=nan, hd95_mm=nan, hd_mm=nan, nsd=nan,
                    failed=True)
    d_pr, d_rp = directed_boundary_distances(pred, ref, spacing)
    union = np.concatenate([d_pr, d_rp])
    return dict(
        dice=dice(pred, ref),
        rms_dta_mm=float(np.sqrt(np.mean(union ** 2))),
        assd_mm=float(np.mean(union)),
        hd95_mm=float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))),
        hd_mm=float(union.max()),
        nsd=float(np.count_nonzero(union <= nsd_tolerance_mm + NSD_SLACK_MM) / union.size),
        failed=False,
    )
