"""One gate in (issue 17 items 1, 2, 5): every command reads images through one validated reader.

Reproductions that each command accepted before: ``convert`` wrote a half-zero slice from a
``.nii.gz`` cut to half its bytes, a ``.nii`` cut mid-data or a truncated mask; ``measure
--images/--masks`` measured with zero, negative or NaN spacing (SMA 3.64 cm² for a true 148.1)
and a mask shifted 50 mm or flipped; ``observers`` measured NaN inside the muscle (SMD 0 HU) and
zero spacing; a mask that is not a regular file was skipped. And the orientation: one L3 slice
stored as a DICOM series and as a RAS NIfTI gave two different masks (Dice 0.875) and SMAs
(91.7 vs 90.5 cm²) through ``measure``; now both give one mask and one SMA (tested with the
model where the same run checks both slice conventions:
tests/integration/test_measure_records.py::test_instance_number_and_slice_index_name_one_real_slice).
"""
from __future__ import annotations

import ast
import os
import re
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from nnunet_xfer import cli
from nnunet_xfer.dataset_conversion.convert import convert
from nnunet_xfer.errors import UserError
from nnunet_xfer.evaluation.observer_study import observer_study

SIZE = 32


def hu(seed: int, shape=(SIZE, SIZE)) -> np.ndarray:
    arr = np.random.default_rng(seed).integers(-200, 200, shape).astype(np.int16)
    arr[0] = -1000                                      # air: a CT, not a picture
    return arr


def muscle(shape=(SIZE, SIZE)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[8:20, 10:24] = 1
    return m


def write(arr: np.ndarray, path: Path, spacing=(0.75, 0.75), origin=None, direction=None) -> Path:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(tuple(spacing) + (2.5,) * (arr.ndim - 2))
    if origin is not None:
        img.SetOrigin(origin)
    if direction is not None:
        img.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def cut(path: Path, keep: float) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def pixdim(path: Path, dx: float, dy: float) -> Path:
    data = bytearray(path.read_bytes())
    data[80:88] = struct.pack("<2f", dx, dy)
    path.write_bytes(bytes(data))
    return path


def run(capsys, *args: str) -> tuple[int, str]:
    try:
        code = cli.main(list(args))
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


# ---------------------------------------------------------------- convert
def _truncated_image(t: Path) -> dict:
    return {"image": str(cut(write(hu(1), t / "half.nii.gz"), 0.5))}


def _image_cut_mid_data(t: Path) -> dict:
    return {"image": str(cut(write(hu(1), t / "cut.nii"), 0.75))}


def _truncated_mask(t: Path) -> dict:
    return {"mask": str(cut(write(muscle(), t / "mask.nii.gz"), 0.6))}


@pytest.mark.parametrize("spoil, name", [(_truncated_image, "half.nii.gz"),
                                         (_image_cut_mid_data, "cut.nii"),
                                         (_truncated_mask, "mask.nii.gz")])
def test_convert_refuses_a_truncated_file_and_writes_nothing(tmp_path, nn_dirs, spoil, name):
    rows = [{"case_id": f"c{i}", "image": str(write(hu(i), tmp_path / "i" / f"c{i}.nii.gz")),
             "mask": str(write(muscle(), tmp_path / "m" / f"c{i}.nii.gz"))} for i in range(4)]
    rows[2].update(spoil(tmp_path))
    csv = tmp_path / "cases.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    with pytest.raises(UserError, match=rf"case c2: .*{name}.* is truncated or damaged") as e:
        convert(cases_csv=csv, dataset_id=611, name="Cut", sizes=[2], n_folds=2)
    assert "\n" not in str(e.value)
    raw, _pre = nn_dirs
    assert list(raw.iterdir()) == []


# ---------------------------------------------------------------- measure --images/--masks
def _pair(tmp_path: Path, **mask_geometry) -> tuple[Path, Path]:
    write(hu(3), tmp_path / "img" / "c1.nii.gz", origin=(10.0, 20.0), direction=(1, 0, 0, 1))
    geometry = {"origin": (10.0, 20.0), "direction": (1, 0, 0, 1), **mask_geometry}
    write(muscle(), tmp_path / "msk" / "c1.nii.gz", **geometry)
    return tmp_path / "img", tmp_path / "msk"


@pytest.mark.parametrize("fault, phrase", [
    ("zero_spacing", "invalid pixel spacing (0, 0)"),
    ("negative_spacing", "invalid pixel spacing (-0.75, 0.75)"),
    ("nan_spacing", "invalid pixel spacing (nan, 0.75)"),
    ("mask_shifted_50mm", "lies 50 mm from"),
    ("mask_flipped", "row direction"),
    ("mask_not_a_file", "is not a regular file"),
    ("image_truncated", "is truncated or damaged"),
])
def test_measure_masks_refuses_bad_geometry_and_files(tmp_path, capsys, fault, phrase):
    images, masks = _pair(tmp_path, **{"mask_shifted_50mm": {"origin": (60.0, 20.0)},
                                       "mask_flipped": {"direction": (1, 0, 0, -1)}}.get(fault, {}))
    image = images / "c1.nii.gz"
    if fault.endswith("_spacing"):
        image.unlink()
        value = {"zero": (0.0, 0.0), "negative": (-0.75, 0.75), "nan": (float("nan"), 0.75)}
        pixdim(write(hu(3), images / "c1.nii", origin=(10.0, 20.0)), *value[fault.split("_")[0]])
    elif fault == "mask_not_a_file":
        write(hu(4), images / "c2.nii.gz", origin=(10.0, 20.0))
        os.mkfifo(masks / "c2.nii.gz")                 # reading it would block forever
    elif fault == "image_truncated":
        cut(image, 0.5)
    out = tmp_path / "m.csv"
    code, err = run(capsys, "measure", "--images", str(images), "--masks", str(masks), "-o",
                    str(out))
    assert code == 2 and phrase in err, err
    assert len(err.strip().splitlines()) == 1 and ("c1" in err or "c2" in err)
    assert not out.exists()


@pytest.mark.parametrize("command", ["measure", "convert"])
@pytest.mark.parametrize("which, compress", [("image", False), ("image", True), ("mask", False)])
def test_truncated_metaimage_is_one_line(tmp_path, nn_dirs, capfd, command, which, compress):
    """MetaIO prints "data not read completely" on the C stderr, past ITK's warning switch, then
    ITK raises "Reason: Success": three lines and no reason. Now: one line that says it."""
    image = write(hu(3), tmp_path / "img" / "c1.mha")
    mask = write(muscle(), tmp_path / "msk" / "c1.mha")
    if compress:
        sitk.WriteImage(sitk.ReadImage(str(image)), str(image), useCompression=True)
    cut({"image": image, "mask": mask}[which], 0.9)
    if command == "measure":
        args = ["measure", "--images", str(image.parent), "--masks", str(mask.parent), "-o",
                str(tmp_path / "m.csv")]
    else:
        manifest = tmp_path / "cases.csv"
        pd.DataFrame([{"case_id": f"c{k}", "image": str(image), "mask": str(mask)}
                      for k in range(2)]).to_csv(manifest, index=False)
        args = ["convert", "--cases", str(manifest), "-d", "612", "-n", "Mha", "--sizes", "1",
                "--folds", "2"]
    capfd.readouterr()
    try:
        code = cli.main(args)
    except SystemExit as e:
        code = e.code
    err = capfd.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "data not read completely" in err and "truncated or damaged" in err, err
    assert "Reason: Success" not in err and not (tmp_path / "m.csv").exists()
    assert list(nn_dirs[0].iterdir()) == []


def test_measure_masks_measures_the_true_spacing(tmp_path, capsys):
    """The control: the same pair with its spacing intact is measured at 0.75 mm pixels."""
    images, masks = _pair(tmp_path)
    code, err = run(capsys, "measure", "--images", str(images), "--masks", str(masks), "-o",
                    str(tmp_path / "m.csv"))
    assert code == 0, err
    row = pd.read_csv(tmp_path / "m.csv").iloc[0]
    assert row["sma_mask_cm2"] == pytest.approx(muscle().sum() * 0.75 ** 2 / 100)


# ---------------------------------------------------------------- observers
def _observer_study(root: Path) -> dict:
    for rater in ("reference", "observers/a", "observers/b", "observers/c"):  # the test needs 3
        write(muscle(), root / rater / "c1.nii.gz")
        write(muscle(), root / rater / "c2.nii.gz")
    for case in ("c1", "c2"):
        write(hu(5), root / "images" / f"{case}.nii.gz")
    return {"reference": root / "reference", "observers": root / "observers",
            "images": root / "images"}


@pytest.mark.parametrize("fault, phrase", [
    ("nan_in_muscle", "NaN or inf"),
    ("zero_spacing_image", "invalid pixel spacing"),
    ("zero_spacing_mask", "invalid pixel spacing"),
    ("truncated_mask", "truncated or damaged"),
])
def test_observers_refuse_nan_in_the_muscle_and_zero_spacing(tmp_path, fault, phrase):
    paths = _observer_study(tmp_path / "study")
    if fault == "nan_in_muscle":
        arr = hu(5).astype(np.float32)
        arr[10, 12] = np.nan                            # inside the muscle
        write(arr, paths["images"] / "c2.nii.gz")
    elif fault == "zero_spacing_image":
        (paths["images"] / "c2.nii.gz").unlink()
        pixdim(write(hu(5), paths["images"] / "c2.nii"), 0.0, 0.0)
    elif fault == "zero_spacing_mask":
        (paths["observers"] / "b" / "c2.nii.gz").unlink()
        pixdim(write(muscle(), paths["observers"] / "b" / "c2.nii"), 0.0, 0.0)
    else:
        cut(paths["observers"] / "a" / "c1.nii.gz", 0.5)
    with pytest.raises(UserError, match=phrase) as e:
        observer_study(paths["reference"], paths["observers"], images=paths["images"],
                       out=tmp_path / "out")
    assert "\n" not in str(e.value) and ("c1" in str(e.value) or "c2" in str(e.value))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- one owner of names and headers
_ENDING = re.compile(r"^\.(nii|nii\.gz|seg\.nrrd|nrrd|nhdr|mha|mhd|dcm|png|jpe?g|bmp|tiff?|gif|"
                     r"webp|npy|npz|b2nd)$", re.I)
_FILE_NAME = re.compile(r"^[\w\-/.]*\w\.(nii|nii\.gz|nrrd|nhdr|mha|mhd|dcm|png|jpe?g|npy|npz|b2nd)$",
                        re.I)
_NIFTI_FIELDS = {"pixdim", "sizeof_hdr", "vox_offset", "qform_code", "sform_code", "scl_slope",
                 "srow_x", "quatern_b"}


def _second_spellings(source: str) -> list[str]:
    """What in ``source`` (code, not docstrings) spells ``_0000``, a file ending or an image file
    name, or parses a NIfTI header (its fields, nibabel)."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                       ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docstrings:
            text = node.value
            if "_0000" in text or _ENDING.match(text) or _FILE_NAME.match(text) \
                    or text in _NIFTI_FIELDS:
                found.append(f"{node.lineno}: {text!r}")
        name = getattr(node, "id", None) or getattr(node, "attr", None)
        if name in _NIFTI_FIELDS:
            found.append(f"{node.lineno}: {name}")
        if isinstance(node, (ast.Import, ast.ImportFrom)) and any(
                "nibabel" in (n or "") for n in [getattr(node, "module", None)]
                + [a.name for a in node.names]):
            found.append(f"{node.lineno}: imports nibabel")
    return found


def test_only_imaging_spells_endings_channel_suffix_and_nifti_headers():
    """issue 17 "Done when": no NIfTI header parsing, ``_0000`` or file-ending table outside
    ``nnunet_xfer/imaging/`` (and ``layout.py``, for dataset paths: endings only)."""
    import nnunet_xfer
    root = Path(nnunet_xfer.__file__).parent
    offenders = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("imaging/"):
            continue
        found = _second_spellings(path.read_text(encoding="utf-8"))
        if rel == "layout.py":
            found = [f for f in found if "_0000" in f or "nibabel" in f
                     or any(k in f for k in _NIFTI_FIELDS)]
        if found:
            offenders[rel] = found
    assert offenders == {}


def test_the_spelling_check_sees_what_it_looks_for():
    """The check above can fail: each kind of second spelling is found, docstrings are not."""
    code = ('"""Images are <case>_0000.nii.gz."""\n'
            'import nibabel\n'
            'def f(cid, h):\n'
            '    """qc/<case>.png"""\n'
            '    return f"qc/{cid}.png", cid + "_0000", h.pixdim, ("ct.nii.gz", ".mha")\n')
    found = " ".join(_second_spellings(code))
    for what in ("'.png'", "'_0000'", "pixdim", "'ct.nii.gz'", "'.mha'", "nibabel"):
        assert what in found, (what, found)
    assert "<case>" not in found


@pytest.mark.parametrize("fault", ["truncated_jpeg", "not_a_picture", "pipe"])
def test_natural_pictures_are_read_whole_by_the_one_reader(tmp_path, fault):
    """``pretrain --data`` (VOC / ImageFolder pictures) reads through the imaging package too: a
    JPEG cut short, a file that is no picture and a pipe are refused in one line naming the file."""
    from PIL import Image as PILImage

    from nnunet_xfer.imaging import picture_size, read_picture
    good, bad = tmp_path / "good.jpg", tmp_path / "bad.jpg"
    rgb = np.random.default_rng(0).integers(0, 255, (48, 40, 3)).astype(np.uint8)
    PILImage.fromarray(rgb).save(good, quality=95)
    assert picture_size(good) == (48, 40) and read_picture(good).size == (40, 48)
    if fault == "truncated_jpeg":
        bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    elif fault == "not_a_picture":
        bad.write_text("case_id,image\n")
    else:
        os.mkfifo(bad)                                   # opening it would block forever
    with pytest.raises(UserError, match=r"cannot read image .*bad\.jpg") as e:
        read_picture(bad)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind", ["pipe", "folder", "broken_link"])
def test_corrected_mask_that_is_not_a_regular_file_is_refused(tmp_path, kind):
    """``measure --corrected``: a corrected mask named like one but not a regular file was skipped,
    and its case measured without the correction. Now refused in one line naming it."""
    from nnunet_xfer.clinical.corrections import corrected_files
    folder = tmp_path / "corrected"
    folder.mkdir()
    write(muscle(), folder / "c1.nii.gz")
    {"pipe": os.mkfifo, "folder": os.mkdir,
     "broken_link": lambda p: os.symlink(tmp_path / "absent", p)}[kind](folder / "c2.seg.nrrd")
    with pytest.raises(UserError, match=r"c2\.seg\.nrrd is not a regular file") as e:
        corrected_files(folder, ["c1", "c2"])
    assert "\n" not in str(e.value)
    if kind == "folder":
        (folder / "c2.seg.nrrd").rmdir()
    else:
        (folder / "c2.seg.nrrd").unlink()
    assert corrected_files(folder, ["c1", "c2"]) == {"c1": folder / "c1.nii.gz"}
