"""Trainer family: discovery, subsets, weight transfer, fine-tuning schedule, and the real nnU-Net CLI.

Fast unit tests first (plain torch / JSON); then the CLI on the converted 64² phantom: the shared
``scratch_run`` fixture, one ``XferRecTrainer_n5`` run from a fake store entry and its ``--c``
continuation. The Rec runs use their own ``nnUNet_results`` so that the store entries written here
never meet those of the pretraining tests.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import DATASET_ID, DATASET_NAME, benchmark_module, run_cli
from nnunet_xfer.architectures.parts import NNUNET_PARTS, part_of
from nnunet_xfer.errors import UserError
from nnunet_xfer.layout import DatasetLayout
from nnunet_xfer.sources import SOURCES
from nnunet_xfer.study_grid import SIZE_TAGS, trainer_name
from nnunet_xfer.trainers.xfer_schedule import (FineTuneSchedule, PartPolyLRScheduler, group_lr,
                                                mark_transferred, part_param_groups)
from nnunet_xfer.architectures.parts import adapt_input_channels
from nnunet_xfer.trainers.xfer_weight_transfer import (TransferError, parts_from_prefixes,
                                                       transfer_weights)


# ----------------------------------------------------------------------------- toy network
class ToyNet(torch.nn.Module):
    """Encoder / decoder / head declared the way the torchvision networks declare theirs."""

    xfer_parts = {"encoder": ("enc.",), "decoder": ("dec.",), "head": ("dec.head.",)}

    def __init__(self, in_ch: int = 1, width: int = 4, classes: int = 2):
        super().__init__()
        self.enc = torch.nn.Sequential(torch.nn.Conv2d(in_ch, width, 3), torch.nn.BatchNorm2d(width))
        self.dec = torch.nn.Module()
        self.dec.conv = torch.nn.Conv2d(width, width, 3)
        self.dec.head = torch.nn.Conv2d(width, classes, 1)


def filled(net: torch.nn.Module, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return {k: v.clone() for k, v in net.state_dict().items()}


def test_transfer_copies_parts_adapts_rgb_and_leaves_head():
    source = filled(ToyNet(in_ch=3), seed=1)
    net = ToyNet(in_ch=1)
    before = filled(net, seed=2)
    report = transfer_weights(net, source, ToyNet.xfer_parts, ["encoder", "decoder"])
    after = net.state_dict()
    assert torch.allclose(after["enc.0.weight"], source["enc.0.weight"].sum(1, keepdim=True))
    assert report.adapted == ["enc.0.weight: 3→1"]
    for key in ("enc.0.bias", "enc.1.weight", "enc.1.running_mean", "dec.conv.weight", "dec.conv.bias"):
        assert torch.equal(after[key], source[key]), key
    assert torch.equal(after["dec.head.weight"], before["dec.head.weight"])
    assert set(report.not_transferred) == {"dec.head.weight", "dec.head.bias"}
    assert set(report.unused_source) == {"dec.head.weight", "dec.head.bias"}
    assert report.summary()["n_transferred"] == len(source) - 2


def test_transfer_encoder_only_keeps_decoder_fresh():
    source = filled(ToyNet(), seed=1)
    net = ToyNet()
    before = filled(net, seed=2)
    transfer_weights(net, source, ToyNet.xfer_parts, ["encoder"])
    assert torch.equal(net.state_dict()["enc.0.weight"], source["enc.0.weight"])
    assert torch.equal(net.state_dict()["dec.conv.weight"], before["dec.conv.weight"])


def test_transfer_refuses_mismatch_naming_keys_and_changes_nothing():
    source = filled(ToyNet(width=4), seed=1)
    source["dec.head.weight"] = torch.zeros(7, 4, 1, 1)  # head differences are fine
    net = ToyNet(width=5)
    before = filled(net, seed=2)
    with pytest.raises(TransferError) as e:
        transfer_weights(net, source, ToyNet.xfer_parts, ["encoder", "decoder"])
    message = str(e.value)
    assert "enc.1.weight (checkpoint (4,) vs network (5,))" in message and "dec.conv.weight" in message
    assert "dec.head" not in message
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_transfer_refuses_missing_and_unknown_keys():
    source = filled(ToyNet(), seed=1)
    del source["enc.1.bias"]
    source["enc.extra.weight"] = torch.zeros(1)
    with pytest.raises(TransferError) as e:
        transfer_weights(ToyNet(), source, ToyNet.xfer_parts, ["encoder"])
    assert "enc.1.bias (missing from the checkpoint)" in str(e.value)
    assert "enc.extra.weight (not in the network)" in str(e.value)


def test_transfer_refuses_a_checkpoint_with_nothing_to_transfer():
    source = {k: v for k, v in filled(ToyNet(), seed=1).items() if k.startswith("dec.head.")}
    with pytest.raises(TransferError, match="nothing to transfer"):
        transfer_weights(ToyNet(), source, ToyNet.xfer_parts, [])


def test_adapt_input_channels_preserves_constant_response():
    w = torch.randn(2, 3, 3, 3)
    one = adapt_input_channels(w, 1)
    assert torch.allclose(one, w.sum(1, keepdim=True))
    four = adapt_input_channels(w, 4)
    assert four.shape == (2, 4, 3, 3) and torch.allclose(four.sum(1), w.sum(1))


def test_parts_from_prefixes():
    assert parts_from_prefixes(["encoder."], NNUNET_PARTS, "jigsaw") == ["encoder"]
    assert parts_from_prefixes(["encoder.", "decoder."], NNUNET_PARTS, "rec") == ["encoder", "decoder"]
    assert parts_from_prefixes(None, NNUNET_PARTS, "seg") == ["encoder", "decoder"]
    assert parts_from_prefixes(None, NNUNET_PARTS, "cls") == ["encoder"]
    # a decoder-only source does not pull in the encoder through its decoder.encoder alias
    assert parts_from_prefixes(["decoder."], NNUNET_PARTS, "rec") == ["decoder"]


# ----------------------------------------------------------------------------- schedule
def test_schedule_warmup_discriminative_lr_and_freeze():
    schedule = FineTuneSchedule(lr_factor=0.1, warmup_fraction=0.05, freeze_epochs=2)
    net = ToyNet()
    opt = torch.optim.SGD(part_param_groups(net, ToyNet.xfer_parts), 0.01, momentum=0.99, nesterov=True)
    assert [g["xfer_part"] for g in opt.param_groups] == ["encoder", "decoder", "head"]
    mark_transferred(opt, ["encoder", "decoder"], schedule, num_epochs=100)
    enc, dec, head = opt.param_groups
    assert schedule.warmup_epochs(100) == 5 and schedule.warmup_epochs(3) == 1
    assert group_lr(0.01, head, 0) == 0.01
    assert group_lr(0.01, enc, 0) == group_lr(0.01, enc, 1) == 0.0  # frozen
    assert group_lr(0.01, enc, 2) == pytest.approx(0.01 * 0.1 * 1 / 5)  # warm-up starts after the freeze
    assert group_lr(0.01, enc, 6) == pytest.approx(0.01 * 0.1)
    assert group_lr(0.01, dec, 0) == pytest.approx(0.01 * 0.1 / 5)  # decoder is not frozen
    assert group_lr(0.01, dec, 5) == pytest.approx(0.001)


def test_schedule_survives_optimizer_state_round_trip():
    """What ``--c`` does: a fresh optimizer loads the saved state and the scheduler gives the same LRs."""
    net = ToyNet()
    opt = torch.optim.SGD(part_param_groups(net, ToyNet.xfer_parts), 0.01, momentum=0.99, nesterov=True)
    mark_transferred(opt, ["encoder"], FineTuneSchedule(lr_factor=0.1, warmup_fraction=0.05, freeze_epochs=1),
                     num_epochs=40)
    sched = PartPolyLRScheduler(opt, 0.01, 40)
    sched.step(3)
    expected = [g["lr"] for g in opt.param_groups]
    fresh = torch.optim.SGD(part_param_groups(net, ToyNet.xfer_parts), 0.01, momentum=0.99, nesterov=True)
    fresh_sched = PartPolyLRScheduler(fresh, 0.01, 40)
    fresh.load_state_dict(opt.state_dict())
    fresh_sched.step(3)
    assert [g["lr"] for g in fresh.param_groups] == expected
    assert expected[0] < expected[1]  # transferred encoder below the fresh decoder


def test_schedule_default_is_nnunets_and_env_options_are_explicit(monkeypatch):
    default = FineTuneSchedule.from_env(FineTuneSchedule())
    assert not default.explicit and default.warmup_epochs(1000) == 0
    assert default.record() == {"explicit": False, "lr_factor": 1.0, "warmup_fraction": 0.0, "freeze_epochs": 0}
    net = ToyNet()
    opt = torch.optim.SGD(part_param_groups(net, ToyNet.xfer_parts), 0.01)
    mark_transferred(opt, ["encoder", "decoder"], default, num_epochs=10)
    assert all(group_lr(0.004, g, e) == 0.004 for g in opt.param_groups for e in (0, 5))  # nnU-Net's poly LR
    monkeypatch.setenv("nnUNet_xfer_lr_factor", "0.5")
    monkeypatch.setenv("nnUNet_xfer_freeze_epochs", "3")
    s = FineTuneSchedule.from_env(FineTuneSchedule())
    assert (s.lr_factor, s.freeze_epochs, s.warmup_fraction) == (0.5, 3, 0.0) and s.explicit
    assert s.record()["explicit"] is True


# ----------------------------------------------------------------------------- family, env, version
def test_family_is_complete_and_discoverable():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    import nnunet_xfer.trainers.xfer_trainer_family as family
    names = [trainer_name(s, t) for s in SOURCES for t in SIZE_TAGS]
    assert len(names) == len(set(names)) == len(SOURCES) * len(SIZE_TAGS)
    assert set(names) <= set(family.__all__)
    assert {"XferScratchTrainer_n1", "XferRecTrainer_n2", "XferSegTrainer_n3",
            "XferJigsawTrainer_n4"} <= set(names)
    assert {"XferRadimagenetTrainer_n5", "XferDinov2Trainer_n5", "XferMeddinoTrainer_nall"} <= set(names)
    assert "nnUNetTrainer" not in family.__all__  # nnU-Net's own source has no family
    assert not [n for n in family.__all__ if n.startswith(("XferNnunet", "XferThreshold"))]
    for name in names:
        cls = getattr(family, name)
        assert issubclass(cls, nnUNetTrainer) and cls.__name__ == name
    found = recursive_find_trainer_class_by_name("XferJigsawTrainer_n125")
    assert (found.__name__, found.source, found.subset_size) == ("XferJigsawTrainer_n125", "jigsaw", 125)
    assert recursive_find_trainer_class_by_name("XferClsTrainer_nall").subset_size is None
    assert recursive_find_trainer_class_by_name("XferScratchTrainer_n1").subset_size == 1


def test_env_command_and_version_check(monkeypatch):
    import importlib.metadata

    from nnunet_xfer.trainers import check_nnunet_version, trainer_folder
    proc = run_cli("nnunet-xfer", "env")
    assert proc.stdout.strip() == f"export nnUNet_extTrainer={trainer_folder()}"
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "2.5.1")
    with pytest.raises(UserError, match=r"nnunetv2 2\.5\.1 is too old.*>= 2\.8\.1"):
        check_nnunet_version()


# ----------------------------------------------------------------------------- subsets (no training)
def test_fold_subset_generates_missing_subsets_and_refuses_oversize(preprocessed_dataset, tmp_path, monkeypatch):
    from nnunet_xfer.splits import make_subsets
    from nnunet_xfer.trainers.xfer_subsets import fold_subset
    pre = tmp_path / "preprocessed" / DATASET_NAME
    pre.mkdir(parents=True)
    monkeypatch.setenv("nnUNet_preprocessed", str(pre.parent))
    raw = preprocessed_dataset.parents[1] / "raw" / DATASET_NAME
    splits = json.loads((raw / "splits_final.json").read_text())
    dataset_json = {"nnunet_xfer": {"seed": 7}}
    chosen = fold_subset(DATASET_NAME, pre, None, 1, 10, dataset_json)
    assert (pre / "splits_final.json").is_file()  # copied from the raw dataset
    saved = json.loads((pre / "subsets.json").read_text())  # generated with the rule and saved
    assert saved == make_subsets(splits, saved["sizes"], seed=7, warn=False)
    assert chosen.train == saved["folds"]["1"]["10"] and chosen.val == sorted(splits[1]["val"])
    assert set(fold_subset(DATASET_NAME, pre, None, 1, 5, dataset_json).train) < set(chosen.train)
    assert fold_subset(DATASET_NAME, pre, None, 1, None, dataset_json).train == sorted(splits[1]["train"])
    with pytest.raises(UserError, match="exceeds the 18 training cases of fold 1"):
        fold_subset(DATASET_NAME, pre, None, 1, 25, dataset_json)


# ----------------------------------------------------------------------------- real CLI
def log_text(fold_dir: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(fold_dir.glob("training_log_*.txt")))


def logged_subset(text: str) -> list[str]:
    line = [ln for ln in text.splitlines() if "nnunet_xfer subset fold" in ln][-1]
    return json.loads(line[line.index("["):])


def test_scratch_run_outputs_subset_and_predict(scratch_run, raw_dataset, tmp_path):
    splits = json.loads((raw_dataset / "splits_final.json").read_text())
    subsets = json.loads((raw_dataset / "subsets.json").read_text())
    assert (scratch_run / "checkpoint_final.pth").is_file()
    summary = json.loads((scratch_run / "validation" / "summary.json").read_text())
    validated = sorted(Path(c["prediction_file"]).name.split(".")[0] for c in summary["metric_per_case"])
    assert validated == sorted(splits[0]["val"])  # the whole validation fold, not a subset of it
    text = log_text(scratch_run)
    # nnUNet_def_n_proc=1 (the tests' setting): export and scoring ran in a thread, and nnU-Net's
    # summary scores the masks that thread exported
    assert "export and scoring in one thread (nnUNet_def_n_proc=1)" in text
    for case in summary["metric_per_case"]:
        pred = sitk.GetArrayFromImage(sitk.ReadImage(case["prediction_file"])) == 1
        ref = sitk.GetArrayFromImage(sitk.ReadImage(case["reference_file"])) == 1
        expected = 2 * (pred & ref).sum() / (pred.sum() + ref.sum()) if pred.any() or ref.any() \
            else np.nan
        assert case["metrics"]["1"]["Dice"] == pytest.approx(expected, nan_ok=True)
    assert logged_subset(text) == subsets["folds"]["0"]["5"]
    assert "1 epochs × 2 iterations" in text
    info = json.loads((scratch_run / "debug.json").read_text())["xfer_info"]
    assert info["subset"]["train"] == subsets["folds"]["0"]["5"]
    assert {k: info["schedule"][k] for k in ("explicit", "lr_factor", "warmup_fraction", "freeze_epochs")} == \
        {"explicit": False, "lr_factor": 1.0, "warmup_fraction": 0.0, "freeze_epochs": 0}
    assert info["short_run"]["num_epochs"] == 1 and info["short_run"]["num_iterations_per_epoch"] == 2

    images = tmp_path / "images"
    images.mkdir()
    cases = splits[0]["val"][:2]
    for case in cases:
        shutil.copy(raw_dataset / "imagesTr" / f"{case}_0000.nii.gz", images)
    run_cli("nnUNetv2_predict", "-i", str(images), "-o", str(tmp_path / "pred"), "-d", str(DATASET_ID),
            "-c", "2d", "-f", "0", "-tr", "XferScratchTrainer_n5", "-device", "cpu", "--disable_tta",
            "-npp", "1", "-nps", "1")
    assert sorted(p.name for p in (tmp_path / "pred").glob("*.nii.gz")) == sorted(f"{c}.nii.gz" for c in cases)


def test_checkpoints_store_the_training_log_as_python_numbers(scratch_run):
    """Every checkpoint a run writes holds nnU-Net's training log as Python numbers: torch's
    restricted unpickler opens it with no numpy global admitted (nnU-Net's own trainer stores
    numpy scalars, which it rebuilds one call at a time), and the values are one per epoch."""
    written = sorted(scratch_run.glob("checkpoint_*.pth"))
    assert {p.name for p in written} >= {"checkpoint_final.pth", "checkpoint_best.pth"}
    for path in written:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)  # no safe_globals
        log = ckpt["logging"]
        assert {len(v) for v in log.values()} == {1}, path.name  # 1 epoch
        leaves = [x for v in log.values() for e in v for x in (e if isinstance(e, list) else [e])]
        assert leaves and all(type(x) in (float, int) for x in leaves), path.name
        assert type(ckpt["_best_ema"]) is float
        assert 0.0 <= log["mean_fg_dice"][0] <= 1.0


def network_from_plans(preprocessed: Path, in_channels: int) -> torch.nn.Module:
    """The network exactly as the trainer builds it (PlansManager + build_network_architecture)."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    pm = PlansManager(str(preprocessed / "nnUNetPlans.json"))
    return nnUNetTrainer.build_network_architecture(pm, pm.get_configuration("2d"), in_channels, 2, True)


def fake_store_entry(results: Path, source: str, network: torch.nn.Module, fold: int | None = None,
                     **meta) -> tuple[Path, dict]:
    """A store entry with the provenance record the trainers check (per fold for rec/jigsaw)."""
    from nnunet_xfer.pretraining.store import entry_provenance, save_entry
    state = filled(network, seed=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("nnUNet_results", str(results))
        pth = DatasetLayout(DATASET_NAME).store_entry(source, fold=fold)
    prov = entry_provenance(DATASET_NAME, scope="external" if fold is None else "fold", fold=fold)
    save_entry(pth, state, None, {"source": source, **prov, **meta})
    return pth, state


@pytest.fixture(scope="module")
def rec_run(preprocessed_dataset, tmp_path_factory):
    """``XferRecTrainer_n5`` from a fake 3-channel ``rec`` entry, in a results folder of its own.

    With explicit schedule options (LR factor 0.1, 5 % warm-up), so that the per-part schedule and
    its restoration by ``--c`` are tested through the real CLI.
    """
    results = tmp_path_factory.mktemp("xfer_results")
    pth, state = fake_store_entry(results, "rec", network_from_plans(preprocessed_dataset, 3),
                                  fold=0, trained_prefixes=["encoder.", "decoder."])
    env = {"nnUNet_results": str(results), "nnUNet_xfer_save_initial": "1",
           "nnUNet_xfer_lr_factor": "0.1", "nnUNet_xfer_warmup_fraction": "0.05"}
    run_cli("nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", "XferRecTrainer_n5", "-device", "cpu", env=env)
    fold = results / DATASET_NAME / "XferRecTrainer_n5__nnUNetPlans__2d" / "fold_0"
    return {"results": results, "pth": pth, "state": state, "fold": fold, "env": env}


def test_rec_trainer_starts_from_checkpoint(rec_run):
    from nnunet_xfer.pretraining.store import file_sha256
    fold, state = rec_run["fold"], rec_run["state"]
    initial = torch.load(fold / "checkpoint_initial.pth", weights_only=True)["network_weights"]
    first_conv = {k for k in initial if k.endswith("stages.0.0.convs.0.conv.weight")
                  or k.endswith("stages.0.0.convs.0.all_modules.0.weight")}
    assert len(first_conv) == 4 and all(state[k].shape[1] == 3 and initial[k].shape[1] == 1 for k in first_conv)
    counts = {"encoder": 0, "decoder": 0, "head": 0, "other": 0}
    for key, value in initial.items():
        part = part_of(key, NNUNET_PARTS)
        counts[part] += 1
        if key in first_conv:
            assert torch.allclose(value, state[key].sum(1, keepdim=True)), key
        elif part == "head":
            assert not torch.allclose(value, state[key]), key  # freshly initialised
        else:
            assert torch.equal(value, state[key]), key
    assert counts["other"] == 0 and min(counts[p] for p in ("encoder", "decoder", "head")) > 0
    assert (fold / "checkpoint_final.pth").is_file()
    info = json.loads((fold / "debug.json").read_text())["xfer_info"]["transfer"]
    assert info["checkpoint"] == str(rec_run["pth"]) and info["sha256"] == file_sha256(rec_run["pth"])
    # what evaluate's † mark reads: the entry's scope and the case ids it saw, recorded by the run
    assert (info["scope"], info["fold"], info["dataset"], info["case_ids"]) == ("fold", 0, DATASET_NAME, [])
    assert info["n_transferred"] == counts["encoder"] + counts["decoder"]
    assert sorted(info["not_transferred"]) == sorted(k for k in initial if part_of(k, NNUNET_PARTS) == "head")
    assert "nnunet_xfer: loaded source 'rec'" in log_text(fold)
    schedule = json.loads((fold / "debug.json").read_text())["xfer_info"]["schedule"]
    assert (schedule["explicit"], schedule["lr_factor"], schedule["warmup_fraction"]) == (True, 0.1, 0.05)


def test_rec_continue_does_not_reload_and_predicts_without_store(rec_run):
    """``--c`` with the store gone: continues (2nd epoch) from the restored schedule, same subset."""
    fold = rec_run["fold"]
    subset = logged_subset(log_text(fold))
    store = rec_run["pth"].parent
    away = store.with_name("away")
    store.rename(away)
    try:
        run_cli("nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", "XferRecTrainer_n5", "-device", "cpu",
                "--c", env={**rec_run["env"], "nnUNet_xfer_epochs": "2"})
        newest = sorted(fold.glob("training_log_*.txt"))[-1].read_text()
        assert "continuing at epoch 1; the rec checkpoint is not reloaded" in newest
        assert "loaded source" not in newest and logged_subset(newest) == subset
        # encoder LR of epoch 1 = poly(1/2) × lr_factor: the group settings came back with the optimizer
        assert f"encoder {0.01 * 0.5 ** 0.9 * 0.1:.3g}, decoder" in newest
        assert torch.load(fold / "checkpoint_final.pth", weights_only=False)["current_epoch"] == 2

        # inference builds the network from the plans alone: no store needed
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
        predictor = nnUNetPredictor(device=torch.device("cpu"), use_mirroring=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(str(fold.parent), (0,), "checkpoint_final.pth")
        image = torch.rand(1, 1, 64, 64).numpy()
        seg = predictor.predict_single_npy_array(image, {"spacing": [5.0, 0.8, 0.8]})
        assert seg.shape == (1, 64, 64)
    finally:
        away.rename(store)


def make_trainer(name: str, fold: int = 1):
    """A trainer built in-process as nnUNetv2_train builds it (CPU)."""
    from nnunetv2.run.run_training import get_trainer_from_args
    return get_trainer_from_args(str(DATASET_ID), "2d", fold, name, "nnUNetPlans", device=torch.device("cpu"))


def test_missing_and_mismatched_checkpoints_are_refused(preprocessed_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    with pytest.raises(SystemExit) as e:  # in the constructor, before nnU-Net creates anything
        make_trainer("XferJigsawTrainer_n5")
    assert "run: nnunet-xfer pretrain -d 501 -s jigsaw -p nnUNetPlans -c 2d" in str(e.value)
    assert "\n" not in str(e.value)
    assert not (tmp_path / DATASET_NAME / "XferJigsawTrainer_n5__nnUNetPlans__2d").exists()

    wrong = network_from_plans(preprocessed_dataset, 1)
    with torch.no_grad():  # one extra output channel in the second encoder conv
        conv = wrong.encoder.stages[0][0].convs[1].conv
        conv.weight = torch.nn.Parameter(torch.zeros(conv.weight.shape[0] + 1, *conv.weight.shape[1:]))
    fake_store_entry(tmp_path, "cls", wrong, trained_prefixes=["encoder."])
    trainer = make_trainer("XferClsTrainer_n5")
    trainer.initialize()
    before = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    with pytest.raises(SystemExit) as e:
        trainer.on_train_start()
    assert "encoder.stages.0.0.convs.1.conv.weight (checkpoint (33, 32, 3, 3) vs network (32, 32, 3, 3))" \
        in str(e.value)
    assert all(torch.equal(v, before[k]) for k, v in trainer.network.state_dict().items())


def test_default_transfer_trains_exactly_like_scratch(preprocessed_dataset, tmp_path, monkeypatch):
    """Without explicit options a transfer trainer has nnU-Net's own optimiser and schedule, as scratch."""
    from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    monkeypatch.setenv("nnUNet_xfer_seed", "7")
    fake_store_entry(tmp_path, "rec", network_from_plans(preprocessed_dataset, 1), fold=1,
                     trained_prefixes=["encoder.", "decoder."])  # make_trainer builds fold 1
    trainers = {}
    for name in ("XferRecTrainer_n5", "XferScratchTrainer_n5"):
        trainers[name] = make_trainer(name)  # seeds torch in the constructor ...
        trainers[name].initialize()  # ... so both networks start from the same weights
    rec, scratch = trainers.values()
    assert type(rec.optimizer) is type(scratch.optimizer) is torch.optim.SGD
    assert type(rec.lr_scheduler) is type(scratch.lr_scheduler) is PolyLRScheduler

    def settings_of(optimizer):
        return [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    assert len(rec.optimizer.param_groups) == 1 and settings_of(rec.optimizer) == settings_of(scratch.optimizer)
    assert rec.xfer_info["schedule"] == scratch.xfer_info["schedule"] and not rec.xfer_info["schedule"]["explicit"]
    assert rec.xfer_info["seed"] == 7
    state = scratch.network.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in rec.network.state_dict().items())


def _schedule_control():
    """``benchmarks/schedule_control.py`` as a module."""
    return benchmark_module("schedule_control")


def test_schedule_control_runs_in_the_current_store_format(preprocessed_dataset, results, monkeypatch,
                                                           one_torch_thread):
    """The benchmark's own store entry passes the trainers' checks, and its arms are paired: the
    identity arm (the transfer path handed scratch's initial weights) equals scratch exactly, so
    both arms share subset, data order and augmentation. One seed of 1 epoch × 2 iterations."""
    control = _schedule_control()
    for var in ("nnUNet_xfer_seed", "nnUNet_xfer_epochs", "nnUNet_xfer_iterations", *control.SCHEDULE_VARS):
        monkeypatch.setenv(var, "1")  # so that monkeypatch restores what the benchmark sets
        monkeypatch.delenv(var)
    runs = control.run_arms(DATASET_NAME, [5], seeds=1,
                            base_env={"nnUNet_xfer_epochs": "1", "nnUNet_xfer_iterations": "2"})
    by_arm = {r["arm"]: r for r in runs}
    assert set(by_arm) == set(control.ARMS)
    assert by_arm["transfer"]["transferred"] and by_arm["identity"]["transferred"]  # the transfer path ran
    assert by_arm["scratch"]["transferred"] is None
    assert by_arm["identity"]["dice"] == by_arm["scratch"]["dice"]
    assert by_arm["transfer"]["train"] == by_arm["scratch"]["train"]
    analysis = control.analyse(runs, [5])
    assert analysis["per_n"][5]["identity_max_abs"] == 0.0
    assert analysis["pooled"]["verdict"] == "inconclusive"  # one seed has no interval
    assert "| 5 | identity |" in control.table(runs, [5], list(control.ARMS), analysis)


def test_schedule_control_paired_interval_and_verdicts():
    """The paired t interval equals scipy's, and the verdict follows the interval and the margin."""
    from scipy import stats
    control = _schedule_control()
    a = [0.71, 0.74, 0.69, 0.75, 0.72, 0.70]
    b = [0.70, 0.75, 0.69, 0.73, 0.72, 0.71]
    p = control.paired_difference(a, b, margin=0.03)
    d = [x - y for x, y in zip(a, b)]
    low, high = stats.t.interval(0.95, len(d) - 1, loc=sum(d) / len(d), scale=stats.sem(d))
    assert (p["ci_low"], p["ci_high"]) == pytest.approx((low, high))
    assert p["verdict"] == "equivalent" and -0.03 <= p["ci_low"] <= p["ci_high"] <= 0.03
    assert control.paired_difference(a, b, margin=0.005)["verdict"] == "inconclusive"
    shifted = control.paired_difference([x + 0.1 for x in a], b, margin=0.03)
    assert shifted["verdict"] == "different" and shifted["ci_low"] > 0
    assert control.paired_difference(a[:1], b[:1])["verdict"] == "inconclusive"


# ----------------------------------------------------------------------------- first contact
@pytest.fixture(scope="module")
def installed_wheel(tmp_path_factory) -> Path:
    """The package built as a wheel and installed (no dependencies) into a folder of its own."""
    repo = Path(__file__).resolve().parents[2]
    out = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(out / "dist"), str(repo)],
                   check=True, capture_output=True, timeout=300)
    wheel = next((out / "dist").glob("nnunet_xfer-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(out / "site"), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return out / "site"


def python_with_site(site_dir: Path, code: str, ext_trainer: str | None) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter whose site folder is ``site_dir``, processed as at start-up.

    ``-S`` keeps this environment's own site folder (and its editable install of the package)
    out; its packages (nnunetv2, torch) are appended to ``sys.path`` after ``site_dir``.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "nnUNet_extTrainer")}
    if ext_trainer is not None:
        env["nnUNet_extTrainer"] = ext_trainer
    prelude = (f"import site, sys; site.addsitedir({str(site_dir)!r}); "
               f"sys.path.append({sysconfig.get_paths()['purelib']!r}); ")
    return subprocess.run([sys.executable, "-S", "-c", prelude + code], capture_output=True, text=True,
                          env=env, cwd=str(site_dir.parent), timeout=300)


@pytest.mark.slow
def test_wheel_start_up_hook_registers_the_trainers(installed_wheel, tmp_path):
    assert (installed_wheel / "nnunet_xfer_trainers.pth").is_file()
    folder = installed_wheel / "nnunet_xfer" / "trainers"
    show = "import os; print(os.environ.get('nnUNet_extTrainer'))"
    own = str(tmp_path / "my_trainers")
    proc = python_with_site(installed_wheel, show, ext_trainer=own)
    assert proc.stdout.strip() == os.pathsep.join([own, str(folder)]) and proc.stderr == ""  # user's entry first
    proc = python_with_site(installed_wheel, show, ext_trainer=None)
    assert proc.stdout.strip() == str(folder)
    proc = python_with_site(installed_wheel, show, ext_trainer=str(folder))
    assert proc.stdout.strip() == str(folder)  # not added twice

    # nnU-Net finds our trainers by name with nothing exported (what nnUNetv2_train/_predict do)
    find = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f; "
            "c = f('XferSegTrainer_n10'); print(c.__module__, c.source, c.subset_size)")
    proc = python_with_site(installed_wheel, find, ext_trainer=None)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "nnunet_xfer.trainers.xfer_trainer_family seg 10"

    # a broken or half-removed package never disturbs Python's start-up
    broken = tmp_path / "broken"
    shutil.copytree(installed_wheel, broken)
    (broken / "nnunet_xfer" / "_startup.py").unlink()
    proc = python_with_site(broken, "print('ok')", ext_trainer=own)
    assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (0, "ok", "")
    shutil.rmtree(broken / "nnunet_xfer")
    proc = python_with_site(broken, show, ext_trainer=own)
    assert (proc.returncode, proc.stdout.strip(), proc.stderr) == (0, own, "")
