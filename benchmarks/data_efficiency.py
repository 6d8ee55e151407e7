"""The study's headline curve on the CPU: Dice and RMS DTA against n for every source, beside the
threshold baseline and the observers, through the package's real pipeline.

Every stage is a subprocess of the commands a user types, run by the experiment's step runner
(``nnunet_xfer.experiment.run_steps``: finished steps are skipped, unfinished trainings continue):

    phantom (+ --source-task) → convert → select --strategy diverse → convert --selection
    → nnUNetv2_plan_and_preprocess → pretrain rec/jigsaw (per fold), seg (the phantom's
    synthetic CT source task) → nnUNetv2_train with the Xfer trainers → evaluate --observers
    → report, and report -i random=… -i diverse=… for the selection comparison.

Full run (defaults): a 72-case phantom at 64² (convert's 4 folds: 54 training, 18 validation
slices each; all 4 are trained, so every one of the 72 cases is validated once), 5 observers on
every case; sources scratch, rec, jigsaw and seg at n = 5, 10, 25, 50 (nested) on the 4 folds, every one with nnU-Net's 2d network and batch of the plans, the same schedule
(``--epochs`` × ``--iterations``) and the same pretraining budget; plus scratch on the subsets
``select --strategy diverse`` picks at n = 5 and 10. Then per point: mean Dice and RMS DTA with
95 % t intervals over the validation cases, the paired difference against scratch on the same
cases, the threshold baseline and the observers' band; a figure, a Markdown table and a JSON.

    PYTHONPATH=. .venv/bin/python benchmarks/data_efficiency.py --root /tmp/de   # < 2 h on 2 cores
    PYTHONPATH=. .venv/bin/python benchmarks/data_efficiency.py --quick                    # ≤ 5 min
    PYTHONPATH=. .venv/bin/python benchmarks/data_efficiency.py --root /tmp/de --analyse-only

Re-running with the same ``--root`` resumes: finished steps are skipped (their log says SKIP),
a training interrupted mid-way continues from its checkpoint. ``--analyse-only`` reads the
evaluations that exist and writes the figure and tables without running anything.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

RANDOM_ID, DIVERSE_ID = 601, 602
RANDOM_NAME, DIVERSE_NAME = "Dataset601_DataEff", "Dataset602_DataEffDiverse"


@dataclass(frozen=True)
class Settings:
    """Cohort, grid and schedule of one run (every source gets the same)."""

    cases: int = 72
    size: int = 64
    observers: int = 5
    source_cases: int = 100
    sources: tuple[str, ...] = ("scratch", "rec", "jigsaw", "seg")
    sizes: tuple[int, ...] = (5, 10, 25, 50)
    folds: tuple[int, ...] = (0, 1, 2, 3)
    diverse_sizes: tuple[int, ...] = (5, 10)
    epochs: int = 4
    iterations: int = 30
    pretrain_iterations: int = 200


FULL = Settings()
#: ``make bench``: the pipeline end to end in minutes, not a result.
QUICK = Settings(cases=24, size=64, observers=3, source_cases=12, sources=("scratch", "rec", "seg"),
                 sizes=(5,), folds=(0,), diverse_sizes=(5,), epochs=1, iterations=2,
                 pretrain_iterations=3)


# ---------------------------------------------------------------- the steps
def pipeline(root: Path, s: Settings) -> list[tuple[str, list]]:
    """(stage, steps) in order: every step a command line of the package or of nnU-Net."""
    from nnunet_xfer.experiment import Grid, Step, grid_steps
    from nnunet_xfer.experiment.steps import plan_argv
    from nnunet_xfer.layout import CASES_CSV, DatasetLayout, REPORT_HTML
    from nnunet_xfer.settings import NNUNET_PLANNER

    phantom, source_task = root / "phantom", root / "source_task"
    selection = root / "diverse_selection.json"
    sizes = ",".join(map(str, s.sizes))
    grid = Grid(dataset=str(RANDOM_ID), sources=s.sources, sizes=s.sizes, folds=s.folds,
                device="cpu", observers=phantom / "observers",
                pretrain_iterations=s.pretrain_iterations)
    diverse = Grid(dataset=str(DIVERSE_ID), sources=("scratch",), sizes=s.diverse_sizes,
                   folds=s.folds, device="cpu", observers=phantom / "observers")
    main_steps = grid_steps(grid, RANDOM_NAME, torchvision=False)
    diverse_steps = grid_steps(diverse, DIVERSE_NAME, torchvision=False)
    # trainings fold by fold, then n, then source: an interrupted run leaves whole folds
    order = {src: i for i, src in enumerate(s.sources)}

    def train_key(step) -> tuple:
        argv = step.argv
        trainer = argv[argv.index("-tr") + 1]
        n = int(trainer.rsplit("_n", 1)[1])
        source = next(src for src in s.sources if trainer.lower().startswith(f"xfer{src}trainer"))
        return int(argv[3]), n, order[source]

    kind = lambda steps, k: [x for x in steps if x.kind == k]  # noqa: E731
    trainings = sorted(kind(main_steps, "train") + kind(diverse_steps, "train"), key=train_key)
    raw = lambda name: DatasetLayout(name).raw  # noqa: E731  (under $nnUNet_raw)
    evaluation = {name: DatasetLayout(name).evaluation_dir for name in (RANDOM_NAME, DIVERSE_NAME)}
    return [
        ("phantom", [Step("phantom", "phantom", (
            "nnunet-xfer", "phantom", str(phantom), "--cases", str(s.cases), "--size", str(s.size),
            "--observers", str(s.observers), "--observer-cases", str(s.cases), "--seed", "0",
            "--source-task", str(source_task), "--source-cases", str(s.source_cases)),
            done_file=str(phantom / CASES_CSV))]),
        ("convert", [
            Step("convert random", "convert", (
                "nnunet-xfer", "convert", "--cases", str(phantom / CASES_CSV), "-d", str(RANDOM_ID),
                "-n", RANDOM_NAME.split("_", 1)[1], "--sizes", sizes),
                done_file=str(raw(RANDOM_NAME) / "splits_final.json")),
            Step("select diverse", "select", (
                "nnunet-xfer", "select", "-d", str(RANDOM_ID), "--strategy", "diverse",
                "-o", str(selection)), done_file=str(selection), needs=("convert random",)),
            Step("convert diverse", "convert", (
                "nnunet-xfer", "convert", "--cases", str(phantom / CASES_CSV), "-d", str(DIVERSE_ID),
                "-n", DIVERSE_NAME.split("_", 1)[1], "--sizes",
                ",".join(map(str, s.diverse_sizes)), "--selection", str(selection)),
                done_file=str(raw(DIVERSE_NAME) / "splits_final.json"), needs=("select diverse",))]),
        ("plan and preprocess", [
            Step(f"plan {name}", "plan", plan_argv(i, 2), env=tuple(NNUNET_PLANNER.items()),
                 done_file=str(DatasetLayout(name).plans_json()))
            for i, name in ((RANDOM_ID, RANDOM_NAME), (DIVERSE_ID, DIVERSE_NAME))]),
        ("pretrain", kind(main_steps, "pretrain")),
        ("train", trainings),
        ("evaluate + report", kind(main_steps, "evaluate") + kind(main_steps, "report")
         + kind(diverse_steps, "evaluate") + kind(diverse_steps, "report")
         + [Step("report random vs diverse", "report", (
             "nnunet-xfer", "report", "-i", f"random={evaluation[RANDOM_NAME]}",
             "-i", f"diverse={evaluation[DIVERSE_NAME]}",
             "-o", str(root / f"random_vs_diverse_{REPORT_HTML}"), "--overwrite"))]),
    ]


def environment(root: Path, s: Settings) -> dict:
    """The subprocesses' environment: nnU-Net folders under ``root``, the trainers, the schedule,
    the synthetic segmentation source as ``seg``'s data, CPU-friendly nnU-Net settings."""
    from nnunet_xfer.settings import NNUNET_FOLDERS, NNUNET_ON_CPU
    from nnunet_xfer.sources import spec
    from nnunet_xfer.trainers import trainer_environment
    env = trainer_environment(dict(os.environ))
    for var in NNUNET_FOLDERS:
        env[var] = str(root / var)
        Path(env[var]).mkdir(parents=True, exist_ok=True)
    env.update({**NNUNET_ON_CPU, "MPLBACKEND": "Agg", spec("seg").data_env: str(root / "source_task"),
                "nnUNet_xfer_epochs": str(s.epochs), "nnUNet_xfer_iterations": str(s.iterations)})
    # torch's OpenMP threads sleep instead of spinning while they wait (a shared CPU)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return env


class LoadSampler:
    """The 1-minute load average every ``every`` seconds, in a thread."""

    def __init__(self, every: float = 60.0) -> None:
        self.every, self.samples, self._stop = every, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            self.samples.append((time.time(), os.getloadavg()[0]))
            if self._stop.wait(self.every):
                return

    def __enter__(self) -> "LoadSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        loads = [x for _, x in self.samples]
        return {"n": len(loads), "min": min(loads), "median": float(np.median(loads)),
                "max": max(loads)} if loads else {"n": 0}


def run_pipeline(root: Path, s: Settings) -> dict:
    """Run (or resume) every stage; stage wall times, child CPU time and load while it ran."""
    from nnunet_xfer.experiment import run_steps
    env = environment(root, s)
    from nnunet_xfer.settings import NNUNET_FOLDERS
    os.environ.update({var: env[var] for var in NNUNET_FOLDERS})  # the layout's paths here
    log = root / "data_efficiency.log"
    times, statuses = {}, {}
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    with LoadSampler() as load:
        for stage, steps in pipeline(root, s):
            t0 = time.monotonic()
            results = run_steps(steps, log, env=env, keep_going=True, desc=stage)
            times[stage] = time.monotonic() - t0
            for r in results:
                statuses[r.step.name] = {"status": r.status, "seconds": round(r.seconds, 1)}
            failed = [r for r in results if r.status == "failed"]
            print(f"[{time.monotonic() - start:7.0f} s] {stage}: {times[stage]:.0f} s"
                  + (f", {len(failed)} FAILED (first: {failed[0].step.name}; see {log})"
                     if failed else ""), flush=True)
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"stage_seconds": times, "wall_seconds": time.monotonic() - start,
            "child_cpu_seconds": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
            "load_1min": load.summary(), "steps": statuses, "log": str(log)}


# ---------------------------------------------------------------- the analysis
def _read(evaluation: Path) -> tuple[pd.DataFrame, dict]:
    from nnunet_xfer.layout import EVAL_CASES_CSV, EVAL_SUMMARY_JSON
    cases = pd.read_csv(evaluation / EVAL_CASES_CSV, dtype={"case_id": str, "size_tag": str})
    return cases, json.loads((evaluation / EVAL_SUMMARY_JSON).read_text())


def _interval(values) -> dict:
    from nnunet_xfer.evaluation.references import mean_interval
    return mean_interval(np.asarray(values, dtype=np.float64))


def point_table(cases: pd.DataFrame, summary: dict, baseline: str = "scratch") -> pd.DataFrame:
    """Per source × n: mean Dice and RMS DTA with 95 % t intervals over cases, the paired
    difference against ``baseline`` on the same (fold, case), and the evaluation's verdicts."""
    from nnunet_xfer.evaluation.references import case_scores
    from nnunet_xfer.sources import is_reference
    verdicts = {(v["source"], str(v["size_tag"])): v["human_level"]
                for v in summary.get("human_level", [])}
    groups = {(g["source"], str(g["size_tag"])): g for g in summary["groups"]}
    rows = []
    for (source, tag), g in cases.groupby(["source", "size_tag"], sort=False):
        if is_reference(source) or not str(tag).isdigit():  # the curve's points only (no "all")
            continue
        row = {"source": source, "n": int(tag), "cases": len(g)}
        base = cases[(cases.source == baseline) & (cases.size_tag == tag)]
        for metric in ("dice", "rms_dta_mm"):
            mine = case_scores(g, metric)
            row[metric] = _interval(mine.to_numpy())
            if source != baseline and len(base):
                other = case_scores(base, metric)
                common = mine.index.intersection(other.index)
                row[f"{metric}_vs_{baseline}"] = _interval((mine[common] - other[common]).to_numpy())
        vs = groups.get((source, tag), {}).get("vs_reference", {}).get("threshold", {})
        row["beats_threshold"] = vs.get("beats")
        row["human_level"] = verdicts.get((source, tag))
        rows.append(row)
    order = {s: i for i, s in enumerate(FULL.sources)}
    return pd.DataFrame(rows).sort_values(["n", "source"], key=lambda c: c.map(order)
                                          if c.name == "source" else c).reset_index(drop=True)


def reference_line(cases: pd.DataFrame) -> dict:
    """The threshold baseline over every validation case: Dice and RMS DTA with 95 % intervals."""
    from nnunet_xfer.evaluation.references import case_scores
    thr = cases[cases.source == "threshold"]
    return {"cases": len(thr), **{m: _interval(case_scores(thr, m).to_numpy())
                                  for m in ("dice", "rms_dta_mm")}}


def selection_table(random_cases: pd.DataFrame, diverse_cases: pd.DataFrame,
                    sizes: tuple[int, ...]) -> pd.DataFrame:
    """Scratch on random against diverse subsets at each n: means and the paired difference
    diverse − random on the same validation cases."""
    from nnunet_xfer.evaluation.references import case_scores
    rows = []
    for n in sizes:
        pick = lambda c: c[(c.source == "scratch") & (c.size_tag == str(n))]  # noqa: E731
        a, b = pick(random_cases), pick(diverse_cases)
        if not len(a) or not len(b):
            continue
        row = {"n": n, "cases": min(len(a), len(b))}
        for metric in ("dice", "rms_dta_mm"):
            ra, rb = case_scores(a, metric), case_scores(b, metric)
            common = ra.index.intersection(rb.index)
            row[f"random_{metric}"] = _interval(ra[common].to_numpy())
            row[f"diverse_{metric}"] = _interval(rb[common].to_numpy())
            row[f"{metric}_diverse_minus_random"] = _interval((rb[common] - ra[common]).to_numpy())
        rows.append(row)
    return pd.DataFrame(rows)


def _ci(v: dict, digits: int = 3) -> str:
    if not v or not v.get("n"):
        return "–"
    if not np.isfinite(v["ci_low"]):
        return f"{v['mean']:.{digits}f}"
    return f"{v['mean']:.{digits}f} [{v['ci_low']:.{digits}f}, {v['ci_high']:.{digits}f}]"


def _signed(v: dict | float, digits: int = 3) -> str:
    if not isinstance(v, dict) or not v.get("n"):
        return "–"
    return (f"{v['mean']:+.{digits}f} [{v['ci_low']:+.{digits}f}, {v['ci_high']:+.{digits}f}]"
            if np.isfinite(v["ci_low"]) else f"{v['mean']:+.{digits}f}")


def markdown(points: pd.DataFrame, threshold: dict, band: dict | None, selection: pd.DataFrame,
             observers: dict | None) -> str:
    """The tables of docs/benchmarks.md."""
    yes = lambda x: "–" if x is None or x != x else ("yes" if x else "no")  # noqa: E731
    lines = ["| n | source | cases | Dice [95% CI] | RMS DTA mm [95% CI] | Δ Dice vs scratch "
             "[95% CI] | Δ RMS DTA vs scratch | beats threshold | human level |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in points.itertuples(index=False):
        d = getattr(r, "dice_vs_scratch", None)
        m = getattr(r, "rms_dta_mm_vs_scratch", None)
        lines.append(f"| {r.n} | {r.source} | {r.cases} | {_ci(r.dice)} | {_ci(r.rms_dta_mm, 2)} | "
                     f"{_signed(d) if isinstance(d, dict) else '–'} | "
                     f"{_signed(m, 2) if isinstance(m, dict) else '–'} | {yes(r.beats_threshold)} | "
                     f"{yes(r.human_level)} |")
    lines.append(f"| – | threshold (no learning) | {threshold['cases']} | {_ci(threshold['dice'])} | "
                 f"{_ci(threshold['rms_dta_mm'], 2)} | | | | |")
    if band:
        lines.append(f"\nObservers ({observers.get('n_observers')}, on {observers.get('n_cases')} "
                     f"cases, each vs the reference): Dice {band['dice'][0]:.3f}–"
                     f"{band['dice'][1]:.3f}, RMS DTA {band['rms_dta_mm'][0]:.2f}–"
                     f"{band['rms_dta_mm'][1]:.2f} mm.")
    if len(selection):
        lines += ["", "| n | cases | scratch, random: Dice | scratch, diverse: Dice | Δ Dice diverse − "
                  "random [95% CI] | Δ RMS DTA mm diverse − random [95% CI] |",
                  "|---|---|---|---|---|---|"]
        for r in selection.itertuples(index=False):
            lines.append(f"| {r.n} | {r.cases} | {_ci(r.random_dice)} | {_ci(r.diverse_dice)} | "
                         f"{_signed(r.dice_diverse_minus_random)} | "
                         f"{_signed(r.rms_dta_mm_diverse_minus_random, 2)} |")
    return "\n".join(lines) + "\n"


def _n_axis(ax, ns: list[int]) -> None:
    """A log axis of n with a tick at each n and room for the offset markers."""
    ax.set_xscale("log")
    ax.set_xticks(ns)
    ax.set_xticklabels([str(n) for n in ns])
    ax.minorticks_off()
    ax.set_xlim(min(ns) / 1.35, max(ns) * 1.35)
    ax.set_xlabel("annotated training slices n")


def figure(points: pd.DataFrame, threshold: dict, band: dict | None, selection: pd.DataFrame,
           path: Path, title: str) -> Path:
    """Dice and RMS DTA against n (95 % intervals), the threshold line and the observers' band;
    a third panel with the paired Dice difference against scratch; diverse selection as open
    markers."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from nnunet_xfer.evaluation.figures import source_color
    from nnunet_xfer.sources import label
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    sources = list(dict.fromkeys(points.source))
    ns = sorted(set(points.n))
    offset = {s: 1.0 + 0.035 * (i - (len(sources) - 1) / 2) for i, s in enumerate(sources)}
    for ax, metric, what in ((axes[0], "dice", "Dice"), (axes[1], "rms_dta_mm", "RMS DTA (mm)")):
        if band and band.get(metric):
            ax.axhspan(*band[metric], color="0.85", lw=0, label="observers vs reference (range)")
        t = threshold[metric]
        ax.axhline(t["mean"], color="k", ls="--", lw=1.2, label="threshold, no learning")
        if np.isfinite(t["ci_low"]):
            ax.axhspan(t["ci_low"], t["ci_high"], color="k", alpha=0.08, lw=0)
        for s in sources:
            sub = points[points.source == s].sort_values("n")
            x = sub.n.to_numpy(float) * offset[s]
            y = np.array([v["mean"] for v in sub[metric]])
            err = np.array([[v["mean"] - v["ci_low"], v["ci_high"] - v["mean"]] for v in sub[metric]]).T
            ax.errorbar(x, y, yerr=err, marker="o", ms=5, capsize=3, lw=1.5,
                        color=source_color(s), label=label(s))
        if len(selection):
            y = [v["mean"] for v in selection[f"diverse_{metric}"]]
            err = np.array([[v["mean"] - v["ci_low"], v["ci_high"] - v["mean"]]
                            for v in selection[f"diverse_{metric}"]]).T
            ax.errorbar(selection.n.to_numpy(float) * 1.09, y, yerr=err, marker="o", mfc="white",
                        ms=6, capsize=3, lw=1, ls=":", color=source_color("scratch"),
                        label="scratch, diverse selection")
        _n_axis(ax, ns)
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    ax = axes[2]
    ax.axhline(0, color="k", lw=1)
    for s in sources:
        sub = points[(points.source == s)].sort_values("n")
        if "dice_vs_scratch" not in sub or s == "scratch":
            continue
        v = list(sub["dice_vs_scratch"])
        ok = [isinstance(x, dict) for x in v]
        x = sub.n.to_numpy(float)[ok] * offset[s]
        v = [x_ for x_, k in zip(v, ok) if k]
        ax.errorbar(x, [d["mean"] for d in v],
                    yerr=np.array([[d["mean"] - d["ci_low"], d["ci_high"] - d["mean"]] for d in v]).T,
                    marker="o", ms=5, capsize=3, lw=1.5, color=source_color(s), label=label(s))
    _n_axis(ax, ns)
    ax.set_ylabel("Dice − scratch's Dice (same cases)")
    ax.set_title("paired difference against scratch (95% CI)", fontsize=10)
    ax.grid(alpha=0.3)
    axes[0].set_title("Dice (mean, 95% CI over validation cases)", fontsize=10)
    axes[1].set_title("RMS DTA (failed cases at the image diagonal)", fontsize=10)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 7),
               bbox_to_anchor=(0.5, -0.06), frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def analyse(root: Path, s: Settings, run_info: dict | None, figure_path: Path | None) -> dict:
    """Tables, figure and JSON from the two evaluations under ``root``."""
    from nnunet_xfer.layout import DatasetLayout
    os.environ["nnUNet_results"] = str(root / "nnUNet_results")
    random_eval = DatasetLayout(RANDOM_NAME).evaluation_dir
    diverse_eval = DatasetLayout(DIVERSE_NAME).evaluation_dir
    cases, summary = _read(random_eval)
    points = point_table(cases, summary)
    threshold = reference_line(cases)
    observers = summary.get("observers") or {}
    band = observers.get("band")
    selection = pd.DataFrame()
    if diverse_eval.is_dir():
        d_cases, _ = _read(diverse_eval)
        selection = selection_table(cases, d_cases, s.diverse_sizes)
    table = markdown(points, threshold, band, selection, observers)
    date = datetime.date.today().isoformat()
    title = (f"{s.cases}-case phantom at {s.size}², {len(s.folds)} fold(s), "
             f"{s.epochs} × {s.iterations} iterations, pretraining {s.pretrain_iterations} "
             f"iterations ({date})")
    fig = figure(points, threshold, band, selection, figure_path or root / "data_efficiency.png",
                 title)
    (root / "data_efficiency.md").write_text(table)
    result = {"date": date, "settings": s.__dict__, "run": run_info, "points":
              json.loads(points.to_json(orient="records")), "threshold": threshold,
              "observers": {k: observers.get(k) for k in ("n_observers", "n_cases", "band")},
              "selection": json.loads(selection.to_json(orient="records")),
              "verdict_rule": summary.get("verdict_rule"),
              "reference_rule": summary.get("reference_rule"),
              "figure": str(fig)}
    (root / "data_efficiency.json").write_text(json.dumps(result, indent=1, default=str))
    print(table)
    print(f"figure: {fig}\njson: {root / 'data_efficiency.json'}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="the pipeline end to end on a tiny cohort (make bench; not a result)")
    ap.add_argument("--root", type=Path, default=None,
                    help="working folder; re-use it to resume (default: a temporary folder)")
    ap.add_argument("--epochs", type=int, default=None, help=f"default {FULL.epochs}")
    ap.add_argument("--iterations", type=int, default=None,
                    help=f"training iterations per epoch (default {FULL.iterations})")
    ap.add_argument("--pretrain-iterations", type=int, default=None,
                    help=f"default {FULL.pretrain_iterations}")
    ap.add_argument("--analyse-only", action="store_true",
                    help="write the tables and figure from the evaluations under --root")
    ap.add_argument("--figure", type=Path, default=None,
                    help="where the figure goes (default ROOT/data_efficiency.png)")
    a = ap.parse_args()
    s = QUICK if a.quick else FULL
    s = replace(s, **{k: v for k, v in (("epochs", a.epochs), ("iterations", a.iterations),
                                        ("pretrain_iterations", a.pretrain_iterations))
                      if v is not None})
    tmp = None
    if a.root is None:
        tmp = tempfile.TemporaryDirectory(prefix="data_efficiency_")
        a.root = Path(tmp.name)
    root = a.root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True, cwd=Path(__file__).parent).stdout.strip()
    load = os.getloadavg()
    print(f"# data efficiency ({'quick' if a.quick else 'full'}): {platform.node()}, "
          f"{os.cpu_count()} cores, load {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} at start, "
          f"commit {commit}, {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}"
          f"\n# {s}\n# root {root}", flush=True)
    run_info = None
    if not a.analyse_only:
        run_info = {**run_pipeline(root, s), "commit": commit, "load_at_start": load,
                    "cores": os.cpu_count()}
        print(f"# wall {run_info['wall_seconds']:.0f} s, CPU of the commands "
              f"{run_info['child_cpu_seconds']:.0f} s, 1-min load while running "
              f"{run_info['load_1min']}", flush=True)
        (root / "data_efficiency_run.json").write_text(json.dumps(run_info, indent=1))
    elif (root / "data_efficiency_run.json").is_file():
        run_info = json.loads((root / "data_efficiency_run.json").read_text())
    analyse(root, s, run_info, a.figure)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
