"""Run a list of :class:`Step` here, in order: skip finished ones, resume interrupted ones, log all.

Each step is a subprocess of the real CLI (nnU-Net's and ours) with its output appended to one log
file; a failed step is reported and, with ``keep_going``, the rest go on (steps that need it are
marked blocked). Progress is a tqdm bar over the steps that actually run.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from nnunet_xfer.errors import UserError
from nnunet_xfer.experiment.steps import Step, expand_token


@dataclass
class StepResult:
    """What happened to one step: ``ok``, ``skipped``, ``failed`` or ``blocked``."""
    step: Step
    status: str
    seconds: float = 0.0
    message: str = ""


def executable(name: str) -> str:
    """A console script of this Python environment if it has one, else from ``PATH``."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def _log(log, text: str) -> None:
    log.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {text}\n")
    log.flush()


def _tail(path: Path, start: int, lines: int = 15) -> str:
    with open(path, "rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    return "\n".join(text.strip().splitlines()[-lines:])


def run_steps(steps: list[Step], log_path: Path, env: dict | None = None, keep_going: bool = True,
              desc: str = "steps") -> list[StepResult]:
    """Execute ``steps`` in order; return one :class:`StepResult` per step (same order).

    ``env`` is the subprocesses' full environment (default: this process's). Steps whose
    ``done_file`` exists are skipped before the progress bar starts, so its ETA reflects real work.
    """
    env = dict(os.environ if env is None else env)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, StepResult] = {}
    todo: list[Step] = []
    with open(log_path, "a") as log:
        _log(log, f"=== {desc}: {len(steps)} steps (pid {os.getpid()})")
        for step in steps:
            done = step.done_file and Path(expand_token(step.done_file, env)).exists()
            if done:
                results[step.name] = StepResult(step, "skipped", message="already finished")
                _log(log, f"SKIP {step.name}: {expand_token(step.done_file, env)} exists")
            else:
                todo.append(step)
        if len(todo) < len(steps):
            tqdm.write(f"{desc}: {len(steps) - len(todo)} of {len(steps)} already finished, skipped")
        bar = tqdm(todo, desc=desc, unit="step", dynamic_ncols=True)
        stop = False
        for step in bar:
            bar.set_postfix_str(step.name)
            if stop:
                results[step.name] = StepResult(step, "blocked", message="an earlier step failed")
                continue
            bad = [n for n in step.needs if n in results and results[n].status in ("failed", "blocked")]
            if bad:
                results[step.name] = StepResult(step, "blocked", message=f"needs {bad[0]}, which failed")
                _log(log, f"BLOCKED {step.name}: needs {bad[0]}")
                continue
            results[step.name] = _run_one(step, env, log, log_path)
            if results[step.name].status == "failed":
                r = results[step.name]
                tqdm.write(f"FAILED {step.name} after {r.seconds:.0f} s: {r.message}")
                stop = not keep_going
        bar.close()
        counts = {s: sum(r.status == s for r in results.values())
                  for s in ("ok", "skipped", "failed", "blocked")}
        _log(log, "=== done: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return [results[s.name] for s in steps]


def _run_one(step: Step, env: dict, log, log_path: Path) -> StepResult:
    start = time.monotonic()
    try:
        argv = [expand_token(t, env) for t in step.argv]
    except UserError as e:
        _log(log, f"FAIL {step.name}: {e}")
        return StepResult(step, "failed", message=str(e))
    if step.resume_file and Path(expand_token(step.resume_file, env)).exists():
        argv.append(step.resume_flag)
    argv[0] = executable(argv[0])
    _log(log, f"RUN {step.name}: {shlex.join(argv)}")
    offset = log.tell()
    try:
        proc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        code = proc.returncode
    except OSError as e:
        code, err = -1, str(e)
    else:
        err = ""
    seconds = time.monotonic() - start
    log.flush()
    if code == 0 and step.done_file and not Path(expand_token(step.done_file, env)).exists():
        code, err = 1, f"exited 0 but {expand_token(step.done_file, env)} is missing"
    if code != 0:
        tail = _tail(log_path, offset)
        last = tail.splitlines()[-1] if tail else "no output"
        msg = err or f"exit status {code}: {last}\nlast lines:\n{tail}\n(full output: {log_path})"
        _log(log, f"FAIL {step.name} ({seconds:.1f} s): exit {code} {err}")
        return StepResult(step, "failed", seconds, msg)
    _log(log, f"OK {step.name} ({seconds:.1f} s)")
    return StepResult(step, "ok", seconds)
