"""Agreement statistics: Bland–Altman, ICC(2,1), coefficient of variation, Pearson r, Williams index.

Used for muscle measures (SMA, SMD) of predictions against a reference, and for the observer study.
Pairs or cases with a NaN are left out (a failed segmentation has SMD NaN); the returned ``n`` says
how many were used.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

from nnunet_xfer.errors import UserError

#: Multiplier of the SD of differences for the 95% limits of agreement (Bland & Altman 1986).
LOA_Z = 1.96


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
    """Pearson correlation (scipy); NaN with fewer than 3 pairs or a constant series."""
    a, b = _paired(a, b)
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(stats.pearsonr(a, b)[0])


def agreement_stats(pred, ref) -> dict:
    """Bland–Altman (pred − ref), ICC(2,1), CV% and Pearson r of one measure over cases."""
    return dict(**bland_altman(pred, ref), icc_2_1=icc_2_1(pred, ref),
                cv_percent=coefficient_of_variation(pred, ref), pearson_r=pearson_r(pred, ref))


def within_observer_variability(ci_high: float) -> bool:
    """Whether a rater agrees with the observers as well as they agree with each other.

    True when the Williams-index CI includes 1 or lies above it, i.e. its upper end is ≥ 1.
    """
    return bool(ci_high >= 1.0)


def williams_index(rater_vs_obs: np.ndarray, obs_vs_obs: np.ndarray, n_boot: int = 1000,
                   seed: int = 0, ci: float = 0.95) -> dict:
    """Williams index of a rater R against observers O1..On, with a bootstrap CI over cases.

    ``rater_vs_obs[c, j]`` = agreement a(R, Oj) on case c; ``obs_vs_obs[c, p]`` = a(Oj, Ok) for each
    observer pair p (j < k). Agreement must grow with agreement: Dice as it is, distances as 1/RMS
    (the caller converts). WI = mean_j a(R,Oj) / mean_{j<k} a(Oj,Ok), each mean taken over cases
    and columns, NaN entries (an observer who did not read that case) left out. The CI resamples
    cases with replacement (percentile method, ``n_boot`` draws, seeded).
    Returns ``wi, ci_low, ci_high, within_observer_variability, n_cases``.
    """
    r = np.asarray(rater_vs_obs, dtype=np.float64)
    o = np.asarray(obs_vs_obs, dtype=np.float64)
    if r.ndim != 2 or o.ndim != 2 or r.shape[0] != o.shape[0]:
        raise ValueError(f"need [cases, observers] and [cases, pairs] arrays with the same cases, "
                         f"got {r.shape} and {o.shape}")
    if r.shape[1] < 2 or o.shape[1] < 1:
        raise UserError(f"Williams index needs at least 2 observers to compare against, got "
                        f"{r.shape[1]}; add observers (one sub-folder each)")
    # Per-case sums and counts let each bootstrap draw be two gathers and a sum.
    sums = np.stack([np.nansum(r, axis=1), np.nansum(o, axis=1)])
    counts = np.stack([np.sum(~np.isnan(r), axis=1), np.sum(~np.isnan(o), axis=1)])
    used = (counts > 0).any(axis=0)
    sums, counts = sums[:, used], counts[:, used]
    n_cases = int(used.sum())

    def ratio(s: np.ndarray, c: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return (s[0] / c[0]) / (s[1] / c[1])

    wi = float(ratio(sums.sum(axis=1), counts.sum(axis=1))) if n_cases else math.nan
    if n_cases < 2:
        return dict(wi=wi, ci_low=math.nan, ci_high=math.nan,
                    within_observer_variability=False, n_cases=n_cases)
    idx = np.random.default_rng(seed).integers(0, n_cases, size=(n_boot, n_cases))
    boot = ratio(sums[:, idx].sum(axis=2), counts[:, idx].sum(axis=2))
    alpha = (1.0 - ci) / 2.0
    ci_low, ci_high = (float(v) for v in np.nanpercentile(boot, [100 * alpha, 100 * (1 - alpha)]))
    return dict(wi=wi, ci_low=ci_low, ci_high=ci_high,
                within_observer_variability=within_observer_variability(ci_high), n_cases=n_cases)
