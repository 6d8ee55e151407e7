"""No unsafe unpickling on plain nnU-Net commands with our trainers (issue 17 item 4).

``nnUNetv2_train … -tr Xfer* --c`` (and ``--val``) unpickled a planted checkpoint with
``weights_only=False`` and ran it: only ``experiment`` and the SLURM script checked the file
first. Now the trainer opens it with the restricted unpickler and refuses in one line.
``nnUNetv2_predict`` unpickles the checkpoint before any trainer code runs: the start-up hook
(``nnunet_xfer._startup``, installed with the wheel) guards nnU-Net's predictor for ``Xfer*`` runs.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import DATASET_ID, DATASET_NAME, run_cli

RUN = "XferScratchTrainer_n5__nnUNetPlans__2d"


class Planted:
    """A pickle that runs a command when it is loaded."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(path: Path, marker: Path) -> None:
    torch.save({"network_weights": {}, "trainer_name": "XferScratchTrainer_n5",
                "payload": Planted(marker)}, path)


@pytest.fixture
def run_copy(scratch_run, tmp_path, monkeypatch) -> Path:
    """A private ``$nnUNet_results`` holding a copy of the trained scratch run; its run folder."""
    results = tmp_path / "results"
    run = results / DATASET_NAME / RUN
    shutil.copytree(scratch_run.parent, run)
    monkeypatch.setenv("nnUNet_results", str(results))
    return run


@pytest.mark.parametrize("flag, planted", [("--c", "checkpoint_latest.pth"),
                                           ("--val", "checkpoint_final.pth")])
def test_nnunetv2_train_never_unpickles_a_planted_checkpoint(run_copy, tmp_path, flag, planted):
    fold = run_copy / "fold_0"
    if flag == "--c":
        (fold / "checkpoint_final.pth").unlink()  # --c then loads checkpoint_latest.pth
    marker = tmp_path / "payload_ran"
    plant(fold / planted, marker)
    proc = run_cli("nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", "XferScratchTrainer_n5",
                   flag, "-device", "cpu", env={"nnUNet_results": str(run_copy.parents[1])},
                   check=False, timeout=600)
    assert not marker.exists(), "the planted pickle ran"
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("nnunet_xfer: ") and planted in last and "will not be loaded" in last


def test_nnunetv2_train_continues_from_a_genuine_checkpoint(run_copy):
    """The check lets nnU-Net's own checkpoints through (--val on the finished fold)."""
    proc = run_cli("nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", "XferScratchTrainer_n5",
                   "--val", "-device", "cpu", env={"nnUNet_results": str(run_copy.parents[1])},
                   check=False, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_copy / "fold_0" / "validation" / "summary.json").is_file()


def _predict(run_copy: Path, images: Path, out: Path, hook: bool) -> subprocess.CompletedProcess:
    """``nnUNetv2_predict`` as an installed wheel runs it: the start-up hook imported first
    (an editable install or PYTHONPATH has no .pth hook, so the test imports it itself)."""
    code = ("import sys\n"
            + ("import nnunet_xfer._startup\n" if hook else "")
            + "from nnunetv2.inference.predict_from_raw_data import predict_entry_point\n"
            f"sys.argv = ['nnUNetv2_predict', '-i', {str(images)!r}, '-o', {str(out)!r}, '-d', "
            f"'{DATASET_ID}', '-c', '2d', '-f', '0', '-tr', 'XferScratchTrainer_n5', '-device', "
            "'cpu', '-npp', '1', '-nps', '1', '--disable_progress_bar']\n"
            "predict_entry_point()\n")
    env = {**os.environ, "nnUNet_results": str(run_copy.parents[1])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=600)


def test_nnunetv2_predict_never_unpickles_a_planted_checkpoint(run_copy, raw_dataset, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    first = sorted((raw_dataset / "imagesTr").iterdir())[0]
    shutil.copy2(first, images / first.name)
    proc = _predict(run_copy, images, tmp_path / "pred", hook=True)  # genuine: predicted
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(list((tmp_path / "pred").glob("*.nii.gz"))) == 1
    marker = tmp_path / "payload_ran"
    plant(run_copy / "fold_0" / "checkpoint_final.pth", marker)
    proc = _predict(run_copy, images, tmp_path / "pred2", hook=True)
    assert not marker.exists(), "the planted pickle ran"
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("nnunet_xfer: ") and "checkpoint_final.pth will not be loaded" in last


def test_the_startup_hook_guards_only_nnunets_predictor():
    """Importing the hook leaves every other import alone and guards nnUNetPredictor once."""
    code = ("import sys, nnunet_xfer._startup as s\n"
            "import json\n"
            "assert 'nnunetv2.inference.predict_from_raw_data' not in sys.modules\n"
            "from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor as P\n"
            "assert P.initialize_from_trained_model_folder._nnunet_xfer_guarded\n"
            "s.install_predictor_guard()\n"
            "print(sum(isinstance(f, s._PredictorGuardFinder) for f in sys.meta_path))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "1", proc.stderr
