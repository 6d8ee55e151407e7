"""Models Genesis corruptions (Zhou et al. 2019/2021) for 2D batches, vectorised on the device.

The network restores the original patch from a corrupted copy. The published configuration
(Models Genesis' ``config.py`` and ``generate_pair``) is followed, per image:

* flips (augmentation of input *and* target): while a draw is below 0.4, flip a random spatial
  axis, at most as many flips as axes. A flip is drawn for 40 % of the images, but the second
  flip picks the first one's axis again half of the time and undoes it, so 32 % end up flipped
  (24 % along one axis, 8 % along both: a 180° rotation) and 68 % unchanged;
* local pixel shuffling inside random small blocks (texture), probability 0.5;
* a random monotone non-linear intensity curve, half of them inverted (appearance), probability 0.9;
* painting (context), probability 0.9: out-painting (all but random boxes → noise) 80 % of the
  time, in-painting (random boxes → noise) 20 %, i.e. 0.72 out- and 0.18 in-painting overall.

Each image is corrupted in its own [0, 1] range and mapped back, so the intensities stay in
nnU-Net's normalised space. Inputs are never modified in place. All decisions of a batch are
drawn first (:func:`draw`) so that they can be recorded and checked.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

P_FLIP = 0.4
P_NONLINEAR = 0.9
P_SHUFFLE = 0.5
P_PAINT = 0.9
P_OUTPAINT = 0.8
P_INPAINT = 1.0 - P_OUTPAINT  # of the painted images


@dataclass
class Draws:
    """The per-image decisions of one batch (all (B,) tensors)."""

    #: spatial axes flipped, in order (-1: none); (B, number of spatial axes)
    flips: torch.Tensor
    shuffle: torch.Tensor
    nonlinear: torch.Tensor
    paint: torch.Tensor
    #: in-painting (True) or out-painting (False) where ``paint``
    inpaint: torch.Tensor

    @property
    def flipped(self) -> torch.Tensor:
        """(B,) True where at least one flip was drawn."""
        return (self.flips >= 0).any(1)


def _rand(shape, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=g, device=g.device).to(device)


def nonlinear_intensity(x: torch.Tensor, g: torch.Generator, p: float = P_NONLINEAR,
                        apply: torch.Tensor | None = None) -> torch.Tensor:
    """Per image, with probability ``p`` (or where ``apply``): a random cubic Bézier intensity
    curve (half of them inverted)."""
    b = x.shape[0]
    t = torch.linspace(0, 1, 256, device=x.device)
    c = _rand((b, 2, 2), g, x.device)  # two inner control points (x, y)
    basis = torch.stack([(1 - t) ** 3, 3 * (1 - t) ** 2 * t, 3 * (1 - t) * t ** 2, t ** 3])  # (4, T)
    ctrl_x = torch.cat([torch.zeros(b, 1, device=x.device), c[:, :, 0],
                        torch.ones(b, 1, device=x.device)], 1)
    ctrl_y = torch.cat([torch.zeros(b, 1, device=x.device), c[:, :, 1],
                        torch.ones(b, 1, device=x.device)], 1)
    cx, cy = ctrl_x @ basis, ctrl_y @ basis  # (B, T), cx increasing in t
    cx, order = torch.sort(cx, dim=1)
    cy = torch.gather(cy, 1, order)
    invert = _rand((b, 1), g, x.device) < 0.5
    cy = torch.where(invert, 1 - cy, cy)
    flat = x.reshape(b, -1).contiguous()
    i = torch.searchsorted(cx.contiguous(), flat).clamp(1, cx.shape[1] - 1)
    x0, x1 = torch.gather(cx, 1, i - 1), torch.gather(cx, 1, i)
    y0, y1 = torch.gather(cy, 1, i - 1), torch.gather(cy, 1, i)
    y = y0 + (flat - x0) / (x1 - x0).clamp_min(1e-6) * (y1 - y0)
    if apply is None:
        apply = _rand((b,), g, x.device) < p
    return torch.where(apply.to(x.device)[:, None], y, flat).reshape(x.shape)


def local_pixel_shuffle(x: torch.Tensor, g: torch.Generator, p: float = P_SHUFFLE,
                        block_fraction: float = 0.05, block_prob: float = 0.5,
                        apply: torch.Tensor | None = None) -> torch.Tensor:
    """Per image, with probability ``p`` (or where ``apply``): shuffle the pixels inside random
    small blocks."""
    b, c, h, w = x.shape
    s = max(2, int(min(h, w) * block_fraction))
    hh, ww = h // s * s, w // s * s
    shift = torch.randint(0, s, (2,), generator=g, device=g.device).tolist()
    rolled = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(-2, -1))
    core = rolled[..., :hh, :ww]
    blocks = core.reshape(b, c, hh // s, s, ww // s, s).permute(0, 1, 2, 4, 3, 5)
    blocks = blocks.reshape(b, c, hh // s, ww // s, s * s)
    order = torch.argsort(_rand(blocks.shape[:1] + blocks.shape[2:], g, x.device), dim=-1)
    keep = _rand((b, hh // s, ww // s, 1), g, x.device) >= block_prob
    if apply is None:
        apply = _rand((b,), g, x.device) < p
    keep = keep | ~apply.to(x.device)[:, None, None, None]
    order = torch.where(keep, torch.arange(s * s, device=x.device), order)
    shuffled = torch.gather(blocks, -1, order[:, None].expand_as(blocks))
    shuffled = shuffled.reshape(b, c, hh // s, ww // s, s, s).permute(0, 1, 2, 4, 3, 5)
    out = rolled.clone()
    out[..., :hh, :ww] = shuffled.reshape(b, c, hh, ww)
    return torch.roll(out, shifts=(shift[0], shift[1]), dims=(-2, -1))


def _boxes(b: int, n: int, h: int, w: int, lo: float, hi: float, g: torch.Generator,
           device) -> torch.Tensor:
    """(B, H, W) mask: union of ``n`` random boxes with sides in [lo, hi] of the image."""
    size = lo + (hi - lo) * _rand((b, n, 2), g, device)
    bh, bw = (size[..., 0] * h).long().clamp_min(1), (size[..., 1] * w).long().clamp_min(1)
    y0 = (_rand((b, n), g, device) * (h - bh + 1)).long()
    x0 = (_rand((b, n), g, device) * (w - bw + 1)).long()
    yy = torch.arange(h, device=device)[None, None, :, None]
    xx = torch.arange(w, device=device)[None, None, None, :]
    inside = ((yy >= y0[..., None, None]) & (yy < (y0 + bh)[..., None, None])
              & (xx >= x0[..., None, None]) & (xx < (x0 + bw)[..., None, None]))
    return inside.any(1)


def paint(x: torch.Tensor, g: torch.Generator, p: float = P_PAINT,
          p_inpaint: float = P_INPAINT, apply: torch.Tensor | None = None,
          inpaint: torch.Tensor | None = None) -> torch.Tensor:
    """With probability ``p`` (or where ``apply``): in-painting (random boxes → noise) with
    probability ``p_inpaint`` (or where ``inpaint``), else out-painting (all but random boxes →
    noise)."""
    b, c, h, w = x.shape
    inner = _boxes(b, 4, h, w, 0.1, 0.3, g, x.device)
    outer = ~_boxes(b, 2, h, w, 0.4, 0.7, g, x.device)
    if apply is None:
        apply = _rand((b,), g, x.device) < p
    if inpaint is None:
        inpaint = _rand((b,), g, x.device) < p_inpaint
    mask = torch.where(inpaint.to(x.device)[:, None, None], inner, outer)
    mask = mask & apply.to(x.device)[:, None, None]
    noise = _rand(x.shape, g, x.device)
    return torch.where(mask[:, None], noise, x)


def draw(b: int, g: torch.Generator, device, spatial_dims: int = 2) -> Draws:
    """The published decisions for ``b`` images (see the module docstring)."""
    flips = torch.full((b, spatial_dims), -1, dtype=torch.long, device=device)
    going = torch.ones(b, dtype=torch.bool, device=device)
    for k in range(spatial_dims):  # Models Genesis: `while random() < flip_rate and cnt > 0`
        going = going & (_rand((b,), g, device) < P_FLIP)
        axis = torch.randint(0, spatial_dims, (b,), generator=g, device=g.device).to(device)
        flips[:, k] = torch.where(going, axis, flips[:, k])
    shuffle = _rand((b,), g, device) < P_SHUFFLE
    nonlinear = _rand((b,), g, device) < P_NONLINEAR
    paint_ = _rand((b,), g, device) < P_PAINT
    inpaint = _rand((b,), g, device) < P_INPAINT
    return Draws(flips, shuffle, nonlinear, paint_, inpaint)


def apply_flips(x: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Flip each image of (B, C, *spatial) along the axes listed in its row of ``flips``."""
    out = x
    first_spatial = x.ndim - flips.shape[1]
    for k in range(flips.shape[1]):
        for axis in range(flips.shape[1]):
            sel = flips[:, k] == axis
            if bool(sel.any()):
                flipped = torch.flip(out, dims=(first_spatial + axis,))
                out = torch.where(sel.view(-1, *([1] * (x.ndim - 1))), flipped, out)
    return out


def corrupt_pair(x: torch.Tensor, g: torch.Generator,
                 draws: Draws | None = None) -> tuple[torch.Tensor, torch.Tensor, Draws]:
    """(corrupted input, target, draws) of a normalised (B, C, H, W) batch; ``x`` is left intact.

    The target is ``x`` after the flips; the input is the target shuffled, intensity-mapped and
    painted as drawn.
    """
    b = x.shape[0]
    if draws is None:
        draws = draw(b, g, x.device, spatial_dims=x.ndim - 2)
    target = apply_flips(x, draws.flips)
    dims = tuple(range(1, x.ndim))
    lo = target.amin(dim=dims, keepdim=True)
    span = (target.amax(dim=dims, keepdim=True) - lo).clamp_min(1e-6)
    y = (target - lo) / span
    y = local_pixel_shuffle(y, g, apply=draws.shuffle)
    y = nonlinear_intensity(y, g, apply=draws.nonlinear)
    y = paint(y, g, apply=draws.paint, inpaint=draws.inpaint)
    return y * span + lo, target, draws


def corrupt(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The corrupted input of :func:`corrupt_pair` (its target may be a flip of ``x``)."""
    return corrupt_pair(x, g)[0]
