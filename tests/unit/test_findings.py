"""What an evaluation found, in words: the report's headline, the best model, the demo's final
table with the threshold baseline, and the model the demo's observer study takes."""
from __future__ import annotations

import json

import pytest

from nnunet_xfer.demo import FULL, QUICK, demo_environment, demo_steps, observer_model
from nnunet_xfer.errors import UserError
from nnunet_xfer.evaluation.findings import best_group, best_per_n, headline, schedule_sentence
from nnunet_xfer.experiment import format_table, results_table
from nnunet_xfer.sources import spec


def _group(source, n, dice, rms, beats=None, cases=18, iterations=(240,), kinds=()):
    g = {"source": source, "size_tag": str(n), "n": n, "plans": "nnUNetPlans", "n_cases": cases,
         "n_failed": 0, "folds": [0, 1, 2], "reference": source == "threshold",
         "metrics": {"dice": {"n": cases, "mean": dice}, "rms_dta_mm": {"n": cases, "mean": rms}},
         "training_iterations": list(iterations), "pretraining_data_kinds": list(kinds)}
    if beats is not None:
        g["vs_reference"] = {"threshold": {
            "dice": {"n": cases, "mean": dice - 0.68, "ci_low": dice - 0.72, "ci_high": dice - 0.64},
            "beats": beats}}
    return g


def _summary() -> dict:
    groups = [_group("scratch", 5, 0.62, 9.0, beats=False), _group("seg", 5, 0.66, 8.0, beats=False,
                                                                    kinds=("synthetic-medical",)),
              _group("scratch", 10, 0.80, 4.0, beats=True), _group("rec", 10, 0.80, 3.5, beats=True),
              _group("threshold", 0, 0.99, 1.0, cases=72, iterations=())]  # a reference: never best
    verdicts = [{"source": g["source"], "size_tag": g["size_tag"], "plans": g["plans"],
                 "n_cases": 18, "human_level": g["source"] == "rec"}
                for g in groups if g["source"] != "threshold"]
    return {"groups": groups, "human_level": verdicts, "references": ["threshold"],
            "reference_rule": "paired rule", "verdict_rule": "the verdict rule (18 case(s))",
            "observers": {"n_observers": 5, "names": ["a", "b", "c", "d", "e"],
                          "cases": ["x"] * 72, "band": {"dice": [0.93, 0.96],
                                                        "rms_dta_mm": [1.0, 2.0]}}}


def test_best_is_a_model_never_the_reference_and_ties_go_to_the_lower_distance():
    s = _summary()
    assert best_group(s["groups"])["source"] == "rec"  # Dice tie with scratch: RMS DTA 3.5 < 4.0
    assert [(g["source"], g["size_tag"]) for g in best_per_n(s["groups"])] == [("seg", "5"),
                                                                               ("rec", "10")]
    assert best_group([_group("threshold", 0, 0.9, 1.0)]) is None


def test_headline_says_per_n_whether_the_best_beats_the_threshold_and_reaches_the_observers():
    text = headline(_summary())
    assert "n = 5: segmentation (pretrained on synthetic medical images" in text
    assert "n = 10: reconstruction, Dice 0.800" in text
    assert "over 18 validation case(s) of 3 fold(s)" in text
    assert "the best model beats it at n = 10, not at n = 5" in text and "72 case(s)" in text
    assert "5 observers" in text and "human level at n = 10 only" in text
    assert "Dice 0.930–0.960" in text and "the verdict rule (18 case(s))" in text
    assert "smoke test" in text and "240 iterations" in text  # 240 of nnU-Net's 250,000


def test_schedule_sentence_names_short_runs_and_stays_silent_for_full_ones():
    assert "smoke test" in schedule_sentence([_group("scratch", 5, 0.5, 5, iterations=(60,))])
    assert "Short schedule" in schedule_sentence([_group("scratch", 5, 0.5, 5,
                                                         iterations=(25_000,))])
    assert schedule_sentence([_group("scratch", 5, 0.5, 5, iterations=(250_000,))]) is None
    assert schedule_sentence([_group("scratch", 5, 0.5, 5, iterations=())]) is None
    no_observers = {**_summary(), "human_level": [], "observers": None}
    assert "No observers were given" in headline(no_observers)


def test_demo_table_prints_the_threshold_row_and_says_which_model_beats_it(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(_summary()))
    text = format_table(results_table(tmp_path))
    lines = text.splitlines()
    assert lines[0].split() == ["source", "n", "cases", "Dice", "RMS", "DTA", "mm", "beats",
                                "threshold", "human", "level"]
    assert lines[5].startswith("threshold (no learning)")  # below the models, no n, no verdict
    assert lines[5].split()[3:] == ["–", "72", "0.990", "1.00", "(baseline)", "–"]
    assert lines[1].split()[-2:] == ["no", "no"] and lines[4].split()[-2:] == ["yes", "yes"]
    assert "Against the threshold baseline (no learning; Dice 0.990 on 72 cases):" in text
    assert "  reconstruction n=10 beats it (Dice +0.120, 95% CI +0.080 to +0.160)" in lines
    assert "  scratch n=5 does not beat it (Dice -0.060, 95% CI -0.100 to -0.020)" in lines
    assert lines[-1] == "rule: paired rule"


def test_demo_observer_study_takes_the_best_model_or_the_one_named(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(_summary()))
    assert observer_model(tmp_path)[0] == "XferRecTrainer_n10"
    assert "as the report picks it" in observer_model(tmp_path)[1]
    assert observer_model(tmp_path, "XferScratchTrainer_n5") == ("XferScratchTrainer_n5",
                                                                 "named with --observer-model")
    with pytest.raises(UserError, match="XferJigsawTrainer_n5 is not a model of this demo"):
        observer_model(tmp_path, "XferJigsawTrainer_n5")


def test_full_demo_pretrains_seg_on_the_phantoms_source_task(tmp_path):
    stages = dict(demo_steps(tmp_path, FULL))
    phantom = stages["phantom"][0].argv
    source_task = phantom[phantom.index("--source-task") + 1]
    assert source_task == str(tmp_path.resolve() / "source_task")
    seg = [s for s in stages["pretrain"] if s.argv[5] == "seg"]
    assert seg and "--data" in seg[0].argv
    assert demo_environment(tmp_path, FULL, {})[spec("seg").data_env] == source_task
    assert "--source-task" not in dict(demo_steps(tmp_path, QUICK))["phantom"][0].argv
    assert spec("seg").data_env not in demo_environment(tmp_path, QUICK, {})
