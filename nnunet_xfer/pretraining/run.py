"""``nnunet-xfer pretrain``: one source task for the planned network, into the pretrained store."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from nnunet_xfer.layout import resolve_dataset_name, resume_path
from nnunet_xfer.errors import UserError
from nnunet_xfer.sources import PRETRAINED_SOURCES
from nnunet_xfer.pretraining import jigsaw
from nnunet_xfer.pretraining.loop import train, window_mean
from nnunet_xfer.pretraining.network import (
    Planned,
    build_network,
    default_num_workers,
    load_planned,
    trained_prefixes,
)
from nnunet_xfer.pretraining.datasets import (
    CTImages,
    ImageClasses,
    NaturalSegmentation,
    PreprocessedSlices,
    Source,
)
from nnunet_xfer.pretraining.store import entry_path, save_entry
from nnunet_xfer.pretraining.tasks import ClsTask, JigsawTask, RecTask, SegTask, Task

DEFAULT_ITERATIONS = 20000
DEFAULT_LR = 1e-3
CHECKPOINT_EVERY = 500
#: Points kept of the loss curve written into the store's JSON.
CURVE_POINTS = 100


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


def _source(source: str, planned: Planned, data: Path | None) -> Source:
    patch = planned.patch_size
    min_side = max(jigsaw.tile_size(patch))
    channels = planned.num_input_channels
    if source in ("jigsaw", "rec"):
        if data is None:
            return PreprocessedSlices(planned.data_folder, patch, min_side, planned.dataset_name)
        if channels != 1:
            raise UserError(f"--data CT images need a single-channel network; {planned.dataset_name} "
                            f"has {channels} input channels (omit --data to use its own cases)")
        cm = planned.configuration_manager
        return CTImages(Path(data), patch, min_side, tuple(cm.spacing[-2:]),
                        cm.normalization_schemes[0], planned.intensity_properties()[0])
    if source == "seg":
        return NaturalSegmentation(Path(data), patch, min_side, channels)
    return ImageClasses(Path(data), patch, min_side, channels)


def _task(source: str, network, planned: Planned, data_source: Source, device, permutations: int,
          seed: int) -> Task:
    args = (network, planned.num_input_channels, planned.patch_size, device)
    if source == "jigsaw":
        return JigsawTask(*args, permutations=permutations, seed=seed)
    if source == "rec":
        return RecTask(*args, seed=seed)
    if source == "seg":
        return SegTask(*args, num_classes=data_source.num_classes, seed=seed)
    return ClsTask(*args, num_classes=data_source.num_classes, seed=seed)


def _curve(values, points: int = CURVE_POINTS) -> list[float]:
    """The loss history averaged into at most ``points`` consecutive windows."""
    v = [float(x) for x in values]
    if len(v) <= points:
        return v
    edges = [round(i * len(v) / points) for i in range(points + 1)]
    return [sum(v[a:b]) / (b - a) for a, b in zip(edges[:-1], edges[1:])]


def _save_state(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _positive(name: str, value) -> None:
    if value is not None and not value > 0:
        raise UserError(f"--{name} must be positive, got {value}")



def pretrain(dataset: str, source: str, plans: str = "nnUNetPlans", configuration: str = "2d",
             data: Path | None = None, weights: Path | None = None, iterations: int | None = None,
             batch_size: int | None = None, lr: float | None = None, resume: bool = False,
             overwrite: bool = False, device: str | None = None, permutations: int = 100,
             seed: int = 0, checkpoint_every: int = CHECKPOINT_EVERY,
             progress: bool = True) -> Path:
    """Pretrain ``source`` for the network nnU-Net planned for ``dataset``; returns the store .pth.

    Defaults: the plans' batch size, 20000 iterations, AdamW at 1e-3 with poly decay, CUDA when
    available. A training state is checkpointed every ``checkpoint_every`` iterations beside the
    entry (``<source>.resume.pth``) so that ``resume=True`` continues (or extends) a run.
    """
    if source not in PRETRAINED_SOURCES:
        raise UserError(f"unknown source task {source!r}; choose one of {', '.join(PRETRAINED_SOURCES)}")
    for name, value in (("iterations", iterations), ("batch-size", batch_size), ("lr", lr),
                        ("checkpoint-every", checkpoint_every)):
        _positive(name, value)
    dataset_name = resolve_dataset_name(dataset)
    planned = load_planned(dataset_name, plans, configuration)
    if len(planned.patch_size) != 2:
        raise UserError(f"configuration {configuration!r} is {len(planned.patch_size)}D; "
                        f"pretraining works on 2D configurations (-c 2d)")
    pth = entry_path(dataset_name, source, plans, configuration)
    state_file = resume_path(pth)
    if pth.exists() and not (overwrite or resume):
        raise UserError(f"{pth} exists; pass --overwrite to replace it or --resume to continue it")

    if source in ("cls", "seg") and data is None:
        if _is_torchvision(planned.class_name):
            from nnunet_xfer.pretraining.torchvision_weights import (
                import_torchvision_weights,
            )
            return import_torchvision_weights(dataset_name=dataset_name, source=source, plans=plans,
                                              configuration=configuration, weights=weights,
                                              overwrite=overwrite)
        raise UserError(f"-s {source} needs --data ("
                        + ("an ImageFolder root: one sub-folder per class" if source == "cls"
                           else "a Pascal-VOC folder or a 2D nnU-Net raw dataset")
                        + f") to pretrain {planned.class_name.rsplit('.', 1)[-1]}")
    if weights is not None:
        raise UserError("--weights only applies to -s cls/seg with torchvision plans and no --data")

    dev = _device(device)
    iterations = iterations or DEFAULT_ITERATIONS
    batch_size = batch_size or planned.batch_size
    lr = lr or DEFAULT_LR
    data_source = _source(source, planned, data)
    config = {"source": source, "data": data_source.description, "plans": plans,
              "configuration": configuration, "permutations": permutations, "seed": seed,
              "batch_size": batch_size, "lr": lr}

    state = None
    if resume:
        if state_file.is_file():
            state = torch.load(state_file, map_location="cpu", weights_only=True)
            differs = {k: (state["config"].get(k), v) for k, v in config.items()
                       if state["config"].get(k) != v}
            if differs:
                raise UserError(f"cannot resume {state_file}: it was trained with other settings "
                                f"({', '.join(f'{k}: {a} ≠ {b}' for k, (a, b) in differs.items())}); "
                                f"use the same settings or --overwrite")
            if int(state["iteration"]) >= iterations:
                raise UserError(f"{state_file} has already run {int(state['iteration'])} iterations; "
                                f"pass --iterations above that to continue")
        elif pth.exists() and not overwrite:
            raise UserError(f"{pth} exists but has no training state {state_file.name} to resume; "
                            f"pass --overwrite to start again")
        else:
            print(f"no training state {state_file} yet: starting from iteration 0", file=sys.stderr)
    start = int(state["iteration"]) if state is not None else 0

    torch.manual_seed(seed)
    network = build_network(planned).to(dev)
    task = _task(source, network, planned, data_source, dev, permutations, seed + start)
    torch.manual_seed(seed + start)  # data order/augmentation of a resumed run differ from the first
    n_workers = default_num_workers()
    loader = torch.utils.data.DataLoader(data_source, batch_size=batch_size, num_workers=n_workers,
                                         pin_memory=dev.type == "cuda",
                                         persistent_workers=n_workers > 0)

    def save_state(s: dict) -> None:
        pth.parent.mkdir(parents=True, exist_ok=True)
        _save_state(state_file, {**s, "config": config})

    t0 = time.perf_counter()
    final = train(network, task, iter(loader), iterations=iterations, lr=lr, device=dev,
                  state=state, checkpoint_every=checkpoint_every, save_state=save_state,
                  progress=progress)
    seconds = time.perf_counter() - t0
    losses, metrics = final["loss"].tolist(), final["metric"].tolist()
    meta = {
        "source": source, "dataset": dataset_name, "data": data_source.description,
        "case_ids": list(data_source.ids), "n_cases": len(data_source.ids),
        "iterations": iterations, "resumed_from": start or None,
        "final_loss": window_mean(losses),
        "task_metric": {"name": task.metric_name, "value": window_mean(metrics)},
        "loss_curve": _curve(losses),
        "plans": plans, "configuration": configuration, "patch_size": list(planned.patch_size),
        "network_class": planned.class_name, "num_input_channels": planned.num_input_channels,
        "trained_prefixes": trained_prefixes(network, task.parts),
        "head": type(task.head).__name__, "batch_size": batch_size, "lr": lr,
        "optimizer": "AdamW+poly", "seed": seed, "device": str(dev), "amp": dev.type == "cuda",
        "images_per_second": (iterations - start) * batch_size / max(seconds, 1e-9),
        "training_state": state_file.name,
    }
    if source == "jigsaw":
        meta["permutations"] = permutations
        meta["min_hamming_distance"] = jigsaw.min_hamming_distance(task.perms.cpu().numpy())
    if source in ("cls", "seg"):
        meta["num_classes"] = data_source.num_classes
    if source == "cls":
        meta["classes"] = data_source.classes
    return save_entry(pth, network.state_dict(), task.head.state_dict(), meta,
                      overwrite=overwrite or resume)
