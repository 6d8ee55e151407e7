"""`nnunet-xfer demo`: the whole pipeline on a synthetic cohort, CPU only, through the real CLIs.

Stages: phantom → convert → nnUNetv2_plan_and_preprocess → pretrain → nnUNetv2_train grid →
evaluate (with the observers) → report → observer study → its report, then the table of Dice and
RMS DTA per source and n with the observers' range and the human-level verdicts. Every stage is a subprocess
of the same commands a user types (the experiment's step runner executes them), so the demo is
also the smoke test of the installation. nnU-Net's folders go under the output folder unless
``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` are all set already.
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from nnunet_xfer import settings as env_settings
from nnunet_xfer import atomic
from nnunet_xfer.errors import UserError
from nnunet_xfer.experiment import (
    Grid,
    ResultsTable,
    Step,
    format_table,
    grid_steps,
    results_table,
    run_steps,
)
from nnunet_xfer.experiment.steps import ShellLayout
from nnunet_xfer.layout import (
    CASES_CSV,
    DEMO_LOG,
    EVAL_CASES_CSV,
    EVAL_SUMMARY_JSON,
    EVALUATION_FOLDER,
    REPORT_HTML,
)
from nnunet_xfer.study_grid import trainer_name
from nnunet_xfer.trainers import trainer_environment

DEMO_ID = 990
DEMO_NAME = f"Dataset{DEMO_ID}_XferDemo"
NNUNET_VARS = env_settings.NNUNET_FOLDERS


@dataclass(frozen=True)
class DemoSettings:
    """Cohort size and schedules of one demo flavour."""
    cases: int
    size: int
    observers: int
    observer_cases: int
    sources: tuple[str, ...]
    sizes: tuple[int, ...]
    epochs: int
    iterations: int
    pretrain_iterations: int


#: Sized to finish in <= 10 min on 2 CPU cores with models that clearly beat chance.
FULL = DemoSettings(cases=40, size=128, observers=10, observer_cases=40,
                    sources=("scratch", "rec", "jigsaw"), sizes=(5, 10), epochs=3,
                    iterations=20, pretrain_iterations=10)
#: The tiny version the tests run (< 2.5 min).
QUICK = DemoSettings(cases=24, size=64, observers=3, observer_cases=24, sources=("scratch", "rec"),
                     sizes=(5,), epochs=1, iterations=2, pretrain_iterations=5)


def demo_environment(out: Path, settings: DemoSettings, environ: dict | None = None) -> dict:
    """The subprocesses' environment: nnU-Net folders (the user's if all set, else under ``out``),
    trainer discovery, CPU-friendly nnU-Net settings and the demo's short schedules."""
    env = trainer_environment(environ)
    if not all(env.get(v) for v in NNUNET_VARS):
        for v in NNUNET_VARS:
            env[v] = str(out.resolve() / v)
    # nnUNet_n_proc_DA=1: one background augmentation worker (0 breaks nnU-Net's planner, which
    # calls torch.set_num_threads with it); nnUNet_def_n_proc=1: no 8-process export pools on CPU.
    env.update({"nnUNet_n_proc_DA": "1", "nnUNet_def_n_proc": "1", "nnUNet_compile": "false",
                "MPLBACKEND": "Agg",
                "nnUNet_xfer_epochs": str(settings.epochs),
                "nnUNet_xfer_iterations": str(settings.iterations)})
    return env


def demo_grid(out: Path, settings: DemoSettings) -> Grid:
    """The demo's grid: fold 0 on CPU, its sources and sizes, observers from the phantom."""
    return Grid(dataset=str(DEMO_ID), sources=settings.sources, sizes=settings.sizes, folds=(0,),
                device="cpu", observers=out.resolve() / "phantom" / "observers",
                pretrain_iterations=settings.pretrain_iterations)


def demo_steps(out: Path, settings: DemoSettings) -> list[tuple[str, list[Step]]]:
    """(stage, steps) in order; the training grid and its evaluation come from the experiment."""
    out = out.resolve()
    phantom = out / "phantom"
    sizes = ",".join(str(n) for n in settings.sizes)
    grid = grid_steps(demo_grid(out, settings), DEMO_NAME, torchvision=False)
    by_kind = lambda *kinds: [s for s in grid if s.kind in kinds]  # noqa: E731
    model = trainer_name(settings.sources[-1], max(settings.sizes))
    study = out / "observer_study"
    return [
        ("phantom", [Step("phantom", "phantom", (
            "nnunet-xfer", "phantom", str(phantom), "--cases", str(settings.cases), "--size",
            str(settings.size), "--observers", str(settings.observers), "--observer-cases",
            str(settings.observer_cases), "--seed", "0"))]),
        ("convert", [Step("convert", "convert", (
            "nnunet-xfer", "convert", "--cases", str(phantom / CASES_CSV), "-d", str(DEMO_ID),
            "-n", DEMO_NAME.split("_", 1)[1], "--sizes", sizes))]),
        ("plan and preprocess", [Step("plan", "plan", (
            "nnUNetv2_plan_and_preprocess", "-d", str(DEMO_ID), "-c", "2d", "-np", "2"))]),
        ("pretrain", by_kind("pretrain")),
        ("train", by_kind("train")),
        ("evaluate + report", by_kind("evaluate", "report")),
        ("observer study + report", [
            Step("observers", "observers", (
                "nnunet-xfer", "observers", "--reference", str(phantom / "masks"),
                "--observers", str(phantom / "observers"), "--images", str(phantom / "images"),
                "--predictions", str(ShellLayout(DEMO_NAME).run_folder(model)),
                "--name", model, "-o", str(study))),
            Step("observer report", "report", (
                "nnunet-xfer", "report", "-i", str(study), "-o", str(study / REPORT_HTML)),
                needs=("observers",))]),
    ]


#: What the demo writes into its output folder while it runs.
DEMO_OWNED = (DEMO_LOG, "phantom", "observer_study", *NNUNET_VARS)


def _claim_output(out: Path, overwrite: bool) -> atomic.Claim:
    """The output guard's claim on ``out`` (refused unless it is new, or a folder an earlier demo
    wrote and ``overwrite``; a user's file there is named and kept)."""
    return atomic.check_replaceable(out, "demo", overwrite)


def _prepare(claim: atomic.Claim, env: dict, overwrite: bool, own_folders: bool) -> None:
    """Refuse the demo dataset in the user's folders unless overwrite; then make the output
    folder afresh, marked as the demo's while it runs (so an interrupted demo is replaced too)."""
    if not own_folders:
        for v in NNUNET_VARS:
            root = Path(env[v])
            found = sorted(root.glob(f"Dataset{DEMO_ID}_*")) if root.is_dir() else []
            if any(p.name != DEMO_NAME for p in found):
                raise UserError(f"{found[0]} uses the demo's dataset id {DEMO_ID}; unset "
                                f"{', '.join(NNUNET_VARS)} so the demo uses its own folders")
            if found and not overwrite:
                raise UserError(f"{found[0]} exists from an earlier demo; pass --overwrite to "
                                f"replace it")
            for p in found:
                shutil.rmtree(p)
    atomic.take_folder(claim, owned=DEMO_OWNED)


@dataclass(frozen=True)
class DemoResult:
    """What the demo produced: stage times, where the outputs are, and the results table."""
    times: dict[str, float]
    report: Path
    evaluation: Path
    observer_study: Path
    models: Path
    table: ResultsTable


def run_demo(out: Path = Path("demo_output"), quick: bool = False,
             overwrite: bool = False) -> DemoResult:
    """Run the demo into ``out``, printing each stage's wall time as it ends.

    Returns the stage times, the output paths and the table of Dice / RMS DTA per source and n
    with the observers' range and the human-level verdicts. A failing stage stops the demo with a
    :class:`UserError` naming the stage and the log file.
    """
    settings = QUICK if quick else FULL
    claim = _claim_output(Path(out), overwrite)
    out = claim.path
    user_folders = all(env_settings.nnunet_folder_or_none(v) is not None for v in NNUNET_VARS)
    env = demo_environment(out, settings)
    _prepare(claim, env, overwrite, own_folders=not user_folders)
    for v in NNUNET_VARS:
        Path(env[v]).mkdir(parents=True, exist_ok=True)
    log = out.resolve() / DEMO_LOG
    print(f"nnunet-xfer demo ({'quick' if quick else 'full'}): {settings.cases} cases at "
          f"{settings.size}², sources {','.join(settings.sources)}, n={settings.sizes}, fold 0, "
          f"{settings.epochs} epoch(s) x {settings.iterations} iterations; CPU\n"
          f"nnU-Net folders: {'yours ($nnUNet_*)' if user_folders else out.resolve()}; "
          f"log: {log}", flush=True)
    times: dict[str, float] = {}
    start = time.monotonic()
    for stage, steps in demo_steps(out, settings):
        t0 = time.monotonic()
        results = run_steps(steps, log, env=env, keep_going=False, desc=stage)
        times[stage] = time.monotonic() - t0
        bad = [r for r in results if r.status == "failed"]
        if bad:
            raise UserError(f"demo stage '{stage}' failed at {bad[0].step.name}: "
                            f"{bad[0].message.splitlines()[0]}; full output in {log}")
        print(f"[{time.monotonic() - start:6.1f} s] {stage}: {times[stage]:.1f} s", flush=True)
    times["total"] = time.monotonic() - start
    atomic.write_marker(out, "demo")  # finished: every file it wrote, listed
    results_root = Path(env["nnUNet_results"])
    evaluation = results_root / DEMO_NAME / EVALUATION_FOLDER
    return DemoResult(times=times, report=evaluation / REPORT_HTML, evaluation=evaluation,
                      observer_study=out.resolve() / "observer_study" / REPORT_HTML,
                      models=results_root / DEMO_NAME, table=results_table(evaluation))


def demo_summary(result: DemoResult) -> str:
    """What the demo prints at the end: where everything is, then the results table."""
    return (f"\ndemo finished in {result.times['total']:.0f} s\n"
            f"report:              {result.report}\n"
            f"tables:              {result.evaluation / EVAL_CASES_CSV}, "
            f"{result.evaluation / EVAL_SUMMARY_JSON}\n"
            f"observer study:      {result.observer_study}\n"
            f"trained models:      {result.models}\n\n"
            f"fold 0's validation cases, mean per source and n (a smoke test, not the study's "
            f"result):\n{format_table(result.table)}")
