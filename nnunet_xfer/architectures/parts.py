"""Which parameters of a network are encoder, decoder and final segmentation head.

Transfer (trainers) and pretraining both need this split. nnU-Net's own U-Nets
(``dynamic_network_architectures``) follow one naming scheme; the package's torchvision networks
declare theirs in a class attribute ``xfer_parts`` with the same three keys. A network class may
also set ``supports_deep_supervision = False`` so that trainers switch deep supervision off.
"""
from __future__ import annotations

import pydoc

import torch

#: nnU-Net's U-Nets: ``encoder.*``; ``decoder.*`` (its ``decoder.encoder.*`` aliases the encoder);
#: ``decoder.seg_layers.*`` are the final 1×1 segmentation convolutions.
NNUNET_PARTS = {
    "encoder": ("encoder.", "decoder.encoder."),
    "decoder": ("decoder.",),
    "head": ("decoder.seg_layers.",),
}


def network_parts(network: torch.nn.Module | type) -> dict[str, tuple[str, ...]]:
    """Key prefixes of the ``encoder``, ``decoder`` and ``head`` of a network (or its class)."""
    cls = network if isinstance(network, type) else type(network)
    return dict(getattr(cls, "xfer_parts", NNUNET_PARTS))


def part_of(key: str, parts: dict[str, tuple[str, ...]]) -> str:
    """``head``, ``encoder`` or ``decoder`` (most specific wins) for one state-dict key."""
    for part in ("head", "encoder", "decoder"):
        if any(key.startswith(p) for p in parts[part]):
            return part
    return "other"


def network_class(class_name: str) -> type | None:
    """Import a network class from its dotted name as written in nnU-Net plans."""
    return pydoc.locate(class_name)


def supports_deep_supervision(class_name: str) -> bool:
    """False for networks that declare ``supports_deep_supervision = False``."""
    cls = network_class(class_name)
    return bool(getattr(cls, "supports_deep_supervision", True))


# Re-exported so that trainers and pretraining find every architecture question in this module.
from nnunet_xfer.architectures.registry import is_torchvision_network  # noqa: E402,F401


def adapt_input_channels(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """First-conv kernels (O, C, ...) → (O, c, ...): summed over C, shared equally by c channels.

    For c = 1 this is the sum over RGB: a grey image fed as R = G = B gives the network the same
    response as the grey image through the summed kernel. Equal channel counts are copied as is.
    """
    if weight.shape[1] == channels:
        return weight.clone()
    summed = weight.sum(dim=1, keepdim=True)
    return (summed / channels).repeat(1, channels, *([1] * (weight.ndim - 2)))
