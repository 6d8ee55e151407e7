"""The study's grid as one data structure: a list of :class:`Step` (shell command + kind + needs).

Dry run prints it, ``--run`` executes it, ``--slurm`` renders it as sbatch jobs; nothing else
builds commands. Tokens may hold ``${VAR}`` references: the shell expands them in printed and SLURM
commands, and the local runner fills them from the environment (failing the step clearly when unset).
Paths come from :class:`ShellLayout`, the dataset layout with nnU-Net's folders written as
``${nnUNet_raw}``, ``${nnUNet_preprocessed}`` and ``${nnUNet_results}``.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from nnunet_xfer.errors import UserError
from nnunet_xfer.experiment.grid import Grid, check_architecture
from nnunet_xfer.layout import (
    CHECKPOINT_FINAL,
    CHECKPOINT_LATEST,
    DEFAULT_PLANS,
    REPORT_HTML,
    DatasetLayout,
    resume_path,
    validation_summary,
)
from nnunet_xfer.sources import REGISTRY, spec
from nnunet_xfer.study_grid import trainer_name

_VAR = re.compile(r"\$\{(\w+)\}")

#: The trainers' variable saying which store entry to load (``fold`` or ``all``).
PRETRAIN_SCOPE_VAR = "nnUNet_xfer_pretrain_scope"

#: What a user must put in the placeholder variables that pretraining needs: the data of
#: natural-image sources on nnU-Net's plans, the checkpoint files of imported sources.
DATA_HINTS: dict[str, str] = {
    **{s.data_env: f"{s.data_hint} for {s.name}" for s in REGISTRY.values() if s.data_env},
    **{s.weights_env: f"the file of {s.weights_hint} for {s.name}"
       for s in REGISTRY.values() if s.weights_env}}

#: Order of the kinds of step (dry-run groups, SLURM jobs).
KINDS: tuple[str, ...] = ("plan", "pretrain", "train", "evaluate", "report")


@dataclass(frozen=True)
class Resume:
    """Append ``flag`` when ``file`` exists (the first such entry of a step wins).

    ``check``: open the file with the restricted unpickler first (nnU-Net loads it with
    ``weights_only=False``); a file that fails stops the step instead.
    """
    file: str
    flag: str
    check: bool = False


@dataclass(frozen=True)
class Step:
    """One shell command of the grid.

    ``done_file``: when it exists the step is finished and skipped. ``resume``: how an unfinished
    step continues (e.g. nnU-Net's ``--val`` when only ``checkpoint_final.pth`` exists, ``--c``
    when ``checkpoint_latest.pth`` does). ``needs``: names of steps that must have succeeded
    first. ``env``: variables set for this command only.
    """
    name: str
    kind: str
    argv: tuple[str, ...]
    needs: tuple[str, ...] = ()
    done_file: str | None = None
    resume: tuple[Resume, ...] = ()
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ShellLayout(DatasetLayout):
    """The dataset layout with nnU-Net's folders as the variables' text (``${nnUNet_results}``).

    Its paths are rendered into shell lines and filled by the shell or the runner; every name
    below the three folders still comes from :mod:`nnunet_xfer.layout`.
    """

    @property
    def raw(self) -> Path:
        return Path("${nnUNet_raw}") / self.name

    @property
    def preprocessed(self) -> Path:
        return Path("${nnUNet_preprocessed}") / self.name

    @property
    def results(self) -> Path:
        return Path("${nnUNet_results}") / self.name


# ---------------------------------------------------------------- shell text
def plan_argv(dataset_id: int | str, processes: int, *extra: str) -> tuple[str, ...]:
    """``nnUNetv2_plan_and_preprocess`` of the 2d configuration with ``processes`` for
    preprocessing and for fingerprint extraction (whose default, 8, starts 8 interpreters even
    on a 2-core machine); run it with :data:`nnunet_xfer.settings.NNUNET_PLANNER` set."""
    return ("nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", "2d", "-np",
            str(processes), "-npfp", str(processes), *extra)


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
    """The step as one shell line (what ``--dry-run`` prints): ``VAR=value … command …``."""
    env = [f"{k}={quote_token(v)}" for k, v in step.env]
    return " ".join(env + [quote_token(t) for t in step.argv])


def placeholders(step: Step) -> set[str]:
    """Names of the environment variables the step's command refers to."""
    return {m for t in (*step.argv, *(v for _, v in step.env)) for m in _VAR.findall(t)}


def expand_token(token: str, environ: Mapping[str, str]) -> str:
    """Fill ``${VAR}`` references from ``environ``; a missing variable is a :class:`UserError`."""
    def sub(m: re.Match) -> str:
        var = m.group(1)
        if not environ.get(var):
            hint = DATA_HINTS.get(var, "as nnU-Net requires, see docs/troubleshooting.md")
            raise UserError(f"${var} is not set: export it ({hint})")
        return environ[var]
    return _VAR.sub(sub, token)


# ---------------------------------------------------------------- checks against the dataset
def _plans_network(name: str, plans: str, configuration: str) -> dict:
    """The ``architecture`` entry of a configuration in the plans ({} when not planned yet)."""
    try:
        path = DatasetLayout(name).plans_json(plans)
    except UserError:  # $nnUNet_preprocessed unset: nothing planned yet
        return {}
    if not path.is_file():
        return {}
    try:
        cfg = json.loads(path.read_text()).get("configurations", {}).get(configuration, {})
    except (OSError, ValueError):
        raise UserError(f"{path} is not readable JSON; re-run nnU-Net's planning") from None
    return cfg.get("architecture", {}) if isinstance(cfg, dict) else {}


def is_torchvision_plans(name: str, plans: str, configuration: str) -> bool:
    """True when the plans' network is one of the package's architectures (``nnunet-xfer plan``)."""
    from nnunet_xfer.architectures import is_torchvision_network
    return bool(is_torchvision_network(
        _plans_network(name, plans, configuration).get("network_class_name", "")))


def plans_architecture(name: str, plans: str, configuration: str) -> str | None:
    """The ``--arch`` name of the plans' network; None for nnU-Net's own or unplanned plans."""
    from nnunet_xfer.architectures.registry import architecture_of
    a = _plans_network(name, plans, configuration)
    return architecture_of(a.get("network_class_name", ""), a.get("arch_kwargs") or {})


# ---------------------------------------------------------------- the grid
def _pretrain_steps(grid: Grid, layout: ShellLayout, plans: str, torchvision: bool,
                    plan_needs: tuple[str, ...]) -> tuple[list[Step], dict[tuple[str, int], str]]:
    """Pretraining steps and, per (source, fold), the name of the step a training needs."""
    steps: list[Step] = []
    needed: dict[tuple[str, int], str] = {}
    for source in grid.sources:
        s = spec(source)
        if not s.pretrained:
            continue
        base = ["nnunet-xfer", "pretrain", "-d", grid.dataset, "-s", source, "-p", plans,
                "-c", grid.configuration]
        tail = ["--device", grid.device]
        if s.needs_user_data and not torchvision and s.data_env:
            tail += ["--data", f"${{{s.data_env}}}"]
        if s.imports_weights:  # a published checkpoint: imported, not trained
            tail += ["--weights", f"${{{s.weights_env}}}"]
        elif grid.pretrain_iterations is not None:
            tail += ["--iterations", str(grid.pretrain_iterations)]
        if s.reads_target_images and grid.pretrain_scope == "fold":
            # one entry per fold, trained on that fold's training images only
            runs = [(f"pretrain {source} fold {k}", ["--fold", str(k)], k) for k in grid.folds]
        elif s.reads_target_images:
            runs = [(f"pretrain {source}", ["--scope", "all"], None)]
        else:  # natural images: one entry for every fold
            runs = [(f"pretrain {source}", [], None)]
        for name, extra, fold in runs:
            entry = layout.store_entry(source, plans, grid.configuration, fold=fold)
            steps.append(Step(name=name, kind="pretrain", argv=tuple(base + extra + tail),
                              needs=plan_needs, done_file=str(entry),
                              resume=(Resume(str(resume_path(entry)), "--resume"),)))
            for k in grid.folds if fold is None else (fold,):
                needed[(source, k)] = name
    return steps, needed


def grid_steps(grid: Grid, name: str, torchvision: bool | None = None) -> list[Step]:
    """Plan (with ``arch``), pretraining per source (per fold for sources that read the target's
    images), trainings source × size × fold, evaluate, report.

    ``name`` is the dataset's folder name (``Dataset501_L3``); ``torchvision`` says whether the
    plans name a torchvision network (default: with ``arch`` yes, else read from the plans).
    """
    layout = ShellLayout(name)
    plans, cfg = grid.trained_plans, grid.configuration
    if grid.arch is None:  # the plans' own network must fit every published checkpoint
        check_architecture(grid.sources, plans_architecture(name, plans, cfg), plans)
    if torchvision is None:
        torchvision = grid.arch is not None or is_torchvision_plans(name, plans, cfg)
    steps: list[Step] = []
    plan_needs: tuple[str, ...] = ()
    if grid.arch is not None:
        argv = ["nnunet-xfer", "plan", "-d", grid.dataset, "--arch", grid.arch]
        if grid.plans != DEFAULT_PLANS:
            argv += ["-p", grid.plans]
        steps.append(Step(name=f"plan {grid.arch}", kind="plan", argv=tuple(argv),
                          done_file=str(layout.plans_json(plans))))
        plan_needs = (steps[-1].name,)
    pre, needed = _pretrain_steps(grid, layout, plans, torchvision, plan_needs)
    steps += pre
    for source in grid.sources:
        s = spec(source)
        env = ((PRETRAIN_SCOPE_VAR, grid.pretrain_scope),) if s.reads_target_images else ()
        for n in grid.sizes:
            for fold in grid.folds:
                tr = trainer_name(source, n)
                argv = ["nnUNetv2_train", grid.dataset, cfg, str(fold), "-tr", tr]
                if plans != DEFAULT_PLANS:
                    argv += ["-p", plans]
                argv += ["-device", grid.device]
                out = layout.fold_folder(tr, fold, plans, cfg)
                needs = plan_needs + ((needed[(source, fold)],) if s.pretrained else ())
                steps.append(Step(
                    name=f"train {tr} fold {fold}", kind="train", argv=tuple(argv), needs=needs,
                    # finished only when nnU-Net validated: checkpoint_final.pth comes before that
                    done_file=str(validation_summary(out)),
                    resume=(Resume(str(out / CHECKPOINT_FINAL), "--val", check=True),
                            Resume(str(out / CHECKPOINT_LATEST), "--c", check=True)),
                    env=env))
    evaluation = layout.evaluation_dir
    argv = ["nnunet-xfer", "evaluate", "-d", grid.dataset, "-p", plans, "-c", cfg,
            "-o", str(evaluation), "--overwrite"]
    if grid.observers is not None:
        argv += ["--observers", str(Path(grid.observers).resolve())]
    steps.append(Step(name="evaluate", kind="evaluate", argv=tuple(argv)))
    steps.append(Step(name="report", kind="report", needs=("evaluate",),
                      argv=("nnunet-xfer", "report", "-i", str(evaluation),
                            "-o", str(evaluation / REPORT_HTML), "--overwrite")))
    return steps
