"""Vectorised 2D shape primitives on a millimetre grid: polar outlines, smooth noise, boxes.

Every anatomical structure of the phantom is a region of a :class:`Grid` (pixel centres in mm),
described in polar coordinates around a centre with a smooth, randomly perturbed radius.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Grid:
    """Square pixel grid of ``n``×``n`` pixels of ``spacing`` mm, centred on (0, 0).

    x grows to the image right (patient left), y grows downwards (posterior).
    """

    n: int
    spacing: float

    @property
    def coords(self) -> np.ndarray:
        """Pixel-centre coordinates (mm) along either axis."""
        return (np.arange(self.n) + 0.5 - self.n / 2) * self.spacing

    def box(self, x0: float, x1: float, y0: float, y1: float) -> tuple[slice, slice]:
        """Row/column slices of the pixels whose centres may lie in [x0, x1] × [y0, y1]."""
        def rng(a: float, b: float) -> slice:
            lo = int(np.floor(a / self.spacing + self.n / 2 - 0.5))
            hi = int(np.ceil(b / self.spacing + self.n / 2 - 0.5)) + 1
            return slice(min(max(lo, 0), self.n), min(max(hi, 0), self.n))
        return rng(y0, y1), rng(x0, x1)

    def xy(self, box: tuple[slice, slice] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Broadcastable x (1, w) and y (h, 1) coordinates of ``box`` (default: whole grid)."""
        c = self.coords
        rows, cols = box if box is not None else (slice(None), slice(None))
        return c[cols][None, :], c[rows][:, None]


def harmonics(rng: np.random.Generator, amplitude: float, orders: int = 6) -> np.ndarray:
    """Random Fourier coefficients (orders × 2) of a smooth radial perturbation; decays as 1/k."""
    k = np.arange(1, orders + 1)[:, None]
    return rng.normal(0.0, amplitude, size=(orders, 2)) / k


def perturb(theta: np.ndarray, coeffs: np.ndarray | None) -> np.ndarray:
    """Multiplicative radius factor exp(Σ a_k cos kθ + b_k sin kθ) (1 where ``coeffs`` is None)."""
    if coeffs is None:
        return np.ones_like(theta)
    return _perturb_z(np.exp(1j * theta), coeffs)


def _perturb_z(z: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """:func:`perturb` of the unit complex numbers ``z`` = e^{iθ}."""
    # Re(Σ (a_k - i b_k) e^{ikθ}) by Horner's rule: one complex exponential instead of 2k trig calls
    acc = np.zeros_like(z)
    for a, b in coeffs[::-1]:
        acc = (acc + (a - 1j * b)) * z
    return np.exp(acc.real)


def superellipse_radius(theta: np.ndarray, a: float, b: float, n: float = 2.0) -> np.ndarray:
    """Radius of the superellipse |x/a|^n + |y/b|^n = 1 along direction ``theta``."""
    return _superellipse_cs(np.cos(theta), np.sin(theta), a, b, n)


def _superellipse_cs(cos: np.ndarray, sin: np.ndarray, a, b, n) -> np.ndarray:
    c = np.abs(cos) / a
    s = np.abs(sin) / b
    if np.isscalar(n) and n == 2.0:
        return 1.0 / np.sqrt(c * c + s * s + 1e-30)
    return (c ** n + s ** n + 1e-30) ** (-1.0 / n)


def polar_lookup(fn, theta: np.ndarray, samples: int = 4096) -> np.ndarray:
    """``fn(theta)`` for a smooth function of the angle, by linear interpolation in a table of
    ``samples`` angles (an image of angles costs one interpolation instead of ``fn``'s work)."""
    t = np.linspace(-np.pi, np.pi, samples + 1)
    return np.interp(theta, t, fn(t))


def blob_ratio(grid: Grid, cx: float, cy: float, a: float, b: float, angle: float = 0.0,
               n: float = 2.0, coeffs: np.ndarray | None = None
               ) -> tuple[tuple[slice, slice], np.ndarray]:
    """A rotated, perturbed superellipse as (bounding box, ρ/radius over that box).

    ``ratio < 1`` is the shape; ``ratio < 1 - t/b`` an inner shell about ``t`` mm inside it.
    ``a``/``b`` are the semi-axes (mm) before rotation by ``angle`` (radians, image orientation).
    """
    reach = max(a, b) * (1.6 if coeffs is not None else 1.45)
    box = grid.box(cx - reach, cx + reach, cy - reach, cy + reach)
    x, y = grid.xy(box)
    dx, dy = x - cx, y - cy
    ca, sa = np.cos(angle), np.sin(angle)
    u, v = dx * ca + dy * sa, -dx * sa + dy * ca
    rho = np.hypot(u, v)
    safe = np.where(rho > 0, rho, 1.0)
    cos, sin = np.where(rho > 0, u / safe, 1.0), v / safe
    radius = _superellipse_cs(cos, sin, a, b, n)
    if coeffs is not None:
        radius = radius * _perturb_z(cos + 1j * sin, coeffs)
    return box, rho / radius


def blob(grid: Grid, cx: float, cy: float, a: float, b: float, angle: float = 0.0,
         n: float = 2.0, coeffs: np.ndarray | None = None
         ) -> tuple[tuple[slice, slice], np.ndarray]:
    """Like :func:`blob_ratio` but returns the boolean inside-mask of the box."""
    box, ratio = blob_ratio(grid, cx, cy, a, b, angle, n, coeffs)
    return box, ratio < 1


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Gaussian-correlated noise with unit standard deviation and correlation length ``sigma_px``.

    Drawn on a coarser grid when the correlation is long (same statistics, much cheaper).
    """
    step = max(1, int(sigma_px // 3))
    small = (-(-shape[0] // step), -(-shape[1] // step))
    field = ndimage.gaussian_filter(rng.standard_normal(small), sigma_px / step, mode="wrap")
    if step > 1:
        field = ndimage.zoom(field, step, order=1)[: shape[0], : shape[1]]
    sd = field.std()
    return field / sd if sd > 0 else field


def block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Average ``f``×``f`` blocks (partial-volume downsampling of a fine rendering)."""
    if f == 1:
        return a.astype(np.float64, copy=False)
    n0, n1 = a.shape[0] // f, a.shape[1] // f
    return a.reshape(n0, f, n1, f).mean(axis=(1, 3))
