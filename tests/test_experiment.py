"""`nnunet-xfer experiment`: the grid printed, rendered for SLURM (checked with a fake sbatch) and run."""
from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from conftest import DATASET_ID, DATASET_NAME, run_cli
from nnunet_xfer.errors import UserError
from nnunet_xfer.experiment import LOG_NAME, experiment_steps, run_experiment

GRID_ID, GRID_NAME = 887, "Dataset887_Grid"


@pytest.fixture
def grid_dataset(nnunet_env) -> Path:
    """An empty raw dataset folder with a subsets.json (enough for dry-run and SLURM)."""
    folder = Path(nnunet_env["nnUNet_raw"]) / GRID_NAME
    folder.mkdir(exist_ok=True)
    subsets = {"seed": 1, "sizes": [5, 10],
               "folds": {str(f): {"5": [f"c{i}" for i in range(5)],
                                  "10": [f"c{i}" for i in range(10)]} for f in range(4)}}
    (folder / "subsets.json").write_text(json.dumps(subsets))
    return folder


def test_dry_run_lists_the_whole_grid(grid_dataset):
    proc = run_cli("nnunet-xfer", "experiment", "-d", str(GRID_ID), "--sources",
                   "scratch,cls,seg,rec,jigsaw", "--sizes", "5,10", "--folds", "0,1,2,3",
                   "-p", "MyPlans", "--device", "cpu", "--dry-run")
    lines = [l for l in proc.stdout.splitlines() if l and not l.startswith("#")]
    trains = [l for l in lines if l.startswith("nnUNetv2_train ")]
    pretrains = [l for l in lines if l.startswith("nnunet-xfer pretrain ")]
    assert len(trains) == 5 * 2 * 4
    assert len(set(trains)) == len(trains)
    assert sorted(l.split(" -s ")[1].split()[0] for l in pretrains) == ["cls", "jigsaw", "rec", "seg"]
    assert "nnUNetv2_train 887 2d 3 -tr XferJigsawTrainer_n10 -p MyPlans -device cpu" in trains
    # order: pretraining, then trainings, then evaluate, then report
    kinds = [l.split()[1] if l.startswith("nnunet-xfer") else "train" for l in lines]
    assert kinds == ["pretrain"] * 4 + ["train"] * 40 + ["evaluate", "report"]
    # nnU-Net-plans cls/seg pretraining needs user data: a placeholder the user fills
    assert '--data "${NNUNET_XFER_CLS_DATA}"' in pretrains[0]
    assert "--data" not in next(l for l in pretrains if " -s rec " in l)
    assert "NNUNET_XFER_SEG_DATA" in proc.stdout.splitlines()[-1]


def test_scratch_only_has_no_pretraining_and_default_plans_omit_p(grid_dataset):
    _, steps = experiment_steps(str(GRID_ID), sources=["scratch"], sizes=[5], folds=[0, 2])
    assert [s.kind for s in steps] == ["train", "train", "evaluate", "report"]
    assert "-p" not in steps[0].argv and steps[0].needs == ()


def test_bad_grids_are_user_errors(grid_dataset, capsys):
    with pytest.raises(UserError, match="unknown source task imagenet"):
        experiment_steps(str(GRID_ID), sources=["scratch", "imagenet"], sizes=[5], folds=[0])
    with pytest.raises(UserError, match="n=125"):
        experiment_steps(str(GRID_ID), sources=["scratch"], sizes=[5, 125], folds=[0])
    with pytest.raises(UserError, match="not found"):
        experiment_steps("886", sources=["scratch"], sizes=[5], folds=[0])
    proc = run_cli("nnunet-xfer", "experiment", "-d", "886", "--dry-run", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def _fake_bin(folder: Path) -> Path:
    """A fake ``sbatch`` that records its arguments and the job script it reads on stdin."""
    folder.mkdir()
    sbatch = folder / "sbatch"
    sbatch.write_text('#!/bin/bash\nn=$(ls "$SBATCH_LOG" | grep -c args_)\n'
                      'printf "%s\\n" "$@" > "$SBATCH_LOG/args_$n"\n'
                      'cat > "$SBATCH_LOG/job_$n"\necho "$((4200 + n));cluster"\n')
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
    return folder


def test_slurm_script_chains_pretrain_array_and_evaluation(grid_dataset, tmp_path, nnunet_env):
    script = tmp_path / "submit.sh"
    run_experiment(str(GRID_ID), sources=["scratch", "rec"], sizes=[5, 10], folds=[0, 1],
                   mode="slurm", slurm_file=script, slurm_args="--partition=gpu --time=02:00:00")
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    with pytest.raises(UserError, match="--overwrite"):
        run_experiment(str(GRID_ID), sources=["scratch"], sizes=[5], folds=[0], mode="slurm",
                       slurm_file=script)

    log = tmp_path / "sbatch_log"
    log.mkdir()
    env = {**os.environ, "PATH": f"{_fake_bin(tmp_path / 'bin')}:{os.environ['PATH']}",
           "SBATCH_LOG": str(log)}
    proc = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    args = [(log / f"args_{i}").read_text().split() for i in range(3)]
    jobs = [(log / f"job_{i}").read_text() for i in range(3)]
    assert not (log / "args_3").exists()
    assert "--dependency=afterok:4200" in args[1]
    assert "--dependency=afterany:4201" in args[2]
    assert "#SBATCH --array=0-7" in jobs[1]          # 2 sources x 2 sizes x 2 folds
    assert all("#SBATCH --partition=gpu" in j and "#SBATCH --time=02:00:00" in j for j in jobs)
    assert "pretrain -d 887 -s rec" in jobs[0] and "nnUNetv2_train" not in jobs[0]
    assert "nnunet-xfer evaluate" in jobs[2] and "nnunet-xfer report" in jobs[2]
    assert "training job array: 4201 (8 tasks)" in proc.stdout

    # Each array task runs its own training; finished runs are skipped, interrupted ones get --c.
    job = tmp_path / "train_job.sh"
    job.write_text(jobs[1])
    results = Path(nnunet_env["nnUNet_results"]) / GRID_NAME
    fold = lambda tr, f: results / f"{tr}__nnUNetPlans__2d" / f"fold_{f}"  # noqa: E731
    fold("XferScratchTrainer_n5", 1).mkdir(parents=True)
    (fold("XferScratchTrainer_n5", 1) / "checkpoint_latest.pth").write_bytes(b"")
    fold("XferRecTrainer_n10", 1).mkdir(parents=True)
    (fold("XferRecTrainer_n10", 1) / "checkpoint_final.pth").write_bytes(b"")
    calls = tmp_path / "calls"
    fake = f'nnUNetv2_train() {{ echo "$*" >> {calls}; }}; export -f nnUNetv2_train; bash {job}'
    for task in range(8):
        r = subprocess.run(["bash", "-c", fake], env={**env, "SLURM_ARRAY_TASK_ID": str(task)},
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    ran = calls.read_text().splitlines()
    assert len(ran) == 7
    assert "887 2d 1 -tr XferScratchTrainer_n5 -device cuda --c" in ran
    assert "887 2d 0 -tr XferRecTrainer_n10 -device cuda" in ran
    assert not any("2d 1 -tr XferRecTrainer_n10" in r for r in ran)


def test_run_fails_missing_source_data_clearly_and_blocks_its_trainings(grid_dataset, monkeypatch,
                                                                        nnunet_env):
    monkeypatch.delenv("NNUNET_XFER_CLS_DATA", raising=False)
    with pytest.raises(UserError, match="failed or were blocked"):
        run_experiment(str(GRID_ID), sources=["cls"], sizes=[5], folds=[0], mode="run",
                       device="cpu")
    log = (Path(nnunet_env["nnUNet_results"]) / GRID_NAME / LOG_NAME).read_text()
    assert "FAIL pretrain cls: $NNUNET_XFER_CLS_DATA is not set" in log
    assert "BLOCKED train XferClsTrainer_n5 fold 0: needs pretrain cls" in log


def test_run_tiny_grid_then_second_run_skips(preprocessed_dataset, nnunet_env):
    """2 real nnU-Net runs (scratch n=5 and n=10, fold 0, 1 epoch x 2 iterations), then a rerun."""
    results = Path(nnunet_env["nnUNet_results"]) / DATASET_NAME
    args = ("nnunet-xfer", "experiment", "-d", str(DATASET_ID), "--sources", "scratch",
            "--sizes", "5,10", "--folds", "0", "--device", "cpu", "--run")
    first = run_cli(*args, check=False)
    finals = [results / f"XferScratchTrainer_n{n}__nnUNetPlans__2d/fold_0/checkpoint_final.pth"
              for n in (5, 10)]
    assert all(f.is_file() for f in finals), first.stdout + first.stderr
    mtimes = [f.stat().st_mtime_ns for f in finals]
    log = results / LOG_NAME
    assert "OK train XferScratchTrainer_n10 fold 0" in log.read_text()
    second = run_cli(*args, check=False)
    assert [f.stat().st_mtime_ns for f in finals] == mtimes
    text = log.read_text().split("=== experiment")[-1]
    assert "SKIP train XferScratchTrainer_n5 fold 0" in text
    assert "SKIP train XferScratchTrainer_n10 fold 0" in text
    assert "RUN train" not in text
    assert "2 of 4 already finished, skipped" in second.stdout + second.stderr
    assert f"report: {results / 'nnunet_xfer_evaluation' / 'report.html'}" in second.stdout
