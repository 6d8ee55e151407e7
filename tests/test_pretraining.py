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
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def results(tmp_path, monkeypatch) -> Path:
    """A private ``nnUNet_results`` so the store entries here meet no other test's."""
    out = tmp_path / "results"
    out.mkdir()
    monkeypatch.setenv("nnUNet_results", str(out))
    return out


def pretrain(**kw) -> Path:
    from nnunet_xfer.pretraining.run import pretrain as run
    kw.setdefault("device", "cpu")
    kw.setdefault("progress", False)
    return run(**kw)


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
    assert torch.equal(target, keep) and not torch.equal(inp, keep)


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
                  "--device", "cpu", env={"nnUNet_results": str(results), "OMP_NUM_THREADS": "1"})
    assert cli.stdout.strip().endswith("rec.pth") and "pretrain rec" in cli.stderr  # path; tqdm bar
    pretrain(dataset=str(DATASET_ID), source="jigsaw", iterations=3, permutations=10)
    ids = sorted(p.name[:-len(".pkl")] for p in
                 (preprocessed_dataset / "nnUNetPlans_2d").glob("*.pkl"))
    store = results / DATASET_NAME / "nnunet_xfer_pretrained" / "nnUNetPlans__2d"
    entries = {}
    for source, parts in (("rec", ["encoder.", "decoder.encoder.", "decoder."]),
                          ("jigsaw", ["encoder.", "decoder.encoder."])):
        state, head, meta = entries[source] = load_entry(store / f"{source}.pth")
        assert meta["source"] == source and meta["iterations"] == 3
        assert meta["case_ids"] == ids and meta["data"].startswith("nnUNet_preprocessed/")
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


def test_seg_on_a_2d_nnunet_raw_dataset(raw_dataset, preprocessed_dataset, results):
    pth = pretrain(dataset=DATASET_NAME, source="seg", data=raw_dataset, iterations=2, batch_size=2)
    _, head, meta = load_entry(pth)
    assert meta["num_classes"] == 2 and meta["data"] == str(raw_dataset)
    assert len(meta["case_ids"]) == len(list((raw_dataset / "labelsTr").iterdir()))


def test_resume_continues_from_the_saved_iteration(preprocessed_dataset, results):
    pth = pretrain(dataset=DATASET_NAME, source="rec", iterations=2, batch_size=2)
    first = torch.load(pth.with_name("rec.resume.pth"), weights_only=True)
    assert int(first["iteration"]) == 2
    with pytest.raises(UserError, match="exists"):
        pretrain(dataset=DATASET_NAME, source="rec", iterations=2, batch_size=2)
    with pytest.raises(UserError, match="other settings"):
        pretrain(dataset=DATASET_NAME, source="rec", iterations=4, batch_size=3, resume=True)
    pretrain(dataset=DATASET_NAME, source="rec", iterations=4, batch_size=2, resume=True)
    second = torch.load(pth.with_name("rec.resume.pth"), weights_only=True)
    meta = json.loads(pth.with_suffix(".json").read_text())
    assert meta["resumed_from"] == 2 and meta["iterations"] == 4
    assert int(second["iteration"]) == 4 and len(second["loss"]) == 4
    assert torch.equal(second["loss"][:2], first["loss"])
    # the optimiser went on from the saved state rather than from scratch
    assert second["optimizer"]["state"][0]["step"] == 4
    with pytest.raises(UserError, match="already run 4"):
        pretrain(dataset=DATASET_NAME, source="rec", iterations=4, batch_size=2, resume=True)


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
    pth = pretrain(dataset=DATASET_NAME, source="jigsaw", iterations=2, batch_size=2, permutations=10)
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
    refused("holds no CT images", source="rec", data=empty)
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
    refused("does not exist", source="rec", data=tmp_path / "missing")
    # an entry that exists is refused unless --overwrite (or --resume)
    pretrain(dataset=DATASET_NAME, source="jigsaw", iterations=1, batch_size=1, permutations=10)
    refused("exists", source="jigsaw", permutations=10)
    pretrain(dataset=DATASET_NAME, source="jigsaw", iterations=1, batch_size=1, permutations=10,
             overwrite=True)
    # a dataset that was converted but not planned/preprocessed names the nnU-Net command
    raw = tmp_path / "raw" / "Dataset777_Other"
    raw.mkdir(parents=True)
    (raw / "dataset.json").write_text("{}")
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    refused("nnUNetv2_plan_and_preprocess -d 777", dataset="Dataset777_Other", source="rec")
    proc = run_cli("nnunet-xfer", "pretrain", "-d", "777", "-s", "rec", check=False,
                   env={"nnUNet_raw": str(tmp_path / "raw")})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "nnUNetv2_plan_and_preprocess" in proc.stderr
