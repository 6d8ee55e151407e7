"""``nnunet-xfer plan``: an nnU-Net plans file whose 2D configurations use a torchvision network.

The variant is a copy of nnU-Net's plans with ``plans_name`` changed, every 2D configuration's
``architecture`` replaced and the same ``data_identifier`` (so nnU-Net's preprocessed data is
reused as is). 3D configurations are dropped: the torchvision networks are 2D only.

Batch size rule: nnU-Net sized the source configuration's batch so that its own network's
activations fit its GPU-memory target. The variant keeps that activation budget:
``batch = floor(source_batch × A_nnunet / A_new)``, where ``A`` is the number of activation
elements one patch produces (summed over every layer's output, counted on the ``meta`` device, so
nothing is allocated), clipped to ``[2, source_batch]`` — never below nnU-Net's minimum of 2 and
never above what nnU-Net chose (which already respects its 5 %-of-the-dataset cap).
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch

from nnunet_xfer.architectures.registry import ARCHITECTURES
from nnunet_xfer.atomic import atomic_write_json, check_replaceable
from nnunet_xfer.errors import UserError
from nnunet_xfer.layout import DatasetLayout


def activation_elements(class_name: str, arch_kwargs: dict, kw_requires_import: list[str],
                        input_channels: int, num_classes: int, patch_size: list[int]) -> int:
    """Elements of all layer outputs for one patch, counted without allocating (meta device)."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    with torch.device("meta"):
        net = get_network_from_plans(class_name, arch_kwargs, kw_requires_import, input_channels,
                                     num_classes, allow_init=False, deep_supervision=False)
    net.eval()  # same outputs per layer; train-mode BN would refuse DeepLab's 1×1 pooled branch
    total = 0

    def count(_module, _inputs, output) -> None:
        nonlocal total
        outs = output if isinstance(output, (list, tuple)) else [output]
        total += sum(o.numel() for o in outs if isinstance(o, torch.Tensor))

    hooks = [m.register_forward_hook(count) for m in net.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            net(torch.empty((1, input_channels, *patch_size), device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return total


def adjusted_batch_size(source_batch: int, source_activations: int, new_activations: int) -> int:
    """The module docstring's rule: keep nnU-Net's activation budget, within [2, source_batch]."""
    scaled = math.floor(source_batch * source_activations / max(new_activations, 1))
    return max(2, min(source_batch, scaled)) if source_batch >= 2 else source_batch


def _resolved(configurations: dict, name: str) -> dict:
    """A configuration with its ``inherits_from`` chain applied (as nnU-Net's PlansManager does)."""
    cfg = configurations[name]
    if "inherits_from" not in cfg:
        return dict(cfg)
    base = _resolved(configurations, cfg["inherits_from"])
    base.update({k: v for k, v in cfg.items() if k != "inherits_from"})
    return base


def _variant_configurations(source: dict, target, input_channels: int,
                            num_classes: int) -> dict:
    """The 2D configurations of ``source`` with ``target``'s network and the batch-size rule."""
    configurations = {}
    for name in source:
        cfg = _resolved(source, name)
        if len(cfg["patch_size"]) != 2 or "architecture" not in cfg:
            continue  # 3D configuration: the torchvision networks are 2D
        a = cfg["architecture"]
        old = activation_elements(a["network_class_name"], a["arch_kwargs"],
                                  a.get("_kw_requires_import", []), input_channels, num_classes,
                                  cfg["patch_size"])
        new = activation_elements(target.class_name, target.kwargs, [], input_channels,
                                  num_classes, cfg["patch_size"])
        cfg["architecture"] = {"network_class_name": target.class_name,
                               "arch_kwargs": copy.deepcopy(target.kwargs),
                               "_kw_requires_import": []}
        cfg["batch_size"] = adjusted_batch_size(cfg["batch_size"], old, new)
        configurations[name] = cfg  # data_identifier unchanged: preprocessed data reused
    return configurations


def write_plans_variant(dataset: str, arch: str, source_plans: str = "nnUNetPlans",
                        overwrite: bool = False) -> Path:
    """Write ``$nnUNet_preprocessed/<Dataset>/<source_plans>_<arch>.json``; return its path."""
    if arch not in ARCHITECTURES:
        raise UserError(f"unknown architecture {arch!r}; known: {', '.join(ARCHITECTURES)}")
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    layout = DatasetLayout.of(dataset)
    src = layout.plans_json(source_plans)
    if not src.is_file():
        raise UserError(f"{src} not found; run `nnUNetv2_plan_and_preprocess -d {dataset} -c 2d` "
                        f"first")
    plans_name = f"{source_plans}_{arch}"
    out = layout.plans_json(plans_name)
    claim = check_replaceable(out, "plan", overwrite, folder=False, written=is_plans_variant,
                              inputs=(src, layout.preprocessed_dataset_json()))
    plans = _read_json(src, "plans file", f"nnUNetv2_plan_and_preprocess -d {dataset} -c 2d")
    dataset_json = _read_json(layout.preprocessed_dataset_json(), "dataset.json",
                              f"nnUNetv2_plan_and_preprocess -d {dataset} -c 2d")
    target = ARCHITECTURES[arch]
    try:
        input_channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {})))
        num_classes = PlansManager(plans).get_label_manager(dataset_json).num_segmentation_heads
        configurations = _variant_configurations(plans["configurations"], target,
                                                 input_channels, num_classes)
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
        raise UserError(f"{src} is not a plans file nnU-Net can read ({type(e).__name__}: "
                        f"{' '.join(str(e).split())[:120]}); re-create it with "
                        f"`nnUNetv2_plan_and_preprocess -d {dataset} -c 2d`") from None
    variant = copy.deepcopy(plans)
    variant["plans_name"] = plans_name
    if not configurations:
        raise UserError(f"{src} has no 2D configuration; run `nnUNetv2_plan_and_preprocess "
                        f"-d {dataset} -c 2d` (the torchvision networks are 2D)")
    variant["configurations"] = configurations
    variant["nnunet_xfer"] = {"architecture": arch, "source_plans": source_plans,
                              "batch_size_rule": "floor(source_batch * A_source / A_new), "
                                                 "clipped to [2, source_batch]"}
    return atomic_write_json(claim, variant, indent=4)


def is_plans_variant(path: Path) -> bool:
    """Whether ``path`` is a plans variant ``plan`` wrote (its ``nnunet_xfer`` block says so)."""
    try:
        plans = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(plans, dict) and isinstance(plans.get("nnunet_xfer"), dict) \
        and "architecture" in plans["nnunet_xfer"]


def _read_json(path: Path, what: str, remedy: str) -> dict:
    """A JSON object, or one line naming the file and how to make it again."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} not found; run `{remedy}` first") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not a readable {what} ({str(e).splitlines()[0][:120]}); "
                        f"re-create it with `{remedy}`") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path} is not a {what} (a JSON object expected); re-create it with "
                        f"`{remedy}`")
    return obj
