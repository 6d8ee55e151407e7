"""Segmentation metrics of a predicted 2D mask against a reference: Dice and boundary distances.

Definitions (docs/definitions.md, "Segmentation metrics"): the boundary of a mask is the mask minus
its erosion by a 3×3 square, with everything outside the image counted as outside the mask;
distances are between pixel centres in mm. All distance metrics come from one routine,
:func:`_boundary_distances`.

The algorithm is exact and its work follows the boundary, not the image or its bounding box (an
L3 muscle boundary has ~2,400 pixels against ~70,000 in its bounding box, and a distance
transform of that box per direction is what DeepMind's surface-distance and medpy do; see
benchmarks/metrics_speed.py):

1. both masks are cut to the bounding box of their union and placed on a grid with a margin of
   False (which plays "outside the image");
2. boundaries come from shifted views of the flat grid (three row ANDs, three pixel ANDs);
3. a boundary pixel that is also on the other boundary is at distance 0;
4. for the others, neighbour offsets sorted by their length in mm (anisotropic spacing included)
   are probed in chunks, for all pending pixels at once: the first offset that lands on the
   other boundary gives the distance, since every shorter offset came earlier in the sorted
   table, and the table holds every offset up to its radius;
5. pixels with no hit in the table, or whose further search would cost more than an exact answer
   (cost model below), get it from all pairs (few pixels) or ``scipy.spatial.cKDTree``.

Percentiles are numpy's default (linear) method, computed with ``np.partition`` on the distances
that are not 0 (the zeros sort first).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np

METRIC_KEYS = ("dice", "rms_dta_mm", "assd_mm", "hd95_mm", "hd_mm", "nsd", "failed")

#: Slack (mm) in "within τ" so that a distance equal to τ is not lost to float rounding
#: (0.8 mm × 3 pixels may come out as 2.3999999999999986 or 2.4000000000000004).
NSD_SLACK_MM = 1e-9

#: Offsets in the search table (a disc in mm; ~25 px radius at isotropic spacing) and the largest
#: reach of the table along either axis, in pixels (bounds the padding at extreme anisotropy).
_TABLE_OFFSETS = 2000
_TABLE_MAX_REACH = 64
#: Search chunks grow by half (the first holds the 8 neighbours at isotropic spacing) and probe at
#: least this many (offset, pixel) pairs, so that few pending pixels do not pay numpy's per-call
#: overhead chunk after chunk.
_MIN_CHUNK_PROBES = 16384
#: Cost model in units of one probe (one offset tried for one pixel, ~1 ns): a k-d tree costs
#: about this much per tree point to build and per query, and the all-pairs distance this much
#: per pair (measured on 512² L3 masks with numpy 2.4, scipy 1.17).
_KD_BUILD_COST = 60
_KD_QUERY_COST = 300
_PAIR_COST = 2


def _as_mask(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2D mask, got shape {x.shape}")
    return x.astype(bool, copy=False)


def _as_spacing(spacing: tuple[float, float]) -> tuple[float, float]:
    sr, sc = (float(s) for s in spacing)
    if not (math.isfinite(sr) and math.isfinite(sc) and sr > 0 and sc > 0):
        raise ValueError(f"spacing must be two positive finite pixel sizes in mm, got {spacing!r}")
    return sr, sc


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


class _Offsets(NamedTuple):
    """Neighbour offsets sorted by length in mm: every offset of length ≤ the last one is in it."""
    dr: np.ndarray      # row offsets (int64)
    dc: np.ndarray      # column offsets (int64)
    d2: np.ndarray      # squared lengths in mm², ascending
    reach_r: int        # max |dr|
    reach_c: int        # max |dc|


@functools.lru_cache(maxsize=32)
def _offset_table(sr: float, sc: float, size: int, max_reach: int) -> _Offsets:
    """All nonzero offsets no longer than a radius in mm, sorted by length (then row, column).

    The radius is chosen so that the disc (an ellipse in pixels at anisotropic spacing) holds
    about ``size`` offsets and reaches at most ``max_reach`` pixels along either axis. The
    candidate box is one pixel wider than the disc so that float rounding of
    ``radius / spacing`` cannot leave out an offset on the rim.
    """
    radius = min(math.sqrt(size * sr * sc / math.pi), max_reach * sr, max_reach * sc)
    mr, mc = int(radius / sr) + 1, int(radius / sc) + 1
    dr, dc = np.mgrid[-mr:mr + 1, -mc:mc + 1]
    dr, dc = dr.ravel(), dc.ravel()
    d2 = (dr * sr) ** 2 + (dc * sc) ** 2
    keep = (d2 <= radius * radius) & ((dr != 0) | (dc != 0))
    order = np.argsort(d2[keep], kind="stable")
    dr, dc, d2 = dr[keep][order], dc[keep][order], d2[keep][order]
    for a in (dr, dc, d2):
        a.flags.writeable = False
    return _Offsets(dr, dc, d2, int(np.abs(dr).max(initial=0)), int(np.abs(dc).max(initial=0)))


def _union_window(a: np.ndarray, b: np.ndarray) -> tuple[slice, slice] | None:
    """Bounding box of ``a | b`` as two slices; None when both are empty."""
    union = a | b
    if union.flags.c_contiguous and union.shape[1] % 8 == 0:  # rows 8 pixels at a time
        rows_any = (union.view(np.uint64) != 0).any(axis=1)
    else:
        rows_any = union.any(axis=1)
    rows = np.flatnonzero(rows_any)
    if rows.size == 0:
        return None
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    cols = np.flatnonzero(union[r0:r1].any(axis=0))
    return slice(r0, r1), slice(int(cols[0]), int(cols[-1]) + 1)


class _Boundaries(NamedTuple):
    """Both boundaries on one padded grid of ``size`` pixels, held in one flat array ``grids``:
    b's boundary in ``grids[:size]``, a's in ``grids[size:]``. A boundary pixel of a at flat
    index i probes ``grids[i + offset]`` (b's boundary), one of b probes
    ``grids[i + size + offset]`` (a's boundary), so both directions are searched in one pass."""
    idx_a: np.ndarray       # flat grid indices of a's boundary pixels, ascending (row-major)
    idx_b: np.ndarray
    grids: np.ndarray       # bool, 2 * size
    size: int
    width: int              # row length of the padded grid


def _boundaries(ca: np.ndarray, cb: np.ndarray, table: _Offsets) -> _Boundaries:
    """Boundaries of two masks cropped to the union's box (``ca``, ``cb``), placed on a grid
    padded by the table's reach (at least 1), so that any offset of the table from a pixel of the
    box stays inside the grid.

    The grid is handled as one flat array: the 3×3 erosion is three ANDs of the flat array shifted
    by a row and three shifted by a pixel. A shift by one pixel wraps from one row's end to the
    next row's start only in the padding columns, which are False, so every mask pixel sees its
    true 8 neighbours, and the padding plays "outside the image".
    """
    h, w = ca.shape
    pr, pc = max(table.reach_r, 1), max(table.reach_c, 1)
    width = w + 2 * pc
    size = (h + 2 * pr) * width
    lo, hi = pr * width, (pr + h) * width           # the rows of the box, flat
    grids = np.zeros(2 * size, bool)
    mask = np.zeros(size, bool)
    idx = []
    for m, edge in ((ca, grids[size:]), (cb, grids[:size])):
        mask.reshape(-1, width)[pr:pr + h, pc:pc + w] = m
        rows3 = mask[lo - width:hi - width] & mask[lo:hi] & mask[lo + width:hi + width]
        eroded = rows3[:-2] & rows3[1:-1] & rows3[2:]
        np.greater(mask[lo + 1:hi - 1], eroded, out=edge[lo + 1:hi - 1])  # mask & ~eroded
        idx.append(np.flatnonzero(edge[lo:hi]) + lo)
    return _Boundaries(idx[0], idx[1], grids, size, width)


def _search_d2(src: np.ndarray, grids: np.ndarray, table: _Offsets, width: int,
               fallback_cost) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Squared distance (mm²) from each flat index in ``src`` to the nearest True of ``grids``
    within the offset table: ``(d2, pending, pos)``, where ``d2[pos]`` are still to be found for
    the flat indices ``pending`` (no hit in the table, or not worth searching further).

    ``src`` pixels are not on the boundary they look for. Offsets are probed in ascending length,
    a chunk at a time for all pending pixels; the first hit is the minimum. The search stops when
    the table is used up or when its cost so far would exceed ``fallback_cost(pending)``, the
    cost of answering the pending pixels exactly (so a search that does not pay off costs at
    most twice the exact answer; cost model above).
    """
    n = src.size
    d2 = np.empty(n)
    pending, pos = src, np.arange(n)
    flat = table.dr * width + table.dc
    spent = lo = 0
    while pending.size and lo < flat.size:
        k = pending.size
        hi = min(flat.size, max(lo + 8, lo * 3 // 2, lo - (-_MIN_CHUNK_PROBES // k)))
        spent += k * (hi - lo)
        if spent > fallback_cost(pending):
            break
        # Lay the (offset, pixel) probes out with the longer side contiguous: numpy's inner loops.
        if k >= hi - lo:
            hits = np.take(grids, flat[lo:hi, None] + pending)
            found = hits.any(axis=0)
            first = hits[:, found].argmax(axis=0) if found.any() else None
        else:
            hits = np.take(grids, pending[:, None] + flat[lo:hi])
            found = hits.any(axis=1)
            first = hits[found].argmax(axis=1) if found.any() else None
        if first is not None:
            d2[pos[found]] = table.d2[lo + first]
            missed = ~found
            pending, pos = pending[missed], pos[missed]
        lo = hi
    return d2, pending, pos


def _exact_cost(n: int, m: int) -> int:
    """Cost (in probes) of :func:`_exact_d2` for ``n`` pixels against ``m`` boundary pixels."""
    return min(_KD_BUILD_COST * m + _KD_QUERY_COST * n, _PAIR_COST * n * m)


def _exact_d2(src: np.ndarray, dst_idx: np.ndarray, width: int, spacing: tuple[float, float]
              ) -> np.ndarray:
    """Squared distance (mm²) from each flat index in ``src`` to the nearest of ``dst_idx``, by
    all pairs when that is cheaper than a k-d tree, else by ``scipy.spatial.cKDTree``."""
    sr, sc = spacing
    src_r, src_c = np.divmod(src, width)
    dst_r, dst_c = np.divmod(dst_idx, width)
    if _PAIR_COST * src.size * dst_idx.size <= _KD_BUILD_COST * dst_idx.size + \
            _KD_QUERY_COST * src.size:
        dr = (src_r[:, None] - dst_r) * sr
        dc = (src_c[:, None] - dst_c) * sc
        return (dr * dr + dc * dc).min(axis=1)
    dist = _kd_nearest(np.column_stack((dst_r * sr, dst_c * sc)),
                       np.column_stack((src_r * sr, src_c * sc)))
    return dist * dist


def _kd_nearest(points: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Distance from each query to the nearest point, by ``scipy.spatial.cKDTree`` (imported here:
    ``measure`` imports this module for :func:`dice` only, and scipy.spatial is 0.3 s of its
    start-up)."""
    from scipy.spatial import cKDTree
    return cKDTree(points, balanced_tree=False, compact_nodes=False).query(queries)[0]


def _boundary_distances(bd: _Boundaries, table: _Offsets, spacing: tuple[float, float]
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(off_a, d2_a, off_b, d2_b)``: which boundary pixels of a are off b's boundary, their
    squared distances (mm², > 0) to b's boundary, and the same from b to a."""
    size = bd.size
    off_a = ~bd.grids[bd.idx_a]                 # b's boundary is grids[:size]
    off_b = ~bd.grids[bd.idx_b + size]          # a's boundary is grids[size:]
    src_a, src_b = bd.idx_a[off_a], bd.idx_b[off_b] + size
    n_a, m_a, m_b = src_a.size, bd.idx_b.size, bd.idx_a.size

    def fallback_cost(pending: np.ndarray) -> int:
        from_a = int(np.count_nonzero(pending < size))
        return _exact_cost(from_a, m_a) + _exact_cost(pending.size - from_a, m_b)

    d2, pending, pos = _search_d2(np.concatenate([src_a, src_b]), bd.grids, table, bd.width,
                                  fallback_cost)
    if pending.size:
        from_a = pending < size
        if from_a.any():
            d2[pos[from_a]] = _exact_d2(pending[from_a], bd.idx_b, bd.width, spacing)
        if not from_a.all():
            d2[pos[~from_a]] = _exact_d2(pending[~from_a] - size, bd.idx_a, bd.width, spacing)
    return off_a, d2[:n_a], off_b, d2[n_a:]


def directed_boundary_distances(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float]
                                ) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each boundary pixel of ``a`` to the nearest boundary pixel of ``b``, and back.

    Both masks must be non-empty. Exact (see the module docstring for the algorithm).
    Returns ``(d_ab, d_ba)`` as float64 arrays in row-major order of the boundary pixels.
    """
    a, b = _as_mask(a, "a"), _as_mask(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    if not a.any() or not b.any():
        raise ValueError("directed_boundary_distances needs two non-empty masks")
    spacing = _as_spacing(spacing)
    table = _offset_table(*spacing, _TABLE_OFFSETS, _TABLE_MAX_REACH)
    window = _union_window(a, b)
    bd = _boundaries(a[window], b[window], table)
    off_a, d2_a, off_b, d2_b = _boundary_distances(bd, table, spacing)
    d_ab, d_ba = np.zeros(off_a.size), np.zeros(off_b.size)
    d_ab[off_a] = np.sqrt(d2_a)
    d_ba[off_b] = np.sqrt(d2_b)
    return d_ab, d_ba


def _percentile(nonzero: np.ndarray, n: int, q: float) -> float:
    """``np.percentile(values, q)`` (linear method) of ``n`` values: ``n - nonzero.size`` zeros
    and the positive ``nonzero`` ones; reproduces numpy's index and interpolation arithmetic."""
    virtual = (n - 1) * (q / 100)
    zeros = n - nonzero.size
    if virtual >= n - 1:
        lo_i = hi_i = n - 1
    else:
        lo_i = int(math.floor(virtual))
        hi_i = lo_i + 1
    if hi_i < zeros:
        return 0.0
    kth = sorted({max(lo_i - zeros, 0), hi_i - zeros})
    part = np.partition(nonzero, kth)
    lo = 0.0 if lo_i < zeros else float(part[lo_i - zeros])
    hi = float(part[hi_i - zeros])
    gamma = virtual - lo_i if lo_i != hi_i else 0.0
    diff = hi - lo
    # numpy's _lerp: interpolate from whichever end is nearer.
    return hi - diff * (1 - gamma) if gamma >= 0.5 else lo + diff * gamma


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient 2|P∩R| / (|P| + |R|); 1.0 when both masks are empty."""
    pred, ref = _as_mask(pred, "pred"), _as_mask(ref, "ref")
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(ref))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & ref)) / total


def segmentation_metrics(pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, float],
                         nsd_tolerance_mm: float = 2.0) -> dict:
    """Dice, RMS distance-to-agreement, ASSD, HD95, HD (mm) and surface Dice of two 2D masks.

    ``spacing`` is the (row, col) pixel size in mm. Over the union U = d(P→R) ∪ d(R→P) of directed
    boundary distances: RMS DTA = sqrt(mean(U²)), ASSD = mean(U), HD = max(U); HD95 = the larger of
    the two directed 95th percentiles (numpy's default linear interpolation); NSD = fraction of U
    that is ≤ ``nsd_tolerance_mm`` (+ :data:`NSD_SLACK_MM`). Both masks empty: Dice 1, distances
    0, NSD 1. Exactly one empty: Dice 0, distances and NSD NaN, ``failed`` True.
    """
    pred, ref = _as_mask(pred, "pred"), _as_mask(ref, "ref")
    if pred.shape != ref.shape:
        raise ValueError(f"mask shapes differ: pred {pred.shape} vs ref {ref.shape}")
    spacing = _as_spacing(spacing)
    window = _union_window(pred, ref)
    if window is None:
        return dict(dice=1.0, rms_dta_mm=0.0, assd_mm=0.0, hd95_mm=0.0, hd_mm=0.0, nsd=1.0,
                    failed=False)
    cp, cr = pred[window], ref[window]
    size_p, size_r = int(np.count_nonzero(cp)), int(np.count_nonzero(cr))
    if size_p == 0 or size_r == 0:
        nan = math.nan
        return dict(dice=0.0, rms_dta_mm=nan, assd_mm=nan, hd95_mm=nan, hd_mm=nan, nsd=nan,
                    failed=True)
    table = _offset_table(*spacing, _TABLE_OFFSETS, _TABLE_MAX_REACH)
    bd = _boundaries(cp, cr, table)
    off_p, d2_p, off_r, d2_r = _boundary_distances(bd, table, spacing)
    n = off_p.size + off_r.size
    d_p, d_r = np.sqrt(d2_p), np.sqrt(d2_r)
    limit = nsd_tolerance_mm + NSD_SLACK_MM
    within = np.count_nonzero(d_p <= limit) + np.count_nonzero(d_r <= limit)
    if limit >= 0:  # the pixels on both boundaries, at distance 0
        within += n - d_p.size - d_r.size
    return dict(
        dice=2.0 * int(np.count_nonzero(cp & cr)) / (size_p + size_r),
        rms_dta_mm=math.sqrt((float(d2_p.sum()) + float(d2_r.sum())) / n),
        assd_mm=(float(d_p.sum()) + float(d_r.sum())) / n,
        hd95_mm=max(_percentile(d_p, off_p.size, 95), _percentile(d_r, off_r.size, 95)),
        hd_mm=max(float(d_p.max(initial=0.0)), float(d_r.max(initial=0.0))),
        nsd=float(within) / n,
        failed=False,
    )
