"""The study's grid in one command: print it, run it here, or write it as SLURM jobs.

A :class:`Grid` (:mod:`.grid`) becomes a list of steps once (:mod:`.steps`); :func:`dry_run`,
:func:`run` and :func:`write_slurm` (:mod:`.modes`) return what they built or did and
``cli.py`` prints it. The local runner (:mod:`.runner`) skips finished steps, checks checkpoints
before nnU-Net unpickles them (:mod:`.checkpoints`), ends its children's process groups when
interrupted and runs under one lock per dataset (:mod:`.lock`). ``docs/experiment.md`` has the rules.
"""
from nnunet_xfer.experiment.checkpoints import check_checkpoint
from nnunet_xfer.experiment.grid import PRETRAIN_SCOPES, Grid
from nnunet_xfer.experiment.modes import (
    Plan,
    RunOutcome,
    SlurmScript,
    dry_run,
    dry_run_text,
    run,
    write_slurm,
)
from nnunet_xfer.experiment.results import ResultsTable, format_table, results_table
from nnunet_xfer.experiment.runner import RunInterrupted, StepResult, run_steps
from nnunet_xfer.experiment.steps import Resume, Step, grid_steps, shell_command

__all__ = ["Grid", "PRETRAIN_SCOPES", "Plan", "RunOutcome", "SlurmScript", "dry_run",
           "dry_run_text", "run", "write_slurm", "ResultsTable", "results_table", "format_table",
           "RunInterrupted", "StepResult", "run_steps", "Resume", "Step", "grid_steps",
           "shell_command", "check_checkpoint"]
