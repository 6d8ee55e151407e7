"""`measure --cases`: CT studies → the real nnU-Net predictor → measures, QC gallery, DICOM-SEG.

The model is the session's real one-fold training (conftest `scratch_run`, 64² phantom) plus a
fold of perturbed weights, so the fold ensemble and its disagreement flag are exercised.
"""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from clinical_data import RUN, TRAINER, phantom_volume, studies_csv, write_ct_series, write_volume
from conftest import REAL_CT, run_cli
from nnunet_xfer import cli
from nnunet_xfer.clinical import l3_auto
from nnunet_xfer.clinical.api import CUTOFFS, MeasureConfig, low_muscle, measure_studies
from nnunet_xfer.clinical.dicom_seg import write_dicom_seg
from nnunet_xfer.clinical.predict import SlicePredictor
from nnunet_xfer.clinical.provenance import Provenance
from nnunet_xfer.evaluation.measures import MEASURE_KEYS, muscle_measures
from nnunet_xfer.evaluation.metrics import dice

TS = REAL_CT / "totalseg_example"
needs_real = pytest.mark.skipif(not (TS / "example_ct.nii.gz").is_file() or
                                not (TS / "example_ct_dicom").is_dir(),
                                reason="shared/real_ct/totalseg_example not present")



@pytest.fixture(scope="module")
def predictor(model_env) -> SlicePredictor:
    return SlicePredictor(501, TRAINER, device="cpu")


def _measure(csv: Path, out: Path, *extra: str, env: dict):
    """The ``nnunet-xfer`` console script in a process of its own (its real start-up)."""
    return run_cli("nnunet-xfer", "measure", "--cases", str(csv), "-o", str(out), "-d", "501",
                   "-tr", TRAINER, "--device", "cpu", *extra, env=env)


def _measure_here(capsys, csv: Path, out: Path, *extra: str) -> str:
    """``nnunet-xfer measure --cases`` in-process (``cli.main``), expected to succeed: stdout."""
    code = cli.main(["measure", "--cases", str(csv), "-o", str(out), "-d", "501", "-tr", TRAINER,
                     "--device", "cpu", *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def _table(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "measures.csv", dtype={"case_id": str}).set_index("case_id")


# ---------------------------------------------------------------- the predictor
def test_ensemble_is_nnunets_own_prediction(predictor, model_env, phantom_dir):
    """Same input arrays as nnU-Net's reader, same masks as nnU-Net's predictor, fold by fold."""
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    path = phantom_dir / "images" / "L3-0003.nii.gz"
    image = sitk.ReadImage(str(path))
    arr, props = SlicePredictor.nnunet_input(image)
    ref_arr, ref_props = SimpleITKIO().read_images([str(path)])
    np.testing.assert_array_equal(arr, ref_arr)
    np.testing.assert_allclose(props["spacing"], ref_props["spacing"])
    ours = predictor.predict(image)
    assert predictor.folds == ["0", "1"]
    run = Path(model_env["nnUNet_results"]) / "Dataset501_L3" / RUN
    for folds, want in (((0, 1), ours.mask), ((0,), ours.fold_masks["0"]), ((1,), ours.fold_masks["1"])):
        ref = nnUNetPredictor(device=torch.device("cpu"), verbose=False, allow_tqdm=False)
        ref.initialize_from_trained_model_folder(str(run), use_folds=folds)
        seg = ref.predict_single_npy_array(ref_arr, {"spacing": ref_props["spacing"]})
        np.testing.assert_array_equal(want, seg.reshape(want.shape) == 1)
    for f in ("0", "1"):
        assert ours.fold_dice[f] == pytest.approx(dice(ours.fold_masks[f], ours.mask))
    assert ours.mask.any() and ours.fold_dice["1"] < 1.0   # the perturbed fold differs


def test_one_fold_without_mirroring_is_nnunets_own_prediction(model_env, phantom_dir, tmp_path,
                                                               capsys):
    """-f 0 --no-mirroring: the predictor holds fold 0 only and nnU-Net's mirroring is off; its
    mask is nnU-Net's with the same fold and --disable_tta (and with mirroring, nnU-Net's
    mirrored one); the CLI measures that mask and records the setting in the gallery."""
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    path = phantom_dir / "images" / "L3-0003.nii.gz"
    image = sitk.ReadImage(str(path))
    fast = SlicePredictor(501, TRAINER, device="cpu", folds=["0"], mirroring=False)
    assert fast.folds == ["0"] and len(fast.parameters) == 1
    assert fast.predictor.use_mirroring is False and fast.mirroring is False
    ours = fast.predict(image)
    assert ours.fold_masks == {}                       # one fold: no fold-agreement check
    ref_arr, ref_props = SimpleITKIO().read_images([str(path)])
    run = Path(model_env["nnUNet_results"]) / "Dataset501_L3" / RUN
    masks = {}
    for mirror in (False, True):
        ref = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=mirror, verbose=False,
                              allow_tqdm=False)
        ref.initialize_from_trained_model_folder(str(run), use_folds=(0,))
        seg = ref.predict_single_npy_array(ref_arr, {"spacing": ref_props["spacing"]})
        masks[mirror] = seg.reshape(ours.mask.shape) == 1
    np.testing.assert_array_equal(ours.mask, masks[False])
    mirrored = SlicePredictor(501, TRAINER, device="cpu", folds=["0"]).predict(image).mask
    np.testing.assert_array_equal(mirrored, masks[True])

    csv = studies_csv(tmp_path / "s.csv", [{"case_id": "c", "image": str(path)}])
    _measure_here(capsys, csv, tmp_path / "out", "-f", "0", "--no-mirroring")
    row = _table(tmp_path / "out").loc["c"]
    assert row["muscle_pixels"] == int(ours.mask.sum()) and pd.isna(row["fold_dice"])
    gallery = (tmp_path / "out" / "gallery.html").read_text(encoding="utf-8")
    assert "folds 0, no test-time mirroring" in gallery


def test_our_trainers_build_their_network_as_nnunet_does():
    """predict.build_network builds our trainers' networks from the plans without importing
    nnU-Net's trainer module: valid while none of them overrides build_network_architecture."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunet_xfer.study_grid import parse_trainer_name
    from nnunet_xfer.trainers.xfer_trainer_family import build_family
    for name, cls in build_family().items():
        assert parse_trainer_name(name) is not None, name
        assert cls.build_network_architecture is nnUNetTrainer.build_network_architecture, name


# ---------------------------------------------------------------- Done when: real CT
@needs_real
def test_measure_real_volume_and_dicom_series(model_env, predictor, tmp_path):
    """One command on the real TotalSegmentator volume and its DICOM series: CSV, gallery, SEG."""
    import highdicom as hd
    import pydicom
    csv = studies_csv(tmp_path / "studies.csv", [
        {"case_id": "ts_volume", "image": str(TS / "example_ct.nii.gz"),
         "vertebra_mask": str(TS / "example_seg_fast_force_split.nii.gz"), "vertebra_label": 29,
         "height_m": 1.75, "sex": "female"},
        {"case_id": "ts_dicom", "image": str(TS / "example_ct_dicom"), "slice_index": 10}])
    out = tmp_path / "out"
    proc = _measure(csv, out, "--low-smi-cutoffs", "prado2008", env=model_env)
    assert "measured 2 of 2" in proc.stdout
    table = _table(out)
    assert (table["status"] == "ok").all()

    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(TS / "example_seg_fast_force_split.nii.gz")))
    l3 = np.flatnonzero((labels == 29).any(axis=(1, 2)))
    volume_row = table.loc["ts_volume"]
    assert volume_row["slice_index"] == (l3[0] + l3[-1]) // 2 == 72    # meta.json's z_index
    assert volume_row["slice_source"] == "vertebra_mask"
    assert volume_row["sex"] == "F" and volume_row["height_source"] == "manifest"
    assert volume_row["smi_cutoff_cm2_m2"] == 38.5
    assert volume_row["low_smi"] == (volume_row["smi_cm2_m2"] <= 38.5)
    assert table.loc["ts_dicom", "weight_kg"] == 79               # DICOM PatientWeight
    assert table.loc["ts_dicom", "slice_thickness_mm"] == 3       # DICOM SliceThickness

    # the NIfTI mask lies on the volume's grid, only the L3 slice set, as the model predicts it
    volume = sitk.ReadImage(str(TS / "example_ct.nii.gz"))
    mask_img = sitk.ReadImage(str(out / volume_row["mask_file"]))
    assert mask_img.GetSize() == volume.GetSize()
    np.testing.assert_allclose(mask_img.GetOrigin(), volume.GetOrigin())
    mask = sitk.GetArrayFromImage(mask_img)
    assert set(np.flatnonzero(mask.any(axis=(1, 2)))) <= {72}
    ct = sitk.GetArrayFromImage(volume)[72]
    slice_image = sitk.Extract(volume, [*volume.GetSize()[:2], 0], [0, 0, 72])
    want = predictor.predict(slice_image).mask
    np.testing.assert_array_equal(mask[72].astype(bool), want)
    measured = muscle_measures(ct, want, (3.0, 3.0), 1.75)
    # the tiny test model may predict no muscle at all: SMD is then NaN on both sides
    assert {k: volume_row[k] for k in MEASURE_KEYS} == pytest.approx(
        {k: measured[k] for k in MEASURE_KEYS}, nan_ok=True)

    # the DICOM-SEG references the source instance of slice 10 and round-trips pixel for pixel
    seg_path = out / table.loc["ts_dicom", "mask_file"]
    assert seg_path.suffix == ".dcm"
    seg = hd.seg.segread(seg_path)
    raw = pydicom.dcmread(seg_path)
    assert raw.Modality == "SEG"
    ref_uid = raw.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    frame_uid = (raw.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
                 .SourceImageSequence[0].ReferencedSOPInstanceUID)
    assert ref_uid == frame_uid
    sources = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID): f
               for f in (TS / "example_ct_dicom").iterdir()}
    source = sources[ref_uid]
    src = pydicom.dcmread(source, stop_before_pixels=True)
    assert raw.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    assert raw.StudyInstanceUID == src.StudyInstanceUID
    series = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(TS / "example_ct_dicom")))
    series_slice = sitk.GetArrayFromImage(series)[10]
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(source)))[0], series_slice)
    seg_pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[ref_uid],
                                                   segment_numbers=[1])[0, ..., 0]
    dicom_slice = sitk.Extract(series, [*series.GetSize()[:2], 0], [0, 0, 10])
    np.testing.assert_array_equal(seg_pixels.astype(bool), predictor.predict(dicom_slice).mask)
    assert int(seg_pixels.sum()) == table.loc["ts_dicom", "muscle_pixels"]

    gallery = (out / "gallery.html").read_text(encoding="utf-8")
    assert gallery.count("data:image/png;base64,") == 2
    assert "http://" not in gallery and "https://" not in gallery
    assert sorted(p.name for p in (out / "qc").iterdir()) == ["ts_dicom.png", "ts_volume.png"]


@needs_real
def test_l3_auto_uses_totalsegmentators_labels(model_env, monkeypatch, tmp_path):
    """--l3 auto: the (replaced) TotalSegmentator call gives the same slice as the label map."""
    seg_file = TS / "example_seg_fast_force_split.nii.gz"
    calls = []

    def fake_run(self, volume: sitk.Image) -> sitk.Image:
        calls.append(volume.GetSize())
        return sitk.ReadImage(str(seg_file))

    monkeypatch.setattr(l3_auto, "totalseg_available", lambda: True)
    monkeypatch.setattr(l3_auto.L3Finder, "_run", fake_run)
    image = str(TS / "example_ct.nii.gz")
    csv = studies_csv(tmp_path / "studies.csv", [
        {"case_id": "auto", "image": image},
        {"case_id": "by_map", "image": image, "vertebra_mask": str(seg_file), "vertebra_label": 29},
        {"case_id": "by_index", "image": image, "slice_index": 40}])
    result = measure_studies(MeasureConfig(csv, tmp_path / "out", dataset=501, trainer=TRAINER,
                                           device="cpu", l3="auto"))
    assert result.failed == {}
    assert calls == [sitk.ReadImage(image).GetSize()]     # only the row that gives no slice
    t = result.table.set_index("case_id")
    assert t.loc["auto", "slice_source"] == "l3_auto" and t.loc["auto", "slice_index"] == 72
    assert t.loc["by_index", "slice_index"] == 40
    for k in MEASURE_KEYS:
        a, b = t.loc["auto", k], t.loc["by_map", k]
        assert (math.isnan(a) and math.isnan(b)) or a == b


def test_bad_rows_and_l3_auto_rows_fail_alone(model_env, phantom_dir, tmp_path, monkeypatch,
                                              capsys):
    """Issue 20's 'done when': a manifest with bad rows (a slice_index that is no integer, an
    unsafe case_id) and an --l3 auto row without TotalSegmentator, beside cases that cannot be
    measured (no L3, a missing file): every other row is measured, each failure is one line in
    its order, the exit status counts them (1), the gallery lists them below the measured rows."""
    monkeypatch.setattr(l3_auto, "totalseg_available", lambda: False)   # wherever it is installed
    volume, spacing = phantom_volume(phantom_dir, 3)
    image = str(write_volume(tmp_path / "v.nii.gz", volume, spacing))
    labels = np.zeros(volume.shape, np.uint8)
    labels[1] = 5                                       # some vertebra, not L3 (29)
    vert = write_volume(tmp_path / "vert.nii.gz", labels, spacing)
    csv = studies_csv(tmp_path / "s.csv", [
        {"case_id": "given", "image": image, "slice_index": 1},
        {"case_id": "auto", "image": image},
        {"case_id": "bad_index", "image": image, "slice_index": "1.5"},
        {"case_id": "../escape", "image": image, "slice_index": 0},
        {"case_id": "no_l3", "image": image, "vertebra_mask": str(vert), "vertebra_label": 29},
        {"case_id": "missing", "image": str(tmp_path / "nope.nii.gz"), "slice_index": 0},
        {"case_id": "also_given", "image": image, "instance_number": "", "slice_index": 2}])
    out = tmp_path / "out"
    try:
        code = cli.main(["measure", "--cases", str(csv), "-o", str(out), "-d", "501", "-tr",
                         TRAINER, "--device", "cpu", "--l3", "auto"])
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert "measured 2 of 7 case(s)" in captured.out
    errors = [ln for ln in captured.err.splitlines() if "error: case" in ln]
    assert [e.split("error: case ")[1].split(":")[0] for e in errors] == [
        "auto", "bad_index", "../escape", "no_l3", "missing"], captured.err
    auto, bad, unsafe, no_l3, missing = errors
    assert "pip install 'nnunet_xfer[totalseg]'" in auto
    assert "licence" in auto and "slice_index" in auto
    assert "slice_index" in bad and "1.5" in bad
    assert "not a safe file name" in unsafe
    assert "no L3 in the volume" in no_l3 and "does not exist" in missing
    assert "5 of 7 cases failed" in captured.err and "Traceback" not in captured.err
    t = _table(out)
    assert list(t.index) == ["given", "auto", "bad_index", "../escape", "no_l3", "missing",
                             "also_given"]
    assert list(t["status"]) == ["ok"] + ["failed"] * 5 + ["ok"]
    # measured (a number; the 2-iteration test model may find no muscle) vs not measured (NaN)
    assert math.isfinite(t.loc["also_given", "sma_cm2"]) and math.isnan(t.loc["no_l3", "sma_cm2"])
    assert sorted(p.name for p in (out / "qc").iterdir()) == ["also_given.png", "given.png"]
    assert not (tmp_path / "escape.png").exists()
    gallery = (out / "gallery.html").read_text(encoding="utf-8")
    assert gallery.count('<tr class') + gallery.count("<tr data-case") == 2
    assert "case no_l3: no L3 in the volume" in gallery


# ---------------------------------------------------------------- DICOM in, DICOM-SEG out
def test_dicom_seg_round_trip_on_a_written_series(tmp_path, phantom_dir):
    import highdicom as hd
    import pydicom
    volume, spacing = phantom_volume(phantom_dir, 4)
    files = write_ct_series(tmp_path / "series", volume, spacing)
    yy, xx = np.mgrid[:volume.shape[1], :volume.shape[2]]
    ring = np.hypot(yy - 30, xx - 28)
    mask = (ring > 10) & (ring < 20)
    mask[0, :5] = True          # an asymmetric detail: flips would show
    provenance = Provenance("Dataset501_L3", TRAINER, "nnUNetPlans", "2d", ("0", "1"))
    path = tmp_path / "seg.dcm"
    write_dicom_seg(path, files[2], mask, provenance, "c1")
    seg = hd.seg.segread(path)
    uid = str(pydicom.dcmread(files[2]).SOPInstanceUID)
    assert [u[2] for u in seg.get_source_image_uids()] == [uid]
    back = seg.get_pixels_by_source_instance(source_sop_instance_uids=[uid], segment_numbers=[1])
    np.testing.assert_array_equal(back[0, ..., 0].astype(bool), mask)
    raw = pydicom.dcmread(path)
    assert raw.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Skeletal muscle"


def test_measure_dicom_series_with_patient_data(model_env, predictor, phantom_dir, tmp_path):
    """Height, sex and weight from the DICOM header; Martin 2013 cut-offs by sex and BMI."""
    import highdicom as hd
    import pydicom
    volume, spacing = phantom_volume(phantom_dir, 4)
    files = write_ct_series(tmp_path / "series", volume, spacing, z_mm=2.5,
                            patient={"PatientSize": "1.80", "PatientSex": "M", "PatientWeight": "90"})
    csv = studies_csv(tmp_path / "s.csv", [{"case_id": "p1", "image": str(tmp_path / "series"),
                                            "slice_index": 2}])
    result = measure_studies(MeasureConfig(csv, tmp_path / "out", dataset=501, trainer=TRAINER,
                                           device="cpu", low_smi_cutoffs="martin2013"))
    row = result.table.set_index("case_id").loc["p1"]
    assert row["status"] == "ok"
    assert row["height_m"] == 1.8 and row["height_source"] == "dicom" and row["sex"] == "M"
    assert row["bmi_kg_m2"] == pytest.approx(90 / 1.8 ** 2)
    assert row["smi_cutoff_cm2_m2"] == 53 and row["smd_cutoff_hu"] == 33
    assert row["low_smi"] == (row["smi_cm2_m2"] < 53)
    assert row["cutoff_source"] == CUTOFFS["martin2013"]["source"]
    assert row["slice_thickness_mm"] == 2.5
    seg = hd.seg.segread(tmp_path / "out" / row["mask_file"])
    uid = str(pydicom.dcmread(files[2]).SOPInstanceUID)
    assert [u[2] for u in seg.get_source_image_uids()] == [uid]
    # the slice measured is the third stacked phantom slice, and the SEG holds its prediction;
    # the series has one pixel spacing (phantom_volume's), which need not be that slice's own
    slice_image = sitk.ReadImage(str(phantom_dir / "images" / "L3-0002.nii.gz"))
    slice_image.SetSpacing((spacing[1], spacing[0]))
    want = predictor.predict(slice_image).mask
    got = seg.get_pixels_by_source_instance(source_sop_instance_uids=[uid], segment_numbers=[1])
    np.testing.assert_array_equal(got[0, ..., 0].astype(bool), want)


def test_dicom_without_uids_gets_a_nifti_mask(model_env, phantom_dir, tmp_path, capsys):
    volume, spacing = phantom_volume(phantom_dir, 3)

    def no_study_uid(k, ds):
        ds.StudyInstanceUID = ""
    write_ct_series(tmp_path / "series", volume, spacing, per_slice=no_study_uid)
    csv = studies_csv(tmp_path / "s.csv", [{"case_id": "anon", "image": str(tmp_path / "series"),
                                            "slice_index": 1}])
    result = measure_studies(MeasureConfig(csv, tmp_path / "out", dataset=501, trainer=TRAINER,
                                           device="cpu"))
    assert "warning: case anon: IM0001.dcm has no StudyInstanceUID" in capsys.readouterr().err
    row = result.table.set_index("case_id").loc["anon"]
    assert row["status"] == "ok" and row["mask_file"] == "masks/anon.nii.gz"
    mask = sitk.ReadImage(str(tmp_path / "out" / row["mask_file"]))
    assert mask.GetSize() == (volume.shape[2], volume.shape[1], volume.shape[0])
    assert not (tmp_path / "out" / "seg").exists()


def test_api_mirrors_the_cli(model_env, phantom_dir, tmp_path, capsys):
    volume, spacing = phantom_volume(phantom_dir, 3)
    rows = [{"case_id": f"v{k}", "image": str(write_volume(tmp_path / f"v{k}.nrrd", volume, spacing)),
             "slice_index": k, "height_m": 1.6 + 0.1 * k, "sex": "MF"[k % 2]} for k in range(3)]
    csv = studies_csv(tmp_path / "s.csv", rows)
    _measure_here(capsys, csv, tmp_path / "cli", "--low-smi-cutoffs", "prado2008", "-f", "0", "1")
    import nnunet_xfer
    result = nnunet_xfer.measure_studies(nnunet_xfer.MeasureConfig(
        csv, tmp_path / "api", dataset="501", trainer=TRAINER, folds=[0, 1], device="cpu",
        low_smi_cutoffs="prado2008"))
    cli = pd.read_csv(tmp_path / "cli" / "measures.csv", dtype={"case_id": str})
    api = pd.read_csv(tmp_path / "api" / "measures.csv", dtype={"case_id": str})
    assert (cli["measured_at"] <= api["measured_at"]).all()    # when each run measured
    pd.testing.assert_frame_equal(cli.drop(columns="measured_at"), api.drop(columns="measured_at"))
    pd.testing.assert_frame_equal(result.table.reset_index(drop=True)[["case_id", "sma_cm2"]],
                                  api[["case_id", "sma_cm2"]])
    assert result.n_cases == 3 and result.n_failed == 0 and result.out == tmp_path / "api"
    assert list(api["slice_index"]) == [0, 1, 2] and list(api["sex"]) == ["M", "F", "M"]
    assert sorted(p.name for p in (tmp_path / "api").iterdir()) == [
        ".nnunet_xfer_output.json", "gallery.html", "masks", "measures.csv", "qc"]


def test_low_muscle_cutoffs_as_published():
    def verdict(*args):
        return low_muscle(*args)["low_smi"]
    assert verdict("prado2008", "M", 52.4, 40, None) is True       # ≤ 52.4 cm²/m²
    assert verdict("prado2008", "M", 52.5, 40, None) is False
    assert verdict("prado2008", "F", 38.5, 40, None) is True       # ≤ 38.5 cm²/m²
    assert verdict("prado2008", "F", 38.6, 40, None) is False
    assert verdict("prado2008", None, 10.0, 40, None) is None      # sex unknown: no verdict
    assert verdict("prado2008", "M", math.nan, 40, None) is None   # height unknown
    assert verdict("martin2013", "M", 42.9, 40, 24.9) is True      # < 43 when BMI < 25
    assert verdict("martin2013", "M", 43.0, 40, 24.9) is False
    assert verdict("martin2013", "M", 52.9, 40, 25.0) is True      # < 53 when BMI ≥ 25
    assert verdict("martin2013", "M", 50.0, 40, None) is None      # men need the BMI
    assert verdict("martin2013", "F", 40.9, 40, None) is True      # < 41 whatever the BMI
    assert verdict("martin2013", "F", 41.0, 40, 30) is False
    smd = low_muscle("martin2013", "F", 45, 40.9, 24)
    assert smd["low_smd"] is True and smd["smd_cutoff_hu"] == 41   # < 41 HU when BMI < 25
    smd = low_muscle("martin2013", "M", 45, 33.0, 26)
    assert smd["low_smd"] is False and smd["smd_cutoff_hu"] == 33   # < 33 HU when BMI ≥ 25


def test_measure_imports_leave_out_what_it_never_runs():
    """measure's modules import no k-d tree (scipy.spatial: surface distances, evaluation only)
    and no nnU-Net trainer module (seaborn, scikit-learn): start-up paid by every patient."""
    code = ("import sys, nnunet_xfer.cli, nnunet_xfer.clinical.api, nnunet_xfer.clinical.predict; "
            "print(sorted(m for m in ('scipy.spatial', 'nnunetv2.training.nnUNetTrainer.nnUNetTrainer')"
            " if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_import_stays_light_and_exports_measure_studies():
    code = ("import sys, nnunet_xfer; assert 'torch' not in sys.modules; "
            "f = nnunet_xfer.measure_studies; print(f.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "nnunet_xfer.clinical.api"
    from nnunet_xfer import MeasureConfig as config_class, measure_studies as f
    assert f is measure_studies and config_class is MeasureConfig
