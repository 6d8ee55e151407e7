"""The simulated scanner: in-plane resolution, partial volume, correlated noise at several dose
levels, and occasional streak, beam-hardening and cupping artefacts.

* Resolution: a Gaussian PSF (σ 0.4–0.8 mm by kernel) on the supersampled grid, then the average
  of each output pixel's fine pixels (partial volume: a pixel on an edge is a mix of tissues).
* Noise: a filtered-back-projection-like noise power spectrum, NPS(f) ∝ (f + 0.03) e^{−f²/f0²}
  (f in cycles/mm; peak at f0/√2 = 0.20–0.32 cycles/mm, soft to standard kernels), scaled to the
  subject's noise SD at 512² (dose level and body size). A smaller image of the same field of view
  keeps only the part of the spectrum below its Nyquist frequency, so its noise SD is the 512²
  SD × √(∫NPS over its band / ∫NPS over the 512² band), as a thick-pixel reconstruction gives.
* Artefacts (in a subject with ``scan["streaks"]``): thin bright and dark streaks through the
  densest object, and with the arms down a dark beam-hardening band between them across the
  torso; cupping (a few HU lower in the centre) in large subjects.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from nnunet_xfer.phantom import structures as st
from nnunet_xfer.phantom.shapes import Grid, block_mean

if TYPE_CHECKING:
    from nnunet_xfer.phantom.anatomy import Params, Rendering

#: Size the noise SD of ``Params.scan`` refers to (the 512² spacing is FOV/512).
REFERENCE_SIZE = 512
#: Low-frequency floor of the NPS (cycles/mm): FBP noise is not quite zero at f = 0.
NPS_FLOOR = 0.03


def acquire(p: Params, fine: Rendering, grid: Grid, factor: int, size: int,
            texture_rng: np.random.Generator) -> np.ndarray:
    """The reconstructed ``size``² slice (float HU) of the fine rendering ``fine`` on ``grid``."""
    hu = fine.hu + artefacts(p, grid, fine)
    hu = ndimage.gaussian_filter(hu, p.scan["psf_mm"] / grid.spacing)
    hu = block_mean(hu, factor)
    return hu + noise(texture_rng, size, grid.spacing * factor, p)


def _band_integral(spacing: float, f0: float, samples: int = 96) -> float:
    """∫∫ NPS shape over the square band |fx|, |fy| < 1/(2·spacing) (midpoint rule)."""
    fn = 0.5 / spacing
    f = (np.arange(samples) + 0.5) / samples * 2 * fn - fn
    r = np.hypot(f[:, None], f[None, :])
    return float(((r + NPS_FLOOR) * np.exp(-(r / f0) ** 2)).mean() * (2 * fn) ** 2)


def noise_sd(p: Params, spacing: float) -> float:
    """Noise SD (HU) of subject ``p`` reconstructed with ``spacing`` mm pixels."""
    f0 = p.scan["nps_peak"] * np.sqrt(2)
    ratio = _band_integral(spacing, f0) / _band_integral(p.fov_mm / REFERENCE_SIZE, f0)
    return p.scan["noise_sd"] * float(np.sqrt(ratio))


def noise(rng: np.random.Generator, size: int, spacing: float, p: Params) -> np.ndarray:
    """Stationary noise with the subject's NPS on a ``size``² grid of ``spacing`` mm pixels."""
    f0 = p.scan["nps_peak"] * np.sqrt(2)
    fy = np.fft.fftfreq(size, d=spacing)[:, None]
    fx = np.fft.rfftfreq(size, d=spacing)[None, :]
    f = np.hypot(fy, fx)
    amp = np.sqrt((f + NPS_FLOOR) * np.exp(-(f / f0) ** 2))
    field = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((size, size))) * amp, s=(size, size))
    sd = field.std()
    return field * (noise_sd(p, spacing) / sd) if sd > 0 else field


def artefacts(p: Params, grid: Grid, fine: Rendering) -> np.ndarray:
    """Additive HU field of cupping, streaks and beam hardening on the fine grid."""
    x, y = grid.xy()
    ex = ((x - p.body_dx) / p.half_width) ** 2 + ((y - p.body_dy) / p.half_ap_post) ** 2
    field = -p.scan["cupping_hu"] * np.clip(1 - ex, 0, None)
    if not p.scan["streaks"]:
        return field
    rng = np.random.default_rng(p.scan["artefact_seed"])
    dense = fine.hu > 400
    if p.arms:
        bones = dense & (fine.tissue == st.ARM_BONE)
        dense = bones if bones.any() else dense
    if not dense.any():
        return field
    rows, cols = np.nonzero(dense)
    x0, y0 = grid.coords[cols].mean(), grid.coords[rows].mean()
    if p.arms:  # photon starvation along the line through both arms: a dark band
        w = rng.uniform(6, 15)
        inside = (fine.tissue != st.AIR) & (fine.tissue != st.TABLE)
        field = field - rng.uniform(20, 60) * np.exp(-((y - y0) / w) ** 2) * inside
        angles = rng.uniform(-0.15, 0.15, 6)
    else:
        angles = rng.uniform(0, np.pi, 6)
    n_streaks = int(rng.integers(3, 7))
    for k in range(n_streaks):
        phi = angles[k]
        cx, cy = x0 + rng.normal(0, 8), y0 + rng.normal(0, 8)
        d = (x - cx) * np.sin(phi) - (y - cy) * np.cos(phi)
        along = np.abs((x - cx) * np.cos(phi) + (y - cy) * np.sin(phi))
        amp = rng.uniform(30, 100) * (1 if k % 2 else -1)
        width, reach = rng.uniform(0.5, 1.2), rng.uniform(60, 200)
        field = field + amp * np.exp(-(d / width) ** 2 - along / reach)
    return field
