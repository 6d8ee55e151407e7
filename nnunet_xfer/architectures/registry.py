"""The torchvision-backbone networks a plans variant can name (import-light: no torch here)."""
from __future__ import annotations

from typing import NamedTuple


class Architecture(NamedTuple):
    """What goes into the plans: ``network_class_name`` and ``arch_kwargs``."""

    class_name: str
    kwargs: dict


_SEG = "nnunet_xfer.architectures.torchvision_segmentation.TorchvisionSegmentationNetwork"
_UNET = "nnunet_xfer.architectures.resnet_unet.ResNetUNet"

#: ``--arch`` name → network class (dotted, as in plans) and its ``arch_kwargs``.
ARCHITECTURES: dict[str, Architecture] = {
    "fcn_resnet50": Architecture(_SEG, {"model": "fcn_resnet50", "aux_loss": False}),
    "fcn_resnet101": Architecture(_SEG, {"model": "fcn_resnet101", "aux_loss": False}),
    "deeplabv3_resnet50": Architecture(_SEG, {"model": "deeplabv3_resnet50", "aux_loss": False}),
    "deeplabv3_resnet101": Architecture(_SEG, {"model": "deeplabv3_resnet101", "aux_loss": False}),
    "unet_resnet18": Architecture(_UNET, {"encoder": "resnet18"}),
    "unet_resnet34": Architecture(_UNET, {"encoder": "resnet34"}),
    "unet_resnet50": Architecture(_UNET, {"encoder": "resnet50"}),
    "unet_resnet101": Architecture(_UNET, {"encoder": "resnet101"}),
}


def is_torchvision_network(class_name: str) -> bool:
    """True if a plans' ``network_class_name`` is one of this package's torchvision networks."""
    return class_name in {a.class_name for a in ARCHITECTURES.values()}


def build(arch: str, input_channels: int = 1, num_classes: int = 2):
    """Build a registered network directly (tests, benchmarks); training builds it from plans."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    a = ARCHITECTURES[arch]
    return get_network_from_plans(a.class_name, a.kwargs, [], input_channels, num_classes,
                                  deep_supervision=False)
