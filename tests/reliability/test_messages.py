"""One line instead of a traceback, warnings no filter hides, bars on a terminal only, and the
input care of measure/observers that is not image reading (issue 17 items 5 and 6).

Hand-edited evaluation files in front of ``report``; duplicate ids in ``--heights``; DICOM
``PatientSex`` in any spelling; safety warnings under ``PYTHONWARNINGS=ignore``; progress bars
in a log file.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import BIN, fake_results_tree, write_slice
from conftest import cli_in_process as run
from conftest import one_line_error as one_line

from nnunet_xfer import cli




# ---------------------------------------------------------------- report on hand-edited files
@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    """An evaluation folder of the fake tree, written once."""
    base = tmp_path_factory.mktemp("report_inputs")
    env = fake_results_tree(base / "tree", n_cases=6, size=64)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        assert cli.main(["evaluate", "-d", "990", "-o", str(base / "eval"), "--workers", "1"]) == 0
        yield base / "eval"


def _drop_column(name):
    def edit(folder: Path) -> None:
        t = pd.read_csv(folder / "cases.csv")
        t.drop(columns=[name]).to_csv(folder / "cases.csv", index=False)
    return edit


def _edit_summary(change):
    def edit(folder: Path) -> None:
        summary = json.loads((folder / "summary.json").read_text())
        change(summary)
        (folder / "summary.json").write_text(json.dumps(summary))
    return edit


def _rename_sources(summary: dict) -> None:
    for g in summary["groups"]:
        g["source"] = "my_source"


EDITS = {
    "cases_without_case_id": (_drop_column("case_id"), "lacks column(s) case_id"),
    "cases_without_failed": (_drop_column("failed"), "lacks column(s) failed"),
    "cases_without_measures": (_drop_column("sma_cm2_pred"), "sma_cm2_pred"),
    "source_renamed_in_summary": (_edit_summary(_rename_sources), "'my_source'"),
    "group_without_metrics": (_edit_summary(lambda s: s["groups"][0].pop("metrics")), "metrics"),
    "metric_not_a_table": (_edit_summary(
        lambda s: s["groups"][0]["metrics"].__setitem__("dice", "high")), "do not fit together"),
    "summary_a_list": (lambda f: (f / "summary.json").write_text("[1, 2]"), "not an evaluation"),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_report_on_hand_edited_evaluation_is_one_line(evaluation, tmp_path, capsys, edit):
    folder = tmp_path / "eval"
    shutil.copytree(evaluation, folder)
    change, words = EDITS[edit]
    change(folder)
    code, err = run(capsys, "report", "-i", str(folder), "-o", str(tmp_path / "r.html"))
    one_line(code, err, words)
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "r_files").exists()


def test_report_on_a_hand_edited_observer_study_is_one_line(tmp_path, capsys):
    study = tmp_path / "study"
    study.mkdir()
    (study / "williams.csv").write_text("rater,score\nobs_0,0.9\n")  # not the observers' columns
    code, err = run(capsys, "report", "-i", str(study), "-o", str(tmp_path / "r.html"))
    one_line(code, err, "do not fit together")
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("given, words", [("a_file", "is a file, not a folder"),
                                          ("missing", "does not exist")])
def test_report_input_that_is_no_folder_is_one_line(tmp_path, capsys, given, words):
    """`report -i FILE` said the folder "does not exist"."""
    (tmp_path / "a_file").write_text("case_id\n")
    code, err = run(capsys, "report", "-i", str(tmp_path / given), "-o", str(tmp_path / "r.html"))
    one_line(code, err, given, words)
    assert not (tmp_path / "r.html").exists()


# ---------------------------------------------------------------- measure / observers inputs
@pytest.fixture
def slices(tmp_path) -> tuple[Path, Path]:
    for k in range(2):
        ct = np.full((16, 16), 40, np.int16)
        ct[0] = -1000
        mask = np.zeros((16, 16), np.uint8)
        mask[4:12, 4:12] = k  # c0: empty mask
        write_slice(tmp_path / "im" / f"c{k}_0000.nii.gz", ct)
        write_slice(tmp_path / "ma" / f"c{k}.nii.gz", mask)
    return tmp_path / "im", tmp_path / "ma"


def test_duplicate_ids_in_heights_are_refused(slices, tmp_path, capsys):
    """Two heights for one case were accepted (the last one silently won)."""
    heights = tmp_path / "heights.csv"
    heights.write_text("case_id,height_m\nc1,1.60\nc0,1.70\nc1,1.90\n")
    code, err = run(capsys, "measure", "--images", str(slices[0]), "--masks", str(slices[1]),
                    "--heights", str(heights), "-o", str(tmp_path / "m.csv"))
    one_line(code, err, "heights.csv", "c1", "more than one height")
    assert not (tmp_path / "m.csv").exists()


def test_safety_warnings_are_printed_whatever_the_warnings_filter(slices, tmp_path):
    """`warnings.warn` is silenced by PYTHONWARNINGS=ignore; the empty-mask warning must not be."""
    proc = subprocess.run(
        [str(BIN / "nnunet-xfer"), "measure", "--images", str(slices[0]), "--masks",
         str(slices[1]), "-o", str(tmp_path / "m.csv")],
        capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
        timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "warning: case c0: the mask holds no muscle pixel (flagged empty_mask)" in proc.stderr
    table = pd.read_csv(tmp_path / "m.csv", keep_default_na=False).set_index("case_id")
    assert "empty_mask" in table.loc["c0", "flags"]


def test_no_warnings_warn_left_in_the_package():
    import nnunet_xfer
    root = Path(nnunet_xfer.__file__).parent
    assert not [p for p in root.rglob("*.py") if "warnings.warn(" in p.read_text()]


@pytest.mark.parametrize("value, sex, flagged", [
    ("M", "M", False), ("m", "M", False), ("female", "F", False), ("FEMALE", "F", False),
    ("Male", "M", False), ("", "unknown", True), ("O", "unknown", True), ("X", "unknown", True),
    (None, "unknown", False)])
def test_patient_sex_in_any_spelling(value, sex, flagged):
    from nnunet_xfer.clinical.studies import patient_sex
    got, odd = patient_sex(None, value)
    assert got == sex and (odd is not None) == flagged
    assert patient_sex("f", value)[0] == "F"  # the manifest comes first


@pytest.mark.parametrize("value", ["female", "m", "X", ""])
def test_dicom_seg_of_a_patient_with_an_odd_sex_spelling(tmp_path, value):
    """highdicom refused PatientSex 'female'/'m' (ValueError): the case failed."""
    import pydicom
    from clinical_data import write_ct_series

    from nnunet_xfer.clinical.dicom_seg import write_dicom_seg
    from nnunet_xfer.clinical.provenance import Provenance
    paths = write_ct_series(tmp_path / "ct", np.zeros((1, 16, 16)), (1.0, 1.0),
                            patient={"PatientSex": value})
    seg = tmp_path / "seg.dcm"
    write_dicom_seg(seg, paths[0], np.ones((16, 16), bool),
                    Provenance("Dataset501_L3", "T", "P", "2d", ("0",)), "c")
    assert pydicom.dcmread(seg).PatientSex in ("M", "F", "")
    assert pydicom.dcmread(paths[0]).PatientSex == value  # the source is left as it was


# ---------------------------------------------------------------- progress bars
def test_no_progress_bar_in_a_log(tmp_path):
    """Bars are for terminals: a log (stderr to a file) holds none."""
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        proc = subprocess.run([str(BIN / "nnunet-xfer"), "phantom", str(tmp_path / "ph"),
                               "--cases", "3", "--size", "32", "--observers", "0"],
                              stdout=subprocess.DEVNULL, stderr=f, timeout=300)
    assert proc.returncode == 0
    assert "%|" not in log.read_text() and "case/s" not in log.read_text(), log.read_text()
