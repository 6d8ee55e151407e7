"""``nnunet-xfer select``: which slices to annotate, for a study (per fold) or for a clinic (next k).

Two uses, one small API (docs/conversion.md#choosing-the-slices-to-annotate-nnunet-xfer-select):

* :func:`select_subsets` orders each fold's training cases of a converted dataset (``random``:
  the converter's own seeded draw; ``diverse``: greedy k-centre on histograms or encoder
  features). :meth:`Selection.write` writes the selection file ``convert --selection`` reads; the
  subset of size n is the first n cases of its fold's order, so subsets are nested and never leave
  the fold's training cases.
* :func:`select_next` ranks an unlabelled pool of slices and returns the next k to annotate
  (``random``, ``diverse`` — far from what is already annotated — or ``uncertain``: where the folds
  of a trained model disagree most); :func:`write_manifest` writes them as a CSV.

Where it sits: ``random`` and ``diverse`` by histogram need only images; ``diverse`` on encoder
features needs the pretrained store; ``uncertain`` needs trained models. So this package lies above
all three stages, beside ``experiment``; the file format it writes belongs to
``dataset_conversion.selection``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nnunet_xfer.atomic import atomic_write_csv, atomic_write_json, check_replaceable
from nnunet_xfer.dataset_conversion.selection import is_selection_file, selection_record
from nnunet_xfer.errors import UserError
from nnunet_xfer.imaging import images_for_cases, list_cases
from nnunet_xfer.layout import DEFAULT_CONFIGURATION, DEFAULT_PLANS, DatasetLayout
from nnunet_xfer.selection import STRATEGIES
from nnunet_xfer.selection.features import HISTOGRAM, encoder_features, histogram_features
from nnunet_xfer.selection.kcenter import farthest_first
from nnunet_xfer.splits import convert_command, dataset_block, subset_order, verify_folders
from nnunet_xfer.study_grid import DEFAULT_SEED

#: Columns of the manifest of the next cases to annotate.
MANIFEST_COLUMNS: tuple[str, ...] = ("case_id", "image", "rank", "score", "strategy")


def _check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise UserError(f"--strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")


@dataclass(frozen=True)
class Selection:
    """Each fold's training cases of a dataset in the order they are to be annotated."""

    dataset: str
    strategy: str
    #: ``histogram``, a source name (encoder features) or None (random)
    features: str | None
    seed: int
    splits: list[dict]
    #: fold (as a string, like the JSON files) → case ids, first to annotate first
    order: dict[str, list[str]] = field(default_factory=dict)

    def subset(self, fold: int, n: int) -> list[str]:
        """The training cases of ``fold`` at size ``n`` (sorted), as convert will write them."""
        order = self.order[str(fold)]
        if not 1 <= n <= len(order):
            raise UserError(f"n={n}: fold {fold} orders {len(order)} training cases")
        return sorted(order[:n])

    def record(self) -> dict:
        """The selection file's JSON object (format: ``dataset_conversion.selection``)."""
        return selection_record(self.order, self.splits, self.strategy, self.seed,
                                features=self.features, dataset=self.dataset)

    def convert_command(self, path: Path) -> str:
        """The ``nnunet-xfer convert`` command that rewrites the dataset with this selection
        (saved at ``path``), keeping its cases, folds, seed and sizes."""
        layout = DatasetLayout.of(self.dataset)
        sizes = dataset_block(layout.raw).get("sizes") or None
        return convert_command(layout.raw, layout.name, sizes=sizes,
                               selection=Path(path).resolve())

    def write(self, path: Path, overwrite: bool = False) -> Path:
        """Write the selection file through the output guard: an existing file is replaced only
        with ``overwrite`` and only when it is a selection file; never inside the dataset."""
        claim = check_replaceable(Path(path), "select", overwrite, folder=False,
                                  written=is_selection_file,
                                  inputs=[DatasetLayout.of(self.dataset).raw])
        return atomic_write_json(claim, self.record())


def _dataset_seed(layout: DatasetLayout) -> int:
    from nnunet_xfer.trainers.xfer_subsets import dataset_seed
    try:
        return dataset_seed(json.loads(layout.dataset_json.read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return DEFAULT_SEED


def select_subsets(dataset: str | int, strategy: str = "random", features: str | None = None,
                   plans: str = DEFAULT_PLANS, configuration: str = DEFAULT_CONFIGURATION,
                   seed: int | None = None, device: str | None = None) -> Selection:
    """Order every fold's training cases of a converted dataset by ``strategy``.

    ``random``: the converter's seeded draw (``seed``, default the dataset's own), so the file
    reproduces the dataset's subsets. ``diverse``: greedy k-centre on ``features``
    (``histogram``, the default, or a pretrained source's encoder features: that fold's store
    entry for ``plans``/``configuration``); the first case is the most typical one, each next one
    the case least like any before it. Only the fold's training cases are ever ordered. ``uncertain``
    is refused here: an ensemble of the other folds has seen this fold's validation cases.
    """
    _check_strategy(strategy)
    if strategy == "uncertain":
        raise UserError("uncertain ranks an unlabelled pool with a trained fold ensemble (--pool "
                        "DIR -tr TRAINER -k K); a dataset's per-fold subsets are drawn with random "
                        "or diverse, because the other folds' models have seen each fold's "
                        "validation cases")
    if strategy == "random" and features is not None:
        raise UserError("--features applies to --strategy diverse")
    layout = DatasetLayout.of(dataset)
    splits = verify_folders(layout.existing_raw(), None)
    seed = _dataset_seed(layout) if seed is None else int(seed)
    order: dict[str, list[str]] = {}
    if strategy == "random":
        for fold, split in enumerate(splits):
            order[str(fold)] = subset_order(split["train"], fold, seed)
        return Selection(layout.name, strategy, None, seed, splits, order)
    features = features or HISTOGRAM
    every = sorted({c for split in splits for c in split["train"]})
    images = images_for_cases(layout.images_dir, every)
    if features == HISTOGRAM:
        table = dict(zip(every, histogram_features(images)))
        tables = [table] * len(splits)
    else:
        tables = _encoder_tables(images, splits, layout.name, features, plans, configuration,
                                 device)
    for fold, split in enumerate(splits):
        train = sorted(split["train"])
        x = np.vstack([tables[fold][c] for c in train])
        picks, _radii = farthest_first(x)
        order[str(fold)] = [train[i] for i in picks]
    return Selection(layout.name, strategy, features, seed, splits, order)


def _encoder_tables(images: dict[str, Path], splits: list[dict], dataset: str, source: str,
                    plans: str, configuration: str, device: str | None) -> list[dict[str, np.ndarray]]:
    """Per fold, {training case: encoder feature row} from the store entry that fold's trainer
    loads. Folds that load the same entry (all but per-fold pretraining) share one pass over
    their cases: a row depends only on its own image and the entry."""
    from nnunet_xfer.pretraining.store import trainer_entry
    by_entry: dict[Path, list[int]] = {}
    for fold in range(len(splits)):
        path = trainer_entry(dataset, source, plans, configuration, fold).path
        by_entry.setdefault(path, []).append(fold)
    tables: list[dict[str, np.ndarray]] = [{} for _ in splits]
    for folds in by_entry.values():
        cases = sorted({c for f in folds for c in splits[f]["train"]})
        rows = encoder_features({c: images[c] for c in cases}, dataset, source, plans,
                                configuration, folds[0], device)
        for f in folds:
            tables[f] = dict(zip(cases, rows))
    return tables


@dataclass(frozen=True)
class NextCases:
    """The next cases of a pool to annotate (:data:`MANIFEST_COLUMNS`), and what was left out."""

    table: pd.DataFrame
    #: pool cases left out because the dataset already holds them
    already_annotated: list[str] = field(default_factory=list)


def select_next(pool: Path, k: int, strategy: str = "uncertain", dataset: str | int | None = None,
                trainer: str | None = None, plans: str = DEFAULT_PLANS,
                configuration: str = DEFAULT_CONFIGURATION, folds: list[str | int] | None = None,
                features: str | None = None, fold: int = 0, seed: int = DEFAULT_SEED,
                device: str | None = None) -> NextCases:
    """The ``k`` slices of ``pool`` (a folder of 2D slices) to annotate next, best first.

    ``random``: a seeded draw. ``diverse``: greedy k-centre on ``features`` (histogram by default;
    a source's encoder features need ``dataset`` and use fold ``fold``'s store entry) starting from
    the slices ``dataset`` already holds; score = distance to the nearest slice annotated or picked
    before. ``uncertain``: the largest disagreement of ``trainer``'s fold models (``folds``,
    default every finished fold; ``dataset`` required); score = 1 − mean pairwise Dice. Pool slices
    whose case id the dataset already holds are left out.
    """
    _check_strategy(strategy)
    if k < 1:
        raise UserError(f"-k {k}: ask for at least one case")
    if strategy != "diverse" and features is not None:
        raise UserError("--features applies to --strategy diverse")
    if strategy == "uncertain" and (dataset is None or trainer is None):
        raise UserError("uncertain needs the trained model: -d DATASET -tr TRAINER [-p PLANS] [-f FOLDS]")
    if strategy != "uncertain" and trainer is not None:
        raise UserError("-tr applies to --strategy uncertain")
    pool_images = list_cases(Path(pool), "pool images")
    layout = DatasetLayout.of(dataset) if dataset is not None else None
    labelled: dict[str, Path] = {}
    if layout is not None:
        layout.existing_raw()
        labelled = list_cases(layout.images_dir, "images")
    already = sorted(set(pool_images) & set(labelled))
    candidates = {c: pool_images[c] for c in sorted(pool_images) if c not in labelled}
    if not candidates:
        raise UserError(f"{pool}: every slice is already in {layout.name if layout else 'the dataset'}; "
                        f"nothing left to choose from")
    ids = list(candidates)
    if strategy == "random":
        picks = list(np.random.default_rng(seed).permutation(len(ids))[:k])
        scores = [float("nan")] * len(picks)
    elif strategy == "diverse":
        features = features or HISTOGRAM
        if features != HISTOGRAM and layout is None:
            raise UserError(f"--features {features} reads a store entry: give -d DATASET")
        known = list(labelled)
        everything = {**{c: labelled[c] for c in known}, **candidates}
        x = (histogram_features(everything) if features == HISTOGRAM else
             encoder_features(everything, layout.name, features, plans, configuration, fold, device))
        order, scores = farthest_first(x, labelled=range(len(known)), limit=k)
        picks = [i - len(known) for i in order]
    else:
        from nnunet_xfer.selection.uncertainty import ensemble_disagreement, predictor_masks
        masks = predictor_masks(layout.name, trainer, plans, configuration, folds, device)
        by_case = ensemble_disagreement(candidates, masks)
        ranked = sorted(ids, key=lambda c: (-by_case[c], c))[:k]
        picks = [ids.index(c) for c in ranked]
        scores = [by_case[c] for c in ranked]
    table = pd.DataFrame({"case_id": [ids[i] for i in picks],
                          "image": [str(Path(candidates[ids[i]]).resolve()) for i in picks],
                          "rank": range(1, len(picks) + 1), "score": scores,
                          "strategy": strategy}, columns=list(MANIFEST_COLUMNS))
    return NextCases(table, already)


def _is_manifest(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().strip() == ",".join(MANIFEST_COLUMNS)
    except (OSError, UnicodeDecodeError):
        return False


def write_manifest(path: Path, next_cases: NextCases, overwrite: bool = False) -> Path:
    """Write the next cases as CSV (:data:`MANIFEST_COLUMNS`); an existing file is replaced only
    with ``overwrite`` and only when it is such a manifest."""
    claim = check_replaceable(Path(path), "select", overwrite, folder=False, written=_is_manifest,
                              inputs=[Path(p) for p in next_cases.table["image"]])
    return atomic_write_csv(claim, next_cases.table)
