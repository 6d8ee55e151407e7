"""Pretraining: jigsaw/rec transforms, learning checks of the four tasks, store entries that the
real ``nnUNetv2_train`` loads, resume, data sources (labels never read) and bad input.

In-process torch runs single-threaded here: on a shared 2-core machine, 2 OpenMP threads per
process make tiny networks many times slower than one.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image
from torch import nn

from conftest import DATASET_ID, DATASET_NAME, REAL_CT, run_cli
from nnunet_xfer.errors import UserError
from nnunet_xfer.pretraining import corruptions, jigsaw
from nnunet_xfer.pretraining.loop import train
from nnunet_xfer.pretraining.datasets import CTImages, Source
from nnunet_xfer.pretraining.store import architecture_fingerprint, load_entry
from nnunet_xfer.pretraining.tasks import ClsTask, JigsawTask, RecTask, SegTask

TOY = (32, 32)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here on one torch thread."""


def pretrain(resume: bool = False, overwrite: bool = False, progress: bool = False,
             keep_state: bool = False, **kw) -> Path:
    """``pretrain(PretrainConfig(**kw))`` on the CPU, without a progress bar."""
    from nnunet_xfer.pretraining.run import PretrainConfig, pretrain as run
    kw.setdefault("device", "cpu")
    return run(PretrainConfig(**kw), resume=resume, overwrite=overwrite, progress=progress,
               keep_state=keep_state)


# ----------------------------------------------------------------------------- jigsaw
def test_permutation_set_has_maximal_min_hamming_distance():
    perms = jigsaw.permutation_set(100, seed=0)
    assert perms.shape == (100, 9)
    assert all(sorted(p) == list(range(9)) for p in perms.tolist())
    assert len({tuple(p) for p in perms.tolist()}) == 100
    assert jigsaw.min_hamming_distance(perms) >= 6
    assert jigsaw.min_hamming_distance(jigsaw.permutation_set(10, seed=0)) >= 8
    random_set = np.array([np.random.default_rng(i).permutation(9) for i in range(100)])
    assert jigsaw.min_hamming_distance(random_set) < jigsaw.min_hamming_distance(perms)
    assert np.array_equal(perms, jigsaw.permutation_set(100, seed=0))


def test_jigsaw_shuffle_is_inverted_by_its_label():
    perms = torch.tensor(jigsaw.permutation_set(10))
    labels = torch.tensor([3, 7])
    x = torch.randn(2, 1, 36, 36)
    # no gaps: shuffling then unshuffling with the label restores the image exactly
    tiles = jigsaw.cut_tiles(x, (12, 12))
    shuffled = jigsaw.assemble(jigsaw.shuffle_tiles(tiles, perms, labels), (36, 36))
    assert not torch.equal(shuffled, x)
    back = jigsaw.unshuffle_tiles(jigsaw.disassemble(shuffled, (12, 12)), perms, labels)
    assert torch.equal(jigsaw.assemble(back, (36, 36)), x)
    # with gaps, jitter and per-tile normalisation the tiles still come back in order
    g = torch.Generator().manual_seed(0)
    tile = jigsaw.tile_size((36, 36))
    assert tile == (9, 9)
    tiles = jigsaw.normalise_tiles(jigsaw.cut_tiles(x, tile, g))
    assert torch.allclose(tiles.mean((-2, -1)), torch.zeros(2, 9, 1), atol=1e-5)
    canvas = jigsaw.assemble(jigsaw.shuffle_tiles(tiles, perms, labels), (36, 36))
    assert torch.equal(jigsaw.unshuffle_tiles(jigsaw.disassemble(canvas, tile), perms, labels), tiles)
    with pytest.raises(UserError, match="too small"):
        jigsaw.tile_size((12, 12))


def test_jigsaw_uses_the_full_depth_of_an_8_stage_encoder_at_512():
    """The shuffled patch keeps the planned size, so all 8 stages run (deepest map 4×4)."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    net = PlainConvUNet(1, 8, [4] * 8, nn.Conv2d, 3, [1] + [2] * 7, [1] * 8, 2, [1] * 7,
                        conv_bias=True, norm_op=nn.InstanceNorm2d, nonlin=nn.LeakyReLU)
    task = JigsawTask(net, 1, (512, 512), "cpu", permutations=100)
    x, labels = task.prepare({"image": torch.randn(2, 1, 512, 512)})
    assert x.shape == (2, 1, 512, 512) and labels.shape == (2,)
    assert net.encoder(x)[-1].shape[-2:] == (4, 4)
    assert task(net, x).shape == (2, 100)


# ----------------------------------------------------------------------------- rec
def test_rec_corruptions_change_input_and_leave_target():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 1, 32, 32)
    keep = x.clone()
    y = corruptions.corrupt(x, g)
    assert torch.equal(x, keep)
    assert ((y - x).abs().flatten(1).mean(1) > 0.05).all()
    u = (x - x.min()) / (x.max() - x.min())
    shuffled = corruptions.local_pixel_shuffle(u, g, p=1.0)
    assert not torch.equal(shuffled, u)
    assert torch.equal(shuffled.flatten().sort().values, u.flatten().sort().values)
    curve = corruptions.nonlinear_intensity(u, g, p=1.0)
    assert not torch.allclose(curve, u) and curve.min() >= 0 and curve.max() <= 1
    painted = corruptions.paint(u, g, p=1.0)
    assert ((painted != u).flatten(1).float().mean(1) > 0).all()
    task = RecTask(toy_network(), 1, TOY, "cpu")
    inp, target = task.prepare({"image": x})
    # the target is the image itself or (Models Genesis' flips) a flip of it; the input differs
    for i in range(len(x)):
        assert any(torch.equal(target[i], torch.flip(keep[i], dims)) for dims in ((), (1,), (2,), (1, 2)))
    assert not torch.equal(inp, target)


# ----------------------------------------------------------------------------- learning checks
def toy_network() -> nn.Module:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    torch.manual_seed(0)
    return PlainConvUNet(1, 3, [8, 16, 32], nn.Conv2d, 3, [1, 2, 2], [1, 1, 1], 2, [1, 1],
                         conv_bias=True, norm_op=nn.InstanceNorm2d, norm_op_kwargs={"affine": True},
                         nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True})


_yy, _xx = np.mgrid[:TOY[0], :TOY[1]]


class ToyBody(Source):
    """An ellipse 'body' with a bright core, jittered: CT-like structure for jigsaw/rec."""

    def sample(self, rng):
        cy, cx = 16 + rng.normal(0, 2, 2)
        a, b = rng.uniform(9, 13, 2)
        r = ((_yy - cy) / a) ** 2 + ((_xx - cx) / b) ** 2
        img = np.where(r < 1, 1.0, -1.0) + np.where(r < 0.4, 1.0, 0) + rng.normal(0, 0.1, TOY)
        return {"image": torch.tensor(img[None], dtype=torch.float32)}


class ToyShapes(Source):
    """A bright disc (class 1) or a dark square (class 2) on noise."""

    def sample(self, rng):
        img, m = rng.normal(0, 0.3, TOY), np.zeros(TOY, np.int64)
        cy, cx = rng.uniform(9, 23, 2)
        r = rng.uniform(4, 8)
        if rng.random() < 0.5:
            d = (_yy - cy) ** 2 + (_xx - cx) ** 2 < r * r
            m[d], img[d] = 1, img[d] + 1.5
        else:
            d = (abs(_yy - cy) < r) & (abs(_xx - cx) < r)
            m[d], img[d] = 2, img[d] - 1.5
        return {"image": torch.tensor(img[None], dtype=torch.float32), "mask": torch.tensor(m)}


class ToyStripes(Source):
    """Horizontal (0) or vertical (1) stripes of random frequency and phase."""

    def sample(self, rng):
        label = int(rng.integers(2))
        f, ph = rng.uniform(0.2, 0.6), rng.uniform(0, 6.3)
        img = np.sin((_yy if label else _xx) * f + ph) + rng.normal(0, 0.3, TOY)
        return {"image": torch.tensor(img[None], dtype=torch.float32), "label": label}


@pytest.mark.parametrize("source", ["jigsaw", "rec", "seg", "cls"])
def test_loss_falls_over_50_iterations(source):
    network = toy_network()
    task, data, lr = {
        "jigsaw": (lambda: JigsawTask(network, 1, TOY, "cpu", permutations=10), ToyBody, 3e-3),
        "rec": (lambda: RecTask(network, 1, TOY, "cpu"), ToyBody, 3e-3),
        "seg": (lambda: SegTask(network, 1, TOY, "cpu", num_classes=3), ToyShapes, 3e-3),
        "cls": (lambda: ClsTask(network, 1, TOY, "cpu", num_classes=2), ToyStripes, 1e-2),
    }[source]
    torch.manual_seed(0)
    batches = iter(torch.utils.data.DataLoader(data(), batch_size=8))
    state = train(network, task(), batches, iterations=50, lr=lr, device="cpu", progress=False)
    loss, metric = state["loss"].numpy(), state["metric"].numpy()
    assert len(loss) == 50 and np.isfinite(loss).all()
    assert loss[-10:].mean() < 0.85 * loss[:10].mean(), (source, loss[:10].mean(), loss[-10:].mean())
    better = metric[-10:].mean() < metric[:10].mean() if source == "rec" else \
        metric[-10:].mean() > metric[:10].mean() + 0.2
    assert better, (source, metric[:10].mean(), metric[-10:].mean())


# ----------------------------------------------------------------------------- store entries
def test_rec_and_jigsaw_entries_load_under_nnunetv2_train(preprocessed_dataset, results):
    """rec (pretrained through the CLI) is loaded by a real ``nnUNetv2_train``; jigsaw goes
    through the same transfer the trainer runs, on the network the trainer builds."""
    from nnunet_xfer.architectures.parts import network_parts
    from nnunet_xfer.trainers.xfer_weight_transfer import parts_from_prefixes, transfer_weights
    cli = run_cli("nnunet-xfer", "pretrain", "-d", str(DATASET_ID), "-s", "rec", "--iterations", "3",
                  "--fold", "0", "--device", "cpu",
                  env={"nnUNet_results": str(results), "OMP_NUM_THREADS": "1"})
    # the entry's path; no progress bar when stderr is not a terminal (a log, a pipe)
    assert cli.stdout.strip().endswith("rec.pth") and "%|" not in cli.stderr
    pretrain(dataset=str(DATASET_ID), source="jigsaw", iterations=3, permutations=10, scope="all")
    ids = sorted(p.name[:-len(".pkl")] for p in
                 (preprocessed_dataset / "nnUNetPlans_2d").glob("*.pkl"))
    fold0 = sorted(splits()[0]["train"])
    store = results / DATASET_NAME / "nnunet_xfer_pretrained" / "nnUNetPlans__2d"
    entries = {}
    for source, parts, where, cases in (
            ("rec", ["encoder.", "decoder.encoder.", "decoder."], "fold_0/", fold0),
            ("jigsaw", ["encoder.", "decoder.encoder."], "", ids)):
        state, head, meta = entries[source] = load_entry(store / f"{where}{source}.pth")
        assert meta["source"] == source and meta["iterations"] == 3
        assert meta["case_ids"] == cases and meta["data"].startswith("nnUNet_preprocessed/")
        assert meta["scope"] == ("fold" if where else "all") and meta["fold"] == (0 if where else None)
        assert meta["trained_prefixes"] == parts and head
        assert meta["task_metric"]["name"] and np.isfinite(meta["final_loss"])
        assert not any(k.startswith("decoder.seg_layers") for k in head)

    network = planned_network()
    state, _, meta = entries["jigsaw"]
    fresh_decoder = network.state_dict()["decoder.stages.0.convs.0.conv.weight"].clone()
    transfer = parts_from_prefixes(meta["trained_prefixes"], network_parts(network), "jigsaw")
    report = transfer_weights(network, state, network_parts(network), transfer)
    assert transfer == ["encoder"] and report.transferred
    after = network.state_dict()
    assert all(torch.equal(after[k], state[k]) for k in state if k.startswith("encoder."))
    assert torch.equal(after["decoder.stages.0.convs.0.conv.weight"], fresh_decoder)

    proc = run_cli("nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", "XferRecTrainer_n5",
                   "-device", "cpu", env={"nnUNet_results": str(results)})
    log = next((results / DATASET_NAME / "XferRecTrainer_n5__nnUNetPlans__2d" / "fold_0")
               .glob("training_log_*.txt")).read_text()
    assert "loaded source 'rec'" in log, proc.stdout[-2000:]
    assert f"sha256 {entries['rec'][2]['sha256']}" in log


def splits() -> list[dict]:
    from nnunet_xfer.layout import DatasetLayout
    return json.loads(DatasetLayout(DATASET_NAME).raw_splits.read_text())


def planned_network():
    from nnunet_xfer.pretraining.network import build_network, load_planned
    return build_network(load_planned(DATASET_NAME))


def write_voc(root: Path, n: int = 4, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [224, 224, 192] * 253
    for i in range(n):
        img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        mask = np.zeros((size, size), np.uint8)
        mask[5:20, 5:20], mask[25:35, 10:30], mask[0, :] = 1, 2, 255
        Image.fromarray(img).save(root / "JPEGImages" / f"im{i}.jpg")
        m = Image.fromarray(mask, mode="P")
        m.putpalette(palette)
        m.save(root / "SegmentationClass" / f"im{i}.png")
    return root


def write_image_folder(root: Path, classes=("cat", "dog"), n: int = 3, size: int = 40) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_seg_and_cls_entries_are_congruent_with_the_planned_network(preprocessed_dataset, results,
                                                                    tmp_path):
    reference = planned_network().state_dict()
    voc = write_voc(tmp_path / "voc")
    folder = write_image_folder(tmp_path / "imagefolder")
    for source, data, n_classes, parts in (("seg", voc, 3, ["encoder.", "decoder.encoder.", "decoder."]),
                                           ("cls", folder, 2, ["encoder.", "decoder.encoder."])):
        pth = pretrain(dataset=DATASET_NAME, source=source, data=data, iterations=2, batch_size=2)
        state, head, meta = load_entry(pth)
        assert list(state) == list(reference)
        assert all(state[k].shape == reference[k].shape for k in reference)
        assert meta["architecture_fingerprint"] == architecture_fingerprint(reference)
        assert meta["num_classes"] == n_classes and meta["trained_prefixes"] == parts
        assert meta["data"] == str(data) and len(meta["case_ids"]) in (4, 6)
        assert any(v.shape[0] == n_classes for v in head.values())
    assert meta["classes"] == ["cat", "dog"]


def write_nnunet_2d(root: Path, n: int = 4, size: int = 40) -> Path:
    """A 2D nnU-Net raw dataset of PNGs (not the target): discs of class 1 on noise."""
    rng = np.random.default_rng(1)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        disc = (yy - 20) ** 2 + (xx - 12 - 4 * i) ** 2 < 64
        Image.fromarray((rng.integers(0, 120, (size, size)) + 120 * disc).astype(np.uint8)).save(
            root / "imagesTr" / f"pic_{i:03d}_0000.png")
        Image.fromarray(disc.astype(np.uint8)).save(root / "labelsTr" / f"pic_{i:03d}.png")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "grey"}, "labels": {"background": 0, "disc": 1},
        "numTraining": n, "file_ending": ".png"}))
    return root


def test_seg_on_a_2d_nnunet_raw_dataset(preprocessed_dataset, results, tmp_path):
    data = write_nnunet_2d(tmp_path / "Dataset900_Discs")
    pth = pretrain(dataset=DATASET_NAME, source="seg", data=data, iterations=2, batch_size=2)
    _, head, meta = load_entry(pth)
    assert meta["num_classes"] == 2 and meta["data"] == str(data)
    assert len(meta["case_ids"]) == len(list((data / "labelsTr").iterdir()))
    assert meta["scope"] == "external" and meta["fold"] is None


def test_seg_on_the_phantom_source_task_end_to_end(preprocessed_dataset, results, tmp_path):
    """`phantom --source-task DIR` then `pretrain -s seg --data DIR` through the CLI; the record
    names a synthetic medical source, and its CT slices are prepared like the target's."""
    from nnunet_xfer.phantom import write_cohort
    from nnunet_xfer.phantom.structures import SOURCE_CLASSES
    from nnunet_xfer.pretraining.datasets import IGNORE, CTPreparation, NaturalSegmentation
    from nnunet_xfer.pretraining.network import load_planned
    from nnunet_xfer.sources import DATA_KIND_SYNTHETIC_MEDICAL
    data = tmp_path / "organs"
    write_cohort(tmp_path / "cohort", n_cases=1, size=64, n_observers=0, n_observer_cases=0,
                 seed=7, source_task=data, source_cases=3)
    proc = run_cli("nnunet-xfer", "pretrain", "-d", str(DATASET_ID), "-s", "seg", "--data",
                   str(data), "--iterations", "2", "--batch-size", "2", "--device", "cpu",
                   env={"nnUNet_results": str(results)})
    assert "wrote" in proc.stdout
    _, head, meta = load_entry(results / DATASET_NAME / "nnunet_xfer_pretrained"
                               / "nnUNetPlans__2d" / "seg.pth")
    assert meta["data_kind"] == DATA_KIND_SYNTHETIC_MEDICAL
    assert "synthetic medical" in meta["data_label"] and "COCO" not in meta["data_label"]
    assert meta["num_classes"] == len(SOURCE_CLASSES) and meta["classes"] == list(SOURCE_CLASSES)
    assert meta["scope"] == "external" and len(meta["case_ids"]) == 3
    assert any(v.shape[0] == len(SOURCE_CLASSES) for v in head.values())

    planned = load_planned(DATASET_NAME)
    cm = planned.configuration_manager
    props = planned.intensity_properties()[0]
    ct = CTPreparation(tuple(cm.spacing[-2:]), cm.normalization_schemes[0], props)
    src = NaturalSegmentation(data, (64, 64), 8, 1, ct=ct)
    assert src.is_ct and src.data_kind == DATA_KIND_SYNTHETIC_MEDICAL
    lo = (props["percentile_00_5"] - props["mean"]) / props["std"]
    hi = (props["percentile_99_5"] - props["mean"]) / props["std"]
    rng = np.random.default_rng(0)
    for _ in range(4):
        ex = src.sample(rng)
        x, m = ex["image"], ex["mask"]
        assert tuple(x.shape) == (1, 64, 64) and tuple(m.shape) == (64, 64)
        # the plans' CT normalisation (clipped to the target's percentiles), not a per-image z-score
        assert lo - 1e-4 <= float(x.min()) and float(x.max()) <= hi + 1e-4
        labels = set(torch.unique(m).tolist())
        assert labels <= set(SOURCE_CLASSES.values()) | {IGNORE} and len(labels - {IGNORE}) > 2
    # without the CT preparation the same folder is read as before (per-image z-score)
    plain = NaturalSegmentation(data, (32, 32), 8, 1).sample(rng)["image"]
    assert abs(float(plain.mean())) < 1e-3


def test_finished_run_removes_its_training_state_unless_kept(preprocessed_dataset, results):
    """A finished pretraining left its *.resume.pth (435 MB in the demo's store)."""
    pth = pretrain(dataset=DATASET_NAME, source="rec", iterations=2, batch_size=2, fold=0)
    assert pth.is_file() and not pth.with_name("rec.resume.pth").exists()
    with pytest.raises(UserError, match="no training state"):  # nothing to extend: said so
        pretrain(dataset=DATASET_NAME, source="rec", iterations=4, batch_size=2, fold=0,
                 resume=True)
    pretrain(dataset=DATASET_NAME, source="rec", iterations=2, batch_size=2, fold=0,
             overwrite=True, keep_state=True)
    assert pth.with_name("rec.resume.pth").is_file()


def test_resume_continues_from_the_saved_iteration(preprocessed_dataset, results):
    pth = pretrain(dataset=DATASET_NAME, source="rec", iterations=2, batch_size=2, fold=0,
                   keep_state=True)
    first = torch.load(pth.with_name("rec.resume.pth"), weights_only=True)
    assert int(first["iteration"]) == 2
    with pytest.raises(UserError, match="exists"):
        pretrain(dataset=DATASET_NAME, source="rec", iterations=2, batch_size=2, fold=0)
    with pytest.raises(UserError, match="other settings"):
        pretrain(dataset=DATASET_NAME, source="rec", iterations=4, batch_size=3, fold=0, resume=True)
    pretrain(dataset=DATASET_NAME, source="rec", iterations=4, batch_size=2, fold=0, resume=True,
             keep_state=True)
    second = torch.load(pth.with_name("rec.resume.pth"), weights_only=True)
    meta = json.loads(pth.with_suffix(".json").read_text())
    assert meta["resumed_from"] == 2 and meta["iterations"] == 4
    assert int(second["iteration"]) == 4 and len(second["loss"]) == 4
    assert torch.equal(second["loss"][:2], first["loss"])
    # the optimiser went on from the saved state rather than from scratch
    assert second["optimizer"]["state"][0]["step"] == 4
    with pytest.raises(UserError, match="already run 4"):
        pretrain(dataset=DATASET_NAME, source="rec", iterations=4, batch_size=2, fold=0, resume=True)


def test_labels_of_the_target_dataset_are_never_read(preprocessed_dataset, results, tmp_path,
                                                     monkeypatch):
    pre = tmp_path / "preprocessed"
    shutil.copytree(preprocessed_dataset, pre / DATASET_NAME)
    shutil.rmtree(pre / DATASET_NAME / "gt_segmentations", ignore_errors=True)
    segs = list((pre / DATASET_NAME / "nnUNetPlans_2d").glob("*_seg.*"))
    assert segs
    for f in segs:
        f.unlink()
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "no_raw"))
    pth = pretrain(dataset=DATASET_NAME, source="jigsaw", iterations=2, batch_size=2, permutations=10,
                   scope="all")
    assert json.loads(pth.with_suffix(".json").read_text())["n_cases"] > 0


# ----------------------------------------------------------------------------- CT --data
def test_ct_data_normalised_like_nnunet(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "ct"
    root.mkdir()
    vol = rng.normal(0, 400, (3, 30, 40)).astype(np.float32)
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing((1.0, 1.0, 5.0))
    sitk.WriteImage(img, str(root / "a.nii.gz"))
    props = {"mean": 40.0, "std": 50.0, "percentile_00_5": -200.0, "percentile_99_5": 300.0}
    src = CTImages(root, (24, 24), 6, (1.0, 1.0), "CTNormalization", props)
    assert src.ids == ["a.nii.gz"]
    assert np.allclose(src.volumes[0], (np.clip(vol, -200, 300) - 40) / 50, atol=1e-5)
    coarse = CTImages(root, (24, 24), 6, (0.5, 0.5), "CTNormalization", props)
    assert coarse.volumes[0].shape == (3, 60, 80)
    (root / "broken.mha").write_bytes(b"not an image")
    with pytest.raises(UserError, match="broken.mha"):
        CTImages(root, (24, 24), 6, (1.0, 1.0), "CTNormalization", props)


def test_real_ct_slice_as_unlabelled_data(tmp_path):
    f = REAL_CT / "totalseg_example" / "example_ct_L3_hu.nii.gz"
    if not f.is_file():
        pytest.skip("shared/real_ct is not available")
    props = {"mean": 30.0, "std": 150.0, "percentile_00_5": -1000.0, "percentile_99_5": 1500.0}
    src = CTImages(f, (64, 64), 16, (3.0, 3.0), "CTNormalization", props)
    batch = next(iter(torch.utils.data.DataLoader(src, batch_size=2)))
    assert batch["image"].shape == (2, 1, 64, 64)
    assert -7.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 10.0


# ----------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_with_one_line(preprocessed_dataset, results, tmp_path, monkeypatch):
    def refused(match, **kw):
        kw.setdefault("dataset", DATASET_NAME)
        kw.setdefault("iterations", 1)
        with pytest.raises(UserError, match=match) as e:
            pretrain(**kw)
        assert "\n" not in str(e.value)

    empty = tmp_path / "empty"
    empty.mkdir()
    refused("holds no CT images", source="rec", data=empty, scope="all")
    refused("no class sub-folders", source="cls", data=empty)
    refused("JPEGImages", source="seg", data=empty)
    voc = write_voc(tmp_path / "voc_nomasks")
    shutil.rmtree(voc / "SegmentationClass")
    refused("without masks", source="seg", data=voc)
    refused("only class", source="cls", data=write_image_folder(tmp_path / "one", classes=("cat",)))
    refused("smaller than a jigsaw tile", source="cls",
            data=write_image_folder(tmp_path / "tiny", size=8))
    broken = write_image_folder(tmp_path / "broken")
    (broken / "cat" / "0.png").write_bytes(b"not a png")
    refused("cannot read image", source="cls", data=broken)
    refused("needs --data", source="cls")
    refused("does not exist", source="rec", data=tmp_path / "missing", scope="all")
    # an entry that exists is refused unless --overwrite (or --resume)
    pretrain(dataset=DATASET_NAME, source="jigsaw", iterations=1, batch_size=1, permutations=10,
             scope="all")
    refused("exists", source="jigsaw", permutations=10, scope="all")
    pretrain(dataset=DATASET_NAME, source="jigsaw", iterations=1, batch_size=1, permutations=10,
             overwrite=True, scope="all")
    # a dataset that was converted but not planned/preprocessed names the nnU-Net command
    raw = tmp_path / "raw" / "Dataset777_Other"
    raw.mkdir(parents=True)
    (raw / "dataset.json").write_text("{}")
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    refused("nnUNetv2_plan_and_preprocess -d 777", dataset="Dataset777_Other", source="rec",
            scope="all")
    proc = run_cli("nnunet-xfer", "pretrain", "-d", "777", "-s", "rec", "--scope", "all", check=False,
                   env={"nnUNet_raw": str(tmp_path / "raw")})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "nnUNetv2_plan_and_preprocess" in proc.stderr


# ----------------------------------------------------------------------------- registry
def test_every_source_task_has_a_task_class_and_a_data_kind():
    from nnunet_xfer.pretraining.datasets import NATURAL_DATA
    from nnunet_xfer.pretraining.tasks import TASKS
    from nnunet_xfer.sources import DATA_TARGET, REGISTRY
    for s in REGISTRY.values():
        if s.pretrained:
            assert s.task in TASKS, s.name
            assert s.data == DATA_TARGET or s.data in NATURAL_DATA, s.name
    assert {s.task for s in REGISTRY.values() if s.pretrained} == set(TASKS)


# ----------------------------------------------------------------------------- Models Genesis
def _close(measured: float, p: float, n: int, what: str) -> None:
    sd = (p * (1 - p) / n) ** 0.5
    assert abs(measured - p) < 5 * sd, f"{what}: measured {measured:.4f}, published {p}"


def test_models_genesis_frequencies_as_published():
    """Non-linear 0.9, local shuffle 0.5, painting 0.9 (out 0.72, in 0.18), flips 0.4 — measured on
    the corruptions' effects over many images, and on the draws the pipeline records."""
    g = torch.Generator().manual_seed(1)
    n = 6000
    u = torch.rand(n, 1, 32, 32, generator=g)  # distinct values: any change is visible
    changed = lambda y: (y != u).flatten(1).any(1).float()  # noqa: E731
    _close(float(changed(corruptions.local_pixel_shuffle(u, g)).mean()), 0.5, n, "local shuffle")
    _close(float(changed(corruptions.nonlinear_intensity(u, g)).mean()), 0.9, n, "non-linear")
    painted = corruptions.paint(u, g)
    replaced = painted != u
    kept = ~replaced[:, 0]
    # in-painting keeps all but a few small boxes, so the kept pixels span the whole image;
    # out-painting keeps at most two boxes of at most 0.7 × the side, which never do
    spans = kept.any(2).all(1) & kept.any(1).all(1)
    any_paint = replaced.flatten(1).any(1)
    _close(float(any_paint.float().mean()), 0.9, n, "painting")
    _close(float((any_paint & spans).float().mean()), 0.18, n, "in-painting")
    _close(float((any_paint & ~spans).float().mean()), 0.72, n, "out-painting")

    draws = corruptions.draw(200_000, g, "cpu")
    m = 200_000
    _close(float(draws.flipped.float().mean()), 0.4, m, "flipped at least once")
    _close(float(((draws.flips >= 0).sum(1) == 2).float().mean()), 0.16, m, "flipped twice")
    _close(float(draws.shuffle.float().mean()), 0.5, m, "shuffle draws")
    _close(float(draws.nonlinear.float().mean()), 0.9, m, "non-linear draws")
    _close(float((draws.paint & ~draws.inpaint).float().mean()), 0.72, m, "out-painting draws")
    _close(float((draws.paint & draws.inpaint).float().mean()), 0.18, m, "in-painting draws")

    # the pipeline applies what it drew: target = the flips of x; nothing drawn, nothing changed
    x = torch.randn(400, 1, 16, 16, generator=g)
    inp, target, d = corruptions.corrupt_pair(x, g)
    assert torch.equal(target, corruptions.apply_flips(x, d.flips))
    untouched = ~(d.shuffle | d.nonlinear | d.paint)
    assert untouched.any() and torch.allclose(inp[untouched], target[untouched], atol=1e-5)
    assert ((inp - target).abs().flatten(1).amax(1)[~untouched] > 1e-4).all()
    single = torch.arange(16.0).view(1, 1, 4, 4)
    flips = torch.tensor([[0, -1]])
    assert torch.equal(corruptions.apply_flips(single, flips), torch.flip(single, (2,)))


# ----------------------------------------------------------------------------- per fold
def test_fold_entry_never_reads_a_validation_image_of_its_fold(preprocessed_dataset, results,
                                                               monkeypatch):
    """Every file the dataset class opens is recorded: fold 0's entry opened each of fold 0's
    training cases and nothing else (no validation case, no label array)."""
    import blosc2
    opened: list[str] = []
    real_open, real_load = blosc2.open, np.load

    def spy_open(*args, **kw):
        opened.append(Path(kw.get("urlpath", args[0] if args else "")).name)
        return real_open(*args, **kw)

    def spy_load(file, *args, **kw):
        opened.append(Path(file).name)
        return real_load(file, *args, **kw)

    monkeypatch.setattr(blosc2, "open", spy_open)
    monkeypatch.setattr(np, "load", spy_load)
    pth = pretrain(dataset=DATASET_NAME, source="rec", fold=0, iterations=3, batch_size=4)
    monkeypatch.undo()
    split = splits()[0]
    cases = {name.split(".")[0] for name in opened}
    assert opened and cases == set(split["train"]), sorted(cases ^ set(split["train"]))
    assert not cases & set(split["val"])
    assert pth == results / DATASET_NAME / "nnunet_xfer_pretrained" / "nnUNetPlans__2d" / "fold_0" / "rec.pth"
    meta = json.loads(pth.with_suffix(".json").read_text())
    assert meta["scope"] == "fold" and meta["fold"] == 0 and meta["case_ids"] == sorted(split["train"])
    assert meta["dataset"] == DATASET_NAME and meta["config"]["fold"] == 0


@pytest.mark.parametrize("options, message", [
    ((), "give --fold K"),
    (("--scope", "fold"), "give --fold K"),
    (("--fold", "0", "--scope", "all"), "exclude each other"),
    (("--fold", "9"), "--fold 9 does not exist"),
])
def test_target_sources_need_a_fold_or_scope_all(preprocessed_dataset, results, options, message):
    proc = run_cli("nnunet-xfer", "pretrain", "-d", str(DATASET_ID), "-s", "jigsaw", *options,
                   "--device", "cpu", check=False, env={"nnUNet_results": str(results)})
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    if not options:
        assert "--fold K" in proc.stderr and "--scope all" in proc.stderr


def test_sources_that_do_not_read_the_target_have_no_fold(results):
    for kw in ({"fold": 0}, {"scope": "all"}):
        with pytest.raises(UserError, match="shared by all folds; omit --fold/--scope"):
            pretrain(dataset=DATASET_NAME, source="cls", data=Path("x"), **kw)


# ----------------------------------------------------------------------------- not the target
def test_seg_on_the_target_dataset_is_refused(preprocessed_dataset, raw_dataset, results, tmp_path):
    copy = tmp_path / "my_voc_like_copy"
    shutil.copytree(raw_dataset, copy)  # the same files under another name
    resaved = tmp_path / "resaved"
    (resaved / "imagesTr").mkdir(parents=True)
    case = sorted((raw_dataset / "labelsTr").iterdir())[0]
    sitk.WriteImage(sitk.ReadImage(str(case)), str(resaved / "imagesTr" / "x.mha"))  # same voxels
    for data, why in ((raw_dataset, "raw folder"), (raw_dataset / "imagesTr", "raw folder"),
                      (Path(DATASET_NAME), "its name"), (Path(str(DATASET_ID)), "its name"),
                      (preprocessed_dataset, "preprocessed folder"),
                      (copy, "same voxels"), (resaved, "same voxels")):
        with pytest.raises(UserError, match="is the target dataset") as e:
            pretrain(dataset=DATASET_NAME, source="seg", data=data, iterations=1)
        assert why in str(e.value) and "\n" not in str(e.value), (data, str(e.value))


# ----------------------------------------------------------------------------- provenance
def test_check_entry_refuses_a_changed_checkpoint_and_replanned_plans(preprocessed_dataset, results):
    import copy
    from nnunet_xfer.pretraining.store import (PROVENANCE_KEYS, check_entry, plans_digest,
                                               read_record)
    pth = pretrain(dataset=DATASET_NAME, source="jigsaw", fold=1, iterations=1, batch_size=1,
                   permutations=10)
    plans = json.loads((preprocessed_dataset / "nnUNetPlans.json").read_text())
    meta = read_record(pth)
    assert all(k in meta for k in PROVENANCE_KEYS)
    assert meta["plans_digest"] == plans_digest(plans, "2d") and meta["plans"] == "nnUNetPlans"
    assert meta["intensity_properties"] == plans["foreground_intensity_properties_per_channel"]
    check_entry(pth, meta, DATASET_NAME, plans, "2d", fold=1)  # the genuine entry passes
    command = f"nnunet-xfer pretrain -d {DATASET_ID} -s jigsaw -p nnUNetPlans -c 2d --fold 1 --overwrite"

    def refused(match, *args, **kw):
        with pytest.raises(UserError, match=match) as e:
            check_entry(*args, **kw)
        assert command in str(e.value) and "\n" not in str(e.value)

    replanned = copy.deepcopy(plans)
    replanned["configurations"]["2d"]["batch_size"] += 1
    refused("re-planned", pth, meta, DATASET_NAME, replanned, "2d", fold=1)
    renormalised = copy.deepcopy(plans)
    renormalised["foreground_intensity_properties_per_channel"]["0"]["mean"] += 1.0
    refused("re-planned", pth, meta, DATASET_NAME, renormalised, "2d", fold=1)
    refused("not fold 0", pth, meta, DATASET_NAME, plans, "2d", fold=0)
    refused("older nnunet-xfer", pth, {k: v for k, v in meta.items() if k != "plans_digest"},
            DATASET_NAME, plans, "2d")
    state = torch.load(pth, weights_only=True)
    key = next(iter(state["network"]))
    state["network"][key] = state["network"][key] + 1
    torch.save(state, pth)
    refused("differs from the sha256", pth, read_record(pth), DATASET_NAME, plans, "2d", fold=1)


def _trainer(name: str, fold: int):
    from nnunetv2.run.run_training import get_trainer_from_args
    trainer = get_trainer_from_args(str(DATASET_ID), "2d", fold, name, "nnUNetPlans",
                                    device=torch.device("cpu"))
    trainer.initialize()
    return trainer


def test_trainer_loads_its_folds_entry_and_refuses_changed_or_stale_ones(preprocessed_dataset,
                                                                         results, monkeypatch):
    monkeypatch.delenv("nnUNet_xfer_pretrain_scope", raising=False)
    command = f"nnunet-xfer pretrain -d {DATASET_ID} -s jigsaw -p nnUNetPlans -c 2d --fold 1"
    with pytest.raises(SystemExit) as e:  # no entry for fold 1 yet: refused in the constructor
        _trainer("XferJigsawTrainer_n5", fold=1)
    assert f"run: {command}" in str(e.value) and "\n" not in str(e.value)
    pth = pretrain(dataset=DATASET_NAME, source="jigsaw", fold=1, iterations=1, batch_size=1,
                   permutations=10)
    trainer = _trainer("XferJigsawTrainer_n5", fold=1)

    def refusal() -> str:
        with pytest.raises(SystemExit) as e:
            trainer._load_source()
        assert "\n" not in str(e.value)
        return str(e.value)

    trainer._load_source()
    info = trainer.xfer_info["transfer"]
    assert info["entry"] == str(pth) and info["scope"] == "fold" and info["fold"] == 1
    assert info["reloaded"] and info["n_transferred"] > 0

    # the dataset was re-planned since (here: its intensity properties changed)
    props = trainer.plans_manager.plans["foreground_intensity_properties_per_channel"]["0"]
    props["mean"] += 5.0
    assert "re-planned" in refusal() and f"{command} --overwrite" in refusal()
    props["mean"] -= 5.0
    trainer._load_source()

    # the splits changed since: the entry saw a validation case of this fold
    record = pth.with_suffix(".json")
    meta = json.loads(record.read_text())
    val = splits()[1]["val"]
    record.write_text(json.dumps({**meta, "case_ids": meta["case_ids"] + val[:1]}))
    assert f"saw 1 validation case(s) of fold 1 ({val[0]})" in refusal()
    record.write_text(json.dumps(meta))

    # the checkpoint is not the one its record describes
    state = torch.load(pth, weights_only=True)
    torch.save({**state, "head": None}, pth)
    message = refusal()
    assert "differs from the sha256 in its record" in message and f"{command} --overwrite" in message

    # scope all: the entry pretrained on every case, explicitly chosen
    monkeypatch.setenv("nnUNet_xfer_pretrain_scope", "all")
    assert f"run: nnunet-xfer pretrain -d {DATASET_ID} -s jigsaw -p nnUNetPlans -c 2d --scope all" \
        in refusal()
    pretrain(dataset=DATASET_NAME, source="jigsaw", scope="all", iterations=1, batch_size=1,
             permutations=10)
    trainer._load_source()
    assert trainer.xfer_info["transfer"]["scope"] == "all"

    # cls with nnU-Net's own plans: the command names --data and what it must be
    monkeypatch.delenv("nnUNet_xfer_pretrain_scope")
    with pytest.raises(SystemExit) as e:  # refused in the constructor, before nnU-Net starts
        _trainer("XferClsTrainer_n5", fold=1)
    assert (f"run: nnunet-xfer pretrain -d {DATASET_ID} -s cls -p nnUNetPlans -c 2d --data FOLDER "
            f"(FOLDER: an ImageFolder root") in str(e.value)
