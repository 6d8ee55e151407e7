"""Fault injection for `convert`, `phantom` and the folds/subsets binding (issues 10.1 and 11).

Every case is a fault a careful (or careless) user meets: hostile case ids, broken manifests,
impossible spacings, 4D/RGB files, mask labels, symlink loops, id clashes, `--overwrite` over
foreign files, `kill -9` in the middle of a write, splits that nnU-Net wrote itself, hand-edited
subsets. Each must end in one line naming the file and what to do, with nothing half-written and
nothing foreign deleted — or, for the inputs that are fine, in a complete dataset. Images are 32²,
so the whole file runs in well under a minute; nothing here runs nnU-Net.
"""
from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from conftest import run_cli
from nnunet_xfer.dataset_conversion.convert import convert
from nnunet_xfer.errors import UserError

SIZE = 32
SPACING = (0.75, 0.75)
DATASET = "Dataset601_T601"


# ----------------------------------------------------------------------------- builders
def folder_of(result) -> Path:
    """The dataset folder ``convert`` returns."""
    return getattr(result, "folder", result)


#: What nnU-Net's planner writes, as far as convert --overwrite looks (plans_name = file name).
PLANS_STUB = json.dumps({"plans_name": "nnUNetPlans", "configurations": {
    "2d": {"data_identifier": "nnUNetPlans_2d"}}})


def hu(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1200, (SIZE, SIZE)).astype(np.int16)


def square(value: int = 1) -> np.ndarray:
    m = np.zeros((SIZE, SIZE), np.uint8)
    m[8:20, 10:24] = value
    return m


def write(arr: np.ndarray, path: Path, spacing=SPACING) -> Path:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(spacing) + (2.5,) * (arr.ndim - 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def case(folder: Path, cid: str, seed: int) -> dict:
    return {"case_id": cid, "image": str(write(hu(seed), folder / "images" / f"{cid}.nii.gz")),
            "mask": str(write(square(), folder / "masks" / f"{cid}.nii.gz"))}


def manifest(folder: Path, rows: list[dict], name: str = "cases.csv") -> Path:
    path = folder / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def visible_and_hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[dict]:
    folder = tmp_path_factory.mktemp("cases")
    return [case(folder, f"c{i:02d}", i) for i in range(8)]


@pytest.fixture(scope="module")
def many(tmp_path_factory) -> Path:
    """A manifest of 40 cases (kill -9 and 5-fold reproductions)."""
    folder = tmp_path_factory.mktemp("many")
    return manifest(folder, [case(folder, f"m{i:02d}", i) for i in range(40)])


# ----------------------------------------------------------------------------- hostile files
def _nifti_with_pixdim(path: Path, dx: float, dy: float) -> Path:
    write(hu(3), path)
    data = bytearray(path.read_bytes())
    data[80:88] = struct.pack("<2f", dx, dy)
    path.write_bytes(bytes(data))
    return path


def _mha(path: Path, spacing: str) -> Path:
    header = (f"ObjectType = Image\nNDims = 2\nDimSize = {SIZE} {SIZE}\nElementType = MET_SHORT\n"
              f"ElementSpacing = {spacing}\nElementDataFile = LOCAL\n").encode()
    path.write_bytes(header + hu(4).astype("<i2").tobytes())
    return path


def _nrrd(path: Path, spacing_line: str) -> Path:
    header = (f"NRRD0004\ntype: short\ndimension: 2\nsizes: {SIZE} {SIZE}\n{spacing_line}\n"
              f"endian: little\nencoding: raw\n\n").encode()
    path.write_bytes(header + hu(5).astype("<i2").tobytes())
    return path


def _rgb_nifti(path: Path) -> Path:
    img = sitk.GetImageFromArray(np.stack([hu(6)] * 3, axis=-1), isVector=True)
    img.SetSpacing(SPACING)
    sitk.WriteImage(img, str(path))
    return path


def _four_d(path: Path) -> Path:
    import nibabel as nib
    data = np.stack([np.stack([hu(7)] * 3, axis=-1)] * 2, axis=-1)  # x, y, z, t
    nib.save(nib.Nifti1Image(data, np.diag([*SPACING, 2.5, 1.0])), str(path))
    return path


def _rgb_png(path: Path) -> Path:
    from PIL import Image
    Image.fromarray(np.stack([square() * 255] * 3, axis=-1)).save(path)
    return path


def _many_labels(path: Path) -> Path:
    m = square()
    for k, value in enumerate([2, 3, 4, 5, 6, 7, 86, 87, 88, 89]):
        m[22 + k // 5, 2 + 2 * (k % 5)] = value
    return write(m, path)


def _npy_mask(folder: Path) -> str:
    np.save(folder / "mask.npy", square())
    return str(folder / "mask.npy")


def _spacing(t: Path, rows: list[dict], image: Path, pattern: str):
    """Case c00's image replaced; its mask an array, so no geometry mismatch can refuse it instead."""
    return _set(rows, 0, image=str(image), mask=_npy_mask(t)), {}, pattern


def _loop(path: Path) -> Path:
    os.symlink(path.name, path)
    return path


# Each builder spoils the input in one way; returns convert's kwargs and a regex the error matches.
def _set(rows, i, **values):
    rows[i] = {**rows[i], **values}
    return rows


REFUSED = {
    # hostile case ids: they become file names
    "id_dotdot": lambda t, r: (_set(r, 0, case_id="../x"), {}, r"'\.\./x'.*safe file name"),
    "id_slash": lambda t, r: (_set(r, 0, case_id="a/b"), {}, r"'a/b'.*safe file name"),
    "id_empty": lambda t, r: (_set(r, 0, case_id=""), {}, r"case_id ''"),
    "id_leading_dot": lambda t, r: (_set(r, 0, case_id=".x"), {}, r"'\.x'.*safe file name"),
    "id_space": lambda t, r: (_set(r, 0, case_id="a b"), {}, r"'a b'.*safe file name"),
    "id_duplicate": lambda t, r: (_set(r, 1, case_id="c00"), {}, r"c00.*more than once"),
    "id_channel_suffix_clash": lambda t, r: (_set(_set(r, 0, case_id="x"), 1, case_id="x_0000"),
                                             {}, r"x_0000.*\bx\b.*channel|channel.*x_0000"),
    "id_differ_only_in_case": lambda t, r: (_set(_set(r, 0, case_id="Pat1"), 1, case_id="pat1"),
                                            {}, r"Pat1.*pat1.*(upper|case)"),
    # manifests
    "manifest_non_utf8": lambda t, r: (r, {"cases_csv": _latin1(t, r)}, r"cases_latin1\.csv.*UTF-8"),
    "manifest_empty": lambda t, r: (r, {"cases_csv": _empty(t)}, r"empty\.csv.*(is )?empty"),
    "manifest_header_only": lambda t, r: (r, {"cases_csv": _header_only(t)}, r"header\.csv.*no cases"),
    "manifest_binary": lambda t, r: (r, {"cases_csv": _binary(t)}, r"binary\.csv"),
    "manifest_is_folder": lambda t, r: (r, {"cases_csv": t}, r"give --cases a CSV"),
    "manifest_missing_column": lambda t, r: (
        r, {"cases_csv": manifest(t, [{k: v for k, v in x.items() if k != "mask"} for x in r],
                                  "nomask.csv")}, r"nomask\.csv.*lacks column.*mask"),
    # spacing: ITK would silently read 1 mm or flip the axis; ITK's own warnings must not leak
    "spacing_zero_nifti": lambda t, r: _spacing(t, r, _nifti_with_pixdim(t / "z.nii", 0, 0),
                                                r"c00.*z\.nii.*spacing"),
    "spacing_negative_nifti": lambda t, r: _spacing(t, r, _nifti_with_pixdim(t / "n.nii", -0.75, 0.75),
                                                    r"c00.*n\.nii.*spacing"),
    "spacing_nan_nifti": lambda t, r: _spacing(t, r, _nifti_with_pixdim(t / "nan.nii", float("nan"), 0.75),
                                               r"c00.*nan\.nii.*spacing"),
    "spacing_negative_mha": lambda t, r: _spacing(t, r, _mha(t / "n.mha", "-0.75 0.75"),
                                                  r"c00.*n\.mha.*spacing"),
    "spacing_zero_mha": lambda t, r: _spacing(t, r, _mha(t / "z.mha", "0 0.75"), r"c00.*z\.mha.*spacing"),
    "spacing_nan_nrrd": lambda t, r: _spacing(t, r, _nrrd(t / "nan.nrrd", "spacings: nan 0.75"),
                                              r"c00.*nan\.nrrd.*spacing"),
    "spacing_negative_nrrd": lambda t, r: _spacing(t, r, _nrrd(t / "n.nrrd", "spacings: -0.75 0.75"),
                                                   r"c00.*n\.nrrd.*spacing"),
    "spacing_zero_nrrd_directions": lambda t, r: _spacing(
        t, r, _nrrd(t / "d.nrrd", "space dimension: 2\nspace directions: (0,0) (0,0.75)"),
        r"c00.*d\.nrrd.*spacing"),
    # dimensions and channels
    "image_4d": lambda t, r: (_set(r, 0, image=str(_four_d(t / "four.nii.gz"))), {}, r"c00.*four\.nii\.gz.*4D"),
    "image_rgb": lambda t, r: (_set(r, 0, image=str(_rgb_nifti(t / "rgb.nii.gz"))), {},
                               r"c00.*rgb\.nii\.gz.*3 channels"),
    "image_png_picture": lambda t, r: (_set(r, 0, image=str(_rgb_png(t / "shot.png"))), {},
                                       r"c00.*shot\.png.*picture"),
    "mask_rgb_png": lambda t, r: (_set(r, 0, mask=str(_rgb_png(t / "rgb.png"))), {}, r"c00.*rgb\.png.*2D"),
    # mask labels: every value shown (TotalSegmentator users need to see 86-89)
    "mask_labels_all_shown": lambda t, r: (_set(r, 0, mask=str(_many_labels(t / "ts.nii.gz"))), {},
                                           r"c00.*ts\.nii\.gz.*holds 0-7,86-89"),
    "label_map_bad_syntax": lambda t, r: (r, {"label_map": "1;2"}, r"--label-map '1;2'"),
    "label_map_reversed_range": lambda t, r: (r, {"label_map": "89-86"}, r"--label-map '89-86'"),
    "label_map_negative": lambda t, r: (r, {"label_map": "-1"}, r"--label-map '-1'"),
    # folders and links
    "dicom_folder_without_series": lambda t, r: (_set(r, 0, image=str(_empty_dir(t))), {},
                                                 r"c00.*nodicom.*no DICOM series"),
    "image_symlink_loop": lambda t, r: (_set(r, 0, image=str(_loop(t / "loop.nii.gz"))), {},
                                        r"c00.*loop\.nii\.gz"),
    "folder_two_files_one_case": lambda t, r: (r, _folder_pair(t, r, extra="c01.nrrd"), r"c01"),
    "folder_ids_differ_only_in_case": lambda t, r: (r, _folder_pair(t, r, rename={"c01": "C00"}),
                                                    r"C00.*c00|c00.*C00"),
    # folds and arguments
    "folds_one": lambda t, r: (r, {"n_folds": 1}, r"--folds"),
    "too_few_cases_for_folds": lambda t, r: (r[:3], {"n_folds": 4}, r"3 cases.*4 folds.*--folds"),
    "dataset_name_hostile": lambda t, r: (r, {"name": "../T"}, r"dataset name '\.\./T'"),
    "dataset_id_out_of_range": lambda t, r: (r, {"dataset_id": 1000}, r"dataset id 1000"),
}


def _latin1(t: Path, rows: list[dict]) -> Path:
    path = t / "cases_latin1.csv"
    text = "case_id,image,mask,sex\n" + "".join(f"{r['case_id']},{r['image']},{r['mask']},é\n" for r in rows)
    path.write_bytes(text.encode("latin-1"))
    return path


def _empty(t: Path) -> Path:
    (t / "empty.csv").write_bytes(b"")
    return t / "empty.csv"


def _header_only(t: Path) -> Path:
    (t / "header.csv").write_text("case_id,image,mask\n")
    return t / "header.csv"


def _binary(t: Path) -> Path:
    (t / "binary.csv").write_bytes(bytes(range(256)) * 4)
    return t / "binary.csv"


def _empty_dir(t: Path) -> Path:
    (t / "nodicom").mkdir()
    return t / "nodicom"


def _folder_pair(t: Path, rows: list[dict], extra: str | None = None,
                 rename: dict | None = None) -> dict:
    images, masks = t / "fi", t / "fm"
    for r in rows[:4]:
        cid = (rename or {}).get(r["case_id"], r["case_id"])
        write(sitk.GetArrayFromImage(sitk.ReadImage(r["image"])), images / f"{cid}.nii.gz")
        write(square(), masks / f"{cid}.nii.gz")
    if extra:
        write(hu(9), images / extra)
    return {"images_dir": images, "masks_dir": masks}


@pytest.mark.parametrize("fault", sorted(REFUSED))
def test_convert_refuses_in_one_line_and_writes_nothing(fault, tmp_path, nn_dirs, rows, capfd):
    raw, pre = nn_dirs
    spoiled, kwargs, pattern = REFUSED[fault](tmp_path, [dict(r) for r in rows])
    if not {"cases_csv", "images_dir"} & set(kwargs):
        kwargs["cases_csv"] = manifest(tmp_path, spoiled)
    kwargs.setdefault("dataset_id", 601)
    kwargs.setdefault("name", "T601")
    capfd.readouterr()
    with pytest.raises(UserError, match=pattern) as err:
        convert(sizes=[2], **kwargs)
    message = str(err.value)
    assert "\n" not in message and len(message) < 1000
    stderr = capfd.readouterr().err
    assert "WARNING" not in stderr and "ITK" not in stderr and "vnl" not in stderr, stderr
    assert visible_and_hidden(raw) == [] and visible_and_hidden(pre) == []


# ----------------------------------------------------------------------------- inputs that are fine
def test_manifest_with_utf8_bom_is_read(tmp_path, nn_dirs, rows):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + manifest(tmp_path, rows).read_bytes())
    out = folder_of(convert(cases_csv=path, dataset_id=601, name="T601", sizes=[2]))
    assert len(list((out / "labelsTr").iterdir())) == len(rows)


def test_label_ranges_select_muscle(tmp_path, nn_dirs, rows):
    r = [dict(x) for x in rows]
    r[0]["mask"] = str(_many_labels(tmp_path / "ts.nii.gz"))
    out = folder_of(convert(cases_csv=manifest(tmp_path, r), dataset_id=601, name="T601",
                            sizes=[2], label_map="1,86-89"))
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "labelsTr" / "c00.nii.gz")))
    source = sitk.GetArrayFromImage(sitk.ReadImage(r[0]["mask"]))
    assert np.array_equal(got, np.isin(source, [1, 86, 87, 88, 89]))
    assert json.loads((out / "dataset.json").read_text())["nnunet_xfer"]["label_map"] == [1, 86, 87, 88, 89]


def test_symlink_loop_in_images_folder_is_not_a_case(tmp_path, nn_dirs, rows):
    kwargs = _folder_pair(tmp_path, rows)
    _loop(kwargs["images_dir"] / "loop")
    out = folder_of(convert(**kwargs, dataset_id=601, name="T601", sizes=[2]))
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [f"c0{i}.nii.gz" for i in range(4)]


@pytest.mark.parametrize("n_cases", [1, 3])
def test_few_cases_convert_for_inference_without_folds(tmp_path, nn_dirs, rows, n_cases):
    raw, pre = nn_dirs
    out = folder_of(convert(cases_csv=manifest(tmp_path, rows[:n_cases]), dataset_id=601,
                            name="T601", n_folds=0))
    assert len(list((out / "imagesTr").iterdir())) == n_cases
    assert not (out / "splits_final.json").exists() and not (out / "subsets.json").exists()
    assert not (pre / out.name / "splits_final.json").exists()
    from nnunet_xfer.layout import DatasetLayout
    from nnunet_xfer.splits import verify_dataset
    with pytest.raises(UserError, match=r"no folds.*--folds"):
        verify_dataset(DatasetLayout.of(601))


# ----------------------------------------------------------------------------- label syntax
@pytest.mark.parametrize("text,values", [("1", [1]), ("1,2", [1, 2]), ("86-89", [86, 87, 88, 89]),
                                         (" 1, 86-89 ", [1, 86, 87, 88, 89]), ("3,1,2,2", [1, 2, 3])])
def test_label_values_syntax(text, values):
    from nnunet_xfer.dataset_conversion.labels import format_label_values, parse_label_values
    assert parse_label_values(text) == values
    assert parse_label_values(format_label_values(values)) == values


@pytest.mark.parametrize("text", ["", " , ", "1;2", "a", "89-86", "-1", "1-", "1.5", "2--3"])
def test_label_values_refused(text):
    from nnunet_xfer.dataset_conversion.labels import parse_label_values
    with pytest.raises(UserError) as err:
        parse_label_values(text, option="--label")
    assert "--label" in str(err.value) and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- outputs: phantom
PHANTOM = ["--cases", "2", "--size", "32", "--observers", "2", "--observer-cases", "2"]


def test_phantom_overwrite_keeps_foreign_files(tmp_path):
    """Issue 11's reproduction: `phantom d --overwrite` over a folder holding thesis.txt."""
    d = tmp_path / "d"
    d.mkdir()
    (d / "thesis.txt").write_text("x")
    proc = run_cli("nnunet-xfer", "phantom", str(d), *PHANTOM, "--overwrite", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "thesis.txt" in lines[0], proc.stderr
    assert visible_and_hidden(d) == ["thesis.txt"] and (d / "thesis.txt").read_text() == "x"
    assert visible_and_hidden(tmp_path) == ["d"]


def test_phantom_overwrites_its_own_output_and_lists_it(tmp_path):
    from nnunet_xfer.layout import OUTPUT_MARKER
    from nnunet_xfer.phantom import write_cohort
    out = write_cohort(tmp_path / "c", n_cases=2, size=32, n_observers=1, n_observer_cases=1)
    listed = json.loads((out / OUTPUT_MARKER).read_text())["files"]
    assert sorted(listed) == sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                                    if p.is_file() and p.name != OUTPUT_MARKER)
    write_cohort(out, n_cases=3, size=32, n_observers=1, n_observer_cases=1, overwrite=True)
    assert len(list((out / "images").iterdir())) == 3 and visible_and_hidden(tmp_path) == ["c"]


def test_phantom_folders_follow_the_umask(tmp_path):
    from nnunet_xfer.phantom import write_cohort
    old = os.umask(0o022)
    try:
        out = write_cohort(tmp_path / "c", n_cases=1, size=32, n_observers=1, n_observer_cases=1)
    finally:
        os.umask(old)
    assert all(p.stat().st_mode & 0o777 == 0o755 for p in [out, *out.rglob("*")] if p.is_dir())


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> bool:
    """SIGKILL ``proc`` as soon as ``ready()`` is true; False if it finished first."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.005)
    proc.wait()
    return False


def _hidden_with_files(root: Path, sub: str, n: int):
    def ready() -> bool:
        for p in root.glob(".nnunet_xfer_tmp*"):
            if len(list((p / sub).glob("*"))) >= n:
                return True
        return False
    return ready


def _cli(*args: str) -> list[str]:
    exe = Path(sys.executable).parent / "nnunet-xfer"
    return [str(exe), *args]


@pytest.mark.slow
def test_phantom_kill9_leaves_only_what_the_rerun_removes(tmp_path):
    cmd = _cli("phantom", str(tmp_path / "c"), "--cases", "40", "--size", "64", "--observers", "0")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _kill_when(proc, _hidden_with_files(tmp_path, "images", 4)), "phantom ended before the kill"
    assert not (tmp_path / "c").exists()
    assert all(p.name.startswith(".nnunet_xfer_tmp.") for p in tmp_path.iterdir())
    run_cli(*_cli("phantom", str(tmp_path / "c"), "--cases", "3", "--size", "32",
                  "--observers", "0"))
    assert visible_and_hidden(tmp_path) == ["c"]


# ----------------------------------------------------------------------------- outputs: convert
def test_convert_raw_folder_carries_marker_and_follows_umask(tmp_path, nn_dirs, rows):
    from nnunet_xfer.layout import OUTPUT_MARKER
    old = os.umask(0o022)
    try:
        out = folder_of(convert(cases_csv=manifest(tmp_path, rows), dataset_id=601, name="T601", sizes=[2]))
    finally:
        os.umask(old)
    listed = json.loads((out / OUTPUT_MARKER).read_text())["files"]
    assert sorted(listed) == sorted(p.relative_to(out).as_posix() for p in out.rglob("*")
                                    if p.is_file() and p.name != OUTPUT_MARKER)
    assert all(p.stat().st_mode & 0o777 == 0o755 for p in [out, *out.rglob("*")] if p.is_dir())


def test_convert_overwrite_refuses_foreign_files(tmp_path, nn_dirs, rows):
    raw, _ = nn_dirs
    csv = manifest(tmp_path, rows)
    out = folder_of(convert(cases_csv=csv, dataset_id=601, name="T601", sizes=[2]))
    write(hu(1), out / "imagesTs" / "new_0000.nii.gz")
    with pytest.raises(UserError, match=r"imagesTs/new_0000\.nii\.gz") as err:
        convert(cases_csv=csv, dataset_id=601, name="T601", sizes=[2], overwrite=True)
    assert "\n" not in str(err.value)
    assert (out / "imagesTs" / "new_0000.nii.gz").is_file() and visible_and_hidden(raw) == [out.name]


def test_convert_overwrite_removes_the_preprocessed_folder(tmp_path, nn_dirs, rows):
    raw, pre = nn_dirs
    csv = manifest(tmp_path, rows)
    out = folder_of(convert(cases_csv=csv, dataset_id=601, name="T601", sizes=[2]))
    (pre / out.name / "nnUNetPlans.json").write_text(PLANS_STUB)  # stale plans of the old data
    (pre / out.name / "nnUNetPlans_2d").mkdir()
    result = convert(cases_csv=csv, dataset_id=601, name="T601", sizes=[2], overwrite=True)
    assert pre / out.name in result.removed
    assert visible_and_hidden(pre / out.name) == ["splits_final.json"]


def test_convert_overwrite_under_another_name_replaces_its_own_dataset(tmp_path, nn_dirs, rows):
    raw, pre = nn_dirs
    csv = manifest(tmp_path, rows)
    old = folder_of(convert(cases_csv=csv, dataset_id=601, name="T601", sizes=[2]))
    (pre / old.name / "nnUNetPlans.json").write_text(PLANS_STUB)
    result = convert(cases_csv=csv, dataset_id=601, name="Other", sizes=[2], overwrite=True)
    assert visible_and_hidden(raw) == ["Dataset601_Other"]
    assert visible_and_hidden(pre) == ["Dataset601_Other"]  # never two datasets with one id
    assert old in result.removed and pre / old.name in result.removed


def test_convert_overwrite_under_another_name_refuses_a_foreign_dataset(tmp_path, nn_dirs, rows):
    raw, _ = nn_dirs
    theirs = raw / DATASET
    write(hu(1), theirs / "imagesTr" / "a_0000.nii.gz")
    (theirs / "dataset.json").write_text(json.dumps({"name": "theirs"}))
    with pytest.raises(UserError, match=r"Dataset601_T601.*not written by nnunet-xfer convert"):
        convert(cases_csv=manifest(tmp_path, rows), dataset_id=601, name="Other", sizes=[2],
                overwrite=True)
    assert visible_and_hidden(raw) == [DATASET] and (theirs / "imagesTr" / "a_0000.nii.gz").is_file()


def test_convert_overwrite_recognises_a_dataset_converted_before_markers(tmp_path, nn_dirs, rows):
    from nnunet_xfer.layout import OUTPUT_MARKER
    raw, _ = nn_dirs
    csv = manifest(tmp_path, rows)
    out = folder_of(convert(cases_csv=csv, dataset_id=601, name="T601", sizes=[2]))
    (out / OUTPUT_MARKER).unlink()  # as an older nnunet-xfer left it: dataset.json lists the cases
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"notes\.txt"):
        convert(cases_csv=csv, dataset_id=601, name="T601", sizes=[2], overwrite=True)
    (out / "notes.txt").unlink()
    convert(cases_csv=csv, dataset_id=601, name="T601", sizes=[2], seed=3, overwrite=True)
    assert json.loads((out / "subsets.json").read_text())["seed"] == 3 and (out / OUTPUT_MARKER).is_file()


@pytest.mark.parametrize("where", ["preprocessed", "results"])
def test_convert_never_gives_one_id_two_names(tmp_path, nn_dirs, rows, monkeypatch, where):
    raw, pre = nn_dirs
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    root = {"preprocessed": pre, "results": tmp_path / "results"}[where]
    (root / DATASET / "nnUNetTrainer__nnUNetPlans__2d").mkdir(parents=True)  # no raw dataset
    with pytest.raises(UserError, match=rf"id 601 .*{DATASET}"):
        convert(cases_csv=manifest(tmp_path, rows), dataset_id=601, name="Other", sizes=[2],
                overwrite=True)
    assert visible_and_hidden(raw) == [] and (root / DATASET).is_dir()


def test_cli_convert_overwrite_says_what_it_removed(tmp_path, nn_dirs, rows):
    raw, pre = nn_dirs
    env = {"nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre)}
    args = ("nnunet-xfer", "convert", "--cases", str(manifest(tmp_path, rows)), "-d", "601",
            "-n", "T601", "--sizes", "2")
    assert run_cli(*args, env=env).stdout.splitlines() == [f"wrote {raw / DATASET}"]
    (pre / DATASET / "nnUNetPlans.json").write_text(PLANS_STUB)
    lines = run_cli(*args, "--overwrite", env=env).stdout.splitlines()
    assert lines == [f"removed {raw / DATASET} (--overwrite)", f"removed {pre / DATASET} (--overwrite)",
                     f"wrote {raw / DATASET}"]
    assert not (pre / DATASET / "nnUNetPlans.json").exists()


@pytest.mark.slow
def test_convert_kill9_then_rerun_is_complete_and_clean(tmp_path, nn_dirs, many):
    raw, pre = nn_dirs
    env = {**os.environ, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre)}
    args = _cli("convert", "--cases", str(many), "-d", "601", "-n", "T601", "--sizes", "5")
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert _kill_when(proc, _hidden_with_files(raw, "imagesTr", 5)), "convert ended before the kill"
    assert not (raw / DATASET).exists()
    run_cli(*args, env=env)
    assert visible_and_hidden(raw) == [DATASET]
    assert len(list((raw / DATASET / "labelsTr").iterdir())) == 40


def test_convert_removes_temporaries_of_dead_writers_only(tmp_path, nn_dirs, rows):
    raw, _ = nn_dirs
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = raw / f".nnunet_xfer_tmp.{dead.pid}.staging.abc"
    live = raw / f".nnunet_xfer_tmp.{os.getpid()}.staging.def"
    for p in (stale, live):
        (p / "imagesTr").mkdir(parents=True)
    convert(cases_csv=manifest(tmp_path, rows), dataset_id=601, name="T601", sizes=[2])
    assert not stale.exists() and live.is_dir()


# ----------------------------------------------------------------------------- folds and subsets
@pytest.fixture()
def bound(tmp_path, nn_dirs, many):
    """A 40-case dataset converted with sizes 5, 10, 25 (4 folds of 30 training cases)."""
    raw, pre = nn_dirs
    out = folder_of(convert(cases_csv=many, dataset_id=601, name="T601", sizes=[5, 10, 25]))
    return out, pre / out.name


def _fold_subset(out: Path, pre: Path, fold: int, size: int | None):
    from nnunet_xfer.trainers.xfer_subsets import fold_subset
    return fold_subset(out.name, pre, out, fold, size, json.loads((out / "dataset.json").read_text()))


def test_nnunet_own_5fold_splits_refused_by_the_trainer(bound):
    """Issue 10's reproduction: nnU-Net wrote its own 5-fold splits_final.json."""
    from nnunet_xfer.trainers.xfer_subsets import fold_subset  # noqa: F401 (the trainer's path)
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    out, pre = bound
    ids = sorted(json.loads((out / "dataset.json").read_text())["nnunet_xfer"]["cases"])
    (pre / "splits_final.json").write_text(json.dumps(generate_crossval_split(ids, 12345, 5)))
    with pytest.raises(UserError) as err:
        _fold_subset(out, pre, 0, 25)
    message = str(err.value)
    assert "\n" not in message
    assert str(pre / "splits_final.json") in message and str(out / "splits_final.json") in message
    assert "--overwrite" in message or "remove" in message


def test_hand_edited_subset_with_a_validation_case_refused(bound):
    out, pre = bound
    splits = json.loads((out / "splits_final.json").read_text())
    subsets = json.loads((out / "subsets.json").read_text())
    subsets["folds"]["0"]["5"][0] = splits[0]["val"][0]
    (out / "subsets.json").write_text(json.dumps(subsets))
    with pytest.raises(UserError, match=r"subsets\.json.*fold 0.*validation") as err:
        _fold_subset(out, pre, 0, 5)
    assert splits[0]["val"][0] in str(err.value)


def test_subset_with_an_unknown_case_refused(bound):
    out, pre = bound
    subsets = json.loads((out / "subsets.json").read_text())
    subsets.pop("splits_sha256", None)
    subsets["folds"]["1"]["10"][0] = "stranger"
    (out / "subsets.json").write_text(json.dumps(subsets))
    with pytest.raises(UserError, match=r"stranger"):
        _fold_subset(out, pre, 1, 10)


def test_subsets_drawn_from_other_splits_refused(bound):
    out, pre = bound
    splits = json.loads((out / "splits_final.json").read_text())
    splits[0]["train"], splits[1]["train"] = splits[1]["train"], splits[0]["train"]
    splits[0]["val"], splits[1]["val"] = splits[1]["val"], splits[0]["val"]
    for path in (out / "splits_final.json", pre / "splits_final.json"):
        path.write_text(json.dumps(splits))
    with pytest.raises(UserError, match=r"subsets\.json.*splits_final\.json"):
        _fold_subset(out, pre, 2, 5)


def test_subsets_without_digest_checked_by_content(bound):
    out, pre = bound
    subsets = json.loads((out / "subsets.json").read_text())
    subsets.pop("splits_sha256", None)
    (out / "subsets.json").write_text(json.dumps(subsets))
    chosen = _fold_subset(out, pre, 3, 25)
    assert chosen.train == subsets["folds"]["3"]["25"]
    assert not set(chosen.train) & set(chosen.val)


def test_size_not_chosen_at_convert_is_blamed_on_convert(bound):
    from nnunet_xfer.layout import DatasetLayout
    from nnunet_xfer.splits import verify_dataset
    with pytest.raises(UserError, match=r"n=20.*--sizes 5,10,25.*convert"):
        verify_dataset(DatasetLayout.of(601), folds=[0], sizes=[5, 20])


def test_size_larger_than_the_fold_is_blamed_on_the_cases(bound):
    from nnunet_xfer.layout import DatasetLayout
    from nnunet_xfer.splits import verify_dataset
    with pytest.raises(UserError, match=r"n=50.*30 training cases.*fold 0"):
        verify_dataset(DatasetLayout.of(601), folds=[0], sizes=[50])


# ----------------------------------------------------------------------------- --selection
def _selection(path: Path, splits: list[dict], cut: int | None = None, **change) -> Path:
    from nnunet_xfer.dataset_conversion.selection import selection_record
    order = {str(f): sorted(s["train"], reverse=True)[:cut] for f, s in enumerate(splits)}
    record = {**selection_record(order, splits, "manual", 12345), **change}
    path.write_text(json.dumps(record))
    return path


def test_convert_refuses_a_selection_that_does_not_fit_and_writes_nothing(bound, many, tmp_path):
    out, _pre = bound
    splits = json.loads((out / "splits_final.json").read_text())
    raw = out.parent
    other_seed = run_cli("nnunet-xfer", "convert", "--cases", str(many), "-d", "602", "--seed", "3",
                         "--selection", str(_selection(tmp_path / "s.json", splits)), check=False)
    assert other_seed.returncode == 2 and "made for other folds" in other_seed.stderr
    leaky = json.loads((tmp_path / "s.json").read_text())
    leaky["order"]["2"].insert(0, splits[2]["val"][0])
    (tmp_path / "leak.json").write_text(json.dumps(leaky))
    leak = run_cli("nnunet-xfer", "convert", "--cases", str(many), "-d", "602", "--selection",
                   str(tmp_path / "leak.json"), check=False)
    assert leak.returncode == 2 and "fold 2 orders validation case(s)" in leak.stderr
    assert splits[2]["val"][0] in leak.stderr and "Traceback" not in leak.stderr
    assert not [p for p in raw.iterdir() if "602" in p.name]


def test_selected_dataset_never_falls_back_to_the_random_draw(bound, many, tmp_path):
    out, pre = bound
    splits = json.loads((out / "splits_final.json").read_text())
    with pytest.warns(UserWarning, match=r"n=10 exceeds the selected cases .* \(8 cases\)"):  # hand-written, 8 per fold
        selected = folder_of(convert(cases_csv=many, dataset_id=602, name="Sel", sizes=[5, 10],
                                     selection=_selection(tmp_path / "s.json", splits, cut=8)))
    order = sorted(splits[0]["train"], reverse=True)[:8]
    chosen = _fold_subset(selected, pre.parent / selected.name, 0, 7)  # a size convert did not write
    assert chosen.train == sorted(order[:7])
    with pytest.raises(UserError, match="exceeds the 8 cases the selection orders in fold 0"):
        _fold_subset(selected, pre.parent / selected.name, 0, 9)
    block = json.loads((selected / "dataset.json").read_text())["nnunet_xfer"]
    assert block["selection"]["strategy"] == "manual" and block["selection"]["file"].endswith("s.json")
