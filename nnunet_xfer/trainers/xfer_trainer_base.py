"""``XferTrainerBase``: nnU-Net's trainer plus a training subset, a source checkpoint and a schedule.

Life cycle inside ``nnUNetv2_train`` (nnunetv2 2.8.1):

* ``__init__`` — short-run overrides (``nnUNet_xfer_epochs``/``_iterations``), deep supervision off
  for networks that cannot do it.
* ``initialize`` (nnU-Net's) builds the network, then calls :meth:`configure_optimizers`, which
  for non-scratch trainers makes one param group per network part.
* ``--c`` / ``--val``: nnU-Net calls :meth:`load_checkpoint`, which marks the run as resumed.
* :meth:`on_train_start` loads the source checkpoint into the network only for a fresh run
  (no checkpoint loaded, epoch 0), so continuing never reloads the source, ``--val`` never needs
  the store, and inference (which only calls ``build_network_architecture``) never touches it.
* :meth:`do_split` returns the fold's nested subset and the fold's whole validation set.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json, save_json
from nnunetv2.paths import nnUNet_raw
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from torch._dynamo import OptimizedModule

from nnunet_xfer.architectures.parts import network_parts, supports_deep_supervision
from nnunet_xfer.errors import UserError
from nnunet_xfer.layout import DatasetLayout
from nnunet_xfer.sources import PRETRAINED_SOURCES, SOURCES
from nnunet_xfer.study_grid import SIZE_TAGS, trainer_name
from nnunet_xfer.pretraining.store import architecture_fingerprint, file_sha256, load_entry
from nnunet_xfer.trainers import check_nnunet_version
from nnunet_xfer.trainers.xfer_schedule import (FineTuneSchedule, PartPolyLRScheduler, is_frozen,
                                                mark_transferred, part_param_groups)
from nnunet_xfer.trainers.xfer_subsets import fold_subset
from nnunet_xfer.trainers.xfer_weight_transfer import parts_from_prefixes, transfer_weights

check_nnunet_version()

#: nnU-Net's default iterations per epoch; validation iterations shrink in the same proportion.
_NNUNET_ITERATIONS, _NNUNET_VAL_ITERATIONS = 250, 50
SUBSET_FILE = "xfer_subset.json"
INITIAL_CHECKPOINT = "checkpoint_initial.pth"


def _env_int(name: str) -> int | None:
    text = os.environ.get(name)
    if not text:
        return None
    try:
        value = int(text)
    except ValueError:
        raise SystemExit(f"nnunet_xfer: {name}={text!r} is not an integer") from None
    if value < 1:
        raise SystemExit(f"nnunet_xfer: {name} must be at least 1, got {value}")
    return value


def _shorten(keys: list[str], limit: int = 10) -> str:
    """A key list for the log; debug.json keeps the full list."""
    return ", ".join(keys[:limit]) + (f" … (+{len(keys) - limit} more, see debug.json)" if len(keys) > limit else "")


class XferTrainerBase(nnUNetTrainer):
    """Base of the ``Xfer<Source>Trainer_n<N>`` family; subclasses only set ``source`` and ``subset_size``."""

    source: str = "scratch"
    #: training cases taken from the fold (None: the whole training fold)
    subset_size: int | None = None
    #: fine-tuning schedule of non-scratch trainers (env vars may override, see FineTuneSchedule)
    fine_tune = FineTuneSchedule()

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

        if self.source != "scratch":
            self.xfer_schedule = FineTuneSchedule.from_env(self.fine_tune)
            self.xfer_info["schedule"] = {**vars(self.xfer_schedule),
                                          "warmup_epochs": self.xfer_schedule.warmup_epochs(self.num_epochs),
                                          "initial_lr": self.initial_lr}
        else:
            self.xfer_info["schedule"] = "nnU-Net default"

    # ---------------------------------------------------------------- helpers
    def _bare_network(self) -> torch.nn.Module:
        net = self.network.module if self.is_ddp else self.network
        return net._orig_mod if isinstance(net, OptimizedModule) else net

    def _raw_folder(self) -> Path | None:
        return Path(nnUNet_raw.get()) / self.plans_manager.dataset_name if nnUNet_raw.is_set() else None

    def _pretrain_command(self) -> str:
        dataset_id = self.plans_manager.dataset_name.split("_")[0].removeprefix("Dataset")
        return (f"nnunet-xfer pretrain -d {int(dataset_id)} -s {self.source} "
                f"-p {self.plans_manager.plans_name} -c {self.configuration_name}")

    # ---------------------------------------------------------------- subset
    def do_split(self):
        """The fold's nested training subset and its whole validation set (cached for the run)."""
        if self._xfer_split is not None:
            return self._xfer_split
        if self.fold == "all":
            if self.subset_size is not None:
                raise SystemExit(f"nnunet_xfer: fold 'all' has no nested subsets; train "
                                 f"{trainer_name(self.source, 'all')} on fold all or pick a fold")
            self._xfer_split = super().do_split()
            return self._xfer_split
        stored = Path(self.output_folder) / SUBSET_FILE
        if self._xfer_resumed and stored.is_file():
            record = json.loads(stored.read_text())
            self.print_to_log_file(f"nnunet_xfer: continuing; subset read back from {stored}")
        else:
            try:
                chosen = fold_subset(self.plans_manager.dataset_name,
                                     Path(self.preprocessed_dataset_folder_base), self._raw_folder(),
                                     self.fold, self.subset_size, self.dataset_json)
            except UserError as e:
                raise SystemExit(f"nnunet_xfer: {e}") from None
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

    # ---------------------------------------------------------------- optimiser and schedule
    def configure_optimizers(self):
        """Scratch: nnU-Net's own. Otherwise SGD as nnU-Net, one param group per network part."""
        if self.source == "scratch":
            return super().configure_optimizers()
        net = self._bare_network()
        optimizer = torch.optim.SGD(part_param_groups(net, network_parts(net)), self.initial_lr,
                                    weight_decay=self.weight_decay, momentum=0.99, nesterov=True)
        return optimizer, PartPolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def on_train_epoch_start(self):
        if self.source != "scratch":
            # frozen parameters get no gradient at all, so no momentum builds up while frozen
            # (under DDP the LR of 0 alone keeps them fixed: DDP needs a fixed set of trainable tensors)
            for group in self.optimizer.param_groups:
                frozen = is_frozen(group, self.current_epoch)
                if not self.is_ddp:
                    for p in group["params"]:
                        p.requires_grad_(not frozen)
        super().on_train_epoch_start()
        if self.source != "scratch":
            lrs = ", ".join(f"{g['xfer_part']} {g['lr']:.3g}" + (" (frozen)" if is_frozen(g, self.current_epoch) else "")
                            for g in self.optimizer.param_groups)
            self.print_to_log_file(f"nnunet_xfer learning rates: {lrs}")

    # ---------------------------------------------------------------- source checkpoint
    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's, remembering that this run resumes (so the source is not loaded again)."""
        self._xfer_resumed = True
        super().load_checkpoint(filename_or_checkpoint)

    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        if self.source != "scratch":
            if self._xfer_resumed or self.current_epoch > 0:
                self._note_resumed()
            else:
                self._load_source()
        super().on_train_start()

    def _note_resumed(self) -> None:
        previous = {}
        debug = Path(self.output_folder) / "debug.json"
        if debug.is_file():
            previous = (load_json(str(debug)).get("xfer_info") or {})
            previous = previous.get("transfer", {}) if isinstance(previous, dict) else {}
        self.xfer_info["transfer"] = {**previous, "reloaded": False,
                                      "note": f"continued at epoch {self.current_epoch}; source not reloaded"}
        self.print_to_log_file(f"nnunet_xfer: continuing at epoch {self.current_epoch}; "
                               f"the {self.source} checkpoint is not reloaded")

    def _load_source(self) -> None:
        pth = DatasetLayout(self.plans_manager.dataset_name).store_entry(
            self.source, self.plans_manager.plans_name, self.configuration_name)
        if not pth.is_file():
            raise SystemExit(f"nnunet_xfer: no pretrained '{self.source}' checkpoint at {pth}; "
                             f"run: {self._pretrain_command()}")
        net = self._bare_network()
        try:
            state, _head, meta = load_entry(pth)  # torch.load(weights_only=True); the head is never used
            parts = network_parts(net)
            transfer_parts = parts_from_prefixes(meta.get("trained_prefixes"), parts, self.source)
            report = transfer_weights(net, state, parts, transfer_parts)
        except UserError as e:
            raise SystemExit(f"nnunet_xfer: {pth}: {e}; recreate it with: {self._pretrain_command()}") from None
        sha256 = file_sha256(pth)
        fingerprint = architecture_fingerprint(net)
        mark_transferred(self.optimizer, transfer_parts, self.xfer_schedule, self.num_epochs)
        self.xfer_info["transfer"] = {
            "reloaded": True, "checkpoint": str(pth), "sha256": sha256,
            "sha256_recorded": meta.get("sha256"), "source_task": meta.get("source", self.source),
            "trained_prefixes": meta.get("trained_prefixes"),
            "fingerprint_checkpoint": meta.get("architecture_fingerprint"),
            "fingerprint_network": fingerprint, **report.summary()}
        self.print_to_log_file(
            f"nnunet_xfer: loaded source '{self.source}' from {pth} (sha256 {sha256}); transferred "
            f"{len(report.transferred)} tensors of parts {transfer_parts}, "
            f"{len(report.not_transferred)} not transferred: {_shorten(report.not_transferred)}")
        if report.adapted:
            self.print_to_log_file(f"nnunet_xfer: adapted input channels: {report.adapted}")
        if meta.get("sha256") and meta["sha256"] != sha256:
            self.print_to_log_file(f"nnunet_xfer WARNING: {pth} differs from the sha256 in its .json record")
        if os.environ.get("nnUNet_xfer_save_initial", "").lower() in ("1", "true", "t", "yes"):
            torch.save({"network_weights": net.state_dict(), "trainer_name": type(self).__name__,
                        "transfer": self.xfer_info["transfer"]}, join(self.output_folder, INITIAL_CHECKPOINT))
            self.print_to_log_file(f"nnunet_xfer: weights after transfer saved to {INITIAL_CHECKPOINT}")

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
            path = join(self.output_folder, "debug.json")
            debug = load_json(path)
            debug["xfer_info"] = self.xfer_info
            save_json(debug, path, sort_keys=False)


@functools.cache
def build_family() -> dict[str, type]:
    """All ``Xfer<Source>Trainer_n<N>`` classes, built once from ``names.SOURCES`` × ``names.SIZE_TAGS``.

    The classes claim the package module ``nnunet_xfer.trainers.xfer_trainer_family`` so that they
    are picklable by name and the same objects whether that file was imported as a package module
    or (by nnU-Net's discovery) as the top-level module ``xfer_trainer_family``.
    """
    family = {}
    for source in SOURCES:
        assert source == "scratch" or source in PRETRAINED_SOURCES
        for tag in SIZE_TAGS:
            name = trainer_name(source, tag)
            family[name] = type(name, (XferTrainerBase,), {
                "__module__": "nnunet_xfer.trainers.xfer_trainer_family", "__qualname__": name,
                "__doc__": f"nnU-Net trainer: source '{source}', "
                           f"{'whole training fold' if tag == 'all' else f'{tag} training cases'}.",
                "source": source, "subset_size": None if tag == "all" else int(tag)})
    return family
