"""The analysis of benchmarks/data_efficiency.py on an evaluation of the fake results tree: the
points with their intervals, the paired differences against scratch, the threshold line, the
random-vs-diverse table, the Markdown and the figure."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import benchmark_module

from nnunet_xfer.evaluation.fold_evaluation import evaluate_dataset
from nnunet_xfer.evaluation.references import case_scores


def _benchmark():
    return benchmark_module("data_efficiency")


@pytest.fixture(scope="module")
def evaluated(fake_tree, tmp_path_factory):
    base, _ = fake_tree
    out = evaluate_dataset("990", out=tmp_path_factory.mktemp("de") / "eval",
                           observers=base / "observers")
    return _benchmark()._read(out)


def test_points_paired_differences_and_threshold_line(evaluated):
    de = _benchmark()
    cases, summary = evaluated
    points = de.point_table(cases, summary)
    # the curve's points only: no reference row, no n = all run
    assert sorted(zip(points.source, points.n)) == [("jigsaw", 5), ("jigsaw", 10), ("scratch", 5)]
    j5 = points[(points.source == "jigsaw") & (points.n == 5)].iloc[0]
    rows = cases[(cases.source == "jigsaw") & (cases.size_tag == "5")]
    scores = case_scores(rows, "dice")
    assert j5.cases == len(rows) == 6 and j5.dice["mean"] == pytest.approx(scores.mean())
    assert j5.dice["ci_low"] < j5.dice["mean"] < j5.dice["ci_high"]
    # paired against scratch n=5 on the cases both have (jigsaw n=5 lacks fold 1)
    scratch = case_scores(cases[(cases.source == "scratch") & (cases.size_tag == "5")], "dice")
    common = scores.index.intersection(scratch.index)
    assert j5.dice_vs_scratch["n"] == len(common) == 6
    assert j5.dice_vs_scratch["mean"] == pytest.approx((scores[common] - scratch[common]).mean())
    # the fake images hold only the ring in muscle HU: the threshold beats every model
    assert not points.beats_threshold.any()
    line = de.reference_line(cases)
    thr = cases[cases.source == "threshold"]
    assert line["cases"] == len(thr) == 12
    assert line["dice"]["mean"] == pytest.approx(case_scores(thr, "dice").mean())


def test_selection_table_markdown_and_figure(evaluated, tmp_path):
    de = _benchmark()
    cases, summary = evaluated
    moved = cases.copy()
    scratch = (moved.source == "scratch") & (moved.size_tag == "5")
    moved.loc[scratch, "dice"] = moved.loc[scratch, "dice"] + 0.05  # "diverse" 0.05 better
    table = de.selection_table(cases, moved, (5, 10))
    assert list(table.n) == [5]  # no scratch run at n = 10 in the fake tree
    assert table.dice_diverse_minus_random[0]["mean"] == pytest.approx(0.05)
    assert table.rms_dta_mm_diverse_minus_random[0]["mean"] == pytest.approx(0.0)
    points = de.point_table(cases, summary)
    line = de.reference_line(cases)
    band = summary["observers"]["band"]
    text = de.markdown(points, line, band, table, summary["observers"])
    assert "| 5 | jigsaw | 6 |" in text and "| – | threshold (no learning) | 12 |" in text
    assert "Observers (3, on 6 cases" in text and "| 5 | 12 |" in text and "+0.050" in text  # scratch n=5: 2 folds
    path = de.figure(points, line, band, table, tmp_path / "de.png", "fake")
    assert path.read_bytes().startswith(b"\x89PNG") and path.stat().st_size > 10_000
    assert np.isfinite(pd.DataFrame(list(points.dice)).mean()).all()
