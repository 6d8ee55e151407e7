"""`nnunet-xfer measure --cases` on a CPU: start-up, time per slice, and the Dice cost of faster settings.

What a clinic waits for when it measures a new patient. Four settings of the same trained model:

* ``5 folds + mirroring`` (the default, as ``nnUNetv2_predict``): every fold, test-time mirroring;
* ``5 folds, no mirroring`` (``--no-mirroring``), ``1 fold + mirroring`` (``-f 0``),
  ``1 fold, no mirroring`` (``-f 0 --no-mirroring``).

Each section is printed with the command line, the commit, the machine and its load:

1. **Dice cost** (in-process, deterministic): every setting on held-out slices that no fold saw
   (a phantom cohort of another seed), Dice against their reference masks; the cost of a setting
   is the mean paired difference to the full ensemble (``> 0``: worse), with its SD; also the
   setting's Dice against the full ensemble's own mask. A single fold is reported as the mean of
   the folds and as the worst fold.
2. **Per slice**, in one fresh process: ``SlicePredictor.predict`` (what ``measure`` runs per
   case: the ensemble and each fold's mask) and nnU-Net's ``nnUNetPredictor.
   predict_single_npy_array`` (what ``nnUNetv2_predict`` runs per case) for every setting, on
   ``--slices`` slices, interleaved with the order rotated, ``--repeats`` rounds after a warm-up;
   CPU (all threads) and wall, min and median.
3. **OpenMP's wait policy**: the fastest setting in fresh processes with torch's OpenMP threads
   spinning while they wait (OpenMP's default, what ``nnUNetv2_predict`` gets) or sleeping
   (``OMP_WAIT_POLICY=PASSIVE``, what ``measure`` sets), alternated, ``--process-repeats`` each.
4. **Process level**: ``nnunet-xfer measure --cases`` against ``nnUNetv2_predict`` (``-npp 1
   -nps 1``; ``-f 0`` and ``--disable_tta`` as the setting says) on the same slices, each on 1
   slice and on ``--slices`` slices, as child processes started outside any checkout,
   interleaved, ``--process-repeats`` rounds, both with passive OpenMP waiting (so that the table
   compares the tools); CPU from ``wait4`` (the child and the workers it joins), wall from spawn
   to exit. Start-up = the 1-slice run minus one slice's time; per slice = (N-slice run − 1-slice
   run) / (N − 1). ``measure`` also writes its CSV, QC picture, mask and gallery;
   ``nnUNetv2_predict`` only its masks.
5. **Checkpoint opening**: fold 0's checkpoint opened as ``measure`` opens it, its training log
   stored as nnU-Net's trainer writes it (numpy scalars) and as the ``Xfer*`` trainers write it
   (Python numbers), interleaved in one process, ``--repeats`` rounds.
6. **Start-up by phase**: fresh processes that do what ``measure`` does up to its first slice
   (interpreter, imports, checkpoints opened and predictor set up, first slice read and
   predicted), alternated with fresh processes that do the same through nnU-Net's own predictor
   API (``nnUNetPredictor``, ``initialize_from_trained_model_folder``,
   ``predict_single_npy_array``; the package's checkpoint guard bypassed), wall seconds since
   the process was spawned.

The model is given (``--results DIR -d ID -tr TRAINER``) or built in ``--work``: a phantom
cohort of ``--cases`` slices of ``--size``², converted with ``--folds`` folds, planned by
``nnUNetv2_plan_and_preprocess`` and trained by ``nnUNetv2_train`` (``XferScratchTrainer_nall``,
``--epochs`` × ``--iterations``, seed 0) for the first ``--trained-folds`` folds; the other folds
are copies of fold 0 with perturbed weights (the same network, so the same time; their Dice is
meaningless and the Dice table says so). Every built checkpoint is given the training log of a
``--log-epochs`` run (1000, nnU-Net's default; opening a checkpoint safely unpickles that log
number by number). A ``--work`` folder is reused when its parameters match.

    python benchmarks/measure_speed.py --quick     # smoke run: 64² model, 1 trained fold
    python benchmarks/measure_speed.py --work /tmp/ms512 --size 512 --cases 20 \\
        --trained-folds 5 --epochs 1 --iterations 2 --sections slice,omp,process,startup  # timing
    python benchmarks/measure_speed.py --work /tmp/ms128 --size 128 --cases 60 \\
        --trained-folds 5 --epochs 20 --iterations 50 --test-cases 40 --sections dice  # Dice
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _bench import (Timings, checkout, command_line, interleaved, interleaved_children,
                    load_now, machine_report, require_imports_from, time_child)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout, not whichever nnunet_xfer is installed
BIN = Path(sys.executable).parent
DATASET_ID = 978
TRAINER = "XferScratchTrainer_nall"
PLANS = "nnUNetPlans"
MODEL_JSON = "measure_speed_model.json"
#: the caller's own OpenMP wait policy: children get it back (nnUNetv2_predict as users run it)
USER_OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")

#: name → (one fold only, mirroring)
SETTINGS = {
    "5 folds + mirroring (default)": (False, True),
    "5 folds, no mirroring": (False, False),
    "1 fold + mirroring": (True, True),
    "1 fold, no mirroring": (True, False),
}
#: The measurements, in the order they run (``--sections``).
SECTIONS = ("dice", "checkpoint", "slice", "omp", "process", "startup")
QUICK = dict(size=64, cases=8, folds=5, trained_folds=1, epochs=1, iterations=2, slices=2,
             test_cases=2, repeats=1, process_repeats=1)
FULL = dict(size=512, cases=20, folds=5, trained_folds=5, epochs=1, iterations=2, slices=3,
            test_cases=10, repeats=5, process_repeats=5)


# ---------------------------------------------------------------- the model
def nnunet_env(work: Path) -> dict:
    """nnU-Net's folders under ``work``, our trainers on ``nnUNet_extTrainer``, this checkout."""
    from nnunet_xfer.trainers import trainer_environment
    folders = {k: str(work / "nnunet" / k.split("_")[1]) for k in
               ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    env = {**trainer_environment(), **folders, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg"}
    env.pop("OMP_WAIT_POLICY", None)
    if USER_OMP_WAIT_POLICY is not None:
        env["OMP_WAIT_POLICY"] = USER_OMP_WAIT_POLICY
    return env


def _run(cmd: list[str], env: dict, log: Path) -> None:
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=log.parent)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed; see {log}")


def _copy_fold(run: Path, fold: int, seed: int) -> None:
    """fold_<fold> as fold 0's checkpoint with every float weight perturbed by 1 % of its SD."""
    import torch
    from nnunet_xfer.nnunet_checkpoint import open_nnunet_checkpoint
    ckpt = open_nnunet_checkpoint(run / "fold_0" / "checkpoint_final.pth")
    gen = torch.Generator().manual_seed(seed)
    for k, w in ckpt["network_weights"].items():
        if w.is_floating_point() and w.numel() > 1:
            w += 0.01 * w.std() * torch.randn(w.shape, generator=gen)
    (run / f"fold_{fold}").mkdir(exist_ok=True)
    torch.save(ckpt, run / f"fold_{fold}" / "checkpoint_final.pth")


def pad_training_log(run: Path, epochs: int) -> int:
    """Give every fold's checkpoint the training log of an ``epochs``-epoch run (distinct
    numbers of the types nnU-Net logs), as a full nnU-Net training leaves it: opening a
    checkpoint safely unpickles that log number by number, which a few-iteration model would
    leave out of the start-up. Returns the folds padded."""
    import numpy as np
    import torch
    padded = 0
    for path in sorted(run.glob("fold_*/checkpoint_final.pth")):
        ckpt = torch.load(path, map_location="cpu", weights_only=False)  # our own file
        log = ckpt.get("logging") or {}
        if not log or min(len(v) for v in log.values()) >= epochs:
            continue
        rng = np.random.default_rng(0)
        for key, values in log.items():
            first = values[0]
            draw = rng.random(epochs)
            if isinstance(first, list):
                log[key] = [[type(x)(d) for x in first] for d in draw]
            else:
                log[key] = [type(first)(d) for d in draw]
        ckpt["current_epoch"] = epochs
        torch.save(ckpt, path)
        padded += 1
    return padded


def build_model(work: Path, a) -> dict:
    """Phantom → convert → plan and preprocess → train (or reuse ``work`` when built the same)."""
    params = {k: getattr(a, k) for k in ("size", "cases", "folds", "trained_folds", "epochs",
                                          "iterations")}
    record = work / MODEL_JSON
    if record.is_file():
        built = json.loads(record.read_text())
        if built.get("params") != params:
            raise SystemExit(f"{work} holds a model built with {built.get('params')}, not "
                             f"{params}; give another --work (or remove it)")
        print(f"reusing the model in {work}: {built['how']}", flush=True)
        return built
    work.mkdir(parents=True, exist_ok=True)
    from nnunet_xfer.settings import NNUNET_ON_CPU
    env = {**nnunet_env(work), **NNUNET_ON_CPU}  # as the demo and the tests train
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # training on a shared CPU: see settings.py
    log = work / "build.log"
    t0 = time.perf_counter()
    from nnunet_xfer.phantom.cohort import write_cohort
    write_cohort(work / "cohort", n_cases=a.cases, size=a.size, n_observers=0,
                 n_observer_cases=0, seed=0, overwrite=True)
    _run([sys.executable, "-m", "nnunet_xfer.cli", "convert", "--cases",
          str(work / "cohort" / "cases.csv"), "-d", str(DATASET_ID), "--name", f"Speed{a.size}",
          "--folds", str(a.folds), "--sizes", "5", "--overwrite"], env, log)
    from nnunet_xfer.experiment.steps import plan_argv
    from nnunet_xfer.settings import NNUNET_PLANNER
    argv = plan_argv(DATASET_ID, 1)
    _run([str(BIN / argv[0]), *argv[1:]], {**env, **NNUNET_PLANNER}, log)  # logged, unlike plan_dataset
    train_env = {**env, "nnUNet_xfer_epochs": str(a.epochs),
                 "nnUNet_xfer_iterations": str(a.iterations), "nnUNet_xfer_seed": "0"}
    for fold in range(a.trained_folds):
        _run([str(BIN / "nnUNetv2_train"), str(DATASET_ID), "2d", str(fold), "-tr", TRAINER,
              "-device", "cpu"], train_env, log)
    run = next((work / "nnunet" / "results").glob(f"Dataset{DATASET_ID}_*")) / \
        f"{TRAINER}__{PLANS}__2d"
    for fold in range(a.trained_folds, a.folds):
        _copy_fold(run, fold, seed=fold)
    how = (f"phantom {a.cases} slices of {a.size}² (seed 0), {a.folds} folds; nnUNetv2_train "
           f"{TRAINER} {a.epochs} epoch(s) × {a.iterations} iterations on CPU for folds "
           f"0–{a.trained_folds - 1}" + (f"; folds {a.trained_folds}–{a.folds - 1} are fold 0 with "
                                         f"1 % weight noise" if a.trained_folds < a.folds else "")
           + f"; built in {time.perf_counter() - t0:.0f} s")
    built = {"params": params, "how": how, "results": str(work / "nnunet" / "results"),
             "dataset": DATASET_ID, "trainer": TRAINER}
    record.write_text(json.dumps(built, indent=1))
    print(f"built the model: {how}", flush=True)
    return built


def write_slices(folder: Path, n: int, size: int, seed: int) -> list[tuple[str, Path, Path]]:
    """``n`` held-out phantom slices (another seed): (case, image, reference mask)."""
    from nnunet_xfer.phantom.cohort import write_cohort
    if not (folder / "cases.csv").is_file():
        write_cohort(folder, n_cases=n, size=size, n_observers=0, n_observer_cases=0, seed=seed,
                     overwrite=True)
    cases = sorted(p.name.removesuffix(".nii.gz") for p in (folder / "images").glob("*.nii.gz"))
    return [(c, folder / "images" / f"{c}.nii.gz", folder / "masks" / f"{c}.nii.gz")
            for c in cases[:n]]


# ---------------------------------------------------------------- 1. Dice cost
def dice_costs(model: dict, slices, trained_folds: int, folds: int) -> str:
    import numpy as np
    import SimpleITK as sitk
    from nnunet_xfer.clinical.predict import SlicePredictor
    from nnunet_xfer.evaluation.metrics import dice
    on = SlicePredictor(model["dataset"], model["trainer"], device="cpu", mirroring=True)
    off = SlicePredictor(model["dataset"], model["trainer"], device="cpu", mirroring=False)
    scores: dict[str, list[float]] = {k: [] for k in ("full", "nomirror")}
    agree: dict[str, list[float]] = {"nomirror": []}
    per_fold = {m: {f: [] for f in on.folds} for m in ("mirror", "nomirror")}
    per_fold_agree = {m: {f: [] for f in on.folds} for m in ("mirror", "nomirror")}
    for _case, image, mask in slices:
        img = sitk.ReadImage(str(image))
        ref = sitk.GetArrayFromImage(sitk.ReadImage(str(mask))).astype(bool)
        full, nomirror = on.predict(img), off.predict(img)
        scores["full"].append(dice(full.mask, ref))
        scores["nomirror"].append(dice(nomirror.mask, ref))
        agree["nomirror"].append(dice(nomirror.mask, full.mask))
        for key, pred in (("mirror", full), ("nomirror", nomirror)):
            for f, m in pred.fold_masks.items():
                per_fold[key][f].append(dice(m, ref))
                per_fold_agree[key][f].append(dice(m, full.mask))
    full = np.array(scores["full"])

    def row(name: str, values, agreement) -> str:
        v = np.asarray(values)
        cost = full - v
        return (f"| {name} | {v.mean():.4f} | {cost.mean():+.4f} ± {cost.std(ddof=1) if len(v) > 1 else 0:.4f} "
                f"| {np.mean(agreement):.4f} |")

    lines = [f"Dice on {len(slices)} held-out slices (no fold saw them); cost = Dice of the full "
             f"ensemble − Dice of the setting, mean ± SD over slices (> 0: worse)",
             "", "| setting | mean Dice | cost | Dice vs the full ensemble's mask |",
             "|---|---:|---:|---:|",
             row("5 folds + mirroring (default)", full, [1.0]),
             row("5 folds, no mirroring", scores["nomirror"], agree["nomirror"])]
    for key, label in (("mirror", "1 fold + mirroring"), ("nomirror", "1 fold, no mirroring")):
        means = {f: float(np.mean(v)) for f, v in per_fold[key].items()}
        worst = min(means, key=means.get)
        all_f = np.array([per_fold[key][f] for f in means]).mean(axis=0)
        lines.append(row(f"{label} (mean of the {len(means)} folds)", all_f,
                         [np.mean(v) for v in per_fold_agree[key].values()]))
        lines.append(row(f"{label} (worst: fold {worst})", per_fold[key][worst],
                         per_fold_agree[key][worst]))
    if trained_folds < folds:
        lines.append(f"\nfolds {trained_folds}–{folds - 1} are copies of fold 0 with weight noise: "
                     f"these Dice costs say nothing about a trained model")
    return "\n".join(lines)


# ---------------------------------------------------------------- 2. per slice, in a child
def slice_child() -> None:
    """Child: interleaved per-slice timings in one fresh process (JSON on stdout).

    argv: slices.json, settings (comma-separated indices), repeats, policy, tools. ``policy``
    ``passive`` is what ``measure`` does; ``spin`` leaves OpenMP's own default (threads spin
    while they wait), as before ``measure`` set ``OMP_WAIT_POLICY``. ``tools``: ``measure``
    (``SlicePredictor.predict``, what measure runs per case: the ensemble and each fold's mask)
    and/or ``nnunet`` (``nnUNetPredictor.predict_single_npy_array`` set up by
    ``initialize_from_trained_model_folder``: what ``nnUNetv2_predict`` runs per case, without
    its file reading and writing processes)."""
    spec = json.loads(Path(sys.argv[2]).read_text())
    names = [list(SETTINGS)[int(i)] for i in sys.argv[3].split(",")]
    repeats, policy, tools = int(sys.argv[4]), sys.argv[5], sys.argv[6].split(",")
    from nnunet_xfer import settings
    if policy == "spin":
        settings.prefer_passive_omp_wait = lambda *a, **k: False
        effective = os.environ.get("OMP_WAIT_POLICY", "OpenMP's default (spin, then sleep)")
    else:
        settings.prefer_passive_omp_wait()
        effective = os.environ["OMP_WAIT_POLICY"]
    import SimpleITK as sitk
    import torch
    from nnunet_xfer.clinical.predict import SlicePredictor
    candidates = {}
    if "measure" in tools:
        images = [sitk.ReadImage(p) for p in spec["images"]]
        for name in names:
            p = SlicePredictor(spec["dataset"], spec["trainer"], device="cpu",
                               folds=["0"] if SETTINGS[name][0] else None,
                               mirroring=SETTINGS[name][1])
            candidates[f"measure: {name}"] = lambda p=p: [p.predict(i) for i in images]
    if "nnunet" in tools:
        from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        arrays = [SimpleITKIO().read_images([p]) for p in spec["images"]]
        for name in names:
            one, mirror = SETTINGS[name]
            ref = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror,
                                  perform_everything_on_device=False,
                                  device=torch.device("cpu"), verbose=False, allow_tqdm=False)
            ref.initialize_from_trained_model_folder(spec["run"],
                                                     use_folds=(0,) if one else None)
            candidates[f"nnU-Net: {name}"] = lambda r=ref: [
                r.predict_single_npy_array(a, {"spacing": props["spacing"]})
                for a, props in arrays]
    res = interleaved(candidates, repeats=repeats, minimum=1)  # the parent checks repeats
    print(json.dumps({"cpu": res.cpu, "wall": res.wall, "threads": torch.get_num_threads(),
                      "omp_wait_policy": effective}))


def _run_folder(model: dict) -> Path:
    return next(Path(model["results"]).glob(f"Dataset{int(model['dataset']):03d}_*")) / \
        f"{model['trainer']}__{PLANS}__2d"


def _slice_run(model: dict, slices, work: Path, names: list[str], repeats: int,
               policy: str, tools: str = "measure") -> dict:
    spec = work / "runs" / "slices.json"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(json.dumps({"dataset": model["dataset"], "trainer": model["trainer"],
                                "run": str(_run_folder(model)),
                                "images": [str(i) for _c, i, _m in slices]}))
    env = {**nnunet_env(work), "nnUNet_results": model["results"]}
    idx = ",".join(str(list(SETTINGS).index(n)) for n in names)
    out = subprocess.run([sys.executable, __file__, "--slice-child", str(spec), idx,
                          str(repeats), policy, tools], env=env, cwd=spec.parent,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"per-slice child failed ({out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


#: The training-log entries nnU-Net 2.8.1's trainer logs as ``np.float32`` (read from a real
#: checkpoint; the learning rates and time stamps are Python floats).
NNUNET_NUMPY_LOG_KEYS = ("mean_fg_dice", "ema_fg_dice", "dice_per_class_or_region",
                         "train_losses", "val_losses")


def checkpoint_opening(model: dict, work: Path, repeats: int) -> str:
    """Fold 0's checkpoint opened as ``measure`` opens it, with its training log as nnU-Net's
    trainer writes it (numpy scalars) and as the ``Xfer*`` trainers write it (Python numbers),
    interleaved in one process."""
    import numpy as np
    import torch
    from nnunet_xfer.clinical.predict import load_checkpoint
    from nnunet_xfer.nnunet_checkpoint import plain_numbers
    ckpt = torch.load(_run_folder(model) / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                      weights_only=False)  # our own file
    log = plain_numbers(ckpt.get("logging") or {})
    epochs = min((len(v) for v in log.values()), default=0)
    numpy_log = {k: [[np.float32(x) for x in v] if isinstance(v, list) else np.float32(v)
                     for v in values] if k in NNUNET_NUMPY_LOG_KEYS else values
                 for k, values in log.items()}
    files = {}
    for name, entry in (("numpy scalars (nnU-Net's trainer)", numpy_log),
                        ("Python numbers (Xfer* trainers)", log)):
        files[name] = work / f"checkpoint_log_{len(files)}.pth"
        torch.save({**ckpt, "logging": entry}, files[name])
    timings = interleaved({n: (lambda f=f: load_checkpoint(f)) for n, f in files.items()},
                          repeats=repeats, minimum=1)  # main() checks repeats
    for f in files.values():
        f.unlink()
    return (f"opening one checkpoint as measure does (restricted unpickler, weights copied), its "
            f"{epochs}-epoch training log stored as:\n\n"
            + timings.table(next(iter(files)), unit="ms per checkpoint"))


def per_slice(model: dict, slices, work: Path, repeats: int) -> str:
    """The four settings, measure's predictor and nnU-Net's, interleaved in one fresh process."""
    got = _slice_run(model, slices, work, list(SETTINGS), repeats, "passive", "measure,nnunet")
    res = Timings(cpu=got["cpu"], wall=got["wall"], rounds=repeats)
    return (f"per slice, in one process ({len(slices)} slices per call; torch threads "
            f"{got['threads']}, OMP_WAIT_POLICY {got['omp_wait_policy']} for both); measure = "
            f"SlicePredictor.predict (ensemble and each fold's mask), nnU-Net = nnUNetPredictor."
            f"predict_single_npy_array\n\n"
            + res.table(baseline=f"measure: {next(iter(SETTINGS))}", per=len(slices),
                        unit="ms per slice"))


def omp_policy(model: dict, slices, work: Path, rounds: int, name: str) -> str:
    """OpenMP's default (spinning) wait against passive waiting, fresh processes alternated."""
    runs: dict[str, dict[str, list[float]]] = {p: {"cpu": [], "wall": []} for p in
                                               ("spin", "passive")}
    for r in range(rounds):
        for policy in (("spin", "passive") if r % 2 == 0 else ("passive", "spin")):
            got = _slice_run(model, slices, work, [name], 1, policy)
            key = f"measure: {name}"
            print(f"  round {r}: {policy}: load {load_now()}, wall "
                  f"{got['wall'][key][0]:.2f} s", flush=True)
            runs[policy]["cpu"].append(got["cpu"][key][0] / len(slices))
            runs[policy]["wall"].append(got["wall"][key][0] / len(slices))
    res = Timings(cpu={k: v["cpu"] for k, v in runs.items()},
                  wall={k: v["wall"] for k, v in runs.items()}, rounds=rounds)
    return (f"torch's OpenMP threads: spinning (OpenMP's default, what nnUNetv2_predict gets) "
            f"against passive waiting (measure's default), {name}, one fresh process per call, "
            f"alternated, {rounds} rounds\n\n"
            + res.table(baseline="spin", unit="ms per slice"))


# ---------------------------------------------------------------- 3. process level
def startup_child() -> None:
    """Child: measure's path to the first slice, in phases (seconds since spawn, from env)."""
    spawn = float(os.environ["MEASURE_SPEED_SPAWN"])
    t = {"interpreter": time.time() - spawn}
    import nnunet_xfer.cli  # noqa: F401  the command's own imports
    from nnunet_xfer.clinical.api import SlicePredictor, load_study, read_studies
    t["imports"] = time.time() - spawn
    case, model, trainer, folds, mirror = sys.argv[2:7]
    predictor = SlicePredictor(model, trainer, device="cpu", mirroring=mirror == "1",
                               folds=None if folds == "all" else folds.split(","))
    t["checkpoints and predictor"] = time.time() - spawn
    study = load_study(read_studies(Path(case))[0])
    predictor.predict(study.slice_image)
    t["first slice"] = time.time() - spawn
    print(json.dumps(t))


def nnunet_startup_child() -> None:
    """Child: nnU-Net's own Python API to its first slice, in phases (seconds since spawn):
    ``nnUNetPredictor`` imported, ``initialize_from_trained_model_folder`` (nnU-Net's
    ``torch.load(weights_only=False)`` of our own benchmark file, nnU-Net's trainer-class
    search, which imports the run's trainer class as for any run), ``predict_single_npy_array``
    on the slice. The checkpoint guard the package installs is bypassed: the row says what
    nnU-Net's own path costs."""
    spawn = float(os.environ["MEASURE_SPEED_SPAWN"])
    t = {"interpreter": time.time() - spawn}
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    t["imports"] = time.time() - spawn
    case_csv, run, folds, mirror = sys.argv[2:6]
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirror == "1",
                                perform_everything_on_device=False, device=torch.device("cpu"),
                                verbose=False, allow_tqdm=False)
    initialize = nnUNetPredictor.initialize_from_trained_model_folder
    initialize = getattr(initialize, "__wrapped__", initialize)  # nnU-Net's, not the guard
    initialize(predictor, run, (0,) if folds == "0" else None, "checkpoint_final.pth")
    t["checkpoints and predictor"] = time.time() - spawn
    image = Path(case_csv).read_text().splitlines()[1].split(",")[1]
    array, props = SimpleITKIO().read_images([image])
    predictor.predict_single_npy_array(array, {"spacing": props["spacing"]})
    t["first slice"] = time.time() - spawn
    print(json.dumps(t))


def process_level(model: dict, slices, work: Path, repeats: int, settings: list[str]) -> str:
    run = work / "runs"
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    env = {**nnunet_env(work), "nnUNet_results": model["results"]}
    # both tools wait passively (measure's default), so the table compares the tools; what
    # spinning costs nnUNetv2_predict as users run it is the OpenMP table's ratio
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    require_imports_from(ROOT, env, run)
    inputs = {}
    for n in (1, len(slices)):
        folder = run / f"in_{n}"
        folder.mkdir()
        rows = ["case_id,image"]
        for case, image, _m in slices[:n]:
            shutil.copy(image, folder / f"{case}_0000.nii.gz")
            rows.append(f"{case},{image}")
        (run / f"cases_{n}.csv").write_text("\n".join(rows) + "\n")
        inputs[n] = folder
    out = run / "out"

    def ours(one: bool, mirror: bool, n: int):
        def call():
            shutil.rmtree(out, ignore_errors=True)
            cmd = [sys.executable, "-m", "nnunet_xfer.cli", "measure", "--cases",
                   str(run / f"cases_{n}.csv"), "-o", str(out), "-d", str(model["dataset"]),
                   "-tr", model["trainer"], "--device", "cpu"]
            cmd += (["-f", "0"] if one else []) + ([] if mirror else ["--no-mirroring"])
            cpu, wall, _ = time_child(cmd, env, run)
            return cpu, wall
        return call

    def nnunet(one: bool, mirror: bool, n: int):
        def call():
            shutil.rmtree(out, ignore_errors=True)
            cmd = [str(BIN / "nnUNetv2_predict"), "-i", str(inputs[n]), "-o", str(out),
                   "-d", str(model["dataset"]), "-tr", model["trainer"], "-c", "2d", "-p", PLANS,
                   "-device", "cpu", "-npp", "1", "-nps", "1"]
            cmd += (["-f", "0"] if one else []) + ([] if mirror else ["--disable_tta"])
            cpu, wall, _ = time_child(cmd, env, run)
            return cpu, wall
        return call

    variants = {}
    for name in settings:
        one, mirror = SETTINGS[name]
        for n in sorted(inputs):
            variants[f"measure, {name}, {n} slice(s)"] = ours(one, mirror, n)
            variants[f"nnUNetv2_predict, {name}, {n} slice(s)"] = nnunet(one, mirror, n)
    res = interleaved_children(variants, repeats, minimum=1,
                               report=lambda line: print(line, flush=True))
    n = len(slices)
    lines = [f"child processes, {repeats} interleaved round(s), OMP_WAIT_POLICY="
             f"{env['OMP_WAIT_POLICY']} for both tools; s = seconds",
             "", "| tool, setting | start-up to first slice, wall min / median | per slice, wall "
             "min / median | per slice, CPU min / median |", "|---|---:|---:|---:|"]
    for name in settings:
        for tool in ("measure", "nnUNetv2_predict"):
            one_s = res.wall[f"{tool}, {name}, 1 slice(s)"]
            all_s = res.wall[f"{tool}, {name}, {n} slice(s)"]
            one_c = res.cpu[f"{tool}, {name}, 1 slice(s)"]
            all_c = res.cpu[f"{tool}, {name}, {n} slice(s)"]
            per_w = [(b - a) / (n - 1) for a, b in zip(one_s, all_s)]
            per_c = [(b - a) / (n - 1) for a, b in zip(one_c, all_c)]
            start = [a - p for a, p in zip(one_s, per_w)]
            lines.append(f"| {tool}, {name} | {min(start):.2f} / {statistics.median(start):.2f} "
                         f"| {min(per_w):.2f} / {statistics.median(per_w):.2f} "
                         f"| {min(per_c):.2f} / {statistics.median(per_c):.2f} |")
    lines += ["", "whole runs (s):", "", res.table(baseline=next(iter(variants)), unit="s",
                                                   scale=1.0)]
    return "\n".join(lines)


def startup_phases(model: dict, slices, work: Path, repeats: int, settings: list[str]) -> str:
    run = work / "runs"
    run.mkdir(parents=True, exist_ok=True)
    case_csv = run / "cases_1.csv"
    if not case_csv.is_file():  # written by process_level when it ran first
        case, image, _m = slices[0]
        case_csv.write_text(f"case_id,image\n{case},{image}\n")
    env = {**nnunet_env(work), "nnUNet_results": model["results"]}
    children = {}
    for name in settings:
        one, mirror = SETTINGS[name]
        children[f"measure: {name}"] = [
            "--startup-child", str(case_csv), str(model["dataset"]), model["trainer"],
            "0" if one else "all", "1" if mirror else "0"]
        children[f"nnU-Net's API: {name}"] = [
            "--nnunet-startup-child", str(case_csv), str(_run_folder(model)),
            "0" if one else "all", "1" if mirror else "0"]
    measured: dict[str, list[dict]] = {name: [] for name in children}
    for r in range(repeats):  # alternated, the order rotated each round
        names = list(children)
        for name in names[r % len(names):] + names[:r % len(names)]:
            env["MEASURE_SPEED_SPAWN"] = repr(time.time())
            out = subprocess.run([sys.executable, __file__, *children[name]], env=env, cwd=run,
                                 capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"start-up child failed:\n{out.stderr[-2000:]}")
            measured[name].append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = []
    for name, phases in measured.items():
        keys = list(phases[0])
        cells = []
        prev = [0.0] * len(phases)
        for k in keys:
            spans = [p[k] - q for p, q in zip(phases, prev)]
            prev = [p[k] for p in phases]
            cells.append(f"{min(spans):.2f} / {statistics.median(spans):.2f}")
        total = [p[keys[-1]] for p in phases]
        rows.append(f"| {name} | " + " | ".join(cells)
                    + f" | {min(total):.2f} / {statistics.median(total):.2f} |")
    head = " | ".join(keys)
    return "\n".join([f"time to the first slice by phase: measure, and nnU-Net's own predictor "
                      f"API on the same checkpoints (wall s, min / median of {repeats} fresh "
                      f"processes each, alternated)", "", f"| setting | {head} | total |",
                      "|---" * (len(keys) + 2) + "|", *rows])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--startup-child":
        startup_child()
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--nnunet-startup-child":
        nnunet_startup_child()
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--slice-child":
        slice_child()
        return
    from nnunet_xfer import settings
    settings.prefer_passive_omp_wait()  # as measure does, before anything loads torch
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="smoke run (a couple of minutes): " + ", ".join(
                        f"{k} {v}" for k, v in QUICK.items()))
    for k, v in FULL.items():
        ap.add_argument(f"--{k.replace('_', '-')}", type=int, default=None,
                        help=f"default {v} ({QUICK[k]} with --quick)")
    ap.add_argument("--work", type=Path, default=None,
                    help="folder of the model and slices (reused when built with the same "
                         "parameters; default: temporary)")
    ap.add_argument("--results", type=Path, default=None,
                    help="time an existing model instead: its nnUNet_results (with -d, -tr)")
    ap.add_argument("-d", "--dataset", default=None)
    ap.add_argument("-tr", "--trainer", default=None)
    ap.add_argument("--log-epochs", type=int, default=None,
                    help="give each built checkpoint the training log of this many epochs, as "
                         "a full nnU-Net run leaves (default 1000; 0 with --quick)")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help="what to measure, comma-separated (default: all of "
                         f"{','.join(SECTIONS)})")
    ap.add_argument("--process-settings", default=None,
                    help="indices of the settings timed as processes (default 0,3: the default "
                         "and the fastest; 3 with --quick)")
    a = ap.parse_args()
    for k, v in (QUICK if a.quick else FULL).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.process_settings is None:
        a.process_settings = "3" if a.quick else "0,3"
    if a.log_epochs is None:
        a.log_epochs = 0 if a.quick else 1000
    if not a.quick and min(a.repeats, a.process_repeats) < 5:
        ap.error("--repeats and --process-repeats must be >= 5 for figures to quote "
                 "(--quick for a smoke run)")
    sections = set(a.sections.split(",")) - {""}
    if sections - set(SECTIONS):
        ap.error(f"--sections: unknown {', '.join(sorted(sections - set(SECTIONS)))}; "
                 f"use {','.join(SECTIONS)}")
    if a.slices < 2:
        ap.error("--slices must be >= 2 (per slice = (N-slice run - 1-slice run) / (N - 1))")

    print(f"command: {command_line()}  (from {Path.cwd()})")
    print(f"code: {ROOT} at {checkout(ROOT)}")
    print(machine_report(), flush=True)
    temporary = a.work is None
    work = a.work or Path(tempfile.mkdtemp(prefix="measure_speed_"))
    if a.results is not None:
        model = {"results": str(a.results.resolve()), "dataset": a.dataset, "trainer": a.trainer,
                 "how": "given"}
    else:
        model = build_model(work, a)
        if a.log_epochs:
            n = pad_training_log(_run_folder(model), a.log_epochs)
            model["how"] += (f"; every checkpoint carries a {a.log_epochs}-epoch training log "
                             f"(as after a full nnU-Net training{', padded now' if n else ''})")
    os.environ.update({k: v for k, v in nnunet_env(work).items() if k.startswith("nnUNet")})
    os.environ["nnUNet_results"] = model["results"]
    slices = write_slices(work / "heldout", max(a.slices, a.test_cases), a.size, seed=1000)
    print(f"model: {model['how']}; results {model['results']}", flush=True)

    chosen = [list(SETTINGS)[int(i)] for i in a.process_settings.split(",") if i]
    if "dice" in sections:
        print("\n" + dice_costs(model, slices[:a.test_cases], a.trained_folds, a.folds),
              flush=True)
    if sections - {"dice"}:
        print(f"\nload before timing: {load_now()}", flush=True)
    if "checkpoint" in sections:
        print("\n" + checkpoint_opening(model, work, a.repeats), flush=True)
    if "slice" in sections:
        print("\n" + per_slice(model, slices[:a.slices], work, a.repeats), flush=True)
    if "omp" in sections:
        print("\n" + omp_policy(model, slices[:a.slices], work, a.process_repeats,
                                list(SETTINGS)[3]), flush=True)
    if "process" in sections:
        print("\n" + process_level(model, slices[:a.slices], work, a.process_repeats, chosen),
              flush=True)
    if "startup" in sections:
        print("\n" + startup_phases(model, slices[:a.slices], work, a.process_repeats, chosen),
              flush=True)
    print(f"\nload average at the end: {load_now()} (1/5/15 min)")
    if temporary:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
