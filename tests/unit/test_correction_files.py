"""Corrected masks as 3D Slicer and ITK-SNAP save them (issue 20, item 3), read without a model:
a label map on the whole volume, a sub-box of it (3D Slicer crops ``.seg.nrrd`` to the segment),
the measured slice alone, and the refusals that keep a correction from being silently wrong."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from clinical_data import write_volume
from nnunet_xfer.clinical.corrections import corrected_files, read_correction
from nnunet_xfer.clinical.studies import load_study
from nnunet_xfer.dataset_conversion.manifest import CaseSpec
from nnunet_xfer.errors import UserError

SPACING = (0.8, 0.7)     # (row, col) mm; slices 3 mm apart
INDEX = 2                # the measured slice


@pytest.fixture()
def case(tmp_path):
    """A 4-slice CT volume with an origin and its study measured on slice 2; the corrected
    muscle of that slice (an off-centre block) and the same label as a full volume."""
    rng = np.random.default_rng(0)
    ct = rng.integers(-150, 150, (4, 24, 20)).astype(np.int16)
    image = sitk.GetImageFromArray(ct)
    image.SetSpacing((SPACING[1], SPACING[0], 3.0))
    image.SetOrigin((-7.0, 12.5, -40.0))
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(image, str(path))
    study = load_study(CaseSpec(case_id="c1", image=path, mask=None, slice_index=INDEX))
    muscle = np.zeros(ct.shape[1:], bool)
    muscle[5:11, 7:16] = True
    muscle[6, 9] = False                               # a detail a shift or flip would move
    full = np.zeros(ct.shape, np.uint8)
    full[INDEX] = muscle * 3                           # any one label value is muscle
    label = sitk.GetImageFromArray(full)
    label.CopyInformation(image)
    return dict(study=study, image=image, label=label, muscle=muscle, tmp=tmp_path)


def test_whole_volume_label_map_gives_the_measured_slice(case):
    path = case["tmp"] / "c1.nii.gz"
    sitk.WriteImage(case["label"], str(path))
    np.testing.assert_array_equal(read_correction(path, case["study"]), case["muscle"])


def test_slicer_seg_nrrd_cropped_to_the_segment_is_placed_on_the_grid(case):
    """3D Slicer stores a ``.seg.nrrd`` as the box around the segment: its origin says where."""
    cropped = sitk.RegionOfInterest(case["label"], size=[12, 8, 1], index=[6, 4, INDEX])
    assert cropped.GetSize() == (12, 8, 1) and cropped.GetOrigin() != case["image"].GetOrigin()
    path = case["tmp"] / "c1.seg.nrrd"
    sitk.WriteImage(cropped, str(path))
    np.testing.assert_array_equal(read_correction(path, case["study"]), case["muscle"])


def test_the_measured_slice_alone_as_a_2d_file(case):
    plane = sitk.GetImageFromArray(case["muscle"].astype(np.uint8))
    slice_image = case["study"].slice_image.to_sitk()
    plane.CopyInformation(slice_image)
    path = case["tmp"] / "c1.nii.gz"
    sitk.WriteImage(plane, str(path))
    np.testing.assert_array_equal(read_correction(path, case["study"]), case["muscle"])


def test_several_labels_or_muscle_off_the_measured_slice_are_refused(case):
    arr = sitk.GetArrayFromImage(case["label"])
    arr[INDEX, 0, 0] = 7                               # a second label
    two = sitk.GetImageFromArray(arr)
    two.CopyInformation(case["label"])
    sitk.WriteImage(two, str(case["tmp"] / "two.nii.gz"))
    with pytest.raises(UserError, match=r"case c1: .* holds several labels \(3, 7\)"):
        read_correction(case["tmp"] / "two.nii.gz", case["study"])
    moved = np.roll(sitk.GetArrayFromImage(case["label"]), 1, axis=0)   # edited slice 3
    off = sitk.GetImageFromArray(moved)
    off.CopyInformation(case["label"])
    sitk.WriteImage(off, str(case["tmp"] / "off.nii.gz"))
    with pytest.raises(UserError, match=r"muscle on slice\(s\) 3 but not on the measured slice 2"):
        read_correction(case["tmp"] / "off.nii.gz", case["study"])
    other = write_volume(case["tmp"] / "grid.nii.gz", arr, (1.0, 1.0))   # another grid
    with pytest.raises(UserError, match="case c1"):
        read_correction(other, case["study"])


def test_corrected_folder_refuses_two_files_of_one_case(tmp_path):
    for name in ("c1.nii.gz", "c1.seg.nrrd", "notes.txt"):   # a file of no mask ending is ignored
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(UserError, match=r"two corrected masks of case c1 \(c1\.nii\.gz, "
                                        r"c1\.seg\.nrrd\); keep one"):
        corrected_files(tmp_path, ["c1", "c2"])
    (tmp_path / "c1.seg.nrrd").unlink()
    assert corrected_files(tmp_path, ["c1", "c2"]) == {"c1": tmp_path / "c1.nii.gz"}
