"""The ``cls`` and ``seg`` sources as published: torchvision's ImageNet and COCO weights.

For plans whose network is one of :mod:`nnunet_xfer.architectures` (``nnunet-xfer plan``):
``cls`` imports the ImageNet weights of the ResNet backbone (``<ResNet>_Weights.IMAGENET1K_V1``,
the backbone weights torchvision's own segmentation models start from) and ``seg`` the
COCO-with-VOC-labels weights of the whole FCN/DeepLabV3 (backbone and head, minus the last class
layer). The weights file is taken from, in order: ``--weights FILE``; the torch hub cache
``$TORCH_HOME/hub/checkpoints/<torchvision's file name>``; a download when the machine is online.

Hash check: torchvision's file names carry the first hex digits of the file's sha256
(``resnet50-0676ba61.pth``). A file under that canonical name is refused when its sha256 does not
start with them (``verify_hash=False`` skips this, for tests with random weights). A ``--weights``
file under any other name cannot be checked this way; its keys and shapes still are.

The first convolution is adapted from RGB to the network's C input channels by summing the RGB
kernels (divided by C and repeated when C > 1; kept as is when C = 3). For a grey image z-scored
like an ImageNet channel, summing is exact: the RGB network sees the same value ``g`` in all three
channels, and ``Σ_c w_c * g = (Σ_c w_c) * g``.
"""
from __future__ import annotations

import sys

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch

from nnunet_xfer.architectures.parts import (
    adapt_input_channels,
    is_torchvision_network,
    network_parts,
    part_of,
)
from nnunet_xfer import settings
from nnunet_xfer.errors import UserError
from nnunet_xfer.layout import resolve_dataset_name
from nnunet_xfer.pretraining.network import Planned, build_network, load_planned
from nnunet_xfer.pretraining.store import (SCOPE_EXTERNAL, claim_entry, entry_lock,
                                           entry_path, file_sha256, provenance, restricted_load,
                                           save_entry)
from nnunet_xfer.sources import DATA_KIND_NATURAL, DATA_NATURAL_CLASSES, SourceSpec, spec

OFFLINE_ENV = "nnUNet_xfer_offline"


def _published_spec(source: str) -> SourceSpec:
    s = spec(source)
    if s.weights_tag is None:
        raise UserError(f"torchvision publishes no weights for source {source!r}")
    return s


def _whole_network(s: SourceSpec) -> bool:
    """True for segmentation weights (the whole network); False for a classification backbone."""
    return s.data != DATA_NATURAL_CLASSES


def published_weights(network: torch.nn.Module, source: str):
    """The torchvision ``Weights`` enum member that ``source`` imports into ``network``."""
    from torchvision.models import get_model_weights
    s = _published_spec(source)
    model = getattr(network, "model_name", None) if _whole_network(s) else network.backbone_name
    if model is None:
        raise UserError(f"torchvision publishes no segmentation weights for {type(network).__name__}"
                        f" ({network.backbone_name} U-Net); use an fcn_*/deeplabv3_* plans variant"
                        f" for -s seg, or pretrain seg with --data")
    return get_model_weights(model)[s.weights_tag]


def canonical_file_name(weights) -> str:
    """torchvision's file name of a ``Weights`` member, e.g. ``resnet50-0676ba61.pth``."""
    return os.path.basename(urlparse(weights.url).path)


def hub_cache_path(weights) -> Path:
    """``$TORCH_HOME/hub/checkpoints/<canonical file name>`` (torch.hub's own cache)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / canonical_file_name(weights)


def verify_hash_prefix(path: Path, file_name: str) -> None:
    """Refuse ``path`` when its sha256 does not start with the hash prefix in ``file_name``."""
    match = torch.hub.HASH_REGEX.search(file_name)
    if not match or not match.group(1):
        return
    prefix, digest = match.group(1), file_sha256(path)
    if not digest.startswith(prefix):
        raise UserError(f"{path}: sha256 {digest[:len(prefix)]}… does not match the prefix "
                        f"{prefix} in torchvision's file name; the file is corrupt or not "
                        f"torchvision's: delete it and download it again")


def _online(url: str, timeout: float = 5.0) -> bool:
    if settings.flag(OFFLINE_ENV):
        return False
    if settings.other("https_proxy") or settings.other("HTTPS_PROXY"):
        return True  # a direct probe says nothing behind a proxy; let urllib try
    try:
        socket.create_connection((urlparse(url).hostname, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def resolve_weights_file(weights, file: Path | None = None, allow_download: bool = True) -> Path:
    """``--weights FILE``, else the hub cache, else a download (hash-checked by torch.hub)."""
    if file is not None:
        if not Path(file).is_file():
            raise UserError(f"weights file {file} not found")
        return Path(file)
    cache = hub_cache_path(weights)
    if cache.is_file():
        return cache
    where = (f"download {weights.url} and put it at {cache} (that exact name), "
             f"or pass --weights FILE")
    if not (allow_download and _online(weights.url)):
        raise UserError(f"no {cache.name} for {weights} and no network: {where}")
    try:
        torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", progress=sys.stderr.isatty(),
                                           check_hash=True, weights_only=True)
    except Exception as e:  # network error, or torch.hub's own hash check failed
        raise UserError(f"downloading {weights.url} failed ({type(e).__name__}: {e}); "
                        f"{where}") from None
    return cache


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A weights file as a plain state dict, loaded safely; one-line error when unreadable."""
    try:
        obj = restricted_load(path)
    except Exception as e:  # truncated, corrupt, or not a tensor-only pickle
        raise UserError(f"cannot read weights file {path} ({type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else 'no detail'}); it is truncated or "
                        f"corrupt: delete it and download it again") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or \
            not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"weights file {path} is not a state dict (name → tensor)")
    return obj


def _examples(keys, n: int = 4) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" … (+{len(keys) - n})" if len(keys) > n else "")


def map_weights(state: dict[str, torch.Tensor], network: torch.nn.Module, source: str,
                origin: str = "weights file") -> dict[str, torch.Tensor]:
    """Published weights under the network's own keys, first conv adapted; names any misfit.

    ``cls`` (classification weights): a ResNet state dict onto the backbone (its ``fc`` is
    dropped). ``seg`` (segmentation weights): a torchvision segmentation state dict onto the whole
    network minus the head's last class layer (and minus the auxiliary branch when the network
    has none).
    """
    target = network.state_dict()
    parts = network_parts(network)
    prefix = network.backbone_prefix
    whole = _whole_network(_published_spec(source))
    if not whole:
        wanted = {k[len(prefix):]: k for k in target if k.startswith(prefix)}
        ignorable = {k for k in state if k.startswith("fc.")}
        hint = "; it looks like a segmentation file: use -s seg" \
            if any(k.startswith("backbone.") for k in state) else ""
    else:
        wanted = {k: k for k in target if part_of(k, parts) != "head"}
        ignorable = {k for k in state if part_of(k, parts) == "head"
                     or (k.startswith("aux_classifier.") and k not in target)}
        hint = "; it looks like an ImageNet classification file: use -s cls" \
            if "fc.weight" in state else ""
    missing = set(wanted) - set(state)
    unexpected = set(state) - set(wanted) - ignorable
    conv1 = prefix + "conv1.weight"
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(target[wanted[k]].shape)}"
                  for k in set(wanted) & set(state)
                  if wanted[k] != conv1 and state[k].shape != target[wanted[k]].shape]
    if missing or unexpected or mismatched:
        what = []
        if missing:
            what.append(f"missing {len(missing)} keys ({_examples(missing)})")
        if unexpected:
            what.append(f"unexpected {len(unexpected)} keys ({_examples(unexpected)})")
        if mismatched:
            what.append(f"{len(mismatched)} shape mismatches ({_examples(mismatched, 2)})")
        raise UserError(f"{origin} does not fit the {network.backbone_name} network of these plans:"
                        f" {'; '.join(what)}{hint}")
    mapped = {wanted[k]: state[k].clone() for k in wanted}
    file_conv1 = state[conv1 if whole else "conv1.weight"]
    mapped[conv1] = adapt_input_channels(file_conv1, target[conv1].shape[1])
    if mapped[conv1].shape != target[conv1].shape:
        raise UserError(f"{origin}: first convolution {tuple(file_conv1.shape)} cannot be adapted "
                        f"to {tuple(target[conv1].shape)}")
    return mapped


def build_planned_network(dataset_name: str, plans: str, configuration: str,
                          planned: Planned | None = None) -> torch.nn.Module:
    """The torchvision network of these plans, built exactly as the trainer builds it."""
    planned = planned or load_planned(dataset_name, plans, configuration)
    if not is_torchvision_network(planned.class_name):
        raise UserError(f"plans {plans} of {dataset_name} use {planned.class_name.rsplit('.', 1)[-1]}, "
                        f"which cannot take torchvision weights; write torchvision plans with "
                        f"`nnunet-xfer plan -d {dataset_name} --arch fcn_resnet50` and pass -p "
                        f"nnUNetPlans_fcn_resnet50, or pretrain with --data")
    return build_network(planned)


def import_torchvision_weights(dataset_name: str, source: str, plans: str, configuration: str,
                               weights: Path | None, overwrite: bool, verify_hash: bool = True,
                               allow_download: bool = True) -> Path:
    """Import torchvision's published ``cls``/``seg`` weights into the pretrained store."""
    dataset_name = resolve_dataset_name(dataset_name)
    s = _published_spec(source)
    pth = entry_path(dataset_name, source, plans, configuration)
    claim = claim_entry(pth, overwrite, inputs=(weights,))
    planned = load_planned(dataset_name, plans, configuration)
    network = build_planned_network(dataset_name, plans, configuration, planned)
    enum = published_weights(network, source)
    path = resolve_weights_file(enum, weights, allow_download)
    checked = verify_hash and path.name == canonical_file_name(enum)
    if checked:
        verify_hash_prefix(path, path.name)
    mapped = map_weights(load_state_dict(path), network, source, origin=str(path))
    state = network.state_dict()
    state.update(mapped)
    network.load_state_dict(state)  # proves the mapped state fits the planned network
    # Same convention as the other sources: the prefixes of the parts the weights cover (the
    # head is never among them: part_of() gives the head precedence over the decoder).
    parts = network_parts(network)
    trained = [p for part in s.default_parts for p in parts[part]]
    metadata = {
        "source": source,
        "data": f"{path} ({enum})",
        "data_kind": DATA_KIND_NATURAL,
        "weights_file": str(path),
        "weights_enum": str(enum),
        "weights_url": enum.url,
        "weights_sha256": file_sha256(path),
        "hash_prefix_verified": checked,
        "iterations": 0,
        "final_loss": None,
        "task_metric": enum.meta.get("_metrics"),
        "network_class_name": f"{type(network).__module__}.{type(network).__name__}",
        "trained_prefixes": trained,
        "n_imported_tensors": len(mapped),
        "input_channel_adaptation": "sum over RGB (divided by C and repeated for C>1 channels)",
        **provenance(dataset_name, planned.plans_manager.plans, configuration,
                     scope=SCOPE_EXTERNAL, fold=None, case_ids=[]),
    }
    with entry_lock(pth):
        out = save_entry(pth, network.state_dict(), None, metadata, overwrite=overwrite,
                         claim=claim)
    print(f"imported {len(mapped)} tensors of {enum} from {path} into {out}")
    return out
