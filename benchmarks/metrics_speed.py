"""Time per 512×512 mask pair: our `segmentation_metrics` against today's main kernel, DeepMind's
surface-distance and medpy, each computing the same set (Dice, RMS DTA, ASSD, HD95), same pairs,
same run.

Run from the repository root: ``python benchmarks/metrics_speed.py [--repeats 7]`` (the comparison
tools are the ``bench`` extra: ``pip install surface-distance medpy``; a tool that is not
installed is left out and said so).

Pairs: the LiTS029 L3 expert muscle mask (label 1 of ../shared/real_ct/lits029, assumed 0.78 mm
pixels) when present, else the phantom's subject 0 at 512², as the reference, against 8
perturbations — dilated 1 px, eroded 1 px, shifted (2, -3) px, rotated 3°, smooth random boundary
noise (±1.5 px), a hole (radius 6 px) in the thickest muscle, a false-positive blob 60 px away,
and a gross miss (shifted by (10, -8) px, the hardest case for a search that follows the
boundary) — each at isotropic spacing and at an anisotropic (0.70, 0.95) mm. One timed call of a tool runs
all pairs; the tools alternate in every round with the order rotated (see benchmarks/_bench.py).

What each tool computes (the same four quantities, each from one pass of its distance routine):
- ``ours``: `nnunet_xfer.evaluation.metrics.segmentation_metrics` (also HD, NSD);
- ``main_kernel``: the k-d tree kernel this module replaced, copied below verbatim in its logic;
- ``surface-distance``: `compute_surface_distances` once, then its own Dice, average surface
  distance (mean of the two directions, contour-length weighted), robust Hausdorff at 95, and the
  RMS of its distances; its boundary is the contour between pixels (2×2 neighbourhoods), so its
  values differ from ours by a fraction of a pixel;
- ``medpy``: its surface-distance routine ``__surface_distances`` once per direction (the work
  inside its public ``asd``/``hd95``; calling ``assd`` and ``hd95`` would double it), then our
  definitions — with ``connectivity=2`` its boundary is ours, so its values must equal ours.
seg-metrics is not compared: it has no RMS distance-to-agreement, and it computes its
SimpleITK distance maps over the whole image for every call of `write_metrics`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _bench import interleaved, machine, machine_report, pin_threads

pin_threads(1)

import numpy as np  # noqa: E402  (after pin_threads)
from scipy import ndimage  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402

from nnunet_xfer.evaluation.metrics import segmentation_metrics  # noqa: E402

LITS = Path(__file__).resolve().parents[2] / "shared" / "real_ct" / "lits029" / \
    "lits029_L3_mask_labels.png"
ISOTROPIC_MM = 0.78
ANISOTROPIC_MM = (0.70, 0.95)
KEYS = ("dice", "rms_dta_mm", "assd_mm", "hd95_mm")


# ---------------------------------------------------------------- inputs

def reference_mask(labels: Path = LITS) -> tuple[np.ndarray, float, str]:
    """(reference mask, isotropic spacing, description)."""
    if labels.exists():
        from PIL import Image
        return np.asarray(Image.open(labels)) == 1, ISOTROPIC_MM, f"{labels.name} label 1 (muscle)"
    from nnunet_xfer.phantom.subject import make_subject
    subject = make_subject(0, size=512, seed=0)
    return subject.mask.astype(bool), subject.spacing[0], "phantom subject 0 (no ../shared)"


def perturbations(ref: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Realistic and adversarial predictions of ``ref`` (each a 512² bool mask)."""
    rng = np.random.default_rng(seed)
    square = np.ones((3, 3), bool)
    inside = ndimage.distance_transform_edt(ref)
    signed = inside - ndimage.distance_transform_edt(~ref)
    noise = ndimage.gaussian_filter(rng.standard_normal(ref.shape), 4.0)
    noise *= 1.5 / np.abs(noise).max()
    yy, xx = np.mgrid[:ref.shape[0], :ref.shape[1]]
    cy, cx = np.unravel_index(np.argmax(inside), ref.shape)
    rows, cols = np.flatnonzero(ref.any(axis=1)), np.flatnonzero(ref.any(axis=0))
    by, bx = max(rows[0] - 60, 8), (cols[0] + cols[-1]) // 2
    blob = (yy - by) ** 2 + (xx - bx) ** 2 <= 6 ** 2
    return {
        "dilate 1px": ndimage.binary_dilation(ref, square),
        "erode 1px": ndimage.binary_erosion(ref, square),
        "shift (2,-3)": np.roll(ref, (2, -3), axis=(0, 1)),
        "rotate 3°": ndimage.rotate(ref.astype(np.float32), 3.0, reshape=False, order=1) > 0.5,
        "boundary noise": signed + noise > 0,
        "hole r=6px": ref & ((yy - cy) ** 2 + (xx - cx) ** 2 > 6 ** 2),
        "blob 60px away": ref | blob,
        "missed by (10,-8)px": np.roll(ref, (10, -8), axis=(0, 1)),
    }


# ---------------------------------------------------------------- today's main kernel

def _main_boundary_of_padded(m):
    rows = m[:-2] & m[1:-1] & m[2:]
    eroded = rows[:, :-2] & rows[:, 1:-1] & rows[:, 2:]
    return m[1:-1, 1:-1] & ~eroded


def _main_nearest(pts_from, only_from, pts_to):
    dist = np.zeros(len(pts_from))
    if only_from.any():
        tree = cKDTree(pts_to, balanced_tree=False, compact_nodes=False)
        dist[only_from] = tree.query(pts_from[only_from])[0]
    return dist


def main_kernel(pred: np.ndarray, ref: np.ndarray, spacing, nsd_tolerance_mm: float = 2.0) -> dict:
    """`segmentation_metrics` as on main before this change (crop, boundaries by shifts, k-d tree
    per direction, np.percentile), for two non-empty bool masks."""
    union = pred | ref
    rows = np.flatnonzero(union.any(axis=1))
    cols = np.flatnonzero(union.any(axis=0))
    window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    a, b = np.pad(pred[window], 1), np.pad(ref[window], 1)
    edge_a, edge_b = _main_boundary_of_padded(a), _main_boundary_of_padded(b)
    scale = np.asarray(spacing, dtype=np.float64).reshape(1, 2)
    pts_a, pts_b = np.argwhere(edge_a) * scale, np.argwhere(edge_b) * scale
    d_pr = _main_nearest(pts_a, ~edge_b[edge_a], pts_b)
    d_rp = _main_nearest(pts_b, ~edge_a[edge_b], pts_a)
    u = np.concatenate([d_pr, d_rp])
    total = int(pred.sum()) + int(ref.sum())
    return dict(dice=2.0 * int(np.count_nonzero(pred & ref)) / total,
                rms_dta_mm=float(np.sqrt(np.mean(u ** 2))), assd_mm=float(np.mean(u)),
                hd95_mm=float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))),
                hd_mm=float(u.max()),
                nsd=float(np.count_nonzero(u <= nsd_tolerance_mm + 1e-9) / u.size))


# ---------------------------------------------------------------- the other tools

def _our_quantities(d_pr: np.ndarray, d_rp: np.ndarray) -> dict:
    u = np.concatenate([d_pr, d_rp])
    return dict(rms_dta_mm=float(np.sqrt(np.mean(u ** 2))), assd_mm=float(np.mean(u)),
                hd95_mm=float(max(np.percentile(d_pr, 95), np.percentile(d_rp, 95))))


def tools() -> tuple[dict, list[str]]:
    """name → fn(pred, ref, spacing) returning at least the four KEYS; and the tools missing."""
    found = {"ours": lambda p, r, s: segmentation_metrics(p, r, s), "main_kernel": main_kernel}
    missing = []
    try:
        import surface_distance as sd

        def deepmind(p, r, s):
            d = sd.compute_surface_distances(r, p, s)
            a_rp, a_pr = sd.compute_average_surface_distance(d)
            dist = np.concatenate([d["distances_gt_to_pred"], d["distances_pred_to_gt"]])
            area = np.concatenate([d["surfel_areas_gt"], d["surfel_areas_pred"]])
            return dict(dice=sd.compute_dice_coefficient(r, p),
                        rms_dta_mm=float(np.sqrt(np.sum(area * dist ** 2) / np.sum(area))),
                        assd_mm=(a_rp + a_pr) / 2, hd95_mm=sd.compute_robust_hausdorff(d, 95))
        found["surface-distance"] = deepmind
    except ImportError:
        missing.append("surface-distance")
    try:
        from medpy.metric import binary as mb
        surface = getattr(mb, "__surface_distances")

        def medpy(p, r, s):
            values = _our_quantities(surface(p, r, s, 2), surface(r, p, s, 2))
            return dict(dice=mb.dc(p, r), **values)
        found["medpy"] = medpy
    except ImportError:
        missing.append("medpy")
    return found, missing


# ---------------------------------------------------------------- run

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds (>= 5)")
    parser.add_argument("--labels", type=Path, default=LITS,
                        help="label PNG whose label 1 is the reference (default: LiTS029 in "
                             "../shared/real_ct next to the repository; phantom if absent)")
    args = parser.parse_args()
    info = machine()
    ref, iso, what = reference_mask(args.labels)
    preds = perturbations(ref)
    spacings = {"iso": (iso, iso), "aniso": ANISOTROPIC_MM}
    pairs = [(f"{name} @{sname}", p, sp) for sname, sp in spacings.items()
             for name, p in preds.items()]
    found, missing = tools()

    per_pair: dict[tuple[str, str], list[float]] = {}

    def run_all(name: str, fn):
        def call():
            for label, p, sp in pairs:
                c0 = time.process_time()
                fn(p, ref, sp)
                per_pair.setdefault((name, label), []).append(time.process_time() - c0)
        return call

    print(machine_report(info))
    print(f"reference: {what}, {ref.shape[0]}×{ref.shape[1]}, {int(ref.sum())} px; "
          f"{len(preds)} perturbations × spacings {spacings['iso']} and {spacings['aniso']} mm "
          f"= {len(pairs)} pairs per call" + (f"; not installed: {', '.join(missing)}"
                                              if missing else ""))
    res = interleaved({n: run_all(n, f) for n, f in found.items()}, repeats=args.repeats)
    print()
    print(res.table(baseline="ours", per=len(pairs), unit="ms per pair (mean over the pairs "
                                                          "of one call)"))

    print("\nCPU ms per pair, median over rounds (warm-up excluded):\n")
    print("| pair | " + " | ".join(found) + " |\n| --- |" + " ---: |" * len(found))
    for label, _, _ in pairs:
        cells = [f"{1000 * float(np.median(per_pair[(n, label)][-args.repeats:])):.2f}"
                 for n in found]
        print(f"| {label} | " + " | ".join(cells) + " |")

    print("\nValues (mm) on each pair; max |ours − tool| over all pairs in the last row:\n")
    print("| pair | tool | " + " | ".join(KEYS) + " |\n| --- | --- |" + " ---: |" * len(KEYS))
    worst = {n: 0.0 for n in found}
    for label, p, sp in pairs:
        ours = found["ours"](p, ref, sp)
        for n, fn in found.items():
            v = fn(p, ref, sp)
            worst[n] = max(worst[n], max(abs(float(v[k]) - ours[k]) for k in KEYS))
            if label.endswith("@iso"):
                print(f"| {label} | {n} | " + " | ".join(f"{float(v[k]):.4f}" for k in KEYS) + " |")
    for n in found:
        print(f"| all pairs | {n}: max abs diff to ours | {worst[n]:.2e} |" + " |" * (len(KEYS) - 1))


if __name__ == "__main__":
    sys.exit(main())
