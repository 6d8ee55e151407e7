"""Overhead of the Xfer trainers over nnU-Net's own trainer, per training iteration.

Seconds per training iteration (nnU-Net's ``train_step`` on batches from its own data loader:
loading, augmentation, forward, backward, SGD step) of ``XferScratchTrainer_nall`` and
``XferRecTrainer_nall`` against ``nnUNetTrainer`` on the same preprocessed dataset, fold and
plans, all in this one process. Trainers are timed in alternating rounds (A B C C B A …) so drift in
machine load hits all of them alike, each round with the same seeds for every trainer (same cases,
same augmentations). Medians over rounds of process CPU time (robust on a shared machine) and of
wall time are reported as ratios to ``nnUNetTrainer`` (goal ≤ 1.02).

    .venv/bin/python benchmarks/trainer_overhead.py                      # 64² phantom made here
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/trainer_overhead.py --size 128 --rounds 12
    .venv/bin/python benchmarks/trainer_overhead.py -d 501 --plans nnUNetPlans nnUNetPlans_fcn_resnet50

With ``-d`` the dataset must be preprocessed for every ``--plans`` (torchvision plans variants
reuse nnU-Net's preprocessed data). ``XferRecTrainer_nall`` needs fold 0's ``rec`` store entry; when there
is none, one is written from the network's own initial weights into a temporary results folder
(transfer and schedule are what is measured, not what the weights are). By default every trainer
has nnU-Net's own optimiser and schedule; ``--explicit-schedule`` times the per-part parameter
groups that the explicit options (``nnUNet_xfer_lr_factor`` …) switch on.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time
from pathlib import Path

TRAINERS = ("nnUNetTrainer", "XferScratchTrainer_nall", "XferRecTrainer_nall")


def make_phantom_dataset(root: Path, size: int, cases: int) -> str:
    """Phantom → ``Dataset501_L3`` → nnU-Net planning and preprocessing (2d) under ``root``."""
    from nnunet_xfer.dataset_conversion.convert import convert
    from nnunet_xfer.phantom.cohort import write_cohort
    cohort = write_cohort(root / "cohort", n_cases=cases, size=size, n_observers=1, n_observer_cases=1)
    convert(cases_csv=cohort / "cases.csv", dataset_id=501, name="L3", sizes=[5])
    from _bench import plan_dataset
    plan_dataset(501)
    return "Dataset501_L3"


def ensure_rec_entry(dataset: str, plans: str) -> None:
    """A ``rec`` store entry for these plans (the network's initial weights) if there is none."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_xfer.layout import DatasetLayout
    from nnunet_xfer.pretraining.store import entry_provenance, save_entry
    # fold 0's own entry with its provenance record, as `pretrain -s rec --fold 0` writes it
    # (the trainers' default scope is the fold; a shared entry without provenance is refused)
    pth = DatasetLayout(dataset).store_entry("rec", plans, "2d", fold=0)
    if pth.is_file():
        return
    pm = PlansManager(os.path.join(os.environ["nnUNet_preprocessed"], dataset, plans + ".json"))
    torch.manual_seed(0)
    net = nnUNetTrainer.build_network_architecture(pm, pm.get_configuration("2d"), 1, 2, True)
    prov = entry_provenance(dataset, plans, "2d", scope="fold", fold=0)
    save_entry(pth, net.state_dict(), None, {"source": "rec", **prov,
                                             "trained_prefixes": ["encoder.", "decoder."],
                                             "note": "benchmark: initial weights"})


def build(trainer: str, dataset: str, plans: str):
    """A trainer as ``nnUNetv2_train`` builds it, started (data loaders, transfer) but not trained."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args
    with contextlib.redirect_stdout(io.StringIO()):  # nnU-Net's chatter; it is in the trainers' logs
        t = get_trainer_from_args(dataset, "2d", 0, trainer, plans, device=torch.device("cpu"))
        t.on_train_start()
        t.on_train_epoch_start()
    return t


def time_iterations(t, iterations: int, seed: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per ``train_step`` with a fresh batch from the trainer's own loader.

    The global RNGs are seeded first, so every trainer draws the same cases and augmentations in a
    round (the loader runs in this process) and does the same data work.
    """
    import random

    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(iterations):
        t.train_step(next(t.dataloader_train))
    return (time.process_time() - cpu) / iterations, (time.perf_counter() - wall) / iterations


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-d", "--dataset", default=None, help="preprocessed dataset (default: a phantom made here)")
    ap.add_argument("--plans", nargs="+", default=["nnUNetPlans"], help="plans identifiers to measure")
    ap.add_argument("--size", type=int, default=64, help="phantom slice size (without -d)")
    ap.add_argument("--cases", type=int, default=24, help="phantom cases (without -d)")
    ap.add_argument("--iterations", type=int, default=5, help="iterations per trainer and round")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--explicit-schedule", action="store_true",
                    help="run XferRecTrainer_nall with explicit schedule options (per-part LR groups)")
    a = ap.parse_args()

    tmp = tempfile.TemporaryDirectory(prefix="trainer_overhead_")
    root = Path(tmp.name)
    from nnunet_xfer.settings import NNUNET_ON_CPU
    os.environ.update(NNUNET_ON_CPU)  # augmentation in this process: same work for every trainer
    for var in ("nnUNet_xfer_epochs", "nnUNet_xfer_iterations", "nnUNet_xfer_lr_factor",
                "nnUNet_xfer_warmup_fraction", "nnUNet_xfer_freeze_epochs"):
        os.environ.pop(var, None)
    if a.explicit_schedule:  # the per-part optimiser groups instead of nnU-Net's own (the default)
        os.environ.update({"nnUNet_xfer_lr_factor": "0.1", "nnUNet_xfer_warmup_fraction": "0.05"})
    from nnunet_xfer.trainers import trainer_folder
    os.environ["nnUNet_extTrainer"] = str(trainer_folder())
    if a.dataset is None:
        for var in ("raw", "preprocessed", "results"):
            (root / var).mkdir()
            os.environ[f"nnUNet_{var}"] = str(root / var)
        dataset = make_phantom_dataset(root, a.size, a.cases)
    else:
        from nnunet_xfer.layout import resolve_dataset_name as dataset_name
        dataset = dataset_name(a.dataset)
        os.environ["nnUNet_results"] = str(root / "results")  # trainer outputs and store stay temporary
    import torch
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, dataset {dataset}, "
          f"{a.rounds} rounds × {a.iterations} iterations")

    rows = []
    for plans in a.plans:
        ensure_rec_entry(dataset, plans)
        trainers = {name: build(name, dataset, plans) for name in TRAINERS}
        for t in trainers.values():
            time_iterations(t, 2, seed=12345)  # warm-up
        cpu = {name: [] for name in TRAINERS}
        wall = {name: [] for name in TRAINERS}
        for r in range(a.rounds):
            order = TRAINERS if r % 2 == 0 else TRAINERS[::-1]
            for name in order:
                c, w = time_iterations(trainers[name], a.iterations, seed=r)
                cpu[name].append(c)
                wall[name].append(w)
        base_cpu, base_wall = (statistics.median(x["nnUNetTrainer"]) for x in (cpu, wall))
        for name in TRAINERS:
            c, w = statistics.median(cpu[name]), statistics.median(wall[name])
            rows.append(f"| {plans} | {name} | {c:.4f} | {c / base_cpu:.3f} | {w:.4f} | {w / base_wall:.3f} |")
        del trainers
    print("| plans | trainer | CPU s/iteration | CPU ratio | wall s/iteration | wall ratio |\n"
          "|---|---|---|---|---|---|")
    print("\n".join(rows))
    tmp.cleanup()


if __name__ == "__main__":
    main()
