"""The one output guard (``nnunet_xfer.atomic.check_replaceable``) on every command that writes.

Each reproduction of issue 17 item 3: an output that is, holds or lies inside an input is refused;
``--overwrite`` replaces only what the command wrote (a user's file in convert's preprocessed
folder, a plans file of the user's); something that appears at ``-o`` while a command runs is
never deleted, the run stops with one line and both are kept (with ``renameat2`` and with the
portable fallback); two runs on one ``-o``: one wins, the other stops. Commands run in-process
(``cli.main``) on small fake trees, so the file stays fast.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import fake_results_tree, write_slice
from conftest import cli_in_process as run
from conftest import one_line_error as one_line

from nnunet_xfer import atomic
from nnunet_xfer.errors import UserError
from nnunet_xfer.layout import OUTPUT_MARKER, TEMP_PREFIX

DATASET = "Dataset990_Fake"




def files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    base = tmp_path_factory.mktemp("guard") / "tree"
    fake_results_tree(base, n_cases=6, size=64)
    return base


@pytest.fixture
def env(tree, tmp_path, monkeypatch) -> Path:
    """A private copy of the fake tree, nnU-Net variables pointing at it, cwd in tmp_path."""
    base = tmp_path / "tree"
    shutil.copytree(tree, base)
    for k in ("raw", "preprocessed", "results"):
        monkeypatch.setenv(f"nnUNet_{k}", str(base / k))
    monkeypatch.chdir(tmp_path)
    return base


@pytest.fixture
def slices(tmp_path) -> tuple[Path, Path]:
    """``im/c<k>_0000.nii.gz`` CT slices and ``ma/c<k>.nii.gz`` masks for measure."""
    rng = np.random.default_rng(0)
    for k in range(2):
        ct = np.full((16, 16), 40, np.int16) + rng.integers(-5, 5, (16, 16)).astype(np.int16)
        ct[0] = -1000
        mask = np.zeros((16, 16), np.uint8)
        mask[4:12, 4:12] = 1
        write_slice(tmp_path / "im" / f"c{k}_0000.nii.gz", ct)
        write_slice(tmp_path / "ma" / f"c{k}.nii.gz", mask)
    return tmp_path / "im", tmp_path / "ma"


# ---------------------------------------------------------------- never an input
@pytest.mark.parametrize("where", ["an_input_image", "inside_masks", "the_images_folder"])
def test_measure_output_is_never_an_input(slices, capsys, where):
    """`measure -o im/c0_0000.nii.gz --overwrite` replaced the CT with a CSV; `-o` inside
    --masks was accepted (the next run reads it as input)."""
    im, ma = slices
    out = {"an_input_image": im / "c0_0000.nii.gz", "inside_masks": ma / "measures.csv",
           "the_images_folder": im}[where]
    before = {**files(im), **files(ma)}
    code, err = run(capsys, "measure", "--images", str(im), "--masks", str(ma), "-o", str(out),
                    "--overwrite")
    one_line(code, err, "input")
    assert {**files(im), **files(ma)} == before


def test_measure_output_is_never_its_heights_file(slices, capsys, tmp_path):
    im, ma = slices
    heights = tmp_path / "h.csv"
    heights.write_text("case_id,height_m\nc0,1.7\n")
    code, err = run(capsys, "measure", "--images", str(im), "--masks", str(ma), "--heights",
                    str(heights), "-o", str(heights), "--overwrite")
    one_line(code, err, "input")
    assert heights.read_text() == "case_id,height_m\nc0,1.7\n"


def test_observers_output_inside_an_input_is_refused(env, capsys):
    observers = env / "observers"
    before = files(observers)
    code, err = run(capsys, "observers", "--reference",
                    str(env / "raw" / DATASET / "labelsTr"), "--observers", str(observers),
                    "-o", str(observers / "study"), "--workers", "1")
    one_line(code, err, "lies inside the input")
    assert files(observers) == before


def test_evaluate_output_inside_a_run_folder_is_refused(env, capsys):
    run_folder = env / "results" / DATASET / "XferScratchTrainer_n5__nnUNetPlans__2d"
    before = files(run_folder)
    code, err = run(capsys, "evaluate", "-d", "990", "-o", str(run_folder / "fold_0" / "eval"),
                    "--workers", "1")
    one_line(code, err, "lies inside the input")
    assert files(run_folder) == before


# ---------------------------------------------------------------- only what the command wrote
def test_overwrite_needs_the_same_command(env, capsys, tmp_path):
    """An observer study is not replaced by `evaluate -o it --overwrite` (nor the reverse)."""
    study = tmp_path / "study"
    code, err = run(capsys, "observers", "--reference", str(env / "raw" / DATASET / "labelsTr"),
                    "--observers", str(env / "observers"), "-o", str(study), "--workers", "1")
    assert code == 0, err
    before = files(study)
    code, err = run(capsys, "evaluate", "-d", "990", "-o", str(study), "--overwrite",
                    "--workers", "1")
    one_line(code, err, "not written by nnunet-xfer evaluate")
    assert files(study) == before


def _converted(tmp_path: Path, monkeypatch) -> tuple[Path, Path, Path]:
    """A 6-case phantom converted into private nnU-Net folders; (manifest, raw, preprocessed)."""
    from nnunet_xfer.dataset_conversion.convert import convert
    from nnunet_xfer.phantom.cohort import write_cohort
    raw, pre = tmp_path / "nn_raw", tmp_path / "nn_pre"
    raw.mkdir()
    pre.mkdir()
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "nn_results"))
    write_cohort(tmp_path / "ph", n_cases=6, size=32, n_observers=0, n_observer_cases=0)
    convert(cases_csv=tmp_path / "ph" / "cases.csv", dataset_id=977, name="G", n_folds=2,
            sizes=[2])
    return tmp_path / "ph" / "cases.csv", raw, pre


def test_convert_overwrite_keeps_a_users_file_in_preprocessed(tmp_path, monkeypatch, capsys):
    """`convert --overwrite` deleted a user's file in $nnUNet_preprocessed/<Dataset>/ unnamed."""
    manifest, raw, pre = _converted(tmp_path, monkeypatch)
    folder = pre / "Dataset977_G"
    (folder / "nnUNetPlans.json").write_text(json.dumps(
        {"plans_name": "nnUNetPlans", "configurations": {"2d": {"data_identifier": "nnUNetPlans_2d"}}}))
    (folder / "nnUNetPlans_2d").mkdir()
    (folder / "nnUNetPlans_2d" / "L3-0000.b2nd").write_bytes(b"data")
    (folder / "my_notes.txt").write_text("mine")
    raw_before = files(raw)
    code, err = run(capsys, "convert", "--cases", str(manifest), "-d", "977", "-n", "G",
                    "--folds", "2", "--sizes", "2", "--overwrite")
    one_line(code, err, "my_notes.txt", str(folder))
    assert (folder / "my_notes.txt").read_text() == "mine"
    assert (folder / "nnUNetPlans_2d" / "L3-0000.b2nd").is_file() and files(raw) == raw_before
    # without the user's file, nnU-Net's data (and ours) is removed with the old dataset
    (folder / "my_notes.txt").unlink()
    code, err = run(capsys, "convert", "--cases", str(manifest), "-d", "977", "-n", "G",
                    "--folds", "2", "--sizes", "2", "--overwrite")
    assert code == 0, err
    assert sorted(p.name for p in folder.iterdir()) == ["splits_final.json"]


def test_convert_output_may_not_hold_its_input(tmp_path, monkeypatch, capsys):
    """Re-converting from a dataset's own imagesTr/labelsTr into that dataset is refused."""
    _manifest, raw, _pre = _converted(tmp_path, monkeypatch)
    folder = raw / "Dataset977_G"
    before = files(folder)
    manifest = tmp_path / "again.csv"
    manifest.write_text("case_id,image,mask\n" + "".join(
        f"c{k},{folder}/imagesTr/L3-000{k}_0000.nii.gz,{folder}/labelsTr/L3-000{k}.nii.gz\n"
        for k in range(6)))
    code, err = run(capsys, "convert", "--cases", str(manifest), "-d", "977", "-n", "G",
                    "--folds", "2", "--sizes", "2", "--overwrite")
    one_line(code, err, "holds the input")
    assert files(folder) == before


def minimal_plans(name: str = "Dataset976_P") -> dict:
    """A small 2D plans file nnU-Net's PlansManager and `plan` accept."""
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}
    return {
        "dataset_name": name, "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [999.0, 1.0, 1.0],
        "original_median_shape_after_transp": [1, 64, 64], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 100.0, "mean": 40.0, "median": 40.0, "min": -50.0, "percentile_00_5": -40.0,
            "percentile_99_5": 90.0, "std": 10.0}},
        "configurations": {"2d": {
            "data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 12, "patch_size": [64, 64], "median_image_size_in_voxels": [64.0, 64.0],
            "spacing": [1.0, 1.0], "normalization_schemes": ["CTNormalization"],
            "use_mask_for_norm": [False], "batch_dice": True,
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": resampling,
            "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
            "resampling_fn_probabilities_kwargs": {**resampling, "order": 1},
            "architecture": {
                "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                "arch_kwargs": {
                    "n_stages": 3, "features_per_stage": [8, 16, 32],
                    "conv_op": "torch.nn.modules.conv.Conv2d", "kernel_sizes": [[3, 3]] * 3,
                    "strides": [[1, 1], [2, 2], [2, 2]], "n_conv_per_stage": [2, 2, 2],
                    "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
                    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                    "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                    "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                    "nonlin_kwargs": {"inplace": True}},
                "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}}}


@pytest.fixture
def planned(tmp_path, monkeypatch) -> Path:
    """``$nnUNet_preprocessed/Dataset976_P`` with nnU-Net-like plans and dataset.json."""
    pre = tmp_path / "pre" / "Dataset976_P"
    pre.mkdir(parents=True)
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    (pre / "nnUNetPlans.json").write_text(json.dumps(minimal_plans()))
    (pre / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "muscle": 1},
        "numTraining": 1, "file_ending": ".nii.gz"}))
    return pre


def test_plan_overwrite_keeps_a_users_plans_file(planned, capsys):
    """`plan --overwrite` replaced a plans file the user wrote."""
    args = ["plan", "-d", "Dataset976_P", "--arch", "unet_resnet34", "--overwrite"]
    assert run(capsys, *args)[0] == 0                       # new: written
    ours = planned / "nnUNetPlans_unet_resnet34.json"
    assert json.loads(ours.read_text())["nnunet_xfer"]["architecture"] == "unet_resnet34"
    assert run(capsys, *args)[0] == 0                       # its own: replaced
    ours.write_text(json.dumps({"plans_name": "nnUNetPlans_unet_resnet34", "note": "hand-made"}))
    before = ours.read_bytes()
    code, err = run(capsys, *args)
    one_line(code, err, "not written by nnunet-xfer plan")
    assert ours.read_bytes() == before


@pytest.mark.parametrize("text", ['{"plans_name": "nnUNetPlans", "configura',
                                  '{"plans_name": "nnUNetPlans"}', "[1, 2]", ""])
def test_corrupt_plans_file_is_one_line(planned, capsys, text):
    (planned / "nnUNetPlans.json").write_text(text)
    code, err = run(capsys, "plan", "-d", "Dataset976_P", "--arch", "unet_resnet34")
    one_line(code, err, "nnUNetPlans.json", "nnUNetv2_plan_and_preprocess")
    assert sorted(p.name for p in planned.iterdir()) == ["dataset.json", "nnUNetPlans.json"]


# ---------------------------------------------------------------- the race at the final step
def _evaluate_args(out: Path) -> list[str]:
    return ["evaluate", "-d", "990", "-o", str(out), "--workers", "1"]


def _observers_args(env: Path, out: Path) -> list[str]:
    return ["observers", "--reference", str(env / "raw" / DATASET / "labelsTr"), "--observers",
            str(env / "observers"), "-o", str(out), "--workers", "1"]


def _during(monkeypatch, module, name: str, action) -> None:
    """Run ``action()`` once, the first time ``module.name`` is called (mid-run)."""
    real = getattr(module, name)
    done = []

    def hooked(*args, **kwargs):
        if not done:
            done.append(1)
            action()
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, hooked)


def _user_folder(out: Path):
    def make():
        out.mkdir()
        (out / "thesis.txt").write_text("years of work")
    return make


def _kept_beside(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f"{out.name}.new-*"))


@pytest.fixture(params=["renameat2", "portable"])
def swap(request, monkeypatch):
    """Both ways of the final step: Linux renameat2, and the fallback without it."""
    if request.param == "portable":
        monkeypatch.setattr(atomic, "_renameat2", lambda src, dst, flags: False)
    return request.param


def test_evaluate_keeps_a_folder_that_appears_while_it_runs(env, capsys, monkeypatch, swap):
    """A folder created at -o while evaluate runs was renamed away and deleted at the end."""
    from nnunet_xfer.evaluation import fold_evaluation
    out = env.parent / "eval"
    _during(monkeypatch, fold_evaluation, "score_predictions", _user_folder(out))
    code, err = run(capsys, *_evaluate_args(out))
    line = one_line(code, err, str(out), "appeared")
    assert (out / "thesis.txt").read_text() == "years of work"
    assert files(out) == {"thesis.txt": b"years of work"}
    kept = _kept_beside(out)
    assert len(kept) == 1 and str(kept[0]) in line and (kept[0] / "cases.csv").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_overwrite_keeps_a_folder_put_in_place_of_ours(env, capsys, monkeypatch, swap):
    """With --overwrite: our earlier output was replaced by the user's folder mid-run."""
    from nnunet_xfer.evaluation import fold_evaluation
    out = env.parent / "eval"
    assert run(capsys, *_evaluate_args(out))[0] == 0

    def replace_ours():
        shutil.rmtree(out)
        _user_folder(out)()
    _during(monkeypatch, fold_evaluation, "score_predictions", replace_ours)
    code, err = run(capsys, *_evaluate_args(out), "--overwrite")
    one_line(code, err, str(out), "changed")
    assert files(out) == {"thesis.txt": b"years of work"}
    assert len(_kept_beside(out)) == 1


def test_overwrite_keeps_a_file_added_to_our_folder_while_it_runs(env, capsys, monkeypatch, swap):
    from nnunet_xfer.evaluation import fold_evaluation
    out = env.parent / "eval"
    assert run(capsys, *_evaluate_args(out))[0] == 0
    _during(monkeypatch, fold_evaluation, "score_predictions",
            lambda: (out / "notes.txt").write_text("mine"))
    code, err = run(capsys, *_evaluate_args(out), "--overwrite")
    one_line(code, err, str(out))
    assert (out / "notes.txt").read_text() == "mine" and (out / "cases.csv").is_file()


def test_two_evaluate_runs_on_one_output_one_wins(env, capsys, monkeypatch):
    """Two concurrent `evaluate` runs on one -o both exited 0 (the first one's output deleted)."""
    from nnunet_xfer.evaluation import fold_evaluation
    out = env.parent / "eval"
    second = []
    _during(monkeypatch, fold_evaluation, "score_predictions",
            lambda: second.append(run(capsys, *_evaluate_args(out))))
    code, err = run(capsys, *_evaluate_args(out))
    assert second[0][0] == 0, second                     # the second run finished first
    one_line(code, err, str(out), "appeared")           # the first one stops at its swap
    assert (out / "cases.csv").is_file() and len(_kept_beside(out)) == 1


def test_observers_keep_a_folder_that_appears_while_they_run(env, capsys, monkeypatch, swap):
    from nnunet_xfer.evaluation import observer_study
    out = env.parent / "study"
    _during(monkeypatch, observer_study, "pairwise_table", _user_folder(out))
    code, err = run(capsys, *_observers_args(env, out))
    one_line(code, err, str(out), "appeared")
    assert files(out) == {"thesis.txt": b"years of work"}


def test_measure_keeps_a_file_that_appears_while_it_runs(slices, capsys, monkeypatch, swap):
    from nnunet_xfer.evaluation import measures
    im, ma = slices
    out = im.parent / "m.csv"
    _during(monkeypatch, measures, "muscle_measures", lambda: out.write_text("mine\n"))
    code, err = run(capsys, "measure", "--images", str(im), "--masks", str(ma), "-o", str(out))
    one_line(code, err, str(out), "appeared")
    assert out.read_text() == "mine\n"
    kept = _kept_beside(out)
    assert len(kept) == 1 and kept[0].read_text().startswith("case_id,sma_cm2")


def test_report_keeps_an_html_that_appears_while_it_runs(env, capsys, monkeypatch, swap):
    from nnunet_xfer.evaluation import figures
    evaluation = env.parent / "eval"
    assert run(capsys, *_evaluate_args(evaluation))[0] == 0
    html = env.parent / "r.html"
    _during(monkeypatch, figures, "boxes", lambda: html.write_text("<p>mine</p>"))
    code, err = run(capsys, "report", "-i", str(evaluation), "-o", str(html))
    one_line(code, err, str(html), "appeared")
    assert html.read_text() == "<p>mine</p>"


def test_phantom_keeps_a_folder_that_appears_while_it_runs(tmp_path, capsys, monkeypatch, swap):
    from nnunet_xfer.phantom import cohort
    out = tmp_path / "ph"
    _during(monkeypatch, cohort, "make_subject", _user_folder(out))
    code, err = run(capsys, "phantom", str(out), "--cases", "2", "--size", "32",
                    "--observers", "0")
    one_line(code, err, str(out), "appeared")
    assert files(out) == {"thesis.txt": b"years of work"}


# ---------------------------------------------------------------- the guard itself
def test_there_is_one_guard():
    """No module but atomic defines an output check of its own."""
    import nnunet_xfer
    root = Path(nnunet_xfer.__file__).parent
    defining = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.py")
                      if "def check_replaceable(" in p.read_text()
                      or "def check_output_folder(" in p.read_text()
                      or "def refuse_protected(" in p.read_text())
    assert defining == ["atomic.py"]


def test_marker_of_another_command_is_not_ours(tmp_path):
    out = tmp_path / "o"
    with atomic.owned_output(out, "phantom") as tmp:
        (tmp / "a.txt").write_text("x")
    with pytest.raises(UserError, match="not written by nnunet-xfer evaluate"):
        atomic.check_replaceable(out, "evaluate", True)
    assert atomic.check_replaceable(out, "phantom", True).found is not None
    assert json.loads((out / OUTPUT_MARKER).read_text())["files"] == ["a.txt"]


def test_remove_owned_keeps_what_changed(tmp_path):
    out = tmp_path / "o"
    with atomic.owned_output(out, "phantom") as tmp:
        (tmp / "a.txt").write_text("x")
    claim = atomic.check_replaceable(out, "phantom", True)
    (out / "b.txt").write_text("mine")
    with pytest.raises(UserError, match="changed"):
        atomic.remove_owned(claim)
    assert (out / "b.txt").read_text() == "mine" and (out / "a.txt").is_file()


# ---------------------------------------------------------------- CSV cells
def test_every_csv_neutralises_formulas_and_keeps_numbers(tmp_path):
    frame = pd.DataFrame({"text": ["=HYPERLINK(\"x\")", "+1+2", "-cmd", "@SUM(A1)", "plain", "-3.5"],
                          "number": [-1.5, 2.0, -3.0, 0.0, 1e-3, -7.0]})
    atomic.atomic_write_csv(tmp_path / "t.csv", frame)
    back = pd.read_csv(tmp_path / "t.csv", dtype={"text": str})
    assert list(back["text"]) == ["'=HYPERLINK(\"x\")", "'+1+2", "'-cmd", "'@SUM(A1)", "plain",
                                  "-3.5"]
    assert back["number"].dtype.kind == "f" and list(back["number"]) == list(frame["number"])


def test_observer_named_like_a_formula_is_written_inert(env, capsys, tmp_path):
    observers = env / "observers"
    # a fourth observer: williams.csv tests each observer against the others only from 4 on
    shutil.copytree(observers / "obs_0", observers / "=1+2")
    out = tmp_path / "study"
    code, err = run(capsys, *_observers_args(env, out))
    assert code == 0, err
    for name in ("pairwise.csv", "williams.csv", "staple.csv"):
        cells = pd.read_csv(out / name, dtype=str).to_numpy().ravel()
        assert "=1+2" not in set(cells) and "'=1+2" in set(cells), name


# ---------------------------------------------------------------- a full disk
def _no_space(*_args, **_kwargs):
    raise OSError(28, "No space left on device")


def test_full_disk_while_writing_a_report_is_one_line(env, capsys, monkeypatch):
    from nnunet_xfer.evaluation import figures
    evaluation = env.parent / "eval"
    assert run(capsys, *_evaluate_args(evaluation))[0] == 0
    monkeypatch.setattr(figures.plt.Figure, "savefig", _no_space)
    code, err = run(capsys, "report", "-i", str(evaluation), "-o", str(env.parent / "r.html"))
    one_line(code, err, "no space left")
    assert not (env.parent / "r.html").exists() and not (env.parent / "r_files").exists()


def test_full_disk_while_writing_a_phantom_is_one_line(tmp_path, capsys, monkeypatch):
    """SimpleITK reports a failed write on stderr only: a disk left full is refused."""
    monkeypatch.setattr(atomic, "_MIN_FREE_BYTES", 1 << 62)
    code, err = run(capsys, "phantom", str(tmp_path / "ph"), "--cases", "1", "--size", "32",
                    "--observers", "0")
    one_line(code, err, "no space left")
    assert not (tmp_path / "ph").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_full_disk_while_writing_plans_is_one_line(planned, capsys, monkeypatch):
    monkeypatch.setattr(atomic, "_MIN_FREE_BYTES", 1 << 62)
    code, err = run(capsys, "plan", "-d", "Dataset976_P", "--arch", "unet_resnet34")
    one_line(code, err, "no space left")
    assert sorted(p.name for p in planned.iterdir()) == ["dataset.json", "nnUNetPlans.json"]


def test_slurm_overwrite_keeps_a_script_of_yours(tmp_path, capsys):
    """`experiment --slurm FILE --overwrite` replaced any file at FILE."""
    script = tmp_path / "submit.sh"
    script.write_text("#!/bin/bash\nsbatch my_own_job.sh\n")
    code, err = run(capsys, "experiment", "-d", "501", "--slurm", str(script), "--overwrite")
    one_line(code, err, "not written by nnunet-xfer experiment")
    assert script.read_text() == "#!/bin/bash\nsbatch my_own_job.sh\n"


# ---------------------------------------------------------------- the demo in your nnU-Net folders
def _earlier_demo(root: Path, monkeypatch) -> dict[str, Path]:
    """$nnUNet_* folders of the user's holding what an earlier demo left there."""
    from nnunet_xfer.demo import DEMO_NAME
    from nnunet_xfer.layout import EVALUATION_FOLDER, STORE_FOLDER
    folders = {}
    for k in ("raw", "preprocessed", "results"):
        folders[k] = root / k / DEMO_NAME
        monkeypatch.setenv(f"nnUNet_{k}", str(root / k))
    with atomic.owned_output(folders["raw"], "convert") as tmp:
        (tmp / "dataset.json").write_text("{}")
        (tmp / "imagesTr").mkdir()
        (tmp / "imagesTr" / "L3-0000_0000.nii.gz").write_bytes(b"ct")
    folders["preprocessed"].mkdir(parents=True)
    (folders["preprocessed"] / "dataset.json").write_text("{}")
    (folders["preprocessed"] / "nnUNetPlans.json").write_text(json.dumps(minimal_plans(DEMO_NAME)))
    (folders["preprocessed"] / "nnUNetPlans_2d").mkdir()
    (folders["preprocessed"] / "nnUNetPlans_2d" / "L3-0000.b2nd").write_bytes(b"data")
    fold = folders["results"] / "XferScratchTrainer_n5__nnUNetPlans__2d" / "fold_0"
    fold.mkdir(parents=True)
    (fold / "checkpoint_final.pth").write_bytes(b"weights")
    store = folders["results"] / STORE_FOLDER / "nnUNetPlans__2d"
    store.mkdir(parents=True)
    (store / "rec.pth").write_bytes(b"weights")
    with atomic.owned_output(folders["results"] / EVALUATION_FOLDER, "evaluate") as tmp:
        (tmp / "cases.csv").write_text("case_id\n")
    return folders


@pytest.mark.parametrize("where", ["raw", "preprocessed", "results"])
def test_demo_overwrite_keeps_a_users_file_in_its_nnunet_dataset(tmp_path, capsys, monkeypatch,
                                                                where):
    """With your $nnUNet_* set, `demo --overwrite` deleted Dataset990_XferDemo in each of them
    whole (shutil.rmtree), a file of yours inside included, without naming it."""
    from nnunet_xfer import demo

    def no_stage(*_args, **_kwargs):
        raise UserError("a demo stage ran: the earlier demo's datasets were not refused")
    monkeypatch.setattr(demo, "run_steps", no_stage)  # refused before any work, or fail fast
    folders = _earlier_demo(tmp_path / "nn", monkeypatch)
    (folders[where] / "my_notes.txt").write_text("years of work")
    before = {k: files(v) for k, v in folders.items()}
    code, err = run(capsys, "demo", "--quick", "--overwrite", "-o", str(tmp_path / "demo"))
    one_line(code, err, "my_notes.txt", str(folders[where]))
    assert {k: files(v) for k, v in folders.items()} == before   # nothing removed, anywhere


def test_demo_overwrite_removes_what_an_earlier_demo_left(tmp_path, monkeypatch):
    """The control: without a file of yours, an earlier demo's datasets are removed (each checked
    again at its removal); a file the demo never writes at the top of results is refused."""
    from nnunet_xfer import demo
    folders = _earlier_demo(tmp_path / "nn", monkeypatch)
    env = {f"nnUNet_{k}": str(v.parent) for k, v in folders.items()}
    claim = atomic.check_replaceable(tmp_path / "demo", "demo", True)
    demo._prepare(claim, env, True, own_folders=False)
    assert not any(f.exists() for f in folders.values())
    assert (tmp_path / "demo" / OUTPUT_MARKER).is_file()
