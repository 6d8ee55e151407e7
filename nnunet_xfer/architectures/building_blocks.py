"""Pieces shared by the torchvision-backbone networks: input-channel swap, padding, DS switch."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def replace_first_conv(conv: nn.Conv2d, input_channels: int) -> nn.Conv2d:
    """A freshly initialised copy of ``conv`` that takes ``input_channels`` instead of RGB."""
    if conv.in_channels == input_channels:
        return conv
    new = nn.Conv2d(input_channels, conv.out_channels, conv.kernel_size, conv.stride,
                    conv.padding, conv.dilation, conv.groups, conv.bias is not None)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")  # as torchvision
    return new


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero-pad the last two axes up to a multiple (zero = the z-scored foreground mean)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph))
    return x, (h, w)


class DeepSupervisionSwitch:
    """What nnU-Net's trainer touches as ``network.decoder.deep_supervision`` around validation.

    ``nnUNetTrainer.set_deep_supervision_enabled`` sets ``network.decoder.deep_supervision`` to
    False before validation and back to True after it, whatever the trainer's setting. Networks
    here always return one full-resolution output (they declare ``supports_deep_supervision =
    False``), so the flag is only recorded; it never produces extra outputs.
    """

    def __init__(self) -> None:
        self.deep_supervision = False


def check_no_deep_supervision(cls_name: str, deep_supervision: bool) -> None:
    """Refuse to be built for deep supervision instead of returning fake multi-scale outputs."""
    if deep_supervision:
        raise ValueError(
            f"{cls_name} has no deep-supervision outputs; build it with deep_supervision=False "
            f"(the nnunet_xfer trainers do this via architectures.parts.supports_deep_supervision)")


class EncoderDecoderNetwork(nn.Module):
    """Base of the U-shaped networks here: ``encoder.`` / ``decoder.`` / ``segmentation_head.``
    parts, one output at input resolution, no deep supervision, no published segmentation
    weights (``model_name`` None)."""

    supports_deep_supervision = False
    xfer_parts = {
        "encoder": ("encoder.",),
        "decoder": ("decoder.",),
        "head": ("segmentation_head.",),
    }
    backbone_prefix = "encoder."
    #: the backbone's input convolution (after ``backbone_prefix``): RGB kernels adapted to C
    first_conv = "conv1.weight"
    model_name = None
