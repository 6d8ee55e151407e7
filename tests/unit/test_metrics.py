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
from nnunet_xfer.evaluation import metrics as metrics_module
from nnunet_xfer.evaluation.metrics import (METRIC_KEYS, boundary, directed_boundary_distances,
                                            segmentation_metrics)

#: Agreement demanded with the brute force (mm): exact up to float rounding.
EXACT_MM = 1e-9


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
        assert ours[key] == pytest.approx(want[key], abs=EXACT_MM), key
        assert type(ours[key]) is float, key
    assert ours["dice"] == pytest.approx(want["dice"], abs=1e-12)
    assert ours["nsd"] == pytest.approx(want["nsd"], abs=1e-12)
    assert type(ours["dice"]) is float and type(ours["nsd"]) is float
    d_ab, d_ba = directed_boundary_distances(pred, ref, spacing)
    np.testing.assert_allclose(d_ab, want["d_ab"], rtol=0, atol=EXACT_MM)
    np.testing.assert_allclose(d_ba, want["d_ba"], rtol=0, atol=EXACT_MM)


def assert_matches_conventions(pred, ref, spacing, tol=2.0):
    """Brute force where both masks have pixels; the documented conventions where one or both
    are empty."""
    if pred.any() and ref.any():
        assert_matches_brute(pred, ref, spacing, tol)
        return
    m = segmentation_metrics(pred, ref, spacing, nsd_tolerance_mm=tol)
    if not pred.any() and not ref.any():
        assert m == dict(dice=1.0, rms_dta_mm=0.0, assd_mm=0.0, hd95_mm=0.0, hd_mm=0.0, nsd=1.0,
                         failed=False)
    else:
        assert m["dice"] == 0.0 and m["failed"] is True
        assert all(math.isnan(m[k]) for k in ("rms_dta_mm", "assd_mm", "hd95_mm", "hd_mm", "nsd"))


@st.composite
def mask_pairs(draw, max_side: int = 20, allow_empty: bool = False):
    rows, cols = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kinds = ["noise", "blob", "pixel", "full", "edge", "far"] + (["empty"] if allow_empty else [])
    masks = []
    for _ in range(2):
        kind = draw(st.sampled_from(kinds))
        if kind == "noise":
            m = rng.random((rows, cols)) < draw(st.floats(0.05, 0.95))
        elif kind == "blob":  # smooth shapes, often touching the border
            m = ndimage.gaussian_filter(rng.random((rows, cols)), 1.5) > 0.5
        elif kind == "pixel":
            m = np.zeros((rows, cols), bool)
            m[rng.integers(rows), rng.integers(cols)] = True
        elif kind == "edge":  # a strip along one image edge
            m = np.zeros((rows, cols), bool)
            side, depth = rng.integers(4), 1 + rng.integers(3)
            (m[:depth], m[-depth:], m[:, :depth], m[:, -depth:])[side][...] = True
        elif kind == "far":  # a small square in one corner, the other mask tends to be elsewhere
            m = np.zeros((rows, cols), bool)
            m[-1 - rng.integers(2):, -1 - rng.integers(2):] = True
        elif kind == "empty":
            m = np.zeros((rows, cols), bool)
        else:
            m = np.ones((rows, cols), bool)
        if kind != "empty" and not m.any():
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


@settings(max_examples=150, deadline=None, derandomize=True)
@given(mask_pairs(max_side=70, allow_empty=True))
def test_metrics_match_brute_force_larger_masks_and_empty_ones(pair):
    pred, ref, spacing, tol = pair
    assert_matches_conventions(pred, ref, spacing, tol)


#: Settings that force each path of the search: the whole (tiny) offset table then all pairs for
#: what is left, the table then a k-d tree, a k-d tree alone, all pairs alone. Chunks of one probe
#: also split runs of equally long offsets across chunks.
SEARCH_PATHS = {
    "table, then all pairs": dict(_TABLE_OFFSETS=12, _MIN_CHUNK_PROBES=1, _KD_BUILD_COST=10**12,
                                  _KD_QUERY_COST=10**12, _PAIR_COST=10**9),
    "table, then k-d tree": dict(_TABLE_OFFSETS=12, _MIN_CHUNK_PROBES=1, _PAIR_COST=10**9),
    "k-d tree only": dict(_TABLE_OFFSETS=0, _PAIR_COST=10**9),
    "all pairs only": dict(_TABLE_OFFSETS=0, _KD_BUILD_COST=10**12, _KD_QUERY_COST=10**12),
}


@pytest.mark.parametrize("path", SEARCH_PATHS)
@settings(max_examples=60, deadline=None, derandomize=True)
@given(pair=mask_pairs(max_side=40))
def test_every_search_path_matches_brute_force(path, pair):
    pred, ref, spacing, tol = pair
    with pytest.MonkeyPatch.context() as mp:
        for name, value in SEARCH_PATHS[path].items():
            mp.setattr(metrics_module, name, value)
        assert_matches_brute(pred, ref, spacing, tol)


@pytest.mark.parametrize("path", SEARCH_PATHS)
def test_search_paths_are_the_ones_named(path, monkeypatch):
    """Each setting above reaches the path it names (else the test above proves less)."""
    ref = np.zeros((60, 60), bool)
    ref[5:15, 5:15] = True
    pred = np.roll(ref, 1, axis=1)       # boundary pixels 1 px off: found in any table
    pred[45:50, 45:50] = True            # ~40 px away: beyond a 12-offset table
    exact_sizes, trees = [], []
    real_exact, real_tree = metrics_module._exact_d2, metrics_module._kd_nearest
    monkeypatch.setattr(metrics_module, "_exact_d2",
                        lambda src, *a: exact_sizes.append(src.size) or real_exact(src, *a))
    monkeypatch.setattr(metrics_module, "_kd_nearest",
                        lambda *a, **k: trees.append(1) or real_tree(*a, **k))
    for name, value in SEARCH_PATHS[path].items():
        monkeypatch.setattr(metrics_module, name, value)
    assert_matches_brute(pred, ref, (0.8, 0.8))
    d_pr, d_rp = directed_boundary_distances(pred, ref, (0.8, 0.8))
    off_boundary = int(np.count_nonzero(d_pr)) + int(np.count_nonzero(d_rp))
    exact_sizes.clear(), trees.clear()
    segmentation_metrics(pred, ref, (0.8, 0.8))
    assert bool(trees) == ("k-d tree" in path)
    if path.startswith("table"):
        assert 0 < sum(exact_sizes) < off_boundary   # the table found the near ones
    else:
        assert sum(exact_sizes) == off_boundary


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.floats(0.05, 20.0), st.floats(0.05, 20.0), st.sampled_from([0, 1, 8, 100, 2000]))
def test_offset_table_holds_every_offset_up_to_its_radius_in_order(sr, sc, size):
    """The exactness argument of the search: the table is sorted by length and complete."""
    reach = 64
    t = metrics_module._offset_table(sr, sc, size, reach)
    assert np.all(np.diff(t.d2) >= 0)
    np.testing.assert_array_equal(t.d2, (t.dr * sr) ** 2 + (t.dc * sc) ** 2)
    assert len(set(zip(t.dr.tolist(), t.dc.tolist()))) == t.d2.size and 0 not in t.d2
    assert t.reach_r <= reach and t.reach_c <= reach
    assert t.d2.size <= max(4 * size, 64)  # no blow-up (ties and anisotropy may pass the target)
    dr, dc = np.mgrid[-reach - 2:reach + 3, -reach - 2:reach + 3]
    d2 = (dr * sr) ** 2 + (dc * sc) ** 2
    radius2 = t.d2[-1] if t.d2.size else 0.0
    assert t.d2.size == np.count_nonzero((d2 <= radius2) & (d2 > 0))


@pytest.mark.parametrize("n", [1, 2, 3, 20, 21, 41, 61, 101, 1000])
@pytest.mark.parametrize("zeros_share", [0.0, 0.5, 0.94, 0.95, 0.96, 1.0])
def test_percentile_matches_numpy_bit_for_bit(n, zeros_share):
    rng = np.random.default_rng(n)
    values = rng.random(n) * 5 + 0.1
    values[: int(round(zeros_share * n))] = 0.0
    rng.shuffle(values)
    for q in (0, 50, 95, 99, 100):
        got = metrics_module._percentile(values[values > 0], n, q)
        assert got == float(np.percentile(values, q)), (n, zeros_share, q)


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


def l3_like_perturbations(ref: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Predictions a model might make of ``ref``: near misses, a hole, a far false positive,
    and gross failures far beyond the search table."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:ref.shape[0], :ref.shape[1]]
    inside = ndimage.distance_transform_edt(ref)
    cy, cx = np.unravel_index(np.argmax(inside), ref.shape)
    noise = ndimage.gaussian_filter(rng.standard_normal(ref.shape), 4.0)
    signed = inside - ndimage.distance_transform_edt(~ref)
    return {
        "dilate": ndimage.binary_dilation(ref, np.ones((3, 3), bool), iterations=2),
        "erode": ndimage.binary_erosion(ref, np.ones((3, 3), bool)),
        "rotate": ndimage.rotate(ref.astype(np.float32), 4.0, reshape=False, order=1) > 0.5,
        "noise": signed + 1.5 * noise / np.abs(noise).max() > 0,
        "hole": ref & ((yy - cy) ** 2 + (xx - cx) ** 2 > 7 ** 2),
        "far blob": ref | ((yy - 8) ** 2 + (xx - 500) ** 2 <= 5 ** 2),
        "shifted 40 px": np.roll(ref, (40, -30), axis=(0, 1)),
    }


def synthetic_l3_ring() -> np.ndarray:
    yy, xx = np.mgrid[:512, :512]
    outer = (yy - 260) ** 2 / 150 ** 2 + (xx - 256) ** 2 / 210 ** 2 < 1
    inner = (yy - 265) ** 2 / 125 ** 2 + (xx - 256) ** 2 / 180 ** 2 < 1
    back = (yy - 360) ** 2 / 45 ** 2 + (xx - 256) ** 2 / 90 ** 2 < 1
    return (outer & ~inner) | back


@pytest.mark.parametrize("spacing", [(0.78, 0.78), (0.7, 0.95)])
def test_512_l3_like_ring_against_its_perturbations(spacing):
    ref = synthetic_l3_ring()
    for name, pred in l3_like_perturbations(ref).items():
        assert_matches_brute(pred, ref, spacing)
        assert_matches_brute(ref, pred, spacing)


@pytest.mark.skipif(not LITS_LABELS.exists(), reason="shared/real_ct not present")
def test_real_lits_muscle_against_its_perturbations():
    from PIL import Image
    muscle = np.asarray(Image.open(LITS_LABELS)) == 1
    for spacing in ((0.78, 0.78), (0.7, 0.95)):
        for name, pred in l3_like_perturbations(muscle).items():
            assert_matches_brute(pred, muscle, spacing)


def test_input_types_and_layouts_give_the_same_metrics():
    ref = synthetic_l3_ring()[100:300, 40:203]           # odd width: no 8-pixel row words
    pred = ndimage.binary_dilation(ref) & ~ndimage.binary_erosion(ref, iterations=5)
    want = segmentation_metrics(pred, ref, (0.9, 0.6))
    assert_matches_brute(pred, ref, (0.9, 0.6))
    variants = {
        "uint8 labels": (pred.astype(np.uint8), ref.astype(np.uint8)),
        "float": (pred.astype(np.float32), ref.astype(np.float64)),
        "strided views": (np.pad(pred, 3)[3:-3, 3:-3], np.repeat(ref, 2, axis=1)[:, ::2]),
    }
    for name, (p, r) in variants.items():
        assert segmentation_metrics(p, r, (0.9, 0.6)) == want, name
    # Transposed (Fortran-ordered) masks, 8-pixel-multiple width: the same metrics, axes swapped.
    p, r = np.ascontiguousarray(pred[:, :160]), np.ascontiguousarray(ref[:, :160])
    assert segmentation_metrics(p.T, r.T, (0.6, 0.9)) == pytest.approx(
        segmentation_metrics(p, r, (0.9, 0.6)), abs=1e-12)


@pytest.mark.parametrize("spacing", [(0.0, 1.0), (1.0, -0.5), (math.nan, 1.0), (1.0, math.inf)])
def test_bad_spacing_raises(spacing):
    a = np.zeros((5, 5), bool)
    a[1:3, 1:3] = True
    with pytest.raises(ValueError, match="spacing"):
        segmentation_metrics(a, a, spacing)
    with pytest.raises(ValueError, match="spacing"):
        directed_boundary_distances(a, a, spacing)


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
