"""Copy a source task's weights into a segmentation network, part by part.

Plain torch: no nnU-Net needed, so it serves nnU-Net's U-Nets and the torchvision networks alike
(both declare their encoder/decoder/head key prefixes, see ``nnunet_xfer.architectures.parts``).
Everything is checked before anything is copied, so a refused checkpoint leaves the network as it was.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from nnunet_xfer.architectures.parts import adapt_input_channels, part_of
from nnunet_xfer.errors import UserError
from nnunet_xfer.sources import spec

#: Parts a checkpoint may contribute; the head is the target task's own and never transferred.
TRANSFERABLE_PARTS = ("encoder", "decoder")


class TransferError(UserError):
    """The checkpoint does not fit the network; the message names the offending keys."""


@dataclass
class TransferReport:
    """What :func:`transfer_weights` did, key by key (state-dict keys of the target network)."""

    transfer_parts: list[str]
    transferred: list[str] = field(default_factory=list)
    #: subset of ``transferred`` whose input-channel dimension was adapted, as ``key: C→c``
    adapted: list[str] = field(default_factory=list)
    #: target keys left at their fresh initialisation (head, parts not transferred)
    not_transferred: list[str] = field(default_factory=list)
    #: checkpoint keys that were not used (head, parts not transferred)
    unused_source: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """Counts and key lists, JSON-ready (for logs and debug.json)."""
        return {"transfer_parts": self.transfer_parts,
                "n_transferred": len(self.transferred), "n_not_transferred": len(self.not_transferred),
                "n_unused_source": len(self.unused_source), "adapted_input_channels": self.adapted,
                "not_transferred": self.not_transferred, "unused_source": self.unused_source}


def parts_from_prefixes(trained_prefixes: Iterable[str] | None, parts: Mapping[str, tuple[str, ...]],
                        source: str) -> list[str]:
    """The parts to transfer: those whose canonical (first) prefix lies under a prefix the source trained.

    Only the first prefix counts because later ones may be aliases (nnU-Net's ``decoder.encoder.``
    is the encoder seen from the decoder, not decoder weights).

    Without ``trained_prefixes`` (a checkpoint from elsewhere): the source's ``default_parts`` in
    the registry (the decoder only for ``seg``, the one task whose decoder segments).
    """
    if trained_prefixes is None:
        return [p for p in spec(source).default_parts if p in TRANSFERABLE_PARTS]
    trained = tuple(trained_prefixes)
    return [p for p in TRANSFERABLE_PARTS
            if parts.get(p) and parts[p][0].startswith(trained)]


def input_conv_keys(network: torch.nn.Module) -> list[str]:
    """State-dict keys holding the network's first convolution weight (aliases included)."""
    first = next((m for m in network.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)), None)
    if first is None:
        return []
    ptr = first.weight.data_ptr()
    return [k for k, v in network.state_dict().items() if v.data_ptr() == ptr and v.shape == first.weight.shape]


def _describe(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" … and {len(keys) - limit} more" if len(keys) > limit else "")


def transfer_weights(network: torch.nn.Module, source_state: Mapping[str, torch.Tensor],
                     parts: Mapping[str, tuple[str, ...]], transfer_parts: Iterable[str]) -> TransferReport:
    """Copy ``source_state`` into ``network`` for the keys of ``transfer_parts``, in place.

    Refuses (``TransferError``, nothing copied) when the checkpoint is not congruent with the
    network outside the head: a transferred key missing from the checkpoint, a checkpoint key the
    network does not have, a shape difference other than the first convolution's input channels,
    or nothing at all to transfer.
    """
    transfer_parts = [p for p in transfer_parts if p in TRANSFERABLE_PARTS]
    target = network.state_dict()
    # the same tensor may sit under several keys (nnU-Net's decoder.encoder.* aliases encoder.*)
    storage = {k: (v.data_ptr(), tuple(v.shape)) for k, v in target.items()}
    in_source = {storage[k] for k in target if k in source_state}
    first_conv = set(input_conv_keys(network))
    problems: list[str] = []
    plan: dict[str, torch.Tensor] = {}
    aliases: list[str] = []
    report = TransferReport(transfer_parts=list(transfer_parts))

    for key in source_state:
        if key not in target and part_of(key, parts) != "head":
            problems.append(f"{key} (not in the network)")
    for key, tensor in target.items():
        part = part_of(key, parts)
        if part not in transfer_parts:
            report.not_transferred.append(key)
            continue
        if key not in source_state:
            if storage[key] in in_source:
                aliases.append(key)  # filled through the key that shares its storage
            else:
                problems.append(f"{key} (missing from the checkpoint)")
            continue
        src = source_state[key]
        if src.shape == tensor.shape:
            plan[key] = src
        elif (key in first_conv and src.ndim == tensor.ndim >= 3 and src.shape[0] == tensor.shape[0]
              and src.shape[2:] == tensor.shape[2:]):
            plan[key] = adapt_input_channels(src.float(), tensor.shape[1])
            report.adapted.append(f"{key}: {src.shape[1]}→{tensor.shape[1]}")
        else:
            problems.append(f"{key} (checkpoint {tuple(src.shape)} vs network {tuple(tensor.shape)})")
    if problems:
        raise TransferError(f"checkpoint does not fit the network ({len(problems)} keys): "
                            f"{_describe(problems)}; pretrain it again for these plans")
    if not plan:
        raise TransferError(f"nothing to transfer: no tensor of the parts {transfer_parts} of this "
                            f"network is in the checkpoint")

    with torch.no_grad():
        for key, src in plan.items():
            target[key].copy_(src.to(dtype=target[key].dtype, device=target[key].device))
    report.transferred = list(plan) + aliases
    report.unused_source = [k for k in source_state if k not in plan]
    return report
