"""Render the grid's steps as a SLURM submission script.

The written FILE is a bash script that, when run on a login node (``bash FILE``), submits three
jobs with ``sbatch --parsable``: pretraining (one job, sources in sequence), the trainings as a job
array (one run per task, ``--dependency=afterok`` on pretraining), and evaluation + report
(``--dependency=afterany`` on the array, so a single failed run does not leave it pending forever).
Each job's body comes from the same steps the local runner executes.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from nnunet_xfer.experiment.steps import Step, placeholders, quote_token, shell_command

_DELIM = "NNUNET_XFER_JOB"

#: Defined in every job: skip finished steps, resume interrupted ones (same rule as the runner).
_RUN_STEP = r'''run_step() {  # DONE_FILE RESUME_FILE RESUME_FLAG COMMAND...
  local done_file="$1" resume_file="$2" flag="$3"; shift 3
  if [ -n "$done_file" ] && [ -e "$done_file" ]; then echo "skip: $done_file exists"; return 0; fi
  if [ -n "$resume_file" ] && [ -e "$resume_file" ]; then set -- "$@" "$flag"; fi
  echo "+ $*"; "$@"
}'''


def step_line(step: Step) -> str:
    """One shell line running ``step`` through ``run_step``."""
    q = lambda t: quote_token(t) if t else "''"  # noqa: E731
    return (f"run_step {q(step.done_file or '')} {q(step.resume_file or '')} "
            f"{q(step.resume_flag or '')} {shell_command(step)}")


def _job(name: str, sbatch_lines: list[str], body: list[str]) -> list[str]:
    header = ["#!/bin/bash", f"#SBATCH --job-name=xfer-{name}",
              f"#SBATCH --output=nnunet_xfer_{name}_%A_%a.out" if "--array" in " ".join(sbatch_lines)
              else f"#SBATCH --output=nnunet_xfer_{name}_%j.out"]
    env = [f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"',
           'eval "$(nnunet-xfer env)"', "set -euo pipefail", _RUN_STEP]
    return header + [f"#SBATCH {a}" for a in sbatch_lines] + env + body


def render_slurm(steps: list[Step], slurm_args: str = "", command_line: str = "") -> str:
    """The submission script's text for ``steps`` (pretrain → train array → evaluate/report)."""
    extra = shlex.split(slurm_args)
    needed = ["nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"]
    needed += sorted({v for s in steps for v in placeholders(s)} - set(needed))
    pre = [s for s in steps if s.kind == "pretrain"]
    train = [s for s in steps if s.kind == "train"]
    post = [s for s in steps if s.kind not in ("pretrain", "train")]
    out = ["#!/bin/bash",
           f"# Written by: {command_line}" if command_line else "# Written by nnunet-xfer experiment",
           f"# {len(pre)} pretraining step(s), {len(train)} training run(s), "
           f"{len(post)} evaluation step(s).",
           f"# Submit from a login node with {', '.join(needed)} exported;",
           "# sbatch passes them to the jobs.",
           "set -euo pipefail",
           'cd "$(dirname "$0")"',
           f"for v in {' '.join(needed)}; do",
           '  [ -n "${!v:-}" ] || { echo "export $v before submitting" >&2; exit 1; }',
           "done",
           "DEP=()"]
    if pre:
        body = [step_line(s) for s in pre]
        out += ["PRETRAIN=$(sbatch --parsable <<'" + _DELIM + "'",
                *_job("pretrain", extra, body), _DELIM, ")", 'PRETRAIN="${PRETRAIN%%;*}"',
                'echo "pretraining job: $PRETRAIN"',
                'DEP=(--dependency=afterok:"$PRETRAIN")']
    if train:
        cmds = ["CMDS=("] + [f"  {shlex.quote(step_line(s))}" for s in train] + [")"]
        body = cmds + ['eval "${CMDS[$SLURM_ARRAY_TASK_ID]}"']
        out += ['TRAIN=$(sbatch --parsable ${DEP[@]+"${DEP[@]}"} <<\'' + _DELIM + "'",
                *_job("train", [f"--array=0-{len(train) - 1}"] + extra, body), _DELIM, ")",
                'TRAIN="${TRAIN%%;*}"', f'echo "training job array: $TRAIN ({len(train)} tasks)"',
                'DEP=(--dependency=afterany:"$TRAIN")']
    if post:
        body = [step_line(s) for s in post]
        out += ['EVAL=$(sbatch --parsable ${DEP[@]+"${DEP[@]}"} <<\'' + _DELIM + "'",
                *_job("evaluate", extra, body), _DELIM, ")", 'EVAL="${EVAL%%;*}"',
                'echo "evaluation job: $EVAL"']
    out.append('echo "watch them with: squeue --me"')
    return "\n".join(out) + "\n"
