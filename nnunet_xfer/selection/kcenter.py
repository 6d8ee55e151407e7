"""Greedy k-centre (farthest-first traversal): the order in which ``diverse`` picks cases.

Plain numpy. Each pick is the case farthest (Euclidean) from every case picked or labelled
before it, so that a pool of clusters gives one case per cluster before a second from any; the
distance at the time of the pick (the covering radius) is returned as its score.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def farthest_first(features: np.ndarray, labelled: Sequence[int] = (),
                   limit: int | None = None) -> tuple[list[int], list[float]]:
    """Indices of ``features`` rows in greedy k-centre order, and each pick's covering radius.

    ``labelled``: rows already annotated; they are the first centres and are never picked. Without
    them the first pick is the row nearest the mean (the most typical case; its radius is its
    distance to the mean). ``limit``: stop after that many picks (default: every other row). Ties
    go to the lower index, so callers that sort their cases get a deterministic order.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be a (cases, dims) matrix, got shape {x.shape}")
    n = len(x)
    chosen = np.zeros(n, dtype=bool)
    nearest = np.full(n, np.inf)
    for i in labelled:
        chosen[i] = True
        nearest = np.minimum(nearest, np.linalg.norm(x - x[i], axis=1))
    order: list[int] = []
    radii: list[float] = []
    limit = int((~chosen).sum()) if limit is None else min(int(limit), int((~chosen).sum()))
    if limit and not chosen.any():
        first = int(np.argmin(np.linalg.norm(x - x.mean(axis=0), axis=1)))
        order.append(first)
        radii.append(float(np.linalg.norm(x[first] - x.mean(axis=0))))
        chosen[first] = True
        nearest = np.linalg.norm(x - x[first], axis=1)
    while len(order) < limit:
        candidate = np.where(chosen, -np.inf, nearest)
        pick = int(np.argmax(candidate))  # first maximum: the lower index wins a tie
        order.append(pick)
        radii.append(float(nearest[pick]))
        chosen[pick] = True
        nearest = np.minimum(nearest, np.linalg.norm(x - x[pick], axis=1))
    return order, radii
