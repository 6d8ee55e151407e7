"""Render the grid's steps as a SLURM submission script.

The written FILE is a bash script that, when run on a login node (``bash FILE``), submits three
jobs with ``sbatch --parsable``: planning and pretraining (one job, steps in sequence), the
trainings as a job array (one run per task, ``--dependency=afterok`` on pretraining), and evaluation + report
(``--dependency=afterany`` on the array, so a single failed run does not leave it pending forever).
Each job's body comes from the same steps the local runner executes, with the same rules: a
training is finished when ``validation/summary.json`` exists, continues with ``--val`` or ``--c``
only after its checkpoint passed the restricted unpickler (:mod:`.checkpoints`).
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

from nnunet_xfer.experiment.steps import Step, placeholders, quote_token

_DELIM = "NNUNET_XFER_JOB"
#: The module that opens a checkpoint with the restricted unpickler (exit 2: refused).
_CHECK = "nnunet_xfer.experiment.checkpoints"

#: Defined in every job; the same rules as the local runner: a step is skipped when its result
#: exists; else the first resume file that exists adds its flag, after the unpickling check when
#: CHECK is 1 (a refused file fails the step); leading VAR=value words are set for the command.
_RUN_STEP = r'''run_step() {  # DONE_FILE [RESUME_FILE FLAG CHECK]... -- [VAR=value]... COMMAND...
  local done_file="$1" extra="" file flag check; shift
  if [ -n "$done_file" ] && [ -e "$done_file" ]; then echo "skip: $done_file exists"; return 0; fi
  while [ "$1" != "--" ]; do
    file="$1" flag="$2" check="$3"; shift 3
    if [ -z "$extra" ] && [ -e "$file" ]; then
      if [ "$check" = 1 ]; then "$XFER_PYTHON" -m ''' + _CHECK + r''' "$file" || return 1; fi
      extra="$flag"
    fi
  done
  shift
  (
    while [[ "$1" == [A-Za-z_]*=* ]]; do export "$1"; shift; done
    if [ -n "$extra" ]; then set -- "$@" "$extra"; fi
    echo "+ $*"; "$@"
  )
}'''


def step_line(step: Step) -> str:
    """One shell line running ``step`` through ``run_step``."""
    q = lambda t: quote_token(t) if t else "''"  # noqa: E731
    words = ["run_step", q(step.done_file or "")]
    for r in step.resume:
        words += [q(r.file), q(r.flag), "1" if r.check else "0"]
    words.append("--")
    words += [f"{k}={quote_token(v)}" for k, v in step.env]
    words += [quote_token(t) for t in step.argv]
    return " ".join(words)


def _job(name: str, sbatch_lines: list[str], body: list[str]) -> list[str]:
    header = ["#!/bin/bash", f"#SBATCH --job-name=xfer-{name}",
              f"#SBATCH --output=nnunet_xfer_{name}_%A_%a.out" if "--array" in " ".join(sbatch_lines)
              else f"#SBATCH --output=nnunet_xfer_{name}_%j.out"]
    env = [f'export PATH={shlex.quote(str(Path(sys.executable).parent))}:"$PATH"',
           f"XFER_PYTHON={shlex.quote(sys.executable)}",
           'eval "$(nnunet-xfer env)"', "set -euo pipefail", _RUN_STEP]
    return header + [f"#SBATCH {a}" for a in sbatch_lines] + env + body


def render_slurm(steps: list[Step], slurm_args: str = "", command_line: str = "") -> str:
    """The submission script's text for ``steps`` (pretrain → train array → evaluate/report)."""
    extra = shlex.split(slurm_args)
    needed = ["nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"]
    needed += sorted({v for s in steps for v in placeholders(s)} - set(needed))
    pre = [s for s in steps if s.kind in ("plan", "pretrain")]
    train = [s for s in steps if s.kind == "train"]
    post = [s for s in steps if s.kind not in ("plan", "pretrain", "train")]
    out = ["#!/bin/bash",
           f"# Written by: {command_line}" if command_line else "# Written by nnunet-xfer experiment",
           f"# {len(pre)} planning/pretraining step(s), {len(train)} training run(s), "
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
