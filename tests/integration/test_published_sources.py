"""Published checkpoints as sources (issue 21): RadImageNet's ResNet-50, DINOv2's ViT-B/14 and
MedDINOv3's ViT-B/16, imported from ``--weights FILE``, trained by nnU-Net and predicted.

Offline: the "published" files are randomly initialised torchvision / timm networks, saved in the
key layouts the real files have (RadImageNet's ``Backbone`` built as its authors build it;
DINOv2's and DINOv3's own names, see ``pretraining/external_weights.py``).

Small and quick on 2 CPU cores: the ViT plans here hold the same timm families as ``unetr_vit_b16``
/ ``b14`` (DINOv3 /16 with RoPE, registers and layer scale; DINOv2 /14 with learned positions and
layer scale) at 4 blocks of width 32 (``encoder_kwargs``), and the "published" ViT files are of that
size: every key name, the DINOv3 renames, the position resampling and the patch-size check meet the
real import code, with no ViT-B in memory. The ViT-B shapes themselves are checked on the ``meta``
device in ``test_architectures.py``; RadImageNet's ResNet-50 is the real size.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import nn

from conftest import one_case_validation_copy, run_cli
from nnunet_xfer.errors import UserError
from nnunet_xfer.planning import write_plans_variant
from nnunet_xfer.pretraining.external_weights import (import_external_weights, resnet50_state,
                                                      vit_state)
from nnunet_xfer.pretraining.network import load_planned
from nnunet_xfer.pretraining.store import architecture_fingerprint, entry_path, load_entry
from nnunet_xfer.sources import spec

EXT_ID, EXT_NAME = 512, "Dataset512_L3ext"
PLANS = {"radimagenet": "nnUNetPlans_unet_resnet50", "dinov2": "nnUNetPlans_unetr_vit_b14",
         "meddino": "nnUNetPlans_unetr_vit_b16"}
#: The smallest ViT of each family that still has every kind of key (see the module docstring).
SMALL_VIT = {"embed_dim": 32, "depth": 4, "num_heads": 2}
DIM = SMALL_VIT["embed_dim"]
SMALL_UNETR = {"encoder_kwargs": SMALL_VIT, "skip_blocks": [0, 1, 2, 3],
               "decoder_channels": [16, 16, 8, 8]}


# ------------------------------------------------------------------ the published layouts
def radimagenet_file(resnet: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """RadImageNet's PyTorch release: ``Backbone.backbone = nn.Sequential(*list(resnet50()
    .children())[:9])``, saved from DataParallel (``module.``)."""
    net = torchvision.models.resnet50()
    net.load_state_dict(resnet)

    class Backbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = nn.Sequential(*list(net.children())[:9])
    return {"module." + k: v for k, v in Backbone().state_dict().items()}


def dinov3_file(timm_state: dict[str, torch.Tensor]) -> dict:
    """A DINOv3 training checkpoint as MedDINOv3 publishes it: ``{"teacher": {"backbone.…"}}``
    in DINOv3's names, with its pretraining-only tensors and heads."""
    out = {}
    for k, v in timm_state.items():
        k = (k.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
             .replace("reg_token", "storage_tokens"))
        out["backbone." + k] = v
        if k.endswith("attn.qkv.weight"):  # DINOv3: zero QKV bias, its K part masked
            out["backbone." + k.replace("weight", "bias")] = torch.zeros(v.shape[0])
            out["backbone." + k.replace("weight", "bias_mask")] = torch.ones(v.shape[0])
    dim = timm_state["cls_token"].shape[-1]
    out.update({"backbone.mask_token": torch.zeros(1, dim),
                "backbone.rope_embed.periods": torch.ones(4),
                "dino_head.mlp.0.weight": torch.zeros(4, dim), "ibot_head.last_layer.weight":
                    torch.zeros(4, 4)})
    return {"teacher": out}


def timm_vit(name: str, **kwargs) -> nn.Module:
    """A random timm ViT of the small size (``SMALL_VIT``, overridable)."""
    torch.manual_seed(3)
    return timm.create_model(name, pretrained=False, num_classes=0, **{**SMALL_VIT, **kwargs})


#: Tensors of each saved network the import must carry over (the saving network's own names).
CHECKED = {"radimagenet": ("conv1.weight", "layer4.2.conv3.weight", "bn1.running_var"),
           "meddino": ("patch_embed.proj.weight", "blocks.3.gamma_1", "blocks.2.attn.qkv.weight",
                       "cls_token", "reg_token"),
           "dinov2": ("patch_embed.proj.weight", "blocks.3.ls1.gamma", "blocks.2.attn.qkv.weight",
                      "cls_token", "pos_embed")}


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """{source: (file, {name: tensor} of CHECKED)}: the three "published" files, saved from random
    networks that are dropped at once (the session keeps a few tensors, not three networks)."""
    folder = tmp_path_factory.mktemp("published")
    torch.manual_seed(2)
    files = {}
    for source, path in (("radimagenet", "RadImageNet-ResNet50.pt"),
                         ("meddino", "meddinov3_vitb16_ct3m.pth"),
                         ("dinov2", "dinov2_vitb14_pretrain.pth")):
        if source == "radimagenet":
            state = torchvision.models.resnet50().state_dict()
            saved = radimagenet_file(state)
        elif source == "meddino":
            state = timm_vit("vit_base_patch16_dinov3").state_dict()
            saved = dinov3_file(state)
        else:  # 518² pretraining: a 37×37 position grid
            state = timm_vit("vit_base_patch14_dinov2").state_dict()
            saved = {**state, "mask_token": torch.zeros(1, DIM)}
        torch.save(saved, folder / path)
        files[source] = (folder / path, {k: state[k].clone() for k in CHECKED[source]})
        del state, saved
    return files


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True, mmap=True)  # memory-mapped: read lazily


def test_published_layouts_map_to_the_backbone_names():
    torch.manual_seed(4)
    resnet = torchvision.models.resnet50().state_dict()
    names = resnet50_state(radimagenet_file(resnet))
    assert names.keys() == {k for k in resnet if not k.startswith("fc.")}
    assert all(torch.equal(names[k], resnet[k]) for k in names)
    assert resnet50_state(resnet).keys() == resnet.keys()  # torchvision's own names, head kept
    assert resnet50_state({"backbone.0.weight": resnet["conv1.weight"], "linear.bias":
                           torch.zeros(3)}).keys() == {"conv1.weight", "fc.bias"}
    del resnet, names

    eva = timm_vit("vit_base_patch16_dinov3")
    dinov3 = eva.state_dict()
    mapped = vit_state(dinov3_file(dinov3)["teacher"], eva)
    assert mapped.keys() == dinov3.keys() and all(torch.equal(mapped[k], dinov3[k]) for k in mapped)
    trained_bias = dinov3_file(dinov3)["teacher"]
    trained_bias["backbone.blocks.0.attn.qkv.bias"] = torch.ones(3 * DIM)
    assert "blocks.0.attn.qkv.bias" in vit_state(trained_bias, eva)  # kept, hence refused later


# ------------------------------------------------------------------ import, train, predict
@pytest.fixture(scope="module")
def ext_dataset(preprocessed_dataset, nnunet_env):
    """The phantom as Dataset512 (fold 0 validates on one case) with the three networks' plans,
    the ViTs' at the small size (``SMALL_UNETR`` in their ``arch_kwargs``)."""
    pre = one_case_validation_copy(preprocessed_dataset, nnunet_env, EXT_NAME)
    for plans in PLANS.values():
        path = write_plans_variant(str(EXT_ID), plans.removeprefix("nnUNetPlans_"))
        if "unetr" in plans:
            variant = json.loads(path.read_text())
            variant["configurations"]["2d"]["architecture"]["arch_kwargs"].update(SMALL_UNETR)
            path.write_text(json.dumps(variant, indent=4))
    return pre


def _imported(source: str) -> dict[str, torch.Tensor]:
    state, head, meta = load_entry(entry_path(EXT_NAME, source, PLANS[source], "2d"))
    assert head is None and meta["source"] == source and meta["iterations"] == 0
    assert meta["trained_prefixes"] == ["encoder."] and meta["scope"] == "external"
    assert meta["data_kind"] == ("natural" if source == "dinov2" else "medical")
    return state


@pytest.mark.parametrize("source", ["radimagenet", "meddino", "dinov2"])
def test_published_source_imports_trains_and_predicts(source, published, ext_dataset, nnunet_env):
    """pretrain -s SOURCE --weights FILE, nnUNetv2_train Xfer<Source>Trainer_n5 (the initial
    network holds the file's tensors), whose validation predicts with nnU-Net's predictor; for the
    ViT-B/16 also a predictor initialised from the run folder (the network rebuilt from the plans
    alone, as ``nnUNetv2_predict`` does)."""
    path, original = published[source]  # original: the CHECKED tensors
    proc = run_cli("nnunet-xfer", "pretrain", "-d", str(EXT_ID), "-s", source, "-p",
                   PLANS[source], "--weights", str(path), "--overwrite")
    assert "imported" in proc.stdout
    state = _imported(source)
    if source == "radimagenet":
        assert torch.allclose(state["encoder.conv1.weight"],
                              original["conv1.weight"].sum(1, keepdim=True))  # grey CT: RGB summed
        checks = {"encoder.layer4.2.conv3.weight": original["layer4.2.conv3.weight"],
                  "encoder.bn1.running_var": original["bn1.running_var"]}
    else:
        assert torch.allclose(state["encoder.patch_embed.proj.weight"],
                              original["patch_embed.proj.weight"].sum(1, keepdim=True))
        layer_scale = "gamma_1" if source == "meddino" else "ls1.gamma"
        checks = {f"encoder.blocks.3.{layer_scale}": original[f"blocks.3.{layer_scale}"],
                  "encoder.blocks.2.attn.qkv.weight": original["blocks.2.attn.qkv.weight"],
                  "encoder.cls_token": original["cls_token"]}
        if source == "meddino":  # DINOv3's storage_tokens are timm's register tokens
            checks["encoder.reg_token"] = original["reg_token"]
    for k, v in checks.items():
        assert torch.equal(state[k], v), k
    if source == "dinov2":  # 37×37 grid of the 518² file resampled to the 64² patch's 5×5 grid
        from timm.layers import resample_abs_pos_embed
        assert state["encoder.pos_embed"].shape == (1, 1 + 5 * 5, DIM)
        assert torch.allclose(state["encoder.pos_embed"], resample_abs_pos_embed(
            original["pos_embed"], new_size=[5, 5], num_prefix_tokens=1))

    trainer = f"Xfer{spec(source).trainer_stem}Trainer_n5"
    # one training iteration is enough to show the network trains; RadImageNet's 260 MB final and
    # best checkpoints are not written (validation predicts with the network in memory)
    no_checkpoints = ["--disable_checkpointing"] if source == "radimagenet" else []
    run_cli("nnUNetv2_train", str(EXT_ID), "2d", "0", "-tr", trainer, "-p", PLANS[source],
            "-device", "cpu", *no_checkpoints,
            env={"nnUNet_xfer_save_initial": "1", "nnUNet_xfer_iterations": "1"})
    fold = Path(nnunet_env["nnUNet_results"]) / EXT_NAME / f"{trainer}__{PLANS[source]}__2d" / "fold_0"
    initial = torch.load(fold / "checkpoint_initial.pth", weights_only=True)["network_weights"]
    for k in checks:
        assert torch.equal(initial[k], state[k]), k
    transfer = json.loads((fold / "debug.json").read_text())["xfer_info"]["transfer"]
    assert transfer["fingerprint_network"] == transfer["fingerprint_checkpoint"]
    assert transfer["transfer_parts"] == ["encoder"]
    import SimpleITK as sitk
    validated = sorted((fold / "validation").glob("*.nii.gz"))
    assert len(validated) == 1
    assert set(sitk.GetArrayFromImage(sitk.ReadImage(str(validated[0]))).ravel().tolist()) <= {0, 1}
    if source == "meddino":  # nnU-Net's predictor rebuilds the network from the run's plans alone
        from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        case = json.loads((ext_dataset / "splits_final.json").read_text())[0]["val"][0]
        image, props = SimpleITKIO().read_images(
            [str(Path(nnunet_env["nnUNet_raw"]) / EXT_NAME / "imagesTr" / f"{case}_0000.nii.gz")])
        predictor = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(fold.parent), (0,), "checkpoint_final.pth")
        assert type(predictor.network).__name__ == "ViTUNETR"
        pred = predictor.predict_single_npy_array(image, {"spacing": props["spacing"]})
        assert pred.shape == image.shape[1:] and set(pred.ravel().tolist()) <= {0, 1}


def test_misfitting_files_are_refused_in_one_line(published, ext_dataset, tmp_path):
    def refused(source, weights, plans=None):
        with pytest.raises(UserError) as e:
            import_external_weights(spec(source), load_planned(EXT_NAME, plans or PLANS[source],
                                                               "2d"), weights, overwrite=True)
        assert "\n" not in str(e.value)
        return str(e.value)

    r18 = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), r18)
    assert "missing 198 keys (layer1.0.bn3.bias" in refused("radimagenet", r18)
    keras = tmp_path / "keras_converted.pth"  # Keras' ResNet50: a bias in every convolution
    torch.save({**_load(published["radimagenet"][0]), "module.backbone.0.bias": torch.zeros(64)},
               keras)
    text = refused("radimagenet", keras)
    assert "unexpected 1 keys (conv1.bias)" in text and "Keras' ResNet50" in text
    h5 = tmp_path / "RadImageNet-ResNet50_notop.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(64))
    assert "Keras/HDF5" in refused("radimagenet", h5)
    assert "pass --weights FILE" in refused("radimagenet", None)
    assert "fits the networks of --arch unet_resnet50" in refused(
        "radimagenet", published["radimagenet"][0], plans=PLANS["meddino"])
    biased = tmp_path / "trained_qkv_bias.pth"
    teacher = _load(published["meddino"][0])
    teacher["teacher"]["backbone.blocks.0.attn.qkv.bias"] = torch.ones(3 * DIM)
    torch.save(teacher, biased)
    del teacher
    assert "unexpected 1 keys (blocks.0.attn.qkv.bias)" in refused("meddino", biased)
    wider = tmp_path / "wider_vit.pth"  # a ViT of another width: the first mis-shaped key named
    torch.save(dinov3_file(timm_vit("vit_base_patch16_dinov3", embed_dim=48).state_dict()), wider)
    text = refused("meddino", wider)
    assert "shape mismatches (blocks.0.attn.proj.bias (48,) vs (32,)" in text
    # a ViT-B/14 file for the ViT-B/16 network: the patch size is named, through the CLI
    proc = run_cli("nnunet-xfer", "pretrain", "-d", str(EXT_ID), "-s", "meddino", "-p",
                   PLANS["meddino"], "--weights", str(published["dinov2"][0]), "--overwrite",
                   check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "patch size 14×14 does not fit the 16×16 patches" in proc.stderr
    assert "--arch unetr_vit_b14" in proc.stderr


@pytest.mark.parametrize("source, parts", [("jigsaw", ["encoder."]),
                                           ("rec", ["encoder.", "decoder."])])
def test_rec_and_jigsaw_pretrain_the_vit_network(source, parts, ext_dataset):
    """Every source meets on one network: the package's own tasks pretrain the ViT UNETR too."""
    from nnunet_xfer.pretraining.run import PretrainConfig, pretrain
    pth = pretrain(PretrainConfig(EXT_NAME, source, plans=PLANS["meddino"], scope="all",
                                  iterations=1, batch_size=2, device="cpu"),
                   overwrite=True, progress=False)
    state, _, meta = load_entry(pth)
    assert meta["trained_prefixes"] == parts and meta["iterations"] == 1
    from nnunet_xfer.pretraining.torchvision_weights import build_planned_network
    with torch.device("meta"):  # keys and shapes are all the fingerprint reads
        net = build_planned_network(load_planned(EXT_NAME, PLANS["meddino"], "2d"))
    assert meta["architecture_fingerprint"] == architecture_fingerprint(net)
