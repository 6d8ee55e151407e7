"""`nnunet-xfer evaluate` on a real 1-epoch nnU-Net run of the session's phantom dataset.

Kept apart from test_fold_evaluation.py, whose module fixture points the nnU-Net variables at a
fake results tree for the whole module.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from conftest import DATASET_ID, run_cli


def test_evaluate_real_nnunet_run(scratch_run, nnunet_env, tmp_path):
    """`nnunet-xfer evaluate` on the real 1-epoch `nnUNetv2_train ... -tr XferScratchTrainer_n5`."""
    out = tmp_path / "eval"
    run_cli("nnunet-xfer", "evaluate", "-d", str(DATASET_ID), "-o", str(out))
    cases = pd.read_csv(out / "cases.csv", dtype={"size_tag": str})
    summary = json.loads((out / "summary.json").read_text())
    splits = json.loads((Path(nnunet_env["nnUNet_preprocessed"]) / "Dataset501_L3"
                         / "splits_final.json").read_text())
    own = cases[cases.trainer == "XferScratchTrainer_n5"]
    assert sorted(own.case_id) == sorted(splits[0]["val"])
    assert (own.fold == 0).all() and (own.n == 5).all() and (own.source == "scratch").all()
    assert own.dice.between(0, 1).all() and (own.sma_cm2_ref > 0).all()
    missing = {m["trainer"]: m for m in summary["missing"]}
    assert missing["XferScratchTrainer_n5"]["missing_folds"] == list(range(1, len(splits)))
