"""Dataset conversion: readers, slice selection, folds/subsets, per-size datasets and bad input.

Most tests build tiny (16×20) cases on the fly and point ``nnUNet_raw``/``nnUNet_preprocessed`` at
their own temporary folders, so they never touch the session's Dataset501.
"""
from __future__ import annotations

import hashlib
import json
import locale
import shutil
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from conftest import DATASET_NAME, REAL_CT, run_cli
from nnunet_xfer.dataset_conversion.convert import convert as convert_dataset
from nnunet_xfer.layout import read_cases
from nnunet_xfer.splits import ensure_splits_in_preprocessed, read_splits, read_subsets
from nnunet_xfer.errors import UserError

SHAPE = (16, 20)  # rows, columns
SPACING = (0.7421875, 0.8125)  # x, y (mm); exact in float32 and float64
N_GOOD = 8


# ----------------------------------------------------------------------------- helpers
def convert(**kwargs) -> Path:
    """``convert`` returning the main dataset folder (most tests only need that)."""
    return convert_dataset(**kwargs).folder


def hu_slice(seed: int, shape=SHAPE, dtype=np.int16) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1024, 1500, shape).astype(dtype)


def f32(values) -> tuple[float, ...]:
    """Spacing as NIfTI keeps it (float32 header fields)."""
    return tuple(float(np.float32(v)) for v in values)


def square_mask(shape=SHAPE, value: int = 1) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[4:10, 5:12] = value
    return m


def to_image(arr: np.ndarray, spacing=SPACING, origin=None) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    sp = tuple(spacing) + ((2.5,) if arr.ndim == 3 else ())
    img.SetSpacing(sp)
    img.SetOrigin(origin if origin is not None else tuple(float(i * 3 + 1) for i in range(arr.ndim)))
    return img


def write(img: sitk.Image | np.ndarray, path: Path, like: sitk.Image | None = None) -> Path:
    if isinstance(img, np.ndarray):
        img = sitk.GetImageFromArray(img)
        if like is not None:
            img.CopyInformation(like)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def good_case(folder: Path, cid: str, seed: int) -> dict:
    img = to_image(hu_slice(seed))
    return {"case_id": cid, "image": str(write(img, folder / "images" / f"{cid}.nii.gz")),
            "mask": str(write(square_mask(), folder / "masks" / f"{cid}.nii.gz", like=img)),
            "height_m": 1.6 + seed / 100, "sex": "F" if seed % 2 else "M"}


def manifest(folder: Path, rows: list[dict]) -> Path:
    path = folder / "cases.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def good_rows(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("good")
    return [good_case(folder, f"case{i:02d}", i) for i in range(N_GOOD)]


# ----------------------------------------------------------------------------- round trips
def test_nifti_roundtrip_keeps_hu_spacing_and_metadata(tmp_path, nn_dirs, good_rows):
    raw, pre = nn_dirs
    out = convert(cases_csv=manifest(tmp_path, good_rows), dataset_id=11, sizes=[2, 3])
    assert out == raw / "Dataset011_L3"
    for row in good_rows:
        src = sitk.ReadImage(row["image"])
        got = sitk.ReadImage(str(out / "imagesTr" / f"{row['case_id']}_0000.nii.gz"))
        assert got.GetDimension() == 2 and got.GetPixelID() == src.GetPixelID()
        assert got.GetSpacing() == src.GetSpacing() == SPACING
        assert got.GetOrigin() == src.GetOrigin() and got.GetDirection() == src.GetDirection()
        assert np.array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(src))
        lab = sitk.ReadImage(str(out / "labelsTr" / f"{row['case_id']}.nii.gz"))
        assert lab.GetPixelID() == sitk.sitkUInt8 and lab.GetSpacing() == SPACING
        assert np.array_equal(sitk.GetArrayFromImage(lab), square_mask())
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "CT"} and ds["labels"] == {"background": 0, "muscle": 1}
    assert ds["numTraining"] == N_GOOD and ds["file_ending"] == ".nii.gz"
    assert ds["nnunet_xfer"]["cases"]["case03"]["height_m"] == pytest.approx(1.63)
    cases = read_cases(out)
    assert list(cases["case_id"]) == [r["case_id"] for r in good_rows]
    assert np.allclose(cases["height_m"], [r["height_m"] for r in good_rows])
    assert list(cases["sex"]) == [r["sex"] for r in good_rows]
    # nnU-Net reads its folds from nnUNet_preprocessed: written there at conversion time
    assert json.loads((pre / "Dataset011_L3" / "splits_final.json").read_text()) == read_splits(out)
    assert not [p for p in raw.iterdir() if p.name.startswith(".")], "staging folder left behind"


@pytest.mark.parametrize("ending", [".nrrd", ".mha", ".nii"])
def test_other_formats_and_array_masks(tmp_path, nn_dirs, good_rows, ending):
    rows = [dict(r) for r in good_rows]
    img = to_image(hu_slice(99, dtype=np.float32) + np.float32(0.25))  # float HU kept exactly
    rows[0]["image"] = str(write(img, tmp_path / f"img{ending}"))
    np.save(tmp_path / "m.npy", square_mask())
    rows[0]["mask"] = str(tmp_path / "m.npy")
    from PIL import Image
    Image.fromarray(square_mask() * 1).save(tmp_path / "m.png")
    rows[1]["mask"] = str(tmp_path / "m.png")
    out = convert(cases_csv=manifest(tmp_path, rows), dataset_id=12, sizes=[2])
    got = sitk.ReadImage(str(out / "imagesTr" / "case00_0000.nii.gz"))
    assert got.GetPixelID() == sitk.sitkFloat32 and got.GetSpacing() == SPACING
    assert np.array_equal(sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(img))
    for cid in ("case00", "case01"):
        lab = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / f"{cid}.nii.gz")))
        assert np.array_equal(lab, square_mask())


def write_dicom_series(folder: Path, hu: np.ndarray, spacing=(0.75, 0.8), thickness=2.5) -> None:
    """A CT series stored as uint16 = HU + 1024 with RescaleIntercept -1024 (as scanners do)."""
    folder.mkdir(parents=True)
    saved_locale = locale.setlocale(locale.LC_ALL)  # GDCM's writer leaves the process in "C"
    try:
        _write_dicom_slices(folder, hu, spacing, thickness)
    finally:
        locale.setlocale(locale.LC_ALL, saved_locale)


def _write_dicom_slices(folder: Path, hu: np.ndarray, spacing, thickness) -> None:
    uid = "1.2.826.0.1.3680043.2.1125.4242"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(hu.shape[0]):
        img = sitk.JoinSeries(sitk.GetImageFromArray(hu[k].astype(np.float32)))
        origin = (10.0, 20.0, 30.0 + thickness * k)
        img.SetOrigin(origin)
        img.SetSpacing((*spacing, thickness))
        tags = {"0008|0060": "CT", "0020|000e": uid, "0020|000d": uid + ".1",
                "0008|0018": f"{uid}.2.{k}", "0020|0013": str(k),
                "0020|0032": "\\".join(map(str, origin)), "0020|0037": "1\\0\\0\\0\\1\\0",
                "0028|0030": f"{spacing[1]}\\{spacing[0]}", "0018|0050": str(thickness),
                "0028|1052": "-1024", "0028|1053": "1", "0028|0100": "16", "0028|0101": "16",
                "0028|0102": "15", "0028|0103": "0"}
        for tag, value in tags.items():
            img.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(img)


def test_dicom_series_rescaled_to_hu_and_sliced_by_index(tmp_path, nn_dirs, good_rows):
    pydicom = pytest.importorskip("pydicom")
    hu = np.stack([hu_slice(50 + k) for k in range(5)])
    write_dicom_series(tmp_path / "series", hu)
    stored = pydicom.dcmread(tmp_path / "series" / "003.dcm").pixel_array
    assert np.array_equal(stored.astype(int) - 1024, hu[3])  # the file does not hold HU itself
    mask3d = np.zeros_like(hu, dtype=np.uint8)
    mask3d[3] = square_mask()
    mask3d[1] = 1  # another slice's mask must not leak in
    ref = sitk.ReadImage([str(p) for p in sorted((tmp_path / "series").iterdir())])
    rows = [dict(r) for r in good_rows]
    rows[0].update(image=str(tmp_path / "series"),
                   mask=str(write(mask3d, tmp_path / "mask3d.nii.gz", like=ref)), slice_index=3)
    out = convert(cases_csv=manifest(tmp_path, rows), dataset_id=13, sizes=[2])
    got = sitk.ReadImage(str(out / "imagesTr" / "case00_0000.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(got), hu[3])
    assert got.GetSpacing() == f32(ref.GetSpacing()[:2])  # NIfTI stores spacing as float32
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "case00.nii.gz")))
    assert np.array_equal(lab, square_mask())
    assert read_cases(out).set_index("case_id").loc["case00", "slice_index"] == 3


def test_pydicom_ct_small_single_file(tmp_path, nn_dirs, good_rows):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file
    path = get_testdata_file("CT_small.dcm")
    if path is None:
        pytest.skip("pydicom test data CT_small.dcm not available")
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.save(tmp_path / "m.npy", (expected > 0).astype(np.uint8))
    rows = [dict(r) for r in good_rows]
    rows[0].update(image=path, mask=str(tmp_path / "m.npy"))
    out = convert(cases_csv=manifest(tmp_path, rows), dataset_id=14, sizes=[2])
    got = sitk.ReadImage(str(out / "imagesTr" / "case00_0000.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(got), expected)
    assert got.GetSpacing() == f32([float(v) for v in ds.PixelSpacing][::-1])


def test_slice_by_vertebra_label_and_folder_mode(tmp_path, nn_dirs):
    hu = np.stack([hu_slice(70 + k) for k in range(9)])
    vol = to_image(hu)
    vert = np.zeros(hu.shape, np.uint8)
    vert[3:8, 6:10, 6:10] = 29  # L3 spans slices 3..7 → middle 5
    vert[0:2, 6:10, 6:10] = 28
    mask = np.zeros(hu.shape, np.uint8)
    mask[5] = square_mask()
    rows = [{"case_id": "vol", "image": str(write(vol, tmp_path / "vol.nrrd")),
             "mask": str(write(mask, tmp_path / "volmask.nrrd", like=vol)),
             "vertebra_mask": str(write(vert, tmp_path / "vert.nii.gz", like=vol)),
             "vertebra_label": 29}]
    rows += [good_case(tmp_path, f"c{i}", i) for i in range(4)]
    out = convert(cases_csv=manifest(tmp_path, rows), dataset_id=15, sizes=[2])
    got = sitk.ReadImage(str(out / "imagesTr" / "vol_0000.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(got), hu[5])
    assert got.GetSpacing() == SPACING and got.GetOrigin() == vol.GetOrigin()[:2]
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr/vol.nii.gz"))),
                          square_mask())
    # --images/--masks: matched by file name
    out2 = convert(images_dir=tmp_path / "images", masks_dir=tmp_path / "masks", dataset_id=16,
                   sizes=[2])
    assert sorted(p.name for p in (out2 / "labelsTr").iterdir()) == [f"c{i}.nii.gz" for i in range(4)]


def test_label_map_empty_mask_and_allow_non_hu(tmp_path, nn_dirs, good_rows, capsys):
    rows = [dict(r) for r in good_rows]
    like = sitk.ReadImage(rows[0]["image"])
    lits = square_mask()
    lits[12:14, :] = 2
    lits[0, :] = 3  # LiTS-style map: 1 muscle, 2/3 fat
    rows[0]["mask"] = str(write(lits, tmp_path / "lits.nii.gz", like=like))
    rows[1]["mask"] = str(write(np.zeros(SHAPE, np.uint8), tmp_path / "empty.nii.gz", like=like))
    out = convert(cases_csv=manifest(tmp_path, rows), dataset_id=17, sizes=[2], label_map="1")
    assert "warning: 1 case(s) have an empty muscle mask: case01" in capsys.readouterr().err
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "case00.nii.gz")))
    assert np.array_equal(lab, square_mask())
    rows = [dict(r) for r in good_rows]
    rows[0]["image"] = str(write(to_image(hu_slice(1).clip(0, 255).astype(np.uint8)),
                                 tmp_path / "u8.nii.gz"))
    out = convert(cases_csv=manifest(tmp_path, rows), dataset_id=18, sizes=[2], allow_non_hu=True)
    assert sitk.ReadImage(str(out / "imagesTr" / "case00_0000.nii.gz")).GetPixelID() == sitk.sitkUInt8


# ----------------------------------------------------------------------------- folds and subsets
def test_folds_partition_and_subsets_nested_deterministic(tmp_path, nn_dirs, capsys):
    rows = [good_case(tmp_path, f"s{i:02d}", i) for i in range(22)]
    csv = manifest(tmp_path, rows)
    out = convert(cases_csv=csv, dataset_id=21, sizes=[10, 5, 25], seed=7)
    assert "n=25 exceeds" in capsys.readouterr().err
    splits, subsets = read_splits(out), read_subsets(out)
    ids = {r["case_id"] for r in rows}
    assert len(splits) == 4
    vals = [set(s["val"]) for s in splits]
    assert set().union(*vals) == ids and sum(len(v) for v in vals) == len(ids)
    for fold, s in enumerate(splits):
        assert set(s["train"]) == ids - set(s["val"])
        five, ten = subsets["folds"][str(fold)]["5"], subsets["folds"][str(fold)]["10"]
        assert len(five) == 5 and len(ten) == 10 and set(five) < set(ten) < set(s["train"])
        assert "25" not in subsets["folds"][str(fold)]
    assert subsets["seed"] == 7
    # deterministic for a seed, different for another
    again = convert(cases_csv=csv, dataset_id=22, sizes=[5, 10, 25], seed=7)
    other = convert(cases_csv=csv, dataset_id=23, sizes=[5, 10, 25], seed=8, n_folds=3)
    assert read_splits(again) == splits and read_subsets(again) == subsets
    assert read_splits(other) != splits and len(read_splits(other)) == 3


def test_per_size_datasets(tmp_path, nn_dirs):
    raw, pre = nn_dirs
    rows = [good_case(tmp_path, f"p{i:02d}", i) for i in range(12)]
    out = convert(cases_csv=manifest(tmp_path, rows), dataset_id=31, sizes=[5, 2],
                  per_size_datasets=True)
    parent_splits, parent_subsets = read_splits(out), read_subsets(out)
    for k, n in ((1, 2), (2, 5)):
        sub = raw / f"Dataset{31 + k:03d}_L3_n{n}"
        splits = read_splits(sub)
        for fold, s in enumerate(splits):
            assert s["val"] == parent_splits[fold]["val"]
            assert s["train"] == parent_subsets["folds"][str(fold)][str(n)]
        assert json.loads((pre / sub.name / "splits_final.json").read_text()) == splits
        ds = json.loads((sub / "dataset.json").read_text())
        assert ds["numTraining"] == 12 and ds["nnunet_xfer"]["subset_size"] == n
        a, b = out / "imagesTr" / "p00_0000.nii.gz", sub / "imagesTr" / "p00_0000.nii.gz"
        assert a.read_bytes() == b.read_bytes()
        assert a.stat().st_ino == b.stat().st_ino  # hard link on the same file system
    # an id that a per-size dataset needs is taken by another dataset: refused, nothing written
    (raw / "Dataset042_Other").mkdir()
    with pytest.raises(UserError, match="Dataset042_Other"):
        convert(cases_csv=manifest(tmp_path, rows), dataset_id=41, sizes=[2],
                per_size_datasets=True)
    assert not (raw / "Dataset041_L3").exists()


def test_dataset_helpers_for_trainers(tmp_path, nn_dirs, good_rows):
    raw, pre = nn_dirs
    out = convert(cases_csv=manifest(tmp_path, good_rows), dataset_id=51, sizes=[2])
    target = pre / out.name / "splits_final.json"
    target.unlink()
    assert ensure_splits_in_preprocessed(51) == target
    assert json.loads(target.read_text()) == read_splits(51) == read_splits("Dataset051_L3")
    target.write_text("[]")  # an existing file is nnU-Net's to keep
    ensure_splits_in_preprocessed("Dataset051_L3")
    assert target.read_text() == "[]"
    assert read_subsets(51)["folds"]["0"]["2"]
    with pytest.raises(UserError, match="no dataset with id 52"):
        read_splits(52)


def test_splits_survive_plan_and_preprocess(preprocessed_dataset, raw_dataset):
    """nnUNetv2_plan_and_preprocess --verify_dataset_integrity accepts the converted phantom and
    leaves our splits_final.json where nnU-Net's training reads it."""
    assert (preprocessed_dataset / "nnUNetPlans.json").is_file()
    ours = json.loads((raw_dataset / "splits_final.json").read_text())
    used = json.loads((preprocessed_dataset / "splits_final.json").read_text())
    assert used == ours and len(ours) == 4
    assert raw_dataset.name == DATASET_NAME


# ----------------------------------------------------------------------------- bad input
def _nifti_zero_spacing(path: Path) -> Path:
    sitk.WriteImage(to_image(hu_slice(5)), str(path))
    data = bytearray(path.read_bytes())
    data[80:88] = struct.pack("<2f", 0.0, 0.0)  # pixdim[1:3]; ITK would silently read 1 mm
    path.write_bytes(bytes(data))
    return path


def _nrrd_without_spacing(path: Path) -> Path:
    arr = hu_slice(6)
    header = (f"NRRD0004\ntype: short\ndimension: 2\nsizes: {SHAPE[1]} {SHAPE[0]}\n"
              f"endian: little\nencoding: raw\n\n").encode()
    path.write_bytes(header + arr.astype("<i2").tobytes())
    return path


def _bad(kind: str, folder: Path, rows: list[dict]) -> tuple[list[dict], str]:
    """Spoil case 0 (or the manifest) in one way; returns rows and a regex the error must match."""
    r = rows[0]
    like = sitk.ReadImage(r["image"])
    if kind == "shape_mismatch":
        r["mask"] = str(write(np.zeros((SHAPE[0], SHAPE[1] - 1), np.uint8), folder / "m.nii.gz"))
        return rows, "case00.*m.nii.gz.*size"
    if kind == "geometry_mismatch":
        m = to_image(square_mask(), spacing=(0.5, 0.5))
        r["mask"] = str(write(m, folder / "m.nii.gz"))
        return rows, "case00.*m.nii.gz.*spacing"
    if kind == "mask_values":
        r["mask"] = str(write(square_mask(value=2), folder / "m.nii.gz", like=like))
        return rows, "case00.*m.nii.gz.*other than 0/1.*--label-map"
    if kind == "missing_file":
        r["image"] = str(folder / "nowhere.nii.gz")
        return rows, "case00.*nowhere.nii.gz.*does not exist"
    if kind == "unreadable_file":
        (folder / "junk.nii.gz").write_bytes(b"this is not an image")
        r["image"] = str(folder / "junk.nii.gz")
        return rows, "case00.*junk.nii.gz"
    if kind == "duplicate_id":
        rows[1]["case_id"] = "case00"
        return rows, "case00.*more than once"
    if kind == "unsafe_id":
        r["case_id"] = "../x"
        return rows, r"\.\./x.*safe file name"
    if kind == "volume_without_slice":
        vol = to_image(np.stack([hu_slice(i) for i in range(3)]))
        r["image"] = str(write(vol, folder / "vol.nii.gz"))
        return rows, "case00.*vol.nii.gz.*slice_index, instance_number or vertebra_mask"
    if kind == "slice_out_of_range":
        vol = to_image(np.stack([hu_slice(i) for i in range(3)]))
        r.update(image=str(write(vol, folder / "vol.nii.gz")), slice_index=3)
        return rows, "case00.*slice_index 3 is out of range.*vol.nii.gz"
    if kind == "vertebra_label_absent":
        vol = to_image(np.stack([hu_slice(i) for i in range(3)]))
        r.update(image=str(write(vol, folder / "vol.nii.gz")),
                 vertebra_mask=str(write(np.zeros((3, *SHAPE), np.uint8), folder / "v.nii.gz",
                                         like=vol)), vertebra_label=29)
        return rows, "case00.*label 29 does not occur.*v.nii.gz"
    if kind == "zero_spacing":
        r["image"] = str(_nifti_zero_spacing(folder / "zero.nii"))
        return rows, "case00.*zero.nii.*spacing"
    if kind == "missing_spacing":
        r["image"] = str(_nrrd_without_spacing(folder / "nospacing.nrrd"))
        return rows, "case00.*nospacing.nrrd.*spacing"
    if kind == "nan_in_image":
        arr = hu_slice(3).astype(np.float32)
        arr[2, 3] = np.nan
        r["image"] = str(write(to_image(arr), folder / "nan.nii.gz"))
        return rows, "case00.*nan.nii.gz.*NaN"
    if kind == "inf_in_image":
        arr = hu_slice(3).astype(np.float32)
        arr[2, 3] = np.inf
        r["image"] = str(write(to_image(arr), folder / "inf.nii.gz"))
        return rows, "case00.*inf.nii.gz.*NaN or inf"
    if kind == "uint8_image":
        r["image"] = str(write(to_image(hu_slice(3).clip(0, 255).astype(np.uint8)), folder / "u8.nii.gz"))
        return rows, "case00.*u8.nii.gz.*8-bit.*--allow-non-hu"
    if kind == "values_0_255":
        r["image"] = str(write(to_image(np.abs(hu_slice(3)) % 256), folder / "win.nii.gz"))
        return rows, "case00.*win.nii.gz.*not in HU"
    if kind == "array_mask_shape":
        np.save(folder / "m.npy", np.zeros((SHAPE[0] + 1, SHAPE[1]), np.uint8))
        r["mask"] = str(folder / "m.npy")
        return rows, "case00.*m.npy.*shape"
    if kind == "folder_without_dicom":
        (folder / "emptydir").mkdir()
        r["image"] = str(folder / "emptydir")
        return rows, "case00.*emptydir.*no DICOM series"
    if kind == "dicom_without_spacing":
        pydicom = pytest.importorskip("pydicom")
        write_dicom_series(folder / "series", hu_slice(4)[None])
        path = folder / "series" / "000.dcm"
        ds = pydicom.dcmread(path)
        del ds.PixelSpacing
        ds.save_as(path)
        r["image"] = str(path)
        return rows, "case00.*000.dcm.*spacing"
    raise AssertionError(kind)


BAD_KINDS = ["shape_mismatch", "geometry_mismatch", "mask_values", "missing_file", "unreadable_file",
             "duplicate_id", "unsafe_id", "volume_without_slice", "slice_out_of_range",
             "vertebra_label_absent", "zero_spacing", "missing_spacing", "nan_in_image",
             "inf_in_image", "uint8_image", "values_0_255", "array_mask_shape",
             "folder_without_dicom", "dicom_without_spacing"]


@pytest.fixture(scope="module")
def existing_dataset(tmp_path_factory, good_rows) -> Path:
    """A converted dataset that failed conversions must leave exactly as it was."""
    root = tmp_path_factory.mktemp("existing")
    mp = pytest.MonkeyPatch()
    mp.setenv("nnUNet_raw", str(root / "raw"))
    mp.setenv("nnUNet_preprocessed", str(root / "pre"))
    try:
        return convert(cases_csv=manifest(root, good_rows), dataset_id=61, sizes=[2])
    finally:
        mp.undo()


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_bad_input_refused_cleanly(kind, tmp_path, nn_dirs, good_rows, existing_dataset):
    raw, pre = nn_dirs
    rows, pattern = _bad(kind, tmp_path, [dict(r) for r in good_rows])
    csv = manifest(tmp_path, rows)
    with pytest.raises(UserError, match=pattern) as err:
        convert(cases_csv=csv, dataset_id=61, sizes=[2])
    assert "\n" not in str(err.value)
    assert list(raw.iterdir()) == [] and list(pre.iterdir()) == []
    # the same input with --overwrite onto an existing dataset leaves that dataset untouched
    shutil.copytree(existing_dataset, raw / existing_dataset.name)
    before = tree_digest(raw / existing_dataset.name)
    with pytest.raises(UserError, match=pattern):
        convert(cases_csv=csv, dataset_id=61, sizes=[2], overwrite=True)
    assert [p.name for p in raw.iterdir()] == [existing_dataset.name]
    assert tree_digest(raw / existing_dataset.name) == before


def test_existing_dataset_needs_overwrite(tmp_path, nn_dirs, good_rows):
    raw, pre = nn_dirs
    csv = manifest(tmp_path, good_rows)
    out = convert(cases_csv=csv, dataset_id=62, sizes=[2], seed=1)
    before = tree_digest(out)
    with pytest.raises(UserError, match="Dataset062_L3.*--overwrite"):
        convert(cases_csv=csv, dataset_id=62, sizes=[2], seed=2)
    assert tree_digest(out) == before
    convert(cases_csv=csv, dataset_id=62, sizes=[2], seed=2, overwrite=True)
    assert read_subsets(out)["seed"] == 2
    assert json.loads((pre / out.name / "splits_final.json").read_text()) == read_splits(out)
    assert sorted(p.name for p in raw.iterdir()) == [out.name]


def test_stale_splits_in_preprocessed_need_overwrite(tmp_path, nn_dirs, good_rows):
    raw, pre = nn_dirs
    stale = pre / "Dataset064_L3" / "splits_final.json"
    stale.parent.mkdir()
    stale.write_text(json.dumps([{"train": ["a"], "val": ["b"]}]))
    with pytest.raises(UserError, match="splits_final.json holds different splits.*--overwrite"):
        convert(cases_csv=manifest(tmp_path, good_rows), dataset_id=64, sizes=[2])
    assert not (raw / "Dataset064_L3").exists()
    out = convert(cases_csv=manifest(tmp_path, good_rows), dataset_id=64, sizes=[2], overwrite=True)
    assert json.loads(stale.read_text()) == read_splits(out)


def test_cli_bad_input_is_one_line_exit_2(tmp_path, good_rows):
    rows, _ = _bad("mask_values", tmp_path, [dict(r) for r in good_rows])
    raw = tmp_path / "raw"
    proc = run_cli("nnunet-xfer", "convert", "--cases", str(manifest(tmp_path, rows)), "-d", "63",
                   "--sizes", "2", env={"nnUNet_raw": str(raw)}, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "case00" in errors[0] and "--label-map" in errors[0]
    assert not (raw / "Dataset063_L3").exists()


# ----------------------------------------------------------------------------- real CT
TOTALSEG = REAL_CT / "totalseg_example"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real CT test data {path} not present")
    return path


def test_real_ct_by_vertebra_label_and_by_index(tmp_path, nn_dirs, good_rows):
    ct = _need(TOTALSEG / "example_ct.nii.gz")
    seg = _need(TOTALSEG / "example_seg_fast_force_split.nii.gz")
    vol = sitk.ReadImage(str(ct))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(seg)))
    z = np.flatnonzero((labels == 29).any(axis=(1, 2)))
    middle = int(z[0] + z[-1]) // 2
    muscle = np.isin(labels, [86, 87, 88, 89]).astype(np.uint8)
    mask = write(muscle, tmp_path / "muscle.nii.gz", like=vol)
    rows = [dict(r) for r in good_rows]
    rows[0].update(image=str(ct), mask=str(mask), vertebra_mask=str(seg), vertebra_label=29)
    rows[1].update(image=str(ct), mask=str(mask), slice_index=middle - 4)
    out = convert(cases_csv=manifest(tmp_path, rows), dataset_id=71, sizes=[2])
    # the volume stores RAS rows; convert writes the canonical (LPS) order (conversion.md#orientation)
    assert vol.GetDirection()[:5:4] == (-1.0, -1.0)
    hu = sitk.GetArrayFromImage(sitk.DICOMOrient(vol, "LPS"))
    lps_muscle = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(mask)), "LPS"))
    for cid, k in (("case00", middle), ("case01", middle - 4)):
        got = sitk.ReadImage(str(out / "imagesTr" / f"{cid}_0000.nii.gz"))
        assert np.array_equal(sitk.GetArrayFromImage(got), hu[k])
        assert got.GetPixelID() == vol.GetPixelID() and got.GetSpacing() == vol.GetSpacing()[:2]
        assert got.GetDirection() == (1.0, 0.0, 0.0, 1.0)
        lab = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / f"{cid}.nii.gz")))
        assert np.array_equal(lab, lps_muscle[k]) and lab.sum() == muscle[k].sum()
    assert hu[middle].min() < -900  # real HU: air outside the body
    # the README's reference slice of L3 is that same middle slice
    ref = sitk.GetArrayFromImage(sitk.ReadImage(str(_need(TOTALSEG / "example_ct_L3_hu.nii.gz"))))
    assert np.array_equal(ref[0], sitk.GetArrayFromImage(vol)[middle])


def test_real_ct_slice_with_label_map_and_dicom_series(tmp_path, nn_dirs, good_rows, capsys):
    img = _need(TOTALSEG / "example_ct_L3_hu.nii.gz")
    lab = _need(TOTALSEG / "example_ct_L3_mask_ts_fast.nii.gz")
    dcm = _need(TOTALSEG / "example_ct_dicom")
    rows = [dict(r) for r in good_rows]
    rows[0].update(image=str(img), mask=str(lab))
    rows[1].update(image=str(dcm), mask=str(tmp_path / "d.npy"), slice_index=10)
    np.save(tmp_path / "d.npy", np.zeros((512, 512), np.uint8))
    out = convert(cases_csv=manifest(tmp_path, rows), dataset_id=72, sizes=[2],
                  label_map="1,2,3,4")
    assert "empty muscle mask: case01" in capsys.readouterr().err
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "case00.nii.gz")))
    labels = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(lab)), "LPS"))[0]
    assert np.array_equal(got, np.isin(labels, [1, 2, 3, 4]))
    assert got.sum() == 291 + 261 + 72 + 78  # meta.json's muscle pixel counts
    series = sitk.ImageSeriesReader()
    series.SetFileNames(series.GetGDCMSeriesFileNames(str(dcm)))
    ref = series.Execute()
    conv = sitk.ReadImage(str(out / "imagesTr" / "case01_0000.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(conv), sitk.GetArrayFromImage(ref)[10])
    assert conv.GetSpacing() == ref.GetSpacing()[:2] == pytest.approx((0.9765625, 0.9765625))
    assert sitk.GetArrayFromImage(conv).min() <= -1000  # rescale applied: HU, not stored values
