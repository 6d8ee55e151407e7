"""`nnunet-xfer experiment`: the grid printed, rendered for SLURM (checked with a fake sbatch) and run."""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DATASET_ID, DATASET_NAME, fake_results_tree, run_cli
from nnunet_xfer.cli import build_parser
from nnunet_xfer.errors import UserError
from nnunet_xfer.experiment import Grid, dry_run, format_table, results_table, run, write_slurm
from nnunet_xfer.splits import verify_dataset
from nnunet_xfer.layout import EXPERIMENT_LOG as LOG_NAME
from nnunet_xfer.trainers import trainer_environment, trainer_folder


def experiment_steps(dataset: str, **kw):
    """(dataset name, steps) of a grid, as ``--dry-run`` builds them."""
    plan = dry_run(Grid(dataset, **kw))
    return plan.name, plan.steps

GRID_ID, GRID_NAME = 887, "Dataset887_Grid"


@pytest.fixture
def grid_dataset(nnunet_env) -> Path:
    """An empty raw dataset folder with 4 folds and their subsets (enough for dry-run and SLURM)."""
    folder = Path(nnunet_env["nnUNet_raw"]) / GRID_NAME
    folder.mkdir(exist_ok=True)
    shared, held_out = [f"c{i}" for i in range(30)], [f"v{f}" for f in range(4)]
    splits = [{"train": sorted(shared + [v for v in held_out if v != f"v{f}"]), "val": [f"v{f}"]}
              for f in range(4)]
    (folder / "splits_final.json").write_text(json.dumps(splits))
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
    trains = [l for l in lines if "nnUNetv2_train " in l]
    assert len(trains) == 5 * 2 * 4
    assert len(set(trains)) == len(trains)
    # cls/seg once for every fold; rec and jigsaw (they read the dataset's images) once per fold
    assert sorted(l.split(" -s ")[1].split()[0] for l in pretrains) == \
        ["cls"] + ["jigsaw"] * 4 + ["rec"] * 4 + ["seg"]
    assert "nnunet-xfer pretrain -d 887 -s rec -p MyPlans -c 2d --fold 3 --device cpu" in pretrains
    assert not any("--fold" in l for l in pretrains if " -s cls " in l or " -s seg " in l)
    assert ("nnUNet_xfer_pretrain_scope=fold nnUNetv2_train 887 2d 3 -tr XferJigsawTrainer_n10 "
            "-p MyPlans -device cpu") in trains
    assert "nnUNetv2_train 887 2d 3 -tr XferSegTrainer_n10 -p MyPlans -device cpu" in trains
    # order: pretraining, then trainings, then evaluate, then report
    kinds = [l.split()[1] if l.startswith("nnunet-xfer") else "train" for l in lines]
    assert kinds == ["pretrain"] * 10 + ["train"] * 40 + ["evaluate", "report"]
    # nnU-Net-plans cls/seg pretraining needs user data: a placeholder the user fills
    assert '--data "${NNUNET_XFER_CLS_DATA}"' in pretrains[0]
    assert "--data" not in next(l for l in pretrains if " -s rec " in l)
    assert "NNUNET_XFER_SEG_DATA" in proc.stdout.splitlines()[-1]


def test_scratch_only_has_no_pretraining_and_default_plans_omit_p(grid_dataset):
    _, steps = experiment_steps(str(GRID_ID), sources=["scratch"], sizes=[5], folds=[0, 2])
    assert [s.kind for s in steps] == ["train", "train", "evaluate", "report"]
    assert "-p" not in steps[0].argv and steps[0].needs == ()


def test_bad_grids_are_user_errors(grid_dataset, capsys):
    with pytest.raises(UserError, match="unknown source task 'imagenet'"):
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


@pytest.mark.slow
def test_slurm_script_chains_pretrain_array_and_evaluation(grid_dataset, tmp_path, nnunet_env):
    script = tmp_path / "submit.sh"
    written = write_slurm(Grid(str(GRID_ID), sources=["scratch", "rec"], sizes=[5, 10],
                               folds=[0, 1]), script, slurm_args="--partition=gpu --time=02:00:00")
    assert written.path == script and written.n_train == 8
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    with pytest.raises(UserError, match="--overwrite"):
        write_slurm(Grid(str(GRID_ID), sources=["scratch"], sizes=[5], folds=[0]), script)

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
    assert "pretrain -d 887 -s rec -p nnUNetPlans -c 2d --fold 0" in jobs[0]
    assert "pretrain -d 887 -s rec -p nnUNetPlans -c 2d --fold 1" in jobs[0]
    assert "nnUNetv2_train" not in jobs[0]
    assert "nnunet-xfer evaluate" in jobs[2] and "nnunet-xfer report" in jobs[2]
    assert "training job array: 4201 (8 tasks)" in proc.stdout

    # Each array task runs its own training: finished runs (validation/summary.json) are skipped,
    # a final checkpoint without validation gets --val, an interrupted run --c (after the check).
    job = tmp_path / "train_job.sh"
    job.write_text(jobs[1])
    results = Path(nnunet_env["nnUNet_results"]) / GRID_NAME
    fold = lambda tr, f: results / f"{tr}__nnUNetPlans__2d" / f"fold_{f}"  # noqa: E731
    plain = {"network_weights": {}, "current_epoch": 3, "logging": {"x": [np.float32(0.5)]}}
    fold("XferScratchTrainer_n5", 1).mkdir(parents=True)
    torch.save(plain, fold("XferScratchTrainer_n5", 1) / "checkpoint_latest.pth")
    (fold("XferRecTrainer_n10", 1) / "validation").mkdir(parents=True)
    (fold("XferRecTrainer_n10", 1) / "checkpoint_final.pth").write_bytes(b"")
    (fold("XferRecTrainer_n10", 1) / "validation" / "summary.json").write_text("{}")
    fold("XferScratchTrainer_n10", 0).mkdir(parents=True)
    torch.save(plain, fold("XferScratchTrainer_n10", 0) / "checkpoint_final.pth")
    calls = tmp_path / "calls"
    fake = (f'nnUNetv2_train() {{ echo "${{nnUNet_xfer_pretrain_scope:-}} $*" >> {calls}; }}; '
            f'export -f nnUNetv2_train; bash {job}')
    for task in range(8):
        r = subprocess.run(["bash", "-c", fake], env={**env, "SLURM_ARRAY_TASK_ID": str(task)},
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    ran = calls.read_text().splitlines()
    assert len(ran) == 7
    assert " 887 2d 1 -tr XferScratchTrainer_n5 -device cuda --c" in ran
    assert " 887 2d 0 -tr XferScratchTrainer_n10 -device cuda --val" in ran
    assert "fold 887 2d 0 -tr XferRecTrainer_n10 -device cuda" in ran
    assert not any("2d 1 -tr XferRecTrainer_n10" in r for r in ran)


def test_run_fails_missing_source_data_clearly_and_blocks_its_trainings(grid_dataset, monkeypatch,
                                                                        nnunet_env):
    monkeypatch.delenv("NNUNET_XFER_CLS_DATA", raising=False)
    outcome = run(Grid(str(GRID_ID), sources=["cls"], sizes=[5], folds=[0], device="cpu"))
    assert "failed or were blocked" in outcome.failure()
    assert [r.status for r in outcome.results] == ["failed", "blocked", "failed", "blocked"]
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
    # the results table: one row per source and n, from evaluate's summary.json
    assert re.search(r"^scratch\s+5\s+\d+( \(\d+ failed\))?\s+[01]\.\d{3}\s+(\d+\.\d\d|–)\s+(yes|no)\s+–$",
                     second.stdout, re.M), second.stdout
    assert re.search(r"^threshold \(no learning\)\s+–\s+\d+\s.*\(baseline\)", second.stdout, re.M)

    # Killed during validation: checkpoint_final.pth exists, validation/summary.json does not.
    # The rerun validates the genuine checkpoint with nnU-Net's --val instead of skipping it.
    summary = finals[1].parent / "validation" / "summary.json"
    summary.unlink()
    third = run_cli(*args, check=False)
    assert third.returncode == 0, third.stdout + third.stderr
    text = log.read_text().split("=== experiment")[-1]
    assert "SKIP train XferScratchTrainer_n5 fold 0" in text
    assert re.search(r"RUN train XferScratchTrainer_n10 fold 0: .*nnUNetv2_train 501 2d 0 "
                     r"-tr XferScratchTrainer_n10 -device cpu --val$", text, re.M)
    assert summary.is_file() and finals[1].stat().st_mtime_ns == mtimes[1]


def test_pretraining_is_per_fold_and_each_training_needs_its_own_fold(grid_dataset):
    _, steps = experiment_steps(str(GRID_ID), sources=["rec", "cls"], sizes=[5], folds=[0, 2])
    by_name = {s.name: s for s in steps}
    assert [s.name for s in steps if s.kind == "pretrain"] == \
        ["pretrain rec fold 0", "pretrain rec fold 2", "pretrain cls"]
    assert by_name["pretrain rec fold 2"].done_file.endswith(
        "/nnunet_xfer_pretrained/nnUNetPlans__2d/fold_2/rec.pth")
    assert by_name["pretrain rec fold 2"].done_file.startswith("${nnUNet_results}/Dataset887_Grid/")
    assert by_name["train XferRecTrainer_n5 fold 2"].needs == ("pretrain rec fold 2",)
    assert by_name["train XferRecTrainer_n5 fold 2"].env == (("nnUNet_xfer_pretrain_scope", "fold"),)
    assert by_name["train XferClsTrainer_n5 fold 2"].needs == ("pretrain cls",)
    assert by_name["train XferClsTrainer_n5 fold 2"].env == ()
    # a training is finished when nnU-Net validated, not when checkpoint_final.pth exists
    train = by_name["train XferRecTrainer_n5 fold 0"]
    assert train.done_file.endswith("XferRecTrainer_n5__nnUNetPlans__2d/fold_0/validation/summary.json")
    assert [(Path(r.file).name, r.flag, r.check) for r in train.resume] == \
        [("checkpoint_final.pth", "--val", True), ("checkpoint_latest.pth", "--c", True)]


def test_pretrain_scope_all_keeps_one_shared_step(grid_dataset):
    _, steps = experiment_steps(str(GRID_ID), sources=["jigsaw"], sizes=[5], folds=[0, 1],
                                pretrain_scope="all")
    pre = [s for s in steps if s.kind == "pretrain"]
    assert len(pre) == 1 and pre[0].argv[-4:] == ("--scope", "all", "--device", "cuda")
    assert pre[0].done_file.endswith("nnUNetPlans__2d/jigsaw.pth")
    trains = [s for s in steps if s.kind == "train"]
    assert all(s.needs == ("pretrain jigsaw",) for s in trains)
    assert all(s.env == (("nnUNet_xfer_pretrain_scope", "all"),) for s in trains)
    with pytest.raises(UserError, match="--pretrain-scope 'some'"):
        Grid(str(GRID_ID), pretrain_scope="some")


def test_arch_plans_the_variant_and_runs_every_source_on_it(grid_dataset):
    proc = run_cli("nnunet-xfer", "experiment", "-d", str(GRID_ID), "--arch", "unet_resnet34",
                   "--sizes", "5", "--folds", "0", "--dry-run")
    lines = [l for l in proc.stdout.splitlines() if l and not l.startswith("#")]
    assert lines[0] == "nnunet-xfer plan -d 887 --arch unet_resnet34"
    pretrains = [l for l in lines if l.startswith("nnunet-xfer pretrain ")]
    # torchvision plans: cls/seg import torchvision's weights (no --data), rec/jigsaw pretrain
    # the same network per fold
    assert pretrains == [
        "nnunet-xfer pretrain -d 887 -s cls -p nnUNetPlans_unet_resnet34 -c 2d --device cuda",
        "nnunet-xfer pretrain -d 887 -s seg -p nnUNetPlans_unet_resnet34 -c 2d --device cuda",
        "nnunet-xfer pretrain -d 887 -s rec -p nnUNetPlans_unet_resnet34 -c 2d --fold 0 --device cuda",
        "nnunet-xfer pretrain -d 887 -s jigsaw -p nnUNetPlans_unet_resnet34 -c 2d --fold 0 --device cuda"]
    trains = [l for l in lines if "nnUNetv2_train" in l]
    assert len(trains) == 5 and all("-p nnUNetPlans_unet_resnet34 -device cuda" in l for l in trains)
    assert "-p nnUNetPlans_unet_resnet34" in next(l for l in lines if l.startswith("nnunet-xfer evaluate"))
    assert "NNUNET_XFER" not in proc.stdout
    _, steps = experiment_steps(str(GRID_ID), arch="unet_resnet34", sizes=[5], folds=[0])
    assert steps[0].done_file == "${nnUNet_preprocessed}/Dataset887_Grid/nnUNetPlans_unet_resnet34.json"
    assert all(s.needs[0] == "plan unet_resnet34" for s in steps if s.kind in ("pretrain", "train"))
    with pytest.raises(UserError, match="unknown architecture 'vgg'"):
        Grid(str(GRID_ID), arch="vgg")


def test_extended_grid_imports_published_checkpoints_on_their_network(grid_dataset):
    """--sources …,meddino on --arch unetr_vit_b16: the import takes --weights from a variable
    (never --iterations), its trainers are XferMeddinoTrainer_n<N>; the default grid stays the
    paper's; a checkpoint that does not fit --arch is refused in one line."""
    proc = run_cli("nnunet-xfer", "experiment", "-d", str(GRID_ID), "--arch", "unetr_vit_b16",
                   "--sources", "scratch,rec,jigsaw,meddino", "--sizes", "5", "--folds", "0",
                   "--pretrain-iterations", "7", "--dry-run")
    lines = [l for l in proc.stdout.splitlines() if l and not l.startswith("#")]
    assert lines[0] == "nnunet-xfer plan -d 887 --arch unetr_vit_b16"
    pretrains = [l for l in lines if l.startswith("nnunet-xfer pretrain ")]
    assert ('nnunet-xfer pretrain -d 887 -s meddino -p nnUNetPlans_unetr_vit_b16 -c 2d --device '
            'cuda --weights "${NNUNET_XFER_MEDDINO_WEIGHTS}"') in pretrains
    assert all("--iterations 7" in l for l in pretrains if " -s meddino " not in l)
    assert "nnUNetv2_train 887 2d 0 -tr XferMeddinoTrainer_n5 -p nnUNetPlans_unetr_vit_b16 " \
           "-device cuda" in lines
    assert "NNUNET_XFER_MEDDINO_WEIGHTS" in proc.stdout.splitlines()[-1]
    assert Grid("887").sources == ("scratch", "cls", "seg", "rec", "jigsaw")
    bad = run_cli("nnunet-xfer", "experiment", "-d", str(GRID_ID), "--arch", "unetr_vit_b16",
                  "--sources", "scratch,dinov2", "--dry-run", check=False)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "-s dinov2" in bad.stderr and "unetr_vit_b14" in bad.stderr
    with pytest.raises(UserError, match="radimagenet.*--arch unet_resnet50.*not plans nnUNetPlans"):
        experiment_steps(str(GRID_ID), sources=("scratch", "radimagenet"), sizes=[5], folds=[0])
    for source, arch in (("radimagenet", "unet_resnet50"), ("dinov2", "unetr_vit_b14")):
        _, steps = experiment_steps(str(GRID_ID), arch=arch, sources=("scratch", source),
                                    sizes=[5], folds=[0])
        (imp,) = [s for s in steps if s.kind == "pretrain"]
        variable = f"NNUNET_XFER_{source.upper()}_WEIGHTS"
        assert imp.argv[-2:] == ("--weights", f"${{{variable}}}") and f"nnUNetPlans_{arch}" in imp.argv
        assert f"train Xfer{source.capitalize()}Trainer_n5 fold 0" in {s.name for s in steps}
    with pytest.raises(UserError, match="nnUNetTrainer"):
        Grid(str(GRID_ID), sources=("scratch", "nnunet"))
    with pytest.raises(UserError, match="'threshold' is a no-learning reference"):
        Grid(str(GRID_ID), sources=("scratch", "threshold"))


def test_cli_builds_the_grid_with_the_grid_defaults(grid_dataset):
    from nnunet_xfer.cli import _grid
    a = build_parser().parse_args(["experiment", "-d", "887", "--dry-run"])
    assert _grid(a) == Grid("887")
    a = build_parser().parse_args(["experiment", "-d", "887", "--run", "--sizes", "5",
                                   "--sources", "rec, scratch", "--pretrain-scope", "all"])
    assert _grid(a) == Grid("887", sizes=(5,), sources=("rec", "scratch"), pretrain_scope="all")


def test_dry_run_lists_sizes_below_five_when_asked(grid_dataset):
    subsets = json.loads((grid_dataset / "subsets.json").read_text())
    subsets["sizes"] = [1, 2, 3, 5, 10]
    for per in subsets["folds"].values():  # nested, as convert --sizes 1,2,3,5,10 writes them
        per.update({str(n): [f"c{i}" for i in range(n)] for n in (1, 2, 3)})
    (grid_dataset / "subsets.json").write_text(json.dumps(subsets))
    proc = run_cli("nnunet-xfer", "experiment", "-d", str(GRID_ID), "--sources", "scratch,rec",
                   "--sizes", "1,2,3,5", "--folds", "0", "--dry-run")
    trains = [l for l in proc.stdout.splitlines() if "nnUNetv2_train " in l]
    assert [l.split(" -tr ")[1].split()[0] for l in trains] == [
        f"Xfer{s}Trainer_n{n}" for s in ("Scratch", "Rec") for n in (1, 2, 3, 5)]
    with pytest.raises(UserError, match=r"--sizes 7: no Xfer trainer has that size"):
        experiment_steps(str(GRID_ID), sources=["scratch"], sizes=[1, 7], folds=[0])
    with pytest.raises(UserError, match=r"n=4 is not among the sizes chosen at convert"):
        experiment_steps(str(GRID_ID), sources=["scratch"], sizes=[4], folds=[0])


def test_sizes_error_names_convert_or_the_fold_as_the_cause(grid_dataset):
    with pytest.raises(UserError, match=r"n=25 is not among the sizes chosen at convert .*--sizes 5,10,25"):
        verify_dataset(GRID_NAME, [0], [5, 25])
    subsets = json.loads((grid_dataset / "subsets.json").read_text())
    subsets["sizes"] = [5, 10, 125]
    (grid_dataset / "subsets.json").write_text(json.dumps(subsets))
    with pytest.raises(UserError, match=r"n=125 exceeds the 33 training cases of fold 0"):
        verify_dataset(GRID_NAME, [0, 1], [5, 125])


def test_trainer_environment_keeps_the_users_own_trainer_folders():
    env = trainer_environment({"nnUNet_extTrainer": f"/mine{os.pathsep}{trainer_folder()}"})
    assert env["nnUNet_extTrainer"] == f"{trainer_folder()}{os.pathsep}/mine"
    assert trainer_environment({})["nnUNet_extTrainer"] == str(trainer_folder())


def test_results_table_reads_evaluate_summary(tmp_path):
    summary = {"groups": [
        {"source": "scratch", "size_tag": "5", "plans": "nnUNetPlans", "configuration": "2d",
         "n": 5, "n_cases": 10, "n_failed": 1,
         "metrics": {"dice": {"mean": 0.8123}, "rms_dta_mm": {"mean": 1.234}}},
        {"source": "rec", "size_tag": "5", "plans": "nnUNetPlans", "configuration": "2d",
         "n": 5, "n_cases": 10, "n_failed": 0,
         "metrics": {"dice": {"mean": 0.9}, "rms_dta_mm": {"n": 0}}}],
        "observers": {"names": ["a", "b", "c"], "cases": ["x", "y"],
                      "band": {"dice": [0.85, 0.91], "rms_dta_mm": [0.9, 1.4]}},
        "human_level": [{"source": "rec", "size_tag": "5", "plans": "nnUNetPlans",
                         "configuration": "2d", "human_level": True},
                        {"source": "scratch", "size_tag": "5", "plans": "nnUNetPlans",
                         "configuration": "2d", "human_level": False}]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    table = results_table(tmp_path)
    assert [(r.source, r.human_level, r.rms_dta_mm) for r in table.rows] == \
        [("scratch", False, 1.234), ("rec", True, None)]
    text = format_table(table).splitlines()
    # no threshold rows (an older evaluate): "beats threshold" is "–"
    assert text[1].split() == ["scratch", "5", "10", "(1", "failed)", "0.812", "1.23", "–", "no"]
    assert text[2].split() == ["reconstruction", "5", "10", "0.900", "–", "–", "yes"]
    assert "observers (3, 2 cases, each vs the reference): Dice 0.850–0.910, RMS DTA 0.90–1.40 mm" \
        in text
    with pytest.raises(UserError, match="run `nnunet-xfer evaluate` first"):
        results_table(tmp_path / "none")


def test_results_table_of_a_real_evaluation(tmp_path, monkeypatch):
    """The table read from what `nnunet-xfer evaluate --observers` writes (fake results tree)."""
    env = fake_results_tree(tmp_path)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    run_cli("nnunet-xfer", "evaluate", "-d", "990", "--observers", str(tmp_path / "observers"),
            env=env)
    evaluation = Path(env["nnUNet_results"]) / "Dataset990_Fake" / "nnunet_xfer_evaluation"
    summary = json.loads((evaluation / "summary.json").read_text())
    table = results_table(evaluation)
    assert [(r.source, r.n_cases, r.n_failed) for r in table.rows] == \
        [(g["source"], g["n_cases"], g["n_failed"]) for g in summary["groups"]]
    verdicts = {(r.source, r.n): r.human_level for r in table.rows}
    # the 0.5 px nnU-Net run disagrees with the 1 px observers less than they do with each other
    # (human level even on 6 cases and 3 observers); the 2.5 px scratch run does not; the table
    # states the rule with its numbers
    assert verdicts[("scratch", 5)] is False and verdicts[("nnunet", 6)] is True
    j10 = next(r for r in table.rows if r.source == "jigsaw" and r.n == 10)
    assert j10.dice == pytest.approx(summary["groups"][3]["metrics"]["dice"]["mean"])
    text = format_table(table)
    # the failed case enters RMS DTA at its image diagonal (145 mm): two digits before the point
    # (the fake images hold only the ring in muscle HU: no model beats the threshold baseline)
    assert re.search(r"^jigsaw\s+10\s+11 \(1 failed\)\s+0\.\d{3}\s+\d\d\.\d\d\s+no\s+(yes|no)$",
                     text, re.M)
    assert re.search(r"^nnU-Net default\s+6\s+12\s+0\.\d{3}\s+\d\.\d\d\s+no\s+yes$", text, re.M)
    assert re.search(r"^threshold \(no learning\)\s+–\s+12\s.*\s\(baseline\)\s+–$", text, re.M)
    assert "  jigsaw n=10 does not beat it (Dice " in text
    assert summary["verdict_rule"] in text and "6 case(s) and 3 observer(s)" in text
    lo, hi = summary["observers"]["band"]["dice"]
    assert f"observers (3, 6 cases, each vs the reference): Dice {lo:.3f}–{hi:.3f}" in text
