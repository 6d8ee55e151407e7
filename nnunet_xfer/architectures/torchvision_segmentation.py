"""torchvision's FCN and DeepLabV3 (ResNet backbones) as networks nnU-Net builds from plans.

The state-dict keys are torchvision's own (``backbone.*``, ``classifier.*``, ``aux_classifier.*``)
so published weights map onto them key for key; only the first convolution (RGB → the plans'
input channels) and the last class convolution (``classifier.4``) differ.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from nnunet_xfer.architectures.building_blocks import (DeepSupervisionSwitch,
                                                       check_no_deep_supervision,
                                                       replace_first_conv)

#: torchvision builder name → its ResNet backbone.
MODELS: dict[str, str] = {
    "fcn_resnet50": "resnet50",
    "fcn_resnet101": "resnet101",
    "deeplabv3_resnet50": "resnet50",
    "deeplabv3_resnet101": "resnet101",
}


class TorchvisionSegmentationNetwork(nn.Module):
    """``torchvision.models.segmentation.<model>`` with ``input_channels`` in, ``num_classes`` out.

    Output stride 8 (dilated ResNet) upsampled bilinearly to the input size, so any input size
    works without padding. ``aux_loss=True`` keeps torchvision's auxiliary FCN head on ``layer3``
    (its weights then transfer too) but its output is not used: nnU-Net's loss takes one output.
    """

    supports_deep_supervision = False
    xfer_parts = {
        "encoder": ("backbone.",),
        "decoder": ("classifier.", "aux_classifier."),
        "head": ("classifier.4.", "aux_classifier.4."),
    }
    backbone_prefix = "backbone."
    #: the backbone's input convolution (after ``backbone_prefix``): RGB kernels adapted to C
    first_conv = "conv1.weight"

    def __init__(self, input_channels: int, num_classes: int, model: str = "fcn_resnet50",
                 aux_loss: bool = False, deep_supervision: bool = False) -> None:
        super().__init__()
        if model not in MODELS:
            raise ValueError(f"unknown torchvision segmentation model {model!r}; "
                             f"choose one of {', '.join(MODELS)}")
        check_no_deep_supervision(type(self).__name__, deep_supervision)
        net = torchvision.models.get_model(model, weights=None, weights_backbone=None,
                                           num_classes=num_classes, aux_loss=aux_loss)
        net.backbone.conv1 = replace_first_conv(net.backbone.conv1, input_channels)
        self.backbone = net.backbone
        self.classifier = net.classifier
        self.aux_classifier = net.aux_classifier  # None unless aux_loss
        self.model_name = model
        self.backbone_name = MODELS[model]
        self.decoder = DeepSupervisionSwitch()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.classifier(self.backbone(x)["out"])
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Backbone features after the stem and after each ResNet stage (deepest last)."""
        feats = []
        for name, module in self.backbone.items():
            x = module(x)
            if name == "relu" or name.startswith("layer"):
                feats.append(x)
        return feats
