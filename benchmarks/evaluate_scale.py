"""`nnunet-xfer evaluate` end to end on a study-size fake results tree: ms per file, CPU and wall.

Builds an nnU-Net raw/preprocessed/results tree like the study's: ``--cases`` slices of
``--size``² (CT int16 + muscle-like ring label), ``--folds`` folds, ``--sources`` × ``--sizes``
``Xfer<Source>Trainer_n<N>`` runs with one prediction per validation case of every fold. The
defaults are the study: 204 cases at 512², 4 folds, 5 sources × 7 sizes = 7,140 predictions. A
``--tree`` folder is reused only when it was built with the same parameters. Then it times
``evaluate`` as a child process (``python -m nnunet_xfer.cli``):

* ``--baseline DIR``: a checkout of the code to compare with (``git worktree add
  /tmp/base763821c 763821c``), run with ``PYTHONPATH=DIR``; the candidate is this checkout (or
  ``--candidate DIR``). Children run in an empty temporary folder, because ``python -m`` puts its
  working folder first on ``sys.path``: started from a checkout, the "baseline" would import that
  checkout. Each variant's import path and commit are checked and printed before timing.
  Baseline and candidates alternate in every round, the order rotated round by round;
* ``--workers 1,2``: the candidate at each worker count (the baseline has one process);
  ``default`` runs it without ``--workers`` (its default: the usable cores);
* CPU time is user + system time of evaluate and of the workers it joins (``wait4`` on the
  child), wall time the child's lifetime; minimum and median over ``--repeats`` rounds; every
  run must have scored every prediction file. The command line, the machine and the load
  average before every round and at the end are printed.

    git worktree add /tmp/base763821c 763821c
    .venv/bin/python benchmarks/evaluate_scale.py --repeats 5 --baseline /tmp/base763821c \\
        --workers 1,2 --tree /tmp/evaluate_scale_tree
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from _bench import (checkout, command_line, interleaved_children, load_now, machine_report,
                    require_imports_from, time_child)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's names, whichever code is timed
from nnunet_xfer.evaluation.references import REFERENCE_TRAINER  # noqa: E402  reference rows
DATASET_ID = 977
DATASET = f"Dataset{DATASET_ID}_EvalScale"
SOURCES = ("scratch", "cls", "seg", "rec", "jigsaw")
SIZES = (5, 10, 25, 50, 75, 100, 125)
HARMONICS = 4


# ---------------------------------------------------------------- the tree
def _grids(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Radius (px) and the harmonic terms cos(kθ + 0.7k) of a size² grid, centred."""
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    theta = np.arctan2(yy, xx)
    k = np.arange(1, HARMONICS + 1)[:, None, None]
    return np.hypot(yy, xx), np.cos(k * theta + 0.7 * k)


def _ring(r: np.ndarray, harmonics: np.ndarray, size: int, wobble: np.ndarray) -> np.ndarray:
    """A muscle-like annulus whose radii wander with angle (``wobble``: (2, HARMONICS) px)."""
    inner = 0.22 * size + np.tensordot(wobble[0], harmonics, axes=1)
    outer = 0.39 * size + np.tensordot(wobble[1], harmonics, axes=1)
    return (r >= inner) & (r <= outer)


def _write(path: Path, array: np.ndarray, spacing: float) -> None:
    import SimpleITK as sitk
    img = sitk.GetImageFromArray(array[None])  # nnU-Net's 2D layout: one slice of a 3D image
    img.SetSpacing((spacing, spacing, 5.0))
    sitk.WriteImage(img, str(path), True)


def _write_predictions(job: tuple) -> int:
    """Worker: every prediction of one run folder."""
    folder, size, spacing, shapes, noise, seed = job
    r, harmonics = _grids(size)
    rng = np.random.default_rng(seed)
    for case, wobble in shapes.items():
        pred = _ring(r, harmonics, size, wobble + rng.normal(0, noise, wobble.shape))
        _write(Path(folder) / f"{case}.nii.gz", pred.astype(np.uint8), spacing)
    return len(shapes)


def build_tree(base: Path, cases: int, size: int, folds: int, sources: list[str],
               sizes: list[int], seed: int = 0, processes: int = 2) -> int:
    """Write the raw, preprocessed and results folders of the fake study; return #predictions."""
    spacing = 0.78 * 512 / size
    raw, pre, res = (base / k / DATASET for k in ("raw", "preprocessed", "results"))
    for d in (raw / "imagesTr", raw / "labelsTr", pre, res):
        d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    r, harmonics = _grids(size)
    ids = [f"case_{c:04d}" for c in range(cases)]
    shapes = {c: rng.normal(0, 0.012 * size, (2, HARMONICS)) for c in ids}
    for c in ids:
        ref = _ring(r, harmonics, size, shapes[c])
        hu = np.where(ref, 45.0, -100.0) + rng.normal(0, 15, (size, size))
        _write(raw / "labelsTr" / f"{c}.nii.gz", ref.astype(np.uint8), spacing)
        _write(raw / "imagesTr" / f"{c}_0000.nii.gz", hu.astype(np.int16), spacing)
    (raw / "cases.csv").write_text("case_id,height_m\n" + "".join(
        f"{c},{1.55 + 0.3 * (i % 10) / 10:.2f}\n" for i, c in enumerate(ids)))
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "muscle": 1},
        "numTraining": cases, "file_ending": ".nii.gz"}))
    order = rng.permutation(cases)
    val = [sorted(ids[i] for i in order[k::folds]) for k in range(folds)]
    splits = [{"train": sorted(set(ids) - set(v)), "val": v} for v in val]
    for folder in (raw, pre):
        (folder / "splits_final.json").write_text(json.dumps(splits))
    jobs = []
    for s_i, source in enumerate(sources):
        for n_i, n in enumerate(sizes):
            trainer = f"Xfer{source.capitalize()}Trainer_n{n}"
            # boundary wobble (px at 512²) falling with n: RMS DTA ≈ 4 mm at n=5, ≈ 1.5 mm at 125
            noise = size / 512 * (1.0 + 2.5 / (1 + n_i))
            for f, split in enumerate(splits):
                folder = res / f"{trainer}__nnUNetPlans__2d" / f"fold_{f}" / "validation"
                folder.mkdir(parents=True, exist_ok=True)
                (folder / "summary.json").write_text("{}")
                jobs.append((str(folder), size, spacing, {c: shapes[c] for c in split["val"]},
                             noise, [seed, s_i, n_i, f]))
    with get_context("fork").Pool(processes) as pool:
        return sum(pool.imap_unordered(_write_predictions, jobs))


# ---------------------------------------------------------------- timing
TREE_JSON = "evaluate_scale.json"


def tree_for(args) -> tuple[Path, bool]:
    """The fake tree of these arguments: (folder, whether it is temporary). An existing
    ``--tree`` is reused only when it was built with the same parameters (its
    ``evaluate_scale.json``): a tree of another size would time other work under this command."""
    params = {"cases": args.cases, "size": args.size, "folds": args.folds,
              "sources": args.sources, "sizes": args.sizes}
    tree = args.tree or Path(tempfile.mkdtemp(prefix="evaluate_scale_")) / "tree"
    record = tree / TREE_JSON
    if (tree / "results" / DATASET).is_dir():
        built = json.loads(record.read_text()) if record.is_file() else None
        if built != params:
            raise SystemExit(f"{tree} holds a tree built with {built or 'unknown parameters'}, not "
                             f"{params}; give another --tree (or remove it)")
        print(f"reusing {tree} ({params})", flush=True)
    else:
        t0 = time.perf_counter()
        n = build_tree(tree, args.cases, args.size, args.folds,
                       [s for s in args.sources.split(",") if s],
                       [int(s) for s in args.sizes.split(",") if s])
        record.write_text(json.dumps(params))
        print(f"built {tree}: {n} predictions in {time.perf_counter() - t0:.0f} s", flush=True)
    return tree, args.tree is None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=204)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--sources", default=",".join(SOURCES))
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--tree", type=Path, default=None,
                        help="folder of the fake tree (built if absent, reused only when built "
                             "with the same parameters; default: temporary)")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (>= 5)")
    parser.add_argument("--workers", default="1,2",
                        help="candidate worker counts to time; 'default' times the candidate "
                             "without --workers (its own default)")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="checkout of the code to compare with (run with PYTHONPATH=it)")
    parser.add_argument("--candidate", type=Path, action="append", default=None,
                        help="checkout of a candidate (default: this one); may be repeated")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    workers = [w for w in args.workers.split(",") if w]

    print(f"command: {command_line()}  (from {Path.cwd()})")
    print(machine_report(), flush=True)
    candidates = [c.resolve() for c in (args.candidate or [ROOT])]
    tree, temporary = tree_for(args)
    n_files = sum(1 for _ in (tree / "results" / DATASET).glob("*/fold_*/validation/*.nii.gz"))
    # children run in a folder of their own: `python -m` puts its working folder first on
    # sys.path, so a child started in a checkout would import that checkout, not PYTHONPATH's
    work = Path(tempfile.mkdtemp(prefix="evaluate_scale_run_"))
    env = {**os.environ, "nnUNet_raw": str(tree / "raw"),
           "nnUNet_preprocessed": str(tree / "preprocessed"),
           "nnUNet_results": str(tree / "results"), "MPLBACKEND": "Agg"}

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    variants: dict[str, tuple[Path, str | None]] = {}
    if args.baseline is not None:
        variants["baseline (1 process)"] = (args.baseline.resolve(), None)
    for code in candidates:
        tag = "candidate" if len(candidates) == 1 else f"candidate {code.name}"
        for w in workers:
            label = ("(default workers)" if w == "default" else f"--workers {w}"
                     + (" (its default here)" if w == str(usable) else ""))
            variants[f"{tag} {label}"] = (code, None if w == "default" else w)
    for name, (code, _w) in variants.items():
        found = require_imports_from(code, {**env, "PYTHONPATH": str(code)}, work, args.python)
        print(f"{name}: {code} at {checkout(code)} (imports {found.parent})", flush=True)

    extra: dict[str, int] = {}

    def run(name: str):
        code, w = variants[name]
        out = work / "eval_out"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [args.python, "-m", "nnunet_xfer.cli", "evaluate", "-d", str(DATASET_ID),
               "-o", str(out)] + (["--workers", w] if w is not None else [])
        cpu, wall, _ = time_child(cmd, {**env, "PYTHONPATH": str(code)}, work)
        with open(out / "cases.csv", newline="") as fh:
            trainers = [row["trainer"] for row in csv.DictReader(fh)]
        # since the no-learning reference rows (trainer "none", one per validation case) joined
        # cases.csv, a candidate writes more rows than there are prediction files
        rows = sum(t != REFERENCE_TRAINER for t in trainers)
        if rows != n_files:
            raise SystemExit(f"{name} evaluated {rows} predictions, not {n_files}")
        extra[name] = len(trainers) - rows
        return cpu, wall

    print(f"{n_files} prediction files; {args.repeats} rounds, order rotated each round",
          flush=True)
    times = interleaved_children({n: (lambda n=n: run(n)) for n in variants}, args.repeats,
                                 report=lambda line: print(line, flush=True))
    load_end = load_now()
    shutil.rmtree(work, ignore_errors=True)
    if temporary:
        shutil.rmtree(tree.parent, ignore_errors=True)

    names = list(variants)
    print(f"\n{n_files} files; CPU = user + system of evaluate and its workers (wait4)")
    for name in names:
        if extra.get(name):
            print(f"{name} also scored {extra[name]} no-learning reference rows (threshold)")
    print()
    print("| variant | CPU s min | CPU s median | wall s min | wall s median "
          "| CPU ms/file (min) | wall ms/file (min) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name in names:
        s = times.summary(name)
        print(f"| {name} | {s['cpu_min']:.2f} | {s['cpu_median']:.2f} | {s['wall_min']:.2f} | "
              f"{s['wall_median']:.2f} | {1000 * s['cpu_min'] / n_files:.2f} | "
              f"{1000 * s['wall_min'] / n_files:.2f} |")
    if args.baseline is not None:
        base = times.summary(names[0])
        print("\nspeed-up over the baseline (baseline time / candidate time; > 1: faster)\n")
        print("| variant | CPU, by min | CPU, by median | wall, by min | wall, by median |")
        print("|---|---:|---:|---:|---:|")
        for name in names[1:]:
            s = times.summary(name)
            print(f"| {name} | {base['cpu_min'] / s['cpu_min']:.2f}x | "
                  f"{base['cpu_median'] / s['cpu_median']:.2f}x | "
                  f"{base['wall_min'] / s['wall_min']:.2f}x | "
                  f"{base['wall_median'] / s['wall_median']:.2f}x |")
    print(f"\nload average at the end: {load_end} (1/5/15 min)")


if __name__ == "__main__":
    main()
