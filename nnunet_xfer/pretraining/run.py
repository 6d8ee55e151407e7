"""``nnunet-xfer pretrain``: one source task for the planned network, into the pretrained store.

What a run is, is a :class:`PretrainConfig`; :func:`pretrain` runs it. Sources that read the
target dataset's images (``spec(source).reads_target_images``) are pretrained per fold, on that
fold's training cases only (``--fold K``), or explicitly on every case (``--scope all``).
"""
from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from nnunet_xfer.atomic import atomic_torch_save, remove_stale_temporaries
from nnunet_xfer.errors import UserError
from nnunet_xfer.layout import (DEFAULT_CONFIGURATION, DEFAULT_PLANS, DatasetLayout,
                                resolve_dataset_name, resume_path)
from nnunet_xfer.pretraining import jigsaw
from nnunet_xfer.pretraining.datasets import (NATURAL_DATA, CTImages, CTPreparation,
                                              NaturalSegmentation, PreprocessedSlices, Source,
                                              refuse_target_data)
from nnunet_xfer.pretraining.defaults import (CHECKPOINT_EVERY, DEFAULT_ITERATIONS, DEFAULT_LR,
                                              DEFAULT_PERMUTATIONS)
from nnunet_xfer.pretraining.identity import (FINGERPRINTS_KEY, data_fingerprints,
                                              refuse_target_content)
from nnunet_xfer.pretraining.loop import StateMismatch, TrainingStopped, train, window_mean
from nnunet_xfer.pretraining.network import (Planned, build_network, default_num_workers,
                                             load_planned, trained_prefixes)
from nnunet_xfer.pretraining.store import (SCOPE_ALL, SCOPE_EXTERNAL, SCOPE_FOLD, claim_entry,
                                           entry_lock, provenance, restricted_load,
                                           save_entry)
from nnunet_xfer.pretraining.tasks import make_task
from nnunet_xfer.sources import DATA_TARGET, SourceSpec, pretrained_spec

#: Points kept of the loss curve written into the store's JSON.
CURVE_POINTS = 100
#: Fields of a config that a resumed run may change (how long, where, how often it saves).
RESUMABLE_FIELDS = ("iterations", "checkpoint_every", "device", "weights")
#: Keys a training state must hold (anything else is not a state of ours).
STATE_KEYS = ("network", "head", "optimizer", "iteration", "loss", "metric", "config")


@dataclass(frozen=True)
class PretrainConfig:
    """One pretraining run: the options of ``nnunet-xfer pretrain`` (None: the default)."""

    dataset: str
    source: str
    plans: str = DEFAULT_PLANS
    configuration: str = DEFAULT_CONFIGURATION
    #: train on this fold's training cases only (sources that read the target's images)
    fold: int | None = None
    #: "fold" (with ``fold``) or "all" (every case of the target, validation cases included)
    scope: str | None = None
    data: Path | None = None
    weights: Path | None = None
    iterations: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    permutations: int = DEFAULT_PERMUTATIONS
    seed: int = 0
    checkpoint_every: int = CHECKPOINT_EVERY
    device: str | None = None

    def defining(self) -> dict:
        """The fields that define the run (a resume must match them), JSON-ready."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()
                if k not in RESUMABLE_FIELDS}


class PretrainInterrupted(Exception):
    """SIGINT/SIGTERM stopped pretraining after its training state was saved."""

    def __init__(self, signum: int, state_file: Path, iteration: int):
        name = signal.Signals(signum).name
        super().__init__(f"{name}: stopped at iteration {iteration}; training state saved to "
                         f"{state_file} (continue with --resume)")
        self.signum, self.state_file, self.iteration = signum, state_file, iteration

    @property
    def exit_code(self) -> int:
        """128 + the signal number (130 for SIGINT, 143 for SIGTERM), as a shell reports it."""
        return 128 + self.signum


def _is_torchvision(class_name: str) -> bool:
    try:
        from nnunet_xfer.architectures import is_torchvision_network
    except ImportError:  # no torchvision architectures installed: nnU-Net's own networks only
        return False
    return bool(is_torchvision_network(class_name))


def _device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda requested but no CUDA device is available; use --device cpu")
    if not device.startswith(("cuda", "cpu", "mps")):
        raise UserError(f"--device {device!r}: use cuda or cpu")
    return torch.device(device)


def _curve(values, points: int = CURVE_POINTS) -> list[float]:
    """The loss history averaged into at most ``points`` consecutive windows."""
    v = [float(x) for x in values]
    if len(v) <= points:
        return v
    edges = [round(i * len(v) / points) for i in range(points + 1)]
    return [sum(v[a:b]) / (b - a) for a, b in zip(edges[:-1], edges[1:])]


def _positive(name: str, value) -> None:
    if value is not None and not value > 0:
        raise UserError(f"--{name} must be positive, got {value}")


# ---------------------------------------------------------------- what the run reads
def _scope(config: PretrainConfig, s: SourceSpec, dataset_name: str) -> str:
    """The entry's scope; one-line errors for options that do not fit the source."""
    if config.scope not in (None, SCOPE_FOLD, SCOPE_ALL):
        raise UserError(f"--scope {config.scope!r}: use fold or all")
    if not s.reads_target_images:
        if config.fold is not None or config.scope is not None:
            raise UserError(f"-s {s.name} does not read {dataset_name}'s images: its entry is "
                            f"shared by all folds; omit --fold/--scope")
        return SCOPE_EXTERNAL
    if config.fold is not None and config.scope == SCOPE_ALL:
        raise UserError("--fold K and --scope all exclude each other: choose one")
    if config.fold is None:
        if config.scope == SCOPE_ALL:
            return SCOPE_ALL
        raise UserError(f"-s {s.name} pretrains on {dataset_name}'s own images: give --fold K "
                        f"(fold K's training cases only; trainers of fold K load it) or --scope all "
                        f"(every case, validation cases included, recorded as such)")
    if config.fold < 0:
        raise UserError(f"--fold must be 0 or more, got {config.fold}")
    return SCOPE_FOLD


def fold_training_cases(dataset_name: str, fold: int) -> list[str]:
    """Fold ``fold``'s training cases, from the splits nnU-Net trains with (else the raw ones)."""
    layout = DatasetLayout(dataset_name)
    path = layout.preprocessed_splits if layout.preprocessed_splits.is_file() else layout.raw_splits
    if not path.is_file():
        raise UserError(f"no {path.name} for {dataset_name} ({layout.preprocessed_splits} or "
                        f"{layout.raw_splits}); run `nnunet-xfer convert` first")
    try:
        splits = json.loads(path.read_text(encoding="utf-8"))
        folds = [sorted(map(str, s["train"])) for s in splits]
    except (ValueError, UnicodeDecodeError, TypeError, KeyError):
        raise UserError(f"{path} is not nnU-Net's splits format (a list of train/val); fix it or "
                        f"re-run `nnunet-xfer convert --overwrite`") from None
    if fold >= len(folds):
        raise UserError(f"--fold {fold} does not exist: {path} has {len(folds)} folds "
                        f"(0…{len(folds) - 1})")
    return folds[fold]


def _data_source(s: SourceSpec, planned: Planned, data: Path | None,
                 case_ids: list[str] | None) -> Source:
    patch = planned.patch_size
    min_side = max(jigsaw.tile_size(patch))
    channels = planned.num_input_channels
    if s.data == DATA_TARGET:
        if data is None:
            return PreprocessedSlices(planned.data_folder, patch, min_side, planned.dataset_name,
                                      case_ids=case_ids)
        if channels != 1:
            raise UserError(f"--data CT images need a single-channel network; {planned.dataset_name} "
                            f"has {channels} input channels (omit --data to use its own cases)")
        cm = planned.configuration_manager
        return CTImages(Path(data), patch, min_side, tuple(cm.spacing[-2:]),
                        cm.normalization_schemes[0], planned.intensity_properties()[0])
    cls = NATURAL_DATA[s.data]
    if cls is NaturalSegmentation:  # a CT segmentation dataset is prepared like the target
        cm = planned.configuration_manager
        ct = CTPreparation(tuple(cm.spacing[-2:]), cm.normalization_schemes[0],
                           planned.intensity_properties()[0])
        return cls(Path(data), patch, min_side, channels, ct=ct)
    return cls(Path(data), patch, min_side, channels)


# ---------------------------------------------------------------- training state
def read_state(state_file: Path) -> dict:
    """A training state written by :func:`pretrain`, loaded safely; one-line error otherwise."""
    try:
        state = restricted_load(state_file)
    except Exception as e:  # truncated, corrupt, or a pickle that is not tensors and plain types
        first = (str(e).strip().splitlines() or ["no detail"])[0][:160]
        raise UserError(f"cannot read training state {state_file} ({type(e).__name__}: {first}); "
                        f"it is truncated, corrupt or not ours: delete it, or pass --overwrite "
                        f"instead of --resume to start again") from None
    if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS) \
            or not isinstance(state["config"], dict):
        raise UserError(f"{state_file} is not a pretraining state of nnunet-xfer (keys "
                        f"{', '.join(STATE_KEYS)} expected); delete it, or pass --overwrite "
                        f"instead of --resume to start again")
    return state


@contextmanager
def _stop_on_signals() -> Iterator[dict]:
    """SIGINT/SIGTERM set a flag (the loop saves its state and stops) instead of killing at once."""
    flag: dict = {"signum": None}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        flag["signum"] = signum

    old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


#: What ``experiment``, SLURM and Ctrl-C send to the whole process group.
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _workers_ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers leave SIGINT/SIGTERM to the main process, which saves the training
    state and then ends them; a signal to the process group would otherwise kill a worker first
    and the main process would stop with a traceback instead of saving."""
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


@contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """SIGINT/SIGTERM held back while worker processes start (they inherit the block until
    :func:`_workers_ignore_stop_signals` runs); one that arrived meanwhile is delivered after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


# ---------------------------------------------------------------- the run
def pretrain(config: PretrainConfig, *, resume: bool = False, overwrite: bool = False,
             progress: bool | None = None, keep_state: bool = False) -> Path:
    """Pretrain ``config.source`` for the network nnU-Net planned; returns the store ``.pth``.

    Defaults: the plans' batch size, 20000 iterations, AdamW at 1e-3 with poly decay, CUDA when
    available. A training state is checkpointed every ``checkpoint_every`` iterations beside the
    entry (``<source>.resume.pth``) so that ``resume=True`` continues (or extends) a run. SIGINT
    and SIGTERM save that state and raise :class:`PretrainInterrupted`. Only one process writes
    an entry at a time (a second is refused in one line).
    """
    s = pretrained_spec(config.source)
    for name, value in (("iterations", config.iterations), ("batch-size", config.batch_size),
                        ("lr", config.lr), ("checkpoint-every", config.checkpoint_every)):
        _positive(name, value)
    dataset_name = resolve_dataset_name(config.dataset)
    scope = _scope(config, s, dataset_name)
    if config.data is not None:
        refuse_target_data(Path(config.data), dataset_name)
    planned = load_planned(dataset_name, config.plans, config.configuration)
    if len(planned.patch_size) != 2:
        raise UserError(f"configuration {config.configuration!r} is {len(planned.patch_size)}D; "
                        f"pretraining works on 2D configurations (-c 2d)")

    if s.needs_user_data and config.data is None:
        if _is_torchvision(planned.class_name):
            from nnunet_xfer.pretraining.torchvision_weights import import_torchvision_weights
            return import_torchvision_weights(dataset_name=dataset_name, source=s.name,
                                              plans=config.plans,
                                              configuration=config.configuration,
                                              weights=config.weights, overwrite=overwrite)
        raise UserError(f"-s {s.name} needs --data ({s.data_hint}) to pretrain "
                        f"{planned.class_name.rsplit('.', 1)[-1]}")
    if config.weights is not None:
        raise UserError("--weights only applies to -s cls/seg with torchvision plans and no --data")

    fold = config.fold if scope == SCOPE_FOLD else None
    config = replace(config, dataset=dataset_name, scope=scope,
                     data=Path(config.data).absolute() if config.data is not None else None,
                     iterations=config.iterations or DEFAULT_ITERATIONS,
                     batch_size=config.batch_size or planned.batch_size,
                     lr=config.lr or DEFAULT_LR)
    pth = DatasetLayout(dataset_name).store_entry(s.name, config.plans, config.configuration,
                                                  fold=fold)
    with entry_lock(pth):
        remove_stale_temporaries(pth.parent)  # what a killed writer left behind
        return _pretrain_locked(config, s, planned, pth, resume=resume, overwrite=overwrite,
                                progress=progress, keep_state=keep_state)


def _pretrain_locked(config: PretrainConfig, s: SourceSpec, planned: Planned, pth: Path, *,
                     resume: bool, overwrite: bool, progress: bool | None,
                     keep_state: bool) -> Path:
    state_file = resume_path(pth)
    if pth.exists() and not (overwrite or resume):
        raise UserError(f"{pth} exists; pass --overwrite to replace it or --resume to continue it")
    # --overwrite/--resume replace only an entry the store wrote, and only the one there now
    claim = claim_entry(pth, overwrite or resume, inputs=(config.data, config.weights))

    dev = _device(config.device)
    case_ids = (fold_training_cases(config.dataset, config.fold) if config.scope == SCOPE_FOLD
                else None)
    seen = {}
    if config.data is not None:  # by content: a copy of the target in another type or format
        seen = data_fingerprints(config.data)
        refuse_target_content(seen, config.data, config.dataset)
    data_source = _data_source(s, planned, config.data, case_ids)
    defining = config.defining()

    state = None
    if resume:
        if state_file.is_file():
            state = read_state(state_file)
            saved = state["config"]
            differs = {k: (saved.get(k), v) for k, v in defining.items() if saved.get(k) != v}
            if differs:
                raise UserError(f"cannot resume {state_file}: it was trained with other settings "
                                f"({', '.join(f'{k}: {a} ≠ {b}' for k, (a, b) in differs.items())}); "
                                f"use the same settings or --overwrite")
            if int(state["iteration"]) >= config.iterations:
                raise UserError(f"{state_file} has already run {int(state['iteration'])} iterations; "
                                f"pass --iterations above that to continue")
        elif pth.exists() and not overwrite:
            raise UserError(f"{pth} exists but has no training state {state_file.name} to resume "
                            f"(a finished run keeps it only with --keep-state); pass --overwrite "
                            f"to start again")
        else:
            print(f"no training state {state_file} yet: starting from iteration 0", file=sys.stderr)
    start = int(state["iteration"]) if state is not None else 0

    torch.manual_seed(config.seed)
    network = build_network(planned).to(dev)
    task = make_task(s.task, network, planned.num_input_channels, planned.patch_size, dev,
                     seed=config.seed + start, permutations=config.permutations,
                     num_classes=getattr(data_source, "num_classes", None))
    torch.manual_seed(config.seed + start)  # data order/augmentation of a resumed run differ
    n_workers = default_num_workers()
    loader = torch.utils.data.DataLoader(data_source, batch_size=config.batch_size,
                                         num_workers=n_workers, pin_memory=dev.type == "cuda",
                                         persistent_workers=n_workers > 0,
                                         worker_init_fn=_workers_ignore_stop_signals)

    def save_state(snapshot: dict) -> None:
        atomic_torch_save(state_file, {**snapshot, "config": defining})

    t0 = time.perf_counter()
    with _stop_on_signals() as flag:
        with _stop_signals_blocked():  # the workers start with them blocked, then ignore them
            batches = iter(loader)
        try:
            final = train(network, task, batches, iterations=config.iterations, lr=config.lr,
                          device=dev, state=state, checkpoint_every=config.checkpoint_every,
                          save_state=save_state, progress=progress,
                          stop=lambda: flag["signum"] is not None)
        except TrainingStopped as e:
            raise PretrainInterrupted(flag["signum"], state_file, e.iteration) from None
        except StateMismatch as e:
            raise UserError(f"cannot continue from {state_file} ({e}); it does not fit this "
                            f"network: pass --overwrite instead of --resume to start again") from None
        seconds = time.perf_counter() - t0
        losses, metrics = final["loss"].tolist(), final["metric"].tolist()
        meta = {
            "source": s.name, "data": data_source.description,
            "n_cases": len(data_source.ids),
            "iterations": config.iterations, "resumed_from": start or None,
            "final_loss": window_mean(losses),
            "task_metric": {"name": task.metric_name, "value": window_mean(metrics)},
            "loss_curve": _curve(losses),
            "patch_size": list(planned.patch_size),
            "network_class": planned.class_name, "num_input_channels": planned.num_input_channels,
            "trained_prefixes": trained_prefixes(network, task.parts),
            "head": type(task.head).__name__, "batch_size": config.batch_size, "lr": config.lr,
            "optimizer": "AdamW+poly", "seed": config.seed, "device": str(dev),
            "amp": dev.type == "cuda",
            "images_per_second": (config.iterations - start) * config.batch_size / max(seconds, 1e-9),
            "training_state": state_file.name,
            "config": defining,
            **provenance(config.dataset, planned.plans_manager.plans, config.configuration,
                         scope=config.scope, fold=config.fold, case_ids=list(data_source.ids)),
        }
        if config.data is not None:  # what it saw, for the trainers' identity check
            meta[FINGERPRINTS_KEY] = sorted(seen)
        for key in s.extra_metadata:
            holder = task if hasattr(task, key) else data_source
            meta[key] = getattr(holder, key)
        out = save_entry(pth, network.state_dict(), task.head.state_dict(), meta,
                         overwrite=overwrite or resume, claim=claim)
    if not keep_state:
        state_file.unlink(missing_ok=True)  # the entry is complete: its training state is not needed
    return out
