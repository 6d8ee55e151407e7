"""`select`: greedy k-centre, the strategies, nesting, determinism, and the selection file format.

Pure numpy and small files: no nnU-Net run (the CLI on the converted phantom and a trained model is
in tests/integration/test_select_command.py).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import write_slice
from nnunet_xfer.dataset_conversion.selection import (SELECTION_FORMAT, read_selection,
                                                      selection_orders, selection_record)
from nnunet_xfer.errors import UserError
from nnunet_xfer.selection.features import intensity_histogram
from nnunet_xfer.selection.kcenter import farthest_first
from nnunet_xfer.selection.uncertainty import ensemble_disagreement, mask_disagreement
from nnunet_xfer.splits import make_splits, make_subsets, subset_for, subset_order, verify_folders


def clusters(n_clusters: int = 4, per: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Points in tight, well separated clusters (unequal sizes would not matter) and their labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 50, (n_clusters, 6))
    x = np.vstack([c + rng.normal(0, 0.5, (per, 6)) for c in centres])
    return x, np.repeat(np.arange(n_clusters), per)


# ----------------------------------------------------------------------------- k-centre
def test_diverse_picks_one_per_cluster_before_a_second_from_any():
    x, label = clusters()
    order, radii = farthest_first(x)
    assert sorted(order) == list(range(len(x)))           # a full order, each case once
    assert sorted(label[order[:4]]) == [0, 1, 2, 3]       # one per cluster first
    assert radii[4] < 3 < min(radii[1:4])                 # then the radius collapses
    # a seeded random draw does not spread like that (it repeats a cluster within 4 picks)
    drawn = np.random.default_rng(1).permutation(len(x))[:4]
    assert len(set(label[drawn])) < 4


def test_kcentre_starts_at_the_most_typical_case_and_continues_from_the_labelled():
    x = np.array([[0.0], [1.0], [2.0], [10.0], [11.0]])
    order, _ = farthest_first(x)
    assert order[0] == 2 and order[1] == 4                 # nearest the mean, then the farthest
    order, radii = farthest_first(x, labelled=[3], limit=2)
    assert order == [0, 2] and radii == [10.0, 2.0]        # far from what is annotated first
    assert 3 not in farthest_first(x, labelled=[3])[0]


def test_histogram_measures_body_composition_in_cm2():
    fat, muscle = np.full((10, 10), -100.0), np.full((10, 10), 50.0)
    h_fat, h_muscle = intensity_histogram(fat, (1.0, 1.0)), intensity_histogram(muscle, (1.0, 1.0))
    assert h_fat.shape == (50,) and (h_fat ** 2).sum() == pytest.approx(1.0)  # 100 mm² = 1 cm²
    assert np.linalg.norm(h_fat - h_muscle) > 1
    assert (intensity_histogram(np.full((10, 10), 1000.0), (1.0, 1.0)) == 0).all()  # bone: outside


# ----------------------------------------------------------------------------- uncertain
def ring(size: int, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    d = np.hypot(yy - size / 2, xx - size / 2)
    return (d > r - 4) & (d < r)


def test_uncertain_ranks_where_a_toy_ensemble_disagrees_most(tmp_path):
    # three "fold models": thresholds that agree on clear slices and split on ambiguous ones
    rng = np.random.default_rng(0)
    contrast = {"clear_a": 200.0, "clear_b": 150.0, "murky": 22.0, "murkier": 12.0}
    images = {}
    for case, c in contrast.items():
        arr = np.where(ring(48, 18), c, 0.0) + rng.normal(0, 2, (48, 48))
        images[case] = write_slice(tmp_path / f"{case}.nii.gz", arr.astype(np.float32))
    thresholds = (10.0, 20.0, 30.0)
    scores = ensemble_disagreement(images, lambda arr, spacing: [arr > t for t in thresholds])
    ranked = sorted(scores, key=lambda c: -scores[c])
    assert set(ranked[:2]) == {"murky", "murkier"}
    assert scores["clear_a"] < 0.05 < scores["murky"]
    assert mask_disagreement([ring(32, 10), ring(32, 10)]) == 0.0
    left, right = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    left[:, :3], right[:, 5:] = True, True
    assert mask_disagreement([left, right]) == 1.0                    # no overlap at all
    assert mask_disagreement([np.zeros((4, 4), bool)] * 3) == 0.0   # empty everywhere: agreement


# ----------------------------------------------------------------------------- file format and subsets
CASES = [f"c{i:02d}" for i in range(20)]


def test_random_order_is_the_converters_own_draw_and_nested():
    splits = make_splits(CASES, 4, seed=7)
    orders = {str(f): subset_order(s["train"], f, 7) for f, s in enumerate(splits)}
    plain, chosen = make_subsets(splits, [1, 2, 5, 10], 7), make_subsets(splits, [1, 2, 5, 10], 7, orders=orders)
    assert chosen["folds"] == plain["folds"]
    for fold, per in chosen["folds"].items():
        sizes = sorted(per, key=int)
        assert all(set(per[a]) < set(per[b]) for a, b in zip(sizes, sizes[1:]))
        assert set(per["10"]) <= set(splits[int(fold)]["train"])


def test_selection_file_round_trip_and_refusals(tmp_path):
    splits = make_splits(CASES, 4, seed=7)
    order = {str(f): sorted(s["train"], reverse=True) for f, s in enumerate(splits)}
    path = tmp_path / "sel.json"
    path.write_text(json.dumps(selection_record(order, splits, "diverse", 7, features="histogram")))
    record = read_selection(path)
    assert record["format"] == SELECTION_FORMAT and selection_orders(record, splits, path) == order

    def refused(change, match):
        bad = json.loads(path.read_text())
        change(bad)
        (tmp_path / "bad.json").write_text(json.dumps(bad))
        with pytest.raises(UserError, match=match):
            selection_orders(read_selection(tmp_path / "bad.json"), splits, tmp_path / "bad.json")

    refused(lambda b: b["order"]["0"].append(splits[0]["val"][0]), "validation case")
    refused(lambda b: b["order"]["1"].append(b["order"]["1"][0]), "twice")
    refused(lambda b: b["order"].pop("3"), "no order for fold")
    refused(lambda b: b["order"]["2"].append("stranger"), "not in this dataset")
    refused(lambda b: b.update(splits_sha256="0" * 64), "made for other folds")
    with pytest.raises(UserError, match="made for other folds"):
        selection_orders(record, make_splits(CASES, 4, seed=8), path)
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(UserError, match="not a selection file"):
        read_selection(tmp_path / "other.json")


def test_subsets_from_a_selection_are_prefixes_at_every_size(tmp_path):
    splits = make_splits(CASES, 4, seed=7)
    order = {str(f): sorted(s["train"], reverse=True) for f, s in enumerate(splits)}
    subsets = make_subsets(splits, [2, 5], 7, orders=order, selection={"strategy": "diverse"})
    assert subsets["folds"]["0"]["2"] == sorted(order["0"][:2])
    # a size convert did not write is still a prefix of the stored order, never the random rule
    assert subset_for(splits, 0, 3, subsets) == sorted(order["0"][:3])
    assert subset_for(splits, 0, 3, subsets) != subset_for(splits, 0, 3, make_subsets(splits, [2], 7))
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "splits_final.json").write_text(json.dumps(splits))
    (raw / "subsets.json").write_text(json.dumps(subsets))
    assert verify_folders(raw, None) == splits
    subsets["folds"]["1"]["5"] = sorted(order["1"][1:6])  # hand-edited: no longer the prefix
    (raw / "subsets.json").write_text(json.dumps(subsets))
    with pytest.raises(UserError, match="not the first 5 cases of its selection order"):
        verify_folders(raw, None)
