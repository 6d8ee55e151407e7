"""Which slice of which series `measure` reads (issue 20): series choice in a study folder,
``instance_number``, z positions, a 2D NIfTI's stated thickness, per-row manifest errors, the
IMAT convention, the provenance strings and the CSV's integer columns. No model needed."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from clinical_data import studies_csv, write_ct_series
from nnunet_xfer.clinical.api import INTEGER_COLUMNS, _table
from nnunet_xfer.clinical.provenance import LO_MAX, Provenance
from nnunet_xfer.clinical.qc import GALLERY_COLUMNS, gallery_html, slice_choice
from nnunet_xfer.dataset_conversion.manifest import BadRow, CaseSpec, read_manifest
from nnunet_xfer.dataset_conversion.slice_selection import choose_slice
from nnunet_xfer.errors import UserError
from nnunet_xfer.evaluation.measures import muscle_compartment, muscle_measures
from nnunet_xfer.imaging import read_image


def _stack(n: int, size: int = 16) -> np.ndarray:
    rng = np.random.default_rng(n)
    return rng.integers(-200, 200, (n, size, size)).astype(np.int16)


# ---------------------------------------------------------------- series choice (item 5)
@pytest.fixture()
def study_folder(tmp_path):
    """One study folder: an ORIGINAL axial series (4 × 3 mm), a DERIVED one with more, thinner
    slices (6 × 1 mm), a localiser and a one-slice MR."""
    folder = tmp_path / "study"
    uids = {}
    for name, n, z, kind, modality in (
            ("original", 4, 3.0, ["ORIGINAL", "PRIMARY", "AXIAL"], "CT"),
            ("derived", 6, 1.0, ["DERIVED", "SECONDARY", "AXIAL"], "CT"),
            ("scout", 1, 3.0, ["ORIGINAL", "PRIMARY", "LOCALIZER"], "CT"),
            ("mr", 2, 3.0, ["ORIGINAL", "PRIMARY", "AXIAL"], "MR")):
        def rename(k, ds, name=name, modality=modality):
            ds.Modality = modality
        files = write_ct_series(tmp_path / name, _stack(n), (0.8, 0.8), z_mm=z, image_type=kind,
                                per_slice=rename, study_uid="1.2.3.4")
        uids[name] = str(__import__("pydicom").dcmread(files[0]).SeriesInstanceUID)
        folder.mkdir(exist_ok=True)
        for f in files:
            f.rename(folder / f"{name}_{f.name}")
    return folder, uids


def test_study_folder_reads_the_original_axial_ct_by_the_rule(study_folder):
    folder, uids = study_folder
    image = read_image(folder, "c1")
    assert image.dicom.uid == uids["original"] and image.n_slices == 4
    assert image.dicom.choice.startswith("rule: of 4 series the axial CT ORIGINAL/PRIMARY/AXIAL")
    assert "most slices (4)" in image.dicom.choice and "thinnest (3 mm)" in image.dicom.choice


def test_series_uid_column_names_the_series(study_folder, tmp_path):
    folder, uids = study_folder
    image = read_image(folder, "c1", series_uid=uids["derived"])
    assert image.dicom.uid == uids["derived"] and image.n_slices == 6
    assert image.dicom.choice == "series_uid"
    with pytest.raises(UserError, match=r"holds no series 9\.9.*check series_uid"):
        read_image(folder, "c1", series_uid="9.9")
    csv = studies_csv(tmp_path / "m.csv", [{"case_id": "c1", "image": str(folder),
                                            "series_uid": uids["derived"], "slice_index": 2}])
    spec = read_manifest(csv, mask_required=False)[0]
    assert spec.series_uid == uids["derived"]


def test_without_original_the_most_slices_then_the_thinnest_win(tmp_path):
    folder = tmp_path / "study"
    for name, n, z in (("few", 3, 1.0), ("many_thick", 5, 5.0), ("many_thin", 5, 2.0)):
        files = write_ct_series(tmp_path / name, _stack(n), (0.8, 0.8), z_mm=z,
                                image_type=["DERIVED", "SECONDARY", "AXIAL"])
        folder.mkdir(exist_ok=True)
        for f in files:
            f.rename(folder / f"{name}_{f.name}")
    image = read_image(folder)
    assert image.n_slices == 5 and image.spacing[2] == pytest.approx(2.0)
    assert "most slices (5), thinnest (2 mm)" in image.dicom.choice


def test_two_series_alike_by_the_rule_are_refused_naming_them(tmp_path):
    folder = tmp_path / "study"
    for name in ("a", "b"):
        files = write_ct_series(tmp_path / name, _stack(3), (0.8, 0.8))
        folder.mkdir(exist_ok=True)
        for f in files:
            f.rename(folder / f"{name}_{f.name}")
    with pytest.raises(UserError, match=r"2 axial CT series alike by the rule.*series_uid column"):
        read_image(folder, "c1")


# ---------------------------------------------------------------- instance_number and z (item 1)
def test_instance_number_picks_the_instance_whatever_the_file_order(tmp_path):
    """InstanceNumber counts head to feet here (as many scanners do); slice_index counts along
    the volume's third axis (feet to head): InstanceNumber 2 of 1..5 is index 3."""
    def head_first(k, ds):
        ds.InstanceNumber = 5 - k
    files = write_ct_series(tmp_path / "s", _stack(5), (0.8, 0.8), z_mm=2.5, per_slice=head_first)
    image = read_image(tmp_path / "s", "c1")
    spec = CaseSpec(case_id="c1", image=tmp_path / "s", mask=None, instance_number=2)
    index, source = choose_slice(spec, image)
    assert (index, source) == (3, "instance_number")
    import pydicom
    header = pydicom.dcmread(files[3], stop_before_pixels=True)
    assert int(header.InstanceNumber) == 2
    assert image.z_mm(index) == pytest.approx(float(header.ImagePositionPatient[2]))
    np.testing.assert_array_equal(image.slice(index).array, _stack(5)[3])
    with pytest.raises(UserError, match=r"no instance .* InstanceNumber 9 \(its instances are "
                                        r"numbered 1–5\)"):
        choose_slice(CaseSpec(case_id="c1", image=tmp_path / "s", mask=None, instance_number=9), image)
    with pytest.raises(UserError, match="give one of slice_index, instance_number"):
        choose_slice(CaseSpec(case_id="c1", image=tmp_path / "s", mask=None, instance_number=2,
                              slice_index=1), image)


def test_instance_number_on_nifti_is_refused(tmp_path):
    path = tmp_path / "v.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(_stack(3)), str(path))
    with pytest.raises(UserError, match="instance_number applies to DICOM series"):
        choose_slice(CaseSpec(case_id="c1", image=path, mask=None, instance_number=2), read_image(path))


def test_2d_nifti_thickness_and_z_come_from_its_header(tmp_path):
    """A 2D NIfTI states its slice thickness in pixdim[3] and its z in the sform/qform."""
    import nibabel as nib
    affine = np.diag([-0.8, -0.8, 5.0, 1.0])            # a 5 mm slice at z = -312.5 mm
    affine[2, 3] = -312.5
    path = tmp_path / "one.nii"
    nib.save(nib.Nifti1Image(_stack(1)[0], affine), path)
    image = read_image(path)
    assert image.dimension == 2
    assert image.thickness_mm() == pytest.approx(5.0)
    assert image.z_mm() == pytest.approx(-312.5)
    written = tmp_path / "itk.nii.gz"        # ITK writes pixdim[3] = 1 for 2D: that states nothing
    sitk.WriteImage(sitk.GetImageFromArray(_stack(1)[0]), str(written))
    assert read_image(written).thickness_mm() is None


# ---------------------------------------------------------------- a bad row fails alone (item 4)
def test_bad_rows_come_back_in_their_place_for_measure(tmp_path):
    csv = studies_csv(tmp_path / "m.csv", [
        {"case_id": "ok", "image": "a.nii.gz", "slice_index": 3},
        {"case_id": "frac", "image": "a.nii.gz", "slice_index": "2.5"},
        {"case_id": "../up", "image": "a.nii.gz", "slice_index": 1},
        {"case_id": "ok", "image": "b.nii.gz", "slice_index": 1},
        {"case_id": "inst", "image": "a.nii.gz", "instance_number": "7"}])
    rows = read_manifest(csv, mask_required=False, per_row=True)
    assert [type(r).__name__ for r in rows] == ["CaseSpec", "BadRow", "BadRow", "BadRow",
                                                "CaseSpec"]
    assert "slice_index" in rows[1].message and "case frac" in rows[1].message
    assert "not a safe file name" in rows[2].message and rows[2].case_id == "../up"
    assert "more than once" in rows[3].message
    assert rows[4].instance_number == 7
    with pytest.raises(UserError, match="not a safe file name"):  # convert refuses them all
        read_manifest(csv, mask_required=False)
    assert isinstance(rows[1], BadRow)


@pytest.mark.parametrize("text, words", [
    ("case_id,slice_index\nc1,3\n", "lacks column(s) image"),
    ("case_id,image\n", "lists no cases"),
    ("case_id,image\nc1,\x00\x01\n", "NUL bytes"),
])
def test_an_unreadable_manifest_stops_the_whole_measure_run(tmp_path, capsys, text, words):
    """Only a manifest that cannot be read at all stops ``measure --cases`` (exit 2, one line,
    nothing written); it is refused before any model is looked for."""
    from conftest import cli_in_process, one_line_error
    csv = tmp_path / "studies.csv"
    csv.write_text(text)
    out = tmp_path / "out"
    code, err = cli_in_process(capsys, "measure", "--cases", str(csv), "-o", str(out), "-d",
                               "999", "-tr", "NoSuchTrainer", "--device", "cpu")
    one_line_error(code, err, str(csv), words)
    assert not out.exists()


# ---------------------------------------------------------------- IMAT by convention (item 6)
def test_imat_counts_fat_within_the_filled_muscle_compartment():
    """A ring of muscle (1 mm² pixels) with fat in its small hole, fat outside it, and a ring
    around a large cavity: only the small hole's fat is intermuscular."""
    size = 120
    yy, xx = np.mgrid[:size, :size]
    hu = np.full((size, size), -100.0)                  # fat everywhere outside the masks
    r = np.hypot(yy - 30, xx - 30)
    ring = (r >= 3) & (r <= 12)                          # hole: r < 3, about 0.3 cm²
    hu[ring] = 40.0
    hu[(r < 3) & (yy < 30)] = -60.0                      # fat inside the small hole (IMAT)
    hu[(r < 3) & (yy >= 30)] = 20.0                      # non-fat inside it
    big = np.hypot(yy - 75, xx - 75)
    cavity_ring = (big >= 30) & (big <= 34)              # hole ≈ 28 cm² > 20 cm²: a cavity
    hu[cavity_ring] = 40.0
    mask = ring | cavity_ring
    m = muscle_measures(hu, mask, (1.0, 1.0))
    small_fat = int(((r < 3) & (yy < 30)).sum())
    assert m["imat_cm2"] == pytest.approx(small_fat / 100.0)
    assert m["imat_mask_cm2"] == 0.0                     # the old definition: none in the mask
    compartment = muscle_compartment(mask, 0.01)
    assert compartment[30, 30] and not compartment[75, 75]
    hu[ring & (xx < 20)] = -50.0                         # fat the mask holds counts in both
    m = muscle_measures(hu, mask, (1.0, 1.0))
    assert m["imat_mask_cm2"] == pytest.approx((ring & (xx < 20)).sum() / 100.0)
    assert m["imat_cm2"] == pytest.approx(m["imat_mask_cm2"] + small_fat / 100.0)


# ---------------------------------------------------------------- provenance (item 7)
def test_model_string_is_whole_and_its_dicom_form_fits_64_characters():
    p = Provenance("Dataset501_L3", "XferJigsawTrainer_n125_with_a_long_variant_name",
                   "nnUNetResEncUNetLPlans", "2d", ("0", "1", "2", "3", "4"))
    assert p.model == ("Dataset501_L3/XferJigsawTrainer_n125_with_a_long_variant_name__"
                       "nnUNetResEncUNetLPlans__2d folds 0 1 2 3 4")
    assert len(p.short()) <= LO_MAX and p.short().endswith("f0,1,2,3,4")
    cols = p.columns()
    assert cols["model_folds"] == "0 1 2 3 4" and cols["software_version"]
    assert cols["measured_at"][:4].isdigit() and "T" in cols["measured_at"]


def test_integer_columns_stay_integers_beside_a_failed_case(tmp_path):
    rows = [{"case_id": "a", "status": "ok", "slice_index": 72, "instance_number": 73,
             "rows": 101, "cols": 122, "muscle_pixels": 1500, "low_smi": True, "low_smd": False},
            {"case_id": "b", "status": "failed", "error": "case b: no"}]
    table = _table(rows)
    path = tmp_path / "t.csv"
    table.to_csv(path, index=False)
    text = path.read_text().splitlines()
    header = text[0].split(",")
    first = dict(zip(header, text[1].split(",")))
    assert all(first[c] == str(rows[0][c]) for c in INTEGER_COLUMNS)   # 72, not 72.0
    assert first["low_smi"] == "True" and first["low_smd"] == "False"
    back = pd.read_csv(path, dtype={c: "Int64" for c in INTEGER_COLUMNS})
    assert back.loc[0, "slice_index"] == 72 and pd.isna(back.loc[1, "slice_index"])


def test_gallery_shows_patient_cutoff_and_slice_choice():
    row = {"case_id": "c1", "sma_cm2": 120.0, "smd_hu": 30.0, "imat_cm2": 5.0,
           "smi_cm2_m2": 40.0, "sex": "F", "height_m": 1.68, "bmi_kg_m2": 28.0, "low_smi": False,
           "smi_cutoff_cm2_m2": 38.5, "low_smd": True, "sma_mask_cm2": 130.0,
           "fold_dice_min": math.nan, "mask_source": "model", "slice_source": "instance_number",
           "slice_index": 72, "instance_number": 73, "slice_z_mm": -120.0, "flags": ""}
    assert slice_choice(row) == "instance_number: index 72, InstanceNumber 73, z -120.0 mm"
    page = gallery_html([row], {"c1": b"png"}, {}, "t", [])
    import html
    import re
    heads = re.findall(r'<th class="\w+" data-kind="\w+">([^<]*)</th>', page)
    cells = re.findall(r'<td class="\w+" data-value="([^"]*)">', page)
    shown = dict(zip([html.unescape(h) for h in heads], [html.unescape(c) for c in cells]))
    assert shown["sex"] == "F" and float(shown["height m"]) == 1.68
    assert float(shown["BMI kg/m²"]) == 28.0 and float(shown["SMI cut-off"]) == 38.5
    assert shown["low SMD"] == "True" and shown["mask"] == "model"
    assert shown["slice"] == "instance_number: index 72, InstanceNumber 73, z -120.0 mm"
    assert {c for c, _h, _k in GALLERY_COLUMNS} >= {"sex", "height_m", "bmi_kg_m2",
                                                     "smi_cutoff_cm2_m2", "low_smd",
                                                     "slice_choice"}
