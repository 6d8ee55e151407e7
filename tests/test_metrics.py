"""Segmentation metrics against a brute-force reference built straight from docs/definitions.md."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from scipy.spatial.distance import cdist

from conftest import REAL_CT
from nnunet_xfer.evaluation.metrics import (METRIC_KEYS, boundary, directed_boundary_distances,
                                            segmentation_metrics)


def brute_boundary(mask: np.ndarray) -> np.ndarray:
    """Mask minus its 3×3 erosion, outside the image counting as outside the mask."""
    return mask & ~ndimage.binary_erosion(mask, np.ones((3, 3), bool), border_value=0)


def brute_metrics(pred: np.ndarray, ref: np.ndarray, spacing, tol: float = 2.0) -> dict:
    """Every pair of boundary pixels, nearest neighbour by full distance matrix."""
    sp = np.asarray(spacing, float)
    pa = np.argwhere(brute_boundary(pred)) * sp
    pb = np.argwhere(brute_boundary(ref)) * sp
    dist = cdist(pa, pb)
    d_ab, d_ba = dist.min(axis=1), dist.min(axis=0)
    u = np.concatenate([d_ab, d_ba])
    return dict(dice=2 * (pred & ref).sum() / (pred.sum() + ref.sum()),
                rms_dta_mm=math.sqrt((u ** 2).mean()), assd_mm=u.mean(),
                hd95_mm=max(np.percentile(d_ab, 95), np.percentile(d_ba, 95)), hd_mm=u.max(),
                nsd=(u <= tol + 1e-9).mean(), d_ab=d_ab, d_ba=d_ba)


def assert_matches_brute(pred, ref, spacing, tol=2.0):
    ours = segmentation_metrics(pred, ref, spacing, nsd_tolerance_mm=tol)
    want = brute_metrics(pred, ref, spacing, tol)
    assert set(ours) == set(METRIC_KEYS)
    assert ours["failed"] is False
    for key in ("rms_dta_mm", "assd_mm", "hd95_mm", "hd_mm"):
        assert ours[key] == pytest.approx(want[key], abs=1e-6), key
    assert ours["dice"] == pytest.approx(want["dice"], abs=1e-12)
    assert ours["nsd"] == pytest.approx(want["nsd"], abs=1e-12)
    d_ab, d_ba = directed_boundary_distances(pred, ref, spacing)
    np.testing.assert_allclose(d_ab, want["d_ab"], atol=1e-6)
    np.testing.assert_allclose(d_ba, want["d_ba"], atol=1e-6)


@st.composite
def mask_pairs(draw):
    rows, cols = draw(st.integers(1, 20)), draw(st.integers(1, 20))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(2):
        kind = draw(st.sampled_from(["noise", "blob", "pixel", "full"]))
        if kind == "noise":
            m = rng.random((rows, cols)) < draw(st.floats(0.05, 0.95))
        elif kind == "blob":  # smooth shapes, often touching the border
            m = ndimage.gaussian_filter(rng.random((rows, cols)), 1.5) > 0.5
        elif kind == "pixel":
            m = np.zeros((rows, cols), bool)
            m[rng.integers(rows), rng.integers(cols)] = True
        else:
            m = np.ones((rows, cols), bool)
        if not m.any():
            m[rng.integers(rows), rng.integers(cols)] = True
        masks.append(m)
    spacing = (draw(st.floats(0.1, 5.0)), draw(st.floats(0.1, 5.0)))
    tol = draw(st.floats(0.0, 10.0))
    return masks[0], masks[1], spacing, tol


@settings(max_examples=300, deadline=None, derandomize=True)
@given(mask_pairs())
def test_metrics_match_brute_force(pair):
    pred, ref, spacing, tol = pair
    assert_matches_brute(pred, ref, spacing, tol)


def test_metrics_match_brute_force_on_large_shapes_far_apart():
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:120, :90]
    ring = ((yy - 60) ** 2 / 50 ** 2 + (xx - 45) ** 2 / 40 ** 2 < 1) & \
           ((yy - 60) ** 2 / 35 ** 2 + (xx - 45) ** 2 / 25 ** 2 > 1)
    noisy = ring ^ (ndimage.gaussian_filter(rng.random(ring.shape), 2) > 0.6)
    corner = np.zeros_like(ring)
    corner[:4, -3:] = True  # touches two image borders, far from the ring
    assert_matches_brute(noisy, ring, (0.78, 1.3))
    assert_matches_brute(noisy | corner, ring, (2.5, 0.4))


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**32 - 1))
def test_boundary_is_mask_minus_erosion_with_outside_as_background(rows, cols, seed):
    mask = np.random.default_rng(seed).random((rows, cols)) < 0.7
    np.testing.assert_array_equal(boundary(mask), brute_boundary(mask))


def test_full_image_mask_boundary_is_the_image_frame():
    b = boundary(np.ones((5, 6), bool))
    assert b.sum() == 2 * 5 + 2 * 6 - 4
    assert not b[1:-1, 1:-1].any()


def test_two_single_pixels_hand_computed():
    pred = np.zeros((8, 8), bool)
    ref = np.zeros((8, 8), bool)
    pred[0, 0] = True
    ref[3, 4] = True
    m = segmentation_metrics(pred, ref, (2.0, 0.5))
    d = math.sqrt((3 * 2.0) ** 2 + (4 * 0.5) ** 2)
    assert m["dice"] == 0.0 and m["failed"] is False
    for key in ("rms_dta_mm", "assd_mm", "hd95_mm", "hd_mm"):
        assert m[key] == pytest.approx(d)
    assert m["nsd"] == 0.0
    assert segmentation_metrics(pred, ref, (2.0, 0.5), nsd_tolerance_mm=d)["nsd"] == 1.0


def test_shifted_square_hand_computed():
    ref = np.zeros((20, 20), bool)
    ref[5:15, 5:15] = True
    pred = np.roll(ref, 2, axis=1)  # 2 columns to the right, 0.5 mm columns
    m = segmentation_metrics(pred, ref, (1.0, 0.5), nsd_tolerance_mm=0.5)
    assert m["dice"] == pytest.approx(2 * 80 / 200)
    assert m["hd_mm"] == pytest.approx(1.0)  # left/right edges move 2 × 0.5 mm
    # 36 boundary pixels each. From pred to ref: its trailing edge (10 px) is 2 columns = 1.0 mm
    # from ref's; its leading edge lies inside ref, where rows 6..13 are 1.0 mm from ref's edge
    # (2 columns, or 1 row to ref's top/bottom) and rows 5, 14 lie on ref's top/bottom; the two
    # top/bottom-row pixels one column past ref are 0.5 mm away; the other 16 lie on ref's boundary.
    # Mirror-symmetric the other way.
    d = np.array([1.0] * 18 + [0.5] * 2 + [0.0] * 16)
    assert m["assd_mm"] == pytest.approx(d.mean())
    assert m["rms_dta_mm"] == pytest.approx(math.sqrt((d ** 2).mean()))
    assert m["nsd"] == pytest.approx((d <= 0.5).mean())


def test_identical_masks():
    ref = np.zeros((10, 10), bool)
    ref[2:7, 3:9] = True
    m = segmentation_metrics(ref, ref.copy(), (0.7, 0.7))
    assert m == dict(dice=1.0, rms_dta_mm=0.0, assd_mm=0.0, hd95_mm=0.0, hd_mm=0.0, nsd=1.0,
                     failed=False)


def test_empty_mask_conventions():
    empty = np.zeros((6, 6), bool)
    full = empty.copy()
    full[2:4, 2:4] = True
    both = segmentation_metrics(empty, empty, (1.0, 1.0))
    assert both == dict(dice=1.0, rms_dta_mm=0.0, assd_mm=0.0, hd95_mm=0.0, hd_mm=0.0, nsd=1.0,
                        failed=False)
    for pred, ref in ((empty, full), (full, empty)):
        one = segmentation_metrics(pred, ref, (1.0, 1.0))
        assert one["dice"] == 0.0 and one["failed"] is True
        assert all(math.isnan(one[k]) for k in ("rms_dta_mm", "assd_mm", "hd95_mm", "hd_mm", "nsd"))
    with pytest.raises(ValueError):
        directed_boundary_distances(empty, full, (1.0, 1.0))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="differ"):
        segmentation_metrics(np.ones((3, 3)), np.ones((3, 4)), (1, 1))
    with pytest.raises(ValueError, match="2D"):
        segmentation_metrics(np.ones((2, 3, 3)), np.ones((2, 3, 3)), (1, 1))


LITS_LABELS = REAL_CT / "lits029" / "lits029_L3_mask_labels.png"


@pytest.mark.skipif(not LITS_LABELS.exists(), reason="shared/real_ct not present")
def test_real_lits_muscle_shifted_against_itself():
    from PIL import Image
    muscle = np.asarray(Image.open(LITS_LABELS)) == 1
    assert muscle.shape == (512, 512) and muscle.sum() > 5000
    spacing = (0.78, 0.78)
    shifted = np.roll(muscle, (2, -3), axis=(0, 1))
    m = segmentation_metrics(shifted, muscle, spacing)
    # Every boundary pixel of a shifted mask has its unshifted twin on the other boundary.
    assert 0 < m["hd_mm"] <= math.hypot(2, 3) * 0.78 + 1e-9
    assert 0.5 < m["dice"] < 1.0 and 0 < m["nsd"] < 1.0
    assert_matches_brute(shifted, muscle, spacing)
    # Symmetric in its summaries (not in its directed sets).
    back = segmentation_metrics(muscle, shifted, spacing)
    for key in ("dice", "rms_dta_mm", "assd_mm", "hd95_mm", "hd_mm", "nsd"):
        assert back[key] == pytest.approx(m[key], abs=1e-9)


def test_directed_distances_agree_with_medpy_where_definitions_match():
    """medpy with connectivity=2 uses the same boundary and pixel-centre distances."""
    medpy = pytest.importorskip("medpy.metric.binary")
    rng = np.random.default_rng(3)
    ref = ndimage.gaussian_filter(rng.random((60, 70)), 3) > 0.5
    pred = ndimage.binary_dilation(ref, iterations=2) ^ (rng.random(ref.shape) < 0.02)
    spacing = (0.9, 1.7)
    m = segmentation_metrics(pred, ref, spacing)
    assert m["hd_mm"] == pytest.approx(medpy.hd(pred, ref, spacing, connectivity=2), abs=1e-9)
    # medpy's ASD is our mean of d(pred→ref) alone
    d_pr, _ = directed_boundary_distances(pred, ref, spacing)
    assert d_pr.mean() == pytest.approx(medpy.asd(pred, ref, spacing, connectivity=2), abs=1e-9)
