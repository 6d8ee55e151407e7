"""Shared fixtures: nnU-Net folders, a tiny phantom cohort, its converted and preprocessed dataset.

Session-scoped so the expensive steps (conversion, nnU-Net planning, one short training) run once
for the whole suite. Tests that change data make their own copies.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nnunet_xfer.experiment.steps import plan_argv
from nnunet_xfer.settings import NNUNET_ON_CPU, NNUNET_PLANNER

BIN = Path(sys.executable).parent
#: Real CT test material: ``shared/real_ct`` beside the checkout (or beside a folder of worktrees).
REAL_CT = next((p / "shared" / "real_ct" for p in Path(__file__).resolve().parents[2:4]
                if (p / "shared" / "real_ct").is_dir()),
               Path(__file__).resolve().parents[2] / "shared" / "real_ct")
DATASET_ID = 501
DATASET_NAME = "Dataset501_L3"
PHANTOM_CASES = 24
PHANTOM_SIZE = 64


#: Session fixtures that run nnU-Net itself (planning, preprocessing, training): a test that uses
#: one, directly or through another fixture, is marked ``nnunet`` and ``slow``.
NNUNET_FIXTURES = frozenset({"preprocessed_dataset", "scratch_run"})


def pytest_collection_modifyitems(config, items):
    """Mark tests that run nnU-Net (``nnunet``, ``slow``); ``make test-fast`` leaves them out."""
    for item in items:
        if NNUNET_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.nnunet)
            item.add_marker(pytest.mark.slow)


def run_cli(*args: str, env: dict | None = None, check: bool = True,
            timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a console script of this environment (nnunet-xfer, nnUNetv2_*) and capture its output."""
    exe = BIN / args[0]
    cmd = [str(exe if exe.exists() else args[0]), *args[1:]]
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", errors="replace",
                          env=full_env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def cli_in_process(capsys, *args: str) -> tuple[int, str]:
    """``nnunet-xfer ARGS`` in-process (``cli.main``): (exit status, stderr)."""
    from nnunet_xfer import cli
    try:
        code = cli.main(list(args))
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def one_line_error(code: int, err: str, *words: str) -> str:
    """Assert a refusal: exit 2, no traceback, one line besides ``warning:`` lines, holding
    ``words``; return that line."""
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("warning:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@pytest.fixture(scope="session", autouse=True)
def nnunet_env(tmp_path_factory) -> dict:
    """nnU-Net's folders under a session temp dir, trainer discovery and short CPU schedules."""
    root = tmp_path_factory.mktemp("nnunet")
    from nnunet_xfer.trainers import trainer_folder
    env = {
        "nnUNet_raw": str(root / "raw"),
        "nnUNet_preprocessed": str(root / "preprocessed"),
        "nnUNet_results": str(root / "results"),
        "nnUNet_extTrainer": str(trainer_folder()),
        **NNUNET_ON_CPU,
        "nnUNet_xfer_epochs": "1",
        "nnUNet_xfer_iterations": "2",
        "OMP_NUM_THREADS": "2",
        "MPLBACKEND": "Agg",
    }
    for k in ("raw", "preprocessed", "results"):
        (root / k).mkdir()
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test (fast and repeatable on 2 shared cores)."""
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def results(tmp_path, monkeypatch) -> Path:
    """A private, empty ``$nnUNet_results`` so the store entries of a test meet no other test's."""
    out = tmp_path / "results"
    out.mkdir()
    monkeypatch.setenv("nnUNet_results", str(out))
    return out


@pytest.fixture
def nn_dirs(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """Private, empty ``$nnUNet_raw`` / ``$nnUNet_preprocessed`` for one test."""
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    raw.mkdir()
    pre.mkdir()
    monkeypatch.setenv("nnUNet_raw", str(raw))
    monkeypatch.setenv("nnUNet_preprocessed", str(pre))
    return raw, pre


@pytest.fixture(scope="session")
def two_fold_model(scratch_run, tmp_path_factory) -> Path:
    """A results folder holding a two-fold model (``clinical_data.two_fold_results``), built once
    for the session. Read-only: a test that changes a model copies it first."""
    from clinical_data import two_fold_results
    return two_fold_results(scratch_run, tmp_path_factory.mktemp("model") / "results")


@pytest.fixture(scope="module")
def model_env(two_fold_model, nnunet_env) -> dict:
    """nnU-Net variables whose results folder holds the two-fold model, set for the module: what
    ``measure --cases`` predicts with."""
    env = {**nnunet_env, "nnUNet_results": str(two_fold_model)}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield env


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory) -> Path:
    """A 24-case 64² phantom cohort with 3 observers on 6 cases."""
    from nnunet_xfer.phantom.cohort import write_cohort
    out = tmp_path_factory.mktemp("phantom") / "cohort"
    write_cohort(out, n_cases=PHANTOM_CASES, size=PHANTOM_SIZE, n_observers=3,
                 n_observer_cases=6, seed=0)
    return out


@pytest.fixture(scope="session")
def raw_dataset(phantom_dir, nnunet_env) -> Path:
    """The phantom converted to ``$nnUNet_raw/Dataset501_L3`` with sizes 5 and 10."""
    from nnunet_xfer.dataset_conversion.convert import convert
    with pytest.MonkeyPatch.context() as mp:  # a module fixture may have pointed them elsewhere
        for k, v in nnunet_env.items():
            mp.setenv(k, v)
        convert(cases_csv=phantom_dir / "cases.csv", dataset_id=DATASET_ID, name="L3", sizes=[5, 10])
    return Path(nnunet_env["nnUNet_raw"]) / DATASET_NAME


@pytest.fixture(scope="session")
def preprocessed_dataset(raw_dataset, nnunet_env) -> Path:
    """``nnUNetv2_plan_and_preprocess -d 501 -c 2d --verify_dataset_integrity`` on the phantom."""
    run_cli(*plan_argv(DATASET_ID, 1, "--verify_dataset_integrity"),
            env={**nnunet_env, **NNUNET_PLANNER})
    return Path(nnunet_env["nnUNet_preprocessed"]) / DATASET_NAME


@pytest.fixture(scope="session")
def scratch_run(preprocessed_dataset, nnunet_env) -> Path:
    """One real `nnUNetv2_train 501 2d 0 -tr XferScratchTrainer_n5 -device cpu` (1 epoch × 2 it)."""
    run_cli("nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", "XferScratchTrainer_n5",
            "-device", "cpu", env=nnunet_env)
    return (Path(nnunet_env["nnUNet_results"]) / DATASET_NAME
            / "XferScratchTrainer_n5__nnUNetPlans__2d" / "fold_0")


def benchmark_module(name: str):
    """``benchmarks/<name>.py`` imported as a module (the folder is not a package)."""
    import importlib
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def copy_tree(src: Path, dst: Path) -> Path:
    """Copy a folder for a test that modifies it."""
    shutil.copytree(src, dst)
    return dst


def one_case_validation_copy(preprocessed: Path, nnunet_env: dict, name: str) -> Path:
    """The preprocessed phantom as dataset ``name`` (raw and preprocessed) whose fold 0 validates
    on one case (fast nnU-Net validation), subsets 5 and 10 drawn from its folds; its
    preprocessed folder. Plans variants of the original are not copied."""
    import json
    from nnunet_xfer.splits import make_subsets
    raw = Path(nnunet_env["nnUNet_raw"])
    shutil.copytree(raw / DATASET_NAME, raw / name)
    pre = Path(nnunet_env["nnUNet_preprocessed"]) / name
    shutil.copytree(preprocessed, pre,
                    ignore=shutil.ignore_patterns("nnUNetPlans_*.json", "subsets.json"))
    plans = json.loads((pre / "nnUNetPlans.json").read_text())
    plans["dataset_name"] = name
    (pre / "nnUNetPlans.json").write_text(json.dumps(plans))
    splits = json.loads((pre / "splits_final.json").read_text())
    splits[0]["val"] = splits[0]["val"][:1]
    for folder in (pre, raw / name):  # raw and preprocessed folds agree, subsets drawn from them
        (folder / "splits_final.json").write_text(json.dumps(splits))
    subsets = make_subsets(splits, [5, 10], seed=12345, warn=False)
    (raw / name / "subsets.json").write_text(json.dumps(subsets))
    return pre


def predict_one_validation_case(dataset_id: int, dataset: Path, nnunet_env: dict, trainer: str,
                                plans: str, tmp_path: Path):
    """``nnUNetv2_predict`` fold 0 of a run on fold 0's first validation case; (prediction,
    image) as SimpleITK images."""
    import json
    import SimpleITK as sitk
    images = tmp_path / "in"
    images.mkdir()
    case = json.loads((dataset / "splits_final.json").read_text())[0]["val"][0]
    shutil.copy(Path(nnunet_env["nnUNet_raw"]) / dataset.name / "imagesTr" / f"{case}_0000.nii.gz",
                images)
    run_cli("nnUNetv2_predict", "-i", str(images), "-o", str(tmp_path / "out"), "-d",
            str(dataset_id), "-c", "2d", "-f", "0", "-tr", trainer, "-p", plans, "-device", "cpu",
            "--disable_tta", "-npp", "1", "-nps", "1")
    return (sitk.ReadImage(str(tmp_path / "out" / f"{case}.nii.gz")),
            sitk.ReadImage(str(images / f"{case}_0000.nii.gz")))


# --- evaluation: a 128² synthetic observer study and a fake nnU-Net results tree -----------------

def ring_mask(size: int, radii: tuple[float, float], wobble: "np.ndarray") -> "np.ndarray":
    """Annulus (a muscle-like ring) whose inner/outer radii vary smoothly with angle by ``wobble``
    ((2, k) cosine amplitudes in pixels; phases fixed)."""
    import numpy as np
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r, theta = np.hypot(yy, xx), np.arctan2(yy, xx)
    k = np.arange(1, wobble.shape[1] + 1)[:, None, None]
    shift = (wobble[:, :, None, None] * np.cos(k * theta + 0.7 * k)).sum(axis=1)
    return (r >= radii[0] + shift[0]) & (r <= radii[1] + shift[1])


def write_slice(path: Path, array, spacing=(0.8, 0.8), as_3d: bool = False) -> Path:
    """Write a 2D array as NIfTI with (row, col) spacing; ``as_3d``: nnU-Net's (1, H, W) layout."""
    import numpy as np
    import SimpleITK as sitk
    arr = np.asarray(array)
    img = sitk.GetImageFromArray(arr[None] if as_3d else arr)
    img.SetSpacing((spacing[1], spacing[0], 5.0) if as_3d else (spacing[1], spacing[0]))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def synthetic_observer_study(root: Path, n_cases: int = 8, n_observers: int = 4, size: int = 128,
                             noise_px: float = 1.0, seed: int = 0) -> Path:
    """``root/{reference,observers/obs_k,images}``: rings, observers = reference ± smooth noise."""
    import numpy as np
    rng = np.random.default_rng(seed)
    for c in range(n_cases):
        case = f"case_{c:03d}"
        base = rng.normal(0, 2.0, (2, 4))
        ref = ring_mask(size, (28, 50), base)
        write_slice(root / "reference" / f"{case}.nii.gz", ref.astype(np.uint8))
        for o in range(n_observers):
            obs = ring_mask(size, (28, 50), base + rng.normal(0, noise_px, (2, 4)))
            write_slice(root / "observers" / f"obs_{o}" / f"{case}.nii.gz", obs.astype(np.uint8))
        hu = np.where(ref, 45.0, -100.0) + rng.normal(0, 15, (size, size))
        hu[ring_mask(size, (0, 20), np.zeros((2, 1)))] = 30.0
        write_slice(root / "images" / f"{case}_0000.nii.gz", hu.astype(np.int16))
    return root


@pytest.fixture(scope="session")
def observer_study_data(tmp_path_factory) -> Path:
    """A 128² observer study: 8 cases, 4 observers, reference and CT images."""
    return synthetic_observer_study(tmp_path_factory.mktemp("observer_study"))


#: Runs of the fake results tree: (trainer folder prefix, boundary noise in px, folds present).
FAKE_RUNS = {"XferScratchTrainer_n5": (2.5, (0, 1)), "XferJigsawTrainer_n5": (1.2, (0,)),
             "XferJigsawTrainer_n10": (0.8, (0, 1)), "XferScratchTrainer_nall": (0.5, (0, 1)),
             "nnUNetTrainer": (0.5, (0, 1)), "SomeOtherTrainer": (0.5, (0, 1))}


def fake_results_tree(base: Path, n_cases: int = 12, size: int = 128, seed: int = 1) -> dict:
    """nnU-Net raw/preprocessed/results folders of ``Dataset990_Fake`` with fold predictions.

    Predictions are the reference ring ± smooth boundary noise (FAKE_RUNS); XferJigsawTrainer_n5
    lacks fold 1, XferJigsawTrainer_n10 lacks the prediction of one fold-0 case and predicts
    nothing for another (a failed case); every jigsaw fold's ``debug.json`` records that the store
    entry it loaded saw every case (``scope`` all). Observers (3, on 6 cases) are the reference
    ± 1 px noise. Returns the nnU-Net environment variables.
    """
    import json

    import numpy as np
    rng = np.random.default_rng(seed)
    name = "Dataset990_Fake"
    raw, pre, res = base / "raw" / name, base / "preprocessed" / name, base / "results" / name
    cases = [f"case_{c:03d}" for c in range(n_cases)]
    shapes = {}
    for c in cases:
        shapes[c] = rng.normal(0, 2.0, (2, 4))
        ref = ring_mask(size, (28, 50), shapes[c])
        write_slice(raw / "labelsTr" / f"{c}.nii.gz", ref.astype(np.uint8), as_3d=True)
        hu = np.where(ref, 45.0, -100.0) + rng.normal(0, 15, (size, size))
        write_slice(raw / "imagesTr" / f"{c}_0000.nii.gz", hu.astype(np.int16), as_3d=True)
    (raw / "cases.csv").write_text("case_id,height_m\n" + "".join(
        f"{c},{1.6 + 0.02 * i:.2f}\n" for i, c in enumerate(cases)))
    half = n_cases // 2
    splits = [{"train": cases[half:], "val": cases[:half]},
              {"train": cases[:half], "val": cases[half:]}]
    pre.mkdir(parents=True)
    for folder in (raw, pre):  # the dataset's folds, and nnU-Net's copy it trains on
        (folder / "splits_final.json").write_text(json.dumps(splits))
    for trainer, (noise, folds) in FAKE_RUNS.items():
        for f in folds:
            val = res / f"{trainer}__nnUNetPlans__2d" / f"fold_{f}" / "validation"
            for c in splits[f]["val"]:
                if trainer == "XferJigsawTrainer_n10" and c == cases[0]:
                    continue
                pred = ring_mask(size, (28, 50), shapes[c] + rng.normal(0, noise, (2, 4)))
                if trainer == "XferJigsawTrainer_n10" and c == cases[1]:
                    pred[:] = False
                write_slice(val / f"{c}.nii.gz", pred.astype(np.uint8), as_3d=True)
            (val / "summary.json").write_text("{}")
            if trainer.startswith("XferJigsaw"):  # the entry this fold loaded, as trainers record it
                (val.parent / "debug.json").write_text(json.dumps({"xfer_info": {"transfer": {
                    "reloaded": True, "entry": "jigsaw.pth", "scope": "all", "fold": None,
                    "data": str(pre), "case_ids": cases, "sha256": "0" * 64}}}))
    # the store as it is at evaluation time: per-fold jigsaw entries that saw only their fold's
    # training cases. They are not what the runs loaded; evaluate must not read them.
    for f, split in enumerate(splits):
        store = res / "nnunet_xfer_pretrained" / "nnUNetPlans__2d" / f"fold_{f}"
        store.mkdir(parents=True)
        (store / "jigsaw.json").write_text(json.dumps({"source": "jigsaw", "data": str(pre),
                                                       "scope": "fold", "fold": f,
                                                       "case_ids": split["train"]}))
    for o in range(3):
        for c in cases[:6]:
            obs = ring_mask(size, (28, 50), shapes[c] + rng.normal(0, 1.0, (2, 4)))
            write_slice(base / "observers" / f"obs_{o}" / f"{c}.nii.gz", obs.astype(np.uint8),
                        as_3d=True)
    return {"nnUNet_raw": str(base / "raw"), "nnUNet_preprocessed": str(base / "preprocessed"),
            "nnUNet_results": str(base / "results")}


@pytest.fixture(scope="module")
def fake_tree(tmp_path_factory):
    """``fake_results_tree`` with the nnU-Net variables pointing at it for the whole module.

    The session dataset fixtures (raw_dataset and after) pass their own variables, so a module
    using this one may still request them.
    """
    base = tmp_path_factory.mktemp("fake_tree")
    env = fake_results_tree(base)
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        yield base, env
