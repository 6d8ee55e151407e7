"""Fault injection for ``nnunet-xfer pretrain`` and the pretrained store (issues 10.3 and 11).

Hostile, truncated and corrupt files in every place a checkpoint of ours is read (store entry,
resume state, torchvision weights file), SIGINT/SIGTERM and ``kill -9`` in the middle of
pretraining followed by ``--resume``, two writers of one entry, bad ``--data`` folders, the
target dataset given as a source, ``--overwrite`` over a file the store did not write, and option
combinations that do not fit. Each must end in one line (exit 2 on the CLI) with nothing
half-written, nothing foreign deleted and no payload run. The phantom is 64², pretraining runs a
few iterations on the CPU.
"""
from __future__ import annotations

import fcntl
import json
import os
import pickle
import pty
import re
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from PIL import Image

from conftest import BIN, DATASET_ID, DATASET_NAME, run_cli
from nnunet_xfer.errors import UserError
from nnunet_xfer.layout import TEMP_PREFIX, DatasetLayout, entry_lock_path, record_path, resume_path
from nnunet_xfer.pretraining.store import check_entry, file_sha256, load_entry, read_record


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here on one torch thread."""


def pretrain(resume: bool = False, overwrite: bool = False, keep_state: bool = False,
             **kw) -> Path:
    from nnunet_xfer.pretraining.run import PretrainConfig, pretrain as run
    kw.setdefault("dataset", DATASET_NAME)
    kw.setdefault("device", "cpu")
    kw.setdefault("iterations", 1)
    kw.setdefault("batch_size", 2)
    return run(PretrainConfig(**kw), resume=resume, overwrite=overwrite, progress=False,
               keep_state=keep_state)


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert text and "\n" not in text, text
    return text


@pytest.fixture(scope="module")
def genuine(preprocessed_dataset, tmp_path_factory) -> Path:
    """A results folder holding a genuine rec entry of fold 0 and its training state (2 iterations)."""
    out = tmp_path_factory.mktemp("genuine") / "results"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("nnUNet_results", str(out))
        torch.set_num_threads(1)
        pretrain(source="rec", fold=0, iterations=2, keep_state=True)
    return out


def entry_in(results: Path) -> Path:
    return DatasetLayout(DATASET_NAME).store_entry("rec", fold=0)


@pytest.fixture
def store_copy(genuine, results) -> Path:
    """A private copy of the genuine results folder (nnUNet_results points at it); the entry."""
    shutil.rmtree(results)
    shutil.copytree(genuine, results)
    return entry_in(results)


# ----------------------------------------------------------------------------- bad checkpoint files
class Payload:
    """Unpickling this runs a shell command (what a planted checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _hostile_torch(path: Path, marker: Path) -> None:
    torch.save({"network": {"w": torch.zeros(1)}, "payload": Payload(marker)}, path)


def _hostile_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(Payload(marker)))


def _truncated(path: Path, marker: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path, marker: Path) -> None:
    path.write_bytes(b"\x89this is not a checkpoint\x00" * 50)


def _empty(path: Path, marker: Path) -> None:
    path.write_bytes(b"")


BAD = {"hostile-zip": _hostile_torch, "hostile-pickle": _hostile_pickle, "truncated": _truncated,
       "garbage": _garbage, "empty": _empty}


@pytest.mark.parametrize("bad", sorted(BAD))
def test_bad_store_entry_is_refused_in_one_line(store_copy, tmp_path, bad):
    marker = tmp_path / "payload_ran"
    pth = store_copy
    meta = read_record(pth)
    BAD[bad](pth, marker)
    plans = json.loads(DatasetLayout(DATASET_NAME).plans_json().read_text())
    # the trainer checks the record first: the file is refused before anything is unpickled
    with pytest.raises(UserError, match="differs from the sha256") as e:
        check_entry(pth, meta, DATASET_NAME, plans, "2d", fold=0)
    assert "nnunet-xfer pretrain -d 501 -s rec -p nnUNetPlans -c 2d --fold 0 --overwrite" in one_line(e)
    # and reading it anyway (load_entry) is refused by the restricted unpickler
    with pytest.raises(UserError, match="cannot read pretrained checkpoint|not a state dict") as e:
        load_entry(pth)
    one_line(e)
    assert not marker.exists()


@pytest.mark.parametrize("bad", sorted(BAD))
def test_bad_resume_state_is_refused_in_one_line(store_copy, tmp_path, bad):
    marker = tmp_path / "payload_ran"
    state = resume_path(store_copy)
    BAD[bad](state, marker)
    entry_bytes = store_copy.read_bytes()
    with pytest.raises(UserError, match="cannot read training state") as e:
        pretrain(source="rec", fold=0, iterations=4, resume=True)
    assert str(state) in one_line(e) and "--overwrite" in str(e.value)
    assert not marker.exists()
    assert store_copy.read_bytes() == entry_bytes  # nothing replaced


@pytest.mark.parametrize("bad", sorted(BAD))
def test_bad_torchvision_weights_file_is_refused_in_one_line(tmp_path, bad):
    from nnunet_xfer.pretraining.torchvision_weights import load_state_dict
    marker = tmp_path / "payload_ran"
    path = tmp_path / "resnet50-weights.pth"
    torch.save({"conv1.weight": torch.zeros(2, 3, 1, 1)}, path)
    BAD[bad](path, marker)
    with pytest.raises(UserError, match="cannot read weights file|not a state dict") as e:
        load_state_dict(path)
    one_line(e)
    assert not marker.exists()


@pytest.mark.parametrize("content", ["a list", "keys missing", "another network"])
def test_resume_state_that_is_not_ours_is_refused(store_copy, content):
    state_file = resume_path(store_copy)
    state = torch.load(state_file, weights_only=True)
    if content == "a list":
        torch.save([1, 2, 3], state_file)
        match = "not a pretraining state"
    elif content == "keys missing":
        torch.save({k: v for k, v in state.items() if k != "optimizer"}, state_file)
        match = "not a pretraining state"
    else:
        key = next(iter(state["network"]))
        state["network"][key] = torch.zeros(3, 3)
        torch.save(state, state_file)
        match = "does not fit this network"
    with pytest.raises(UserError, match=match) as e:
        pretrain(source="rec", fold=0, iterations=4, resume=True)
    one_line(e)


def test_corrupt_store_record_is_refused(store_copy):
    record_path(store_copy).write_bytes(b"{not json")
    with pytest.raises(UserError, match="cannot read the record") as e:
        read_record(store_copy)
    one_line(e)
    with pytest.raises(UserError, match="cannot read the record"):
        load_entry(store_copy)


@pytest.mark.parametrize("bad", ["hostile-zip", "hostile-pickle"])
def test_hostile_resume_state_through_the_cli(store_copy, results, tmp_path, bad):
    marker = tmp_path / "payload_ran"
    BAD[bad](resume_path(store_copy), marker)
    proc = run_cli("nnunet-xfer", "pretrain", "-d", str(DATASET_ID), "-s", "rec", "--fold", "0",
                   "--iterations", "4", "--batch-size", "2", "--resume", "--device", "cpu",
                   check=False, env={"nnUNet_results": str(results)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "cannot read training state" in proc.stderr
    assert not marker.exists()


# ----------------------------------------------------------------------------- interruptions
ITERATION = re.compile(r"(\d+)/100000")


def _start(results: Path, log: Path, *extra: str, workers: int = 0) -> subprocess.Popen:
    """pretrain in its own process group, stderr on a terminal (a pty, so its bar shows the
    iterations) copied into ``log``; ``workers`` DataLoader processes."""
    env = {**os.environ, "nnUNet_results": str(results), "OMP_NUM_THREADS": "1",
           "nnUNet_n_proc_DA": str(workers)}
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))  # tqdm needs a width
    proc = subprocess.Popen(
        [str(BIN / "nnunet-xfer"), "pretrain", "-d", str(DATASET_ID), "-s", "rec", "--fold", "0",
         "--iterations", "100000", "--batch-size", "2", "--device", "cpu", *extra],
        stdout=subprocess.DEVNULL, stderr=slave, env=env, start_new_session=True)
    os.close(slave)

    def copy() -> None:
        with open(log, "wb") as f:
            while True:
                try:
                    data = os.read(master, 4096)
                except OSError:  # EIO: every writer closed the terminal
                    break
                if not data:
                    break
                f.write(data)
                f.flush()
        os.close(master)
    log.write_bytes(b"")
    threading.Thread(target=copy, daemon=True).start()
    return proc


def _wait_for_iterations(proc: subprocess.Popen, log: Path, n: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = [int(m) for m in ITERATION.findall(log.read_text(errors="replace"))]
        if done and max(done) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"pretrain ended early ({proc.returncode}): {log.read_text()[-2000:]}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"pretrain did not reach {n} iterations: {log.read_text()[-2000:]}")


def _hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(TEMP_PREFIX))


@pytest.mark.parametrize("sig, group, workers", [
    (signal.SIGTERM, False, 0), (signal.SIGINT, False, 0),
    # what experiment and SLURM send: the whole process group, DataLoader workers included (a
    # worker died first: traceback, exit 1)
    (signal.SIGTERM, True, 2)])
def test_signal_saves_the_state_and_resume_continues(preprocessed_dataset, results, tmp_path, sig,
                                                     group, workers):
    log = tmp_path / "stderr.txt"
    proc = _start(results, log, "--checkpoint-every", "100000", workers=workers)
    _wait_for_iterations(proc, log, 2)
    if group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    assert proc.wait(timeout=120) == 128 + sig, log.read_text(errors="replace")[-3000:]
    time.sleep(0.5)  # the copy of the terminal's last bytes
    text = log.read_text(errors="replace")
    last = text.strip().splitlines()[-1]
    assert "Traceback" not in text and "interrupted by" in last and "--resume" in last, text[-2000:]
    pth = entry_in(results)
    state = torch.load(resume_path(pth), weights_only=True)  # complete, and ours
    stopped = int(state["iteration"])
    assert stopped >= 2 and len(state["loss"]) == stopped
    assert not pth.exists() and _hidden_leftovers(pth.parent) == []
    out = pretrain(source="rec", fold=0, iterations=stopped + 2, resume=True)
    meta = json.loads(record_path(out).read_text())
    assert meta["resumed_from"] == stopped and meta["iterations"] == stopped + 2


def test_kill_9_leaves_only_hidden_temporaries_that_the_next_run_removes(preprocessed_dataset,
                                                                         results, tmp_path):
    log = tmp_path / "stderr.txt"
    proc = _start(results, log, "--checkpoint-every", "1")  # a state write every iteration
    _wait_for_iterations(proc, log, 3)
    proc.kill()
    proc.wait(timeout=60)
    pth = entry_in(results)
    folder = pth.parent
    # what a write cut short by kill -9 looks like (the pid is dead): it must be hidden
    planted = folder / f"{TEMP_PREFIX}.{proc.pid}.{resume_path(pth).name}"
    planted.write_bytes(b"half a checkpoint")
    visible = [p for p in folder.iterdir() if not p.name.startswith(".")]
    assert [p.name for p in visible] == [resume_path(pth).name]  # no entry, no half file
    stopped = int(torch.load(resume_path(pth), weights_only=True)["iteration"])
    assert stopped >= 1
    out = pretrain(source="rec", fold=0, iterations=stopped + 1, resume=True)
    assert out.is_file() and _hidden_leftovers(folder) == []
    assert read_record(out)["sha256"] == file_sha256(out)


# ----------------------------------------------------------------------------- two writers
def test_second_writer_is_refused_naming_the_first(preprocessed_dataset, results):
    pth = entry_in(results)
    lock = entry_lock_path(pth)
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time\n"
         f"fd = os.open({str(lock)!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "os.write(fd, str(os.getpid()).encode())\n"
         "print('locked', flush=True)\n"
         "time.sleep(120)\n"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"being written by another nnunet-xfer pretrain "
                                            f"\\(pid {holder.pid}\\)") as e:
            pretrain(source="rec", fold=0, overwrite=True)
        one_line(e)
        assert not pth.exists()
    finally:
        holder.kill()
        holder.wait()
    assert pretrain(source="rec", fold=0).is_file()  # the lock is free again


def test_two_concurrent_writers_leave_one_consistent_entry(preprocessed_dataset, results, tmp_path):
    env = {**os.environ, "nnUNet_results": str(results), "OMP_NUM_THREADS": "1"}
    cmd = [str(BIN / "nnunet-xfer"), "pretrain", "-d", str(DATASET_ID), "-s", "jigsaw",
           "--scope", "all", "--permutations", "10", "--iterations", "2", "--batch-size", "2",
           "--device", "cpu", "--overwrite"]
    procs = [subprocess.Popen(cmd + ["--seed", str(i)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = [p.returncode for p in procs]
    assert 0 in codes and set(codes) <= {0, 2}, outs
    for (out, err), code in zip(outs, codes):
        assert "Traceback" not in err, err
        if code == 2:
            assert len(err.strip().splitlines()) == 1 and "being written by another" in err
    pth = DatasetLayout(DATASET_NAME).store_entry("jigsaw")
    meta = read_record(pth)
    assert meta["sha256"] == file_sha256(pth)  # the json describes the .pth beside it
    assert meta["seed"] in (0, 1) and meta["config"]["seed"] == meta["seed"]
    assert _hidden_leftovers(pth.parent) == []


# ----------------------------------------------------------------------------- --overwrite
def test_overwrite_replaces_only_what_pretrain_wrote(preprocessed_dataset, results):
    pth = DatasetLayout(DATASET_NAME).store_entry("jigsaw")
    pth.parent.mkdir(parents=True)
    pth.write_bytes(b"my own checkpoint")
    notes = pth.parent / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(UserError, match="--overwrite refused: .* not written by nnunet-xfer") as e:
        pretrain(source="jigsaw", scope="all", permutations=10, overwrite=True)
    one_line(e)
    assert pth.read_bytes() == b"my own checkpoint"
    pth.unlink()
    first = pretrain(source="jigsaw", scope="all", permutations=10)
    again = pretrain(source="jigsaw", scope="all", permutations=10, seed=3, overwrite=True)
    assert again == first and read_record(again)["seed"] == 3 and notes.read_text() == "mine"


# ----------------------------------------------------------------------------- options
@pytest.mark.parametrize("kw, match", [
    ({"source": "rec"}, "give --fold K"),
    ({"source": "jigsaw", "scope": "fold"}, "give --fold K"),
    ({"source": "rec", "fold": 0, "scope": "all"}, "exclude each other"),
    ({"source": "rec", "fold": -1}, "--fold must be 0 or more"),
    ({"source": "rec", "fold": 7}, "--fold 7 does not exist"),
    ({"source": "rec", "scope": "some"}, "--scope 'some'"),
    ({"source": "cls", "fold": 0, "data": Path("x")}, "shared by all folds"),
    ({"source": "scratch"}, "has no pretraining"),
    ({"source": "rec", "fold": 0, "iterations": 0}, "--iterations must be positive"),
])
def test_options_that_do_not_fit_are_refused(preprocessed_dataset, results, kw, match):
    with pytest.raises(UserError, match=match) as e:
        pretrain(**kw)
    one_line(e)


# ----------------------------------------------------------------------------- bad --data
def _missing(root: Path) -> Path:
    return root / "nowhere"


def _a_file(root: Path) -> Path:
    (root / "file.txt").write_text("x")
    return root / "file.txt"


def _empty_dir(root: Path) -> Path:
    (root / "empty").mkdir()
    return root / "empty"


def _text_classes(root: Path) -> Path:
    for c in ("a", "b"):
        (root / "cls" / c).mkdir(parents=True)
        (root / "cls" / c / "x.txt").write_text("no image")
    return root / "cls"


def _truncated_png(root: Path) -> Path:
    for c in ("a", "b"):
        (root / "cls" / c).mkdir(parents=True)
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "cls" / c / "0.png")
    data = (root / "cls" / "a" / "0.png").read_bytes()
    (root / "cls" / "a" / "0.png").write_bytes(data[:30])
    return root / "cls"


def _bad_dataset_json(root: Path) -> Path:
    (root / "raw").mkdir()
    (root / "raw" / "dataset.json").write_text("{ not json")
    return root / "raw"


def _voc_without_masks(root: Path) -> Path:
    (root / "voc" / "JPEGImages").mkdir(parents=True)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "voc" / "JPEGImages" / "a.jpg")
    return root / "voc"


def _symlink_loop(root: Path) -> Path:
    (root / "loop").mkdir()
    (root / "loop" / "again").symlink_to(root / "loop", target_is_directory=True)
    return root / "loop"


@pytest.mark.parametrize("source, make, match", [
    ("seg", _missing, "is not a folder"),
    ("seg", _a_file, "is not a folder"),
    ("seg", _empty_dir, "JPEGImages"),
    ("seg", _bad_dataset_json, "dataset.json is not valid JSON"),
    ("seg", _voc_without_masks, "without masks"),
    ("cls", _text_classes, "no class sub-folders"),
    ("cls", _truncated_png, "cannot read image"),
    ("cls", _missing, "is not a folder"),
    ("rec", _symlink_loop, "holds no CT images"),
    ("rec", _empty_dir, "holds no CT images"),
])
def test_bad_data_is_refused_in_one_line(preprocessed_dataset, results, tmp_path, source, make,
                                         match):
    kw = {"fold": 0} if source == "rec" else {}
    with pytest.raises(UserError, match=match) as e:
        pretrain(source=source, data=make(tmp_path), **kw)
    one_line(e)
    assert not DatasetLayout(DATASET_NAME).store_entry(source, fold=kw.get("fold")).exists()


# ----------------------------------------------------------------------------- the target as a source
def _raw(layout: DatasetLayout, tmp: Path) -> Path:
    return layout.raw


def _raw_images(layout: DatasetLayout, tmp: Path) -> Path:
    return layout.raw / "imagesTr"


def _name(layout: DatasetLayout, tmp: Path) -> Path:
    return Path(layout.name)


def _id(layout: DatasetLayout, tmp: Path) -> Path:
    return Path(str(layout.id))


def _preprocessed(layout: DatasetLayout, tmp: Path) -> Path:
    return layout.preprocessed


def _copy(layout: DatasetLayout, tmp: Path) -> Path:
    shutil.copytree(layout.raw, tmp / "copy")
    return tmp / "copy"


def _labels_only(layout: DatasetLayout, tmp: Path) -> Path:
    (tmp / "masks").mkdir()
    for f in sorted(layout.labels_dir.iterdir())[:2]:
        shutil.copy(f, tmp / "masks" / f.name.replace(".nii.gz", "_renamed.nii.gz"))
    return tmp / "masks"


def _resaved(layout: DatasetLayout, tmp: Path) -> Path:
    (tmp / "re").mkdir()
    image = sorted(layout.images_dir.iterdir())[0]
    sitk.WriteImage(sitk.ReadImage(str(image)), str(tmp / "re" / "slice.nrrd"))
    return tmp / "re"


def _named_like(layout: DatasetLayout, tmp: Path) -> Path:
    (tmp / layout.name).mkdir()
    return tmp / layout.name


@pytest.mark.parametrize("source", ["seg", "rec"])
@pytest.mark.parametrize("make", [_raw, _raw_images, _name, _id, _preprocessed, _copy,
                                  _labels_only, _resaved, _named_like])
def test_the_target_dataset_is_never_a_source(preprocessed_dataset, results, tmp_path, source,
                                              make):
    data = make(DatasetLayout(DATASET_NAME), tmp_path)
    kw = {"fold": 0} if source == "rec" else {}
    with pytest.raises(UserError, match=f"is the target dataset {DATASET_NAME}") as e:
        pretrain(source=source, data=data, **kw)
    one_line(e)


def test_seg_on_the_target_through_the_cli(preprocessed_dataset, raw_dataset, results):
    proc = run_cli("nnunet-xfer", "pretrain", "-d", str(DATASET_ID), "-s", "seg", "--data",
                   str(raw_dataset), check=False, env={"nnUNet_results": str(results)})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "is the target dataset" in proc.stderr


# ----------------------------------------------------------------------------- identity by content
def _copy_of_the_target(raw: Path, dest: Path, how: str) -> Path:
    """The target's raw dataset copied under another name with other types (images float32,
    labels int16: issue 19's reproduction), or stored the other way round (RAS rows)."""
    dest.mkdir(parents=True)
    shutil.copy2(raw / "dataset.json", dest / "dataset.json")
    for sub, pixel in (("imagesTr", sitk.sitkFloat32), ("labelsTr", sitk.sitkInt16)):
        (dest / sub).mkdir()
        for f in sorted((raw / sub).iterdir()):
            image = sitk.Cast(sitk.ReadImage(str(f)), pixel)
            if how == "reoriented":
                image = sitk.DICOMOrient(sitk.JoinSeries(image), "RAS")[:, :, 0]
            sitk.WriteImage(image, str(dest / sub / f.name))
    return dest


@pytest.mark.parametrize("how", ["float32", "reoriented"])
def test_seg_on_a_copy_of_the_target_in_other_types_is_refused(preprocessed_dataset, results,
                                                                 tmp_path, how):
    """Issue 19: `pretrain -s seg --data` on a float32 copy of the target (labels int16) wrote
    an `external` entry trained on every target label; fingerprints of voxel values catch it."""
    raw = Path(os.environ["nnUNet_raw"]) / DATASET_NAME
    copy = _copy_of_the_target(raw, tmp_path / "MyData", how)
    assert sitk.ReadImage(str(next((copy / "imagesTr").iterdir()))).GetPixelIDTypeAsString() \
        == "32-bit float"
    with pytest.raises(UserError, match=r"is the target dataset Dataset501_L3 .*same voxels as "
                                        r"the target's case") as e:
        pretrain(source="seg", data=copy)
    one_line(e)
    assert not DatasetLayout(DATASET_NAME).store_entry("seg").exists()


def test_seg_entry_records_the_fingerprints_of_what_it_saw(preprocessed_dataset, results, tmp_path):
    from nnunet_xfer.imaging import content_fingerprints
    from nnunet_xfer.pretraining.identity import FINGERPRINTS_KEY
    voc = tmp_path / "voc"
    (voc / "JPEGImages").mkdir(parents=True)
    (voc / "SegmentationClass").mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(
            voc / "JPEGImages" / f"{k}.png")
        mask = np.zeros((48, 48), np.uint8)
        mask[5:20, 5 + k:30] = 1 + k % 2
        Image.fromarray(mask).save(voc / "SegmentationClass" / f"{k}.png")
    pth = pretrain(source="seg", data=voc)
    recorded = read_record(pth)[FINGERPRINTS_KEY]
    want = {fp for f in sorted(voc.rglob("*.png")) for fp in content_fingerprints(f)}
    assert set(recorded) == want and len(want) == 6
