"""Conversion throughput (cases/s) on a 512² phantom cohort, against the bare I/O floor.

Times ``nnunet_xfer.dataset_conversion.convert.convert`` (read, check, write image + label, folds,
subsets, metadata) and, in the same run on the same files, a baseline that only reads each image and
mask with SimpleITK and writes them compressed (``sitk.ReadImage`` + ``sitk.WriteImage``): the
least any converter to ``.nii.gz`` has to do. The ratio convert/baseline is the cost of the checks.

    .venv/bin/python benchmarks/convert_throughput.py [--cases 100] [--size 512] [--repeats 2]

The phantom is generated once into ``--cohort`` (default: a temporary folder) and reused if given.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd
import SimpleITK as sitk


def baseline(cohort: Path, out: Path) -> None:
    """Read and rewrite every image and mask, nothing else."""
    cases = pd.read_csv(cohort / "cases.csv", dtype={"case_id": str})
    out.mkdir(parents=True)
    for row in cases.itertuples():
        for kind, rel in (("img", row.image), ("msk", row.mask)):
            img = sitk.ReadImage(str(cohort / rel))
            sitk.WriteImage(img, str(out / f"{row.case_id}_{kind}.nii.gz"), useCompression=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cohort", type=Path, default=None,
                        help="phantom folder to reuse / create (default: temporary)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="convert_bench_"))
    cohort = args.cohort or work / "cohort"
    if not (cohort / "cases.csv").is_file():
        from nnunet_xfer.phantom.cohort import write_cohort
        t0 = time.perf_counter()
        write_cohort(cohort, n_cases=args.cases, size=args.size, n_observers=0, seed=0)
        print(f"phantom: {args.cases} cases at {args.size}² in {time.perf_counter() - t0:.1f} s")
    n = len(pd.read_csv(cohort / "cases.csv"))
    os.environ["nnUNet_raw"] = str(work / "raw")
    os.environ.pop("nnUNet_preprocessed", None)

    from nnunet_xfer.dataset_conversion.convert import convert
    t_conv, t_base = [], []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        baseline(cohort, work / f"baseline{r}")
        t_base.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            convert(cases_csv=cohort / "cases.csv", dataset_id=900 + r, name="Bench")
        t_conv.append(time.perf_counter() - t0)
    conv, base = statistics.median(t_conv), statistics.median(t_base)
    print(f"\n{n} cases, median of {args.repeats} runs, {os.cpu_count()} CPUs visible")
    print("| step | seconds | cases/s | ratio to baseline |")
    print("|---|---|---|---|")
    print(f"| baseline: SimpleITK read + write .nii.gz | {base:.2f} | {n / base:.1f} | 1.00 |")
    print(f"| nnunet-xfer convert | {conv:.2f} | {n / conv:.1f} | {conv / base:.2f} |")
    shutil.rmtree(work / "raw", ignore_errors=True)
    if args.cohort is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
