"""Draw docs/phantom.png: phantom slices with the reference, an observer and the threshold's
false positives, and the default cohort's muscle area, density, heights and threshold scores.

Run from the repository root: ``.venv/bin/python docs/make_phantom_figure.py``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nnunet_xfer.evaluation.measures import muscle_measures  # noqa: E402
from nnunet_xfer.evaluation.threshold_baseline import threshold_segmentation  # noqa: E402
from nnunet_xfer.phantom import make_subject, observer_mask, observer_style  # noqa: E402
from nnunet_xfer.phantom.observers import observer_rng  # noqa: E402

SEED, SIZE, N_CASES = 0, 512, 40
OBSERVER = 1        # obs02
WINDOW = (-160, 240)  # abdominal soft-tissue window: level 40, width 400 HU
OUT = Path(__file__).with_name("phantom.png")
#: What the slices show, as (title, test on the subject's parameters): the first case that fits.
SHOWN = (
    ("lean woman", lambda p: p.sex == "F" and p.adiposity < 0.3 and not p.arms),
    ("large man", lambda p: p.sex == "M" and p.adiposity > 0.6 and not p.arms),
    ("arms down", lambda p: bool(p.arms) and min(a["gap"] for a in p.arms) < 0),
    ("myosteatosis", lambda p: p.myosteatosis > 0.55 and not p.arms),
)


def overlap(pred: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    tp = float((pred & ref).sum())
    return 2 * tp / (pred.sum() + ref.sum()), tp / max(pred.sum(), 1)


def main(out: Path = OUT) -> None:
    subjects = [make_subject(i, size=SIZE, seed=SEED) for i in range(N_CASES)]
    cases = [next(i for i, s in enumerate(subjects) if test(s.params)) for _, test in SHOWN]
    fig = plt.figure(figsize=(4.2 * len(cases), 11.5))
    grid = fig.add_gridspec(3, len(cases), height_ratios=(1, 1, 0.8))
    for j, (i, (what, _)) in enumerate(zip(cases, SHOWN)):
        s = subjects[i]
        ref = s.mask.astype(bool)
        obs = observer_mask(s, observer_style(OBSERVER, SEED), observer_rng(SEED, OBSERVER, i))
        thr = threshold_segmentation(s.image).astype(bool)
        m = muscle_measures(s.image, ref, s.spacing, s.height_m)
        rows = np.flatnonzero((s.image > -500).any(axis=1))
        crop = (max(rows[0] - 12, 0), min(rows[-1] + 12, SIZE - 1))
        top, bottom = fig.add_subplot(grid[0, j]), fig.add_subplot(grid[1, j])
        for ax in (top, bottom):
            ax.imshow(s.image, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1])
            ax.set_ylim(crop[1], crop[0])
            ax.set_axis_off()
        p = s.params
        top.set_title(f"L3-{i:04d} {what}: {s.sex}, {s.height_m:.2f} m\n{p.phase} contrast, "
                      f"{p.scan['dose']} dose, {s.spacing[0]:.2f} mm px", fontsize=9)
        bottom.imshow(np.ma.masked_equal(ref.astype(np.uint8), 0), cmap="autumn", alpha=0.45,
                      interpolation="nearest")
        bottom.imshow(np.ma.masked_equal((thr & ~ref).astype(np.uint8), 0), cmap="cool",
                      alpha=0.5, interpolation="nearest", vmin=0, vmax=1)
        bottom.contour(obs, levels=[0.5], colors="cyan", linewidths=0.6)
        d, prec = overlap(thr, ref)
        bottom.set_title(f"SMA {m['sma_cm2']:.0f} cm², SMD {m['smd_hu']:.0f} HU\nthreshold "
                         f"Dice {d:.2f}, precision {prec:.2f}", fontsize=9)
        print(f"{what}: L3-{i:04d}")

    measures = [muscle_measures(s.image, s.mask.astype(bool), s.spacing, s.height_m)
                for s in subjects]
    scores = np.array([overlap(threshold_segmentation(s.image).astype(bool), s.mask.astype(bool))
                       for s in subjects])
    sexes = np.array([s.sex for s in subjects])
    panels = (("SMA (cm², −29…150 HU)", [m["sma_cm2"] for m in measures]),
              ("SMD (HU)", [m["smd_hu"] for m in measures]),
              ("height (m)", [s.height_m for s in subjects]))
    for j, (label, values) in enumerate(panels):
        ax = fig.add_subplot(grid[2, j])
        values = np.asarray(values)
        ax.hist([values[sexes == "F"], values[sexes == "M"]], bins=10, stacked=True,
                label=["women", "men"], color=["#c44e52", "#4c72b0"])
        ax.set_xlabel(label)
        ax.set_ylabel("subjects")
        if j == 0:
            ax.legend(fontsize=8)
    ax = fig.add_subplot(grid[2, 3])
    ax.scatter(scores[:, 1], scores[:, 0], s=12, color="k")
    ax.axvline(0.60, color="grey", ls=":")
    ax.axhline(0.70, color="grey", ls=":")
    ax.set_xlabel("threshold precision")
    ax.set_ylabel("threshold Dice")
    ax.set_title(f"mean Dice {scores[:, 0].mean():.2f}, precision {scores[:, 1].mean():.2f}",
                 fontsize=9)
    fig.suptitle(f"nnunet-xfer phantom (seed {SEED}, {SIZE}², {N_CASES} subjects): CT in HU "
                 f"(W400/L40)\nred: reference muscle, cyan: observer obs{OBSERVER + 1:02d}, "
                 f"violet: threshold −29…150 HU inside the body where it is not muscle",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=70)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
