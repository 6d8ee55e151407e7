"""Agreement statistics against textbook examples; Williams index on synthetic observer studies."""
from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest
from scipy import ndimage

from nnunet_xfer.errors import UserError
from nnunet_xfer.evaluation.agreement import (agreement_stats, bland_altman,
                                              coefficient_of_variation, icc_2_1, pearson_r,
                                              verdict_rule, williams_index,
                                              within_observer_variability)
from nnunet_xfer.evaluation.metrics import segmentation_metrics

# Shrout & Fleiss (1979), Table 2: 6 targets rated by 4 judges. ICC(2,1) = 0.29 in the paper;
# from its mean squares BMS 11.24, JMS 32.49, EMS 1.02: (BMS−EMS)/(BMS+3·EMS+4·(JMS−EMS)/6).
SHROUT_FLEISS = np.array([[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8],
                          [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]], float)

# Bland & Altman (1986), Lancet: peak expiratory flow (l/min), Wright vs mini-Wright meter, first
# readings of 17 subjects; the paper gives mean difference −2.1 and SD 38.8.
WRIGHT = [494, 395, 516, 434, 476, 557, 413, 442, 650, 433, 417, 656, 267, 478, 178, 423, 427]
MINI_WRIGHT = [512, 430, 520, 428, 500, 600, 364, 380, 658, 445, 432, 626, 260, 477, 259, 350, 451]


def test_icc_2_1_shrout_fleiss_table():
    icc = icc_2_1(SHROUT_FLEISS)
    assert round(icc, 2) == 0.29
    bms, jms, ems = 11.24, 32.49, 1.02   # the paper's rounded mean squares
    assert icc == pytest.approx((bms - ems) / (bms + 3 * ems + 4 * (jms - ems) / 6), abs=2e-3)


def test_icc_2_1_pairs_and_edge_cases():
    a = SHROUT_FLEISS[:, 0]
    b = SHROUT_FLEISS[:, 3]
    assert icc_2_1(a, b) == pytest.approx(icc_2_1(SHROUT_FLEISS[:, [0, 3]]))
    assert icc_2_1(a, a) == pytest.approx(1.0)
    # a constant offset lowers absolute agreement (ICC2), unlike consistency (ICC3)
    assert icc_2_1(a, a + 3) < 0.9
    with_nan = np.vstack([SHROUT_FLEISS, [np.nan, 1, 2, 3]])
    assert icc_2_1(with_nan) == pytest.approx(icc_2_1(SHROUT_FLEISS))
    assert math.isnan(icc_2_1([1.0], [2.0]))


@pytest.mark.filterwarnings("ignore:The inplace keyword")  # inside pingouin, not ours
def test_icc_2_1_matches_pingouin_when_installed():
    pd = pytest.importorskip("pandas")
    pg = pytest.importorskip("pingouin")
    rng = np.random.default_rng(5)
    x = rng.normal(50, 10, size=(25, 1)) + rng.normal(0, 4, size=(25, 3)) + [0, 2, -1]
    long = pd.DataFrame([(i, j, x[i, j]) for i in range(25) for j in range(3)],
                        columns=["target", "rater", "score"])
    table = pg.intraclass_corr(long, "target", "rater", "score").set_index("Type")["ICC"]
    icc2 = table["ICC(A,1)"] if "ICC(A,1)" in table else table["ICC2"]  # pingouin ≥ 0.7 renamed it
    assert icc_2_1(x) == pytest.approx(icc2, abs=1e-9)


def test_bland_altman_pefr_example():
    ba = bland_altman(WRIGHT, MINI_WRIGHT)
    assert ba["n"] == 17
    assert round(ba["bias"], 1) == -2.1
    assert round(ba["sd"], 1) == 38.8
    assert ba["loa_low"] == pytest.approx(ba["bias"] - 1.96 * ba["sd"])
    assert ba["loa_high"] == pytest.approx(ba["bias"] + 1.96 * ba["sd"])
    assert round(ba["loa_low"], 1) == -78.1 and round(ba["loa_high"], 1) == 73.9


def test_coefficient_of_variation_hand_computed():
    # pair SDs are both √2; means 11 and 19
    want = math.sqrt((2 / 11 ** 2 + 2 / 19 ** 2) / 2) * 100
    assert coefficient_of_variation([10, 20], [12, 18]) == pytest.approx(want)
    assert coefficient_of_variation([5, 7], [5, 7]) == 0.0


def test_pearson_and_nan_pairs_are_dropped():
    assert pearson_r([1, 2, 3, 4], [2, 4, 6, 8.5]) > 0.99
    assert math.isnan(pearson_r([1, 2, 3], [5, 5, 5]))
    stats = agreement_stats([10, 12, np.nan, 15, 20], [11, 12, 14, np.nan, 19])
    assert stats["n"] == 3
    assert stats["bias"] == pytest.approx(np.mean([-1, 0, 1]))
    assert set(stats) == {"bias", "sd", "loa_low", "loa_high", "n", "icc_2_1", "cv_percent",
                          "pearson_r"}


def test_williams_index_hand_computed_with_missing_reads():
    rater = np.array([[0.8, 0.9], [0.7, np.nan], [0.9, 0.8]])
    pairs = np.array([[0.9], [0.85], [np.nan]])
    wi = williams_index(rater, pairs, n_boot=200, seed=1)
    assert wi["wi"] == pytest.approx(np.mean([0.8, 0.9, 0.7, 0.9, 0.8]) / np.mean([0.9, 0.85]))
    assert wi["n_cases"] == 3
    assert wi == williams_index(rater, pairs, n_boot=200, seed=1)   # seeded
    assert wi["ci_low"] <= wi["wi"] <= wi["ci_high"]


def test_within_observer_variability_is_ci_high_at_least_one():
    assert within_observer_variability(1.0) and within_observer_variability(1.3)
    assert not within_observer_variability(0.999)
    rng = np.random.default_rng(0)
    observers = rng.uniform(0.85, 0.95, size=(40, 6))  # the 6 pairs of 4 observers
    as_good = williams_index(rng.uniform(0.85, 0.95, size=(40, 4)), observers)
    better = williams_index(rng.uniform(0.96, 0.99, size=(40, 4)), observers)
    worse = williams_index(rng.uniform(0.70, 0.80, size=(40, 4)), observers)
    assert as_good["ci_low"] <= 1 <= as_good["ci_high"] and as_good["within_observer_variability"]
    assert better["ci_low"] > 1 and better["within_observer_variability"]   # CI above 1 counts
    assert worse["ci_high"] < 1 and not worse["within_observer_variability"]


def test_williams_index_needs_two_observers():
    with pytest.raises(UserError, match="at least 2 observers"):
        williams_index(np.ones((5, 1)), np.ones((5, 0)))
    with pytest.raises(ValueError):
        williams_index(np.ones((5, 3)), np.ones((4, 3)))


def _observer_study(n_cases: int = 8, n_observers: int = 3, seed: int = 0):
    """Reference muscle-like rings and observers whose outlines wander ±1–2 px around them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:72, :72]
    for case in range(n_cases):
        a, b = rng.uniform(24, 32), rng.uniform(18, 26)
        ell = (yy - 36) ** 2 / a ** 2 + (xx - 36) ** 2 / b ** 2
        ref = (ell < 1) & (ell > 0.45)
        signed = ndimage.distance_transform_edt(ref) - ndimage.distance_transform_edt(~ref)
        observers = [signed + 1.5 * ndimage.gaussian_filter(rng.normal(size=ref.shape), 4) * 8 > 0
                     for _ in range(n_observers)]
        yield ref, observers


def _agreements(rater_masks, observer_masks, spacing=(0.8, 0.8)):
    """Dice and 1/RMS of a rater against each observer, and of every observer pair."""
    def agree(p, q):
        m = segmentation_metrics(p, q, spacing)
        return m["dice"], 1.0 / m["rms_dta_mm"]
    r = np.array([[agree(rm, o) for o in obs] for rm, obs in zip(rater_masks, observer_masks)])
    o = np.array([[agree(obs[j], obs[k]) for j, k in combinations(range(len(obs)), 2)]
                  for obs in observer_masks])
    return r, o   # [cases, observers or pairs, (dice, 1/rms)]


def test_williams_index_on_an_observer_study_copy_vs_eroded():
    study = list(_observer_study())
    refs = [ref for ref, _ in study]
    observers = [obs for _, obs in study]
    eroded = [ndimage.binary_erosion(ref, iterations=3) for ref in refs]
    r_copy, o = _agreements(refs, observers)
    r_eroded, _ = _agreements(eroded, observers)
    for metric in (0, 1):   # Dice, 1/RMS
        copy = williams_index(r_copy[..., metric], o[..., metric], n_boot=500)
        bad = williams_index(r_eroded[..., metric], o[..., metric], n_boot=500)
        assert copy["within_observer_variability"], (metric, copy)
        assert not bad["within_observer_variability"], (metric, bad)
        assert bad["wi"] < copy["wi"]


def test_pearson_equals_scipy():
    from scipy import stats
    rng = np.random.default_rng(4)
    for n in (3, 10, 200):
        a = rng.normal(50, 10, n)
        b = 0.7 * a + rng.normal(0, 5, n)
        assert pearson_r(a, b) == pytest.approx(stats.pearsonr(a, b)[0], abs=1e-12)
    assert pearson_r([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def _observer_matrices(n_cases: int, n_obs: int, seed: int, noise: float = 0.01):
    """Agreement of a rater with each observer and of every observer pair, for observers whose
    quality differs, with per-case difficulty and measurement noise."""
    rng = np.random.default_rng(seed)
    quality = rng.uniform(0.80, 0.95, n_obs)
    case = rng.normal(0, max(noise, 0.02), n_cases)[:, None]
    r = np.clip(quality[None, :] + case + rng.normal(0, noise, (n_cases, n_obs)), 0, 1)
    o = np.array([[min(quality[j], quality[k]) for j, k in combinations(range(n_obs), 2)]])
    o = np.clip(o + case + rng.normal(0, noise, (n_cases, o.shape[1])), 0, 1)
    return r, o


@pytest.mark.parametrize("n_obs", [3, 4, 6])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_level_interval_not_narrower_than_one_level(n_obs, seed):
    """Resampling observers as well as cases widens the CI: few observers cannot make it tight."""
    r, o = _observer_matrices(20, n_obs, seed)
    two = williams_index(r, o, n_boot=2000, seed=seed)
    one = williams_index(r, o, n_boot=2000, seed=seed, resample_observers=False)
    assert two["wi"] == one["wi"]
    assert two["ci_high"] - two["ci_low"] >= one["ci_high"] - one["ci_low"]
    assert two["ci_low"] <= one["ci_low"]  # the verdict's end moves down, never up


def test_one_level_interval_is_the_case_bootstrap():
    """resample_observers=False is the percentile bootstrap over cases, computed by hand."""
    r, o = _observer_matrices(12, 4, 5)
    one = williams_index(r, o, n_boot=300, seed=7, resample_observers=False)
    idx = np.random.default_rng(7).integers(0, 12, size=(300, 12))
    boot = [r[i].mean() / o[i].mean() for i in idx]
    assert [one["ci_low"], one["ci_high"]] == pytest.approx(np.percentile(boot, [2.5, 97.5]))


def test_human_level_needs_enough_cases_and_observers():
    """Raters as good as the observers (WI 1): human level on 40 cases and 6 observers; on 5 cases
    and 3 of the observers the interval is wider and the verdict never easier; with 2 observers
    (their disagreement cannot be resampled) there is no verdict."""
    full_low, few_low, full_hl, few_hl = [], [], 0, 0
    for seed in range(10):
        r, o = _observer_matrices(40, 6, seed, noise=0.05)
        r = r * (o.mean() / r.mean())
        full = williams_index(r, o)
        few = williams_index(r[:5, :3], o[:5, [0, 1, 5]])  # observers 0-2: pairs 01, 02, 12
        assert full["wi"] == pytest.approx(1.0) and full["human_level"]
        full_low.append(full["ci_low"])
        few_low.append(few["ci_low"])
        full_hl += full["human_level"]
        few_hl += few["human_level"]
        two = williams_index(r[:, :2], o[:, :1])
        assert not two["human_level"] and two["n_observers"] == 2
    assert few_hl < full_hl and np.mean(few_low) < np.mean(full_low)
    assert "no verdict with fewer than 3 observers" in verdict_rule(40, 2)
    assert "40 case(s) and 6 observer(s)" in verdict_rule(40, 6)


def test_williams_index_needs_the_pairs_of_its_observers():
    with pytest.raises(ValueError, match="pairs"):
        williams_index(np.ones((5, 4)), np.ones((5, 3)))
