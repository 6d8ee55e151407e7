"""Trainer faults: refusals are one line, come from the constructor and leave nothing behind.

A missing store entry, a subset larger than its fold, a fold that does not exist and a bad
``nnUNet_xfer_*`` value are refused in the trainer's constructor — before nnU-Net's own
constructor creates the ``fold_X`` folder and before any data is loaded. Continuing (``--c``) or
validating (``--val``) a run that has its own checkpoint does not need the store. Hostile store
entries (truncated, a pickle that runs a command, not a state dict) are refused in one line
without running anything.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from conftest import DATASET_ID, DATASET_NAME, run_cli
from nnunet_xfer.layout import CHECKPOINT_FINAL, CHECKPOINT_LATEST, DatasetLayout
from nnunet_xfer.sources import PRETRAINED_SOURCES, spec
from nnunet_xfer.study_grid import trainer_name
from nnunet_xfer.trainers.xfer_trainer_base import refuse


def build(name: str, fold: int | str = 1, continuing: bool = False):
    """A trainer built in-process exactly as ``nnUNetv2_train`` builds it (CPU)."""
    from nnunetv2.run.run_training import get_trainer_from_args
    return get_trainer_from_args(str(DATASET_ID), "2d", fold, name, "nnUNetPlans",
                                 continue_training=continuing, device=torch.device("cpu"))


def refusal(name: str, fold: int | str = 1, continuing: bool = False) -> str:
    """The one-line message the trainer's constructor refuses with."""
    with pytest.raises(SystemExit) as e:
        build(name, fold, continuing)
    text = str(e.value)
    assert text.startswith("nnunet_xfer: ") and "\n" not in text
    return text


def run_folders(results: Path) -> list[str]:
    """Names of nnU-Net run folders under the dataset's results folder (the store is not one)."""
    folder = results / DATASET_NAME
    return sorted(p.name for p in folder.iterdir() if "__" in p.name) if folder.is_dir() else []


@pytest.fixture
def results(preprocessed_dataset, tmp_path, monkeypatch) -> Path:
    """An empty ``$nnUNet_results`` for this test (the phantom dataset is planned)."""
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    return tmp_path / "results"


def write_entry(source: str, network_state: dict | None = None, raw_object=None, fold: int = 1) -> Path:
    """A store entry for ``source``: the planned network's initial weights, or any object as the file."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_xfer.pretraining.store import entry_provenance, save_entry
    layout = DatasetLayout(DATASET_NAME)
    pth = entry_of(source, fold)
    if raw_object is not None:
        pth.parent.mkdir(parents=True, exist_ok=True)
        torch.save(raw_object, pth)
        return pth
    if network_state is None:
        pm = PlansManager(str(layout.plans_json()))
        network_state = nnUNetTrainer.build_network_architecture(pm, pm.get_configuration("2d"), 1, 2, True).state_dict()
    fold = fold if spec(source).reads_target_images else None
    prov = entry_provenance(DATASET_NAME, scope="fold" if fold is not None else "external", fold=fold)
    return save_entry(pth, network_state, None, {"source": source, "trained_prefixes": ["encoder."],
                                                 **prov})


def entry_of(source: str, fold: int = 1) -> Path:
    """Where a trainer of ``fold`` (``build``'s default 1) looks: its fold's entry for sources
    reading the target, the shared one for the others."""
    fold = fold if spec(source).reads_target_images else None
    return DatasetLayout(DATASET_NAME).store_entry(source, fold=fold)


# ----------------------------------------------------------------------------- missing store entry
@pytest.mark.parametrize("source", PRETRAINED_SOURCES)
def test_missing_store_entry_refused_in_constructor_leaving_nothing(results, source):
    name = trainer_name(source, 10)
    text = refusal(name)
    entry = entry_of(source)
    assert f"no pretrained '{source}' checkpoint at {entry}" in text
    assert f"run: nnunet-xfer pretrain -d {DATASET_ID} -s {source} -p nnUNetPlans -c 2d" in text
    # cls/seg on nnU-Net's own plans need --data (torchvision weights only fit torchvision plans)
    assert ("--data FOLDER" in text) == spec(source).needs_user_data
    assert ("--fold 1" in text) == spec(source).reads_target_images
    assert run_folders(results) == [] and not entry.parent.exists()


# ----------------------------------------------------------------------------- subsets and folds
@pytest.mark.parametrize("name, fold, expected", [
    ("XferScratchTrainer_n25", 1, "subset size n=25 exceeds the 18 training cases of fold 1"),
    ("XferScratchTrainer_n125", 0, "subset size n=125 exceeds the 18 training cases of fold 0"),
    ("XferRecTrainer_n50", 2, "subset size n=50 exceeds the 18 training cases of fold 2"),
    ("XferScratchTrainer_n5", 7, "splits_final.json has 4 folds (0..3); choose another fold"),
    ("XferJigsawTrainer_n5", "all", "fold 'all' has no nested subsets; train XferJigsawTrainer_nall"),
])
def test_impossible_subset_refused_in_constructor_leaving_nothing(results, name, fold, expected):
    assert expected in refusal(name, fold)
    assert run_folders(results) == []


# ----------------------------------------------------------------------------- settings
@pytest.mark.parametrize("var, value, expected", [
    ("nnUNet_xfer_epochs", "abc", "nnUNet_xfer_epochs='abc' is not an integer"),
    ("nnUNet_xfer_iterations", "0", "nnUNet_xfer_iterations must be at least 1, got 0"),
    ("nnUNet_xfer_seed", "-3", "nnUNet_xfer_seed must be at least 0, got -3"),
    ("nnUNet_xfer_lr_factor", "0", "nnUNet_xfer_lr_factor must be above 0"),
    ("nnUNet_xfer_lr_factor", "fast", "nnUNet_xfer_lr_factor='fast' is not a number"),
    ("nnUNet_xfer_warmup_fraction", "1.5", "nnUNet_xfer_warmup_fraction must lie in 0…1, got 1.5"),
    ("nnUNet_xfer_freeze_epochs", "-1", "nnUNet_xfer_freeze_epochs must be at least 0, got -1"),
    ("nnUNet_xfer_freeze_epochs", "2.5", "nnUNet_xfer_freeze_epochs='2.5' is not an integer"),
])
def test_bad_setting_refused_in_constructor_leaving_nothing(results, monkeypatch, var, value, expected):
    write_entry("rec")
    monkeypatch.setenv(var, value)
    assert expected in refusal("XferRecTrainer_n5")
    assert run_folders(results) == []


def test_schedule_options_do_not_concern_scratch(results, monkeypatch):
    """Scratch has no transferred parts: the options are not read, the run records nnU-Net's schedule."""
    monkeypatch.setenv("nnUNet_xfer_lr_factor", "0.1")
    trainer = build("XferScratchTrainer_n5")
    assert trainer.xfer_info["schedule"]["explicit"] is False and trainer.xfer_info["schedule"]["lr_factor"] == 1.0


# ----------------------------------------------------------------------------- resuming without the store
@pytest.mark.parametrize("continuing, checkpoint, refused", [
    (True, CHECKPOINT_LATEST, False),  # --c: nnU-Net loads the run's own checkpoint
    (False, CHECKPOINT_FINAL, False),  # --val (or a rerun that only validates)
    (True, None, True),  # --c without a checkpoint: nnU-Net starts fresh, the source is needed
    (False, CHECKPOINT_LATEST, True),  # a fresh run over an interrupted one needs the source
])
def test_store_needed_only_when_the_source_is_loaded(results, continuing, checkpoint, refused):
    name = "XferJigsawTrainer_n5"
    fold = DatasetLayout(DATASET_NAME).fold_folder(name, 1)
    if checkpoint:
        fold.mkdir(parents=True)
        (fold / checkpoint).write_bytes(b"")  # only its presence is read by the constructor
    if refused:
        assert "no pretrained 'jigsaw' checkpoint" in refusal(name, continuing=continuing)
        assert fold.is_dir() == bool(checkpoint) and not (fold.is_dir() and any(fold.glob("training_log_*")))
    else:
        trainer = build(name, continuing=continuing)
        assert trainer.xfer_info["continue_requested"] is continuing


# ----------------------------------------------------------------------------- the one exit helper
@pytest.mark.parametrize("message", [
    "cannot read checkpoint (UnpicklingError: Weights only load failed.\n\t(1) In PyTorch 2.6 ...\n\t(2) ...)",
    "x" * 2000 + " run: nnunet-xfer pretrain -d 501 -s rec -p nnUNetPlans -c 2d",
])
def test_refuse_is_one_bounded_line_keeping_the_command(message):
    text = str(refuse(message))
    assert text.startswith("nnunet_xfer: ") and "\n" not in text and "\t" not in text
    assert len(text) <= 620
    assert text.endswith(" ".join(message.split())[-40:])  # the end (where the command is) survives


# ----------------------------------------------------------------------------- hostile store entries
class _RunsACommand:
    """Pickles to a call of ``os.system``: loading it without the restricted unpickler runs it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("kind", ["truncated", "runs_a_command", "not_a_state_dict"])
def test_hostile_store_entry_refused_in_one_line(results, tmp_path, kind):
    marker = tmp_path / "ran"
    if kind == "truncated":
        pth = write_entry("rec")
        pth.write_bytes(pth.read_bytes()[:1000])
    elif kind == "runs_a_command":
        write_entry("rec", raw_object={"network": _RunsACommand(marker)})
    else:
        write_entry("rec", raw_object=[1, 2, 3])
    text = refusal("XferRecTrainer_n5")  # in the constructor, before nnU-Net starts
    assert "rec.pth" in text and "no pretrained" not in text
    assert not marker.exists()
    assert run_folders(results) == []


# ----------------------------------------------------------------------------- the real command
@pytest.mark.parametrize("trainer, expected", [
    ("XferJigsawTrainer_n10", "nnunet_xfer: no pretrained 'jigsaw' checkpoint at "),
    ("XferScratchTrainer_n25", "nnunet_xfer: subset size n=25 exceeds the 18 training cases of fold 0"),
])
def test_nnunetv2_train_refuses_fast_in_one_line(results, trainer, expected):
    started = time.perf_counter()
    proc = run_cli("nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", trainer, "-device", "cpu",
                   env={"nnUNet_results": str(results)}, check=False)
    elapsed = time.perf_counter() - started
    print(f"{trainer}: refused after {elapsed:.1f} s")  # benchmarks/ has the timing; here for the log only
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith(expected)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    assert run_folders(results) == []


# ----------------------------------------------------------------------------- identity by content
def _entry_that_saw(source: str, cases: list[str], tmp_path: Path, **meta) -> Path:
    """A store entry whose record lists the fingerprints of ``cases``' images, as a pretraining
    on a float32 copy of them (another type and name than the dataset's) would record them."""
    import numpy as np
    import SimpleITK as sitk
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_xfer.imaging import content_fingerprints, image_file
    from nnunet_xfer.pretraining.identity import FINGERPRINTS_KEY
    from nnunet_xfer.pretraining.store import entry_provenance, save_entry
    layout = DatasetLayout(DATASET_NAME)
    seen = []
    for case in cases:
        image = sitk.ReadImage(str(layout.images_dir / image_file(case)))
        copy = tmp_path / "copy" / f"photo_{case}.nrrd"
        copy.parent.mkdir(exist_ok=True)
        sitk.WriteImage(sitk.Cast(image, sitk.sitkFloat32), str(copy))
        seen += content_fingerprints(copy)
    pm = PlansManager(str(layout.plans_json()))
    state = nnUNetTrainer.build_network_architecture(pm, pm.get_configuration("2d"), 1, 2,
                                                     True).state_dict()
    fold = 1 if spec(source).reads_target_images else None
    prov = entry_provenance(DATASET_NAME, scope="fold" if fold is not None else "external",
                            fold=fold, case_ids=[] if fold is None else meta.pop("case_ids", []))
    record = {"source": source, "trained_prefixes": ["encoder."], "data": str(tmp_path / "copy"),
              **prov, **meta}
    if seen or FINGERPRINTS_KEY in meta:
        record[FINGERPRINTS_KEY] = meta.get(FINGERPRINTS_KEY, sorted(seen))
    return save_entry(entry_of(source), state, None, record, overwrite=True)


def _fold1() -> dict:
    import json
    return json.loads(DatasetLayout(DATASET_NAME).raw_splits.read_text())[1]


@pytest.mark.parametrize("source, which, refused", [
    ("seg", "train", "images of Dataset501_L3 itself"),     # shared entry: no image of the dataset
    ("seg", "val", "images of Dataset501_L3 itself"),
    ("cls", "train", "images of Dataset501_L3 itself"),
    ("rec", "val", "validation images of fold 1"),           # per-fold entry: not its validation
    ("rec", "train", None),                                  # its own training cases: fine
])
def test_entry_that_saw_a_dataset_image_is_refused_by_content(results, tmp_path, source, which,
                                                                refused):
    """Issue 19: a copy of the target in another type and format is recognised by voxel values."""
    cases = _fold1()[which][:2]
    _entry_that_saw(source, cases, tmp_path)
    name = trainer_name(source, 5)
    if refused is None:
        assert build(name).xfer_info["source"] == source
        return
    text = refusal(name)
    assert refused in text and "found by their voxel values" in text and "2 " in text
    assert f"case {cases[0]}" in text and "nnunet-xfer pretrain" in text
    assert run_folders(results) == []


def test_external_entry_without_its_image_list_is_refused(results, tmp_path):
    _entry_that_saw("seg", [], tmp_path)          # trained on --data, but lists no fingerprints
    text = refusal(trainer_name("seg", 5))
    assert "does not list the images it was trained on" in text and "--overwrite" in text
    _entry_that_saw("seg", [], tmp_path, image_fingerprints=[])   # lists them: none was ours
    assert build(trainer_name("seg", 5)).xfer_info["source"] == "seg"
