"""`nnunet-xfer demo`: the whole pipeline on a synthetic cohort, CPU only, through the real CLIs.

Stages: phantom (with a synthetic segmentation source task) → convert →
nnUNetv2_plan_and_preprocess → pretrain (rec on fold 0's training images, seg on the source task)
→ nnUNetv2_train grid → evaluate (with the observers, beside the threshold baseline) → report →
observer study of the best model by the report's own criterion (or the one named) → its report,
then the table of Dice and RMS DTA per source and n with the threshold baseline, whether each model
beats it, the observers' range and the human-level verdicts. Every stage is a subprocess
of the same commands a user types (the experiment's step runner executes them), so the demo is
also the smoke test of the installation. nnU-Net's folders go under the output folder unless
``nnUNet_raw``, ``nnUNet_preprocessed`` and ``nnUNet_results`` are all set already.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from nnunet_xfer import settings as env_settings
from nnunet_xfer import atomic
from nnunet_xfer.errors import UserError
from nnunet_xfer.evaluation.findings import best_group
from nnunet_xfer.experiment import (
    Grid,
    ResultsTable,
    Step,
    format_table,
    grid_steps,
    results_table,
    run_steps,
)
from nnunet_xfer.experiment.steps import ShellLayout, plan_argv
from nnunet_xfer.dataset_conversion.raw_writer import claim_dataset
from nnunet_xfer.layout import (
    CASES_CSV,
    DEMO_LOG,
    EVAL_CASES_CSV,
    EVAL_SUMMARY_JSON,
    EVALUATION_FOLDER,
    EXPERIMENT_LOCK,
    EXPERIMENT_LOG,
    OUTPUT_MARKER,
    REPORT_HTML,
    STORE_FOLDER,
    TEMP_PREFIX,
    parse_run_folder_name,
)
from nnunet_xfer.sources import spec
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
    #: slices of the phantom's segmentation source task (``seg``'s data); 0: none written
    source_cases: int = 0


#: Sized to stay within 5 min on 2 idle CPU cores: scratch, a self-supervised source and the
#: synthetic segmentation source (the study's strongest kind), two sizes, fold 0; 64² slices so
#: that 4 × 30 iterations fit, enough for a model to beat the threshold baseline.
FULL = DemoSettings(cases=40, size=64, observers=10, observer_cases=40,
                    sources=("scratch", "rec", "seg"), sizes=(5, 10), epochs=4,
                    iterations=30, pretrain_iterations=30, source_cases=30)
#: The tiny version the tests run (< 2.5 min).
QUICK = DemoSettings(cases=24, size=64, observers=3, observer_cases=24, sources=("scratch", "rec"),
                     sizes=(5,), epochs=1, iterations=2, pretrain_iterations=5)
#: Folder of the phantom's segmentation source task in the demo's output folder.
SOURCE_TASK = "source_task"


def demo_environment(out: Path, settings: DemoSettings, environ: dict | None = None) -> dict:
    """The subprocesses' environment: nnU-Net folders (the user's if all set, else under ``out``),
    trainer discovery, CPU-friendly nnU-Net settings and the demo's short schedules."""
    env = trainer_environment(environ)
    if not all(env.get(v) for v in NNUNET_VARS):
        for v in NNUNET_VARS:
            env[v] = str(out.resolve() / v)
    env.update({**env_settings.NNUNET_ON_CPU, "MPLBACKEND": "Agg",
                "nnUNet_xfer_epochs": str(settings.epochs),
                "nnUNet_xfer_iterations": str(settings.iterations)})
    if "seg" in settings.sources:  # pretrain -s seg --data: the phantom's source task
        env[spec("seg").data_env] = str(out.resolve() / SOURCE_TASK)
    return env


def demo_grid(out: Path, settings: DemoSettings) -> Grid:
    """The demo's grid: fold 0 on CPU, its sources and sizes, observers from the phantom."""
    return Grid(dataset=str(DEMO_ID), sources=settings.sources, sizes=settings.sizes, folds=(0,),
                device="cpu", observers=out.resolve() / "phantom" / "observers",
                pretrain_iterations=settings.pretrain_iterations)


def demo_steps(out: Path, settings: DemoSettings,
               model: str | None = None) -> list[tuple[str, list[Step]]]:
    """(stage, steps) in order; the training grid and its evaluation come from the experiment.

    ``model``: the trainer of the observer study (default the last source at the largest n;
    :func:`run_demo` replaces it by :func:`observer_model` once the evaluation exists)."""
    out = out.resolve()
    phantom = out / "phantom"
    sizes = ",".join(str(n) for n in settings.sizes)
    grid = grid_steps(demo_grid(out, settings), DEMO_NAME, torchvision=False)
    by_kind = lambda *kinds: [s for s in grid if s.kind in kinds]  # noqa: E731
    model = model or trainer_name(settings.sources[-1], max(settings.sizes))
    source_task = (("--source-task", str(out / SOURCE_TASK), "--source-cases",
                    str(settings.source_cases)) if settings.source_cases else ())
    return [
        ("phantom", [Step("phantom", "phantom", (
            "nnunet-xfer", "phantom", str(phantom), "--cases", str(settings.cases), "--size",
            str(settings.size), "--observers", str(settings.observers), "--observer-cases",
            str(settings.observer_cases), "--seed", "0", *source_task))]),
        ("convert", [Step("convert", "convert", (
            "nnunet-xfer", "convert", "--cases", str(phantom / CASES_CSV), "-d", str(DEMO_ID),
            "-n", DEMO_NAME.split("_", 1)[1], "--sizes", sizes))]),
        ("plan and preprocess", [Step("plan", "plan", plan_argv(DEMO_ID, 2),
                                      env=tuple(env_settings.NNUNET_PLANNER.items()))]),
        ("pretrain", by_kind("pretrain")),
        ("train", by_kind("train")),
        ("evaluate + report", by_kind("evaluate", "report")),
        (OBSERVER_STAGE, observer_steps(out, model)),
    ]


#: The last stage: the observer study of one model and its report.
OBSERVER_STAGE = "observer study + report"


def observer_steps(out: Path, model: str) -> list[Step]:
    """The observer study of trainer ``model``'s fold-0 predictions, and its report."""
    out = out.resolve()
    phantom, study = out / "phantom", out / "observer_study"
    return [
        Step("observers", "observers", (
            "nnunet-xfer", "observers", "--reference", str(phantom / "masks"),
            "--observers", str(phantom / "observers"), "--images", str(phantom / "images"),
            "--predictions", str(ShellLayout(DEMO_NAME).run_folder(model)),
            "--name", model, "-o", str(study))),
        Step("observer report", "report", (
            "nnunet-xfer", "report", "-i", str(study), "-o", str(study / REPORT_HTML)),
            needs=("observers",))]


def observer_model(evaluation: Path, named: str | None = None) -> tuple[str, str]:
    """(trainer, why) of the demo's observer study: ``named`` when given (it must be a trained
    model of the demo), else the best model by the report's own criterion
    (:func:`~nnunet_xfer.evaluation.findings.best_group`: highest mean Dice, ties lower RMS DTA)."""
    summary = json.loads((Path(evaluation) / EVAL_SUMMARY_JSON).read_text())
    trained = {trainer_name(g["source"], g["size_tag"]): g for g in summary.get("groups", [])
               if not g.get("reference")}
    if named is not None:
        if named not in trained:
            raise UserError(f"--observer-model {named} is not a model of this demo; choose one "
                            f"of {', '.join(sorted(trained))}")
        return named, "named with --observer-model"
    best = best_group(summary.get("groups", []))
    if best is None:
        raise UserError(f"the demo's evaluation {evaluation} has no model with a scored case")
    return (trainer_name(best["source"], best["size_tag"]),
            f"the best by mean Dice ({best['metrics']['dice']['mean']:.3f}) over "
            f"{best['n_cases']} validation cases, as the report picks it")


#: What the demo writes into its output folder while it runs.
DEMO_OWNED = (DEMO_LOG, "phantom", SOURCE_TASK, "observer_study", *NNUNET_VARS)


def _claim_output(out: Path, overwrite: bool) -> atomic.Claim:
    """The output guard's claim on ``out`` (refused unless it is new, or a folder an earlier demo
    wrote and ``overwrite``; a user's file there is named and kept)."""
    return atomic.check_replaceable(out, "demo", overwrite)


def demo_results_files(folder: Path) -> set[str]:
    """What the demo's stages write into ``$nnUNet_results/<demo dataset>/``: the ``Xfer*`` run
    folders nnU-Net trains, the pretrained store, the experiment's log and lock, the evaluation
    (only the files its marker lists) and our hidden temporaries. Anything else is a user's."""
    ours = set()
    evaluation = atomic.marker_files(folder / EVALUATION_FOLDER, "evaluate") or set()
    for f in atomic.listing(folder):
        top, _, rest = f.partition("/")
        run = parse_run_folder_name(top)
        if ((rest and top == STORE_FOLDER) or (rest and run and run[0].startswith("Xfer"))
                or (not rest and top in (EXPERIMENT_LOG, EXPERIMENT_LOCK))
                or top.startswith(TEMP_PREFIX)  # what a killed stage left
                or (top == EVALUATION_FOLDER and (rest in evaluation or rest == OUTPUT_MARKER))):
            ours.add(f)
    return ours


def _earlier_datasets(env: dict, overwrite: bool) -> list[atomic.Claim]:
    """The output guard's claims on an earlier demo's dataset in the user's nnU-Net folders:
    refused unless ``overwrite``, and then unless each holds only what the demo's stages wrote
    (the raw dataset ``convert``'s, the preprocessed one nnU-Net's, the results as above)."""
    claims = []
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
            if v == "nnUNet_results":
                claims.append(atomic.check_replaceable(p, "demo", True, nnunet_dataset=True,
                                                       written=demo_results_files))
            else:
                claims.append(claim_dataset(p, True, preprocessed=v == "nnUNet_preprocessed"))
    return claims


def _prepare(claim: atomic.Claim, env: dict, overwrite: bool, own_folders: bool) -> None:
    """Refuse the demo dataset in the user's folders unless overwrite (and a user's file in it
    always, named); then make the output folder afresh, marked as the demo's while it runs (so an
    interrupted demo is replaced too)."""
    earlier = [] if own_folders else _earlier_datasets(env, overwrite)
    for old in earlier:  # every one checked before any is removed
        atomic.remove_owned(old)
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
    #: the trainer of the observer study, and why it was chosen
    observer_model: str = ""
    observer_model_reason: str = ""


def run_demo(out: Path = Path("demo_output"), quick: bool = False,
             overwrite: bool = False, observer_model_name: str | None = None) -> DemoResult:
    """Run the demo into ``out``, printing each stage's wall time as it ends.

    Returns the stage times, the output paths and the table of Dice / RMS DTA per source and n
    with the threshold baseline, the observers' range and the human-level verdicts. The observer
    study takes ``observer_model_name`` (a trainer of the demo) or else the best model by the
    report's criterion. A failing stage stops the demo with a :class:`UserError` naming the stage
    and the log file.
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
    evaluation = Path(env["nnUNet_results"]) / DEMO_NAME / EVALUATION_FOLDER
    model, why = "", ""
    for stage, steps in demo_steps(out, settings):
        if stage == OBSERVER_STAGE:  # the model is known once the evaluation exists
            model, why = observer_model(evaluation, observer_model_name)
            print(f"observer study of {model}: {why}", flush=True)
            steps = observer_steps(out, model)
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
    return DemoResult(times=times, report=evaluation / REPORT_HTML, evaluation=evaluation,
                      observer_study=out.resolve() / "observer_study" / REPORT_HTML,
                      models=evaluation.parent, table=results_table(evaluation),
                      observer_model=model, observer_model_reason=why)


def demo_summary(result: DemoResult) -> str:
    """What the demo prints at the end: where everything is, then the results table."""
    return (f"\ndemo finished in {result.times['total']:.0f} s\n"
            f"report:              {result.report}\n"
            f"tables:              {result.evaluation / EVAL_CASES_CSV}, "
            f"{result.evaluation / EVAL_SUMMARY_JSON}\n"
            f"observer study:      {result.observer_study}"
            + (f" ({result.observer_model}: {result.observer_model_reason})"
               if result.observer_model else "") + "\n"
            f"trained models:      {result.models}\n\n"
            f"fold 0's validation cases, mean per source and n (a smoke test, not the study's "
            f"result):\n{format_table(result.table)}")
