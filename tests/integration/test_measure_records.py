"""`measure --cases` for the clinic (issue 20) with the session's real model: which slice was
measured (UIDs, InstanceNumber, z, series choice), the DICOM SR (validated with dciodvfy, read back
with highdicom), corrected masks and their audit trail, provenance per row, and an offline
TotalSegmentator that fails its rows alone in one line.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
import SimpleITK as sitk

from clinical_data import TRAINER, phantom_volume, studies_csv, write_ct_series, write_volume
from conftest import REAL_CT, one_line_error
import nnunet_xfer
from nnunet_xfer import cli
from nnunet_xfer.clinical import l3_auto
from nnunet_xfer.clinical.api import CUTOFFS, INTEGER_COLUMNS, MeasureConfig, measure_studies
from nnunet_xfer.clinical.dicom_seg import write_dicom_seg
from nnunet_xfer.clinical.provenance import LO_MAX, Provenance
from nnunet_xfer.errors import UserError
from nnunet_xfer.evaluation.measures import muscle_measures
from nnunet_xfer.evaluation.metrics import dice

DCIODVFY = shutil.which("dciodvfy")
TS = REAL_CT / "totalseg_example"
PATIENT = {"PatientSize": "1.60", "PatientSex": "F", "PatientWeight": "70"}


def _measure_cli(capsys, csv: Path, out: Path, *extra: str) -> tuple[int, str, str]:
    """``nnunet-xfer measure --cases`` in-process (no second start-up of torch and nnU-Net):
    (exit status, stdout, stderr)."""
    try:
        code = cli.main(["measure", "--cases", str(csv), "-o", str(out), "-d", "501", "-tr",
                         TRAINER, "--device", "cpu", *extra])
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _dciodvfy_errors(path: Path) -> list[str]:
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("Error")]


def _text_values(ds) -> set[str]:
    """Every TextValue of an SR's content tree (``str(ds)`` shows a long text as its length)."""
    found = set()
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                found |= _text_values(item)
        elif element.keyword == "TextValue":
            found.add(str(element.value))
    return found


def _csv(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "measures.csv", dtype={"case_id": str}).set_index("case_id")


# ---------------------------------------------------------------- a DICOM study, measured once
@pytest.fixture(scope="module")
def dicom_study(model_env, phantom_dir, tmp_path_factory):
    """A study folder (the phantom's axial CT series and a localiser), measured by
    instance_number with Martin 2013 cut-offs, beside a row that fails."""
    root = tmp_path_factory.mktemp("dicom_study")
    volume, spacing = phantom_volume(phantom_dir, 4)
    study = root / "study"
    study.mkdir()
    ct = write_ct_series(root / "ct", volume, spacing, z_mm=2.5, patient=PATIENT,
                         study_uid="1.2.826.0.1.3680043.8.498.1")
    scout = write_ct_series(root / "scout", volume[:1], spacing, patient=PATIENT,
                            image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"],
                            study_uid="1.2.826.0.1.3680043.8.498.1")
    files = []
    for prefix, group in (("ct", ct), ("scout", scout)):
        for f in group:
            files.append(f.rename(study / f"{prefix}_{f.name}"))
    csv = studies_csv(root / "studies.csv", [
        {"case_id": "p1", "image": str(study), "instance_number": 3},
        {"case_id": "broken", "image": str(study), "slice_index": "two"}])
    out = root / "out"
    result = measure_studies(MeasureConfig(csv, out, dataset=501, trainer=TRAINER, device="cpu",
                                           low_smi_cutoffs="martin2013"), on_error=lambda m: None)
    return dict(out=out, result=result, ct=files[:4], volume=volume, spacing=spacing, root=root)


def test_every_row_says_which_slice_of_which_series(dicom_study):
    """Study/Series/SOP Instance UID, InstanceNumber, z (mm) and how series and slice were chosen."""
    row = _csv(dicom_study["out"]).loc["p1"]
    source = pydicom.dcmread(dicom_study["ct"][2], stop_before_pixels=True)
    assert int(source.InstanceNumber) == 3
    assert row["status"] == "ok"
    assert row["study_instance_uid"] == source.StudyInstanceUID
    assert row["series_instance_uid"] == source.SeriesInstanceUID
    assert row["sop_instance_uid"] == source.SOPInstanceUID
    assert row["instance_number"] == 3 and row["slice_index"] == 2
    assert row["slice_source"] == "instance_number"
    assert row["slice_z_mm"] == pytest.approx(float(source.ImagePositionPatient[2]))
    assert row["series_choice"].startswith("rule: of 2 series the axial CT ORIGINAL/PRIMARY/AXIAL")
    # the picture measured is that instance's pixels
    assert row["rows"] == dicom_study["volume"].shape[1]


def test_provenance_and_integer_columns_on_every_row(dicom_study):
    out = dicom_study["out"]
    t = _csv(out)
    assert list(t["status"]) == ["ok", "failed"]
    for cid in ("p1", "broken"):                      # a failed row carries them too
        row = t.loc[cid]
        assert row["model_dataset"] == "Dataset501_L3" and row["model_trainer"] == TRAINER
        assert row["model_plans"] == "nnUNetPlans" and row["model_configuration"] == "2d"
        assert str(row["model_folds"]) == "0 1"
        assert row["software_version"] == nnunet_xfer.__version__
        assert datetime.datetime.fromisoformat(row["measured_at"]).tzinfo is not None
    cells = pd.read_csv(out / "measures.csv", dtype=str).set_index("case_id").loc["p1"]
    for col in INTEGER_COLUMNS:                       # 3, not 3.0, although a row failed
        assert cells[col].isdigit(), (col, cells[col])
    error = t.loc["broken", "error"]
    assert error.startswith("case broken:") and "slice_index" in error and "two" in error
    assert dicom_study["result"].failed.keys() == {"broken"}


def test_seg_names_the_whole_model_and_keeps_dicom_lengths(dicom_study):
    out = dicom_study["out"]
    seg = pydicom.dcmread(out / "seg" / "p1.dcm")
    algo = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    model = f"Dataset501_L3/{TRAINER}__nnUNetPlans__2d folds 0 1"
    assert model in str(algo.AlgorithmParameters)     # whole, folds included (LT: not cut)
    assert len(algo.AlgorithmName) <= LO_MAX and len(seg.ContentDescription) <= LO_MAX
    assert seg.ContentDescription.endswith("f0,1") and len(seg.SeriesDescription) <= LO_MAX
    if DCIODVFY:
        assert _dciodvfy_errors(out / "seg" / "p1.dcm") == []


def test_sr_reads_back_with_highdicom(dicom_study):
    """TID 1500 with SMA/SMD/IMAT/SMI in UCUM units, the findings with the cut-off's source, the
    CT instance and the SEG referenced."""
    import highdicom as hd
    out = dicom_study["out"]
    row = _csv(out).loc["p1"]
    assert row["sr_file"] == "sr/p1.dcm"
    sr = hd.sr.srread(out / row["sr_file"])
    seg = pydicom.dcmread(out / "seg" / "p1.dcm", stop_before_pixels=True)
    assert sr.StudyInstanceUID == row["study_instance_uid"] and sr.Modality == "SR"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    [group] = sr.content.get_planar_roi_measurement_groups()
    got = {m.name.meaning: (m.value, m.unit.value) for m in group.get_measurements()}
    want = {"Area": (row["sma_cm2"], "cm2"), "Intermuscular adipose tissue area":
            (row["imat_cm2"], "cm2"), "Skeletal muscle index": (row["smi_cm2_m2"], "cm2/m2")}
    if math.isfinite(row["smd_hu"]):                 # an empty mask has no SMD
        want["Mean Attenuation Coefficient"] = (row["smd_hu"], "[hnsf'U]")
    assert got.keys() == want.keys()
    for name, (value, unit) in want.items():
        assert got[name][0] == pytest.approx(value) and got[name][1] == unit
    frame = group.referenced_segmentation_frame
    assert frame[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID
    assert frame[1].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == row["sop_instance_uid"]
    evidence = {str(i.ReferencedSOPInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence
                for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence}
    assert evidence == {seg.SOPInstanceUID, row["sop_instance_uid"]}
    findings = {q.name.meaning: q.value.meaning for q in group.get_qualitative_evaluations()}
    assert findings["Low skeletal muscle index"] == ("Yes" if row["low_smi"] else "No")
    assert row["smi_cutoff_cm2_m2"] == 41                   # Martin 2013, women
    # each cut-off as its measurement's normal range: the rule in words, the publication
    texts = _text_values(pydicom.dcmread(out / row["sr_file"]))
    assert CUTOFFS["martin2013"]["source"] in texts and "low SMI: SMI < 41 cm2/m2 (F)" in texts


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (dicom3tools) is not installed")
def test_sr_validates_with_dciodvfy(dicom_study):
    path = dicom_study["out"] / "sr" / "p1.dcm"
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120)
    output = proc.stdout + proc.stderr
    assert "Comprehensive3DSR" in output
    assert _dciodvfy_errors(path) == [], output


# ---------------------------------------------------------------- corrections come back
def test_corrected_masks_are_measured_audited_and_become_training_cases(
        model_env, dicom_study, phantom_dir, tmp_path, monkeypatch, capsys):
    """A NIfTI label map (ITK-SNAP) and a DICOM-SEG (3D Slicer) edited after a first run."""
    volume, spacing = dicom_study["volume"], dicom_study["spacing"]
    image = write_volume(tmp_path / "v.nii.gz", volume, spacing)
    series = shutil.copytree(dicom_study["root"] / "study", tmp_path / "ct",
                             ignore=shutil.ignore_patterns("scout_*"))
    csv = studies_csv(tmp_path / "s.csv", [
        {"case_id": "v", "image": str(image), "slice_index": 1, "height_m": 1.7},
        {"case_id": "d", "image": str(series), "slice_index": 2}])
    first = measure_studies(MeasureConfig(csv, tmp_path / "first", dataset=501, trainer=TRAINER,
                                          device="cpu"))
    assert first.failed == {}
    rows = first.table.set_index("case_id")
    model_v = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "first" / rows.loc["v", "mask_file"])))
    edited_v = model_v.copy()
    edited_v[1, 20:30, 20:30] = 1                      # the corrector adds a block …
    edited_v[1, :, :10] = 0                            # … and removes a strip
    corr = tmp_path / "corrected"
    corr.mkdir()
    out_img = sitk.GetImageFromArray(edited_v)
    out_img.CopyInformation(sitk.ReadImage(str(image)))
    sitk.WriteImage(out_img, str(corr / "v.nii.gz"))
    import highdicom as hd
    seg = hd.seg.segread(tmp_path / "first" / rows.loc["d", "mask_file"])
    sop = rows.loc["d", "sop_instance_uid"]
    model_d = seg.get_pixels_by_source_instance([sop], segment_numbers=[1])[0, ..., 0].astype(bool)
    edited_d = model_d.copy()
    edited_d[10:20, 30:40] = True
    source_file = next(f for f in series.iterdir()
                       if pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID == sop)
    write_dicom_seg(corr / "d.dcm", source_file, edited_d,
                    Provenance("3D Slicer", "edit", "-", "-", ()), "d", corrected=True)

    out = tmp_path / "second"
    code, stdout, err = _measure_cli(capsys, csv, out, "--corrected", str(corr))
    assert code == 0 and "measured 2 of 2" in stdout, err
    t = _csv(out)
    spacing_rc = (spacing[0], spacing[1])
    for cid, ct, model_mask, edited, path in (
            ("v", volume[1], model_v[1].astype(bool), edited_v[1].astype(bool), corr / "v.nii.gz"),
            ("d", volume[2], model_d, edited_d, corr / "d.dcm")):
        row = t.loc[cid]
        height = 1.7 if cid == "v" else 1.6
        want = muscle_measures(ct, edited, spacing_rc, height)
        model = muscle_measures(ct, model_mask, spacing_rc, height)
        assert row["mask_source"] == "corrected"
        assert row["sma_cm2"] == pytest.approx(want["sma_cm2"])
        assert row["imat_cm2"] == pytest.approx(want["imat_cm2"])
        assert row["sma_model_cm2"] == pytest.approx(model["sma_cm2"])
        assert row["corrected_dice"] == pytest.approx(dice(model_mask, edited))
        audit = json.loads((out / row["audit_file"]).read_text())
        assert audit["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert audit["corrected_file"] == str(path.resolve())
        assert audit["dice_model_vs_corrected"] == pytest.approx(dice(model_mask, edited))
        assert audit["sma_change_cm2"] == pytest.approx(want["sma_cm2"] - model["sma_cm2"])
        assert audit["pixels_added"] == int((edited & ~model_mask).sum())
        assert audit["model"] == f"Dataset501_L3/{TRAINER}__nnUNetPlans__2d folds 0 1"
        assert datetime.datetime.fromisoformat(audit["measured_at"])
        assert datetime.datetime.fromisoformat(audit["file_modified"])
    seg_out = pydicom.dcmread(out / "seg" / "d.dcm", stop_before_pixels=True)
    assert seg_out.SegmentSequence[0].SegmentAlgorithmType == "SEMIAUTOMATIC"

    # convert takes the corrected cases as training cases: the label is the corrected mask
    manifest = pd.read_csv(out / "corrected_cases.csv", dtype=str)
    assert list(manifest["case_id"]) == ["v", "d"]
    raw = tmp_path / "raw"
    raw.mkdir()
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    from nnunet_xfer.dataset_conversion.convert import convert
    convert(cases_csv=out / "corrected_cases.csv", dataset_id=777, name="Corrected", n_folds=0)
    labels = raw / "Dataset777_Corrected" / "labelsTr"
    for cid, edited in (("v", edited_v[1].astype(bool)), ("d", edited_d)):
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(labels / f"{cid}.nii.gz")))
        np.testing.assert_array_equal(label.reshape(edited.shape).astype(bool), edited)


def test_a_corrected_mask_naming_no_case_stops_before_writing(model_env, dicom_study, tmp_path,
                                                              capsys):
    volume, spacing = dicom_study["volume"], dicom_study["spacing"]
    image = write_volume(tmp_path / "v.nii.gz", volume, spacing)
    csv = studies_csv(tmp_path / "s.csv", [{"case_id": "v", "image": str(image), "slice_index": 1}])
    corr = tmp_path / "corrected"
    corr.mkdir()
    shutil.copy(image, corr / "w.nii.gz")
    code, _out, err = _measure_cli(capsys, csv, tmp_path / "out", "--corrected", str(corr))
    assert one_line_error(code, err) == (
        f"nnunet-xfer measure: error: --corrected {corr}: w.nii.gz names no case of the manifest; "
        f"name a corrected mask <case_id>.nii.gz or move it out")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- TotalSegmentator offline
def test_offline_totalsegmentator_fails_its_rows_once_in_one_line(model_env, dicom_study,
                                                                   tmp_path, monkeypatch, capsys):
    """No weights and no network: the first --l3 auto row says how to place the weights, the
    next is not retried, TotalSegmentator's own notice reaches the user once, the row with a
    slice is measured, and the API words its errors for Python."""
    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        print("TotalSegmentator sends anonymous usage statistics. Set "
              "TOTALSEG_DISABLE_USAGE_STATS=1 to opt out.")
        print("If you use this tool please cite: https://pubs.rsna.org/doi/10.1148/ryai.230024")
        raise ConnectionError("HTTPSConnectionPool(host='github.com', port=443): Max retries "
                              "exceeded with url: /wasserth/TotalSegmentator/releases\n(Caused by "
                              "NewConnectionError)")
    package = types.ModuleType("totalsegmentator")
    api = types.ModuleType("totalsegmentator.python_api")
    api.totalsegmentator = offline
    monkeypatch.setitem(sys.modules, "totalsegmentator", package)
    monkeypatch.setitem(sys.modules, "totalsegmentator.python_api", api)
    monkeypatch.setattr(l3_auto, "totalseg_available", lambda: True)
    home = tmp_path / "ts_home"
    monkeypatch.setenv("TOTALSEG_HOME_DIR", str(home))
    monkeypatch.delenv("TOTALSEG_WEIGHTS_PATH", raising=False)
    volume, spacing = dicom_study["volume"], dicom_study["spacing"]
    image = str(write_volume(tmp_path / "v.nii.gz", volume, spacing))
    csv = studies_csv(tmp_path / "s.csv", [
        {"case_id": "auto1", "image": image}, {"case_id": "given", "image": image, "slice_index": 1},
        {"case_id": "auto2", "image": image}])
    result = measure_studies(MeasureConfig(csv, tmp_path / "out", dataset=501, trainer=TRAINER,
                                           device="cpu", l3="auto"))
    err = capsys.readouterr().err
    assert len(calls) == 1                                 # not retried per case
    assert result.failed.keys() == {"auto1", "auto2"}
    first, second = result.failed["auto1"], result.failed["auto2"]
    assert "\n" not in first and "could not be downloaded (ConnectionError; offline?)" in first
    assert "totalseg_download_weights -t total_fast and -t total_fastest" in first
    assert str(home / "nnunet" / "results") in first and "TOTALSEG_WEIGHTS_PATH" in first
    assert "l3='auto'" in first and "--l3" not in first    # worded for a Python caller
    assert second.startswith("case auto2: l3='auto' cannot run: TotalSegmentator's weights")
    assert result.notices == ["TotalSegmentator: TotalSegmentator sends anonymous usage "
                              "statistics. Set TOTALSEG_DISABLE_USAGE_STATS=1 to opt out."]
    assert err.count("usage statistics") == 1 and "please cite" not in err
    assert result.table.set_index("case_id").loc["given", "status"] == "ok"
    with pytest.raises(UserError) as refused:             # the API's own words, not the CLI's
        measure_studies(MeasureConfig(csv, tmp_path / "out", dataset=501, trainer=TRAINER,
                                      device="cpu"))
    assert "overwrite=True" in str(refused.value) and "--overwrite" not in str(refused.value)


# ---------------------------------------------------------------- real CT: both slice conventions
needs_real = pytest.mark.skipif(not (TS / "example_ct_as_dicom").is_dir(),
                                reason="shared/real_ct/totalseg_example/example_ct_as_dicom absent")


def _physical_mask(path: Path, index: int) -> np.ndarray:
    """Slice ``index`` of a mask file (NIfTI volume, or a one-frame DICOM-SEG on an LPS-stored
    instance) with rows and columns in LPS order, by SimpleITK's own reorientation."""
    if path.suffix == ".dcm":
        import highdicom as hd
        seg = hd.seg.segread(path)
        frame = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[u[2] for u in seg.get_source_image_uids()],
            segment_numbers=[1])[0, ..., 0]
        return frame.astype(bool)          # the source instance's rows and columns: LPS
    volume = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
    assert volume.GetDirection()[8] == 1.0    # the slice axis kept its order
    return sitk.GetArrayFromImage(volume)[index].astype(bool)


@needs_real
def test_instance_number_and_slice_index_name_one_real_slice(model_env, tmp_path, capsys):
    """The real volume's L3 as NIfTI (slice_index 72, feet to head, RAS rows) and as DICOM
    (InstanceNumber 73, LPS rows): one z, one mask in physical space, one answer; the DICOM
    case's SR validates. (Before issue 17 the two storages gave Dice 0.875 and two SMAs.)"""
    csv = studies_csv(tmp_path / "s.csv", [
        {"case_id": "nifti", "image": str(TS / "example_ct.nii.gz"), "slice_index": 72,
         "height_m": 1.68, "sex": "F"},
        {"case_id": "dicom", "image": str(TS / "example_ct_as_dicom"), "instance_number": 73}])
    out = tmp_path / "out"
    code, _stdout, err = _measure_cli(capsys, csv, out, "--low-smi-cutoffs", "prado2008")
    assert code == 0, err
    t = _csv(out)
    assert list(t["slice_index"]) == [72, 72]
    assert t.loc["dicom", "instance_number"] == 73 and math.isnan(t.loc["nifti", "instance_number"])
    assert t.loc["nifti", "slice_z_mm"] == pytest.approx(t.loc["dicom", "slice_z_mm"], abs=1e-3)
    for k in ("sma_cm2", "smd_hu", "sma_mask_cm2", "imat_cm2", "smi_cm2_m2", "muscle_pixels"):
        assert t.loc["nifti", k] == pytest.approx(t.loc["dicom", k], nan_ok=True), k
    assert t.loc["dicom", "height_source"] == "dicom" and t.loc["dicom", "sex"] == "F"
    # one mask in physical space: DICOM in, DICOM-SEG out; the NIfTI mask on the input's grid,
    # in its own (RAS) storage order
    assert t.loc["dicom", "mask_file"].endswith(".dcm")
    nifti = _physical_mask(out / t.loc["nifti", "mask_file"], 72)
    dicom = _physical_mask(out / t.loc["dicom", "mask_file"], 72)
    np.testing.assert_array_equal(nifti, dicom)
    assert nifti.any()
    stored = sitk.ReadImage(str(out / t.loc["nifti", "mask_file"]))
    ct = sitk.ReadImage(str(TS / "example_ct.nii.gz"))
    assert stored.GetDirection() == ct.GetDirection() and stored.GetSize() == ct.GetSize()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(stored)[72][::-1, ::-1], dicom)
    if DCIODVFY:
        assert _dciodvfy_errors(out / t.loc["dicom", "sr_file"]) == []
