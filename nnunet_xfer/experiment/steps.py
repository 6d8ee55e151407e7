"""The study's grid as one data structure: a list of :class:`Step` (shell command + kind + needs).

Dry run prints it, ``--run`` executes it, ``--slurm`` renders it as sbatch jobs; nothing else
builds commands. Tokens may hold ``${VAR}`` references: the shell expands them in printed and SLURM
commands, and the local runner fills them from the environment (failing the step clearly when unset).
"""
from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from nnunet_xfer.errors import UserError
from nnunet_xfer.layout import STORE_FOLDER
from nnunet_xfer.sources import SOURCES
from nnunet_xfer.study_grid import trainer_name

_VAR = re.compile(r"\$\{(\w+)\}")

#: What a user must put in the placeholder variables that nnU-Net-plans pretraining needs.
DATA_HINTS: dict[str, str] = {
    "NNUNET_XFER_CLS_DATA": "an ImageFolder root of natural images (e.g. ImageNet subset) for cls",
    "NNUNET_XFER_SEG_DATA": "a Pascal VOC folder (JPEGImages + SegmentationClass) for seg",
}
EVALUATION_FOLDER = "nnunet_xfer_evaluation"
REPORT_NAME = "report.html"


@dataclass(frozen=True)
class Step:
    """One shell command of the grid.

    ``done_file``: when it exists the step is skipped. ``resume_file``: when it exists (and
    ``done_file`` does not) ``resume_flag`` is appended, e.g. nnU-Net's ``--c``.
    ``needs``: names of steps that must have succeeded first.
    """
    name: str
    kind: str
    argv: tuple[str, ...]
    needs: tuple[str, ...] = ()
    done_file: str | None = None
    resume_file: str | None = None
    resume_flag: str | None = None


def quote_token(token: str) -> str:
    """Shell-quote a token, leaving its ``${VAR}`` references for the shell to expand."""
    parts, pos = [], 0
    for m in _VAR.finditer(token):
        if m.start() > pos:
            parts.append(shlex.quote(token[pos:m.start()]))
        parts.append(f'"${{{m.group(1)}}}"')
        pos = m.end()
    if pos < len(token) or not parts:
        parts.append(shlex.quote(token[pos:]))
    return "".join(parts)


def shell_command(step: Step) -> str:
    """The step as one shell line (what ``--dry-run`` prints)."""
    return " ".join(quote_token(t) for t in step.argv)


def placeholders(step: Step) -> set[str]:
    """Names of the environment variables the step's command refers to."""
    return {m for t in step.argv for m in _VAR.findall(t)}


def expand_token(token: str, environ: dict | None = None) -> str:
    """Fill ``${VAR}`` references from ``environ``; a missing variable is a :class:`UserError`."""
    environ = os.environ if environ is None else environ

    def sub(m: re.Match) -> str:
        var = m.group(1)
        if not environ.get(var):
            hint = DATA_HINTS.get(var, "see `nnunet-xfer env` and nnU-Net's path set-up")
            raise UserError(f"${var} is not set: export it ({hint})")
        return environ[var]
    return _VAR.sub(sub, token)


def is_torchvision_plans(name: str, plans: str, configuration: str) -> bool:
    """True when the plans' network is one of the package's torchvision-backbone architectures."""
    root = os.environ.get("nnUNet_preprocessed")
    path = Path(root) / name / f"{plans}.json" if root else None
    if path is None or not path.is_file():
        return False
    cfg = json.loads(path.read_text()).get("configurations", {}).get(configuration, {})
    arch = cfg.get("architecture", {}).get("network_class_name", "")
    try:
        from nnunet_xfer.architectures import is_torchvision_network
    except ImportError:  # package without the torchvision architectures: nnU-Net networks only
        return False
    return bool(is_torchvision_network(arch))


def check_sizes(name: str, sizes: Sequence[int], folds: Sequence[int]) -> None:
    """Fail early when ``subsets.json`` shows a size a fold cannot provide."""
    for var in ("nnUNet_raw", "nnUNet_preprocessed"):
        root = os.environ.get(var)
        path = Path(root) / name / "subsets.json" if root else None
        if path is not None and path.is_file():
            per_fold = json.loads(path.read_text()).get("folds", {})
            for f in folds:
                if str(f) not in per_fold:
                    raise UserError(f"fold {f} is not in {path}; choose --folds among "
                                    f"{','.join(sorted(per_fold))}")
                missing = [n for n in sizes if str(n) not in per_fold[str(f)]]
                if missing:
                    raise UserError(f"fold {f} has no subset n={missing[0]} in {path} (too few "
                                    f"training cases); drop it from --sizes")
            return


def grid_steps(dataset: str, name: str, plans: str = "nnUNetPlans", configuration: str = "2d",
               sources: Iterable[str] = SOURCES, sizes: Iterable[int] = (5, 10),
               folds: Iterable[int] = (0,), device: str = "cuda", observers: Path | None = None,
               pretrain_iterations: int | None = None, torchvision: bool = False) -> list[Step]:
    """Pretraining per source (not scratch), the trainings source × size × fold, evaluate, report."""
    sources, sizes, folds = list(sources), list(sizes), list(folds)
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources:
        raise UserError(f"unknown source task {unknown[0] if unknown else '(none)'}; "
                        f"choose from {','.join(SOURCES)}")
    if not sizes or not folds or min(sizes) < 1 or min(folds) < 0:
        raise UserError("--sizes must be positive and --folds non-negative, e.g. --sizes 5,10 --folds 0")
    results = f"${{nnUNet_results}}/{name}"
    steps: list[Step] = []
    for source in sources:
        if source == "scratch":
            continue
        argv = ["nnunet-xfer", "pretrain", "-d", str(dataset), "-s", source, "-p", plans,
                "-c", configuration, "--device", device]
        if source in ("cls", "seg") and not torchvision:
            argv += ["--data", f"${{NNUNET_XFER_{source.upper()}_DATA}}"]
        if pretrain_iterations is not None:
            argv += ["--iterations", str(pretrain_iterations)]
        entry = f"{results}/{STORE_FOLDER}/{plans}__{configuration}/{source}"
        steps.append(Step(name=f"pretrain {source}", kind="pretrain", argv=tuple(argv),
                          done_file=f"{entry}.pth", resume_file=f"{entry}.resume.pth",
                          resume_flag="--resume"))
    trainings = []
    for source in sources:
        for n in sizes:
            for fold in folds:
                tr = trainer_name(source, n)
                argv = ["nnUNetv2_train", str(dataset), configuration, str(fold), "-tr", tr]
                if plans != "nnUNetPlans":
                    argv += ["-p", plans]
                argv += ["-device", device]
                out = f"{results}/{tr}__{plans}__{configuration}/fold_{fold}"
                needs = () if source == "scratch" else (f"pretrain {source}",)
                step = Step(name=f"train {tr} fold {fold}", kind="train", argv=tuple(argv),
                            needs=needs, done_file=f"{out}/checkpoint_final.pth",
                            resume_file=f"{out}/checkpoint_latest.pth", resume_flag="--c")
                trainings.append(step)
    steps += trainings
    evaluation = f"{results}/{EVALUATION_FOLDER}"
    argv = ["nnunet-xfer", "evaluate", "-d", str(dataset), "-p", plans, "-c", configuration,
            "-o", evaluation, "--overwrite"]
    if observers is not None:
        argv += ["--observers", str(Path(observers).resolve())]
    steps.append(Step(name="evaluate", kind="evaluate", argv=tuple(argv)))
    steps.append(Step(name="report", kind="report", needs=("evaluate",),
                      argv=("nnunet-xfer", "report", "-i", evaluation,
                            "-o", f"{evaluation}/{REPORT_NAME}", "--overwrite")))
    return steps
