"""Is the phantom calibrated? The no-learning threshold, the observers, the cohort, the time.

On the cohort ``nnunet-xfer phantom`` writes (seed 0, 40 cases, 10 observers × 20 cases) at each
``--sizes``, this measures and checks against the targets of issue 18:

* the HU threshold inside the body (``evaluation/threshold_baseline.py``) against the reference
  masks: mean Dice ≤ 0.70 and mean precision ≤ 0.60 (per case, then averaged; pooled too), also
  by subgroup (arms down, contrast phase, dose);
* observer vs reference Dice within 0.92–0.96 (the published L3 inter-observer range), and
  observer vs observer;
* the cohort's muscle measures as ``nnunet-xfer measure`` computes them on the reference masks
  (SMA and SMD within −29…+150 HU, SMI), heights, and muscle share of the body;
* generation time: CPU and wall time of ``write_cohort`` for the cohorts the project makes (the
  test fixture 24 × 64² with 3 observers × 6 cases, the demo's 40 × 128² with 10 × 20, the
  data-efficiency benchmark's 150 × 128² without observers, the default 40 × 512² with 10 × 20),
  ``--repeats`` rounds, order rotated each round. With ``--compare-with DIR`` (a checkout of
  another commit) the same cohorts are written by that tree's phantom in the same rounds,
  alternating, each in its own process (CPU time counted after the imports).

``--real IMAGE MASK`` also scores the threshold on a real L3 slice (a 2D or single-slice NIfTI in
HU and its label map; labels ``--real-labels``, default 1–4, count as muscle).

    python benchmarks/phantom_calibration.py                   # 64², 128², 512²; timing, 5 rounds
    python benchmarks/phantom_calibration.py --quick           # 64² and 128², 12 cases, no timing
    python benchmarks/phantom_calibration.py --compare-with /path/to/main --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import machine, machine_report, pin_threads

pin_threads(1)

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nnunet_xfer.evaluation.measures import muscle_measures  # noqa: E402
from nnunet_xfer.evaluation.threshold_baseline import body_mask, threshold_segmentation  # noqa: E402

#: Issue 18's targets.
MAX_THRESHOLD_DICE = 0.70
MAX_THRESHOLD_PRECISION = 0.60
OBSERVER_RANGE = (0.92, 0.96)
#: Cohorts timed: name → (cases, size, observers, observer cases).
COHORTS = {
    "test fixture": (24, 64, 3, 6),
    "demo": (40, 128, 10, 20),
    "data-efficiency benchmark": (150, 128, 0, 0),
    "default": (40, 512, 10, 20),
}


def overlap(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float, float]:
    """Dice, precision, recall of ``pred`` against ``ref``."""
    pred, ref = pred.astype(bool), ref.astype(bool)
    tp = float((pred & ref).sum())
    denom = pred.sum() + ref.sum()
    return (2 * tp / denom if denom else 1.0, tp / pred.sum() if pred.any() else 0.0,
            tp / ref.sum() if ref.any() else 1.0)


def describe(values) -> dict:
    v = np.asarray(values, float)
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min()), "p5": float(np.percentile(v, 5)),
            "p95": float(np.percentile(v, 95)), "max": float(v.max()), "n": int(v.size)}


def calibrate(size: int, n_cases: int, n_observers: int, n_observer_cases: int, seed: int) -> dict:
    """Every figure of one size (in memory; the same arrays ``write_cohort`` writes)."""
    from nnunet_xfer.phantom import make_subject, observer_mask, observer_style
    from nnunet_xfer.phantom.observers import observer_rng
    styles = [observer_style(k, seed) for k in range(n_observers)]
    rows, obs_ref, obs_obs = [], [], []
    for i in range(n_cases):
        s = make_subject(i, size=size, seed=seed)
        ref = s.mask.astype(bool)
        seg = threshold_segmentation(s.image)
        d, p, r = overlap(seg, ref)
        m = muscle_measures(s.image, ref, s.spacing, s.height_m)
        body = body_mask(s.image)
        rows.append({"dice": d, "precision": p, "recall": r, "tp": float((seg.astype(bool) & ref).sum()),
                     "pred": float(seg.sum()), "ref": float(ref.sum()),
                     "sma_cm2": m["sma_cm2"], "smd_hu": m["smd_hu"], "smi": m["smi_cm2_m2"],
                     "height_m": s.height_m, "muscle_share_of_body": float(ref.sum() / body.sum()),
                     "arms": bool(s.params.arms), "phase": s.params.phase,
                     "dose": s.params.scan["dose"], "sex": s.sex})
        if i < n_observer_cases:
            masks = [observer_mask(s, st, observer_rng(seed, k, i)) for k, st in enumerate(styles)]
            obs_ref += [overlap(o, ref)[0] for o in masks]
            obs_obs += [overlap(masks[a], masks[b])[0] for a in range(len(masks))
                        for b in range(a + 1, len(masks))]
    out = {"size": size, "cases": n_cases, "observers": n_observers,
           "observer_cases": n_observer_cases}
    for key in ("dice", "precision", "recall", "sma_cm2", "smd_hu", "smi", "height_m",
                "muscle_share_of_body"):
        out[key] = describe([r[key] for r in rows])
    tp, pred, ref = (sum(r[k] for r in rows) for k in ("tp", "pred", "ref"))
    out["pooled"] = {"dice": 2 * tp / (pred + ref), "precision": tp / pred, "recall": tp / ref}
    groups = {"arms down": lambda r: r["arms"], "arms raised": lambda r: not r["arms"]}
    for phase in ("none", "arterial", "portal"):
        groups[f"contrast {phase}"] = lambda r, ph=phase: r["phase"] == ph
    for dose in ("high", "standard", "low"):
        groups[f"dose {dose}"] = lambda r, d=dose: r["dose"] == d
    out["subgroups"] = {name: {"n": len(sel), "dice": float(np.mean([r["dice"] for r in sel])),
                               "precision": float(np.mean([r["precision"] for r in sel]))}
                        for name, test in groups.items() for sel in [[r for r in rows if test(r)]]
                        if sel}
    out["sexes"] = {s: sum(r["sex"] == s for r in rows) for s in ("F", "M")}
    if obs_ref:
        out["observer_vs_reference"] = describe(obs_ref)
        out["observer_vs_observer"] = describe(obs_obs)
    out["targets"] = {
        "threshold_dice": out["dice"]["mean"] <= MAX_THRESHOLD_DICE,
        "threshold_precision": out["precision"]["mean"] <= MAX_THRESHOLD_PRECISION,
        "observers": (OBSERVER_RANGE[0] <= out["observer_vs_reference"]["mean"] <= OBSERVER_RANGE[1]
                      if obs_ref else None),
    }
    return out


def real_slice(image: Path, mask: Path, labels: list[int]) -> dict:
    import SimpleITK as sitk
    img = np.squeeze(sitk.GetArrayFromImage(sitk.ReadImage(str(image)))).astype(float)
    lab = np.squeeze(sitk.GetArrayFromImage(sitk.ReadImage(str(mask))))
    d, p, r = overlap(threshold_segmentation(img), np.isin(lab, labels))
    return {"image": image.name, "labels": labels, "dice": d, "precision": p, "recall": r}


# ---------------------------------------------------------------- generation time
def _time_child(tree: str, cohort: str, out: str) -> dict:
    """Run one ``write_cohort`` of ``cohort`` with the phantom of ``tree`` in a fresh process."""
    n, size, obs, obs_cases = COHORTS[cohort]
    code = (
        "import sys, time, json, warnings; warnings.simplefilter('ignore');"
        f"sys.path.insert(0, {tree!r});"
        "from nnunet_xfer.phantom.cohort import write_cohort;"
        "import nnunet_xfer.phantom.cohort as c; c.tqdm = lambda it, **k: it;"
        "c0, w0 = time.process_time(), time.perf_counter();"
        f"write_cohort({out!r}, n_cases={n}, size={size}, n_observers={obs}, "
        f"n_observer_cases={obs_cases}, seed=0);"
        "print(json.dumps({'cpu': time.process_time() - c0, 'wall': time.perf_counter() - w0}))")
    env = {**os.environ, "PYTHONPATH": tree, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def generation_times(trees: dict[str, str], cohorts: list[str], repeats: int) -> dict:
    """``repeats`` rounds; in each, every (tree, cohort) once, the tree order rotated."""
    import shutil
    times = {t: {c: {"cpu": [], "wall": []} for c in cohorts} for t in trees}
    names = list(trees)
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            order = names[r % len(names):] + names[:r % len(names)]
            for cohort in cohorts:
                for t in order:
                    out = Path(tmp) / f"{t}-{r}"
                    res = _time_child(trees[t], cohort, str(out))
                    shutil.rmtree(out, ignore_errors=True)
                    for k in ("cpu", "wall"):
                        times[t][cohort][k].append(res[k])
    return {t: {c: {f"{k}_{stat}": fn(v[k]) for k in ("cpu", "wall")
                    for stat, fn in (("min", min), ("median", statistics.median))}
                for c, v in per.items()} for t, per in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="64,128,512")
    ap.add_argument("--cases", type=int, default=40)
    ap.add_argument("--observers", type=int, default=10)
    ap.add_argument("--observer-cases", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="64² and 128², 12 cases, 5 × 6 observers, "
                                                         "no timing")
    ap.add_argument("--repeats", type=int, default=5, help="timing rounds (≥ 5; 0: no timing)")
    ap.add_argument("--cohorts", default=",".join(COHORTS), help="cohorts to time")
    ap.add_argument("--compare-with", default=None, metavar="DIR",
                    help="a checkout whose phantom is timed alternately with this one")
    ap.add_argument("--real", nargs=2, type=Path, metavar=("IMAGE", "MASK"), default=None)
    ap.add_argument("--real-labels", default="1,2,3,4")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    if a.quick:
        a.sizes, a.cases, a.observers, a.observer_cases, a.repeats = "64,128", 12, 5, 6, 0
    if 0 < a.repeats < 5:
        ap.error("--repeats must be 0 or at least 5")
    info = machine()
    print(machine_report(info))
    result = {"machine": info, "seed": a.seed, "sizes": {}}
    for size in map(int, a.sizes.split(",")):
        c0, w0 = time.process_time(), time.perf_counter()
        r = calibrate(size, a.cases, a.observers, a.observer_cases, a.seed)
        r["seconds_cpu"], r["seconds_wall"] = time.process_time() - c0, time.perf_counter() - w0
        result["sizes"][size] = r
        obs = r.get("observer_vs_reference")
        print(f"\n{size}²: {a.cases} cases, threshold Dice {r['dice']['mean']:.3f} ± "
              f"{r['dice']['sd']:.3f} (pooled {r['pooled']['dice']:.3f}), precision "
              f"{r['precision']['mean']:.3f} (pooled {r['pooled']['precision']:.3f}), recall "
              f"{r['recall']['mean']:.3f}")
        if obs:
            oo = r["observer_vs_observer"]
            print(f"  observer vs reference Dice {obs['mean']:.3f} ± {obs['sd']:.3f} "
                  f"[{obs['p5']:.3f}–{obs['p95']:.3f}] ({obs['n']} pairs); observer vs observer "
                  f"{oo['mean']:.3f}")
        for key, unit in (("sma_cm2", "cm²"), ("smd_hu", "HU"), ("smi", "cm²/m²"),
                          ("height_m", "m"), ("muscle_share_of_body", "")):
            d = r[key]
            print(f"  {key}: {d['min']:.2f}–{d['max']:.2f} {unit} (mean {d['mean']:.2f})")
        print("  subgroups: " + "; ".join(f"{k} (n={v['n']}) Dice {v['dice']:.3f} precision "
                                           f"{v['precision']:.3f}" for k, v in r["subgroups"].items()))
        print(f"  targets met: {r['targets']}  ({r['seconds_cpu']:.1f} s CPU for this size)")
    if a.real is not None:
        result["real"] = real_slice(*a.real, [int(x) for x in a.real_labels.split(",")])
        print(f"\nreal slice {result['real']}")
    if a.repeats:
        trees = {"this tree": str(ROOT)}
        if a.compare_with:
            trees["compared"] = str(Path(a.compare_with).resolve())
        cohorts = [c for c in a.cohorts.split(",") if c]
        times = generation_times(trees, cohorts, a.repeats)
        result["generation"] = {"repeats": a.repeats, "trees": trees, "seconds": times}
        print(f"\nwrite_cohort, {a.repeats} rounds (order rotated), seconds: CPU min / median, "
              f"wall min / median")
        for cohort in cohorts:
            n, size, obs, oc = COHORTS[cohort]
            for t in trees:
                s = times[t][cohort]
                print(f"  {cohort} ({n} × {size}², {obs} observers × {oc}), {t}: "
                      f"{s['cpu_min']:.2f} / {s['cpu_median']:.2f}  {s['wall_min']:.2f} / "
                      f"{s['wall_median']:.2f}")
    if a.json:
        a.json.write_text(json.dumps(result, indent=2, default=str))
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
