"""The pretrained store: one ``<source>.pth`` + ``<source>.json`` per source task.

Layout (docs/layout.md): ``$nnUNet_results/<Dataset>/nnunet_xfer_pretrained/<plans>__<config>/``.
The ``.pth`` holds ``{"network": state_dict, "head": state_dict or None}``: the network's own
parameters under the very keys nnU-Net's network uses (so transfer is key for key), and the task
head separately. It is read with ``torch.load(weights_only=True)``. The ``.json`` beside it is the
record of what produced it.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Mapping
from pathlib import Path

import torch

from nnunet_xfer import __version__
from nnunet_xfer.errors import UserError
from nnunet_xfer.names import store_checkpoint

FORMAT = "nnunet_xfer.store/1"


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def architecture_fingerprint(state: Mapping[str, torch.Tensor] | torch.nn.Module) -> str:
    """Short hash of the (key, shape) list of a network: equal iff the networks are congruent."""
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(f"{key}:{tuple(state[key].shape)};".encode())
    return h.hexdigest()[:16]


def save_entry(pth: Path, network_state: Mapping[str, torch.Tensor],
               head_state: Mapping[str, torch.Tensor] | None, metadata: dict,
               overwrite: bool = False) -> Path:
    """Write ``pth`` and its ``.json`` atomically; refuse to replace an entry unless ``overwrite``.

    ``metadata`` should hold at least ``source``, ``data``, ``case_ids``, ``iterations``,
    ``final_loss``, ``task_metric``, ``plans``, ``configuration``; versions, the architecture
    fingerprint and the sha256 are added here.
    """
    pth = Path(pth)
    if pth.exists() and not overwrite:
        raise UserError(f"{pth} exists; pass --overwrite to replace it (or --resume to continue)")
    pth.parent.mkdir(parents=True, exist_ok=True)
    tmp = pth.with_name(pth.name + ".tmp")
    torch.save({"format": FORMAT,
                "network": {k: v.detach().cpu() for k, v in network_state.items()},
                "head": None if head_state is None else
                {k: v.detach().cpu() for k, v in head_state.items()}}, tmp)
    record = dict(metadata)
    record.update({
        "format": FORMAT,
        "architecture_fingerprint": architecture_fingerprint(network_state),
        "n_tensors": len(network_state),
        "package_version": __version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "sha256": file_sha256(tmp),
        "file": pth.name,
    })
    json_tmp = pth.with_suffix(".json.tmp")
    json_tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, pth)
    os.replace(json_tmp, pth.with_suffix(".json"))
    return pth


def load_entry(pth: Path) -> tuple[dict, dict | None, dict]:
    """(network state, head state or None, metadata) of a store entry, loaded safely.

    A plain state dict (a file from elsewhere) is accepted as the network part.
    """
    pth = Path(pth)
    if not pth.is_file():
        raise UserError(f"pretrained checkpoint {pth} not found")
    try:
        obj = torch.load(pth, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated/corrupt file or unsafe pickle
        raise UserError(f"cannot read pretrained checkpoint {pth} ({type(e).__name__}: {e}); "
                        f"recreate it with `nnunet-xfer pretrain`") from None
    meta_path = pth.with_suffix(".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if isinstance(obj, dict) and "network" in obj:
        return dict(obj["network"]), (dict(obj["head"]) if obj.get("head") else None), meta
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj), None, meta
    raise UserError(f"{pth} is not a state dict or an nnunet_xfer store entry")


def entry_path(dataset_name: str, source: str, plans: str = "nnUNetPlans",
               configuration: str = "2d") -> Path:
    """Where the store entry of ``source`` for these plans lives (see docs/layout.md)."""
    return store_checkpoint(dataset_name, source, plans, configuration)
