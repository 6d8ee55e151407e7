"""torchvision-backbone networks, the plans variant and the ImageNet/COCO weight import (issue 5).

Offline: the "published" weights are randomly initialised torchvision state dicts saved under
torchvision's canonical file names in a temporary TORCH_HOME. Their content therefore cannot match
the sha256 prefix in those names, so imports run with ``verify_hash=False`` (or through
``--weights`` under another name) and one test checks that the verification refuses them.
"""
from __future__ import annotations

import json
import os
import types
from pathlib import Path

import pytest
import torch
import torchvision

from conftest import one_case_validation_copy, predict_one_validation_case, run_cli
from nnunet_xfer.architectures import ARCHITECTURES, is_torchvision_network
from nnunet_xfer.architectures.parts import network_parts, part_of, supports_deep_supervision
from nnunet_xfer.planning import activation_elements, adjusted_batch_size, write_plans_variant
from nnunet_xfer.architectures.registry import build
from nnunet_xfer.errors import UserError
from nnunet_xfer.pretraining.store import load_entry
from nnunet_xfer.architectures.parts import adapt_input_channels
from nnunet_xfer.pretraining.network import load_planned
from nnunet_xfer.pretraining.torchvision_weights import import_torchvision_weights
from nnunet_xfer.sources import spec

TV_ID, TV_NAME = 511, "Dataset511_L3tv"
PLANS = "nnUNetPlans_fcn_resnet50"
RESNET50_FILE = "resnet50-0676ba61.pth"
FCN50_FILE = "fcn_resnet50_coco-1167a1af.pth"


# ------------------------------------------------------------------ networks on random tensors
@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_any_input_size_gives_output_at_input_resolution(arch):
    with torch.device("meta"):  # shapes only: nothing is computed or allocated
        net = build(arch, input_channels=1, num_classes=3).eval()  # as in nnU-Net's inference
        for shape in [(2, 1, 37, 45), (1, 1, 64, 64), (1, 1, 100, 31)]:
            out = net(torch.empty(shape))
            assert isinstance(out, torch.Tensor) and out.shape == (shape[0], 3, *shape[2:])
        feats = net.encode(torch.empty(1, 1, 64, 64))
    if arch.startswith("unetr_vit"):  # four blocks' tokens on the (padded) patch grid
        side = -(-64 // net.patch_size)
        assert [tuple(f.shape) for f in feats] == [(1, 768, side, side)] * 4
        return
    assert len(feats) == 5
    assert feats[-1].shape[1] == (512 if arch.endswith(("18", "34")) else 2048)
    assert [f.shape[-1] for f in feats][:3] == [32, 16, 8]  # strides 2, 4, 8


def test_every_parameter_is_trained():
    """Real compute on the smallest network; the FCN is trained by the nnU-Net CLI test below."""
    torch.manual_seed(0)
    net = build("unet_resnet18", input_channels=1, num_classes=2)
    out = net(torch.randn(2, 1, 33, 41))
    assert out.shape == (2, 2, 33, 41)
    out.square().mean().backward()
    assert [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum()] == []


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_parts_cover_every_key_and_head_is_last_class_layer(arch):
    with torch.device("meta"):
        net = build(arch, input_channels=2, num_classes=4)
    parts = network_parts(net)
    keys = list(net.state_dict())
    assert [k for k in keys if part_of(k, parts) == "other"] == []
    head = sorted(k for k in keys if part_of(k, parts) == "head")
    layer = "segmentation_head" if arch.startswith("unet") else "classifier.4"
    assert head == [f"{layer}.bias", f"{layer}.weight"]  # the class convolution only
    assert net.state_dict()[f"{layer}.weight"].shape[:2] == (4, net.state_dict()[
        f"{layer}.weight"].shape[1])
    assert net.state_dict()[net.backbone_prefix + net.first_conv].shape[1] == 2
    cls_name = ARCHITECTURES[arch].class_name
    assert is_torchvision_network(cls_name) and not supports_deep_supervision(cls_name)
    # the plans variant's batch-size rule can size every network
    assert activation_elements(cls_name, ARCHITECTURES[arch].kwargs, [], 1, 2, [64, 64]) > 64 * 64


def test_registry_and_deep_supervision_refused():
    assert not is_torchvision_network("dynamic_network_architectures.architectures.unet.PlainConvUNet")
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    a = ARCHITECTURES["unet_resnet18"]
    with pytest.raises(ValueError, match="deep.supervision"):
        get_network_from_plans(a.class_name, a.kwargs, [], 1, 2, deep_supervision=True)


def test_vit_size_comes_from_encoder_kwargs_and_nothing_else():
    """``encoder_kwargs`` narrows or shortens the ViT (the tests' small plans); the patch size and
    the position grid stay the network's own, and skip blocks must exist."""
    from nnunet_xfer.architectures.vit_unetr import ViTUNETR
    small = {"embed_dim": 32, "depth": 4, "num_heads": 2}
    with torch.device("meta"):
        net = ViTUNETR(1, 2, img_size=(64, 64), skip_blocks=(0, 1, 2, 3), encoder_kwargs=small)
        assert len(net.encoder.blocks) == 4 and net.encoder.embed_dim == 32
        assert [tuple(f.shape) for f in net.encode(torch.empty(1, 1, 64, 64))] == [(1, 32, 4, 4)] * 4
        with pytest.raises(ValueError, match="only embed_dim, depth, num_heads"):
            ViTUNETR(1, 2, encoder_kwargs={**small, "patch_size": 8})
        with pytest.raises(ValueError, match=r"skip_blocks \[2, 5, 8, 11\] do not lie within .* 4"):
            ViTUNETR(1, 2, encoder_kwargs=small)


@pytest.mark.parametrize("arch", ["fcn_resnet50", "unet_resnet18"])
def test_nnunet_deep_supervision_toggle_keeps_single_output(arch):
    """nnUNetTrainer.set_deep_supervision_enabled(True/False) works and never adds outputs."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    with torch.device("meta"):
        net = build(arch).eval()
        fake_trainer = types.SimpleNamespace(is_ddp=False, network=net)
        for flag in (False, True):
            nnUNetTrainer.set_deep_supervision_enabled(fake_trainer, flag)
            out = net(torch.empty(2, 1, 32, 32))
            assert isinstance(out, torch.Tensor) and out.shape == (2, 2, 32, 32)


def test_adapt_input_channels_sums_rgb_kernels():
    w = torch.randn(64, 3, 7, 7)
    assert torch.allclose(adapt_input_channels(w, 1), w[:, 0:1] + w[:, 1:2] + w[:, 2:3])
    two = adapt_input_channels(w, 2)
    assert two.shape == (64, 2, 7, 7) and torch.allclose(two.sum(1), w.sum(1), atol=1e-6)
    assert torch.equal(adapt_input_channels(w, 3), w)
    # a grey z-scored image fed as R=G=B gives the same response as the summed kernel
    grey = torch.randn(1, 1, 16, 16)
    rgb = torch.nn.functional.conv2d(grey.repeat(1, 3, 1, 1), w)
    assert torch.allclose(rgb, torch.nn.functional.conv2d(grey, adapt_input_channels(w, 1)),
                          atol=1e-4)


def test_batch_size_rule():
    assert adjusted_batch_size(12, 800, 1600) == 6
    assert adjusted_batch_size(12, 800, 400) == 12  # never above nnU-Net's choice
    assert adjusted_batch_size(12, 100, 10_000) == 2  # never below nnU-Net's minimum
    assert adjusted_batch_size(7, 1000, 1500) == 4


# ------------------------------------------------------------------ plans variant (nnU-Net data)
def test_plan_cli_writes_variant_reusing_preprocessed_data(preprocessed_dataset):
    proc = run_cli("nnunet-xfer", "plan", "-d", "501", "--arch", "unet_resnet34", "--overwrite")
    out = preprocessed_dataset / "nnUNetPlans_unet_resnet34.json"
    assert str(out) in proc.stdout
    src = json.loads((preprocessed_dataset / "nnUNetPlans.json").read_text())
    var = json.loads(out.read_text())
    assert var["plans_name"] == "nnUNetPlans_unet_resnet34"
    c_src, c_var = src["configurations"]["2d"], var["configurations"]["2d"]
    assert c_var["data_identifier"] == c_src["data_identifier"]
    assert c_var["patch_size"] == c_src["patch_size"]
    assert c_var["architecture"]["network_class_name"] == ARCHITECTURES["unet_resnet34"].class_name
    assert 2 <= c_var["batch_size"] <= c_src["batch_size"]
    again = run_cli("nnunet-xfer", "plan", "-d", "501", "--arch", "unet_resnet34", check=False)
    assert again.returncode == 2 and "exists" in again.stderr and "Traceback" not in again.stderr
    bad = run_cli("nnunet-xfer", "plan", "-d", "501", "--arch", "vgg16", check=False)
    assert bad.returncode == 2 and "fcn_resnet50" in bad.stderr and "unet_resnet34" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ weight import
@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """TORCH_HOME with random resnet50 / fcn_resnet50(21, aux) weights under torchvision's names."""
    home = tmp_path_factory.mktemp("torch_home")
    ck = home / "hub" / "checkpoints"
    ck.mkdir(parents=True)
    torch.manual_seed(1)
    resnet = torchvision.models.resnet50().state_dict()
    fcn = torchvision.models.segmentation.fcn_resnet50(num_classes=21, aux_loss=True,
                                                       weights_backbone=None).state_dict()
    torch.save(resnet, ck / RESNET50_FILE)
    torch.save(fcn, ck / FCN50_FILE)
    old = os.environ.get("TORCH_HOME")
    os.environ["TORCH_HOME"] = str(home)
    yield types.SimpleNamespace(home=home, ck=ck, resnet=resnet, fcn=fcn)
    if old is None:
        os.environ.pop("TORCH_HOME")
    else:
        os.environ["TORCH_HOME"] = old


@pytest.fixture(scope="module")
def tv_dataset(preprocessed_dataset, nnunet_env):
    """The phantom as Dataset511 with FCN plans and a fold 0 of 1 validation case (fast validation)."""
    pre = one_case_validation_copy(preprocessed_dataset, nnunet_env, TV_NAME)
    write_plans_variant(str(TV_ID), "fcn_resnet50")
    return pre


def _entry(source):
    from nnunet_xfer.pretraining.store import entry_path
    return entry_path(TV_NAME, source, PLANS, "2d")


def _import(source, weights, **kwargs):
    """``import_torchvision_weights`` for ``source`` on the FCN plans of Dataset511."""
    return import_torchvision_weights(spec(source), load_planned(TV_NAME, PLANS, "2d"), weights,
                                      **kwargs)


def test_cls_import_copies_backbone_exactly(torch_home, tv_dataset):
    pth = _import("cls", None, overwrite=True,
                                     verify_hash=False, allow_download=False)
    state, head, meta = load_entry(pth)
    for k, v in torch_home.resnet.items():
        if k.startswith("fc."):
            assert not any(key.endswith(k) for key in state)
        elif k == "conv1.weight":
            assert torch.allclose(state["backbone.conv1.weight"], v.sum(1, keepdim=True))
        else:
            assert torch.equal(state["backbone." + k], v), k
    assert meta["source"] == "cls" and meta["iterations"] == 0 and meta["final_loss"] is None
    assert meta["weights_enum"] == "ResNet50_Weights.IMAGENET1K_V1"
    assert meta["trained_prefixes"] == ["backbone."]
    assert meta["task_metric"]["ImageNet-1K"]["acc@1"] > 0 and meta["hash_prefix_verified"] is False
    assert RESNET50_FILE in meta["data"] and head is None


def test_seg_import_copies_all_but_last_class_layer(torch_home, tv_dataset):
    pth = _import("seg", None, overwrite=True,
                                     verify_hash=False, allow_download=False)
    state, _, meta = load_entry(pth)
    fcn = torch_home.fcn
    assert state["classifier.4.weight"].shape[0] == 2  # background, muscle: not transferred
    copied = [k for k in state if not k.startswith("classifier.4.")]
    assert len(copied) == len(state) - 2
    for k in copied:
        if k == "backbone.conv1.weight":
            assert torch.allclose(state[k], fcn[k].sum(1, keepdim=True))
        else:
            assert torch.equal(state[k], fcn[k]), k
    assert meta["trained_prefixes"] == ["backbone.", "classifier.", "aux_classifier."]
    assert meta["task_metric"]["COCO-val2017-VOC-labels"]["miou"] > 0


def test_hash_prefix_of_canonical_file_is_checked(torch_home, tv_dataset):
    with pytest.raises(UserError, match="0676ba61"):
        _import("cls", None, overwrite=True,
                                   allow_download=False)


def test_bad_weights_are_refused(torch_home, tv_dataset, tmp_path):
    r18 = tmp_path / "resnet18_random.pth"
    torch.save(torchvision.models.resnet18().state_dict(), r18)
    with pytest.raises(UserError, match=r"resnet50 .*missing 198 keys \(layer1\.0\.bn3\.bias.*"
                                        r"shape mismatches \(layer1\.0\.conv1\.weight "
                                        r"\(64, 64, 3, 3\) vs \(64, 64, 1, 1\)"):
        _import("cls", r18, overwrite=True)
    with pytest.raises(UserError, match="looks like an ImageNet classification file"):
        _import("seg", torch_home.ck / RESNET50_FILE,
                                   overwrite=True, verify_hash=False)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((torch_home.ck / FCN50_FILE).read_bytes()[:1_000_000])
    with pytest.raises(UserError, match="truncated or corrupt"):
        _import("seg", truncated, overwrite=True)
    if not _entry("seg").exists():
        _import("seg", None, overwrite=True,
                                   verify_hash=False, allow_download=False)
    with pytest.raises(UserError, match="exists; pass --overwrite"):
        _import("seg", None, overwrite=False,
                                   verify_hash=False, allow_download=False)


def test_no_weights_offline_says_where_to_put_which_file(torch_home, tv_dataset, tmp_path):
    proc = run_cli("nnunet-xfer", "pretrain", "-d", str(TV_ID), "-s", "cls", "-p", PLANS,
                   "--overwrite", check=False,
                   env={"TORCH_HOME": str(tmp_path / "empty"), "nnUNet_xfer_offline": "1"})
    assert proc.returncode == 2, proc.stderr
    assert str(tmp_path / "empty" / "hub" / "checkpoints" / RESNET50_FILE) in proc.stderr
    assert "https://download.pytorch.org/models/" + RESNET50_FILE in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_seg_pretrain_train_and_predict_with_nnunet_cli(torch_home, tv_dataset, tmp_path,
                                                        nnunet_env):
    """pretrain -s seg (--weights), nnUNetv2_train XferSegTrainer_n5 on FCN plans, predict."""
    weights = tmp_path / "my_fcn_coco.pth"  # not torchvision's name: no hash prefix to check
    weights.symlink_to(torch_home.ck / FCN50_FILE)
    run_cli("nnunet-xfer", "pretrain", "-d", str(TV_ID), "-s", "seg", "-p", PLANS,
            "--weights", str(weights), "--overwrite")
    run_cli("nnUNetv2_train", str(TV_ID), "2d", "0", "-tr", "XferSegTrainer_n5", "-p", PLANS,
            "-device", "cpu", env={"nnUNet_xfer_save_initial": "1"})
    fold = (Path(nnunet_env["nnUNet_results"]) / TV_NAME / f"XferSegTrainer_n5__{PLANS}__2d"
            / "fold_0")
    assert (fold / "checkpoint_final.pth").is_file()
    initial = torch.load(fold / "checkpoint_initial.pth", weights_only=True)["network_weights"]
    for k in ("backbone.layer4.2.conv3.weight", "classifier.0.weight", "classifier.1.running_var"):
        assert torch.equal(initial[k], torch_home.fcn[k]), k
    debug = json.loads((fold / "debug.json").read_text())
    assert debug["xfer_info"]["transfer"]["fingerprint_network"] == \
        debug["xfer_info"]["transfer"]["fingerprint_checkpoint"]

    pred, ref = predict_one_validation_case(TV_ID, tv_dataset, nnunet_env, "XferSegTrainer_n5",
                                            PLANS, tmp_path)
    import SimpleITK as sitk
    assert pred.GetSize() == ref.GetSize()
    assert set(sitk.GetArrayFromImage(pred).ravel().tolist()) <= {0, 1}


def test_jigsaw_pretraining_runs_on_torchvision_plans(tv_dataset, nnunet_env):
    """The package's own pretraining loop and heads work for these networks too."""
    run_cli("nnunet-xfer", "pretrain", "-d", str(TV_ID), "-s", "jigsaw", "-p", PLANS,
            "--iterations", "1", "--device", "cpu", "--overwrite", "--scope", "all")
    meta = json.loads(_entry("jigsaw").with_suffix(".json").read_text())
    assert meta["trained_prefixes"] == ["backbone."] and meta["iterations"] == 1
    from nnunet_xfer.pretraining.torchvision_weights import build_planned_network
    from nnunet_xfer.pretraining.store import architecture_fingerprint
    net = build_planned_network(load_planned(TV_NAME, PLANS, "2d"))
    assert meta["architecture_fingerprint"] == architecture_fingerprint(net)
