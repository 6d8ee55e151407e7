"""Schedule control: the transfer machinery alone must not move the result (a paired design).

On a small phantom, ``XferRecTrainer_n<N>`` fine-tunes a store entry holding *untrained*
(random-init) weights through the whole transfer path (store entry with its provenance record,
the trainer's checks, key-by-key transfer, the default schedule), and ``XferScratchTrainer_n<N>``
trains from nnU-Net's own random init. Both arms of a pair run with the same ``nnUNet_xfer_seed``,
so they share the training subset, the data order and every augmentation draw: they differ only
in their initial weights. A third arm, ``identity``, hands the transfer path the very weights
scratch starts from; its Dice must equal scratch's run for run, which proves the pairing (same
data order and augmentation; on CPU with in-process data loading nnU-Net's training is
deterministic given the seed).

Analysis: per seed the paired difference transfer − scratch (averaged over the sizes n for the
pooled verdict, since a seed's two initialisations are shared by its sizes); its mean over seeds
with a 95% t interval; **equivalent** when the whole interval lies within ±``--margin`` (default
0.03 Dice, see docs/trainers.md#schedule-control for why), **different** when it excludes 0
and is not within the margin, **inconclusive** otherwise.

Every run is a real nnU-Net training (``nnunetv2.run.run_training.run_training``, in this process,
on CPU); Dice is nnU-Net's own validation mean over fold 0's validation cases. Arms alternate in
rotated order within each (n, seed).

    PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/schedule_control.py --seeds 16
    PYTHONPATH=. .venv/bin/python benchmarks/schedule_control.py --seeds 5 --lr-factor 0.1

Seeds are independent, so a run can be split into parts (one seed each, say, in parallel on a
machine shared with others) and the parts analysed together (a seed given twice is refused):

    for k in 0 1 2 3 4 5; do PYTHONPATH=. OMP_NUM_THREADS=1 nice -n 19 .venv/bin/python \
        benchmarks/schedule_control.py --first-seed $k --seeds 1 --identity-seeds 1 \
        --json part$k.json > part$k.log 2>&1 & done; wait
    PYTHONPATH=. .venv/bin/python benchmarks/schedule_control.py --from-json part*.json

``--lr-factor`` etc. run the transfer arms with an explicit schedule option instead (to see how
much the option itself moves the result). The test suite runs :func:`run_arms` on its own tiny
dataset (tests/integration/test_trainers.py) so that the control cannot silently stop running.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ARMS = ("scratch", "transfer", "identity")
SCHEDULE_VARS = ("nnUNet_xfer_lr_factor", "nnUNet_xfer_warmup_fraction", "nnUNet_xfer_freeze_epochs")
DATASET_ID, DATASET = 501, "Dataset501_L3"
#: Equivalence margin in Dice (docs/trainers.md#schedule-control says why 0.03).
MARGIN = 0.03
FOLD = 0
#: Seed of the untrained weights of the transfer arm's entry: other than the trainer's seed.
ENTRY_SEED_OFFSET = 1000


def make_dataset(root: Path, cases: int, size: int, sizes: list[int]) -> None:
    """Phantom → converted ``Dataset501_L3`` → nnU-Net 2d planning and preprocessing (as tests/conftest.py)."""
    from nnunet_xfer.dataset_conversion.convert import convert
    from nnunet_xfer.phantom.cohort import write_cohort
    cohort = write_cohort(root / "cohort", n_cases=cases, size=size, n_observers=1, n_observer_cases=1, seed=0)
    convert(cases_csv=cohort / "cases.csv", dataset_id=DATASET_ID, name="L3", sizes=sizes)
    from _bench import plan_dataset
    plan_dataset(DATASET_ID)


def initial_network(dataset: str, seed: int):
    """The network exactly as the trainer builds it, initialised after ``torch.manual_seed(seed)``."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_xfer.layout import DatasetLayout
    pm = PlansManager(str(DatasetLayout(dataset).plans_json()))
    torch.manual_seed(seed)
    return nnUNetTrainer.build_network_architecture(pm, pm.get_configuration("2d"), 1, 2, True)


def write_entry(dataset: str, seed: int, note: str):
    """The fold's ``rec`` store entry holding ``initial_network(seed)``, with the provenance record
    the trainers check (this dataset, plans digest, fold 0, no case seen: the weights are untrained).
    Written through the store's own API, so the entry is in the current store format."""
    from nnunet_xfer.layout import DatasetLayout
    from nnunet_xfer.pretraining.store import SCOPE_FOLD, entry_provenance, save_entry
    state = initial_network(dataset, seed).state_dict()
    pth = DatasetLayout(dataset).store_entry("rec", "nnUNetPlans", "2d", fold=FOLD)
    meta = {"source": "rec", "data": "none: untrained weights", "trained_prefixes": ["encoder.", "decoder."],
            "note": f"schedule control: untrained weights ({note})",
            **entry_provenance(dataset, "nnUNetPlans", "2d", scope=SCOPE_FOLD, fold=FOLD, case_ids=[])}
    return save_entry(pth, state, None, meta, overwrite=True)


def train(dataset: str, trainer: str, seed: int, run_env: dict) -> dict:
    """One real nnU-Net training + validation of fold 0; Dice and timings."""
    import shutil

    import torch
    from nnunetv2.run.run_training import run_training

    from nnunet_xfer.layout import DEBUG_JSON, DatasetLayout, validation_summary
    fold = DatasetLayout(dataset).fold_folder(trainer, FOLD)
    shutil.rmtree(fold.parent, ignore_errors=True)
    for var in SCHEDULE_VARS:
        os.environ.pop(var, None)
    os.environ.update({**run_env, "nnUNet_xfer_seed": str(seed)})
    cpu, wall = time.process_time(), time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        run_training(dataset, "2d", FOLD, trainer, "nnUNetPlans", device=torch.device("cpu"))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    summary = json.loads(validation_summary(fold).read_text())
    debug = json.loads((fold / DEBUG_JSON).read_text())["xfer_info"]
    return {"dice": summary["foreground_mean"]["Dice"], "cpu_s": cpu, "wall_s": wall,
            "schedule": debug["schedule"], "transferred": (debug.get("transfer") or {}).get("n_transferred"),
            "train": (debug.get("subset") or {}).get("train")}


def run_arms(dataset: str, sizes: list[int], seeds: int, arms: tuple[str, ...] = ARMS,
             base_env: dict | None = None, transfer_env: dict | None = None,
             on_run: Callable[[dict], None] | None = None, identity_seeds: int | None = None,
             first_seed: int = 0) -> list[dict]:
    """Every arm for every (seed, n), the arms of a pair in rotated order; one dict per run.

    Seed by seed, so that an interrupted run still holds whole seeds (:func:`complete_seeds`).
    ``identity_seeds``: run the identity arm (the pairing check) for the first seeds only.
    ``first_seed``: seeds ``first_seed … first_seed + seeds − 1`` (to extend an earlier run)."""
    base_env = dict(base_env or {})
    transfer_env = dict(transfer_env if transfer_env is not None else base_env)
    runs = []
    for seed in range(first_seed, first_seed + seeds):
        for n in sizes:
            these = tuple(arm for arm in arms if arm != "identity" or identity_seeds is None
                          or seed < identity_seeds)
            order = these[seed % len(these):] + these[:seed % len(these)]
            for arm in order:
                if arm == "scratch":
                    result = train(dataset, f"XferScratchTrainer_n{n}", seed, base_env)
                else:
                    entry_seed = ENTRY_SEED_OFFSET + seed if arm == "transfer" else seed
                    write_entry(dataset, entry_seed, f"torch.manual_seed({entry_seed})")
                    result = train(dataset, f"XferRecTrainer_n{n}", seed, transfer_env)
                runs.append({"n": n, "seed": seed, "arm": arm, **result})
                if on_run is not None:
                    on_run(runs[-1])
    return runs


# ---------------------------------------------------------------- the paired analysis
def t_quantile(p: float, df: int) -> float:
    """Student's t quantile (scipy)."""
    from scipy import stats
    return float(stats.t.ppf(p, df))


def paired_difference(a: list[float], b: list[float], margin: float = MARGIN,
                      level: float = 0.95) -> dict:
    """Mean of the paired differences ``a − b`` with its t interval and the equivalence verdict.

    ``equivalent``: the interval lies within ±margin; ``different``: it excludes 0 and is not
    within the margin; ``inconclusive`` otherwise (or with fewer than 2 pairs).
    """
    if len(a) != len(b):
        raise ValueError(f"paired lists differ in length: {len(a)} vs {len(b)}")
    d = [x - y for x, y in zip(a, b)]
    k = len(d)
    mean = statistics.mean(d) if k else math.nan
    sd = statistics.stdev(d) if k > 1 else math.nan
    half = t_quantile(0.5 + level / 2, k - 1) * sd / math.sqrt(k) if k > 1 else math.nan
    low, high = mean - half, mean + half
    if k > 1 and -margin <= low and high <= margin:
        verdict = "equivalent"
    elif k > 1 and (low > 0 or high < 0):
        verdict = "different"
    else:
        verdict = "inconclusive"
    return {"k": k, "differences": d, "mean": mean, "sd": sd, "ci_low": low, "ci_high": high,
            "level": level, "margin": margin, "verdict": verdict}


def seed_means(runs: list[dict], arm: str, sizes: list[int]) -> list[float]:
    """Per seed, the arm's Dice averaged over ``sizes`` (seeds in order)."""
    seeds = sorted({r["seed"] for r in runs})
    return [statistics.mean(r["dice"] for r in runs if r["arm"] == arm and r["seed"] == s
                            and r["n"] in sizes) for s in seeds]


def complete_seeds(runs: list[dict], sizes: list[int], arms: tuple[str, ...]) -> list[dict]:
    """The runs of the seeds that have every paired arm (scratch, transfer) at every size (an
    interrupted run's whole seeds)."""
    have: dict[int, set] = {}
    for r in runs:
        have.setdefault(r["seed"], set()).add((r["n"], r["arm"]))
    need = {(n, a) for n in sizes for a in arms if a != "identity"}
    whole = {s for s, got in have.items() if got >= need}
    return [r for r in runs if r["seed"] in whole]


def analyse(runs: list[dict], sizes: list[int], margin: float = MARGIN) -> dict:
    """Per n and pooled over n: the paired transfer − scratch difference and its verdict, and the
    largest |identity − scratch| (the pairing check)."""
    def dice(n, arm):
        return [r["dice"] for r in sorted(runs, key=lambda r: r["seed"]) if r["n"] == n and r["arm"] == arm]
    result = {"per_n": {}, "margin": margin}
    for n in sizes:
        entry = {"transfer_minus_scratch": paired_difference(dice(n, "transfer"), dice(n, "scratch"), margin)}
        same_seed = [(r["dice"], s["dice"]) for r in runs for s in runs
                     if r["arm"] == "identity" and s["arm"] == "scratch" and r["n"] == s["n"] == n
                     and r["seed"] == s["seed"]]
        if same_seed:
            entry["identity_max_abs"] = max(abs(x - y) for x, y in same_seed)
            entry["identity_seeds"] = len(same_seed)
        result["per_n"][n] = entry
    result["pooled"] = paired_difference(seed_means(runs, "transfer", sizes),
                                         seed_means(runs, "scratch", sizes), margin)
    return result


def table(runs: list[dict], sizes: list[int], arms: list[str], analysis: dict) -> str:
    """The markdown table of docs/benchmarks.md and docs/trainers.md."""
    lines = ["| n | arm | Dice per seed | mean ± sd | CPU s/run (min, median) | wall s/run (min, median) |",
             "|---|---|---|---|---|---|"]
    for n in sizes:
        for arm in arms:
            rs = sorted((r for r in runs if r["n"] == n and r["arm"] == arm), key=lambda r: r["seed"])
            if not rs:
                continue
            values = [r["dice"] for r in rs]
            spread = f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}" if len(values) > 1 \
                else f"{values[0]:.4f}"
            cpus, walls = [r["cpu_s"] for r in rs], [r["wall_s"] for r in rs]
            lines.append(f"| {n} | {arm} | {', '.join(f'{v:.4f}' for v in values)} | {spread} | "
                         f"{min(cpus):.0f}, {statistics.median(cpus):.0f} | "
                         f"{min(walls):.0f}, {statistics.median(walls):.0f} |")
    lines += ["", "| paired difference transfer − scratch | seeds | mean | sd | 95% CI | verdict (margin ±"
              f"{analysis['margin']:g}) |", "|---|---|---|---|---|---|"]
    rows = [(f"n = {n}", v["transfer_minus_scratch"]) for n, v in analysis["per_n"].items()]
    rows.append((f"pooled over n ({', '.join(map(str, sizes))}), per seed", analysis["pooled"]))
    for name, p in rows:
        lines.append(f"| {name} | {p['k']} | {p['mean']:+.4f} | {p['sd']:.4f} | "
                     f"[{p['ci_low']:+.4f}, {p['ci_high']:+.4f}] | {p['verdict']} |")
    identity = [f"n = {n}: {v['identity_max_abs']:.1e} over {v['identity_seeds']} seed(s)"
                for n, v in analysis["per_n"].items() if "identity_max_abs" in v]
    if identity:
        lines += ["", "largest per-seed |identity − scratch|: " + "; ".join(identity)]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=40, help="phantom cases (4 folds: 30 train, 10 validation)")
    ap.add_argument("--size", type=int, default=64, help="phantom slice size")
    ap.add_argument("--sizes", type=int, nargs="+", default=[5, 10], help="training subset sizes n")
    ap.add_argument("--seeds", type=int, default=16,
                    help="seeds per arm and n (>= 5; fewer only as one part of a run, with --json)")
    ap.add_argument("--first-seed", type=int, default=0,
                    help="start at this seed (to extend an earlier run; analyse both with --from-json)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--iterations", type=int, default=20, help="training iterations per epoch")
    ap.add_argument("--margin", type=float, default=MARGIN, help="equivalence margin in Dice")
    ap.add_argument("--no-identity", action="store_true", help="skip the identity arm")
    ap.add_argument("--identity-seeds", type=int, default=None,
                    help="run the identity arm (the pairing check) for the first K seeds only")
    ap.add_argument("--lr-factor", default=None, help="explicit nnUNet_xfer_lr_factor for the transfer arms")
    ap.add_argument("--warmup-fraction", default=None, help="explicit nnUNet_xfer_warmup_fraction")
    ap.add_argument("--json", type=Path, default=None, help="also write every run as JSON here")
    ap.add_argument("--from-json", type=Path, nargs="+", default=None,
                    help="analyse the whole seeds of earlier (or interrupted) runs' --json files")
    a = ap.parse_args()
    if a.from_json is not None:
        saved = [json.loads(path.read_text()) for path in a.from_json]
        every = [r for one in saved for r in one["runs"]]
        arms = tuple(arm for arm in ARMS if any(r["arm"] == arm for r in every))
        sizes = saved[0]["args"]["sizes"]
        if any(one["args"]["sizes"] != sizes for one in saved):
            ap.error("the --from-json files ran other sizes")
        counted = {}
        for r in every:
            counted[(r["n"], r["seed"], r["arm"])] = counted.get((r["n"], r["seed"], r["arm"]), 0) + 1
        twice = sorted({seed for (_n, seed, _arm), k in counted.items() if k > 1})
        if twice:
            ap.error(f"seed(s) {', '.join(map(str, twice))} appear in more than one --from-json "
                     f"file; give each seed's runs once")
        runs = complete_seeds(every, sizes, arms)
        print(f"# schedule control from {', '.join(map(str, a.from_json))} (commit "
              f"{', '.join(sorted({str(one.get('commit', '?')) for one in saved}))}): "
              f"{len({r['seed'] for r in runs})} whole seed(s)")
        print(table(runs, sizes, list(arms), analyse(runs, sizes, a.margin)))
        if len({r["seed"] for r in runs}) < 5:
            print("\nfewer than 5 whole seeds: the interval is too wide to read (extend the run)")
        return
    if a.seeds < 5 and a.json is None:
        ap.error("--seeds must be at least 5 for an interval worth reading (fewer only as a part "
                 "of a larger run: --json, then analyse the parts together with --from-json)")

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _bench import machine, machine_report
    info = machine()
    tmp = tempfile.TemporaryDirectory(prefix="schedule_control_")
    root = Path(tmp.name)
    for var in ("raw", "preprocessed", "results"):
        (root / var).mkdir()
        os.environ[f"nnUNet_{var}"] = str(root / var)
    from nnunet_xfer.settings import NNUNET_ON_CPU
    os.environ.update(NNUNET_ON_CPU)
    for var in (*SCHEDULE_VARS, "nnUNet_xfer_save_initial", "nnUNet_xfer_pretrain_scope"):
        os.environ.pop(var, None)
    from nnunet_xfer.trainers import trainer_folder
    os.environ["nnUNet_extTrainer"] = str(trainer_folder())
    base_env = {"nnUNet_xfer_epochs": str(a.epochs), "nnUNet_xfer_iterations": str(a.iterations)}
    transfer_env = dict(base_env)
    if a.lr_factor is not None:
        transfer_env["nnUNet_xfer_lr_factor"] = a.lr_factor
    if a.warmup_fraction is not None:
        transfer_env["nnUNet_xfer_warmup_fraction"] = a.warmup_fraction

    import torch
    started = time.perf_counter()
    make_dataset(root, a.cases, a.size, a.sizes)
    repo = Path(__file__).resolve().parents[1]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=repo).stdout.strip() or os.environ.get("SCHEDULE_CONTROL_COMMIT", "?")
    print(f"# schedule control, commit {commit}\n{machine_report(info)}\ntorch {torch.get_num_threads()} "
          f"threads on {platform.node()}; phantom {a.cases} cases at {a.size}², {a.epochs} epochs × "
          f"{a.iterations} iterations, seeds {a.first_seed}…{a.first_seed + a.seeds - 1}, margin ±{a.margin:g} Dice; dataset ready in "
          f"{time.perf_counter() - started:.0f} s", flush=True)

    arms = tuple(arm for arm in ARMS if not (arm == "identity" and a.no_identity))

    def report(run: dict, runs: list[dict] = []) -> None:  # noqa: B006 (the runs so far)
        runs.append(run)
        if a.json:  # after every run, so that an interrupted benchmark keeps what it measured
            a.json.write_text(json.dumps({"args": {**vars(a), "json": str(a.json)}, "machine": info,
                                          "commit": commit, "runs": runs}, indent=1, default=str))
        print(f"n={run['n']:<3} seed={run['seed']} {run['arm']:<9} Dice {run['dice']:.4f}  "
              f"CPU {run['cpu_s']:6.1f} s  wall {run['wall_s']:6.1f} s  "
              f"schedule explicit={run['schedule']['explicit']}  load {os.getloadavg()[0]:.1f}", flush=True)

    runs = run_arms(DATASET, a.sizes, a.seeds, arms, base_env, transfer_env, on_run=report,
                    identity_seeds=a.identity_seeds, first_seed=a.first_seed)
    analysis = analyse(runs, a.sizes, a.margin)
    print()
    print(table(runs, a.sizes, list(arms), analysis))
    load = os.getloadavg()
    print(f"\ntotal {time.perf_counter() - started:.0f} s; load average at the end "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if a.json:
        a.json.write_text(json.dumps({"args": {**vars(a), "json": str(a.json)}, "machine": info,
                                      "commit": commit, "runs": runs, "analysis": analysis},
                                     indent=1, default=str))
    tmp.cleanup()


if __name__ == "__main__":
    main()
