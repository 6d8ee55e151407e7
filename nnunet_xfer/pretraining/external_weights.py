"""Published checkpoints from outside torchvision, imported as store entries: RadImageNet's
ResNet-50 (``radimagenet``), DINOv2's ViT-B/14 (``dinov2``) and MedDINOv3's ViT-B/16 (``meddino``).

``nnunet-xfer pretrain -s SOURCE --weights FILE -p <plans of a fitting network>``: nothing is
downloaded, the file is the user's (where each comes from: docs/pretraining.md). It is opened with
``torch.load(weights_only=True)`` (tensors and plain types only), its keys are brought to the
backbone's own names, and the backbone of the planned network takes them (the first convolution's
RGB kernels summed for grey CT, as for torchvision's weights); decoder and head stay as nnU-Net
initialises them. Any key that does not fit is refused in one line naming it.

Layouts read (``SourceSpec.layout``):

* ``resnet50``: torchvision's ResNet-50 names (``conv1.weight``, ``layer1.0.conv1.weight``, …,
  with or without the ``fc`` head) and RadImageNet's PyTorch release, whose ``Backbone`` holds the
  first nine children of torchvision's ``resnet50()`` as ``backbone = nn.Sequential(...)``
  (``backbone.0.weight`` = ``conv1``, ``backbone.1.*`` = ``bn1``, ``backbone.4``–``7`` =
  ``layer1``–``4``), its classifier as ``linear``; either behind ``module.`` (DataParallel).
  RadImageNet's Keras ``.h5`` files hold Keras' ResNet50 (stride in the first 1×1 convolution of a
  block, a bias in every convolution): not torchvision's network, so refused.
* ``vit``: timm's keys of the plans' ViT (``cls_token``, ``patch_embed.proj.weight``,
  ``blocks.N.attn.qkv.weight``, …), the keys DINOv2's own checkpoints already have
  (``ls1.gamma`` layer scale, ``pos_embed``; ``mask_token`` dropped), and DINOv3's
  (MedDINOv3: ``{"teacher": {"backbone.…"}}``; ``storage_tokens`` → ``reg_token``, ``ls1.gamma``
  → ``gamma_1``; RoPE periods, ``bias_mask``, ``mask_token`` and the DINO/iBOT heads dropped;
  an all-zero QKV bias dropped where the network has none). Learned position embeddings are
  resampled (bicubic) to the plans' patch grid; a patch size other than the network's is refused.
"""
from __future__ import annotations

from pathlib import Path

import torch

from nnunet_xfer.architectures.registry import architecture_of
from nnunet_xfer.architectures.vit_unetr import ENCODERS
from nnunet_xfer.errors import UserError
from nnunet_xfer.pretraining.network import Planned
from nnunet_xfer.pretraining.store import file_sha256
from nnunet_xfer.pretraining.torchvision_weights import (build_planned_network,
                                                         claim_imported_entry, load_state_dict,
                                                         map_weights, save_imported_entry)
from nnunet_xfer.sources import LAYOUT_RESNET50, LAYOUT_VIT, SourceSpec

#: RadImageNet's ``nn.Sequential(*list(resnet50().children())[:9])``: child index → torchvision name
#: (2 relu, 3 maxpool and 8 avgpool hold no tensors).
RESNET_CHILDREN = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3",
                   "7": "layer4"}
#: Wrapper prefixes stripped from every key: DataParallel's, then the RadImageNet/DINO backbone's.
WRAPPER_PREFIXES = ("module.", "backbone.")
#: Keys of a ViT checkpoint that only pretraining used (heads, mask token, fixed RoPE buffers).
VIT_PRETRAINING_ONLY = (("dino_head.", "ibot_head.", "head.", "local_cls_norm."),
                        ("mask_token", ".periods", ".bias_mask"))
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _unwrapped(key: str) -> str:
    for prefix in WRAPPER_PREFIXES:
        key = key.removeprefix(prefix)
    return key


def resnet50_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A published ResNet-50 state dict under torchvision's names (the head as ``fc.``)."""
    out = {}
    for key, value in state.items():
        first, dot, rest = _unwrapped(key).partition(".")
        first = RESNET_CHILDREN.get(first, "fc" if first == "linear" else first)
        out[first + dot + rest] = value
    return out


def _keras_hint(state: dict[str, torch.Tensor]) -> str:
    if any(k.endswith(("conv1.bias", "conv2.bias", "conv3.bias")) for k in state):
        return ("; its convolutions have biases: a conversion of Keras' ResNet50 (RadImageNet's .h5), "
                "which is not torchvision's ResNet-50: use RadImageNet's PyTorch release")
    return ""


def vit_state(state: dict[str, torch.Tensor], encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A published ViT state dict under the timm names of ``encoder`` (see the module docstring)."""
    target = encoder.state_dict()
    eva = "blocks.0.gamma_1" in target  # timm's DINOv3 (Eva) names its layer scale gamma_1/2
    starts, ends = VIT_PRETRAINING_ONLY
    out = {}
    for key, value in state.items():
        k = _unwrapped(key)
        if k.startswith(starts) or k.endswith(ends):
            continue
        if eva:
            k = (k.replace("ls1.gamma", "gamma_1").replace("ls2.gamma", "gamma_2")
                 .replace("storage_tokens", "reg_token"))
            if k.endswith("attn.qkv.bias") and k not in target:
                q, _k, v = value.chunk(3)  # DINOv3 masks the K bias; Q and V are what count
                if not (q.any() or v.any()):
                    continue
        out[k] = value
    return out


def _check_patch_size(raw: dict, planned: Planned, origin: str, arch: str | None) -> None:
    """Refuse a ViT file whose patch embedding is not the plans' patch size (before the network
    is built)."""
    encoder = planned.configuration_manager.network_arch_init_kwargs.get("encoder")
    want = ENCODERS.get(encoder)
    weight = next((v for k, v in raw.items() if _unwrapped(k) == "patch_embed.proj.weight"), None)
    if want is None or weight is None or tuple(weight.shape[-2:]) == (want, want):
        return  # not a ViT plan, or no patch embedding (then named as a missing key)
    have = tuple(weight.shape[-2:])
    raise UserError(f"{origin}: patch size {have[0]}×{have[1]} does not fit the {want}×{want} "
                    f"patches of the plans' network ({arch}); plan `--arch unetr_vit_b{have[0]}` "
                    f"for ViT-B/{have[0]} weights")


def _resample_pos_embed(state: dict, encoder: torch.nn.Module, origin: str) -> str | None:
    """Resample learned position embeddings to the encoder's patch grid; what was done, or None."""
    from timm.layers import resample_abs_pos_embed
    pos = state.get("pos_embed")
    target = getattr(encoder, "pos_embed", None)
    if pos is None or target is None or pos.shape == target.shape:
        return None
    prefix = 0 if getattr(encoder, "no_embed_class", False) else encoder.num_prefix_tokens
    side = round((pos.shape[1] - prefix) ** 0.5)
    if pos.ndim != 3 or side * side != pos.shape[1] - prefix or pos.shape[2] != target.shape[2]:
        raise UserError(f"{origin}: pos_embed {tuple(pos.shape)} is not a square grid of "
                        f"{target.shape[2]}-channel embeddings after {prefix} prefix token(s)")
    grid = list(encoder.patch_embed.grid_size)
    state["pos_embed"] = resample_abs_pos_embed(pos.float(), new_size=grid, old_size=[side, side],
                                                num_prefix_tokens=prefix)
    return f"{side}×{side} → {grid[0]}×{grid[1]} (bicubic)"


def import_external_weights(s: SourceSpec, planned: Planned, weights: Path | None,
                            overwrite: bool) -> Path:
    """Import the published checkpoint ``weights`` of source ``s`` into the pretrained store."""
    if weights is None:
        raise UserError(f"-s {s.name} imports a published checkpoint: pass --weights FILE "
                        f"({s.weights_hint}); nothing is downloaded")
    path = Path(weights)
    if not path.is_file():
        raise UserError(f"weights file {path} not found")
    claim = claim_imported_entry(s, planned, path, overwrite)
    arch = architecture_of(planned.class_name, planned.configuration_manager.network_arch_init_kwargs)
    if s.architectures and arch not in s.architectures:
        did = planned.dataset_name[len("Dataset"):].split("_", 1)[0]
        raise UserError(f"-s {s.name} fits the networks of --arch {' / '.join(s.architectures)}, "
                        f"not plans {planned.plans} ({arch or planned.class_name.rsplit('.', 1)[-1]});"
                        f" run `nnunet-xfer plan -d {did} --arch {s.architectures[0]}` and pass "
                        f"-p nnUNetPlans_{s.architectures[0]}")
    with open(path, "rb") as f:
        if f.read(len(HDF5_MAGIC)) == HDF5_MAGIC:
            raise UserError(f"{path} is a Keras/HDF5 file; -s {s.name} reads PyTorch state dicts "
                            f"({s.weights_hint})" + ("; Keras' ResNet50 is not torchvision's "
                            "ResNet-50, so the .h5 weights cannot be converted key for key"
                            if s.layout == LAYOUT_RESNET50 else ""))
    raw = load_state_dict(path)  # torch.load(weights_only=True)
    if s.layout == LAYOUT_VIT:
        _check_patch_size(raw, planned, str(path), arch)
    network = build_planned_network(planned)
    notes = {}
    if s.layout == LAYOUT_RESNET50:
        state = resnet50_state(raw)
        mapped = map_weights(state, network, whole=False, origin=str(path),
                             hint=_keras_hint(state))
    elif s.layout == LAYOUT_VIT:
        encoder = network.encoder
        state = vit_state(raw, encoder)
        notes["pos_embed_resampled"] = _resample_pos_embed(state, encoder, str(path))
        mapped = map_weights(state, network, whole=False, origin=str(path))
    else:
        raise KeyError(f"no reader for checkpoint layout {s.layout!r}")
    out = save_imported_entry(s, planned, network, mapped, {
        "data": f"{path} ({s.label})",
        "data_kind": s.data_kind,
        "weights_file": str(path),
        "weights_origin": s.weights_hint,
        "weights_sha256": file_sha256(path),
        "hash_prefix_verified": False,
        "task_metric": None,
        **notes,
    }, claim)
    print(f"imported {len(mapped)} tensors of {s.label} from {path} into {out}")
    return out
