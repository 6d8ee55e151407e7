"""Agreement statistics: Bland–Altman, ICC(2,1), coefficient of variation, Pearson r, and the
human-level test of a rater against observers on the disagreement scale.

Used for muscle measures (SMA, SMD) of predictions against a reference, and for the observer study.
Pairs or cases with a NaN are left out (a failed segmentation has SMD NaN); the returned ``n`` says
how many were used. The human-level rule and why: docs/definitions.md#human-level.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from nnunet_xfer.errors import UserError

#: Multiplier of the SD of differences for the 95% limits of agreement (Bland & Altman 1986).
LOA_Z = 1.96
#: Human level: the rater's disagreement with the observers may exceed the observers' disagreement
#: with each other by less than this fraction (non-inferiority margin on their ratio; the 80–125 %
#: rule of ratio endpoints, docs/definitions.md#human-level).
HUMAN_LEVEL_MARGIN = 0.25
#: One-sided level of each non-inferiority test: the upper end of a two-sided 95 % interval.
ALPHA = 0.025
#: Observers needed: with 2 there is one observer pair, and how much observers disagree among
#: themselves cannot be resampled.
MIN_OBSERVERS_FOR_VERDICT = 3
#: Bootstrap draws of the human-level test: enough that a Holm step over 40 groups
#: (α / 40 = 0.000625) can be passed (the smallest p is 1 / (draws + 1)).
N_BOOT = 10000
#: Redraw rounds for degenerate bootstrap draws before giving up.
_MAX_REDRAWS = 1000


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


def within_observer_variability(ci_low: float) -> bool:
    """The published reading of the Williams index on the disagreement scale: the interval of the
    disagreement ratio includes 1 or lies below it (``ci_low ≤ 1``; for Dice exactly "the WI's
    interval includes 1 or lies above it"). A wider interval (fewer cases or observers) makes it
    easier to meet, so it is reported beside, not used as, the human-level verdict."""
    return bool(ci_low <= 1.0)


def holm(p_values) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979): the i-th smallest of m p-values times
    (m − i + 1), made monotone and capped at 1. Reject where adjusted p ≤ α: the family-wise
    error rate is then at most α."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        running = max(running, min(1.0, (p.size - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def verdict_rule(n_cases: int, n_observers: int, margin: float = HUMAN_LEVEL_MARGIN,
                 n_tests: int = 1, alpha: float = ALPHA) -> str:
    """The verdict rule in words, with the numbers of cases, observers and tests it rests on."""
    family = (f"Holm-adjusted over the {n_tests} raters/groups tested together"
              if n_tests > 1 else "a single test")
    return (f"human level if the rater's disagreement with the observers (1 − Dice, and RMS DTA) "
            f"is non-inferior to the observers' disagreement with each other: their ratio < "
            f"{1 + margin:g} (margin {margin:g}), one-sided p ≤ {alpha:g} for both metrics (two-level "
            f"bootstrap over {n_cases} case(s) and {n_observers} observer(s)), {family}")


def _redraw_degenerate(draw, valid, n_boot: int) -> tuple[np.ndarray, int]:
    """Draw ``n_boot`` index rows with ``draw(k)``; redraw the rows that ``valid`` rejects until all
    pass. Returns the rows and how many draws were redrawn (counted, never dropped silently)."""
    rows = draw(n_boot)
    redrawn = 0
    bad = ~valid(rows)
    for _ in range(_MAX_REDRAWS):
        if not bad.any():
            return rows, redrawn
        redrawn += int(bad.sum())
        rows[bad] = draw(int(bad.sum()))
        bad = ~valid(rows)
    raise UserError("the observers' bootstrap finds no resample with an observer pair; every case "
                    "needs at least two observers who read it")


def _ratio(rater: np.ndarray, observers: np.ndarray) -> np.ndarray:
    """rater / observers, with 0 / 0 = 1 (no disagreement on either side) and x / 0 = inf."""
    rater, observers = np.broadcast_arrays(np.asarray(rater, float), np.asarray(observers, float))
    out = np.full(rater.shape, np.inf)
    pos = observers > 0
    out[pos] = rater[pos] / observers[pos]
    out[~pos & (rater == 0)] = 1.0
    return out


def disagreement_ratio(rater_vs_obs: np.ndarray, obs_vs_obs: np.ndarray,
                       margin: float = HUMAN_LEVEL_MARGIN, n_boot: int = N_BOOT, seed: int = 0,
                       ci: float = 0.95, alpha: float = ALPHA) -> dict:
    """The human-level test of a rater R against observers O1..On (n ≥ 3) on one disagreement.

    ``rater_vs_obs[c, j]`` = d(R, Oj) on case c, ``obs_vs_obs[c, p]`` = d(Oj, Ok) for the pairs p
    in ``itertools.combinations(range(n), 2)`` order, d a disagreement that is 0 for identical
    masks (1 − Dice; RMS DTA in mm); NaN where an observer did not read a case (left out).

    ratio = mean_{c,j} d(R, Oj) / mean_{c,j<k} d(Oj, Ok): 1 when R disagrees with the observers as
    much as they disagree with each other. H0: ratio ≥ 1 + margin; the one-sided bootstrap
    p-value is (1 + #draws with ratio ≥ 1 + margin) / (n_boot + 1). Each draw resamples the cases
    and the observers with replacement (two levels: an observer drawn twice weighs twice, a pair
    by the product of its observers' weights); a draw of a single observer has no pair, so it is
    redrawn, and the number redrawn is returned (``n_redrawn``). A draw where the observers agree
    perfectly has ratio inf (1 when R agrees perfectly too), counted in ``n_zero_baseline``.

    Returns ``ratio, rater_disagreement, observer_disagreement, ci_low, ci_high`` (percentile,
    level ``ci``), ``p_value``, ``human_level`` (p ≤ alpha: the verdict of a single test; a family
    of tests adjusts it with :func:`holm`), ``within_observer_variability``, ``n_cases,
    n_observers, n_boot, n_redrawn, n_zero_baseline``. UserError with fewer than 3 observers.
    """
    r = np.asarray(rater_vs_obs, dtype=np.float64)
    o = np.asarray(obs_vs_obs, dtype=np.float64)
    if r.ndim != 2 or o.ndim != 2 or r.shape[0] != o.shape[0]:
        raise ValueError(f"need [cases, observers] and [cases, pairs] arrays with the same cases, "
                         f"got {r.shape} and {o.shape}")
    n_obs = r.shape[1]
    if n_obs < MIN_OBSERVERS_FOR_VERDICT:
        raise UserError(f"the human-level test needs at least {MIN_OBSERVERS_FOR_VERDICT} "
                        f"observers to compare against, got {n_obs}: with fewer, how much "
                        f"observers disagree among themselves cannot be resampled; add observers "
                        f"(one sub-folder each)")
    pairs = np.array(list(itertools.combinations(range(n_obs), 2)))
    if o.shape[1] != len(pairs):
        raise ValueError(f"{n_obs} observers make {len(pairs)} pairs, got {o.shape[1]} pair columns")
    if np.nanmin(np.concatenate([r.ravel(), o.ravel(), [0.0]])) < 0:
        raise ValueError("a disagreement is never negative (pass 1 − Dice, or a distance)")
    r_cnt, o_cnt = ~np.isnan(r), ~np.isnan(o)
    used = r_cnt.any(axis=1) & o_cnt.any(axis=1)
    r_val, o_val = np.where(r_cnt, r, 0.0)[used], np.where(o_cnt, o, 0.0)[used]
    r_cnt, o_cnt = r_cnt[used].astype(np.float64), o_cnt[used].astype(np.float64)
    n_cases = int(used.sum())
    result = dict(ratio=math.nan, rater_disagreement=math.nan, observer_disagreement=math.nan,
                  ci_low=math.nan, ci_high=math.nan, p_value=1.0, human_level=False,
                  within_observer_variability=False, n_cases=n_cases, n_observers=n_obs,
                  n_boot=int(n_boot), n_redrawn=0, n_zero_baseline=0)
    if n_cases == 0:
        return result
    d_r, d_o = r_val.sum() / r_cnt.sum(), o_val.sum() / o_cnt.sum()
    result.update(ratio=float(_ratio(d_r, d_o)), rater_disagreement=float(d_r),
                  observer_disagreement=float(d_o))
    if n_cases < 2:
        return result

    rng = np.random.default_rng(seed)
    case_rows = lambda k: rng.integers(0, n_cases, size=(k, n_cases))  # noqa: E731
    obs_rows = lambda k: rng.integers(0, n_obs, size=(k, n_obs))  # noqa: E731

    def weights(rows: np.ndarray, size: int) -> np.ndarray:
        w = np.zeros((rows.shape[0], size))
        np.add.at(w, (np.arange(rows.shape[0])[:, None], rows), 1.0)
        return w

    def has_pair(rows: np.ndarray) -> np.ndarray:
        return (rows != rows[:, :1]).any(axis=1)

    draws, n_redrawn = _redraw_degenerate(obs_rows, has_pair, n_boot)
    w_obs = weights(draws, n_obs)
    w_pair = w_obs[:, pairs[:, 0]] * w_obs[:, pairs[:, 1]]
    counts = weights(case_rows(n_boot), n_cases)

    def denominators(c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return ((c @ r_cnt) * w_obs).sum(axis=1), ((c @ o_cnt) * w_pair).sum(axis=1)

    # Missing reads can leave a draw without a read of the rater or of any observer pair: such a
    # draw's cases are redrawn as well (and counted).
    r_den, o_den = denominators(counts)
    for _ in range(_MAX_REDRAWS):
        bad = (r_den <= 0) | (o_den <= 0)
        if not bad.any():
            break
        n_redrawn += int(bad.sum())
        counts[bad] = weights(case_rows(int(bad.sum())), n_cases)
        r_den, o_den = denominators(counts)
    else:
        raise UserError("the observers' bootstrap finds no resample with an observer pair; every "
                        "case needs at least two observers who read it")
    # Per draw: sum over cases (weighted by how often drawn) and columns (by observer weights).
    boot_r = ((counts @ r_val) * w_obs).sum(axis=1) / r_den
    boot_o = ((counts @ o_val) * w_pair).sum(axis=1) / o_den
    boot = _ratio(boot_r, boot_o)
    alpha_ci = (1.0 - ci) / 2.0
    big = np.finfo(np.float64).max  # inf (observers agreeing perfectly) ranks last, finitely
    ends = np.percentile(np.minimum(boot, big), [100 * alpha_ci, 100 * (1 - alpha_ci)])
    ci_low, ci_high = (float(v) if v < big / 2 else math.inf for v in ends)
    p_value = float((1 + np.count_nonzero(boot >= 1.0 + margin)) / (n_boot + 1))
    return {**result, "ci_low": ci_low, "ci_high": ci_high, "p_value": p_value,
            "human_level": bool(p_value <= alpha),
            "within_observer_variability": within_observer_variability(ci_low),
            "n_redrawn": int(n_redrawn), "n_zero_baseline": int(np.count_nonzero(boot_o <= 0))}
