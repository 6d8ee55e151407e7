"""A 2D UNETR: a ViT-B encoder (timm) and a convolutional decoder fed from four of its blocks.

UNETR (Hatamizadeh et al., WACV 2022) in 2D. The encoder is timm's ViT-B under ``encoder.``, in
timm's own keys, so DINOv2 / DINOv3-style checkpoints map onto it key for key
(``pretraining/external_weights.py``):

* ``vit_base_patch16_dinov3`` (``unetr_vit_b16``): the DINOv3 ViT-B/16 of MedDINOv3 — rotary
  position embeddings, 4 register tokens, layer scale, no QKV bias;
* ``vit_base_patch14_dinov2`` (``unetr_vit_b14``): the DINOv2 ViT-B/14 — learned position
  embeddings for the plans' patch grid (``img_size``), layer scale.

The hidden states after blocks 3, 6, 9 and 12 (``skip_blocks`` 2, 5, 8, 11), each through the
encoder's final LayerNorm (as DINOv2's and DINOv3's ``get_intermediate_layers`` give them) and
reshaped to the patch grid (stride p), feed the decoder: the last is upsampled ×2 four times (transposed convolutions),
each time concatenated with an earlier block brought to that resolution by as many ×2 transposed
convolutions (blocks 9, 6, 3) and, at full resolution, with two convolutions of the image itself;
two 3×3 conv–InstanceNorm–LeakyReLU follow each concatenation, a 1×1 convolution gives the
logits. The input is zero-padded to a multiple of p (zero is the z-scored foreground mean) and the
output cropped back; for p = 14 the ×16 decoder output is resized to the padded input before the
last concatenation.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_xfer.architectures.building_blocks import (EncoderDecoderNetwork, check_no_deep_supervision,
                                                       pad_to_multiple)

#: timm encoder name → its patch size.
ENCODERS: dict[str, int] = {"vit_base_patch16_dinov3": 16, "vit_base_patch14_dinov2": 14}
#: ``encoder_kwargs`` a plan may change: the ViT's width and depth (the patch size and the
#: position grid are the network's own: ``encoder`` and ``img_size``).
ENCODER_SIZE_KWARGS = ("embed_dim", "depth", "num_heads")


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    """Two 3×3 conv–InstanceNorm–LeakyReLU (nnU-Net's own block)."""
    layers = []
    for c in (cin, cout):
        layers += [nn.Conv2d(c, cout, 3, padding=1, bias=False), nn.InstanceNorm2d(cout, affine=True),
                   nn.LeakyReLU(0.01, inplace=True)]
    return nn.Sequential(*layers)


def _upsampler(cin: int, cout: int, times: int) -> nn.Sequential:
    """``times`` ×2 transposed convolutions (cin → cout), then a conv block: a block's tokens
    brought to the resolution of a decoder stage."""
    ups = [nn.ConvTranspose2d(cin if i == 0 else cout, cout, 2, stride=2) for i in range(times)]
    return nn.Sequential(*ups, _conv_block(cout, cout))


def _import_timm():
    """timm, without the deprecation warning its HRNet module's ``torch.jit.interface`` raises at
    import (nothing a user can act on)."""
    import warnings
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.interface` is deprecated",
                                category=FutureWarning)
        import timm
    return timm


def _buffers_to_parameter_device(module: nn.Module) -> None:
    """timm computes some fixed buffers (RoPE periods) on the CPU even when the module is built
    on another device (``meta`` for the batch-size rule); move them where the parameters are."""
    device = next(module.parameters()).device
    for m in module.modules():
        for name, buf in list(m.named_buffers(recurse=False)):
            if buf is not None and buf.device != device:
                setattr(m, name, buf.to(device))


class UNETRDecoder(nn.Module):
    """Skip upsamplers, the image's own stem and the four ×2 stages (everything but the head)."""

    def __init__(self, input_channels: int, dim: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        c8, c4, c2, c1 = channels
        # blocks 9, 6, 3 → strides p/2, p/4, p/8
        self.skips = nn.ModuleList([_upsampler(dim, c8, 1), _upsampler(dim, c4, 2),
                                    _upsampler(dim, c2, 3)])
        self.stem = _conv_block(input_channels, c1)
        self.ups = nn.ModuleList([nn.ConvTranspose2d(a, b, 2, stride=2)
                                  for a, b in zip((dim, c8, c4, c2), (c8, c4, c2, c1))])
        self.blocks = nn.ModuleList([_conv_block(2 * c, c) for c in (c8, c4, c2, c1)])
        # nnU-Net's trainer toggles network.decoder.deep_supervision around validation; the
        # network has a single output whatever the flag says.
        self.deep_supervision = False

    def forward(self, x: torch.Tensor, tokens: list[torch.Tensor]) -> torch.Tensor:
        y = tokens[-1]
        skips = [skip(t) for skip, t in zip(self.skips, tokens[-2::-1])] + [self.stem(x)]
        for up, block, skip in zip(self.ups, self.blocks, skips):
            y = up(y)
            if y.shape[-2:] != skip.shape[-2:]:  # p = 14: ×16 decoder vs the padded input
                y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = block(torch.cat([y, skip], dim=1))
        return y


class ViTUNETR(EncoderDecoderNetwork):
    """UNETR with a timm ViT encoder (ViT-B unless ``encoder_kwargs`` say otherwise); any input
    size, output at input resolution."""

    first_conv = "patch_embed.proj.weight"  # the patch embedding: RGB kernels adapted to C

    def __init__(self, input_channels: int, num_classes: int,
                 encoder: str = "vit_base_patch16_dinov3",
                 img_size: tuple[int, int] | list[int] = (224, 224),
                 skip_blocks: tuple[int, ...] | list[int] = (2, 5, 8, 11),
                 decoder_channels: tuple[int, ...] | list[int] = (256, 128, 64, 32),
                 encoder_kwargs: dict | None = None,
                 deep_supervision: bool = False) -> None:
        """``encoder_kwargs``: a narrower or shallower ViT of the same family (``embed_dim``,
        ``depth``, ``num_heads``; e.g. ViT-S is 384, 12, 6), for checkpoints of that size and for
        tests; ``skip_blocks`` must then lie within ``depth``. Default: ViT-B (768, 12, 12)."""
        super().__init__()
        timm = _import_timm()
        if encoder not in ENCODERS:
            raise ValueError(f"unknown ViT encoder {encoder!r}; choose one of {', '.join(ENCODERS)}")
        encoder_kwargs = dict(encoder_kwargs or {})
        other = sorted(set(encoder_kwargs) - set(ENCODER_SIZE_KWARGS))
        if other:
            raise ValueError(f"encoder_kwargs {', '.join(other)}: only "
                             f"{', '.join(ENCODER_SIZE_KWARGS)} can be changed")
        if len(skip_blocks) != 4 or len(decoder_channels) != 4:
            raise ValueError("skip_blocks and decoder_channels need 4 entries each")
        check_no_deep_supervision(type(self).__name__, deep_supervision)
        self.patch_size = ENCODERS[encoder]
        p = self.patch_size
        # the plans' patch, padded to the patch grid: learned position embeddings fit it exactly
        grid_img = [math.ceil(int(s) / p) * p for s in img_size]
        vit = timm.create_model(encoder, pretrained=False, num_classes=0, in_chans=input_channels,
                                img_size=grid_img, dynamic_img_size=True, **encoder_kwargs)
        if not all(0 <= int(b) < len(vit.blocks) for b in skip_blocks):
            raise ValueError(f"skip_blocks {list(skip_blocks)} do not lie within the encoder's "
                             f"{len(vit.blocks)} blocks")
        _buffers_to_parameter_device(vit)
        self.encoder = vit
        self.backbone_name = encoder
        self.skip_blocks = [int(b) for b in skip_blocks]
        self.decoder = UNETRDecoder(input_channels, vit.embed_dim, tuple(decoder_channels))
        self.segmentation_head = nn.Conv2d(decoder_channels[-1], num_classes, 1)

    def _tokens(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.encoder.forward_intermediates(x, indices=self.skip_blocks, norm=True,
                                                  intermediates_only=True)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four blocks' tokens on the patch grid, (B, embed_dim, H/p, W/p) each, deepest last."""
        x, _ = pad_to_multiple(x, self.patch_size)
        return self._tokens(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, (h, w) = pad_to_multiple(x, self.patch_size)
        y = self.decoder(x, self._tokens(x))
        return self.segmentation_head(y)[..., :h, :w]
