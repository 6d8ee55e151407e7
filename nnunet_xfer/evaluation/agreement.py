"""Agreement statistics: Bland–Altman, ICC(2,1), coefficient of variation, Pearson r, Williams index.

Used for muscle measures (SMA, SMD) of predictions against a reference, and for the observer study.
Pairs or cases with a NaN are left out (a failed segmentation has SMD NaN); the returned ``n`` says
how many were used.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from nnunet_xfer.errors import UserError

#: Multiplier of the SD of differences for the 95% limits of agreement (Bland & Altman 1986).
LOA_Z = 1.96
#: Human level: the lower end of the Williams index's CI must reach 1 − this margin.
HUMAN_LEVEL_MARGIN = 0.05
#: Observers needed for a human-level verdict: with 2 there is one observer pair, and how much
#: observers disagree among themselves cannot be resampled.
MIN_OBSERVERS_FOR_VERDICT = 3


def _paired(a, b) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired measurements differ in length: {a.size} vs {b.size}")
    keep = ~(np.isnan(a) | np.isnan(b))
    return a[keep], b[keep]


def bland_altman(a, b) -> dict:
    """Bias (mean of a − b), SD of the differences and the 95% limits of agreement bias ± 1.96 SD."""
    a, b = _paired(a, b)
    diff = a - b
    n = int(diff.size)
    bias = float(diff.mean()) if n else math.nan
    sd = float(diff.std(ddof=1)) if n > 1 else math.nan
    return dict(bias=bias, sd=sd, loa_low=bias - LOA_Z * sd, loa_high=bias + LOA_Z * sd, n=n)


def icc_2_1(a, b=None) -> float:
    """ICC(2,1): two-way random effects, absolute agreement, single measure (Shrout & Fleiss 1979).

    Give either an (n targets × k raters) matrix, or two paired vectors ``a, b`` (k = 2). Targets
    with a NaN are left out. Same as pingouin's "ICC2".
    """
    x = np.asarray(a, dtype=np.float64)
    if b is not None:
        x = np.column_stack(_paired(a, b))
    if x.ndim != 2:
        raise ValueError(f"icc_2_1 needs an n × k matrix, got shape {x.shape}")
    x = x[~np.isnan(x).any(axis=1)]
    n, k = x.shape
    if n < 2 or k < 2:
        return math.nan
    grand = x.mean()
    ss_rows = k * ((x.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((x.mean(axis=0) - grand) ** 2).sum()
    ss_error = ((x - grand) ** 2).sum() - ss_rows - ss_cols
    ms_rows = ss_rows / (n - 1)
    ms_cols = ss_cols / (k - 1)
    ms_error = ss_error / ((n - 1) * (k - 1))
    denom = ms_rows + (k - 1) * ms_error + k * (ms_cols - ms_error) / n
    return float((ms_rows - ms_error) / denom) if denom > 0 else math.nan


def coefficient_of_variation(a, b) -> float:
    """Within-subject coefficient of variation (%) of paired measurements, root-mean-square method.

    sqrt(mean_i(s_i² / m_i²)) × 100, with s_i the SD (ddof 1) and m_i the mean of pair i. Meant for
    positive quantities such as SMA; for SMD (HU near 0 in fatty muscle) read it with care.
    """
    a, b = _paired(a, b)
    if a.size == 0:
        return math.nan
    pairs = np.column_stack([a, b])
    sd = pairs.std(axis=1, ddof=1)
    mean = pairs.mean(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.sqrt(np.mean((sd / mean) ** 2)) * 100.0)


def pearson_r(a, b) -> float:
    """Pearson correlation; NaN with fewer than 3 pairs or a constant series.

    Computed as scipy.stats.pearsonr does (centred, scaled, normalised dot product, clipped to
    ±1) without importing scipy.stats, which costs a second at every command's start.
    """
    a, b = _paired(a, b)
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    xm, ym = a - a.mean(), b - b.mean()
    xm, ym = xm / np.abs(xm).max(), ym / np.abs(ym).max()
    r = np.dot(xm / np.linalg.norm(xm), ym / np.linalg.norm(ym))
    return float(np.clip(r, -1.0, 1.0))


def agreement_stats(pred, ref) -> dict:
    """Bland–Altman (pred − ref), ICC(2,1), CV% and Pearson r of one measure over cases."""
    return dict(**bland_altman(pred, ref), icc_2_1=icc_2_1(pred, ref),
                cv_percent=coefficient_of_variation(pred, ref), pearson_r=pearson_r(pred, ref))


def within_observer_variability(ci_high: float) -> bool:
    """The published reading of the Williams index: the CI includes 1 or lies above it
    (``ci_high ≥ 1``). A wider interval (fewer cases or observers) makes it easier to meet, so it
    is reported beside, not used as, the human-level verdict (:func:`human_level`)."""
    return bool(ci_high >= 1.0)


def human_level(ci_low: float, n_observers: int, margin: float = HUMAN_LEVEL_MARGIN) -> bool:
    """The human-level verdict: the lower end of the two-level CI is at least ``1 − margin``.

    A non-inferiority rule: the rater's agreement with the observers is, with 95% confidence, at
    least ``1 − margin`` of their agreement with each other. Fewer cases or observers widen the
    interval and so make the verdict harder, never easier. Needs
    :data:`MIN_OBSERVERS_FOR_VERDICT` observers (False with fewer) and a defined CI.
    """
    return bool(n_observers >= MIN_OBSERVERS_FOR_VERDICT and ci_low >= 1.0 - margin)


def verdict_rule(n_cases: int, n_observers: int, margin: float = HUMAN_LEVEL_MARGIN,
                 ci: float = 0.95) -> str:
    """The verdict rule in words, with the numbers of cases and observers it rests on."""
    rule = (f"human level if the lower end of the {ci:.0%} CI of the Williams index (bootstrap "
            f"over {n_cases} case(s) and {n_observers} observer(s)) is >= {1 - margin:g}, for "
            f"Dice and for 1/RMS DTA")
    if n_observers < MIN_OBSERVERS_FOR_VERDICT:
        rule += f"; no verdict with fewer than {MIN_OBSERVERS_FOR_VERDICT} observers"
    return rule


def williams_index(rater_vs_obs: np.ndarray, obs_vs_obs: np.ndarray, n_boot: int = 1000,
                   seed: int = 0, ci: float = 0.95, resample_observers: bool = True,
                   margin: float = HUMAN_LEVEL_MARGIN) -> dict:
    """Williams index of a rater R against observers O1..On, with a two-level bootstrap CI.

    ``rater_vs_obs[c, j]`` = agreement a(R, Oj) on case c; ``obs_vs_obs[c, p]`` = a(Oj, Ok) for the
    observer pairs p in ``itertools.combinations(range(n), 2)`` order. Agreement must grow with
    agreement: Dice as it is, distances as 1/RMS (the caller converts). WI = mean_j a(R,Oj) /
    mean_{j<k} a(Oj,Ok), each mean taken over cases and columns, NaN entries (an observer who did
    not read that case) left out.

    The CI (percentile method, ``n_boot`` draws, seeded) resamples cases with replacement and, with
    ``resample_observers``, the observers too: a draw weighs observer j by how often it was drawn
    and pair (j, k) by the product of both counts, so a pair needs two different observers (draws
    of a single observer carry no pair and are skipped). Few observers thus widen the interval as
    few cases do. ``resample_observers=False`` gives the one-level interval over cases only.

    Returns ``wi, ci_low, ci_high, within_observer_variability`` (published rule, ``ci_high ≥ 1``),
    ``human_level`` (:func:`human_level`), ``n_cases, n_observers``.
    """
    r = np.asarray(rater_vs_obs, dtype=np.float64)
    o = np.asarray(obs_vs_obs, dtype=np.float64)
    if r.ndim != 2 or o.ndim != 2 or r.shape[0] != o.shape[0]:
        raise ValueError(f"need [cases, observers] and [cases, pairs] arrays with the same cases, "
                         f"got {r.shape} and {o.shape}")
    n_obs = r.shape[1]
    if n_obs < 2 or o.shape[1] < 1:
        raise UserError(f"Williams index needs at least 2 observers to compare against, got "
                        f"{n_obs}; add observers (one sub-folder each)")
    pairs = np.array(list(itertools.combinations(range(n_obs), 2)))
    if resample_observers and o.shape[1] != len(pairs):
        raise ValueError(f"{n_obs} observers make {len(pairs)} pairs, got {o.shape[1]} pair columns")
    r_cnt, o_cnt = ~np.isnan(r), ~np.isnan(o)
    used = r_cnt.any(axis=1) | o_cnt.any(axis=1)
    r_val, o_val = np.where(r_cnt, r, 0.0)[used], np.where(o_cnt, o, 0.0)[used]
    r_cnt, o_cnt = r_cnt[used].astype(np.float64), o_cnt[used].astype(np.float64)
    n_cases = int(used.sum())

    def ratio(num_r, den_r, num_o, den_o):
        with np.errstate(divide="ignore", invalid="ignore"):
            return (num_r / den_r) / (num_o / den_o)

    wi = float(ratio(r_val.sum(), r_cnt.sum(), o_val.sum(), o_cnt.sum())) if n_cases else math.nan
    result = dict(wi=wi, ci_low=math.nan, ci_high=math.nan, within_observer_variability=False,
                  human_level=False, n_cases=n_cases, n_observers=n_obs)
    if n_cases < 2:
        return result
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_cases, size=(n_boot, n_cases))
    counts = np.zeros((n_boot, n_cases))
    np.add.at(counts, (np.arange(n_boot)[:, None], idx), 1.0)
    if resample_observers:
        draws = np.random.default_rng([seed, 1]).integers(0, n_obs, size=(n_boot, n_obs))
        w_obs = np.zeros((n_boot, n_obs))
        np.add.at(w_obs, (np.arange(n_boot)[:, None], draws), 1.0)
    else:
        w_obs = np.ones((n_boot, n_obs))
    w_pair = w_obs[:, pairs[:, 0]] * w_obs[:, pairs[:, 1]] if len(pairs) == o.shape[1] \
        else np.ones((n_boot, o.shape[1]))
    # Per draw: sum over cases (weighted by how often drawn) and columns (by observer weights).
    boot = ratio(((counts @ r_val) * w_obs).sum(axis=1), ((counts @ r_cnt) * w_obs).sum(axis=1),
                 ((counts @ o_val) * w_pair).sum(axis=1), ((counts @ o_cnt) * w_pair).sum(axis=1))
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return result
    alpha = (1.0 - ci) / 2.0
    ci_low, ci_high = (float(v) for v in np.percentile(boot, [100 * alpha, 100 * (1 - alpha)]))
    return {**result, "ci_low": ci_low, "ci_high": ci_high,
            "within_observer_variability": within_observer_variability(ci_high),
            "human_level": human_level(ci_low, n_obs, margin)}
