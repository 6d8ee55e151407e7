"""The package's networks a plans variant can name (import-light: no torch here).

torchvision-backbone networks (ResNet U-Net, FCN, DeepLabV3) and the ViT UNETR (timm encoder).
"""
from __future__ import annotations

from typing import NamedTuple


class Architecture(NamedTuple):
    """What goes into the plans: ``network_class_name`` and ``arch_kwargs``."""

    class_name: str
    kwargs: dict
    #: the ``arch_kwargs`` key that receives the configuration's patch size (None: none does)
    patch_kwarg: str | None = None

    def plans_kwargs(self, patch_size) -> dict:
        """``arch_kwargs`` for a configuration with this patch size."""
        extra = {self.patch_kwarg: [int(p) for p in patch_size]} if self.patch_kwarg else {}
        return {**self.kwargs, **extra}


_SEG = "nnunet_xfer.architectures.torchvision_segmentation.TorchvisionSegmentationNetwork"
_UNET = "nnunet_xfer.architectures.resnet_unet.ResNetUNet"
_UNETR = "nnunet_xfer.architectures.vit_unetr.ViTUNETR"

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
    "unetr_vit_b16": Architecture(_UNETR, {"encoder": "vit_base_patch16_dinov3"}, "img_size"),
    "unetr_vit_b14": Architecture(_UNETR, {"encoder": "vit_base_patch14_dinov2"}, "img_size"),
}


def is_torchvision_network(class_name: str) -> bool:
    """True if a plans' ``network_class_name`` is one of this package's networks (torchvision
    backbones or the ViT UNETR): the networks published weights are imported into."""
    return class_name in {a.class_name for a in ARCHITECTURES.values()}


def architecture_of(class_name: str, arch_kwargs: dict) -> str | None:
    """The ``--arch`` name of a plans' network (class and kwargs), None when it is not ours."""
    for name, a in ARCHITECTURES.items():
        if a.class_name == class_name and all(arch_kwargs.get(k) == v for k, v in a.kwargs.items()):
            return name
    return None


def build(arch: str, input_channels: int = 1, num_classes: int = 2,
          patch_size: tuple[int, int] = (64, 64)):
    """Build a registered network directly (tests, benchmarks); training builds it from plans."""
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    a = ARCHITECTURES[arch]
    return get_network_from_plans(a.class_name, a.plans_kwargs(patch_size), [], input_channels,
                                  num_classes, deep_supervision=False)
