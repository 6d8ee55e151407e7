"""Faults and hostile inputs against evaluate, observers and report: each is refused in one line
(nothing deleted, nothing half-written) or handled, on small fake nnU-Net results trees."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from conftest import fake_results_tree, run_cli, write_slice

from nnunet_xfer.errors import UserError
from nnunet_xfer import imaging
from nnunet_xfer.evaluation.fold_evaluation import evaluate, evaluate_dataset
from nnunet_xfer.evaluation.observer_study import observer_study
from nnunet_xfer.evaluation.report import write_report

DATASET = "Dataset990_Fake"
RUN = "XferScratchTrainer_n5__nnUNetPlans__2d"
PRED = Path(RUN) / "fold_1" / "validation" / "case_005.nii.gz"  # a fold-1 validation case


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A small fake results tree (8 cases at 128²) built once; tests copy it before changing it."""
    base = tmp_path_factory.mktemp("faults") / "tree"
    fake_results_tree(base, n_cases=8)
    return base


@pytest.fixture
def env(tree, tmp_path, monkeypatch) -> dict:
    """A private copy of the tree with the nnU-Net variables pointing at it."""
    base = tmp_path / "tree"
    shutil.copytree(tree, base)
    values = {"nnUNet_raw": str(base / "raw"), "nnUNet_preprocessed": str(base / "preprocessed"),
              "nnUNet_results": str(base / "results")}
    for k, v in values.items():
        monkeypatch.setenv(k, v)
    return {**values, "base": base, "results": base / "results" / DATASET}


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _one_line_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)
    return err


def _cli_env(env: dict) -> dict:
    return {k: v for k, v in env.items() if k.startswith("nnUNet_")}


def _rewrite(path: Path, origin=None, direction=None, array=None, dtype=None) -> None:
    """Rewrite a NIfTI mask in place with another origin, direction, content or type."""
    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img) if array is None else array
    new = sitk.GetImageFromArray(arr.astype(dtype) if dtype else arr)
    new.CopyInformation(img)
    if origin is not None:
        new.SetOrigin(origin)
    if direction is not None:
        new.SetDirection(direction)
    sitk.WriteImage(new, str(path))


# ---------------------------------------------------------------- outputs that must not be replaced
@pytest.mark.parametrize("target", ["results_dataset", "results_root", "raw_dataset",
                                    "preprocessed_dataset", "run_folder"])
def test_evaluate_never_replaces_nnunet_folders(env, target):
    """`evaluate -o <an nnU-Net folder> --overwrite` is refused and deletes nothing."""
    out = {"results_dataset": env["results"], "results_root": Path(env["nnUNet_results"]),
           "raw_dataset": Path(env["nnUNet_raw"]) / DATASET,
           "preprocessed_dataset": Path(env["nnUNet_preprocessed"]) / DATASET,
           "run_folder": env["results"] / RUN}[target]
    before = _files(env["base"])
    proc = run_cli("nnunet-xfer", "evaluate", "-d", "990", "-o", str(out), "--overwrite",
                   env=_cli_env(env), check=False)
    _one_line_error(proc)
    assert _files(env["base"]) == before


def test_evaluate_overwrite_keeps_foreign_files(env, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.txt").write_text("years of work")
    proc = run_cli("nnunet-xfer", "evaluate", "-d", "990", "-o", str(out), "--overwrite",
                   env=_cli_env(env), check=False)
    _one_line_error(proc, "thesis.txt")
    assert (out / "thesis.txt").read_text() == "years of work"


def test_evaluate_overwrite_replaces_only_its_own_output(env, tmp_path):
    out = evaluate_dataset("990", out=tmp_path / "eval", workers=1)
    written = _files(out)
    assert {"cases.csv", "summary.json", ".nnunet_xfer_output.json"} <= set(written)
    evaluate_dataset("990", out=out, overwrite=True, workers=1)  # its own output: replaced
    assert _files(out) == written
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="notes.txt"):
        evaluate_dataset("990", out=out, overwrite=True, workers=1)
    assert (out / "notes.txt").is_file() and _files(out) == sorted(written + ["notes.txt"])


@pytest.mark.parametrize("command", ["evaluate", "observers"])
def test_output_is_current_folder(env, command, tmp_path):
    """`-o .` is one line, even with --overwrite, and nothing in the folder is touched."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "keep.txt").write_text("x")
    if command == "evaluate":
        args = ["evaluate", "-d", "990"]
    else:
        args = ["observers", "--reference", str(Path(env["nnUNet_raw"]) / DATASET / "labelsTr"),
                "--observers", str(env["base"] / "observers")]
    exe = Path(sys.executable).parent / "nnunet-xfer"
    proc = subprocess.run([str(exe), *args, "-o", ".", "--overwrite"], cwd=cwd,
                          capture_output=True, text=True, env={**os.environ, **_cli_env(env)})
    _one_line_error(proc, "current folder")
    assert _files(cwd) == ["keep.txt"]


@pytest.mark.parametrize("where", ["under_a_file", "in_proc"])
def test_impossible_output_folder(env, tmp_path, where):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = blocker / "eval" if where == "under_a_file" else Path("/proc/nnunet_xfer_eval")
    proc = run_cli("nnunet-xfer", "evaluate", "-d", "990", "-o", str(out), "--workers", "1",
                   env=_cli_env(env), check=False)
    _one_line_error(proc)


def test_observers_output_equal_to_an_input(env):
    observers = env["base"] / "observers"
    before = _files(observers)
    with pytest.raises(UserError, match="input"):
        observer_study(Path(env["nnUNet_raw"]) / DATASET / "labelsTr", observers,
                       out=observers, overwrite=True)
    assert _files(observers) == before


# ---------------------------------------------------------------- grids
@pytest.mark.parametrize("fault,match", [
    ("shift_50mm", r"case_005: origin .* 50 mm"),
    ("flip_rows", r"case_005: row direction"),
    ("spacing", r"case_005: spacing"),
    ("shape", r"case_005: shape"),
])
def test_evaluate_refuses_a_prediction_on_another_grid(env, tmp_path, fault, match):
    pred = env["results"] / PRED
    if fault == "shift_50mm":
        _rewrite(pred, origin=(50.0, 0.0, 0.0))
    elif fault == "flip_rows":
        _rewrite(pred, direction=(1, 0, 0, 0, -1, 0, 0, 0, 1))
    elif fault == "spacing":
        write_slice(pred, np.zeros((128, 128), np.uint8), spacing=(1.0, 0.8), as_3d=True)
    else:
        write_slice(pred, np.zeros((120, 128), np.uint8), as_3d=True)
    with pytest.raises(UserError, match=match) as err:
        evaluate_dataset("990", out=tmp_path / "out", workers=1)
    assert str(pred) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("variant", ["jitter_below_tolerance", "planar_2d_file"])
def test_evaluate_accepts_the_same_grid(env, tmp_path, variant):
    """Float noise far below a pixel, or a 2D file (no slice position) at the same place, pass."""
    pred = env["results"] / PRED
    mask, geometry = imaging.load_mask(pred)
    if variant == "jitter_below_tolerance":
        _rewrite(pred, origin=(1e-4, -1e-4, 0.0))
    else:
        pred.unlink()
        write_slice(pred, mask.astype(np.uint8), spacing=geometry.spacing)
    out = evaluate_dataset("990", out=tmp_path / "out", workers=1)
    cases = pd.read_csv(out / "cases.csv")
    row = cases[(cases.trainer == RUN.split("__")[0]) & (cases.case_id == "case_005")]
    assert len(row) == 1 and row.dice.iloc[0] > 0.8


def test_observers_refuse_a_shifted_prediction(env, tmp_path):
    preds = tmp_path / "preds"
    shutil.copytree(Path(env["nnUNet_raw"]) / DATASET / "labelsTr", preds)
    _rewrite(preds / "case_002.nii.gz", origin=(0.0, 50.0, 0.0))
    with pytest.raises(UserError, match=r"model mask of case case_002: origin .* 50 mm"):
        observer_study(Path(env["nnUNet_raw"]) / DATASET / "labelsTr", env["base"] / "observers",
                       predictions=preds, out=tmp_path / "study")
    assert not (tmp_path / "study").exists()


# ---------------------------------------------------------------- mask contents
@pytest.mark.parametrize("content,dtype,match", [
    ("label_2", np.uint8, "other than 0/1 .*this dataset's own model"),
    ("half", np.float32, "non-integer"),
    ("nan", np.float32, "non-integer"),
    ("negative", np.int16, "other than 0/1"),
])
def test_evaluate_refuses_bad_mask_values(env, tmp_path, content, dtype, match):
    pred = env["results"] / PRED
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(pred))).astype(np.float64)
    arr[0, 60, 60] = {"label_2": 2, "half": 0.5, "nan": np.nan, "negative": -1}[content]
    _rewrite(pred, array=arr, dtype=dtype)
    with pytest.raises(UserError, match=match):
        evaluate_dataset("990", out=tmp_path / "out", workers=1)


@pytest.mark.parametrize("dtype", [np.float32, np.int16, np.uint16])
def test_evaluate_accepts_binary_masks_of_any_type(env, tmp_path, dtype):
    pred = env["results"] / PRED
    before = imaging.load_mask(pred).array
    _rewrite(pred, dtype=dtype)
    assert np.array_equal(imaging.load_mask(pred).array, before)
    out = evaluate_dataset("990", out=tmp_path / "out", workers=1)
    assert len(pd.read_csv(out / "cases.csv")) > 0


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "truncated_nii"])
def test_evaluate_unreadable_prediction_is_one_line(env, damage):
    """Damaged files are refused, naming them; a truncated file is never read as zeros (ITK reads
    an uncompressed NIfTI that ends early without complaint)."""
    pred = env["results"] / PRED
    data = pred.read_bytes()
    if damage == "truncated_nii":
        import gzip
        raw = gzip.decompress(data)
        pred.unlink()
        pred.with_suffix("").write_bytes(raw[: len(raw) - 100])
    else:
        pred.write_bytes({"garbage": b"not an image at all" * 10,
                          "truncated": data[: len(data) // 2], "empty": b""}[damage])
    proc = run_cli("nnunet-xfer", "evaluate", "-d", "990", "-o", str(env["base"] / "out"),
                   "--workers", "1", env=_cli_env(env), check=False)
    _one_line_error(proc, "case_005.nii")
    assert not (env["base"] / "out").exists()


def test_same_header_other_content_is_read_exactly(env, tmp_path):
    """The direct NIfTI decoding of a known header returns each file's own voxels."""
    folder = tmp_path / "masks"
    shapes = [np.zeros((1, 32, 32), np.uint8) for _ in range(3)]
    for k, a in enumerate(shapes):
        a[0, k:k + 5, 3:9] = 1
        write_slice(folder / f"m{k}.nii.gz", a[0], as_3d=True)
    read = [imaging.load_mask(folder / f"m{k}.nii.gz").array for k in range(3)]
    assert all(np.array_equal(r, a[0].astype(bool)) for r, a in zip(read, shapes))


# ---------------------------------------------------------------- nothing to evaluate, empty reports
def test_evaluate_with_zero_cases_is_an_error(env):
    for fold in env["results"].glob("*/fold_*/validation"):
        for f in fold.glob("*.nii.gz"):
            f.unlink()
    proc = run_cli("nnunet-xfer", "evaluate", "-d", "990", "--workers", "1", env=_cli_env(env),
                   check=False)
    _one_line_error(proc, "no prediction to evaluate")
    assert not (env["results"] / "nnunet_xfer_evaluation").exists()


def test_splits_nnunet_trained_on_differ_from_the_dataset(env, tmp_path):
    pre = Path(env["nnUNet_preprocessed"]) / DATASET / "splits_final.json"
    folds = json.loads(pre.read_text())
    folds[0]["val"], folds[1]["val"] = folds[1]["val"], folds[0]["val"]
    pre.write_text(json.dumps(folds))
    with pytest.raises(UserError, match="differ from"):
        evaluate_dataset("990", out=tmp_path / "out", workers=1)


@pytest.mark.parametrize("fault", ["foreign_html", "no_overwrite", "foreign_file_in_figures",
                                   "not_html", "empty_evaluation"])
def test_report_refusals(env, tmp_path, fault):
    evaluation = evaluate_dataset("990", out=tmp_path / "eval", workers=1)
    html = tmp_path / "report.html"
    if fault == "foreign_html":
        html.write_text("<html>my own page</html>")
    elif fault == "no_overwrite":
        write_report(evaluation, html)
    elif fault == "foreign_file_in_figures":
        (tmp_path / "report_files").mkdir()
        (tmp_path / "report_files" / "photo.png").write_bytes(b"x")
    elif fault == "not_html":
        html = tmp_path / "report.csv"
    else:
        (evaluation / "cases.csv").write_text((evaluation / "cases.csv").read_text()
                                              .splitlines()[0] + "\n")
    before = {p: p.read_bytes() for p in tmp_path.glob("report*") if p.is_file()}
    with pytest.raises(UserError):
        write_report(evaluation, html, overwrite=fault != "no_overwrite")
    assert {p: p.read_bytes() for p in tmp_path.glob("report*") if p.is_file()} == before
    if fault == "foreign_file_in_figures":
        assert (tmp_path / "report_files" / "photo.png").read_bytes() == b"x"


def test_report_inside_the_evaluation_is_replaced_with_it(env):
    """The experiment writes the report into the evaluation folder; a later `evaluate
    --overwrite` replaces both (the report lists its files in the folder's record)."""
    out = env["results"] / "nnunet_xfer_evaluation"
    evaluate_dataset("990", out=out, workers=1)
    write_report(out, out / "report.html")
    assert (out / "report_files" / "headline.png").is_file()
    evaluate_dataset("990", out=out, overwrite=True, workers=1)
    assert not (out / "report.html").exists() and (out / "cases.csv").is_file()


# ---------------------------------------------------------------- workers and interruptions
@pytest.mark.parametrize("workers", [2, 3])
def test_output_does_not_depend_on_workers(env, tmp_path, workers):
    one = evaluate("990", out=tmp_path / "one", observers=env["base"] / "observers", workers=1)
    many = evaluate("990", out=tmp_path / "many", observers=env["base"] / "observers",
                    workers=workers)
    for name in ("cases.csv", "summary.json", "observers_williams.csv"):
        assert (one.out / name).read_bytes() == (many.out / name).read_bytes(), name


def test_first_error_in_order_whatever_the_workers(env, tmp_path):
    for case in ("case_005.nii.gz", "case_007.nii.gz"):
        _rewrite(env["results"] / RUN / "fold_1" / "validation" / case, origin=(9.0, 0.0, 0.0))
    messages = []
    for workers in (1, 2):
        with pytest.raises(UserError) as err:
            evaluate_dataset("990", out=tmp_path / f"w{workers}", workers=workers)
        messages.append(str(err.value))
    assert messages[0] == messages[1] and "case_005" in messages[0]


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.5, 2.0])
def test_kill_mid_evaluate_leaves_no_partial_output(env, tmp_path, delay):
    """kill -9 at any moment: the output is absent or complete, and the rerun leaves nothing
    hidden behind."""
    out = tmp_path / "eval"
    exe = Path(sys.executable).parent / "nnunet-xfer"
    proc = subprocess.Popen([str(exe), "evaluate", "-d", "990", "-o", str(out), "--workers", "2"],
                            env={**os.environ, **_cli_env(env)}, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if out.exists():
        assert {"cases.csv", "summary.json"} <= set(_files(out))
    assert [p.name for p in tmp_path.iterdir() if p.name not in ("tree", "eval")
            and not p.name.startswith(".nnunet_xfer_tmp")] == []
    run_cli("nnunet-xfer", "evaluate", "-d", "990", "-o", str(out), "--overwrite", "--workers",
            "1", env=_cli_env(env))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
