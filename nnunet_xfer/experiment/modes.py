"""The three ways to use a :class:`Grid`: show it, run it here, or write it as SLURM jobs.

Each function returns data (steps, step results, the script's path); ``cli.py`` prints.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nnunet_xfer.atomic import atomic_write_text, check_replaceable
from nnunet_xfer.errors import UserError
from nnunet_xfer.experiment.grid import Grid
from nnunet_xfer.experiment.lock import exclusive_lock
from nnunet_xfer.experiment.results import ResultsTable, results_table
from nnunet_xfer.experiment.runner import StepResult, run_steps
from nnunet_xfer.experiment.slurm import render_slurm
from nnunet_xfer.experiment.steps import (
    KINDS,
    Step,
    expand_token,
    grid_steps,
    placeholders,
    shell_command,
)
from nnunet_xfer.splits import verify_dataset
from nnunet_xfer.layout import EVAL_SUMMARY_JSON, DatasetLayout
from nnunet_xfer.settings import NNUNET_FOLDERS
from nnunet_xfer.trainers import trainer_environment


@dataclass(frozen=True)
class Plan:
    """The checked grid: the dataset's folder name and its steps."""
    name: str
    steps: list[Step]

    @property
    def variables(self) -> list[str]:
        """Variables besides nnU-Net's folders that the commands need (source data)."""
        return sorted({v for s in self.steps for v in placeholders(s)} - set(NNUNET_FOLDERS))


@dataclass(frozen=True)
class RunOutcome:
    """What ``run`` did: one result per step, the log, and the results table when evaluated."""
    name: str
    results: list[StepResult]
    log: Path
    report: Path | None
    table: ResultsTable | None

    @property
    def failed(self) -> list[StepResult]:
        """Steps that failed or were blocked."""
        return [r for r in self.results if r.status in ("failed", "blocked")]

    def failure(self) -> str | None:
        """One line naming the first failed step, or None when every step succeeded."""
        if not self.failed:
            return None
        first = self.failed[0]
        return (f"{len(self.failed)} of {len(self.results)} steps failed or were blocked "
                f"(first: {first.step.name}: {first.message.splitlines()[0]}); see {self.log}")


@dataclass(frozen=True)
class SlurmScript:
    """The written submission script and how many training tasks its array has."""
    path: Path
    n_train: int


def dry_run(grid: Grid) -> Plan:
    """Check the grid against the dataset (name, subsets, observer folder) and build its steps;
    nothing runs. :func:`dry_run_text` renders them as a shell script."""
    layout = DatasetLayout.of(grid.dataset)
    verify_dataset(layout, grid.folds, grid.sizes)  # folds and subsets bound together, sizes drawn
    if grid.observers is not None and not Path(grid.observers).is_dir():
        raise UserError(f"observer folder {grid.observers} does not exist")
    return Plan(layout.name, grid_steps(grid, layout.name))


def dry_run_text(p: Plan) -> str:
    """The steps as shell commands grouped under ``# <kind>`` lines, then the variables to export."""
    lines = []
    for kind in KINDS:
        steps = [s for s in p.steps if s.kind == kind]
        if steps:
            lines.append(f"# {kind}")
            lines += [shell_command(s) for s in steps]
    if p.variables:
        lines.append(f"# export {' '.join(p.variables)} before running (data for the source tasks)")
    return "\n".join(lines)


def run(grid: Grid, grace: float | None = None) -> RunOutcome:
    """Run the grid here under the dataset's lock; failed steps do not stop the others.

    A second runner on the same dataset is refused (:class:`UserError` naming the first one's pid).
    SIGINT/SIGTERM end the running child and raise ``RunInterrupted``.
    """
    p = dry_run(grid)
    layout = DatasetLayout(p.name)
    env = trainer_environment()
    with exclusive_lock(layout.experiment_lock, f"`nnunet-xfer experiment --run` on {p.name}"):
        results = run_steps(p.steps, layout.experiment_log, env=env, keep_going=True,
                            desc="experiment", grace=grace)
    report = table = None
    done = {r.step.kind: r for r in results if r.status == "ok"}
    if "report" in done:
        argv = done["report"].step.argv
        report = Path(expand_token(argv[argv.index("-o") + 1], env))
    if "evaluate" in done:
        argv = done["evaluate"].step.argv
        summary = Path(expand_token(argv[argv.index("-o") + 1], env)) / EVAL_SUMMARY_JSON
        table = results_table(summary) if summary.is_file() else None
    return RunOutcome(p.name, results, layout.experiment_log, report, table)


def _is_our_script(path: Path) -> bool:
    """Whether ``path`` is a submission script ``experiment --slurm`` wrote (its second line)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = [f.readline(), f.readline()]
    except OSError:
        return False
    return head[0].strip() == "#!/bin/bash" and head[1].startswith("# Written by") \
        and "nnunet-xfer experiment" in head[1]


def write_slurm(grid: Grid, path: Path, slurm_args: str = "", overwrite: bool = False,
                command_line: str = "") -> SlurmScript:
    """Write the grid as a SLURM submission script (``bash FILE`` submits it)."""
    claim = check_replaceable(path, "experiment", overwrite, folder=False, written=_is_our_script)
    p = dry_run(grid)
    path = atomic_write_text(claim, render_slurm(p.steps, slurm_args, command_line))
    path.chmod(0o755)
    return SlurmScript(path, sum(s.kind == "train" for s in p.steps))
