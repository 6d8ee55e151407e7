"""`nnunet-xfer demo --quick`: the whole pipeline end to end in its own nnU-Net folders."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from nnunet_xfer.demo import DEMO_OWNED, DEMO_NAME, NNUNET_VARS, QUICK, demo_steps
from nnunet_xfer.layout import OUTPUT_MARKER

NNUNET_XFER = str(Path(sys.executable).parent / "nnunet-xfer")


def _clean_env() -> dict:
    """This process's environment without the pytest session's nnU-Net folders and schedules."""
    return {k: v for k, v in os.environ.items()
            if k not in NNUNET_VARS and not k.startswith("nnUNet_xfer_")}


def test_demo_stages_cover_the_pipeline(tmp_path):
    stages = demo_steps(tmp_path, QUICK)
    names = [s for s, _ in stages]
    assert names == ["phantom", "convert", "plan and preprocess", "pretrain", "train",
                     "evaluate + report", "observer study + report"]
    steps = dict(stages)
    assert [s.argv[5] for s in steps["train"]] == ["XferScratchTrainer_n5", "XferRecTrainer_n5"]
    assert [s.argv[5] for s in steps["pretrain"]] == ["rec"]
    assert steps["pretrain"][0].argv[-6:-4] == ("--fold", "0")  # fold 0's training images only
    assert "--observers" in steps["evaluate + report"][0].argv


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path, nnunet_env):
    out = tmp_path / "demo"
    proc = subprocess.run([NNUNET_XFER, "demo", "--quick", "-o", str(out)], env=_clean_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for stage in ("phantom", "convert", "plan and preprocess", "pretrain", "train",
                  "evaluate + report", "observer study + report"):
        assert re.search(rf"\] {re.escape(stage)}: \d+\.\d s", proc.stdout), stage
    results = out / "nnUNet_results" / DEMO_NAME
    evaluation = results / "nnunet_xfer_evaluation"
    report = evaluation / "report.html"
    assert f"report:              {report.resolve()}" in proc.stdout
    # it ends with the table a user came for: Dice and RMS DTA per source and n, the observers'
    # range and the human-level verdicts
    for source in ("scratch", "reconstruction"):
        assert re.search(rf"^{source}\s+5\s+\d+.*\s(yes|no)\s+(yes|no)$", proc.stdout, re.M), \
            proc.stdout
    assert re.search(r"^observers \(3, \d+ cases, each vs the reference\): Dice \d\.\d{3}–\d\.\d{3}",
                     proc.stdout, re.M)
    lines = proc.stdout.rstrip().splitlines()
    rule = next(ln for ln in lines if ln.startswith("human level if"))  # as evaluate stated it
    # tested on fold 0's 6 validation cases (the observers read all 24, but only those have
    # predictions)
    assert "non-inferior" in rule and "6 case(s)" in rule and "3 observer(s)" in rule
    # the threshold baseline's row under the models, and in words whether each model beats it
    assert re.search(r"^threshold \(no learning\)\s+–\s+\d+\s.*\(baseline\)", proc.stdout, re.M)
    assert re.search(r"^  scratch n=5 (beats it|does not beat it) \(Dice [+-]", proc.stdout, re.M)
    assert lines[-1].startswith("rule: a model beats a no-learning reference")
    # the observer study took the best model by the report's criterion, and says so
    assert re.search(r"observer study of Xfer(Scratch|Rec)Trainer_n5: the best by mean Dice",
                     proc.stdout)
    html = report.read_text()
    assert html.count("<img") >= 2 and "data:image/png;base64," in html
    # finished pretraining leaves no training state behind (435 MB per entry in the full demo)
    assert not list(results.rglob("*.resume.pth")) and list(results.rglob("rec.pth"))
    marker = json.loads((out / OUTPUT_MARKER).read_text())  # the demo's, listing every file
    assert marker["command"] == "nnunet-xfer demo" and "demo.log" in marker["files"]
    assert "owned" not in marker and "phantom/cases.csv" in marker["files"]
    assert (report.parent / "report_files" / "headline.png").stat().st_size > 1000  # own folder
    cases = pd.read_csv(evaluation / "cases.csv")
    assert set(cases["source"]) == {"scratch", "rec", "threshold"}  # the no-learning reference rows
    assert (cases["dice"].between(0, 1)).all()
    assert (out / "observer_study" / "report.html").is_file()
    assert (results / "XferRecTrainer_n5__nnUNetPlans__2d/fold_0/checkpoint_final.pth").is_file()
    # the pytest session's nnU-Net folders were not touched
    assert not [p for v in NNUNET_VARS for p in Path(nnunet_env[v]).glob("Dataset990_*")]

    again = subprocess.run([NNUNET_XFER, "demo", "--quick", "-o", str(out)], env=_clean_env(),
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert "Traceback" not in again.stderr and report.is_file()


def test_demo_refuses_to_delete_a_folder_it_did_not_write(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep")
    proc = subprocess.run([NNUNET_XFER, "demo", "--quick", "--overwrite", "-o", str(out)],
                          env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "precious.txt" in proc.stderr
    assert (out / "precious.txt").read_text() == "keep"


def test_demo_overwrite_keeps_a_users_file_in_its_own_folder(tmp_path):
    """A demo folder (marker present) with a file the user added: --overwrite refuses, names it."""
    out = tmp_path / "demo"
    (out / "phantom").mkdir(parents=True)
    (out / OUTPUT_MARKER).write_text(json.dumps({"command": "nnunet-xfer demo", "files": [],
                                                 "owned": list(DEMO_OWNED)}))
    (out / "thesis.txt").write_text("keep")
    proc = subprocess.run([NNUNET_XFER, "demo", "--quick", "--overwrite", "-o", str(out)],
                          env=_clean_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "thesis.txt" in proc.stderr and "\n" not in proc.stderr.strip()
    assert (out / "thesis.txt").read_text() == "keep" and (out / "phantom").is_dir()
