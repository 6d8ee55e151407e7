"""Observer study: human-level verdicts, STAPLE, measures, CLI and bad inputs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from conftest import run_cli, write_slice
from scipy import ndimage

from nnunet_xfer.errors import UserError
from nnunet_xfer.imaging import load_mask
from nnunet_xfer.evaluation.observer_study import observer_study


def _derived(study: Path, dest: Path, transform) -> Path:
    """A rater folder made by transforming every reference mask."""
    for p in sorted((study / "reference").iterdir()):
        m, geometry = load_mask(p)
        spacing = geometry.spacing
        write_slice(dest / p.name, transform(m).astype(np.uint8), spacing)
    return dest


@pytest.fixture(scope="module")
def copy_and_eroded(observer_study_data, tmp_path_factory):
    """Observer-study outputs for an exact copy of the reference and a 3-pixel erosion of it."""
    tmp = tmp_path_factory.mktemp("obs_out")
    copy = _derived(observer_study_data, tmp / "copy", lambda m: m)
    eroded = _derived(observer_study_data, tmp / "eroded",
                      lambda m: ndimage.binary_erosion(m, np.ones((3, 3), bool), iterations=3))
    outs = {}
    for name, preds in (("copy", copy), ("eroded", eroded)):
        outs[name] = observer_study(observer_study_data / "reference",
                                    observer_study_data / "observers", predictions=preds,
                                    name=name, out=tmp / f"study_{name}",
                                    images=observer_study_data / "images")
    return outs


def test_williams_copy_within_and_eroded_outside_observer_variability(copy_and_eroded):
    for name, expected in (("copy", True), ("eroded", False)):
        w = pd.read_csv(copy_and_eroded[name] / "williams.csv")
        model = w[w.rater == name].set_index("metric")
        assert set(model.index) == {"dice", "rms_dta_mm"}
        assert model.within_observer_variability.tolist() == [expected, expected]
        assert model.human_level.tolist() == [expected, expected]
        assert (model.ci_low <= model.ratio).all() and (model.ratio <= model.ci_high).all()
    eroded = pd.read_csv(copy_and_eroded["eroded"] / "williams.csv").set_index(["rater", "metric"])
    assert eroded.loc[("eroded", "dice"), "ci_low"] > 1.25
    assert eroded.loc[("eroded", "rms_dta_mm"), "ci_low"] > 1.25
    # with 4 observers each one is also scored against the other 3 (and the reference against
    # all): one family of 6 raters, Holm-adjusted. Each observer disagrees with the others about
    # as they do among themselves (ratio near 1), though 8 cases and a panel of 3 leave its
    # interval too wide for a verdict: few cases and observers never make the verdict easier
    assert {f"obs_{k}" for k in range(4)} | {"reference"} <= set(eroded.index.get_level_values(0))
    assert (eroded.n_tests == 6).all() and (eroded.p_holm >= eroded.p_value).all()
    observers = eroded.loc[[f"obs_{k}" for k in range(4)]]
    assert observers.ratio.between(0.85, 1.2).all() and (observers.ci_high > 1.1).all()
    summary = json.loads((copy_and_eroded["eroded"] / "summary.json").read_text())
    assert "Holm-adjusted over the 6 raters" in summary["verdict_rule"]


def test_pairwise_staple_and_measures(copy_and_eroded, observer_study_data):
    out = copy_and_eroded["copy"]
    pw = pd.read_csv(out / "pairwise.csv")
    raters = 1 + 4 + 1
    assert len(pw) == 8 * raters * (raters - 1) // 2
    assert {"case_id", "rater_a", "rater_b", "dice", "rms_dta_mm", "hd95_mm", "nsd"} <= set(pw.columns)
    same = pw[(pw.rater_a == "reference") & (pw.rater_b == "copy")]
    assert np.allclose(same.dice, 1.0) and np.allclose(same.rms_dta_mm, 0.0)
    # STAPLE consensus: one file per case with the reference's geometry
    staple_files = sorted((out / "staple").glob("*.nii.gz"))
    assert len(staple_files) == 8
    ref = sitk.ReadImage(str(observer_study_data / "reference" / staple_files[0].name))
    con = sitk.ReadImage(str(staple_files[0]))
    assert con.GetSize() == ref.GetSize() and con.GetSpacing() == ref.GetSpacing()
    staple = pd.read_csv(out / "staple.csv")
    assert set(staple.rater) == {"reference", "obs_0", "obs_1", "obs_2", "obs_3", "copy"}
    assert (staple.dice > 0.8).all()
    # measures: the exact copy agrees perfectly; the eroded mask loses area
    agree = pd.read_csv(out / "measures_agreement.csv").set_index(["rater", "measure"])
    assert agree.loc[("copy", "sma_cm2"), "bias"] == pytest.approx(0.0, abs=1e-9)
    eroded = pd.read_csv(copy_and_eroded["eroded"] / "measures_agreement.csv")
    assert eroded.set_index(["rater", "measure"]).loc[("eroded", "sma_cm2"), "bias"] < -5
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cases"] == [f"case_{c:03d}" for c in range(8)]
    assert summary["vs_reference"]["copy"]["dice"] == pytest.approx(1.0)


def test_cli_fold_folder_predictions_partial_coverage_and_overwrite(observer_study_data, tmp_path):
    # predictions as an nnU-Net trainer folder: fold_*/validation/, one case left without prediction
    run = tmp_path / "XferScratchTrainer_n5__nnUNetPlans__2d"
    _derived(observer_study_data, run / "fold_0" / "validation", lambda m: m)
    (run / "fold_0" / "validation" / "summary.json").write_text("{}")
    shutil.move(run / "fold_0" / "validation" / "case_007.nii.gz",
                tmp_path / "elsewhere.nii.gz")
    out = tmp_path / "study"
    args = ["nnunet-xfer", "observers", "--reference", str(observer_study_data / "reference"),
            "--observers", str(observer_study_data / "observers"), "--predictions", str(run),
            "--name", "net", "-o", str(out)]
    run_cli(*args)
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["cases"]) == 7 and summary["excluded_cases"]["reference"] == ["case_007"]
    assert "net" in set(pd.read_csv(out / "williams.csv").rater)
    assert not (out / "measures.csv").exists()  # no --images: no measures
    with pytest.raises(UserError, match="--overwrite"):
        observer_study(observer_study_data / "reference", observer_study_data / "observers",
                       predictions=run, name="net", out=out)
    observer_study(observer_study_data / "reference", observer_study_data / "observers",
                   predictions=run, name="net", out=out, overwrite=True)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_bad_inputs(observer_study_data, tmp_path):
    ref, obs = observer_study_data / "reference", observer_study_data / "observers"
    two = tmp_path / "two_observers"
    for o in ("obs_0", "obs_1"):
        shutil.copytree(obs / o, two / o)
    proc = run_cli("nnunet-xfer", "observers", "--reference", str(ref), "--observers", str(two),
                   "-o", str(tmp_path / "o1"), check=False)
    assert proc.returncode == 2 and "at least 3 observers" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli("nnunet-xfer", "observers", "--reference", str(ref), "--observers", str(obs),
                   "-o", str(tmp_path / "o1"), "--wi-margin", "0.05", check=False)
    assert proc.returncode == 2 and "--ni-margin" in proc.stderr  # the old option names the new

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty"):
        observer_study(ref, obs, predictions=tmp_path / "empty", out=tmp_path / "o2")

    shifted = _derived(observer_study_data, tmp_path / "shape", lambda m: m)
    write_slice(shifted / "case_003.nii.gz", np.zeros((120, 128), np.uint8))
    with pytest.raises(UserError, match="case_003.*shape"):
        observer_study(ref, obs, predictions=shifted, out=tmp_path / "o3")

    spaced = _derived(observer_study_data, tmp_path / "spacing", lambda m: m)
    m, _ = load_mask(ref / "case_005.nii.gz")
    write_slice(spaced / "case_005.nii.gz", m.astype(np.uint8), (0.9, 0.8))
    with pytest.raises(UserError, match="case_005.*spacing"):
        observer_study(ref, obs, predictions=spaced, out=tmp_path / "o4")

    labels2 = _derived(observer_study_data, tmp_path / "labels2", lambda m: m.astype(np.uint8) * 2)
    with pytest.raises(UserError, match="case_000.*--label"):
        observer_study(ref, obs, predictions=labels2, out=tmp_path / "o5")
    # --label 2 on masks labelled 2 gives the same agreement as label 1 on the 0/1 masks
    twice = lambda m: m.astype(np.uint8) * 2  # noqa: E731
    for o in ("obs_0", "obs_1", "obs_2"):
        for p in sorted((obs / o).iterdir()):
            m, geometry = load_mask(p)
            spacing = geometry.spacing
            write_slice(tmp_path / "obs2" / o / p.name, twice(m), spacing)
    as2 = observer_study(labels2, tmp_path / "obs2", predictions=labels2, out=tmp_path / "o6",
                         label=2)
    as1 = observer_study(ref, obs, predictions=ref, out=tmp_path / "o7")
    pw2, pw1 = (pd.read_csv(d / "pairwise.csv") for d in (as2, as1))
    key = ["case_id", "rater_a", "rater_b"]
    both = pw2.merge(pw1, on=key, suffixes=("_2", "_1"))
    assert len(both) == 8 * 10 and np.allclose(both.dice_2, both.dice_1)
    assert not any((tmp_path / n).exists() for n in ("o1", "o2", "o3", "o4", "o5"))


def test_disagreement_conventions():
    """1 − Dice; RMS DTA in mm with a failed comparison at the image diagonal; identical masks 0."""
    from nnunet_xfer.evaluation.raters import disagreement
    rms = np.array([[0.0, 0.5, np.nan], [2.0, 4.0, 1.0]])
    failed = np.isnan(rms)
    d = disagreement(rms, failed, 90.0, "rms_dta_mm")
    assert d[0].tolist() == [0.0, 0.5, 90.0] and d[1].tolist() == [2.0, 4.0, 1.0]
    assert disagreement(np.array([0.3, 1.0]), np.zeros(2, bool), 90.0, "dice").tolist() == \
        pytest.approx([0.7, 0.0])


def test_williams_on_project_phantom(tmp_path):
    """The same verdicts on the package's own phantom cohort (128², 4 observers × 8 cases)."""
    from nnunet_xfer.phantom.cohort import write_cohort
    cohort = write_cohort(tmp_path / "cohort", n_cases=8, size=128, n_observers=4,
                          n_observer_cases=8, seed=3)
    refs = cohort / "masks"
    for name, transform in (("copy", lambda m: m), ("eroded", lambda m: ndimage.binary_erosion(
            m, np.ones((3, 3), bool), iterations=3))):
        for p in sorted(refs.iterdir()):
            m, geometry = load_mask(p)
            spacing = geometry.spacing
            write_slice(tmp_path / name / p.name, transform(m).astype(np.uint8), spacing)
        out = observer_study(refs, cohort / "observers", predictions=tmp_path / name, name=name,
                             out=tmp_path / f"out_{name}")
        w = pd.read_csv(out / "williams.csv")
        verdicts = w[w.rater == name].human_level.tolist()
        assert verdicts == ([True, True] if name == "copy" else [False, False])
