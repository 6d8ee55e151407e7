"""`nnunet-xfer evaluate` end to end on a study-size fake results tree: ms per file, CPU and wall.

Builds (once, reused when ``--tree`` names an existing one) an nnU-Net raw/preprocessed/results
tree like the study's: ``--cases`` 512² slices (CT int16 + muscle-like ring label), ``--folds``
folds, ``--sources`` × ``--sizes`` ``Xfer<Source>Trainer_n<N>`` runs with one prediction per
validation case of every fold. The defaults are the study: 204 cases, 4 folds, 5 sources × 7 sizes
= 7,140 predictions. Then it times ``evaluate`` as a child process (``python -m nnunet_xfer.cli``):

* ``--baseline DIR``: a checkout of the code to compare with (e.g. ``git worktree add
  /tmp/evalbase 763821c``), run with ``PYTHONPATH=DIR``; the candidate is this checkout. Baseline
  and candidate alternate in every round, the order rotated round by round;
* ``--workers 1,2``: the candidate at each worker count (the baseline has one process);
* CPU time is the children's user + system time (``getrusage(RUSAGE_CHILDREN)``, workers
  included), wall time the child's lifetime; minimum and median over ``--repeats`` rounds;
  ms/file = CPU (or wall) ms per prediction file; the machine (cores, load average) is printed.

    .venv/bin/python benchmarks/evaluate_scale.py --cases 24 --sizes 5,10 --repeats 5 \\
        --baseline /tmp/evalbase --workers 1,2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
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
def _time_child(cmd: list[str], env: dict) -> tuple[float, float]:
    """(CPU seconds of the child and its workers, wall seconds) of one command."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def _machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (f"{platform.node()}: {model or platform.processor()}, {cores} usable core(s), "
            f"load average at start {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}, "
            f"Python {platform.python_version()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=204)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--sources", default=",".join(SOURCES))
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--tree", type=Path, default=None,
                        help="folder of the fake tree (built if absent; default: temporary)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", default="1,2", help="candidate worker counts to time")
    parser.add_argument("--baseline", type=Path, default=None,
                        help="checkout of the code to compare with (run with PYTHONPATH=it)")
    parser.add_argument("--candidate", type=Path, action="append", default=None,
                        help="checkout of a candidate (default: this one); may be repeated")
    parser.add_argument("--python", default=sys.executable)
    args = parser.parse_args()
    sources = [s for s in args.sources.split(",") if s]
    sizes = [int(s) for s in args.sizes.split(",") if s]
    workers = [int(w) for w in args.workers.split(",") if w]

    print(_machine(), flush=True)
    candidates = [c.resolve() for c in (args.candidate or [ROOT])]
    print(f"candidates: {', '.join(map(str, candidates))}; baseline: {args.baseline}", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="evaluate_scale_"))
    tree = args.tree or tmp / "tree"
    if not (tree / "results" / DATASET).is_dir():
        t0 = time.perf_counter()
        n_files = build_tree(tree, args.cases, args.size, args.folds, sources, sizes)
        print(f"built {tree}: {n_files} predictions in {time.perf_counter() - t0:.0f} s", flush=True)
    n_files = sum(1 for _ in (tree / "results" / DATASET).glob("*/fold_*/validation/*.nii.gz"))
    env = {**os.environ, "nnUNet_raw": str(tree / "raw"),
           "nnUNet_preprocessed": str(tree / "preprocessed"),
           "nnUNet_results": str(tree / "results"), "MPLBACKEND": "Agg"}

    def command(code: Path, out: Path, n_workers: int | None) -> tuple[list[str], dict]:
        cmd = [args.python, "-m", "nnunet_xfer.cli", "evaluate", "-d", str(DATASET_ID),
               "-o", str(out)]
        if n_workers is not None:
            cmd += ["--workers", str(n_workers)]
        return cmd, {**env, "PYTHONPATH": str(code)}

    variants: dict[str, tuple[Path, int | None]] = {}
    if args.baseline is not None:
        variants["baseline (1 process)"] = (args.baseline.resolve(), None)
    for code in candidates:
        tag = "candidate" if len(candidates) == 1 else f"candidate {code.name}"
        for w in workers:
            variants[f"{tag} --workers {w}"] = (code, w)
    names = list(variants)
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    print(f"{n_files} prediction files; {args.repeats} rounds, order rotated each round", flush=True)
    for r in range(args.repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            code, w = variants[name]
            out = tmp / "eval_out"
            shutil.rmtree(out, ignore_errors=True)
            cpu, wall = _time_child(*command(code, out, w))
            times[name].append((cpu, wall))
            print(f"  round {r}: {name}: CPU {cpu:.2f} s, wall {wall:.2f} s", flush=True)
    shutil.rmtree(tmp / "eval_out", ignore_errors=True)

    print(f"\n{n_files} files; CPU = user + system of evaluate and its workers\n")
    print("| variant | CPU s min | CPU s median | wall s min | wall s median "
          "| CPU ms/file (min) | wall ms/file (min) | files per CPU-s (min CPU) |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        cpu = [c for c, _ in times[name]]
        wall = [w for _, w in times[name]]
        print(f"| {name} | {min(cpu):.2f} | {statistics.median(cpu):.2f} | {min(wall):.2f} | "
              f"{statistics.median(wall):.2f} | {1000 * min(cpu) / n_files:.2f} | "
              f"{1000 * min(wall) / n_files:.2f} | {n_files / min(cpu):.0f} |")
    if args.baseline is not None:
        base = times[names[0]]
        for name in names[1:]:
            ratio_min = min(c for c, _ in base) / min(c for c, _ in times[name])
            ratio_med = (statistics.median(c for c, _ in base)
                         / statistics.median(c for c, _ in times[name]))
            wall_min = min(w for _, w in base) / min(w for _, w in times[name])
            print(f"\n{name}: files per CPU-second {ratio_min:.2f}x the baseline by minimum, "
                  f"{ratio_med:.2f}x by median; wall time {wall_min:.2f}x faster by minimum")
    if len(workers) > 1:
        for code in candidates:
            tag = "candidate" if len(candidates) == 1 else f"candidate {code.name}"
            w1 = min(w for _, w in times[f"{tag} --workers {workers[0]}"])
            for w in workers[1:]:
                wn = min(x for _, x in times[f"{tag} --workers {w}"])
                print(f"{tag}: wall time --workers {workers[0]} / --workers {w}: "
                      f"{w1 / wn:.2f} (minimum)")
    print(f"\nmachine at the end: load average {os.getloadavg()[0]:.2f}")
    if args.tree is None:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
