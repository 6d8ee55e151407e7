"""Schedule control: the transfer machinery alone must not move the result.

On a small phantom, ``XferRecTrainer_n<N>`` fine-tunes a store entry holding *untrained*
(random-init) weights through the whole transfer path (store entry, key-by-key transfer, the
trainer's default schedule), and ``XferScratchTrainer_n<N>`` trains from nnU-Net's own random
init. With the default schedule (nnU-Net's optimiser, LR and poly schedule for every source) the
two arms differ only in the random draw of their initial weights, so their validation Dice must
agree within the spread over seeds. A third arm, ``identity``, hands the transfer path the very
weights scratch starts from (same seed): its Dice must equal scratch's run for run (on CPU, with
in-process data loading, nnU-Net's training is deterministic given the seed).

Every run is a real nnU-Net training (``nnunetv2.run.run_training.run_training``, in this process,
on CPU) seeded through ``nnUNet_xfer_seed``; Dice is nnU-Net's own validation mean over fold 0's
validation cases. Arms alternate in rotated order within each (n, seed).

    PYTHONPATH=. OMP_NUM_THREADS=1 .venv/bin/python benchmarks/schedule_control.py   # ~5 min, 2 idle cores
    PYTHONPATH=. .venv/bin/python benchmarks/schedule_control.py --seeds 5 --epochs 5 --lr-factor 0.1

``--lr-factor`` etc. run the transfer arms with an explicit schedule option instead (to see how
much the option itself moves the result). Agreement rule: |mean difference| ≤ 2 × its standard
error, sqrt(sd_a² / k + sd_b² / k) over k seeds.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARMS = ("scratch", "transfer", "identity")
SCHEDULE_VARS = ("nnUNet_xfer_lr_factor", "nnUNet_xfer_warmup_fraction", "nnUNet_xfer_freeze_epochs")
DATASET_ID, DATASET = 501, "Dataset501_L3"


def make_dataset(root: Path, cases: int, size: int, sizes: list[int]) -> None:
    """Phantom → converted ``Dataset501_L3`` → nnU-Net 2d planning and preprocessing (as tests/conftest.py)."""
    from nnunet_xfer.dataset_conversion.convert import convert
    from nnunet_xfer.phantom.cohort import write_cohort
    cohort = write_cohort(root / "cohort", n_cases=cases, size=size, n_observers=1, n_observer_cases=1, seed=0)
    convert(cases_csv=cohort / "cases.csv", dataset_id=DATASET_ID, name="L3", sizes=sizes)
    subprocess.run([str(Path(sys.executable).parent / "nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID),
                    "-c", "2d", "-np", "1"], check=True, capture_output=True,
                   env={**os.environ, "nnUNet_n_proc_DA": "1"})


def initial_network(seed: int):
    """The network exactly as the trainer builds it, initialised after ``torch.manual_seed(seed)``."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_xfer.layout import DatasetLayout
    pm = PlansManager(str(DatasetLayout(DATASET).plans_json()))
    torch.manual_seed(seed)
    return nnUNetTrainer.build_network_architecture(pm, pm.get_configuration("2d"), 1, 2, True)


def write_entry(seed: int, note: str) -> list[Path]:
    """The ``rec`` store entry holding ``initial_network(seed)``: shared and fold-0 paths (either layout)."""
    from nnunet_xfer.layout import DatasetLayout
    from nnunet_xfer.pretraining.store import save_entry
    state = initial_network(seed).state_dict()
    layout = DatasetLayout(DATASET)
    paths = [layout.store_entry("rec", "nnUNetPlans", "2d"), layout.store_entry("rec", "nnUNetPlans", "2d", fold=0)]
    for pth in paths:
        save_entry(pth, state, None, {"source": "rec", "trained_prefixes": ["encoder.", "decoder."],
                                      "note": f"schedule control: untrained weights ({note})"}, overwrite=True)
    return paths


def train(trainer: str, seed: int, run_env: dict) -> dict:
    """One real nnU-Net training + validation of fold 0; Dice and timings."""
    import shutil

    import torch
    from nnunetv2.run.run_training import run_training

    from nnunet_xfer.layout import DatasetLayout, validation_summary
    fold = DatasetLayout(DATASET).fold_folder(trainer, 0)
    shutil.rmtree(fold.parent, ignore_errors=True)
    for var in SCHEDULE_VARS:
        os.environ.pop(var, None)
    os.environ.update({**run_env, "nnUNet_xfer_seed": str(seed)})
    cpu, wall = time.process_time(), time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        run_training(str(DATASET_ID), "2d", 0, trainer, "nnUNetPlans", device=torch.device("cpu"))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    summary = json.loads(validation_summary(fold).read_text())
    debug = json.loads((fold / "debug.json").read_text())["xfer_info"]
    return {"dice": summary["foreground_mean"]["Dice"], "cpu_s": cpu, "wall_s": wall,
            "schedule": debug["schedule"], "transferred": (debug.get("transfer") or {}).get("n_transferred")}


def describe(values: list[float]) -> str:
    return (f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1
            else f"{values[0]:.4f}")


def agree(a: list[float], b: list[float]) -> tuple[float, float, bool]:
    """(mean difference, 2 standard errors, |difference| ≤ 2 SE)."""
    k = len(a)
    diff = statistics.mean(a) - statistics.mean(b)
    two_se = 2 * ((statistics.variance(a) + statistics.variance(b)) / k) ** 0.5 if k > 1 else float("nan")
    return diff, two_se, abs(diff) <= two_se


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=40, help="phantom cases (4 folds: 30 train, 10 validation)")
    ap.add_argument("--size", type=int, default=64, help="phantom slice size")
    ap.add_argument("--sizes", type=int, nargs="+", default=[5, 10], help="training subset sizes n")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per arm and n (>= 2 for a spread)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=20, help="training iterations per epoch")
    ap.add_argument("--no-identity", action="store_true", help="skip the identity arm")
    ap.add_argument("--lr-factor", default=None, help="explicit nnUNet_xfer_lr_factor for the transfer arms")
    ap.add_argument("--warmup-fraction", default=None, help="explicit nnUNet_xfer_warmup_fraction")
    ap.add_argument("--json", type=Path, default=None, help="also write every run as JSON here")
    a = ap.parse_args()

    load = os.getloadavg()
    tmp = tempfile.TemporaryDirectory(prefix="schedule_control_")
    root = Path(tmp.name)
    for var in ("raw", "preprocessed", "results"):
        (root / var).mkdir()
        os.environ[f"nnUNet_{var}"] = str(root / var)
    os.environ.update({"nnUNet_compile": "false", "nnUNet_n_proc_DA": "0", "nnUNet_def_n_proc": "1"})
    for var in (*SCHEDULE_VARS, "nnUNet_xfer_save_initial"):
        os.environ.pop(var, None)
    from nnunet_xfer.trainers import trainer_folder
    os.environ["nnUNet_extTrainer"] = str(trainer_folder())
    base_env = {"nnUNet_xfer_epochs": str(a.epochs), "nnUNet_xfer_iterations": str(a.iterations)}
    transfer_env = dict(base_env)
    if a.lr_factor is not None:
        transfer_env["nnUNet_xfer_lr_factor"] = a.lr_factor
    if a.warmup_fraction is not None:
        transfer_env["nnUNet_xfer_warmup_fraction"] = a.warmup_fraction

    import torch
    started = time.perf_counter()
    make_dataset(root, a.cases, a.size, a.sizes)
    print(f"# schedule control: {platform.node()}, {os.cpu_count()} cores, load average at start "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, torch {torch.__version__} ({torch.get_num_threads()} threads); "
          f"phantom {a.cases} cases at {a.size}², {a.epochs} epochs × {a.iterations} iterations, "
          f"seeds 0…{a.seeds - 1}; dataset ready in {time.perf_counter() - started:.0f} s", flush=True)

    arms = [arm for arm in ARMS if not (arm == "identity" and a.no_identity)]
    runs = []
    for n in a.sizes:
        for seed in range(a.seeds):
            order = arms[seed % len(arms):] + arms[:seed % len(arms)]
            for arm in order:
                if arm == "scratch":
                    result = train(f"XferScratchTrainer_n{n}", seed, base_env)
                else:
                    entry_seed = 1000 + seed if arm == "transfer" else seed
                    write_entry(entry_seed, f"torch.manual_seed({entry_seed})")
                    result = train(f"XferRecTrainer_n{n}", seed, transfer_env)
                runs.append({"n": n, "seed": seed, "arm": arm, **result})
                if a.json:  # after every run, so that an interrupted benchmark keeps what it measured
                    a.json.write_text(json.dumps({"args": {**vars(a), "json": str(a.json)}, "load_average": load,
                                                  "runs": runs}, indent=1, default=str))
                print(f"n={n:<3} seed={seed} {arm:<9} Dice {result['dice']:.4f}  "
                      f"CPU {result['cpu_s']:6.1f} s  wall {result['wall_s']:6.1f} s  "
                      f"schedule explicit={result['schedule']['explicit']}", flush=True)

    print("\n| n | arm | Dice per seed | mean ± sd | wall s/run (min, median) |\n|---|---|---|---|---|")
    for n in a.sizes:
        for arm in arms:
            rs = [r for r in runs if r["n"] == n and r["arm"] == arm]
            walls = [r["wall_s"] for r in rs]
            per_seed = ", ".join(f"{r['dice']:.4f}" for r in rs)
            print(f"| {n} | {arm} | {per_seed} | "
                  f"{describe([r['dice'] for r in rs])} | {min(walls):.0f}, {statistics.median(walls):.0f} |")
    print()
    for n in a.sizes:
        dice = {arm: [r["dice"] for r in runs if r["n"] == n and r["arm"] == arm] for arm in arms}
        if a.seeds > 1:
            diff, two_se, ok = agree(dice["transfer"], dice["scratch"])
            print(f"n={n}: transfer − scratch = {diff:+.4f} (2 SE {two_se:.4f}): "
                  f"{'agree within seed spread' if ok else 'DO NOT agree'}")
        if "identity" in dice:
            worst = max(abs(x - y) for x, y in zip(dice["identity"], dice["scratch"]))
            print(f"n={n}: identity vs scratch, largest per-seed |Δ Dice| = {worst:.2e}")
    print(f"total {time.perf_counter() - started:.0f} s")
    tmp.cleanup()


if __name__ == "__main__":
    main()
