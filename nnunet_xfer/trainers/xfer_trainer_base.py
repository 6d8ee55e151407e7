"""``XferTrainerBase``: nnU-Net's trainer plus a nested training subset (all ``Xfer*`` trainers).

Life cycle inside ``nnUNetv2_train`` (nnunetv2 2.8.1):

* ``__init__`` — short-run overrides (``nnUNet_xfer_epochs``/``_iterations``), deep supervision off
  for networks that cannot do it.
* ``initialize`` (nnU-Net's) builds the network and the optimiser.
* ``--c`` / ``--val``: nnU-Net calls :meth:`load_checkpoint`, which marks the run as resumed.
* :meth:`do_split` returns the fold's nested subset and the fold's whole validation set.

Scratch trainers are this class as it is; trainers of pretrained sources add the source checkpoint
and the fine-tuning schedule in ``xfer_transfer.XferTransferTrainer``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json, save_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch._dynamo import OptimizedModule

from nnunet_xfer import settings
from nnunet_xfer.architectures.parts import supports_deep_supervision
from nnunet_xfer.errors import UserError
from nnunet_xfer.layout import DEBUG_JSON, SUBSET_RECORD
from nnunet_xfer.study_grid import trainer_name
from nnunet_xfer.trainers import check_nnunet_version
from nnunet_xfer.trainers.xfer_subsets import fold_subset

check_nnunet_version()

#: nnU-Net's default iterations per epoch; validation iterations shrink in the same proportion.
_NNUNET_ITERATIONS, _NNUNET_VAL_ITERATIONS = 250, 50


def refuse(message: str) -> SystemExit:
    """The one way a trainer stops on bad input: one line, prefixed, for ``raise refuse(...)``."""
    return SystemExit("nnunet_xfer: " + " ".join(str(message).split()))


def _env_int(name: str) -> int | None:
    try:
        return settings.positive_int(name)
    except UserError as e:
        raise refuse(e) from None


def shorten_keys(keys: list[str], limit: int = 10) -> str:
    """A key list for the log; debug.json keeps the full list."""
    return ", ".join(keys[:limit]) + (f" … (+{len(keys) - limit} more, see debug.json)" if len(keys) > limit else "")


class XferTrainerBase(nnUNetTrainer):
    """Base of the ``Xfer<Source>Trainer_n<N>`` family; subclasses only set ``source`` and ``subset_size``."""

    source: str = "scratch"
    #: training cases taken from the fold (None: the whole training fold)
    subset_size: int | None = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        continuing = bool(plans.get("continue_training", False))
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.xfer_info: dict = {"trainer": type(self).__name__, "source": self.source,
                                "subset_size": self.subset_size or "all", "continue_requested": continuing}
        self._xfer_resumed = False
        self._xfer_split: tuple[list[str], list[str]] | None = None

        epochs, iterations = _env_int("nnUNet_xfer_epochs"), _env_int("nnUNet_xfer_iterations")
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
        if epochs is not None or iterations is not None:
            self.print_to_log_file(f"nnunet_xfer short run: {self.num_epochs} epochs × "
                                   f"{self.num_iterations_per_epoch} iterations "
                                   f"({self.num_val_iterations_per_epoch} validation iterations)")

        arch = self.configuration_manager.network_arch_class_name
        if not supports_deep_supervision(arch):
            self.enable_deep_supervision = False
            self.print_to_log_file(f"nnunet_xfer: {arch} has no deep supervision; training without it")

        self.xfer_info["schedule"] = "nnU-Net default"

    # ---------------------------------------------------------------- helpers
    def _bare_network(self) -> torch.nn.Module:
        net = self.network.module if self.is_ddp else self.network
        return net._orig_mod if isinstance(net, OptimizedModule) else net

    def _raw_folder(self) -> Path | None:
        root = settings.nnunet_folder_or_none("nnUNet_raw")
        return root / self.plans_manager.dataset_name if root is not None else None

    # ---------------------------------------------------------------- subset
    def do_split(self):
        """The fold's nested training subset and its whole validation set (cached for the run)."""
        if self._xfer_split is not None:
            return self._xfer_split
        if self.fold == "all":
            if self.subset_size is not None:
                raise refuse(f"fold 'all' has no nested subsets; train "
                                 f"{trainer_name(self.source, 'all')} on fold all or pick a fold")
            self._xfer_split = super().do_split()
            return self._xfer_split
        stored = Path(self.output_folder) / SUBSET_RECORD
        if self._xfer_resumed and stored.is_file():
            record = json.loads(stored.read_text())
            self.print_to_log_file(f"nnunet_xfer: continuing; subset read back from {stored}")
        else:
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
        return self._xfer_split

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's, remembering that this run resumes (so the source is not loaded again)."""
        self._xfer_resumed = True
        super().load_checkpoint(filename_or_checkpoint)

    # ---------------------------------------------------------------- nnU-Net hooks
    def set_deep_supervision_enabled(self, enabled: bool):
        """nnU-Net's, skipped for networks without a deep-supervision switch."""
        decoder = getattr(self._bare_network(), "decoder", None)
        if decoder is not None and hasattr(decoder, "deep_supervision"):
            super().set_deep_supervision_enabled(enabled)

    def _save_debug_information(self):
        """nnU-Net's debug.json plus ``xfer_info`` as real JSON (subset, source, transfer, schedule)."""
        super()._save_debug_information()
        if self.local_rank == 0:
            path = join(self.output_folder, DEBUG_JSON)
            debug = load_json(path)
            debug["xfer_info"] = self.xfer_info
            save_json(debug, path, sort_keys=False)
