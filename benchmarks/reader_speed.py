"""Reading evaluation inputs: this checkout's image reader against a baseline checkout's.

``evaluate`` reads every CT slice, label and prediction of a results tree once, in a fresh
process. This times exactly that part: each round starts one child process per variant that reads
the same files (``load_slice`` for images, ``load_mask`` for labels and predictions) and reports
the CPU and wall time of the reading alone (imports excluded). Baseline and candidate alternate,
the order rotated round by round; minimum and median over ``--repeats`` rounds.

* candidate: ``nnunet_xfer.imaging`` of this checkout;
* ``--baseline DIR``: a checkout whose reader is ``nnunet_xfer.evaluation.mask_files`` (e.g.
  ``git archive e5b865e | tar -x -C /tmp/base``).

    .venv/bin/python benchmarks/reader_speed.py --tree /tmp/evaltree --baseline /tmp/base

``--tree``: a folder tree of ``.nii.gz`` slices, e.g. the one ``benchmarks/evaluate_scale.py
--tree DIR`` builds (files under ``imagesTr`` are read as images, the rest as masks).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
from pathlib import Path
root, variant, listing = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, root)
if variant == "baseline":
    from nnunet_xfer.evaluation.mask_files import load_mask, load_slice
else:
    from nnunet_xfer.imaging import load_mask, load_slice
files = json.loads(Path(listing).read_text())
cpu, wall = time.process_time(), time.perf_counter()
for path in files:
    (load_slice if "/imagesTr/" in path else load_mask)(path)
print(json.dumps({"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", type=Path, required=True)
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--limit", type=int, default=0, help="read at most this many files")
    args = parser.parse_args()
    files = sorted(str(p) for p in args.tree.rglob("*.nii.gz"))
    if args.limit:
        files = files[: args.limit]
    listing = Path(os.environ.get("TMPDIR", "/tmp")) / f"reader_speed_{os.getpid()}.json"
    listing.write_text(json.dumps(files))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load "
          f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())}, Python {platform.python_version()}")
    print(f"{len(files)} files ({sum('/imagesTr/' in f for f in files)} images); "
          f"{args.repeats} rounds, order rotated")
    roots = {"baseline": args.baseline, "candidate": ROOT}
    times: dict[str, list[dict]] = {k: [] for k in roots}
    for r in range(args.repeats):
        order = list(roots) if r % 2 == 0 else list(reversed(roots))
        for variant in order:
            out = subprocess.run([sys.executable, "-c", CHILD, str(roots[variant]), variant,
                                  str(listing)], capture_output=True, text=True, check=True)
            t = json.loads(out.stdout.strip().splitlines()[-1])
            times[variant].append(t)
            print(f"  round {r}: {variant}: CPU {t['cpu']:.3f} s, wall {t['wall']:.3f} s")
    listing.unlink()
    print("\n| variant | CPU ms/file min | CPU ms/file median | wall ms/file min | wall ms/file median |")
    print("|---|---:|---:|---:|---:|")
    stats = {}
    for variant, ts in times.items():
        cpu = [t["cpu"] * 1000 / len(files) for t in ts]
        wall = [t["wall"] * 1000 / len(files) for t in ts]
        stats[variant] = (min(cpu), statistics.median(cpu))
        print(f"| {variant} | {min(cpu):.3f} | {statistics.median(cpu):.3f} | {min(wall):.3f} | "
              f"{statistics.median(wall):.3f} |")
    b, c = stats["baseline"], stats["candidate"]
    print(f"\ncandidate CPU per file: {c[0] / b[0]:.2f}x the baseline by minimum, "
          f"{c[1] / b[1]:.2f}x by median (below 1: faster)")
    print(f"load at the end: {' / '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
