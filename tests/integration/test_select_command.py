"""`select` → `convert --selection` → `nnUNetv2_train` at n = 1 and 2, and the next cases of a pool.

On the session's converted 64² phantom (Dataset501_L3, 24 cases, 4 folds of 18 training cases):
the selection files (random reproduces the converter's subsets; diverse is deterministic and
nested inside each fold), a diverse selection honoured by the real trainer at n = 1 and n = 2 (a
batch of 2 from fewer cases), diverse on a store entry's encoder, and the clinic's manifest of the
next cases (diverse from what is annotated; uncertain from a two-fold model).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from conftest import DATASET_ID, DATASET_NAME, run_cli
from nnunet_xfer.errors import UserError
from nnunet_xfer.selection import select_subsets
from nnunet_xfer.selection.uncertainty import mask_disagreement, predictor_masks
from nnunet_xfer.splits import SPLITS_DIGEST_KEY, splits_digest


def select(*args: str, check: bool = True, env: dict | None = None):
    return run_cli("nnunet-xfer", "select", *args, check=check, env=env)


def test_selection_files_random_reproduces_convert_and_diverse_is_nested(raw_dataset, tmp_path):
    splits = json.loads((raw_dataset / "splits_final.json").read_text())
    subsets = json.loads((raw_dataset / "subsets.json").read_text())
    select("-d", str(DATASET_ID), "-o", str(tmp_path / "random.json"))
    random = json.loads((tmp_path / "random.json").read_text())
    for fold, per in subsets["folds"].items():
        for n, ids in per.items():  # the converter's own subsets are prefixes of the random order
            assert sorted(random["order"][fold][:int(n)]) == ids
    proc = select("-d", str(DATASET_ID), "--strategy", "diverse", "-o", str(tmp_path / "a.json"))
    assert f"--selection {tmp_path / 'a.json'} --overwrite" in proc.stdout  # the next command
    select("-d", str(DATASET_ID), "--strategy", "diverse", "-o", str(tmp_path / "b.json"))
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()  # deterministic
    diverse = json.loads((tmp_path / "a.json").read_text())
    assert diverse["strategy"] == "diverse" and diverse["features"] == "histogram"
    for fold, split in enumerate(splits):
        order = diverse["order"][str(fold)]
        assert sorted(order) == sorted(split["train"])  # every training case, no validation case
    assert diverse["order"] != random["order"]
    # outputs are never replaced silently, and never a file select did not write
    again = select("-d", str(DATASET_ID), "-o", str(tmp_path / "a.json"), check=False)
    assert again.returncode == 2 and "--overwrite" in again.stderr
    (tmp_path / "mine.json").write_text("{}")
    mine = select("-d", str(DATASET_ID), "-o", str(tmp_path / "mine.json"), "--overwrite", check=False)
    assert mine.returncode == 2 and "not written by nnunet-xfer select" in mine.stderr
    uncertain = select("-d", str(DATASET_ID), "--strategy", "uncertain", "-o", str(tmp_path / "u.json"),
                       check=False)
    assert uncertain.returncode == 2 and "--pool" in uncertain.stderr


def copy_preprocessed(source: Path, target: Path) -> None:
    """The session's preprocessed dataset for a private copy of the same cases (same images give
    the same plans and arrays; the folds are convert's own)."""
    for item in source.iterdir():
        if item.name == "splits_final.json":
            continue
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, target / item.name)


def test_selection_honoured_by_nnunet_train_at_n1_and_n2(phantom_dir, preprocessed_dataset,
                                                          nnunet_env, tmp_path):
    select("-d", str(DATASET_ID), "--strategy", "diverse", "-o", str(tmp_path / "diverse.json"))
    order = json.loads((tmp_path / "diverse.json").read_text())["order"]["0"]
    env = {**nnunet_env, **{k: str(tmp_path / k) for k in ("nnUNet_raw", "nnUNet_preprocessed",
                                                             "nnUNet_results")}}
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        Path(env[k]).mkdir()
    run_cli("nnunet-xfer", "convert", "--cases", str(phantom_dir / "cases.csv"), "-d",
            str(DATASET_ID), "--sizes", "1,2,3,5", "--selection", str(tmp_path / "diverse.json"),
            env=env)
    raw = Path(env["nnUNet_raw"]) / DATASET_NAME
    subsets = json.loads((raw / "subsets.json").read_text())
    assert subsets["folds"]["0"]["3"] == sorted(order[:3]) and subsets["orders"]["0"] == order
    assert json.loads((raw / "dataset.json").read_text())["nnunet_xfer"]["selection"]["strategy"] == "diverse"
    pre = Path(env["nnUNet_preprocessed"]) / DATASET_NAME
    copy_preprocessed(preprocessed_dataset, pre)
    # fold 0 validates on one case (validation is most of a tiny run's time); its training cases,
    # hence the selected subsets, stay as convert wrote them
    splits = json.loads((raw / "splits_final.json").read_text())
    splits[0]["val"] = splits[0]["val"][:1]
    for folder in (raw, pre):
        (folder / "splits_final.json").write_text(json.dumps(splits))
    (raw / "subsets.json").write_text(json.dumps({**subsets, SPLITS_DIGEST_KEY: splits_digest(splits)}))
    for n in (1, 2):
        trainer = f"XferScratchTrainer_n{n}"
        run_cli("nnUNetv2_train", str(DATASET_ID), "2d", "0", "-tr", trainer, "-device", "cpu", env=env)
        fold = Path(env["nnUNet_results"]) / DATASET_NAME / f"{trainer}__nnUNetPlans__2d" / "fold_0"
        assert json.loads((fold / "xfer_subset.json").read_text())["train"] == sorted(order[:n])
        sampling = json.loads((fold / "debug.json").read_text())["xfer_info"]["sampling"]
        batch = sampling["batch_size"]
        assert sampling["n_train"] == n and sampling["with_replacement"] and batch >= 2
        assert sampling["patches_per_case_per_epoch"] == pytest.approx(2 * batch / n)  # 2 iterations
        assert (fold / "checkpoint_final.pth").is_file()
        assert [p.name for p in (fold / "validation").glob("*.nii.gz")] == [f"{splits[0]['val'][0]}.nii.gz"]
        log = "".join(p.read_text() for p in fold.glob("training_log*.txt"))
        assert (f"n={n} is smaller than the batch size {batch}" in log) == (n < batch)


def test_nnunet_fills_a_batch_from_fewer_cases(preprocessed_dataset):
    """What the trainers' record says, checked on nnU-Net's own loader: a batch of B from one case."""
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    pm = PlansManager(str(preprocessed_dataset / "nnUNetPlans.json"))
    cm = pm.get_configuration("2d")
    folder = preprocessed_dataset / cm.data_identifier
    dataset_class = infer_dataset_class(str(folder))
    case = sorted(dataset_class.get_identifiers(str(folder)))[0]
    data = dataset_class(str(folder), [case])
    labels = pm.get_label_manager(json.loads((preprocessed_dataset / "dataset.json").read_text()))
    loader = nnUNetDataLoader(data, 4, cm.patch_size, cm.patch_size, labels,
                              oversample_foreground_percent=0.33)
    np.random.seed(0)
    assert list(loader.get_indices()) == [case] * 4
    batch = loader.generate_train_batch()
    assert batch["data"].shape[0] == 4 and list(batch["keys"]) == [case] * 4


def pool_of(raw_dataset: Path, folder: Path, shift_hu: float = 0.0) -> dict[str, Path]:
    """Three renamed copies of dataset slices and one whose muscle and fat are shifted."""
    folder.mkdir()
    sources = sorted((raw_dataset / "imagesTr").glob("*_0000.nii.gz"))[:4]
    pool = {}
    for i, src in enumerate(sources):
        img = sitk.ReadImage(str(src))
        if i == 3:
            arr = sitk.GetArrayFromImage(img).astype(np.float32)
            arr[(arr > -200) & (arr < 200)] += shift_hu
            shifted = sitk.GetImageFromArray(arr)
            shifted.CopyInformation(img)
            img = shifted
        pool[f"new_{i}"] = folder / f"new_{i}.nii.gz"
        sitk.WriteImage(img, str(pool[f"new_{i}"]))
    shutil.copy(sources[0], folder / f"{sources[0].name.removesuffix('_0000.nii.gz')}.nii.gz")
    return pool


def test_next_cases_diverse_from_what_is_annotated(raw_dataset, tmp_path):
    pool_of(raw_dataset, tmp_path / "pool", shift_hu=90.0)
    out = tmp_path / "next.csv"
    proc = select("--pool", str(tmp_path / "pool"), "-d", str(DATASET_ID), "--strategy", "diverse",
                  "-k", "2", "-o", str(out))
    assert "left out 1 pool case(s) the dataset already holds" in proc.stdout
    table = pd.read_csv(out)
    assert list(table.columns) == ["case_id", "image", "rank", "score", "strategy"]
    assert table.case_id.tolist()[0] == "new_3"  # the one slice unlike any annotated one
    assert table["rank"].tolist() == [1, 2] and table.score.iloc[0] > table.score.iloc[1]


def test_next_cases_uncertain_where_the_folds_disagree(model_env, raw_dataset, tmp_path):
    from nnunet_xfer.clinical.predict import SlicePredictor
    pool = pool_of(raw_dataset, tmp_path / "pool", shift_hu=-120.0)
    out = tmp_path / "next.csv"
    select("--pool", str(tmp_path / "pool"), "-d", str(DATASET_ID), "-tr", "XferScratchTrainer_n5",
           "--strategy", "uncertain", "-k", "3", "--device", "cpu", "-o", str(out), env=model_env)
    table = pd.read_csv(out)
    assert len(table) == 3 and set(table.case_id) <= set(pool)
    # the scores are the two folds' disagreement, computed here through the predictor itself
    predictor = SlicePredictor(DATASET_NAME, "XferScratchTrainer_n5", device="cpu")
    expected = {}
    for case, path in pool.items():
        folds = predictor.predict(sitk.ReadImage(str(path))).fold_masks
        expected[case] = mask_disagreement(list(folds.values()))
    best = sorted(expected, key=lambda c: (-expected[c], c))[:3]
    assert table.case_id.tolist() == best
    assert table.score.tolist() == pytest.approx([expected[c] for c in best])
    with pytest.raises(UserError, match="uncertain needs a fold ensemble"):
        predictor_masks(DATASET_NAME, "XferScratchTrainer_n5", "nnUNetPlans", "2d", folds=["0"],
                        device="cpu")


def test_diverse_on_a_store_entrys_encoder(preprocessed_dataset, tmp_path, monkeypatch):
    import torch

    from nnunet_xfer.layout import DatasetLayout
    from nnunet_xfer.pretraining.network import build_network, load_planned
    from nnunet_xfer.pretraining.store import entry_provenance, save_entry
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    torch.manual_seed(0)
    network = build_network(load_planned(DATASET_NAME))
    save_entry(DatasetLayout(DATASET_NAME).store_entry("cls"), network.state_dict(), None,
               {"source": "cls", "trained_prefixes": ["encoder."],
                **entry_provenance(DATASET_NAME, scope="external")})
    select("-d", str(DATASET_ID), "--strategy", "diverse", "--features", "cls", "--device", "cpu",
           "-o", str(tmp_path / "a.json"), env={"nnUNet_results": str(tmp_path / "results")})
    chosen = json.loads((tmp_path / "a.json").read_text())
    splits = json.loads((preprocessed_dataset / "splits_final.json").read_text())
    assert chosen["features"] == "cls"
    assert all(sorted(chosen["order"][str(f)]) == sorted(s["train"]) for f, s in enumerate(splits))
    again = select_subsets(DATASET_ID, "diverse", features="cls", device="cpu")  # in-process
    assert again.record() == chosen  # the same order again: deterministic, CLI = API
    with pytest.raises(UserError, match="nnunet-xfer pretrain -d 501 -s rec .* --fold 0"):
        select_subsets(DATASET_ID, "diverse", features="rec", device="cpu")
