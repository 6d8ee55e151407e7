"""Run a list of :class:`Step` here, in order: skip finished ones, continue unfinished ones, log all.

Each step is a subprocess of the real CLI (nnU-Net's and ours) with its output appended to one log
file; a failed step is reported and, with ``keep_going``, the rest go on (steps that need it are
marked blocked). Progress is a tqdm bar over the steps that actually run.

Rules (``docs/experiment.md``):

* a step is finished only when its ``done_file`` exists (a training: ``validation/summary.json``);
* before a resume flag that makes nnU-Net unpickle a checkpoint (``--c``, ``--val``) the file is
  opened with torch's restricted unpickler; a file that fails is refused, never handed on;
* each child runs in its own process group. SIGINT/SIGTERM of the runner send SIGTERM to the
  child's group, wait ``grace`` seconds, then SIGKILL it, and stop the run with
  :class:`RunInterrupted`; on Linux a child also gets SIGTERM when the runner dies (``kill -9``).
"""
from __future__ import annotations

import ctypes
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from tqdm import tqdm

from nnunet_xfer.errors import UserError
from nnunet_xfer.experiment.checkpoints import check_checkpoint
from nnunet_xfer.experiment.steps import Step, expand_token

#: Seconds a child has to end after SIGTERM before it is killed (pretrain writes its resume state).
GRACE_SECONDS = 30.0
STATUSES = ("ok", "skipped", "failed", "blocked")


@dataclass
class StepResult:
    """What happened to one step: ``ok``, ``skipped``, ``failed`` or ``blocked``."""
    step: Step
    status: str
    seconds: float = 0.0
    message: str = ""


class RunInterrupted(KeyboardInterrupt):
    """The runner got SIGINT/SIGTERM; the running child's process group was ended."""

    def __init__(self, signum: int, step: str | None) -> None:
        self.signum = signum
        self.step = step
        where = f" during {step} (its process group was ended)" if step else ""
        super().__init__(f"stopped by {signal.Signals(signum).name}{where}; run the same "
                         f"command again to continue")


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


# ---------------------------------------------------------------- children and signals
_PR_SET_PDEATHSIG = 1
try:
    _LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
except OSError:  # pragma: no cover
    _LIBC = None


def _die_with_parent(parent: int):
    """preexec_fn: SIGTERM this child when the runner dies (Linux), even by SIGKILL."""
    def hook() -> None:
        if _LIBC is not None:
            _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
            if os.getppid() != parent:  # the runner died before prctl took effect
                os._exit(1)
    return hook


class _Children:
    """The running child and the signal that asked the runner to stop."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.proc: subprocess.Popen | None = None
        self.signum: int | None = None
        self.deadline: float | None = None

    def handler(self, signum, _frame) -> None:
        if self.signum is None:
            self.signum = signum
        self._signal_group(signal.SIGTERM)
        if self.deadline is None:
            self.deadline = time.monotonic() + self.grace

    def _signal_group(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)  # start_new_session: pgid == pid
            except ProcessLookupError:
                pass

    def wait(self) -> int:
        """Wait for the child; after a stop request, SIGKILL its group once the grace is over."""
        assert self.proc is not None
        while True:
            try:
                code = self.proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                if self.deadline is not None and time.monotonic() > self.deadline:
                    self._signal_group(signal.SIGKILL)
        if self.signum is not None:
            # the child is gone; helpers it left in its group go too
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return code


class _Signals:
    """Install the forwarding handler for SIGINT/SIGTERM (main thread only) and restore after."""

    def __init__(self, children: _Children) -> None:
        self.children = children
        self.old: dict[int, object] = {}

    def __enter__(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, self.children.handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self.old.items():
            signal.signal(sig, old)


# ---------------------------------------------------------------- steps
def resume_flags(step: Step, env: Mapping[str, str]) -> list[str]:
    """The flag of the first resume entry whose file exists (after the unpickling check)."""
    for r in step.resume:
        path = Path(expand_token(r.file, env))
        if path.exists():
            if r.check:
                check_checkpoint(path)
            return [r.flag]
    return []


def is_done(step: Step, env: Mapping[str, str]) -> bool:
    """True when the step's result exists."""
    return bool(step.done_file) and Path(expand_token(step.done_file, env)).exists()


def run_steps(steps: list[Step], log_path: Path, env: Mapping[str, str], keep_going: bool = True,
              desc: str = "steps", grace: float | None = None) -> list[StepResult]:
    """Execute ``steps`` in order; return one :class:`StepResult` per step (same order).

    ``env`` is the subprocesses' full environment. Steps whose result exists are skipped before
    the progress bar starts, so its ETA reflects real work. Raises :class:`RunInterrupted`
    (after ending the running child) when the runner gets SIGINT or SIGTERM; ``grace``: seconds
    between SIGTERM and SIGKILL of the child's group (default :data:`GRACE_SECONDS`).
    """
    env = dict(env)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    results: dict[str, StepResult] = {}
    todo: list[Step] = []
    children = _Children(GRACE_SECONDS if grace is None else grace)
    with open(log_path, "a") as log, _Signals(children):
        _log(log, f"=== {desc}: {len(steps)} steps (pid {os.getpid()})")
        for step in steps:
            try:
                done = is_done(step, env)
            except UserError:
                done = False  # the step itself reports the missing variable
            if done:
                results[step.name] = StepResult(step, "skipped", message="already finished")
                _log(log, f"SKIP {step.name}: {expand_token(step.done_file, env)} exists")
            else:
                todo.append(step)
        if len(todo) < len(steps):
            tqdm.write(f"{desc}: {len(steps) - len(todo)} of {len(steps)} already finished, skipped")
        bar = tqdm(todo, desc=desc, unit="step", dynamic_ncols=True, disable=None)  # terminal only
        stop = False
        try:
            for step in bar:
                if children.signum is not None:
                    raise RunInterrupted(children.signum, None)
                bar.set_postfix_str(step.name)
                if stop:
                    results[step.name] = StepResult(step, "blocked", message="an earlier step failed")
                    continue
                bad = [n for n in step.needs
                       if n in results and results[n].status in ("failed", "blocked")]
                if bad:
                    results[step.name] = StepResult(step, "blocked",
                                                    message=f"needs {bad[0]}, which failed")
                    _log(log, f"BLOCKED {step.name}: needs {bad[0]}")
                    continue
                results[step.name] = _run_one(step, env, log, log_path, children)
                if results[step.name].status == "failed":
                    r = results[step.name]
                    tqdm.write(f"FAILED {step.name} after {r.seconds:.0f} s: "
                               f"{r.message.splitlines()[0]}")
                    stop = not keep_going
        except RunInterrupted as e:
            _log(log, f"INTERRUPTED by {signal.Signals(e.signum).name}"
                      + (f" during {e.step}" if e.step else ""))
            raise
        finally:
            bar.close()
        counts = {s: sum(r.status == s for r in results.values()) for s in STATUSES}
        _log(log, "=== done: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return [results[s.name] for s in steps]


def _run_one(step: Step, env: dict, log, log_path: Path, children: _Children) -> StepResult:
    start = time.monotonic()
    try:
        argv = [expand_token(t, env) for t in step.argv]
        child_env = {**env, **{k: expand_token(v, env) for k, v in step.env}}
        argv += resume_flags(step, env)
    except UserError as e:
        _log(log, f"FAIL {step.name}: {e}")
        return StepResult(step, "failed", message=str(e))
    argv[0] = executable(argv[0])
    _log(log, f"RUN {step.name}: "
              + " ".join([f"{k}={shlex.quote(v)}" for k, v in step.env] + [shlex.join(argv)]))
    offset = log.tell()
    err = ""
    try:
        children.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                         env=child_env, start_new_session=True,
                                         preexec_fn=_die_with_parent(os.getpid()))
    except OSError as e:
        code, err = -1, str(e)
    else:
        # a signal that came before the child existed is forwarded now
        if children.signum is not None:
            children.handler(children.signum, None)
        code = children.wait()
        children.proc = None
    seconds = time.monotonic() - start
    log.flush()
    if children.signum is not None:
        _log(log, f"STOPPED {step.name} ({seconds:.1f} s): exit {code}")
        raise RunInterrupted(children.signum, step.name)
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
