"""A U-Net decoder over a torchvision ResNet encoder (resnet18/34/50/101).

Encoder keys are torchvision's ResNet keys under ``encoder.`` (``encoder.conv1.weight``,
``encoder.layer4.2.bn3.running_var``, ...), so ImageNet weights map onto it key for key.
The decoder follows the common ResNet-U-Net layout: five ×2 nearest-neighbour upsamplings, each
followed by concatenation with the encoder feature of that stride (none at full resolution) and
two 3×3 conv–BN–ReLU layers; a 1×1 convolution gives the class logits.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from nnunet_xfer.architectures.building_blocks import (EncoderDecoderNetwork,
                                                       check_no_deep_supervision, pad_to_multiple,
                                                       replace_first_conv)

ENCODERS = ("resnet18", "resnet34", "resnet50", "resnet101")
#: Output stride of a ResNet: inputs are padded to a multiple of it and the output cropped back.
STRIDE = 32


def _conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class DecoderBlock(nn.Module):
    """×2 upsampling, concatenation with a skip feature (if any), two conv–BN–ReLU."""

    def __init__(self, cin: int, cskip: int, cout: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn_relu(cin + cskip, cout)
        self.conv2 = _conv_bn_relu(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv2(self.conv1(x))


class ResNetUNet(EncoderDecoderNetwork):
    """U-Net with a torchvision ResNet encoder; any input size, output at input resolution."""

    def __init__(self, input_channels: int, num_classes: int, encoder: str = "resnet34",
                 decoder_channels: tuple[int, ...] | list[int] = (256, 128, 64, 32, 16),
                 deep_supervision: bool = False) -> None:
        super().__init__()
        if encoder not in ENCODERS:
            raise ValueError(f"unknown encoder {encoder!r}; choose one of {', '.join(ENCODERS)}")
        if len(decoder_channels) != 5:
            raise ValueError("decoder_channels needs 5 entries (strides 16, 8, 4, 2, 1)")
        check_no_deep_supervision(type(self).__name__, deep_supervision)
        net = torchvision.models.get_model(encoder, weights=None)
        del net.fc, net.avgpool  # classification parts; never used
        net.conv1 = replace_first_conv(net.conv1, input_channels)
        self.encoder = net
        self.backbone_name = encoder
        skips = self._encoder_channels()[:-1][::-1] + [0]  # strides 16, 8, 4, 2, then none
        cin = self._encoder_channels()[-1]
        blocks = []
        for cskip, cout in zip(skips, decoder_channels):
            blocks.append(DecoderBlock(cin, cskip, cout))
            cin = cout
        self.decoder = nn.ModuleList(blocks)
        # nnU-Net's trainer toggles network.decoder.deep_supervision around validation; the
        # network has a single output whatever the flag says.
        self.decoder.deep_supervision = False
        self.segmentation_head = nn.Conv2d(cin, num_classes, 1)

    def _encoder_channels(self) -> list[int]:
        e = self.encoder
        last = [getattr(layer[-1], "conv3", layer[-1].conv2).out_channels
                for layer in (e.layer1, e.layer2, e.layer3, e.layer4)]
        return [e.conv1.out_channels] + last

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Features at strides 2, 4, 8, 16, 32 (deepest last)."""
        e = self.encoder
        f0 = e.relu(e.bn1(e.conv1(x)))
        f1 = e.layer1(e.maxpool(f0))
        f2 = e.layer2(f1)
        f3 = e.layer3(f2)
        return [f0, f1, f2, f3, e.layer4(f3)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(x, STRIDE)
        feats = self.encode(x)
        y = feats[-1]
        for block, skip in zip(self.decoder, feats[:-1][::-1] + [None]):
            y = block(y, skip)
        return self.segmentation_head(y)[..., :h, :w]
