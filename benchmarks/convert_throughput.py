"""Conversion CPU time per case on a 512² phantom cohort, against the bare SimpleITK I/O floor.

Times ``nnunet_xfer.dataset_conversion.convert.convert`` (read, check, write image + label, folds,
subsets, metadata) and a baseline that only reads each image and mask with SimpleITK and writes
them compressed (``sitk.ReadImage`` + ``sitk.WriteImage(useCompression=True)``): the least any
converter to ``.nii.gz`` has to do. Both handle the same N phantom cases, alternating in every
round with the order rotated, ``--repeats`` rounds after one untimed warm-up round (see
benchmarks/_bench.py). The ratio convert/baseline is the cost of the checks and the metadata
(issue target: ≤ 1.10 by CPU time).

CPU time is the process's (``time.process_time``: all its threads) plus that of any child process
that ended during the call (``resource.getrusage(RUSAGE_CHILDREN)`` deltas), so a converter that
fans out to a process pool is charged for its workers; the children's share is printed. Every call
writes into a fresh folder (a fresh ``$nnUNet_raw`` for convert), so no call pays for deleting the
previous output; the outputs are removed at the end. convert's progress bar goes to /dev/null.

    python benchmarks/convert_throughput.py                 # 100 cases at 512², 7 rounds
    python benchmarks/convert_throughput.py --quick         # 20 cases at 512², 5 rounds
    python benchmarks/convert_throughput.py --cohort /tmp/ph --cases 100   # reuse a phantom

The phantom is generated once into ``--cohort`` (default: a temporary folder) and reused if given.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import resource
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

from _bench import Timings, interleaved, machine, machine_report, pin_threads

pin_threads(1)

import pandas as pd  # noqa: E402  (after pin_threads)
import SimpleITK as sitk  # noqa: E402

BASELINE = "sitk read+write"
CANDIDATE = "nnunet-xfer convert"


def baseline(cohort: Path, out: Path) -> None:
    """Read and rewrite every image and mask, nothing else."""
    cases = pd.read_csv(cohort / "cases.csv", dtype={"case_id": str})
    out.mkdir(parents=True)
    for row in cases.itertuples():
        for kind, rel in (("img", row.image), ("msk", row.mask)):
            img = sitk.ReadImage(str(cohort / rel))
            sitk.WriteImage(img, str(out / f"{row.case_id}_{kind}.nii.gz"), useCompression=True)


def run_convert(cohort: Path, raw: Path) -> None:
    """``convert`` of the cohort into a fresh ``$nnUNet_raw`` (no ``$nnUNet_preprocessed``)."""
    from nnunet_xfer.dataset_conversion.convert import convert
    os.environ["nnUNet_raw"] = str(raw)
    with open(os.devnull, "w") as null, contextlib.redirect_stderr(null), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")  # subset sizes larger than a small cohort's folds
        convert(cases_csv=cohort / "cases.csv", dataset_id=900, name="Bench")


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 cases, 5 rounds")
    parser.add_argument("--cases", type=int, default=None, help="phantom cases (default 100)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=None,
                        help="interleaved rounds, >= 5 (default 7)")
    parser.add_argument("--cohort", type=Path, default=None,
                        help="phantom folder to reuse / create (default: temporary)")
    args = parser.parse_args()
    args.cases = args.cases or (20 if args.quick else 100)
    args.repeats = args.repeats or (5 if args.quick else 7)

    info = machine()
    work = Path(tempfile.mkdtemp(prefix="convert_bench_"))
    try:
        cohort = args.cohort or work / "cohort"
        if not (cohort / "cases.csv").is_file():
            from nnunet_xfer.phantom.cohort import write_cohort
            t0 = time.perf_counter()
            write_cohort(cohort, n_cases=args.cases, size=args.size, n_observers=0, seed=0)
            print(f"phantom: {args.cases} cases at {args.size}² in "
                  f"{time.perf_counter() - t0:.1f} s")
        n = len(pd.read_csv(cohort / "cases.csv"))
        os.environ.pop("nnUNet_preprocessed", None)
        import nnunet_xfer.dataset_conversion.convert  # noqa: F401  (import outside the timing)

        counter = itertools.count()
        children: dict[str, list[float]] = {BASELINE: [], CANDIDATE: []}

        def timed(name, fn):
            def call():
                c0 = _children_cpu()
                fn(cohort, work / f"out{next(counter)}")
                children[name].append(_children_cpu() - c0)
            return call

        print(machine_report(info))
        print(f"{n} cases at {args.size}² from {cohort}; SimpleITK {sitk.Version.VersionString()}, "
              f"{sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()} ITK threads")
        warmup = 1
        res = interleaved({BASELINE: timed(BASELINE, baseline),
                           CANDIDATE: timed(CANDIDATE, run_convert)},
                          repeats=args.repeats, warmup=warmup)
        kids = {k: v[warmup:] for k, v in children.items()}
        total = Timings(cpu={k: [c + d for c, d in zip(res.cpu[k], kids[k])] for k in res.cpu},
                        wall=res.wall, rounds=res.rounds)
        print()
        print(total.table(baseline=BASELINE, per=n, unit="ms per case; CPU = process + ended "
                                                           "child processes"))
        print("\nchild-process CPU per call (included above), max: "
              + ", ".join(f"{k} {max(v) * 1000:.1f} ms" for k, v in kids.items()))
        b, c = total.summary(BASELINE, n), total.summary(CANDIDATE, n)
        print(f"cases per CPU-second (best call): baseline {1 / b['cpu_min']:.1f}, convert "
              f"{1 / c['cpu_min']:.1f}; convert/baseline CPU min {c['cpu_min'] / b['cpu_min']:.3f}, "
              f"CPU median {c['cpu_median'] / b['cpu_median']:.3f}, "
              f"wall median {c['wall_median'] / b['wall_median']:.3f} (target ≤ 1.10 by CPU)")
    finally:  # the outputs, and the phantom unless it was given with --cohort
        shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__":
    sys.exit(main())
