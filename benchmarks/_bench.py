"""Shared helpers for the benchmarks: what machine ran them, and timings whose ratios can be believed.

A ratio between two timings is only worth printing when both were taken under the same conditions.
:func:`interleaved` therefore runs every candidate once per round, rotating the order each round
(so that neither always runs first, after the other, or in the warm cache it left), repeats the
rounds, and records process CPU time and wall time of every call. Report the minimum (the least
disturbed call; the most trustworthy figure on a shared machine) and the median.

Usage::

    from _bench import interleaved, machine_report, pin_threads
    pin_threads(1)                       # before numpy/torch start their thread pools
    print(machine_report())
    res = interleaved({"main": old_fn, "ours": new_fn}, repeats=7)
    print(res.table(baseline="main", per=n_items, unit="ms per pair"))

CPU time is ``time.process_time``: all threads of this process, so a multi-threaded library is
charged for every core it keeps busy (call :func:`pin_threads` to time single-threaded work).
Wall time is ``time.perf_counter``. Benchmarks run from the repository root as
``python benchmarks/NAME.py``; this folder is then on ``sys.path`` and ``import _bench`` works.
"""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def pin_threads(n: int = 1) -> None:
    """Ask numeric libraries for ``n`` threads. Environment variables only bind before numpy or
    torch are first imported, so call this at the top of a benchmark; torch, if already imported,
    is set directly."""
    for var in _THREAD_VARS:
        os.environ[var] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def _version(module: str) -> str:
    try:
        mod = __import__(module)
    except ImportError:
        return "not installed"
    return getattr(mod, "__version__", "?")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """The machine and software a benchmark ran on, taken now (call it at the start)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    try:
        load = os.getloadavg()
    except OSError:
        load = (float("nan"),) * 3
    return dict(
        date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        cpu=_cpu_model(), cores=os.cpu_count(), cores_usable=usable,
        load_avg_1_5_15=tuple(round(x, 2) for x in load),
        threads={v: os.environ[v] for v in _THREAD_VARS if v in os.environ},
        python=platform.python_version(), numpy=_version("numpy"), scipy=_version("scipy"),
        torch=_version("torch"), platform=platform.platform(),
    )


def machine_report(info: dict | None = None) -> str:
    """:func:`machine` as two printable lines."""
    m = info or machine()
    threads = ", ".join(f"{k}={v}" for k, v in m["threads"].items()) or "library defaults"
    load = " ".join(f"{x:.2f}" for x in m["load_avg_1_5_15"])
    return (f"machine: {m['cpu']}; {m['cores']} cores ({m['cores_usable']} usable); "
            f"load average at start {load} (1/5/15 min); threads: {threads}\n"
            f"software: Python {m['python']}, numpy {m['numpy']}, scipy {m['scipy']}, "
            f"torch {m['torch']}; {m['platform']}; {m['date']}")


@dataclass
class Timings:
    """Per-call CPU and wall seconds of each candidate, in the order the candidates were given."""
    cpu: dict[str, list[float]] = field(default_factory=dict)
    wall: dict[str, list[float]] = field(default_factory=dict)
    rounds: int = 0

    def summary(self, name: str, per: float = 1) -> dict[str, float]:
        """Min and median of one candidate's CPU and wall time, in seconds divided by ``per``."""
        c, w = self.cpu[name], self.wall[name]
        return dict(cpu_min=min(c) / per, cpu_median=statistics.median(c) / per,
                    wall_min=min(w) / per, wall_median=statistics.median(w) / per)

    def table(self, baseline: str, per: float = 1, unit: str = "ms per call",
              scale: float = 1000.0) -> str:
        """Markdown table: min and median CPU and wall time of each candidate (seconds × ``scale``
        / ``per``), and how many times the baseline's time each one takes (CPU min, CPU median,
        wall median: > 1 means slower than the baseline)."""
        base = self.summary(baseline, per)
        lines = [f"{self.rounds} interleaved rounds, order rotated each round; {unit}; "
                 f"× {baseline} = candidate time / time of {baseline} (> 1: slower)",
                 "",
                 "| candidate | CPU min | CPU median | wall min | wall median "
                 f"| × {baseline} CPU min | × CPU median | × wall median |",
                 "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for name in self.cpu:
            s = self.summary(name, per)
            cells = [f"{s[k] * scale:.3f}" for k in ("cpu_min", "cpu_median", "wall_min",
                                                     "wall_median")]
            ratios = [f"{s[k] / base[k]:.2f}" if base[k] > 0 else "–"
                      for k in ("cpu_min", "cpu_median", "wall_median")]
            lines.append(f"| {name} | " + " | ".join(cells + ratios) + " |")
        return "\n".join(lines)


def interleaved(candidates: dict[str, Callable[[], object]], repeats: int = 7,
                warmup: int = 1, minimum: int = 5) -> Timings:
    """Call every candidate once per round for ``repeats`` rounds (≥ ``minimum``, 5 unless a
    caller repeats the whole measurement itself), rotating the order by one each round, after
    ``warmup`` untimed rounds; record each call's process CPU and wall time."""
    out = _empty_timings(candidates, repeats, minimum)
    for r, names in _rotated_rounds(list(candidates), repeats, warmup):
        for name in names:
            fn = candidates[name]
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            w1, c1 = time.perf_counter(), time.process_time()
            if r >= 0:
                out.cpu[name].append(c1 - c0)
                out.wall[name].append(w1 - w0)
    return out


def _empty_timings(candidates: dict, repeats: int, minimum: int) -> Timings:
    if repeats < minimum:
        raise ValueError(f"repeats must be >= {minimum} for a believable comparison, got {repeats}")
    return Timings(cpu={n: [] for n in candidates}, wall={n: [] for n in candidates},
                   rounds=repeats)


def _rotated_rounds(names: list[str], repeats: int, warmup: int):
    """(round, names in this round's order): warm-up rounds negative, the order rotated by one
    each round."""
    for r in range(-warmup, repeats):
        shift = r % len(names)
        yield r, names[shift:] + names[:shift]


def load_now() -> str:
    """The 1/5/15-minute load average now, as printed by ``uptime``."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def command_line() -> str:
    """The command that ran this benchmark, to paste into docs/benchmarks.md."""
    return shlex.join(["python", *sys.argv])


def checkout(code: Path) -> str:
    """``<commit>`` of a git checkout, ``+uncommitted`` when its tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(code), *args], capture_output=True,
                              text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "not a git checkout"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "nnunet_xfer")
    return commit + (" +uncommitted changes" if dirty else "")


def require_imports_from(code: Path, env: dict, cwd: Path, python: str = sys.executable,
                         package: str = "nnunet_xfer") -> Path:
    """The file ``package`` is imported from by ``python`` with ``env`` in ``cwd``; SystemExit
    unless it lies in ``code``. ``python -m`` puts its working folder first on ``sys.path``, so a
    child started inside another checkout imports that checkout, whatever ``PYTHONPATH`` says."""
    out = subprocess.run([python, "-c", f"import {package}; print({package}.__file__)"],
                         env=env, cwd=cwd, capture_output=True, text=True)
    found = Path(out.stdout.strip() or "?").resolve()
    if out.returncode != 0 or Path(code).resolve() not in found.parents:
        raise SystemExit(f"{package} would be imported from {found}, not from {code} "
                         f"(cwd {cwd}){out.stderr[-500:]}")
    return found


def time_child(cmd: list[str], env: dict, cwd: Path) -> tuple[float, float, str]:
    """(CPU s, wall s, stdout) of one command. CPU is user + system time of the child and of every
    descendant it waited for, from ``wait4`` on the child: a worker pool that is joined is
    counted, a process left running is not. SystemExit with the command's output when it fails."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=err, text=True)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{stdout[-2000:]}\n"
                         f"{stderr[-2000:]}")
    return usage.ru_utime + usage.ru_stime, wall, stdout


def interleaved_children(candidates: dict[str, Callable[[], tuple[float, float]]],
                         repeats: int = 5, warmup: int = 0, minimum: int = 5,
                         report: Callable[[str], None] | None = print) -> Timings:
    """:func:`interleaved` for candidates that time themselves (e.g. with :func:`time_child`):
    each returns (CPU s, wall s) of one call. ``report`` gets one line per timed call and the
    load average before each round."""
    out = _empty_timings(candidates, repeats, minimum)
    for r, names in _rotated_rounds(list(candidates), repeats, warmup):
        if report:
            report(f"round {r}{' (warm-up)' if r < 0 else ''}: load {load_now()}")
        for name in names:
            cpu, wall = candidates[name]()
            if report:
                report(f"  {name}: CPU {cpu:.2f} s, wall {wall:.2f} s")
            if r >= 0:
                out.cpu[name].append(cpu)
                out.wall[name].append(wall)
    return out


def plan_dataset(dataset_id: int, processes: int = 1) -> None:
    """``nnUNetv2_plan_and_preprocess`` of the 2d configuration, as the demo and the tests run it
    (:func:`nnunet_xfer.experiment.steps.plan_argv` with ``settings.NNUNET_PLANNER``)."""
    from nnunet_xfer.experiment.runner import executable
    from nnunet_xfer.experiment.steps import plan_argv
    from nnunet_xfer.settings import NNUNET_PLANNER
    argv = plan_argv(dataset_id, processes)
    subprocess.run([executable(argv[0]), *argv[1:]], check=True, capture_output=True,
                   env={**os.environ, **NNUNET_PLANNER})


def training_arguments(description: str, quick: dict, full: dict, device: str | None,
                       extra: Callable[[object], None] | None = None):
    """Parsed arguments of a benchmark that times training steps: ``--quick`` / ``--patch`` /
    ``--batch`` / ``--iterations`` / ``--repeats`` / ``--device`` / ``--threads`` / ``--json``
    (``extra`` adds more); unset sizes come from ``quick`` or ``full``."""
    import argparse
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: " + ", ".join(f"{k} {v}" for k, v in quick.items()))
    ap.add_argument("--patch", type=int, default=None, help=f"square patch (default {full['patch']})")
    ap.add_argument("--batch", type=int, default=None, help=f"batch size (default {full['batch']})")
    ap.add_argument("--iterations", type=int, default=None,
                    help=f"training steps per timed call (default {full['iterations']})")
    ap.add_argument("--repeats", type=int, default=None,
                    help=f"interleaved rounds, >= 5 (default {full['repeats']})")
    ap.add_argument("--device", default=device, help="cpu or cuda")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--json", default=None, help="also write the results here")
    if extra is not None:
        extra(ap)
    a = ap.parse_args()
    for k, v in (quick if a.quick else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    return a
