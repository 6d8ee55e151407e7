"""The image reader (nnunet_xfer.imaging): formats, refusals, fingerprints, orientation, names."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from clinical_data import write_ct_series
from conftest import REAL_CT
from nnunet_xfer.errors import UserError
from nnunet_xfer.imaging import (case_id_from_filename, check_pair, fingerprint, image_file,
                                 images_for_cases, label_file, list_cases, load_mask, read_image,
                                 read_mask)
from nnunet_xfer.imaging.names import channel_of, strip_ending

RAS = (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0)


def ct(shape=(3, 12, 10), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1200, shape).astype(np.int16)


def write(arr: np.ndarray, path: Path, spacing=(0.7, 0.8, 2.5), direction=None,
          origin=None, compress=None) -> Path:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing[:arr.ndim])
    if direction is not None:
        img.SetDirection(direction)
    if origin is not None:
        img.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), useCompression=bool(compress))
    return path


# ---------------------------------------------------------------- formats
@pytest.mark.parametrize("name", ["v.nii.gz", "v.nii", "v.nrrd", "v.mha", "v.mhd"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint16, np.int32])
def test_every_format_reads_what_simpleitk_reads(tmp_path, name, dtype):
    arr = ct().astype(dtype) if dtype != np.uint16 else (ct() + 1000).astype(dtype)
    path = write(arr, tmp_path / name, direction=RAS, origin=(4.0, -3.0, 12.5))
    image = read_image(path)
    ref = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(image.array, sitk.GetArrayFromImage(ref))
    assert image.array.dtype == sitk.GetArrayFromImage(ref).dtype
    np.testing.assert_allclose(image.spacing, ref.GetSpacing())
    np.testing.assert_allclose(image.origin, ref.GetOrigin())
    np.testing.assert_allclose(image.direction, ref.GetDirection())


def test_nifti_variants_decode_like_itk(tmp_path):
    """Big-endian data, scl_slope/scl_inter and nnU-Net's (1, rows, cols) layout."""
    import nibabel as nib
    arr = ct((4, 6, 5))
    nib.save(nib.Nifti1Image(arr.T.astype(">i2"), np.diag([0.7, 0.8, 2.5, 1])), tmp_path / "be.nii")
    scaled = nib.Nifti1Image(arr.T.copy(), np.diag([0.7, 0.8, 2.5, 1]))
    scaled.header.set_slope_inter(2.0, -5.0)
    nib.save(scaled, tmp_path / "scaled.nii.gz")
    write(arr[:1], tmp_path / "one.nii.gz")
    for name in ("be.nii", "scaled.nii.gz", "one.nii.gz"):
        image = read_image(tmp_path / name)
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / name)))
        np.testing.assert_array_equal(image.array, ref)
        assert image.array.dtype == ref.dtype, name


def test_dicom_series_and_file(tmp_path):
    vol = ct((3, 16, 14))
    files = write_ct_series(tmp_path / "series", vol, (0.8, 0.7))
    series = read_image(tmp_path / "series")
    np.testing.assert_array_equal(series.array, vol)
    assert series.format == "dicom" and len(series.dicom.files) == 3
    assert series.dicom.first.PatientID == "PH0001"
    np.testing.assert_allclose(series.spacing, (0.7, 0.8, 3.0))
    one = read_image(files[1])
    np.testing.assert_array_equal(one.array.reshape(vol[1].shape), vol[1])


def test_png_and_npy_masks_have_no_geometry(tmp_path):
    from PIL import Image
    mask = np.zeros((6, 7), np.uint8)
    mask[2:4, 1:5] = 1
    Image.fromarray(mask).save(tmp_path / "m.png")
    np.save(tmp_path / "m.npy", mask)
    for name in ("m.png", "m.npy"):
        read = read_mask(tmp_path / name)
        np.testing.assert_array_equal(read.array, mask)
        assert not read.geometry_known
    with pytest.raises(UserError, match=r"m\.png.*picture.*--allow-non-hu"):
        read_image(tmp_path / "m.png")


# ---------------------------------------------------------------- refusals
def _pixdim(path: Path, *values: float) -> Path:
    data = bytearray(path.read_bytes())
    data[80:80 + 4 * len(values)] = struct.pack(f"<{len(values)}f", *values)
    path.write_bytes(bytes(data))
    return path


def _cut(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


REFUSALS = {
    "missing": (lambda t: t / "absent.nii.gz", r"absent\.nii\.gz does not exist"),
    "folder_is_not_a_series": (lambda t: (t / "empty").mkdir() or t / "empty", r"no DICOM series"),
    "nii_gz_half": (lambda t: _cut(write(ct(), t / "h.nii.gz", compress=True), 0.5),
                    r"h\.nii\.gz: is truncated or damaged"),
    "nii_cut_mid_data": (lambda t: _cut(write(ct(), t / "c.nii"), 0.8),
                         r"c\.nii: is truncated or damaged .*bytes of image data"),
    "gzip_checksum": (lambda t: _flip_byte(write(ct(), t / "x.nii.gz", compress=True)),
                      r"x\.nii\.gz: is truncated or damaged"),
    "mha_cut": (lambda t: _cut(write(ct(), t / "c.mha"), 0.6), r"c\.mha.*truncated or damaged"),
    "nrrd_cut": (lambda t: _cut(write(ct(), t / "c.nrrd"), 0.6), r"c\.nrrd.*truncated or damaged"),
    "not_nifti": (lambda t: _bytes(t / "g.nii", b"garbage" * 100),
                  r"g\.nii: is not a NIfTI file"),
    "zero_spacing": (lambda t: _pixdim(write(ct(), t / "z.nii"), 0.0, 0.8), r"z\.nii.*invalid pixel spacing"),
    "negative_spacing": (lambda t: _pixdim(write(ct(), t / "n.nii"), -0.7, 0.8), r"n\.nii.*invalid pixel spacing"),
    "nan_spacing": (lambda t: _pixdim(write(ct(), t / "s.nii"), float("nan"), 0.8), r"s\.nii.*invalid pixel spacing"),
    "nan_voxel": (lambda t: write(_with(ct().astype(np.float32), np.nan), t / "nan.nii.gz"),
                  r"nan\.nii\.gz contains NaN or inf values \(1 NaN/inf"),
    "inf_voxel_mha": (lambda t: write(_with(ct().astype(np.float32), np.inf), t / "inf.mha"),
                      r"inf\.mha contains NaN or inf"),
    "eight_bit": (lambda t: write((ct() % 200).astype(np.uint8), t / "b.nii.gz"), r"8-bit.*--allow-non-hu"),
    "rgb": (lambda t: _rgb(t / "rgb.nii.gz"), r"rgb\.nii\.gz has 3 channels"),
    "four_d": (lambda t: _four_d(t / "f.nii.gz"), r"f\.nii\.gz is 4D"),
    "jpeg": (lambda t: _bytes(t / "a.jpg", b"x"), r"a\.jpg is a picture"),
    "fifo": (lambda t: _fifo(t / "p.nii.gz"), r"p\.nii\.gz is not a regular file"),
    "dicom_truncated": (lambda t: _dicom_truncated(t), r"IM0001\.dcm is truncated or damaged"),
    "dicom_missing_slice": (lambda t: _dicom_missing(t), r"gap of 6 mm.*slice is missing"),
}


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _with(arr: np.ndarray, value: float) -> np.ndarray:
    arr[1, 2, 3] = value
    return arr


def _flip_byte(path: Path) -> Path:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return path


def _rgb(path: Path) -> Path:
    img = sitk.GetImageFromArray(np.stack([ct()[0]] * 3, axis=-1), isVector=True)
    sitk.WriteImage(img, str(path))
    return path


def _four_d(path: Path) -> Path:
    import nibabel as nib
    nib.save(nib.Nifti1Image(np.zeros((5, 4, 3, 2), np.int16) - 500, np.eye(4)), str(path))
    return path


def _fifo(path: Path) -> Path:
    import os
    os.mkfifo(path)
    return path


def _dicom_truncated(t: Path) -> Path:
    files = write_ct_series(t / "s", ct((3, 16, 14)), (0.8, 0.7))
    _cut(files[1], 0.7)
    return t / "s"


def _dicom_missing(t: Path) -> Path:
    files = write_ct_series(t / "s", ct((4, 16, 14)), (0.8, 0.7))
    files[2].unlink()
    return t / "s"


@pytest.mark.parametrize("fault", sorted(REFUSALS))
def test_reader_refuses_in_one_line_naming_the_file(tmp_path, fault, capfd):
    build, pattern = REFUSALS[fault]
    path = build(tmp_path)
    with pytest.raises(UserError, match=pattern) as err:
        read_image(path, case="c7")
    message = str(err.value)
    assert message.startswith("case c7: ") and "\n" not in message
    assert "WARNING" not in capfd.readouterr().err


def test_mask_refusals_speak_of_labels(tmp_path):
    arr = np.zeros((5, 6), np.float32)
    arr[2, 2] = np.nan
    with pytest.raises(UserError, match="non-integer"):
        read_mask(write(arr, tmp_path / "m.nii.gz"))
    from PIL import Image
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(UserError, match=r"rgb\.png has shape \(5, 6, 3\).*2D"):
        read_mask(tmp_path / "rgb.png")
    assert read_mask(write(np.zeros((5, 6), np.uint8), tmp_path / "ok.nii.gz")).array.sum() == 0


def test_allow_non_hu_admits_8_bit_and_png_images(tmp_path):
    from PIL import Image
    Image.fromarray(np.arange(30, dtype=np.uint8).reshape(5, 6)).save(tmp_path / "p.png")
    image = read_image(tmp_path / "p.png", allow_non_hu=True)
    assert not image.geometry_known and image.shape == (5, 6)
    read_image(write((ct() % 200).astype(np.uint8), tmp_path / "b.nii.gz"), allow_non_hu=True)


# ---------------------------------------------------------------- pairs
def test_check_pair_compares_size_spacing_origin_direction(tmp_path):
    base = dict(spacing=(0.7, 0.8, 2.5), origin=(1.0, 2.0, 3.0))
    image = read_image(write(ct(), tmp_path / "i.nii.gz", **base))
    mask = np.zeros((3, 12, 10), np.uint8)
    check_pair(image, read_mask(write(mask, tmp_path / "ok.nii.gz", **base)), "c1")
    for name, kw, why in (
            ("shift", {**base, "origin": (51.0, 2.0, 3.0)}, r"origin .* 50 mm apart"),
            ("flip", {**base, "direction": RAS}, r"direction"),
            ("spacing", {**base, "spacing": (0.9, 0.8, 2.5)}, r"spacing"),
            ("size", base, r"size")):
        arr = mask[:, :11] if name == "size" else mask
        other = read_mask(write(arr, tmp_path / f"{name}.nii.gz", **kw))
        with pytest.raises(UserError, match=rf"case c1: mask .*{name}\.nii\.gz does not match .*{why}"):
            check_pair(image, other, "c1")


def test_load_mask_geometry_of_a_slice(tmp_path):
    path = write(np.ones((1, 4, 5), np.uint8), tmp_path / "m.nii.gz", direction=RAS)
    mask, geometry = load_mask(path)
    assert mask.shape == (4, 5) and mask.all()
    assert geometry.row_axis == (0.0, -1.0, 0.0) and geometry.col_axis == (-1.0, 0.0, 0.0)
    assert geometry.spacing == pytest.approx((0.8, 0.7)) and not geometry.planar


# ---------------------------------------------------------------- fingerprints
def test_fingerprint_is_of_values_not_type_format_or_storage_order(tmp_path):
    arr = ct()
    base = write(arr, tmp_path / "a.nii.gz")
    same = [write(arr.astype(np.float32), tmp_path / "f.nii.gz"),
            write(arr.astype(np.int32), tmp_path / "b.nrrd"),
            write(arr.astype(np.float64), tmp_path / "c.mha"),
            # the same voxels stored the other way round (RAS rows): canonical order is equal
            write(arr[:, ::-1, ::-1].copy(), tmp_path / "ras.nii.gz", direction=RAS,
                  origin=(0.7 * 9, 0.8 * 11, 0.0))]
    want = read_image(base).fingerprint()
    assert all(read_image(p).fingerprint() == want for p in same)
    assert fingerprint(np.int16(100) * np.ones((3, 4), np.int16)) == fingerprint(np.full((3, 4), 100.0, np.float32))
    assert fingerprint(np.ones((1, 3, 4))) == fingerprint(np.ones((3, 4)))     # axes of length 1
    other = arr.copy()
    other[0, 0, 0] += 1
    assert read_image(write(other, tmp_path / "o.nii.gz")).fingerprint() != want
    assert fingerprint(np.zeros((3, 4))) != fingerprint(np.zeros((4, 3)))       # shape counts
    assert fingerprint(np.full((2, 2), 0.5)) != fingerprint(np.full((2, 2), 1.0))


def test_slice_fingerprints_find_a_slice_in_a_volume(tmp_path):
    from nnunet_xfer.imaging import content_fingerprints
    vol = ct((4, 12, 10))
    volume = write(vol, tmp_path / "v.nrrd")
    one = write(vol[2].astype(np.float32), tmp_path / "s.nii.gz")
    assert set(content_fingerprints(one)) <= set(content_fingerprints(volume))
    assert len(content_fingerprints(volume)) == 4
    assert content_fingerprints(write(np.zeros((5, 5), np.uint8), tmp_path / "z.nii.gz")) == []


# ---------------------------------------------------------------- orientation
def test_canonical_orientation_is_lps_and_keeps_every_voxel_in_place(tmp_path):
    arr = ct((2, 5, 4))
    path = write(arr, tmp_path / "ras.nii.gz", direction=RAS, origin=(10.0, 20.0, 0.0))
    image = read_image(path)
    canonical, turn = image.canonical()
    assert canonical.direction == (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0) and not turn.identity
    ref = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
    np.testing.assert_array_equal(canonical.array, sitk.GetArrayFromImage(ref))
    np.testing.assert_allclose(canonical.origin, ref.GetOrigin(), atol=1e-4)
    np.testing.assert_array_equal(turn.undo(canonical.array), arr)
    # transposed storage (rows along x): transposed back
    swapped = write(arr.transpose(0, 2, 1).copy(), tmp_path / "t.nii.gz",
                    direction=(0, 1.0, 0, 1.0, 0, 0, 0, 0, 1.0), spacing=(0.8, 0.7, 2.5))
    canon_t, turn_t = read_image(swapped).canonical()
    assert turn_t.transpose
    np.testing.assert_array_equal(canon_t.array, arr)
    assert canon_t.spacing == pytest.approx((0.7, 0.8, 2.5))


def test_a_slice_keeps_its_place_and_orientation(tmp_path):
    arr = ct((3, 5, 4))
    volume = read_image(write(arr, tmp_path / "v.nii.gz", direction=RAS, origin=(1.0, 2.0, 3.0)))
    cut = volume.slice(2)
    itk = sitk.Extract(sitk.ReadImage(str(tmp_path / "v.nii.gz")), [4, 5, 0], [0, 0, 2],
                       sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOGUESS)
    np.testing.assert_allclose(cut.origin, itk.GetOrigin())
    np.testing.assert_allclose(cut.direction, itk.GetDirection())
    np.testing.assert_array_equal(cut.array, arr[2])
    assert cut.origin3()[2] == pytest.approx(3.0 + 2 * 2.5)
    with pytest.raises(UserError, match="slice_index 3 is out of range"):
        volume.slice(3)


@pytest.mark.skipif(not (REAL_CT / "totalseg_example" / "example_ct_as_dicom").is_dir(),
                    reason="shared/real_ct not present")
def test_real_volume_stored_as_nifti_and_dicom_is_one_image():
    """example_ct.nii.gz (RAS rows) and example_ct_as_dicom/ (LPS rows): the same canonical
    voxels and fingerprint, slice 72 included."""
    ts = REAL_CT / "totalseg_example"
    nifti, dicom = read_image(ts / "example_ct.nii.gz"), read_image(ts / "example_ct_as_dicom")
    assert not np.array_equal(nifti.slice(72).array, dicom.slice(72).array)
    a, b = nifti.slice(72).canonical()[0], dicom.slice(72).canonical()[0]
    np.testing.assert_array_equal(a.array, b.array)
    np.testing.assert_allclose(a.origin3(), b.origin3(), atol=1e-3)
    assert nifti.fingerprint() == dicom.fingerprint()


# ---------------------------------------------------------------- names
def test_case_id_and_file_name_round_trip(tmp_path):
    for case in ("case_007", "L3-0000", "x_0000", "a.b"):
        assert case_id_from_filename(image_file(case), channel_suffix=True) == case
        assert case_id_from_filename(label_file(case)) == case
        assert case_id_from_filename(label_file(case, ".nrrd")) == case
    assert image_file("c", 2, ".mha") == "c_0002.mha"
    assert channel_of("x_0003") == ("x", 3) and channel_of("x_03") is None
    assert strip_ending("a.nii.gz") == "a" and strip_ending("b.tar.gz") == "b.tar"
    for name in ("x_0000.nii.gz", "y_0000.nii.gz"):
        write(np.zeros((2, 2), np.int16), tmp_path / "imagesTr" / name, spacing=(1.0, 1.0))
    assert list(list_cases(tmp_path / "imagesTr", "images")) == ["x", "y"]
    assert images_for_cases(tmp_path / "imagesTr", ["y"]) == {"y": tmp_path / "imagesTr" / "y_0000.nii.gz"}


def test_list_cases_refuses_what_is_not_a_regular_file(tmp_path):
    (tmp_path / "masks").mkdir()
    write(np.zeros((2, 2), np.uint8), tmp_path / "masks" / "a.nii.gz", spacing=(1.0, 1.0))
    (tmp_path / "masks" / "b.nii.gz").mkdir()
    with pytest.raises(UserError, match=r"b\.nii\.gz is not a regular file"):
        list_cases(tmp_path / "masks", "masks")


def test_gzip_with_two_members_is_read_whole(tmp_path):
    path = write(ct(), tmp_path / "a.nii")
    data = path.read_bytes()
    two = tmp_path / "two.nii.gz"
    two.write_bytes(gzip.compress(data[:500]) + gzip.compress(data[500:]))
    np.testing.assert_array_equal(read_image(two).array, read_image(path).array)
