"""Agreement statistics against textbook examples; the human-level test on simulated observer
studies (the rule: docs/definitions.md#human-level)."""
from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest

from nnunet_xfer.errors import UserError
from nnunet_xfer.evaluation.agreement import (ALPHA, agreement_stats, bland_altman,
                                              coefficient_of_variation, disagreement_ratio, holm,
                                              icc_2_1, pearson_r, verdict_rule,
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


def test_disagreement_ratio_hand_computed_with_missing_reads():
    rater = np.array([[0.2, 0.1, 0.3], [0.3, np.nan, 0.2], [0.1, 0.2, 0.1]])
    pairs = np.array([[0.1, 0.05, 0.1], [0.15, np.nan, np.nan], [np.nan, 0.1, 0.2]])
    t = disagreement_ratio(rater, pairs, n_boot=200, seed=1)
    d_r = np.nanmean(rater)
    d_o = np.nanmean(pairs)
    assert (t["rater_disagreement"], t["observer_disagreement"]) == pytest.approx((d_r, d_o))
    assert t["ratio"] == pytest.approx(d_r / d_o)
    assert t["n_cases"] == 3 and t["n_observers"] == 3 and t["n_boot"] == 200
    assert t == disagreement_ratio(rater, pairs, n_boot=200, seed=1)   # seeded
    assert t["ci_low"] <= t["ratio"] <= t["ci_high"]


def test_within_observer_variability_is_ci_low_at_most_one():
    assert within_observer_variability(1.0) and within_observer_variability(0.7)
    assert not within_observer_variability(1.001)
    rng = np.random.default_rng(0)
    observers = rng.uniform(0.05, 0.15, size=(40, 6))  # the 6 pairs of 4 observers
    as_good = disagreement_ratio(rng.uniform(0.05, 0.15, size=(40, 4)), observers)
    better = disagreement_ratio(rng.uniform(0.01, 0.04, size=(40, 4)), observers)
    worse = disagreement_ratio(rng.uniform(0.20, 0.30, size=(40, 4)), observers)
    assert as_good["ci_low"] <= 1 <= as_good["ci_high"] and as_good["within_observer_variability"]
    assert better["ci_high"] < 1 and better["within_observer_variability"]  # below 1 counts
    assert worse["ci_low"] > 1 and not worse["within_observer_variability"]
    assert as_good["human_level"] and better["human_level"] and not worse["human_level"]


def test_fewer_than_three_observers_are_refused():
    with pytest.raises(UserError, match="at least 3 observers"):
        disagreement_ratio(np.ones((5, 2)), np.ones((5, 1)))
    with pytest.raises(ValueError):
        disagreement_ratio(np.ones((5, 3)), np.ones((4, 3)))
    with pytest.raises(ValueError, match="pairs"):
        disagreement_ratio(np.ones((5, 4)), np.ones((5, 3)))
    with pytest.raises(ValueError, match="negative"):
        disagreement_ratio(-np.ones((5, 3)), np.ones((5, 3)))


def test_degenerate_draws_are_redrawn_and_counted():
    """With 3 observers a draw of one observer three times has no pair: 1 in 9 draws. They are
    redrawn (the interval always rests on n_boot draws) and their number is reported."""
    rng = np.random.default_rng(3)
    t = disagreement_ratio(rng.uniform(0.05, 0.1, (10, 3)), rng.uniform(0.05, 0.1, (10, 3)),
                           n_boot=9000, seed=2)
    assert t["n_boot"] == 9000
    assert 0.8 * 1000 < t["n_redrawn"] < 1.25 * 1000   # 9000 / 9 expected, then their redraws
    four = disagreement_ratio(rng.uniform(0.05, 0.1, (10, 4)), rng.uniform(0.05, 0.1, (10, 6)),
                              n_boot=9000, seed=2)
    assert 0.7 * 9000 / 64 < four["n_redrawn"] < 1.3 * 9000 / 64   # 4 observers: 4 in 4⁴
    # observers who agree perfectly on every drawn case: ratio inf unless the rater agrees too
    same = disagreement_ratio(np.full((4, 3), 0.1), np.zeros((4, 3)), n_boot=100)
    assert same["ratio"] == np.inf and same["n_zero_baseline"] == 100 and not same["human_level"]
    perfect = disagreement_ratio(np.zeros((4, 3)), np.zeros((4, 3)), n_boot=100)
    assert perfect["ratio"] == 1.0 and perfect["human_level"]


def test_identical_masks_are_one_fixed_baseline():
    """A rater identical to an observer on some cases changes nothing of the observers' baseline:
    disagreement 0 is 0 for every rater (the former 1/RMS floor moved with the rater judged)."""
    rng = np.random.default_rng(1)
    pairs = rng.uniform(0.5, 1.5, (8, 3))   # RMS DTA in mm of the 3 observer pairs
    close = rng.uniform(0.5, 1.5, (8, 3))
    exact = close.copy()
    exact[:4, 0] = 0.0   # identical to observer 0 on four cases
    a, b = disagreement_ratio(close, pairs, seed=4), disagreement_ratio(exact, pairs, seed=4)
    assert a["observer_disagreement"] == b["observer_disagreement"] == pytest.approx(pairs.mean())
    assert b["ratio"] < a["ratio"]   # identical never scores worse than near-identical


def test_holm_step_down():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 × 4, 3, 2, 1 → 0.02, 0.03, 0.06, 0.04 → monotone 0.06
    assert holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5]) == [0.5] and holm([0.9, 0.8]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def _ring_study(seed: int, rater_noise: tuple[float, ...], observer_noise: float = 0.6,
                n_cases: int = 10, n_observers: int = 5):
    """Observers = a muscle-like ring ± smooth boundary noise (observer_noise px, Dice ≈ 0.95
    between them); rater k the same ring ± rater_noise[k] px. Returns the pairwise table."""
    import pandas as pd
    from conftest import ring_mask
    rng = np.random.default_rng(seed)
    observers = [f"obs_{k}" for k in range(n_observers)]
    raters = [f"rater_{k}" for k in range(len(rater_noise))]
    rows, worst = [], {}
    for c in range(n_cases):
        case = f"case_{c:02d}"
        base = rng.normal(0, 2.0, (2, 6))
        masks = {o: ring_mask(96, (18, 40), base + rng.normal(0, observer_noise, (2, 6)))
                 for o in observers}
        for r, noise in zip(raters, rater_noise):
            masks[r] = ring_mask(96, (18, 40), base + rng.normal(0, noise, (2, 6)))
        worst[case] = float(np.hypot(96 * 0.8, 96 * 0.8))
        pairs = list(combinations(observers, 2)) + [(r, o) for r in raters for o in observers]
        for a, b in pairs:
            m = segmentation_metrics(masks[a], masks[b], (0.8, 0.8))
            rows.append({"case_id": case, "rater_a": a, "rater_b": b, "dice": m["dice"],
                         "rms_dta_mm": m["rms_dta_mm"], "failed": m["failed"]})
    return pd.DataFrame(rows), observers, sorted(worst), worst


def test_human_level_rule_on_simulated_observer_studies():
    """Against 5 observers who agree at Dice ≈ 0.95 (10 cases): a rater at Dice ≈ 0.915 (1.7×
    their disagreement) is never human level, on either metric (the former rule on the Dice
    Williams index, lower CI ≥ 0.95, called such raters human level 20 times in 20); a rater drawn
    exactly like the observers is human level in most studies. Fixed seeds: deterministic."""
    from nnunet_xfer.evaluation.raters import williams_rows
    worse_dice, like_calls, n_studies = [], 0, 8
    for seed in range(n_studies):
        table, observers, cases, worst = _ring_study(seed, (1.3, 0.6))
        obs = table[~table.rater_a.str.startswith("rater")]
        assert 0.94 < obs.dice.mean() < 0.955
        worse = {r["metric"]: r for r in williams_rows(table, "rater_0", observers, cases, worst)}
        like = {r["metric"]: r for r in williams_rows(table, "rater_1", observers, cases, worst)}
        worse_dice.append(table[table.rater_a == "rater_0"].dice.mean())
        assert not worse["dice"]["human_level"] and not worse["rms_dta_mm"]["human_level"]
        assert worse["dice"]["ratio"] > 1.4 and worse["dice"]["ci_high"] > 1.25
        like_calls += like["dice"]["human_level"] and like["rms_dta_mm"]["human_level"]
    assert 0.90 < np.mean(worse_dice) < 0.925   # the scenario: a Dice-0.915 rater
    assert like_calls >= 0.8 * n_studies, like_calls   # most of the time


def test_pearson_equals_scipy():
    from scipy import stats
    rng = np.random.default_rng(4)
    for n in (3, 10, 200):
        a = rng.normal(50, 10, n)
        b = 0.7 * a + rng.normal(0, 5, n)
        assert pearson_r(a, b) == pytest.approx(stats.pearsonr(a, b)[0], abs=1e-12)
    assert pearson_r([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def _observer_matrices(n_cases: int, n_obs: int, seed: int, noise: float = 0.01):
    """Disagreement of a rater with each observer and of every observer pair, for observers whose
    quality differs, with per-case difficulty and measurement noise."""
    rng = np.random.default_rng(seed)
    quality = rng.uniform(0.05, 0.20, n_obs)
    case = rng.normal(0, max(noise, 0.02), n_cases)[:, None]
    r = np.clip(quality[None, :] + case + rng.normal(0, noise, (n_cases, n_obs)), 0, 1)
    o = np.array([[max(quality[j], quality[k]) for j, k in combinations(range(n_obs), 2)]])
    o = np.clip(o + case + rng.normal(0, noise, (n_cases, o.shape[1])), 0, 1)
    return r, o


def test_human_level_needs_enough_cases_and_observers():
    """Raters as good as the observers (ratio 1): human level on 40 cases and 6 observers; on 5
    cases and 3 of the observers the interval is wider and the verdict never easier."""
    full_high, few_high, full_hl, few_hl = [], [], 0, 0
    for seed in range(10):
        r, o = _observer_matrices(40, 6, seed, noise=0.05)
        r = r * (o.mean() / r.mean())
        full = disagreement_ratio(r, o, n_boot=2000)
        few = disagreement_ratio(r[:5, :3], o[:5, [0, 1, 5]], n_boot=2000)  # pairs 01, 02, 12
        assert full["ratio"] == pytest.approx(1.0) and full["human_level"]
        full_high.append(full["ci_high"])
        few_high.append(few["ci_high"])
        full_hl += full["human_level"]
        few_hl += few["human_level"]
    assert few_hl < full_hl and np.mean(few_high) > np.mean(full_high)
    assert "40 case(s) and 6 observer(s)" in verdict_rule(40, 6)
    assert "Holm-adjusted over the 12 raters/groups" in verdict_rule(40, 6, n_tests=12)
    assert "ratio < 1.25" in verdict_rule(40, 6) and f"p ≤ {ALPHA:g}" in verdict_rule(40, 6)
