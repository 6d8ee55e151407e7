"""Muscle measures on hand-computable slices, slice/mask reading rules, and the `measure` command."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from conftest import REAL_CT, run_cli
from nnunet_xfer.errors import UserError
from nnunet_xfer.imaging import (case_id_from_filename, check_same_geometry, list_cases, load_mask,
                                 load_slice)
from nnunet_xfer.evaluation.measures import (MEASURE_COLUMNS, MEASURE_KEYS, PLAUSIBLE_SMA_CM2,
                                             hu_looks_calibrated, muscle_measures, quality_flags)

# 10 muscle pixels at the IMAT / refined-muscle range ends; spacing 0.5 × 2.0 mm → 0.01 cm² a pixel
HU_INSIDE = [-191, -190, -30, -29, 150, 151, 40, 40, 40, 40]


def hand_slice() -> tuple[np.ndarray, np.ndarray]:
    image = np.full((4, 5), -1000.0)
    mask = np.zeros((4, 5), bool)
    mask[1:3, :] = True
    image[mask] = HU_INSIDE
    return image, mask


def test_muscle_measures_hand_computed():
    """Default SMA/SMD/SMI count mask pixels within −29…+150 HU; *_mask_* the whole mask."""
    image, mask = hand_slice()
    m = muscle_measures(image, mask, (0.5, 2.0), height_m=1.6)
    in_range = [-29, 150, 40, 40, 40, 40]                   # inclusive ends
    assert m["sma_cm2"] == pytest.approx(0.06)
    assert m["smd_hu"] == pytest.approx(np.mean(in_range))
    assert m["smi_cm2_m2"] == pytest.approx(0.06 / 1.6 ** 2)
    assert m["imat_cm2"] == pytest.approx(0.02)             # −190 and −30 (inclusive ends)
    assert m["sma_mask_cm2"] == pytest.approx(0.10)
    assert m["smd_mask_hu"] == pytest.approx(np.mean(HU_INSIDE))
    assert m["smi_mask_cm2_m2"] == pytest.approx(0.10 / 1.6 ** 2)
    assert m["sma_hu_refined_cm2"] == m["sma_cm2"]          # old name, kept for older callers
    wide = muscle_measures(image, mask, (0.5, 2.0), muscle_hu=(-1000, 1000))
    assert wide["sma_cm2"] == pytest.approx(0.10) and wide["smd_hu"] == pytest.approx(m["smd_mask_hu"])


def test_muscle_measures_empty_mask_and_no_height():
    image, mask = hand_slice()
    m = muscle_measures(image, np.zeros_like(mask), (1.0, 1.0))
    assert m["sma_cm2"] == 0 and m["imat_cm2"] == 0 and m["sma_mask_cm2"] == 0
    assert math.isnan(m["smd_hu"]) and math.isnan(m["smi_cm2_m2"]) and math.isnan(m["smd_mask_hu"])
    assert math.isnan(muscle_measures(image, mask, (1.0, 1.0), height_m=float("nan"))["smi_cm2_m2"])


def test_quality_flags_on_hand_made_slices():
    rng = np.random.default_rng(3)
    image = np.full((60, 60), -1000.0)                       # air around a body
    yy, xx = np.mgrid[:60, :60]
    body = (yy - 30) ** 2 + (xx - 30) ** 2 < 24 ** 2
    image[body] = rng.normal(-80, 20, body.sum())            # fat
    ring = body & ((yy - 30) ** 2 + (xx - 30) ** 2 > 16 ** 2)
    image[ring] = rng.normal(40, 10, ring.sum())             # muscle
    m = muscle_measures(image, ring, (5.0, 5.0))             # 25 mm² pixels: a plausible SMA
    assert PLAUSIBLE_SMA_CM2[0] < m["sma_cm2"] < PLAUSIBLE_SMA_CM2[1]
    assert quality_flags(image, ring, m) == []
    assert quality_flags(image, ring, m, slice_thickness_mm=6.0) == ["thick_slice"]
    assert quality_flags(image, ring, m, fold_dice=[0.95, 0.7]) == ["fold_disagreement"]
    edge = ring.copy()
    edge[0, 30] = True
    assert "fov_edge" in quality_flags(image, edge, muscle_measures(image, edge, (5.0, 5.0)))
    empty = np.zeros_like(ring)
    assert quality_flags(image, empty, muscle_measures(image, empty, (5.0, 5.0)))[0] == "empty_mask"
    small = muscle_measures(image, ring, (1.0, 1.0))         # 1 mm pixels: SMA far too small
    assert quality_flags(image, ring, small) == ["sma_implausible"]
    shifted = image + 1024                                   # stored values without the intercept
    flags = quality_flags(shifted, ring, muscle_measures(shifted, ring, (5.0, 5.0)))
    assert "hu_not_calibrated" in flags and "smd_implausible" in flags
    assert hu_looks_calibrated(image) and not hu_looks_calibrated(shifted)
    padded = np.where(body, image, -3024.0)                  # scanner padding is not air
    padded[:5] = -1000
    assert hu_looks_calibrated(padded)


def test_case_id_from_filename():
    assert case_id_from_filename("case_007_0000.nii.gz", channel_suffix=True) == "case_007"
    assert case_id_from_filename("case_007.nii.gz", channel_suffix=True) == "case_007"
    assert case_id_from_filename("L3_0000.nii.gz") == "L3_0000"   # a mask: no channel suffix
    assert case_id_from_filename(Path("/x/y/p12.mha")) == "p12"
    assert case_id_from_filename("p12_0001.nrrd", channel_suffix=True) == "p12_0001"


def test_list_cases_channel_suffix_only_for_nnunet_style_image_folders(tmp_path):
    one = np.zeros((3, 3), np.uint8)
    for name in ("L3_0000_0000.nii.gz", "L3_0001_0000.nii.gz"):
        write_slice(tmp_path / "imagesTr" / name, one)
        write_slice(tmp_path / "labelsTr" / name.replace("_0000.nii.gz", ".nii.gz"), one)
    for name in ("L3_0000.nii.gz", "L3_0001.nii.gz"):
        write_slice(tmp_path / "images" / name, one)
    (tmp_path / "labelsTr" / "dataset.json").write_text("{}")
    assert list(list_cases(tmp_path / "imagesTr", "images")) == ["L3_0000", "L3_0001"]
    assert list(list_cases(tmp_path / "labelsTr", "labels")) == ["L3_0000", "L3_0001"]
    assert list(list_cases(tmp_path / "images", "images")) == ["L3_0000", "L3_0001"]
    with pytest.raises(UserError, match="not a folder of masks"):
        list_cases(tmp_path / "nothing", "masks")


def write_slice(path: Path, arr: np.ndarray, spacing_rowcol=(0.8, 0.7), as_3d=False) -> Path:
    img = sitk.GetImageFromArray(arr[None] if as_3d else arr)
    img.SetSpacing((spacing_rowcol[1], spacing_rowcol[0], 5.0) if as_3d
                   else (spacing_rowcol[1], spacing_rowcol[0]))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


@pytest.mark.parametrize("as_3d", [False, True])
def test_read_slice_returns_row_col_spacing(tmp_path, as_3d):
    arr = np.arange(12, dtype=np.int16).reshape(3, 4)
    got, geometry = load_slice(write_slice(tmp_path / "a.nii.gz", arr, (0.8, 0.7), as_3d))
    spacing = geometry.spacing
    np.testing.assert_array_equal(got, arr)
    assert spacing == pytest.approx((0.8, 0.7))


def test_read_slice_rejects_a_volume(tmp_path):
    path = tmp_path / "vol.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 5), np.int16)), str(path))
    with pytest.raises(UserError, match="vol.nii.gz"):
        load_slice(path)


def test_read_mask_label_rules(tmp_path):
    labels = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    path = write_slice(tmp_path / "multi.nii.gz", labels)
    with pytest.raises(UserError, match=r"multi\.nii\.gz.*2.*--label"):
        load_mask(path)
    mask, _ = load_mask(path, label=2)
    np.testing.assert_array_equal(mask, labels == 2)
    mask, _ = load_mask(path, label=1, other_labels=True)
    np.testing.assert_array_equal(mask, labels == 1)
    binary, geometry = load_mask(write_slice(tmp_path / "bin.nii.gz", (labels == 1).astype(np.uint8)))
    spacing = geometry.spacing
    np.testing.assert_array_equal(binary, labels == 1)
    assert binary.dtype == bool and spacing == pytest.approx((0.8, 0.7))


def test_check_same_geometry_names_the_case():
    check_same_geometry((0.8, 0.7), (4, 5), (0.8, 0.70000001), (4, 5), "c1")
    with pytest.raises(UserError, match="case c1: shape"):
        check_same_geometry((0.8, 0.7), (4, 5), (0.8, 0.7), (5, 4), "c1")
    with pytest.raises(UserError, match="case c2: spacing"):
        check_same_geometry((0.8, 0.7), (4, 5), (0.8, 0.9), (4, 5), "c2")


@pytest.fixture()
def measure_inputs(tmp_path) -> dict:
    """Two nnU-Net-style images, one plain-named image, their masks and a heights CSV."""
    rng = np.random.default_rng(0)
    images, masks = tmp_path / "imagesTs", tmp_path / "pred"
    expected = {}
    for i, case in enumerate(["pt_a", "pt_b", "pt_c"]):
        image = rng.integers(-200, 200, size=(16, 12)).astype(np.int16)
        image[0, 0] = -1000  # some air: not an 8-bit picture
        mask = rng.random((16, 12)) < 0.4
        name = f"{case}.nii.gz" if case == "pt_c" else f"{case}_0000.nii.gz"
        write_slice(images / name, image)
        write_slice(masks / f"{case}.nii.gz", mask.astype(np.uint8))
        height = 1.5 + 0.1 * i if case != "pt_b" else None
        expected[case] = muscle_measures(image, mask, (0.8, 0.7), height)
    (masks / "dataset.json").write_text("{}")  # nnUNetv2_predict leaves such files beside masks
    heights = tmp_path / "heights.csv"
    heights.write_text("case_id,height_m\npt_a,1.5\npt_c,1.7\n")
    return dict(images=images, masks=masks, heights=heights, expected=expected,
                out=tmp_path / "out" / "measures.csv")


def test_measure_cli_writes_one_row_per_case(measure_inputs):
    m = measure_inputs
    run_cli("nnunet-xfer", "measure", "--images", str(m["images"]), "--masks", str(m["masks"]),
            "-o", str(m["out"]), "--heights", str(m["heights"]))
    table = pd.read_csv(m["out"], dtype={"case_id": str}, keep_default_na=False, na_values=[""])
    assert list(table.columns) == list(MEASURE_COLUMNS)
    assert list(table["case_id"]) == ["pt_a", "pt_b", "pt_c"]
    for _, row in table.iterrows():
        want = m["expected"][row["case_id"]]
        for key in MEASURE_KEYS:
            value = want[key]
            if math.isnan(value):
                assert math.isnan(row[key]), (row["case_id"], key)
            else:
                assert row[key] == pytest.approx(value), (row["case_id"], key)
    assert math.isnan(table.set_index("case_id").loc["pt_b", "smi_cm2_m2"])

    again = run_cli("nnunet-xfer", "measure", "--images", str(m["images"]), "--masks",
                    str(m["masks"]), "-o", str(m["out"]), check=False)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    run_cli("nnunet-xfer", "measure", "--images", str(m["images"]), "--masks", str(m["masks"]),
            "-o", str(m["out"]), "--overwrite")
    assert pd.read_csv(m["out"])["smi_cm2_m2"].isna().all()  # replaced, now without heights
    assert [p.name for p in m["out"].parent.iterdir()] == ["measures.csv"]  # no temp left
    assert pd.read_csv(m["out"])["muscle_pixels"].tolist() == [
        int(round(m["expected"][c]["sma_mask_cm2"] / (0.8 * 0.7 / 100))) for c in ("pt_a", "pt_b", "pt_c")]


def _cli_error(m: dict, *extra: str) -> str:
    proc = run_cli("nnunet-xfer", "measure", "--images", str(m["images"]), "--masks",
                   str(m["masks"]), "-o", str(m["out"]), *extra, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not m["out"].exists()
    return proc.stderr


def test_measure_cli_bad_geometry_names_the_case(measure_inputs):
    m = measure_inputs
    write_slice(m["masks"] / "pt_b.nii.gz", np.zeros((16, 12), np.uint8), spacing_rowcol=(1.0, 0.7))
    err = _cli_error(m)
    assert "case pt_b" in err and "spacing" in err


@pytest.mark.parametrize("option", [["--label-map", "2"], ["--label", "2"], ["--label-map", "1,2"]])
def test_measure_cli_multilabel_needs_label(measure_inputs, option):
    m = measure_inputs
    labels = np.zeros((16, 12), np.uint8)
    labels[2:6, 2:6], labels[8:10, 3:9] = 1, 2
    write_slice(m["masks"] / "pt_a.nii.gz", labels)
    err = _cli_error(m)
    # the message names measure's real option (issue 19: it said --label, which measure hides)
    assert "use --label-map" in err and "pt_a.nii.gz" in err
    run_cli("nnunet-xfer", "measure", "--images", str(m["images"]), "--masks", str(m["masks"]),
            "-o", str(m["out"]), *option)
    table = pd.read_csv(m["out"]).set_index("case_id")
    pixels = 12 + (16 if option[1] == "1,2" else 0)
    assert table.loc["pt_a", "sma_mask_cm2"] == pytest.approx(pixels * 0.8 * 0.7 / 100)


def test_measure_cli_missing_image_and_empty_folder(measure_inputs, tmp_path):
    m = measure_inputs
    write_slice(m["masks"] / "pt_z.nii.gz", np.zeros((16, 12), np.uint8))
    assert "pt_z" in _cli_error(m)
    (tmp_path / "empty").mkdir()
    assert "no masks" in _cli_error({**m, "masks": tmp_path / "empty"})


def test_measure_cli_bad_heights(measure_inputs, tmp_path):
    m = measure_inputs
    bad = tmp_path / "cm.csv"
    bad.write_text("case_id,height_m\npt_a,172\n")
    assert "metres" in _cli_error(m, "--heights", str(bad))
    bad.write_text("case,height\npt_a,1.72\n")
    assert "case_id" in _cli_error(m, "--heights", str(bad))


TS = REAL_CT / "totalseg_example"


@pytest.mark.skipif(not (TS / "example_ct_L3_hu.nii.gz").exists(), reason="shared/real_ct not present")
def test_real_totalseg_l3_measures_are_plausible():
    image, geometry = load_slice(TS / "example_ct_L3_hu.nii.gz")
    labels, mask_geometry = load_slice(TS / "example_ct_L3_mask_ts_fast.nii.gz")
    spacing = geometry.spacing
    check_same_geometry(spacing, image.shape, mask_geometry.spacing, labels.shape, "example_ct_L3")
    assert spacing == (3.0, 3.0)
    muscle = np.isin(labels, [1, 2, 3, 4])   # autochthon and iliopsoas, left/right; 5 = vertebra
    m = muscle_measures(image, muscle, spacing, height_m=1.75)
    assert m["sma_mask_cm2"] == pytest.approx((291 + 261 + 72 + 78) * 0.09)   # counts from meta.json
    # whole mask 16.5 HU: low-normal muscle density at 3 mm (partial volume with fat)
    assert 0 <= m["smd_mask_hu"] <= 80
    assert m["imat_cm2"] < 0.2 * m["sma_mask_cm2"]
    assert 0.7 * m["sma_mask_cm2"] < m["sma_cm2"] < m["sma_mask_cm2"]
    assert m["smd_hu"] > m["smd_mask_hu"]     # the fat-blurred edge pixels no longer pull it down
    vertebra = muscle_measures(image, labels == 5, spacing)
    assert vertebra["smd_hu"] > m["smd_hu"]        # cancellous bone is denser than muscle


def test_measure_cli_on_the_phantom_cohort(phantom_dir, tmp_path):
    """The phantom's layout is a user's: images/, masks/ and cases.csv with case_id,height_m."""
    out = tmp_path / "phantom_measures.csv"
    run_cli("nnunet-xfer", "measure", "--images", str(phantom_dir / "images"), "--masks",
            str(phantom_dir / "masks"), "--heights", str(phantom_dir / "cases.csv"), "-o", str(out))
    table = pd.read_csv(out, dtype={"case_id": str}).set_index("case_id")
    cases = pd.read_csv(phantom_dir / "cases.csv", dtype={"case_id": str}).set_index("case_id")
    assert sorted(table.index) == sorted(cases.index)
    np.testing.assert_allclose(table["smi_cm2_m2"], table["sma_cm2"] / cases.loc[table.index,
                               "height_m"] ** 2, rtol=1e-9)
    assert (table["sma_cm2"] > 0).all()
    assert table["smd_hu"].between(-29, 150).all()   # HU-gated by definition
    assert (table["imat_cm2"] < table["sma_mask_cm2"]).all()
    assert (table["sma_cm2"] <= table["sma_mask_cm2"]).all()
    # partial-volume edges put some mask pixels outside −29…+150 HU: the two conventions differ
    differ = table.index[table["sma_cm2"] < table["sma_mask_cm2"]]
    assert len(differ) > 0
    case = differ[0]
    image, geometry = load_slice(phantom_dir / "images" / f"{case}.nii.gz")
    spacing = geometry.spacing
    mask, _ = load_mask(phantom_dir / "masks" / f"{case}.nii.gz")
    outside = int(np.count_nonzero(mask & ((image < -29) | (image > 150))))
    assert outside > 0
    assert table.loc[case, "sma_mask_cm2"] - table.loc[case, "sma_cm2"] == pytest.approx(
        outside * spacing[0] * spacing[1] / 100)
    assert table.loc[case, "smd_hu"] == pytest.approx(image[mask & (image >= -29) & (image <= 150)].mean())
    assert table.loc[case, "smd_mask_hu"] == pytest.approx(image[mask].mean())
    want = muscle_measures(image, mask, spacing, float(cases.loc[case, "height_m"]))
    assert {k: table.loc[case, k] for k in MEASURE_KEYS} == pytest.approx(
        {k: want[k] for k in MEASURE_KEYS})
