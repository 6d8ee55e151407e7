"""Draw docs/phantom.png: a few synthetic L3 slices, their muscle masks and one observer's outline.

Run from the repository root: ``.venv/bin/python docs/make_phantom_figure.py``.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nnunet_xfer.phantom import make_subject, observer_mask, observer_style  # noqa: E402
from nnunet_xfer.phantom.observers import observer_rng  # noqa: E402

CASES = (0, 4, 7)   # a slim woman, a large man, a woman with marked myosteatosis (seed 0)
OBSERVER = 1        # obs02
WINDOW = (-160, 240)  # abdominal soft-tissue window: level 40, width 400 HU


OUT = Path(__file__).with_name("phantom.png")


def main(out: Path = OUT) -> None:
    fig, axes = plt.subplots(2, len(CASES), figsize=(4.4 * len(CASES), 7.0))
    for j, i in enumerate(CASES):
        s = make_subject(i, size=512, seed=0)
        obs = observer_mask(s, observer_style(OBSERVER, 0), observer_rng(0, OBSERVER, i))
        area = s.mask.sum() * s.spacing[0] * s.spacing[1] / 100
        density = s.image[s.mask.astype(bool)].mean()
        rows = np.flatnonzero((s.image > -500).any(axis=1))
        crop = (max(rows[0] - 12, 0), min(rows[-1] + 12, s.image.shape[0] - 1))  # body and table
        for ax in axes[:, j]:
            ax.imshow(s.image, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1])
            ax.set_ylim(crop[1], crop[0])
            ax.set_axis_off()
        axes[0, j].set_title(f"L3-{i:04d}  {s.sex}, {s.height_m:.2f} m, {s.spacing[0]:.2f} mm px",
                             fontsize=10)
        axes[1, j].imshow(np.ma.masked_equal(s.mask, 0), cmap="autumn", alpha=0.45,
                          interpolation="nearest")
        axes[1, j].contour(obs, levels=[0.5], colors="cyan", linewidths=0.6)
        axes[1, j].set_title(f"muscle {area:.0f} cm², {density:.0f} HU; "
                             f"cyan: obs{OBSERVER + 1:02d}", fontsize=10)
    fig.suptitle("nnunet-xfer phantom (seed 0, 512²): CT in HU (W400/L40), reference muscle mask, "
                 "one simulated observer", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=75)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
