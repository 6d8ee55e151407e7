"""Fold evaluation: a fake nnU-Net results tree (every branch) and a real 1-epoch nnU-Net run."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli, write_slice

from nnunet_xfer.errors import UserError
from nnunet_xfer.evaluation.fold_evaluation import evaluate_dataset

COLUMNS = ["case_id", "source", "n", "fold", "plans", "dice", "rms_dta_mm", "assd_mm", "hd95_mm",
           "hd_mm", "nsd", "sma_cm2_ref", "sma_cm2_pred", "smd_hu_ref", "smd_hu_pred", "failed",
           "size_tag", "in_pretraining", "pretraining_record", "image", "reference", "prediction"]


@pytest.fixture(scope="module")
def evaluated(fake_tree):
    """``nnunet-xfer evaluate -d 990 --observers`` on the fake tree (via the CLI)."""
    base, env = fake_tree
    run_cli("nnunet-xfer", "evaluate", "-d", "990", "--observers", str(base / "observers"), env=env)
    return Path(env["nnUNet_results"]) / "Dataset990_Fake" / "nnunet_xfer_evaluation"


def test_cases_table(evaluated):
    cases = pd.read_csv(evaluated / "cases.csv", dtype={"size_tag": str})
    assert set(COLUMNS) <= set(cases.columns)
    runs = cases.groupby(["source", "size_tag"]).size().to_dict()
    # 2 folds × 6 validation cases; jigsaw n5 lacks fold 1, jigsaw n10 lacks one prediction;
    # SomeOtherTrainer is not a run of ours; the threshold baseline scores every validation case
    assert runs == {("scratch", "5"): 12, ("scratch", "all"): 12, ("nnunet", "all"): 12,
                    ("jigsaw", "5"): 6, ("jigsaw", "10"): 11, ("threshold", "0"): 12}
    assert set(cases.trainer) == {"XferScratchTrainer_n5", "XferScratchTrainer_nall",
                                  "nnUNetTrainer", "XferJigsawTrainer_n5", "XferJigsawTrainer_n10",
                                  "none"}
    cases = cases[cases.source != "threshold"]
    assert (cases[cases.size_tag == "all"].n == 6).all()  # the fold's training size
    failed = cases[cases.failed]
    assert list(zip(failed.trainer, failed.case_id)) == [("XferJigsawTrainer_n10", "case_001")]
    assert failed.dice.iloc[0] == 0 and np.isnan(failed.rms_dta_mm.iloc[0])
    # the entry each jigsaw fold loaded (its debug.json) saw every case, whatever the store holds
    # now; scratch/nnunet have no pretraining
    assert cases[cases.source == "jigsaw"].in_pretraining.all()
    assert not cases[cases.source != "jigsaw"].in_pretraining.any()
    assert set(cases[cases.source == "jigsaw"].pretraining_record) == {"debug.json"}
    assert set(cases[cases.source != "jigsaw"].pretraining_record) == {"none"}
    # heights from the raw cases.csv give SMI
    assert np.allclose(cases.smi_cm2_m2_ref * (1.6 + 0.02 * cases.case_id.str[-3:].astype(int)) ** 2,
                       cases.sma_cm2_ref)
    for col in ("image", "reference", "prediction"):
        assert all(Path(p).is_file() for p in cases[col])
    assert (cases.dice[~cases.failed] > 0.8).all()


def test_summary(evaluated):
    cases = pd.read_csv(evaluated / "cases.csv", dtype={"size_tag": str})
    summary = json.loads((evaluated / "summary.json").read_text())
    groups = {(g["source"], g["size_tag"]): g for g in summary["groups"]}
    assert [(g["source"], g["size_tag"]) for g in summary["groups"]] == [
        ("scratch", "5"), ("scratch", "all"), ("jigsaw", "5"), ("jigsaw", "10"), ("nnunet", "all"),
        ("threshold", "0")]
    assert summary["n_rows"] == 53 and summary["n_reference_rows"] == 12  # models' rows apart
    j10 = groups[("jigsaw", "10")]
    sel = cases[(cases.source == "jigsaw") & (cases.size_tag == "10")]
    assert j10["n_cases"] == 11 and j10["n_failed"] == 1 and j10["folds"] == [0, 1]
    # missing folds and predictions are counted, and groups without every case are flagged
    j5 = groups[("jigsaw", "5")]
    assert (j5["n_missing_folds"], j5["n_missing_predictions"], j5["n_cases"]) == (1, 0, 6)
    assert (j10["n_missing_folds"], j10["n_missing_predictions"]) == (0, 1)
    assert not j5["complete_cases"] and not j10["complete_cases"]
    assert groups[("scratch", "5")]["complete_cases"] and groups[("scratch", "5")]["n_expected_cases"] == 12
    assert summary["case_sets_differ"] and summary["fold_training_sizes"] == [6, 6]
    assert j10["n_in_pretraining"] == 11 and j10["pretraining_images_per_fold"] == [12]
    assert j10["metrics"]["dice"]["mean"] == pytest.approx(sel.dice.mean())
    # every case counts: the failed one enters the distances at its image diagonal in mm
    rms = sel.rms_dta_mm.where(~sel.failed, sel.worst_distance_mm)
    assert sel.worst_distance_mm.iloc[0] == pytest.approx(np.hypot(128 * 0.8, 128 * 0.8))
    assert j10["metrics"]["rms_dta_mm"]["n"] == 11 and j10["metrics"]["rms_dta_mm"]["n_failed"] == 1
    assert j10["metrics"]["rms_dta_mm"]["median"] == pytest.approx(rms.median())
    assert j10["metrics"]["rms_dta_mm"]["mean"] == pytest.approx(rms.mean())
    assert j10["metrics"]["rms_dta_mm"]["mean"] > sel.rms_dta_mm.mean()  # a failure never helps
    assert j10["metrics"]["nsd"]["mean"] == pytest.approx(sel.nsd.fillna(0).mean())
    assert j10["metrics"]["dice"]["iqr"] == pytest.approx(
        sel.dice.quantile(0.75) - sel.dice.quantile(0.25))
    assert j10["agreement"]["sma_cm2"]["bias"] == pytest.approx(
        (sel.sma_cm2_pred - sel.sma_cm2_ref).mean())
    assert j10["agreement"]["smd_hu"]["n"] == 10  # the empty prediction has no density
    assert {"icc_2_1", "loa_low", "loa_high"} <= set(j10["agreement"]["sma_cm2"])
    missing = {m["trainer"]: m for m in summary["missing"]}
    assert missing["XferJigsawTrainer_n5"]["missing_folds"] == [1]
    assert missing["XferJigsawTrainer_n10"]["missing_predictions"] == {"0": ["case_000"]}
    assert set(missing) == {"XferJigsawTrainer_n5", "XferJigsawTrainer_n10"}
    overlap = summary["pretraining_overlap"]["nnUNetPlans"]
    assert set(overlap) == {"XferJigsawTrainer_n5", "XferJigsawTrainer_n10"}
    assert overlap["XferJigsawTrainer_n10"]["n_cases"] == 12
    assert overlap["XferJigsawTrainer_n10"]["scope"] == ["all"]
    assert overlap["XferJigsawTrainer_n10"]["folds"] == {"0": 12, "1": 12}


def test_human_level_on_the_disagreement_scale(evaluated):
    summary = json.loads((evaluated / "summary.json").read_text())
    verdict = {(v["source"], v["size_tag"]): v for v in summary["human_level"]}
    # boundary noise 2.5 px vs observers' 1 px: not human level; 0.5 px: within observer
    # variability (the published reading, the ratio's CI reaches 1) ...
    assert verdict[("scratch", "5")]["human_level"] is False
    assert verdict[("scratch", "5")]["within_observer_variability"] is False
    assert verdict[("scratch", "5")]["ratio"]["dice"][1] > 1.25
    assert verdict[("nnunet", "all")]["within_observer_variability"] is True
    assert verdict[("nnunet", "all")]["human_level"] is True  # 0.5 px: closer than the observers
    assert verdict[("scratch", "all")]["within_observer_variability"] is True
    assert verdict[("jigsaw", "10")]["n_cases"] == 5  # case_000 has no prediction
    # the 5 groups are one family: Holm-adjusted, the rule says so
    for v in summary["human_level"]:
        assert v["n_observers"] == 3 and v["n_tests"] == 5 and v["p_holm"] >= v["p_value"]
        assert f"{v['n_cases']} case(s) and 3 observer(s)" in v["rule"]
        assert "Holm-adjusted over the 5 raters/groups" in v["rule"]
        assert v["human_level"] == (v["p_holm"] <= 0.025)
        assert set(v["ratio"]) == {"dice", "rms_dta_mm"}
    assert "6 case(s) and 3 observer(s)" in summary["verdict_rule"]
    table = pd.read_csv(evaluated / "observers_williams.csv")
    assert len(table) == 2 * len(verdict) and set(table.metric) == {"dice", "rms_dta_mm"}
    assert {"ratio", "ci_low", "ci_high", "p_value", "p_holm", "n_tests", "n_redrawn",
            "margin", "human_level"} <= set(table.columns)
    assert (table.n_redrawn > 0).all()  # 3 observers: 1 in 9 draws is redrawn, and counted
    obs = summary["observers"]
    assert obs["names"] == ["obs_0", "obs_1", "obs_2"] and len(obs["cases"]) == 6
    assert obs["band"]["dice"][0] <= obs["band"]["dice"][1]
    assert obs["williams"] == []  # leave-one-out needs 4 observers (3 left to compare against)


def test_verdict_margin(fake_tree, tmp_path):
    """A narrower margin is harder: with margin 0 (no worse than the observers) fewer groups pass."""
    from nnunet_xfer.evaluation.fold_evaluation import evaluate
    base, _ = fake_tree
    wide = evaluate("990", out=tmp_path / "w", observers=base / "observers", margin=1.0, workers=1)
    none = evaluate("990", out=tmp_path / "m", observers=base / "observers", margin=0.0, workers=1)
    wide_hl = {(v["source"], v["size_tag"]) for v in wide.verdicts if v["human_level"]}
    none_hl = {(v["source"], v["size_tag"]) for v in none.verdicts if v["human_level"]}
    assert none_hl < wide_hl and ("scratch", "5") not in wide_hl
    assert "ratio < 2 (margin 1)" in wide.verdicts[0]["rule"]


def test_pretraining_mark_comes_from_the_runs_own_record(fake_tree, tmp_path, monkeypatch):
    """The † mark follows the entry each fold loaded (its debug.json), not the store at evaluation
    time. Issue 19: a run trained with nnUNet_xfer_pretrain_scope=all (every validation case seen)
    was reported in_pretraining False because the store held per-fold entries by then."""
    base, env = fake_tree
    results = tmp_path / "results"
    shutil.copytree(Path(env["nnUNet_results"]), results)
    shutil.rmtree(results / "Dataset990_Fake" / "nnunet_xfer_evaluation", ignore_errors=True)
    monkeypatch.setenv("nnUNet_results", str(results))
    splits = json.loads((Path(env["nnUNet_raw"]) / "Dataset990_Fake" / "splits_final.json").read_text())
    n5 = results / "Dataset990_Fake" / "XferJigsawTrainer_n5__nnUNetPlans__2d" / "fold_0"
    (n5 / "debug.json").write_text(json.dumps({"xfer_info": {"transfer": {
        "scope": "fold", "fold": 0, "case_ids": splits[0]["train"], "entry": "fold_0/jigsaw.pth"}}}))
    n10 = results / "Dataset990_Fake" / "XferJigsawTrainer_n10__nnUNetPlans__2d" / "fold_1"
    (n10 / "debug.json").unlink()  # a fold that recorded nothing: unknown, never guessed
    out = evaluate_dataset("990", out=tmp_path / "eval", workers=1)
    cases = pd.read_csv(out / "cases.csv", dtype={"size_tag": str})
    summary = json.loads((out / "summary.json").read_text())
    groups = {(g["source"], g["size_tag"]): g for g in summary["groups"]}
    # the store (per-fold entries of the training cases) says "none seen"; the runs say otherwise
    j10 = cases[(cases.source == "jigsaw") & (cases.size_tag == "10")]
    assert j10[j10.fold == 0].in_pretraining.all()  # scope all: every validation case seen
    assert set(j10[j10.fold == 1].pretraining_record) == {"missing"}
    assert groups[("jigsaw", "10")]["n_in_pretraining"] == 5
    assert groups[("jigsaw", "10")]["n_pretraining_unknown"] == 6
    assert groups[("jigsaw", "5")]["n_in_pretraining"] == 0  # its fold's training cases only
    assert groups[("jigsaw", "5")]["pretraining_images_per_fold"] == [6]
    assert summary["pretraining_overlap"]["nnUNetPlans"]["XferJigsawTrainer_n10"]["unknown_folds"] == [1]


def test_refusals_and_bad_predictions(fake_tree, evaluated, tmp_path):
    base, env = fake_tree
    with pytest.raises(UserError, match="--overwrite"):
        evaluate_dataset("990")
    with pytest.raises(UserError, match="no Xfer"):
        evaluate_dataset("990", plans="OtherPlans", out=tmp_path / "none")
    # a prediction on another grid: the case is named, nothing is written
    bad = tmp_path / "results"
    shutil.copytree(Path(env["nnUNet_results"]), bad)
    shutil.rmtree(bad / "Dataset990_Fake" / "nnunet_xfer_evaluation")
    pred = bad / "Dataset990_Fake" / "XferScratchTrainer_n5__nnUNetPlans__2d" / "fold_1" / \
        "validation" / "case_008.nii.gz"
    write_slice(pred, np.zeros((128, 128), np.uint8), spacing=(1.0, 0.8), as_3d=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("nnUNet_results", str(bad))
        with pytest.raises(UserError, match="case_008.*spacing"):
            evaluate_dataset("990", out=tmp_path / "bad")
        write_slice(pred, np.full((128, 128), 2, np.uint8), as_3d=True)
        with pytest.raises(UserError, match="other than 0/1.*this dataset's own model"):
            evaluate_dataset("990", out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


def _threshold_and_model(cases: pd.DataFrame, source: str, size_tag: str) -> pd.DataFrame:
    """The model group's rows beside the threshold rows of the same (fold, case)."""
    model = cases[(cases.source == source) & (cases.size_tag == size_tag)]
    thr = cases[cases.source == "threshold"]
    return model.merge(thr, on=["fold", "case_id"], suffixes=("", "_thr"))


def test_threshold_rows(evaluated, fake_tree):
    """The no-learning baseline is a reference row of every validation case of every fold, scored
    by its rule on the case's own image; a reference, not a source: no verdict, no Williams row."""
    import SimpleITK as sitk
    from scipy import stats

    from nnunet_xfer.evaluation.metrics import segmentation_metrics
    from nnunet_xfer.evaluation.threshold_baseline import threshold_segmentation
    _, env = fake_tree
    splits = json.loads((Path(env["nnUNet_raw"]) / "Dataset990_Fake" / "splits_final.json").read_text())
    cases = pd.read_csv(evaluated / "cases.csv", dtype={"size_tag": str, "case_id": str})
    thr = cases[cases.source == "threshold"]
    assert sorted(zip(thr.fold, thr.case_id)) == sorted(
        (k, c) for k, split in enumerate(splits) for c in split["val"])
    assert (thr.n == 0).all() and set(thr.plans) == {"none"} and thr.prediction.isna().all()
    assert not thr.in_pretraining.any()
    for r in thr.head(3).itertuples():  # the rule's own mask, computed here from the image
        image = sitk.GetArrayFromImage(sitk.ReadImage(r.image))[0]
        ref = sitk.GetArrayFromImage(sitk.ReadImage(r.reference))[0]
        expected = segmentation_metrics(threshold_segmentation(image), ref, (0.8, 0.8))
        assert r.dice == pytest.approx(expected["dice"])
        assert r.rms_dta_mm == pytest.approx(expected["rms_dta_mm"])
    summary = json.loads((evaluated / "summary.json").read_text())
    groups = {(g["source"], g["size_tag"]): g for g in summary["groups"]}
    assert groups[("threshold", "0")]["reference"] is True
    assert "vs_reference" not in groups[("threshold", "0")]
    assert summary["references"] == ["threshold"] and "95 % t interval" in summary["reference_rule"]
    # each model group is compared on its own cases: jigsaw n10 has 11 (one without prediction)
    both = _threshold_and_model(cases, "jigsaw", "10")
    diff = both.dice - both.dice_thr
    vs = groups[("jigsaw", "10")]["vs_reference"]["threshold"]
    assert vs["dice"]["n"] == 11 and vs["dice"]["mean"] == pytest.approx(diff.mean())
    low, high = stats.t.interval(0.95, len(diff) - 1, loc=diff.mean(), scale=stats.sem(diff))
    assert (vs["dice"]["ci_low"], vs["dice"]["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    # the failed case enters RMS DTA at its image diagonal, as everywhere else
    rms = both.rms_dta_mm.where(~both.failed, both.worst_distance_mm) - both.rms_dta_mm_thr
    assert vs["rms_dta_mm"]["mean"] == pytest.approx(rms.mean())
    # the fake images hold nothing but the ring in the muscle HU range: the threshold is nearly
    # the reference itself, and no model beats it
    assert thr.dice.min() > 0.97
    assert not any(g["vs_reference"]["threshold"]["beats"] for g in summary["groups"]
                   if not g["reference"])
    assert ("threshold", "0") not in {(v["source"], v["size_tag"]) for v in summary["human_level"]}
    assert "threshold" not in set(pd.read_csv(evaluated / "observers_williams.csv").source)


def test_a_model_beats_the_threshold_when_organs_share_muscle_hu(fake_tree, tmp_path, monkeypatch):
    """A disc of muscle HU inside the ring (a kidney, bowel) fools the threshold, not the models:
    the best model beats it by the paired rule; the verdicts follow the rule from the numbers."""
    import SimpleITK as sitk

    from conftest import ring_mask
    _, env = fake_tree
    raw = tmp_path / "raw"
    shutil.copytree(Path(env["nnUNet_raw"]), raw)
    organ = ring_mask(128, (0, 20), np.zeros((2, 1)))
    for path in (raw / "Dataset990_Fake" / "imagesTr").glob("*.nii.gz"):
        img = sitk.ReadImage(str(path))
        arr = sitk.GetArrayFromImage(img)
        arr[0][organ] = 40
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(img)
        sitk.WriteImage(out, str(path))
    monkeypatch.setenv("nnUNet_raw", str(raw))
    out = evaluate_dataset("990", out=tmp_path / "eval", workers=1)
    summary = json.loads((out / "summary.json").read_text())
    groups = {(g["source"], g["size_tag"]): g for g in summary["groups"]}
    assert groups[("threshold", "0")]["metrics"]["dice"]["mean"] < 0.92
    assert groups[("nnunet", "all")]["vs_reference"]["threshold"]["beats"] is True
    for g in summary["groups"]:
        if g["reference"]:
            continue
        vs = g["vs_reference"]["threshold"]
        assert vs["beats"] == (vs["dice"]["ci_low"] > 0 and vs["rms_dta_mm"]["ci_high"] < 0)
