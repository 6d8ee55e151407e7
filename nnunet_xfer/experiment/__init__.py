"""The study's grid in one command: print it, run it here, or write it as SLURM jobs.

:func:`run_experiment` builds the steps once (:mod:`.steps`) and hands them to the printer, the
local runner (:mod:`.runner`) or the SLURM renderer (:mod:`.slurm`).
"""
from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Sequence

from nnunet_xfer.layout import resolve_dataset_name as dataset_name
from nnunet_xfer.errors import UserError
from nnunet_xfer.experiment.runner import StepResult, run_steps
from nnunet_xfer.experiment.slurm import render_slurm
from nnunet_xfer.experiment.steps import (
    Step,
    check_sizes,
    expand_token,
    grid_steps,
    is_torchvision_plans,
    placeholders,
    shell_command,
)
from nnunet_xfer.sources import SOURCES
from nnunet_xfer.splits import verify_dataset
from nnunet_xfer.study_grid import SIZES

LOG_NAME = "nnunet_xfer_experiment.log"
MODES = ("dry-run", "run", "slurm")

__all__ = ["run_experiment", "experiment_steps", "run_steps", "render_slurm", "shell_command",
           "Step", "StepResult", "LOG_NAME"]


def trainer_env(environ: dict | None = None) -> dict:
    """A copy of the environment in which ``nnUNet_extTrainer`` includes the package's trainers."""
    from nnunet_xfer.trainers import trainer_folder
    env = dict(os.environ if environ is None else environ)
    folder = str(trainer_folder())
    paths = [p for p in env.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if folder not in paths:
        env["nnUNet_extTrainer"] = os.pathsep.join([folder] + paths)
    return env


def experiment_steps(dataset: str, plans: str = "nnUNetPlans", configuration: str = "2d",
                     sources: Sequence[str] = SOURCES, sizes: Sequence[int] = SIZES,
                     folds: Sequence[int] = (0, 1, 2, 3), device: str = "cuda",
                     observers: Path | None = None,
                     pretrain_iterations: int | None = None) -> tuple[str, list[Step]]:
    """(dataset name, steps) for a grid, after checking the dataset and its subsets."""
    name = dataset_name(dataset)
    verify_dataset(name, folds, sizes)  # folds and subsets bound together, sizes chosen at convert
    check_sizes(name, sizes, folds)
    if observers is not None and not Path(observers).is_dir():
        raise UserError(f"observer folder {observers} does not exist")
    steps = grid_steps(dataset, name, plans, configuration, sources, sizes, folds, device,
                       observers, pretrain_iterations,
                       torchvision=is_torchvision_plans(name, plans, configuration))
    return name, steps


def run_experiment(dataset: str, plans: str = "nnUNetPlans", configuration: str = "2d",
                   sources: Sequence[str] = SOURCES, sizes: Sequence[int] = SIZES,
                   folds: Sequence[int] = (0, 1, 2, 3), mode: str = "dry-run",
                   slurm_file: Path | None = None, slurm_args: str = "", device: str = "cuda",
                   observers: Path | None = None, pretrain_iterations: int | None = None,
                   overwrite: bool = False) -> list[StepResult] | Path | list[Step]:
    """Print (``dry-run``), execute (``run``) or write as SLURM jobs (``slurm``) the study's grid.

    ``run`` raises :class:`UserError` at the end when any step failed (after running the rest).
    Returns the steps, the step results or the written script path.
    """
    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    name, steps = experiment_steps(dataset, plans, configuration, sources, sizes, folds, device,
                                   observers, pretrain_iterations)
    if mode == "dry-run":
        kind = None
        for step in steps:
            if step.kind != kind:
                kind = step.kind
                print(f"# {kind}")
            print(shell_command(step))
        needed = sorted({v for s in steps for v in placeholders(s)} - {"nnUNet_results"})
        if needed:
            print(f"# export {' '.join(needed)} before running (data for the source tasks)")
        return steps
    if mode == "slurm":
        if slurm_file is None:
            raise UserError("--slurm needs a FILE to write")
        slurm_file = Path(slurm_file)
        if slurm_file.exists() and not overwrite:
            raise UserError(f"{slurm_file} exists; pass --overwrite to replace it")
        text = render_slurm(steps, slurm_args, "nnunet-xfer " + shlex.join(sys.argv[1:]))
        tmp = slurm_file.with_name(slurm_file.name + ".tmp")
        tmp.write_text(text)
        tmp.chmod(0o755)
        tmp.replace(slurm_file)
        n_train = sum(s.kind == "train" for s in steps)
        print(f"wrote {slurm_file}: {n_train} training runs as one job array\n"
              f"submit it from a login node with:  bash {slurm_file}")
        return slurm_file
    env = trainer_env()
    from nnunet_xfer.layout import DatasetLayout
    log = DatasetLayout(name).results / LOG_NAME
    print(f"experiment log: {log}")
    results = run_steps(steps, log, env=env, keep_going=True, desc="experiment")
    failed = [r for r in results if r.status in ("failed", "blocked")]
    for r in results:
        print(f"{r.status:8s} {r.step.name}" + (f" ({r.seconds:.0f} s)" if r.seconds else ""))
    report = next((r for r in results if r.step.kind == "report" and r.status == "ok"), None)
    if report is not None:
        argv = report.step.argv
        print(f"report: {expand_token(argv[argv.index('-o') + 1])}")
    if failed:
        raise UserError(f"{len(failed)} of {len(results)} steps failed or were blocked "
                        f"(first: {failed[0].step.name}: {failed[0].message.splitlines()[0]}); "
                        f"see {log}")
    return results
