"""Fault injection for `nnunet-xfer measure` (issues 11 and 14.7).

Studies (``--cases``): a bad case is refused in one line naming it while the others are measured
(exit 1, "N of M cases failed"); a bad model or bad arguments stop before anything is written
(exit 2, one line). Masks (``--images/--masks``): exact case-id pairing, NaN/inf in the muscle,
8-bit pictures, empty masks. The whole per-case batch is one run of the real predictor; the
command is called in-process (``nnunet_xfer.cli.main``) to keep the file fast.
"""
from __future__ import annotations

import os
import shutil
import struct
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from clinical_data import (DATASET, RUN, TRAINER, phantom_volume, plant_other_plans, studies_csv,
                           write_ct_series, write_volume)
from conftest import one_line_error
from nnunet_xfer import cli
from nnunet_xfer.clinical import api as clinical_api



def run_measure(capsys, *args: str) -> tuple[int, str, str]:
    """``nnunet-xfer measure ARGS`` in-process: (exit status, stdout, stderr)."""
    try:
        code = cli.main(["measure", *args])
    except SystemExit as e:
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------- bad cases in one batch
def _nifti_without_spacing(path: Path, volume: np.ndarray) -> Path:
    write_volume(path, volume, (1.0, 1.0))
    data = bytearray(path.read_bytes())
    data[80:92] = struct.pack("<3f", 0.0, 0.0, 0.0)   # pixdim[1..3]: ITK would read 1 mm
    path.write_bytes(bytes(data))
    return path


def _nrrd_without_spacing(path: Path, volume: np.ndarray) -> Path:
    img = sitk.GetImageFromArray(volume)
    sitk.WriteImage(img, str(path), useCompression=False)
    head, data = path.read_bytes().split(b"\n\n", 1)
    lines = [ln for ln in head.split(b"\n") if not ln.startswith((b"space", b"spacings"))]
    path.write_bytes(b"\n".join(lines) + b"\n\n" + data)
    return path


def _bad_cases(root: Path, volume: np.ndarray, spacing) -> tuple[list[dict], dict[str, str]]:
    """Manifest rows of cases that must fail, and a phrase each error must contain."""
    good = write_volume(root / "good.nii.gz", volume, spacing)
    rows, expect = [], {}

    def add(case_id: str, phrase: str, **row):
        rows.append({"case_id": case_id, **row})
        expect[case_id] = phrase

    labels = np.zeros(volume.shape, np.uint8)
    labels[1] = 28                                         # L2 only
    add("no_l3", "no L3 in the volume", image=str(good),
        vertebra_mask=str(write_volume(root / "l2.nii.gz", labels, spacing)), vertebra_label=29)
    add("vertebra_grid", "does not match",
        image=str(good), vertebra_label=29,
        vertebra_mask=str(write_volume(root / "other_grid.nii.gz", labels, (2.0, 2.0))))

    def coronal_second(k, ds):
        if k == 1:
            ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]
    write_ct_series(root / "mixed", volume, spacing, per_slice=coronal_second)
    add("mixed_orientation", "mixes image orientations", image=str(root / "mixed"), slice_index=1)
    write_ct_series(root / "scout", volume, spacing, image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    add("localiser", "localiser", image=str(root / "scout"), slice_index=1)
    write_ct_series(root / "sagittal", volume, spacing, orientation=(0, 1, 0, 0, 0, -1))
    add("sagittal", "not axial", image=str(root / "sagittal"), slice_index=1)

    def mr(k, ds):
        ds.Modality = "MR"
    write_ct_series(root / "mr", volume, spacing, per_slice=mr)
    add("mr_series", "not CT", image=str(root / "mr"), slice_index=1)
    write_ct_series(root / "two" / "a", volume, spacing)
    write_ct_series(root / "two" / "b", volume, spacing)
    for f in (root / "two" / "b").iterdir():
        f.rename(root / "two" / "a" / f"b_{f.name}")

    def no_spacing(k, ds):
        del ds.PixelSpacing
    write_ct_series(root / "nospacing", volume, spacing, per_slice=no_spacing)
    add("dicom_no_spacing", "pixel spacing", image=str(root / "nospacing"), slice_index=1)
    add("two_series", "2 DICOM series", image=str(root / "two" / "a"), slice_index=1)
    add("nifti_no_spacing", "pixel spacing", slice_index=1,
        image=str(_nifti_without_spacing(root / "nosp.nii", volume)))
    add("nrrd_no_spacing", "pixel spacing", slice_index=1,
        image=str(_nrrd_without_spacing(root / "nosp.nrrd", volume)))
    eight_bit = np.clip(volume.astype(np.int32) // 8 + 128, 0, 255).astype(np.uint8)
    add("eight_bit", "--allow-non-hu", slice_index=1,
        image=str(write_volume(root / "8bit.nii.gz", eight_bit, spacing)))
    nan = volume.astype(np.float32)
    nan[1, 10:20, 10:20] = np.nan
    add("nan_slice", "NaN or inf", slice_index=1,
        image=str(write_volume(root / "nan.nii.gz", nan, spacing)))
    add("index_out_of_range", "out of range", image=str(good), slice_index=99)
    add("no_slice_given", "--l3 auto", image=str(good))
    add("missing_file", "does not exist", image=str(root / "absent.nii.gz"), slice_index=0)
    add("height_in_cm", "not a height in metres", image=str(good), slice_index=1, height_m=172)
    from PIL import Image
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "screenshot.png")
    add("png_picture", "picture", image=str(root / "screenshot.png"))
    # truncated studies (issue 17): ITK reads the missing voxels as 0, GDCM skips the file
    half = write_volume(root / "half.nii.gz", volume, spacing)
    half.write_bytes(half.read_bytes()[: half.stat().st_size // 2])
    add("truncated_nifti", "truncated or damaged", image=str(half), slice_index=1)
    files = write_ct_series(root / "cut_series", volume, spacing)
    files[1].write_bytes(files[1].read_bytes()[:-200])
    add("truncated_dicom", "truncated or damaged", image=str(root / "cut_series"), slice_index=1)
    return rows, expect


@pytest.fixture(scope="module")
def batch(model_env, phantom_dir, tmp_path_factory):
    """One `measure --cases` over two good cases around every bad one."""
    root = tmp_path_factory.mktemp("bad_cases")
    volume, spacing = phantom_volume(phantom_dir, 3)
    bad_rows, expect = _bad_cases(root, volume, spacing)
    good = str(root / "good.nii.gz")
    rows = [{"case_id": "first_ok", "image": good, "slice_index": 0}, *bad_rows,
            {"case_id": "last_ok", "image": good, "slice_index": 2}]
    csv = studies_csv(root / "studies.csv", rows)
    out = root / "out"
    try:
        code = cli.main(["measure", "--cases", str(csv), "-o", str(out), "-d", "501", "-tr",
                         TRAINER, "--device", "cpu"])
    except SystemExit as e:
        code = e.code
    table = pd.read_csv(out / "measures.csv", dtype={"case_id": str}).set_index("case_id")
    return dict(code=code, table=table, expect=expect, out=out, n=len(rows))


BAD_CASES = ["no_l3", "vertebra_grid", "mixed_orientation", "localiser", "sagittal", "mr_series",
             "dicom_no_spacing", "two_series", "nifti_no_spacing", "nrrd_no_spacing", "eight_bit",
             "nan_slice", "index_out_of_range", "no_slice_given", "missing_file", "height_in_cm",
             "png_picture", "truncated_nifti", "truncated_dicom"]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_case_is_refused_in_one_line_and_the_rest_go_on(batch, case):
    row = batch["table"].loc[case]
    assert row["status"] == "failed"
    message = row["error"]
    assert message.startswith(f"case {case}:"), message
    assert "\n" not in message and "Traceback" not in message
    assert batch["expect"][case] in message, message
    assert not (batch["out"] / "qc" / f"{case}.png").exists()
    assert not any(p.stem == case for sub in ("masks", "seg") if (batch["out"] / sub).is_dir()
                   for p in (batch["out"] / sub).iterdir())


def test_batch_exit_status_counts_the_failures(batch):
    assert set(BAD_CASES) == set(batch["expect"])
    assert batch["code"] == 1
    t = batch["table"]
    assert list(t.loc[["first_ok", "last_ok"], "status"]) == ["ok", "ok"]
    assert (t["status"] == "failed").sum() == len(BAD_CASES) == batch["n"] - 2


# ---------------------------------------------------------------- refused before anything is written
@pytest.fixture()
def one_case(phantom_dir, tmp_path) -> Path:
    volume, spacing = phantom_volume(phantom_dir, 2)
    image = write_volume(tmp_path / "v.nii.gz", volume, spacing)
    return studies_csv(tmp_path / "studies.csv", [{"case_id": "c1", "image": str(image),
                                                   "slice_index": 1}])


def _planted_pickle(run: Path, marker: Path) -> None:
    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    torch.save({"network_weights": {}, "init_args": {}, "trainer_name": TRAINER, "x": Payload()},
               run / "fold_1" / "checkpoint_final.pth")


MODEL_FAULTS = {
    "unknown_trainer": (["-tr", "XferNoSuchTrainer_n5"], "no trained model"),
    "unknown_configuration": (["-c", "3d_fullres"], "no trained model"),
    "unfinished_fold": (["-f", "3"], "fold 3"),
    "bad_fold_name": (["-f", "x"], "folds are integers"),
    "other_plans": (["-p", "OtherPlans"], "trained on other plans"),
    "planted_pickle": ([], "will not be loaded"),
    "truncated_checkpoint": ([], "will not be loaded"),
    "masks_with_cases": (["--masks", "somewhere"], "not both"),
    "no_model": (["DROP_MODEL"], "needs the model"),
    "label_map_with_cases": (["--label-map", "1"], "--label-map"),
}


@pytest.mark.parametrize("fault", sorted(MODEL_FAULTS))
def test_model_and_argument_faults_stop_before_writing(fault, model_env, one_case, tmp_path,
                                                       monkeypatch, capsys):
    results = tmp_path / "results"
    shutil.copytree(model_env["nnUNet_results"], results)
    monkeypatch.setenv("nnUNet_results", str(results))
    run = results / DATASET / RUN
    marker = tmp_path / "payload_ran"
    if fault == "other_plans":
        plant_other_plans(results)
    elif fault == "planted_pickle":
        _planted_pickle(run, marker)
    elif fault == "truncated_checkpoint":
        ckpt = run / "fold_1" / "checkpoint_final.pth"
        ckpt.write_bytes(ckpt.read_bytes()[:5000])
    extra, phrase = MODEL_FAULTS[fault]
    model = ["-d", "501", "-tr", TRAINER]
    if extra == ["DROP_MODEL"]:
        model, extra = [], []
    elif "-tr" in extra:
        model = ["-d", "501"]
    out = tmp_path / "out"
    code, _out, err = run_measure(capsys, "--cases", str(one_case), "-o", str(out), *model,
                                  "--device", "cpu", *extra)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and phrase in lines[0], err
    assert not out.exists() and not marker.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".nnunet_xfer_tmp")]


def test_output_folder_rules(model_env, one_case, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    base = ["--cases", str(one_case), "-o", str(out), "-d", "501", "-tr", TRAINER, "--device", "cpu"]
    assert run_measure(capsys, *base)[0] == 0
    code, _o, err = run_measure(capsys, *base)
    assert code == 2 and "--overwrite" in err                       # never replaced silently
    assert run_measure(capsys, *base, "--overwrite")[0] == 0         # our own output: replaced
    (out / "thesis.txt").write_text("mine")
    code, _o, err = run_measure(capsys, *base, "--overwrite")
    assert code == 2 and "thesis.txt" in err and (out / "thesis.txt").read_text() == "mine"
    dataset = Path(model_env["nnUNet_results"]) / DATASET     # the trained models' folder
    before = sorted(p.name for p in dataset.iterdir())
    code, _o, err = run_measure(capsys, *base[:2], "-o", str(dataset), *base[4:], "--overwrite")
    assert code == 2 and "nnU-Net folder" in err
    assert sorted(p.name for p in dataset.iterdir()) == before
    # issue 17: a folder put at -o while measure runs was renamed away and deleted at the end
    race = tmp_path / "race"
    real = clinical_api._measure_one

    def appears(*args, **kwargs):
        if not race.exists():
            race.mkdir()
            (race / "thesis.txt").write_text("years of work")
        return real(*args, **kwargs)
    monkeypatch.setattr(clinical_api, "_measure_one", appears)
    code, _o, err = run_measure(capsys, *base[:2], "-o", str(race), *base[4:])
    one_line_error(code, err, str(race), "appeared")          # besides the case's warning: lines
    assert [p.name for p in race.iterdir()] == ["thesis.txt"]
    kept = list(tmp_path.glob("race.new-*"))                 # this run's output, beside it
    assert len(kept) == 1 and (kept[0] / "measures.csv").is_file()


def test_interrupted_run_leaves_nothing(model_env, phantom_dir, tmp_path, monkeypatch):
    volume, spacing = phantom_volume(phantom_dir, 3)
    image = str(write_volume(tmp_path / "v.nii.gz", volume, spacing))
    csv = studies_csv(tmp_path / "s.csv", [{"case_id": f"c{k}", "image": image, "slice_index": k}
                                           for k in range(3)])
    calls = []
    real = clinical_api._measure_one

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(clinical_api, "_measure_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        clinical_api.measure_studies(clinical_api.MeasureConfig(
            csv, tmp_path / "out", dataset=501, trainer=TRAINER, device="cpu"))
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".nnunet_xfer_tmp")]


# ---------------------------------------------------------------- --images / --masks inputs
def _slice(path: Path, arr: np.ndarray, spacing=(0.8, 0.8)) -> Path:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((spacing[1], spacing[0]))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def _ct(value: float, shape=(12, 12), dtype=np.int16) -> np.ndarray:
    arr = np.full(shape, value, dtype=dtype)
    arr[0, :] = -1000                                          # air: a CT, not a picture
    return arr


def _muscle(shape=(12, 12)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[4:8, 4:8] = 1
    return m


@pytest.mark.parametrize("naming", ["plain", "nnunet"])
def test_pairing_is_by_exact_case_id(tmp_path, capsys, naming):
    suffix = "_0000" if naming == "nnunet" else ""
    _slice(tmp_path / "img" / f"x{suffix}.nii.gz", _ct(30))
    _slice(tmp_path / "img" / f"x_0000{suffix}.nii.gz", _ct(130))
    for case in ("x", "x_0000"):
        _slice(tmp_path / "msk" / f"{case}.nii.gz", _muscle())
    code, _o, err = run_measure(capsys, "--images", str(tmp_path / "img"), "--masks",
                                str(tmp_path / "msk"), "-o", str(tmp_path / "m.csv"))
    assert code == 0, err
    t = pd.read_csv(tmp_path / "m.csv", dtype={"case_id": str}).set_index("case_id")
    assert t.loc["x", "smd_hu"] == 30 and t.loc["x_0000", "smd_hu"] == 130


def test_one_image_for_two_cases_is_refused(tmp_path, capsys):
    _slice(tmp_path / "img" / "x_0000.nii.gz", _ct(30))
    _slice(tmp_path / "img" / "y.nii.gz", _ct(30))
    for case in ("x", "x_0000", "y"):
        _slice(tmp_path / "msk" / f"{case}.nii.gz", _muscle())
    code, _o, err = run_measure(capsys, "--images", str(tmp_path / "img"), "--masks",
                                str(tmp_path / "msk"), "-o", str(tmp_path / "m.csv"))
    assert code == 2 and "would both use x_0000.nii.gz" in err
    assert not (tmp_path / "m.csv").exists()


@pytest.mark.parametrize("ending", [".nii.gz", ".mha"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_inside_the_muscle_is_refused(tmp_path, capsys, ending, bad):
    image = _ct(40.0, dtype=np.float32)
    image[5, 5] = bad                                 # ITK reads NaN in NIfTI as 0: caught anyway
    _slice(tmp_path / "img" / f"c1{ending}", image)
    _slice(tmp_path / "msk" / "c1.nii.gz", _muscle())
    code, _o, err = run_measure(capsys, "--images", str(tmp_path / "img"), "--masks",
                                str(tmp_path / "msk"), "-o", str(tmp_path / "m.csv"))
    assert code == 2 and "case c1" in err and "NaN/inf" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m.csv").exists()


def test_eight_bit_png_screenshot_needs_allow_non_hu(tmp_path, capsys):
    from PIL import Image
    (tmp_path / "img").mkdir()
    grey = np.clip(np.random.default_rng(0).normal(120, 40, (12, 12)), 0, 255).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "img" / "shot.png")
    _slice(tmp_path / "msk" / "shot.nii.gz", _muscle(), spacing=(1.0, 1.0))
    args = ["--images", str(tmp_path / "img"), "--masks", str(tmp_path / "msk"), "-o",
            str(tmp_path / "m.csv")]
    code, _o, err = run_measure(capsys, *args)
    assert code == 2 and "--allow-non-hu" in err and "case shot" in err
    assert not (tmp_path / "m.csv").exists()
    code, _o, err = run_measure(capsys, *args, "--allow-non-hu")
    assert code == 0
    assert "warning: case shot: shot.png has no pixel spacing; areas assume 1 mm pixels" in err


def test_empty_mask_is_warned_and_flagged(tmp_path, capsys):
    _slice(tmp_path / "img" / "full.nii.gz", _ct(40))
    _slice(tmp_path / "img" / "empty.nii.gz", _ct(40))
    _slice(tmp_path / "msk" / "full.nii.gz", _muscle())
    _slice(tmp_path / "msk" / "empty.nii.gz", np.zeros((12, 12), np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a warnings filter must not hide it: it is printed
        code, _o, err = run_measure(capsys, "--images", str(tmp_path / "img"), "--masks",
                                    str(tmp_path / "msk"), "-o", str(tmp_path / "m.csv"))
    assert code == 0
    assert [line for line in err.splitlines() if "empty" in line] == [
        "warning: case empty: the mask holds no muscle pixel (flagged empty_mask)"]
    t = pd.read_csv(tmp_path / "m.csv", dtype={"case_id": str}, keep_default_na=False).set_index("case_id")
    assert t.loc["empty", "flags"].split(";")[0] == "empty_mask"
    assert "empty_mask" not in t.loc["full", "flags"]
