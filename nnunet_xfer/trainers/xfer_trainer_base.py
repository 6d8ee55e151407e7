"""``XferTrainerBase``: nnU-Net's trainer plus a nested training subset (all ``Xfer*`` trainers).

Life cycle inside ``nnUNetv2_train`` (nnunetv2 2.8.1):

* ``__init__`` — first our checks (:meth:`XferTrainerBase._preflight`: settings, subset, store
  entry), *before* nnU-Net's constructor creates the ``fold_X`` folder or anything loads data, so
  a refused run fails in seconds and leaves nothing; then nnU-Net's constructor, the short-run
  overrides (``nnUNet_xfer_epochs``/``_iterations``) and deep supervision off for networks that
  cannot do it. ``nnUNet_xfer_seed`` seeds torch, numpy and random before nnU-Net builds anything.
* ``initialize`` (nnU-Net's) builds the network and the optimiser (nnU-Net's own for every source
  unless an explicit schedule option is set, see ``xfer_transfer``).
* ``--c`` / ``--val``: nnU-Net calls :meth:`load_checkpoint`, which opens the file with the
  restricted unpickler first (a planted pickle is refused in one line) and marks the run resumed.
* :meth:`do_split` returns the fold's nested subset and the fold's whole validation set.
* :meth:`perform_actual_validation` (nnU-Net's, at the end and under ``--val``): with
  ``nnUNet_def_n_proc=1`` its export and scoring pools are threads (``xfer_validation``).

Scratch trainers are this class as it is; trainers of pretrained sources add the source checkpoint
(and the optional fine-tuning schedule) in ``xfer_transfer.XferTransferTrainer``.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json, save_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch._dynamo import OptimizedModule

from nnunet_xfer import settings
from nnunet_xfer.architectures.parts import supports_deep_supervision
from nnunet_xfer.errors import UserError
from nnunet_xfer.layout import (CHECKPOINT_BEST, CHECKPOINT_FINAL, CHECKPOINT_LATEST, DEBUG_JSON,
                                SUBSET_RECORD, DatasetLayout)
from nnunet_xfer.nnunet_checkpoint import CHECKPOINT_ADVICE, open_nnunet_checkpoint, plain_numbers
from nnunet_xfer.study_grid import trainer_name
from nnunet_xfer.trainers import check_nnunet_version
from nnunet_xfer.trainers.xfer_schedule import NNUNET_SCHEDULE, FineTuneSchedule
from nnunet_xfer.trainers.xfer_subsets import FoldSubset, fold_subset
from nnunet_xfer.trainers.xfer_validation import one_worker_requested, pools_as_threads

check_nnunet_version()

#: nnU-Net's default iterations per epoch; validation iterations shrink in the same proportion.
_NNUNET_ITERATIONS, _NNUNET_VAL_ITERATIONS = 250, 50
#: Longest refusal text; longer ones (e.g. quoted library errors) keep their head and tail.
_REFUSAL_LIMIT = 600


def refuse(message: object) -> SystemExit:
    """The one way a trainer stops on bad input: one line, prefixed, for ``raise refuse(...)``.

    Whitespace (newlines of quoted library errors included) collapses to single spaces; a text
    longer than 600 characters keeps its beginning and its end (where the command to run is).
    """
    text = " ".join(str(message).split())
    if len(text) > _REFUSAL_LIMIT:
        text = text[:_REFUSAL_LIMIT - 200].rstrip() + " … " + text[-190:].lstrip()
    return SystemExit("nnunet_xfer: " + text)


def shorten_keys(keys: list[str], limit: int = 10) -> str:
    """A key list for the log; debug.json keeps the full list."""
    return ", ".join(keys[:limit]) + (f" … (+{len(keys) - limit} more, see debug.json)" if len(keys) > limit else "")


@dataclass(frozen=True)
class RunIdentity:
    """What names one ``nnUNetv2_train`` run; known before nnU-Net's constructor runs."""

    dataset: str
    plans: str
    configuration: str
    fold: int | str
    trainer: str

    @property
    def layout(self) -> DatasetLayout:
        """The dataset's paths."""
        return DatasetLayout(self.dataset)

    def fold_folder(self) -> Path | None:
        """``$nnUNet_results/<Dataset>/<Trainer>__<Plans>__<config>/fold_<k>`` (None: results unset)."""
        if settings.nnunet_folder_or_none("nnUNet_results") is None:
            return None
        return self.layout.fold_folder(self.trainer, self.fold, self.plans, self.configuration)


@dataclass(frozen=True)
class RunSettings:
    """Our environment variables, read (and checked) once per trainer."""

    epochs: int | None
    iterations: int | None
    seed: int | None
    schedule: FineTuneSchedule


class XferTrainerBase(nnUNetTrainer):
    """Base of the ``Xfer<Source>Trainer_n<N>`` family; subclasses only set ``source`` and ``subset_size``."""

    source: str = "scratch"
    #: training cases taken from the fold (None: the whole training fold)
    subset_size: int | None = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        continuing = bool(plans.get("continue_training", False))
        self._xfer_run = RunIdentity(plans["dataset_name"], plans["plans_name"], configuration, fold,
                                     type(self).__name__)
        self._xfer_continuing = continuing
        self._xfer_chosen: FoldSubset | None = None
        self._xfer_plans = plans  # for checks before nnU-Net's PlansManager exists
        self._xfer_settings = self._read_settings()
        self._preflight(dataset_json)
        if self._xfer_settings.seed is not None:
            seed_everything(self._xfer_settings.seed)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.xfer_info: dict = {"trainer": type(self).__name__, "source": self.source,
                                "subset_size": self.subset_size or "all", "continue_requested": continuing,
                                "seed": self._xfer_settings.seed}
        self._xfer_resumed = False
        self._xfer_split: tuple[list[str], list[str]] | None = None
        epochs, iterations = self._xfer_settings.epochs, self._xfer_settings.iterations
        if epochs is not None:
            self.num_epochs = epochs
        if iterations is not None:
            self.num_iterations_per_epoch = iterations
            self.num_val_iterations_per_epoch = max(
                1, round(iterations * _NNUNET_VAL_ITERATIONS / _NNUNET_ITERATIONS))
        self.xfer_info["short_run"] = {"nnUNet_xfer_epochs": epochs, "nnUNet_xfer_iterations": iterations,
                                       "num_epochs": self.num_epochs,
                                       "num_iterations_per_epoch": self.num_iterations_per_epoch,
                                       "num_val_iterations_per_epoch": self.num_val_iterations_per_epoch}
        self.xfer_schedule = self._xfer_settings.schedule
        self.xfer_info["schedule"] = {**self.xfer_schedule.record(), "initial_lr": self.initial_lr,
                                      "warmup_epochs": self.xfer_schedule.warmup_epochs(self.num_epochs)}
        if epochs is not None or iterations is not None:
            self.print_to_log_file(f"nnunet_xfer short run: {self.num_epochs} epochs × "
                                   f"{self.num_iterations_per_epoch} iterations "
                                   f"({self.num_val_iterations_per_epoch} validation iterations)")
        if self._xfer_settings.seed is not None:
            self.print_to_log_file(f"nnunet_xfer: seed {self._xfer_settings.seed} (torch, numpy, random)")

        arch = self.configuration_manager.network_arch_class_name
        if not supports_deep_supervision(arch):
            self.enable_deep_supervision = False
            self.print_to_log_file(f"nnunet_xfer: {arch} has no deep supervision; training without it")

    # ---------------------------------------------------------------- checks before nnU-Net starts
    def _schedule_from_env(self) -> FineTuneSchedule:
        """The fine-tuning schedule: nnU-Net's own (a scratch network has no transferred parts)."""
        return NNUNET_SCHEDULE

    def _read_settings(self) -> RunSettings:
        try:
            return RunSettings(epochs=settings.positive_int("nnUNet_xfer_epochs"),
                               iterations=settings.positive_int("nnUNet_xfer_iterations"),
                               seed=settings.positive_int("nnUNet_xfer_seed", minimum=0),
                               schedule=self._schedule_from_env())
        except UserError as e:
            raise refuse(e) from None

    def _checkpoint_to_resume(self) -> bool:
        """True when nnU-Net will load a checkpoint of this fold (``--c`` with one, or a finished run: ``--val``).

        ``--val`` is invisible to the constructor; a finished run is its only case (a fresh run
        over a finished one is still checked, later, when it starts).
        """
        folder = self._xfer_run.fold_folder()
        if folder is None:
            return False
        if (folder / CHECKPOINT_FINAL).is_file():
            return True
        return self._xfer_continuing and any((folder / n).is_file() for n in (CHECKPOINT_LATEST, CHECKPOINT_BEST))

    def _preflight(self, dataset_json: dict) -> None:
        """Refuse now, in one line, what would otherwise fail after nnU-Net's start-up.

        Runs before nnU-Net's constructor, which creates the fold folder: a refused run leaves no
        ``fold_X`` behind. Checks the subset (fold exists, n fits the fold) and, in subclasses, the
        store entry (:meth:`_check_source`).
        """
        run = self._xfer_run
        if run.fold == "all":
            if self.subset_size is not None:
                raise refuse(f"fold 'all' has no nested subsets; train "
                             f"{trainer_name(self.source, 'all')} on fold all or pick a fold")
        else:
            try:
                self._xfer_chosen = self._choose_subset(dataset_json)
            except UserError as e:
                folder = run.fold_folder()
                stored = folder is not None and (folder / SUBSET_RECORD).is_file()
                if not (stored and self._checkpoint_to_resume()):
                    raise refuse(e) from None
        self._check_source()

    def _check_source(self) -> None:
        """What the run's source needs before training (scratch: nothing)."""

    def _choose_subset(self, dataset_json: dict) -> FoldSubset | None:
        preprocessed = settings.nnunet_folder_or_none("nnUNet_preprocessed")
        if preprocessed is None:
            return None  # nnU-Net itself cannot train without it
        return fold_subset(self._xfer_run.dataset, preprocessed / self._xfer_run.dataset, self._raw_folder(),
                           self._xfer_run.fold, self.subset_size, dataset_json)

    # ---------------------------------------------------------------- helpers
    def _bare_network(self) -> torch.nn.Module:
        net = self.network.module if self.is_ddp else self.network
        return net._orig_mod if isinstance(net, OptimizedModule) else net

    def _raw_folder(self) -> Path | None:
        root = settings.nnunet_folder_or_none("nnUNet_raw")
        return root / self._xfer_run.dataset if root is not None else None

    # ---------------------------------------------------------------- subset
    def do_split(self):
        """The fold's nested training subset and its whole validation set (cached for the run)."""
        if self._xfer_split is not None:
            return self._xfer_split
        if self.fold == "all":
            self._xfer_split = super().do_split()
            return self._xfer_split
        stored = Path(self.output_folder) / SUBSET_RECORD
        if self._xfer_resumed and stored.is_file():
            record = json.loads(stored.read_text())
            self.print_to_log_file(f"nnunet_xfer: continuing; subset read back from {stored}")
        else:
            chosen = self._xfer_chosen
            if chosen is None:
                try:
                    chosen = fold_subset(self.plans_manager.dataset_name,
                                         Path(self.preprocessed_dataset_folder_base), self._raw_folder(),
                                         self.fold, self.subset_size, self.dataset_json)
                except UserError as e:
                    raise refuse(e) from None
            record = {"fold": chosen.fold, "size": chosen.size or "all", "train": chosen.train,
                      "val": chosen.val, "fold_train_size": chosen.fold_train_size,
                      "subsets_file": chosen.subsets_file}
            if self.local_rank == 0:
                save_json(record, str(stored))
        self._xfer_split = (list(record["train"]), list(record["val"]))
        self.xfer_info["subset"] = record
        self.print_to_log_file(f"nnunet_xfer subset fold {self.fold} n={record['size']} "
                               f"({len(record['train'])} of {record['fold_train_size']} training cases): "
                               f"{json.dumps(record['train'])}")
        self.print_to_log_file(f"nnunet_xfer validation: all {len(record['val'])} cases of fold {self.fold}")
        self._note_sampling(len(record["train"]))
        return self._xfer_split

    def _note_sampling(self, n_train: int) -> None:
        """Record (``xfer_info.sampling``) and log how nnU-Net fills a batch from ``n_train`` cases.

        nnU-Net's training loader draws every batch's cases uniformly *with replacement*
        (``np.random.choice(..., replace=True)``), so a batch larger than the training subset
        repeats cases, each repeat with its own random crop and augmentation; the plans' batch
        size is kept at every n (same compute for every size and source, docs/trainers.md).
        """
        batch = getattr(self, "batch_size", None)
        if batch is None:  # before initialize(): nothing is sampled yet
            return
        p = float(self.oversample_foreground_percent)
        # nnU-Net forces foreground in the last batch positions (unless probabilistic)
        forced = (None if self.probabilistic_oversampling
                  else sum(1 for j in range(batch) if not j < round(batch * (1 - p))))
        record = {"n_train": n_train, "batch_size": batch, "with_replacement": True,
                  "oversample_foreground_percent": p, "foreground_patches_per_batch": forced,
                  "num_iterations_per_epoch": self.num_iterations_per_epoch,
                  "patches_per_case_per_epoch": round(self.num_iterations_per_epoch * batch
                                                      / max(n_train, 1), 1)}
        self.xfer_info["sampling"] = record
        if n_train < batch:
            self.print_to_log_file(
                f"nnunet_xfer: n={n_train} is smaller than the batch size {batch}: nnU-Net draws "
                f"each batch's {batch} patches from the {n_train} training case(s) with "
                f"replacement (each repeat its own crop and augmentation), "
                f"{'some' if forced is None else forced} of them forced to hold foreground; "
                f"each case gives about {record['patches_per_case_per_epoch']:g} patches per epoch")

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's, on a file the restricted unpickler opened first, remembering that this run
        resumes (so the source is not loaded again).

        nnU-Net unpickles the file with ``weights_only=False`` (``--c``, ``--val``,
        ``--val_best``): a planted ``checkpoint_latest.pth`` would run its code. A file that is
        not tensors and plain types stops the run here, in one line, before nnU-Net touches it.
        (nnU-Net's method takes only a file name: it is handed the name of the file checked.)
        """
        if isinstance(filename_or_checkpoint, (str, Path)):
            try:
                open_nnunet_checkpoint(Path(filename_or_checkpoint), CHECKPOINT_ADVICE)
            except UserError as e:
                raise refuse(e) from None
            filename_or_checkpoint = str(filename_or_checkpoint)
        self._xfer_resumed = True
        super().load_checkpoint(filename_or_checkpoint)

    def save_checkpoint(self, filename: str) -> None:
        """nnU-Net's, with the training log's numpy scalars stored as Python numbers.

        Same values; the file opens about 0.3 s faster per 1000 epochs under the restricted
        unpickler that ``measure``, ``nnUNetv2_predict``'s guard and ``--c`` use.
        """
        log = self.logger.get_checkpoint()  # nnU-Net's live lists: converted in place
        for key, values in log.items():
            if isinstance(values, list):
                values[:] = plain_numbers(values)
        self._best_ema = plain_numbers(self._best_ema)
        super().save_checkpoint(filename)

    # ---------------------------------------------------------------- nnU-Net hooks
    def set_deep_supervision_enabled(self, enabled: bool):
        """nnU-Net's, skipped for networks without a deep-supervision switch."""
        decoder = getattr(self._bare_network(), "decoder", None)
        if decoder is not None and hasattr(decoder, "deep_supervision"):
            super().set_deep_supervision_enabled(enabled)

    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's; with ``nnUNet_def_n_proc=1`` its export and scoring pools are one thread
        each instead of one spawned process (``xfer_validation``: same jobs, no interpreter
        start-up)."""
        if self.is_ddp or not one_worker_requested():
            return super().perform_actual_validation(save_probabilities)
        self.print_to_log_file("nnunet_xfer validation: export and scoring in one thread "
                               "(nnUNet_def_n_proc=1)")
        with pools_as_threads():
            return super().perform_actual_validation(save_probabilities)

    def _save_debug_information(self):
        """nnU-Net's debug.json plus ``xfer_info`` as real JSON (subset, source, transfer, schedule)."""
        super()._save_debug_information()
        if self.local_rank == 0:
            path = join(self.output_folder, DEBUG_JSON)
            debug = load_json(path)
            debug["xfer_info"] = self.xfer_info
            save_json(debug, path, sort_keys=False)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's and Python's global generators (``nnUNet_xfer_seed``)."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
