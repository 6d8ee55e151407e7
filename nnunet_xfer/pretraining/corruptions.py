"""Models Genesis corruptions (Zhou et al. 2019/2021) for 2D batches, vectorised on the device.

The network restores the original patch from a corrupted copy: local pixel shuffling (texture),
a random monotone non-linear intensity curve (appearance), and in-painting or out-painting
(context). Each image is corrupted in its own [0, 1] range and mapped back, so the intensities stay
in nnU-Net's normalised space. Inputs are never modified in place.
"""
from __future__ import annotations

import torch

P_NONLINEAR = 0.9
P_SHUFFLE = 0.5
P_PAINT = 0.9
P_INPAINT = 0.7  # else out-painting


def _rand(shape, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(shape, generator=g, device=g.device).to(device)


def nonlinear_intensity(x: torch.Tensor, g: torch.Generator, p: float = P_NONLINEAR) -> torch.Tensor:
    """Per image, with probability ``p``: a random cubic Bézier intensity curve (half inverted)."""
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
    apply = (_rand((b, 1), g, x.device) < p)
    return torch.where(apply, y, flat).reshape(x.shape)


def local_pixel_shuffle(x: torch.Tensor, g: torch.Generator, p: float = P_SHUFFLE,
                        block_fraction: float = 0.05, block_prob: float = 0.5) -> torch.Tensor:
    """Per image, with probability ``p``: shuffle the pixels inside random small blocks."""
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
    keep = keep | (_rand((b, 1, 1, 1), g, x.device) >= p)
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
          p_inpaint: float = P_INPAINT) -> torch.Tensor:
    """In-painting (random boxes → noise) or out-painting (all but random boxes → noise)."""
    b, c, h, w = x.shape
    inner = _boxes(b, 4, h, w, 0.1, 0.3, g, x.device)
    outer = ~_boxes(b, 2, h, w, 0.4, 0.7, g, x.device)
    inpaint = _rand((b, 1, 1), g, x.device) < p_inpaint
    mask = torch.where(inpaint, inner, outer) & (_rand((b, 1, 1), g, x.device) < p)
    noise = _rand(x.shape, g, x.device)
    return torch.where(mask[:, None], noise, x)


def corrupt(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Models Genesis corruption of a normalised (B, C, H, W) batch; ``x`` itself is left intact."""
    dims = (1, 2, 3)
    lo = x.amin(dim=dims, keepdim=True)
    span = (x.amax(dim=dims, keepdim=True) - lo).clamp_min(1e-6)
    y = (x - lo) / span
    y = local_pixel_shuffle(y, g)
    y = nonlinear_intensity(y, g)
    y = paint(y, g)
    return y * span + lo
