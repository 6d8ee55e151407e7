"""Faults and hostile files against the experiment runner (issue: nothing deleted, lost or run).

Planted and truncated checkpoints where ``--c`` / ``--val`` would make nnU-Net unpickle them, the
finished rule (``validation/summary.json``), the one-runner lock, SIGTERM/SIGINT/SIGKILL of the
runner, and the same rules in the SLURM script. nnU-Net is replaced by a fake command (a shell
script that records its arguments) except where a real checkpoint is needed.
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from nnunet_xfer.errors import UserError
from nnunet_xfer.experiment import Grid, grid_steps, run, run_steps, write_slurm
from nnunet_xfer.experiment import runner
from nnunet_xfer.experiment.checkpoints import check_checkpoint
from nnunet_xfer.experiment.lock import exclusive_lock
from nnunet_xfer.layout import DatasetLayout, validation_summary
from nnunet_xfer.trainers import trainer_environment

ROOT = Path(__file__).resolve().parents[2]
DS_ID, DS_NAME = 889, "Dataset889_Faults"
TRAINER = "XferScratchTrainer_n5"

# ---------------------------------------------------------------- fixtures and helpers

#: Fake ``nnUNetv2_train``: records "<scope> <args>" in $FAKE_CALLS; FAKE_MODE=finish writes the
#: fold's validation/summary.json, =exit0 writes nothing, =sleep starts a grandchild and waits,
#: =stubborn ignores SIGTERM while it waits, =exec becomes a long sleep itself.
FAKE_TRAIN = r'''#!/bin/bash
echo "${nnUNet_xfer_pretrain_scope:-} $*" >> "$FAKE_CALLS"
fold="$nnUNet_results/Dataset889_Faults/$5__nnUNetPlans__2d/fold_$3"
case "${FAKE_MODE:-finish}" in
  finish) mkdir -p "$fold/validation"; echo '{}' > "$fold/validation/summary.json";;
  exit0) ;;
  sleep) sleep 1000 & echo "$$ $!" > "$FAKE_PIDS"; wait;;
  stubborn) trap '' TERM; sleep 1000 & echo "$$ $!" > "$FAKE_PIDS"; wait; wait;;
  exec) echo "$$" > "$FAKE_PIDS"; exec sleep 1000;;
esac
'''

#: Runs `nnunet-xfer` with the fake commands in place of nnU-Net's and a short grace period.
CLI_WITH_FAKES = r'''
import os, sys
from nnunet_xfer.experiment import runner
runner.GRACE_SECONDS = float(sys.argv[1])
fakes = sys.argv[2]
runner.executable = lambda n: os.path.join(fakes, n) if os.path.exists(os.path.join(fakes, n)) else n
from nnunet_xfer.cli import main
sys.exit(main(sys.argv[3:]))
'''


class Planted:
    """Unpickling this runs a shell command (what a planted checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class Custom:
    """An object of a class nnU-Net's checkpoints never hold."""


def plain_checkpoint() -> dict:
    """What nnU-Net's save_checkpoint holds: tensors, plain containers, numpy scalars, a device."""
    return {"network_weights": {"w": torch.zeros(2, 2)}, "optimizer_state": {"state": {}},
            "logging": {"train_losses": [np.float32(0.5)], "lrs": [0.01],
                        "dice": [[np.float64(0.7)]]},
            "_best_ema": np.float32(0.4), "current_epoch": 3,
            "init_args": {"fold": 0, "device": torch.device("cpu"), "plans": {"a": [1, 2]}},
            "trainer_name": TRAINER, "inference_allowed_mirroring_axes": (0, 1)}


def write_payload(path: Path, kind: str, marker: Path) -> None:
    """A checkpoint file of one hostile or broken kind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "planted":
        torch.save({"network_weights": {}, "x": Planted(marker)}, path)
    elif kind == "legacy_pickle":
        path.write_bytes(pickle.dumps({"network_weights": {}, "x": Planted(marker)}))
    elif kind == "custom_class":
        torch.save({"network_weights": {}, "x": Custom()}, path)
    elif kind == "truncated":
        torch.save(plain_checkpoint(), path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "not_a_checkpoint":
        torch.save([1, 2, 3], path)
    else:
        raise ValueError(kind)


@pytest.fixture
def faults_env(tmp_path, monkeypatch) -> dict:
    """nnU-Net folders of this test with Dataset889_Faults (subsets for n=5) and a fake nnU-Net."""
    roots = {v: tmp_path / v for v in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for v, root in roots.items():
        (root / DS_NAME).mkdir(parents=True)
        monkeypatch.setenv(v, str(root))
    subsets = {"seed": 1, "sizes": [5], "folds": {str(f): {"5": [f"c{i}" for i in range(5)]}
                                                  for f in range(2)}}
    (roots["nnUNet_raw"] / DS_NAME / "subsets.json").write_text(json.dumps(subsets))
    train = [f"c{i}" for i in range(5)]  # two folds whose validation cases are v0 / v1
    splits = [{"train": sorted(train + [f"v{1 - f}"]), "val": [f"v{f}"]} for f in range(2)]
    (roots["nnUNet_raw"] / DS_NAME / "splits_final.json").write_text(json.dumps(splits))
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    for name, text in (("nnUNetv2_train", FAKE_TRAIN), ("nnunet-xfer", "#!/bin/bash\nexit 0\n")):
        (fakes / name).write_text(text)
        (fakes / name).chmod(0o755)
    calls, pids = tmp_path / "calls", tmp_path / "pids"
    monkeypatch.setenv("FAKE_CALLS", str(calls))
    monkeypatch.setenv("FAKE_PIDS", str(pids))
    monkeypatch.setattr(runner, "executable", lambda n: str(fakes / n) if (fakes / n).exists() else n)
    return {"fakes": fakes, "calls": calls, "pids": pids, "marker": tmp_path / "PWNED",
            "tmp": tmp_path, "results": roots["nnUNet_results"] / DS_NAME}


def fold_folder(fold: int = 0, trainer: str = TRAINER) -> Path:
    return DatasetLayout(DS_NAME).fold_folder(trainer, fold)


def train_step(fold: int = 0, **grid):
    """The real training step the experiment builds for (scratch, n=5, fold)."""
    g = Grid(str(DS_ID), sources=grid.pop("sources", ("scratch",)), sizes=(5,), folds=(fold,),
             device="cpu", **grid)
    return [s for s in grid_steps(g, DS_NAME, torchvision=False) if s.kind == "train"]


def calls(env: dict) -> list[str]:
    return env["calls"].read_text().splitlines() if env["calls"].exists() else []


def run_train(env: dict, fold: int = 0):
    steps = train_step(fold)
    return run_steps(steps, env["tmp"] / "run.log", env=trainer_environment(), desc="test")[0]


def pid_gone(pid: int, timeout: float = 10.0) -> bool:
    """True once ``pid`` no longer exists (zombies of other parents count as gone)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def start_cli(env: dict, *args: str, grace: float = 2.0) -> subprocess.Popen:
    """`nnunet-xfer experiment … --run` with the fakes, in the background."""
    return subprocess.Popen(
        [sys.executable, "-c", CLI_WITH_FAKES, str(grace), str(env["fakes"]), "experiment",
         "-d", str(DS_ID), "--sources", "scratch", "--sizes", "5", "--folds", "0",
         "--device", "cpu", "--run", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, timeout: float = 60.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and path.read_text().strip():
            return path.read_text()
        time.sleep(0.1)
    raise AssertionError(f"{path} never appeared")


# ---------------------------------------------------------------- hostile checkpoints

@pytest.mark.parametrize("name", ["checkpoint_latest.pth", "checkpoint_final.pth"])
@pytest.mark.parametrize("kind", ["planted", "legacy_pickle", "custom_class", "truncated", "empty",
                                  "not_a_checkpoint"])
def test_hostile_or_broken_checkpoint_is_refused_not_unpickled(faults_env, name, kind):
    path = fold_folder() / name
    write_payload(path, kind, faults_env["marker"])
    result = run_train(faults_env)
    assert result.status == "failed"
    assert "will not be loaded" in result.message and "\n" not in result.message
    assert str(path) in result.message
    assert not faults_env["marker"].exists()        # the planted command never ran
    assert calls(faults_env) == []                   # nnU-Net was never handed the file
    assert path.exists()                             # refused, not deleted


@pytest.mark.slow
def test_planted_checkpoint_does_not_run_under_experiment_run(faults_env):
    """The reproduction: a planted checkpoint_latest.pth in a fold folder, the real CLI and the
    real nnUNetv2_train: the command inside the pickle never runs; one line says why."""
    path = fold_folder() / "checkpoint_latest.pth"
    write_payload(path, "planted", faults_env["marker"])
    proc = run_cli("nnunet-xfer", "experiment", "-d", str(DS_ID), "--sources", "scratch",
                   "--sizes", "5", "--folds", "0", "--device", "cpu", "--run", check=False)
    assert proc.returncode == 2
    assert not faults_env["marker"].exists()
    err = [l for l in proc.stderr.splitlines() if l.startswith("nnunet-xfer experiment: error")]
    assert len(err) == 1 and "will not be loaded" in err[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize("name, flag", [("checkpoint_latest.pth", "--c"),
                                        ("checkpoint_final.pth", "--val")])
def test_plain_checkpoint_continues(faults_env, name, flag):
    fold_folder().mkdir(parents=True)
    torch.save(plain_checkpoint(), fold_folder() / name)
    result = run_train(faults_env)
    assert result.status == "ok", result.message
    assert calls(faults_env) == [f" {DS_ID} 2d 0 -tr {TRAINER} -device cpu {flag}"]


@pytest.mark.parametrize("name, flag", [("checkpoint_latest.pth", "--c"),
                                        ("checkpoint_final.pth", "--val")])
def test_real_nnunet_checkpoint_passes_the_check_and_continues(scratch_run, faults_env, name, flag):
    """A checkpoint written by nnU-Net itself (1 epoch of XferScratchTrainer_n5)."""
    real = scratch_run / "checkpoint_final.pth"
    assert check_checkpoint(real)["trainer_name"] == TRAINER
    fold_folder().mkdir(parents=True)
    (fold_folder() / name).write_bytes(real.read_bytes())
    result = run_train(faults_env)
    assert result.status == "ok", result.message
    assert calls(faults_env)[0].endswith(f" -device cpu {flag}")


# ---------------------------------------------------------------- finished means validated

@pytest.mark.parametrize("state, mode, expect_status, expect_flag", [
    ("summary", "finish", "skipped", None),              # validated: nothing to do
    ("summary+final", "finish", "skipped", None),
    ("final", "finish", "ok", "--val"),                  # killed during validation
    ("latest", "finish", "ok", "--c"),                   # killed during training
    ("none", "finish", "ok", ""),                        # fresh
    ("none", "exit0", "failed", ""),                     # exit 0 but never validated
])
def test_finished_only_when_validation_summary_exists(faults_env, monkeypatch, state, mode,
                                                      expect_status, expect_flag):
    monkeypatch.setenv("FAKE_MODE", mode)
    fold = fold_folder()
    fold.mkdir(parents=True)
    if "summary" in state:
        validation_summary(fold).parent.mkdir()
        validation_summary(fold).write_text("{}")
    if "final" in state:
        torch.save(plain_checkpoint(), fold / "checkpoint_final.pth")
    if state == "latest":
        torch.save(plain_checkpoint(), fold / "checkpoint_latest.pth")
    result = run_train(faults_env)
    assert result.status == expect_status, result.message
    if expect_flag is None:
        assert calls(faults_env) == []
    else:
        assert calls(faults_env) == [f" {DS_ID} 2d 0 -tr {TRAINER} -device cpu {expect_flag}".rstrip()]
    if mode == "exit0":
        assert "validation/summary.json is missing" in result.message


# ---------------------------------------------------------------- one runner per dataset

HOLD_LOCK = r'''
import sys, time
from nnunet_xfer.experiment.lock import exclusive_lock
with exclusive_lock(sys.argv[1], "test holder"):
    print("locked", flush=True)
    time.sleep(120)
'''


def test_second_runner_is_refused_naming_the_first_ones_pid(faults_env):
    lock = DatasetLayout(DS_NAME).experiment_lock
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=rf"already running \(pid {holder.pid}, lock {lock}\)"):
            run(Grid(str(DS_ID), sources=("scratch",), sizes=(5,), folds=(0,), device="cpu"))
        assert calls(faults_env) == []
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("content", ["dead_pid", "garbage", "empty"])
def test_stale_lock_is_taken_over_and_released(faults_env, content):
    lock = DatasetLayout(DS_NAME).experiment_lock
    lock.write_text({"dead_pid": f"{dead_pid()}\n", "garbage": "not a pid", "empty": ""}[content])
    outcome = run(Grid(str(DS_ID), sources=("scratch",), sizes=(5,), folds=(0,), device="cpu"))
    assert outcome.results[0].status == "ok"
    assert len(calls(faults_env)) == 1
    assert not lock.exists()


@pytest.mark.slow
def test_two_runners_at_once_one_is_refused_in_one_line(faults_env, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "sleep")
    first = start_cli(faults_env)
    try:
        wait_for(faults_env["pids"])
        second = start_cli(faults_env)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 2
        assert err.strip().count("\n") == 0, err
        assert f"already running (pid {first.pid}," in err
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=60)
    assert len(calls(faults_env)) == 1


def test_lock_in_process_is_exclusive(tmp_path):
    lock = tmp_path / "x.lock"
    with exclusive_lock(lock, "first"):
        assert lock.read_text().strip() == str(os.getpid())
        with pytest.raises(UserError, match=rf"second is already running \(pid {os.getpid()}"):
            with exclusive_lock(lock, "second"):
                pass
    assert not lock.exists()


# ---------------------------------------------------------------- interruptions

@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_to_runner_ends_the_child_group(faults_env, monkeypatch, sig, code):
    monkeypatch.setenv("FAKE_MODE", "sleep")
    proc = start_cli(faults_env)
    child, grandchild = map(int, wait_for(faults_env["pids"]).split())
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert pid_gone(child) and pid_gone(grandchild)
    assert f"interrupted: stopped by {sig.name} during train {TRAINER} fold 0" in err
    assert "Traceback" not in err
    log = DatasetLayout(DS_NAME).experiment_log.read_text()
    assert f"INTERRUPTED by {sig.name} during train {TRAINER} fold 0" in log
    assert not DatasetLayout(DS_NAME).experiment_lock.exists()


@pytest.mark.slow
def test_child_ignoring_sigterm_is_killed_after_the_grace_period(faults_env, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "stubborn")
    proc = start_cli(faults_env, grace=1.0)
    child, grandchild = map(int, wait_for(faults_env["pids"]).split())
    time.sleep(0.5)  # let the child install its trap
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert pid_gone(child) and pid_gone(grandchild)


@pytest.mark.slow
def test_kill_9_of_the_runner_leaves_no_running_child(faults_env, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "exec")
    proc = start_cli(faults_env)
    child = int(wait_for(faults_env["pids"]).split()[0])
    proc.kill()
    proc.communicate(timeout=60)
    assert pid_gone(child)
    # the dead runner's lock is no obstacle to the next one
    monkeypatch.setenv("FAKE_MODE", "finish")
    outcome = run(Grid(str(DS_ID), sources=("scratch",), sizes=(5,), folds=(0,), device="cpu"))
    assert outcome.results[0].status == "ok"


# ---------------------------------------------------------------- the SLURM script's rules

FAKE_SBATCH = ('#!/bin/bash\nn=$(ls "$SBATCH_LOG" | grep -c job_)\n'
               'cat > "$SBATCH_LOG/job_$n"\necho "$((4200 + n));cluster"\n')


def training_job(env: dict, **grid) -> Path:
    """Write the SLURM script for scratch+rec n=5 folds 0,1, submit it with a fake sbatch and
    return the training array's job script."""
    script = env["tmp"] / "submit.sh"
    write_slurm(Grid(str(DS_ID), sources=("scratch", "rec"), sizes=(5,), folds=(0, 1), **grid),
                script)
    bin_ = env["tmp"] / "sbatch_bin"
    bin_.mkdir()
    (bin_ / "sbatch").write_text(FAKE_SBATCH)
    (bin_ / "sbatch").chmod(stat.S_IRWXU)
    log = env["tmp"] / "sbatch_log"
    log.mkdir()
    subprocess.run(["bash", str(script)], check=True, capture_output=True,
                   env={**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "SBATCH_LOG": str(log)})
    return log / "job_1"


def run_task(env: dict, job: Path, task: int) -> subprocess.CompletedProcess:
    fake = (f'nnUNetv2_train() {{ echo "${{nnUNet_xfer_pretrain_scope:-}} $*" >> {env["calls"]}; }};'
            f' export -f nnUNetv2_train; bash {job}')
    return subprocess.run(["bash", "-c", fake], capture_output=True, text=True,
                          env={**os.environ, "SLURM_ARRAY_TASK_ID": str(task)})


@pytest.mark.slow
@pytest.mark.parametrize("state, called", [
    ("summary", None),
    ("final", "--val"),
    ("latest", "--c"),
    ("none", ""),
])
def test_slurm_task_follows_the_finished_and_resume_rules(faults_env, state, called):
    job = training_job(faults_env)
    fold = fold_folder(1)
    fold.mkdir(parents=True)
    if state == "summary":
        validation_summary(fold).parent.mkdir()
        validation_summary(fold).write_text("{}")
        (fold / "checkpoint_final.pth").write_bytes(b"")  # present but never opened
    elif state != "none":
        torch.save(plain_checkpoint(), fold / f"checkpoint_{state}.pth")
    r = run_task(faults_env, job, 1)  # task 1: scratch n=5 fold 1
    assert r.returncode == 0, r.stderr
    expected = [] if called is None else [f" {DS_ID} 2d 1 -tr {TRAINER} -device cuda {called}".rstrip()]
    assert calls(faults_env) == expected


@pytest.mark.slow
@pytest.mark.parametrize("name", ["checkpoint_latest.pth", "checkpoint_final.pth"])
@pytest.mark.parametrize("kind", ["planted", "truncated"])
def test_slurm_task_refuses_hostile_checkpoint(faults_env, name, kind):
    job = training_job(faults_env)
    write_payload(fold_folder(1) / name, kind, faults_env["marker"])
    r = run_task(faults_env, job, 1)
    assert r.returncode != 0
    assert "will not be loaded" in r.stderr and "Traceback" not in r.stderr
    assert not faults_env["marker"].exists()
    assert calls(faults_env) == []


@pytest.mark.parametrize("scope", ["fold", "all"])
def test_slurm_task_passes_the_pretrain_scope(faults_env, scope):
    job = training_job(faults_env, pretrain_scope=scope)
    r = run_task(faults_env, job, 3)  # task 3: rec n=5 fold 1
    assert r.returncode == 0, r.stderr
    assert calls(faults_env) == [f"{scope} {DS_ID} 2d 1 -tr XferRecTrainer_n5 -device cuda"]
