"""Jigsaw puzzles (Noroozi & Favaro 2016) on whole patches, batched on the training device.

A patch is cut into a 3×3 grid of cells; from each cell a smaller tile is cropped at a random
offset (gaps and jitter between tiles, so edges do not line up), each tile is normalised on its
own (no intensity shortcuts), the tiles are shuffled by one of K permutations and re-assembled
into a patch of the planned size, so the planned encoder sees its usual input size at full depth.
"""
from __future__ import annotations

from functools import lru_cache
from itertools import permutations

import numpy as np
import torch

from nnunet_xfer.errors import UserError

GRID = 3
N_TILES = GRID * GRID
#: Fraction of a cell left as gap/jitter room around its tile (Noroozi: 64-px tiles in 85-px cells).
GAP_FRACTION = 0.25
#: Smallest tile side that still carries structure.
MIN_TILE = 4


@lru_cache(maxsize=8)
def _all_permutations() -> np.ndarray:
    return np.array(list(permutations(range(N_TILES))), dtype=np.int8)


@lru_cache(maxsize=16)
def permutation_set(k: int, seed: int = 0) -> np.ndarray:
    """K permutations of the 9 tiles chosen greedily for maximal minimal Hamming distance.

    Noroozi & Favaro's max-min selection: start from a random permutation, then repeatedly add the
    permutation whose smallest Hamming distance to the chosen set is largest (ties at random).
    """
    if not 2 <= k <= 1000:
        raise UserError(f"--permutations {k}: choose between 2 and 1000 jigsaw classes")
    perms = _all_permutations()
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(perms)))]
    min_dist = (perms != perms[chosen[0]]).sum(1)
    for _ in range(k - 1):
        best = np.flatnonzero(min_dist == min_dist.max())
        pick = int(best[rng.integers(len(best))])
        chosen.append(pick)
        np.minimum(min_dist, (perms != perms[pick]).sum(1), out=min_dist)
    out = perms[chosen].astype(np.int64)
    out.setflags(write=False)  # cached: callers copy (torch.tensor) before use
    return out


def min_hamming_distance(perms: np.ndarray) -> int:
    """Smallest Hamming distance between two distinct permutations of a set."""
    d = (perms[:, None, :] != perms[None, :, :]).sum(-1)
    np.fill_diagonal(d, perms.shape[1] + 1)
    return int(d.min())


def tile_size(patch: tuple[int, int], gap_fraction: float = GAP_FRACTION) -> tuple[int, int]:
    """Tile side lengths for a patch; refuses patches whose tiles would be too small."""
    cells = [p // GRID for p in patch]
    tiles = tuple(max(1, int(round(c * (1 - gap_fraction)))) for c in cells)
    if min(tiles) < MIN_TILE:
        raise UserError(f"patch {tuple(patch)} is too small for a 3×3 jigsaw: tiles would be "
                        f"{tiles} px (need at least {MIN_TILE} px)")
    return tiles


def cut_tiles(x: torch.Tensor, tile: tuple[int, int],
              generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, C, H, W) → (B, 9, C, th, tw): one tile per cell, at a random offset when ``generator``.

    Without a generator each tile is taken at its cell's centre (deterministic).
    """
    b, c, h, w = x.shape
    ch, cw = h // GRID, w // GRID
    th, tw = tile
    if generator is None:
        oy = torch.full((b, N_TILES), (ch - th) // 2, device=x.device)
        ox = torch.full((b, N_TILES), (cw - tw) // 2, device=x.device)
    else:
        oy = torch.randint(0, ch - th + 1, (b, N_TILES), generator=generator,
                           device=generator.device).to(x.device)
        ox = torch.randint(0, cw - tw + 1, (b, N_TILES), generator=generator,
                           device=generator.device).to(x.device)
    cell = torch.arange(N_TILES, device=x.device)
    rows = (cell // GRID * ch)[None] + oy  # (B, 9) top rows
    cols = (cell % GRID * cw)[None] + ox
    r = rows[..., :, None] + torch.arange(th, device=x.device)  # (B, 9, th)
    q = cols[..., :, None] + torch.arange(tw, device=x.device)  # (B, 9, tw)
    bi = torch.arange(b, device=x.device)[:, None, None, None]
    xt = x.permute(0, 2, 3, 1)  # (B, H, W, C) so advanced indexing keeps C last
    tiles = xt[bi, r[..., :, None], q[..., None, :]]  # (B, 9, th, tw, C)
    return tiles.permute(0, 1, 4, 2, 3).contiguous()


def normalise_tiles(tiles: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Z-score every tile and channel on its own (removes brightness/contrast shortcuts)."""
    mean = tiles.mean(dim=(-2, -1), keepdim=True)
    std = tiles.std(dim=(-2, -1), keepdim=True)
    return (tiles - mean) / (std + eps)


def shuffle_tiles(tiles: torch.Tensor, perms: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Position j of sample b receives tile ``perms[labels[b], j]``."""
    idx = perms[labels]  # (B, 9)
    return torch.gather(tiles, 1, idx.view(*idx.shape, 1, 1, 1).expand_as(tiles))


def unshuffle_tiles(tiles: torch.Tensor, perms: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`shuffle_tiles`: put every tile back into its original cell."""
    inv = torch.argsort(perms[labels], dim=1)
    return torch.gather(tiles, 1, inv.view(*inv.shape, 1, 1, 1).expand_as(tiles))


def assemble(tiles: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 9, C, th, tw) → (B, C, H, W): tiles at their cells' centres, zero (= mean) gaps."""
    b, _, c, th, tw = tiles.shape
    h, w = size
    ch, cw = h // GRID, w // GRID
    out = tiles.new_zeros((b, c, h, w))
    y0, x0 = (ch - th) // 2, (cw - tw) // 2
    for j in range(N_TILES):
        r, q = j // GRID * ch + y0, j % GRID * cw + x0
        out[:, :, r:r + th, q:q + tw] = tiles[:, j]
    return out


def disassemble(canvas: torch.Tensor, tile: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`assemble`: the tiles back out of a re-assembled patch."""
    return cut_tiles(canvas, tile, None)


def make_puzzles(x: torch.Tensor, perms: torch.Tensor, tile: tuple[int, int],
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of shuffled, re-assembled patches and their permutation labels."""
    labels = torch.randint(0, len(perms), (x.shape[0],), generator=generator,
                           device=generator.device).to(x.device)
    tiles = normalise_tiles(cut_tiles(x, tile, generator))
    return assemble(shuffle_tiles(tiles, perms, labels), tuple(x.shape[-2:])), labels
