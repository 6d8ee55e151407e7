"""Milliseconds per 512×512 mask pair: `segmentation_metrics` vs DeepMind's surface-distance, medpy
and seg-metrics (each only if installed: `pip install -e .[bench]`), same inputs, same run.

Run by hand: `.venv/bin/python benchmarks/metrics_speed.py [--repeats 30]`. Prints a Markdown table
of median wall-clock and CPU ms per pair and each tool's time as a multiple of ours, then the values
each tool gives for the same pair, so definitions can be compared.

The mask pair: the phantom's subject 0 at 512² (reference) and simulated observer 1's outline of it
(prediction); else the LiTS029 muscle label from ../shared/real_ct and a copy shifted by (1, 2) px
and dilated by 1 px; else a synthetic ring and a shifted copy.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from nnunet_xfer.evaluation.metrics import directed_boundary_distances, segmentation_metrics

LITS = Path(__file__).resolve().parents[2] / "shared" / "real_ct" / "lits029" / \
    "lits029_L3_mask_labels.png"
TOLERANCE_MM = 2.0


def mask_pair() -> tuple[np.ndarray, np.ndarray, tuple[float, float], str]:
    """(prediction, reference, spacing, description) for one realistic 512² L3 pair."""
    try:
        from nnunet_xfer.phantom.observers import observer_mask, observer_rng, observer_style
        from nnunet_xfer.phantom.subject import make_subject
        subject = make_subject(0, size=512, seed=0)
        pred = observer_mask(subject, observer_style(0), observer_rng(0, 0, 0)).astype(bool)
        return pred, subject.mask.astype(bool), subject.spacing, "phantom subject 0 vs observer 1"
    except ImportError:
        pass
    if LITS.exists():
        from PIL import Image
        ref = np.asarray(Image.open(LITS)) == 1
        pred = ndimage.binary_dilation(np.roll(ref, (1, 2), axis=(0, 1)))
        return pred, ref, (0.78, 0.78), "LiTS029 muscle vs shifted+dilated copy"
    yy, xx = np.mgrid[:512, :512]
    ell = (yy - 256) ** 2 / 180 ** 2 + (xx - 256) ** 2 / 230 ** 2
    ref = (ell < 1) & (ell > 0.6)
    return np.roll(ref, (1, 2), axis=(0, 1)), ref, (0.78, 0.78), "synthetic ring vs shifted copy"


def tools(spacing: tuple[float, float]) -> dict:
    """name → function(pred, ref) returning a dict of the metrics that tool has."""
    out = {"nnunet_xfer": lambda p, r: segmentation_metrics(p, r, spacing, TOLERANCE_MM)}
    try:
        import surface_distance as sd

        def deepmind(p, r):
            s = sd.compute_surface_distances(r, p, spacing)
            asd_rp, asd_pr = sd.compute_average_surface_distance(s)
            return dict(dice=sd.compute_dice_coefficient(r, p),
                        hd95_mm=sd.compute_robust_hausdorff(s, 95),
                        hd_mm=sd.compute_robust_hausdorff(s, 100),
                        assd_mm=(asd_rp + asd_pr) / 2,
                        nsd=sd.compute_surface_dice_at_tolerance(s, TOLERANCE_MM))
        out["surface-distance (DeepMind)"] = deepmind
    except ImportError:
        pass
    try:
        from medpy.metric import binary as mb

        def medpy(p, r):
            return dict(dice=mb.dc(p, r), hd_mm=mb.hd(p, r, spacing, connectivity=2),
                        hd95_mm=mb.hd95(p, r, spacing, connectivity=2),
                        assd_mm=mb.assd(p, r, spacing, connectivity=2))
        out["medpy"] = medpy
    except ImportError:
        pass
    try:
        import seg_metrics.seg_metrics as sg

        def segmetrics(p, r):
            m = sg.write_metrics(labels=[1], gdth_img=r.astype(np.uint8), pred_img=p.astype(np.uint8),
                                 spacing=list(spacing), metrics=["dice", "hd", "hd95", "msd"])
            m = m[0] if isinstance(m, list) else m
            return dict(dice=m["dice"][0], hd_mm=m["hd"][0], hd95_mm=m["hd95"][0],
                        assd_mm=m["msd"][0])
        out["seg-metrics"] = segmetrics
    except ImportError:
        pass
    return out


def median_ms(fn, pred, ref, repeats: int) -> tuple[float, float]:
    """Median (wall ms, CPU ms) per call. CPU time (all threads of this process) is the fairer
    figure on a shared, loaded machine; tools slower than 1 s a call get 3 repeats."""
    t0 = time.perf_counter()
    fn(pred, ref)  # warm-up (imports, caches)
    if time.perf_counter() - t0 > 1.0:
        repeats = min(repeats, 3)
    wall, cpu = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn(pred, ref)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall) * 1000, statistics.median(cpu) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    pred, ref, spacing, what = mask_pair()
    d_pr, d_rp = directed_boundary_distances(pred, ref, spacing)
    print(f"pair: {what}; 512×512, spacing {spacing[0]:.3f} mm; boundary pixels "
          f"{d_pr.size} + {d_rp.size}; median of {args.repeats} calls\n")
    found = tools(spacing)
    ms = {name: median_ms(fn, pred, ref, args.repeats) for name, fn in found.items()}
    wall0, cpu0 = ms["nnunet_xfer"]
    print("| tool | wall ms per pair | × ours (wall) | CPU ms per pair | × ours (CPU) |\n"
          "| --- | ---: | ---: | ---: | ---: |")
    for name, (wall, cpu) in ms.items():
        print(f"| {name} | {wall:.2f} | {wall / wall0:.1f} | {cpu:.2f} | {cpu / cpu0:.1f} |")
    keys = ["dice", "rms_dta_mm", "assd_mm", "hd95_mm", "hd_mm", "nsd"]
    print("\n| tool | " + " | ".join(keys) + " |\n| --- |" + " ---: |" * len(keys))
    for name, fn in found.items():
        values = fn(pred, ref)
        cells = [f"{float(values[k]):.4f}" if k in values else "–" for k in keys]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
