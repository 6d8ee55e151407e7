"""``XferTransferTrainer``: the base trainer plus a source checkpoint (and optional fine-tuning options).

Only trainers of pretrained sources derive from it; scratch trainers carry none of this.

* By default the optimiser, learning rate and poly schedule are nnU-Net's own, exactly as for
  scratch (:meth:`configure_optimizers` is nnU-Net's): only the initial weights differ.
  With an explicit option (``nnUNet_xfer_lr_factor`` / ``_warmup_fraction`` /
  ``_freeze_epochs``, or a variant's ``fine_tune``) it makes one param group per network part
  (see ``xfer_schedule``); ``debug.json`` records which in ``xfer_info["schedule"]``.
* The constructor refuses a missing store entry (:meth:`_check_source`) before nnU-Net starts,
  unless the run continues from its own checkpoint, and an entry whose pretraining saw an image
  of this dataset it must not have seen, found by voxel values (:meth:`_check_images_seen`).
* :meth:`on_train_start` loads the source checkpoint into the network only for a fresh run
  (no checkpoint loaded, epoch 0), so continuing never reloads the source, ``--val`` never needs
  the store, and inference (which only calls ``build_network_architecture``) never touches it.
"""
from __future__ import annotations

from pathlib import Path

import torch
from batchgenerators.utilities.file_and_folder_operations import join, load_json

from nnunet_xfer import settings
from nnunet_xfer.architectures.parts import network_parts
from nnunet_xfer.errors import UserError
from nnunet_xfer.layout import DEBUG_JSON, INITIAL_CHECKPOINT
from nnunet_xfer.architectures import is_torchvision_network
from nnunet_xfer.pretraining.identity import FINGERPRINTS_KEY, shared_images
from nnunet_xfer.pretraining.store import (SCOPE_ALL, SCOPE_EXTERNAL, architecture_fingerprint,
                                           check_entry, file_sha256, load_entry, pretrain_command,
                                           read_record, recreate_command, trainer_entry)
from nnunet_xfer.trainers.xfer_schedule import (NNUNET_SCHEDULE, FineTuneSchedule, PartPolyLRScheduler,
                                                is_frozen, mark_transferred, part_param_groups)
from nnunet_xfer.trainers.xfer_trainer_base import XferTrainerBase, refuse, shorten_keys
from nnunet_xfer.trainers.xfer_weight_transfer import parts_from_prefixes, transfer_weights


class XferTransferTrainer(XferTrainerBase):
    """Base of ``Xfer<Source>Trainer_n<N>`` for sources with a store entry (all but scratch)."""

    #: fine-tuning schedule of this class: nnU-Net's own; a variant may set explicit options
    #: (``fine_tune = FineTuneSchedule(lr_factor=0.1, warmup_fraction=0.05)``); env vars override it
    fine_tune: FineTuneSchedule = NNUNET_SCHEDULE

    def _schedule_from_env(self) -> FineTuneSchedule:
        return FineTuneSchedule.from_env(self.fine_tune)

    # ---------------------------------------------------------------- checks before nnU-Net starts
    def _entry(self):
        """The store entry this run loads (``store.trainer_entry``: the one rule, also used by
        :meth:`_load_source`); None when ``$nnUNet_results`` is unset.

        Usable before nnU-Net's constructor has run (it reads only ``self._xfer_run``).
        """
        if settings.nnunet_folder_or_none("nnUNet_results") is None:
            return None
        run = self._xfer_run
        try:
            return trainer_entry(run.dataset, self.source, run.plans, run.configuration, run.fold,
                                 torchvision=self._torchvision_plans())
        except UserError as e:
            raise refuse(e) from None

    def _check_source(self) -> None:
        """Refuse a missing store entry now, unless nnU-Net resumes this fold from its own checkpoint."""
        entry = self._entry()
        if entry is None or self._checkpoint_to_resume():
            return
        if not entry.path.is_file():
            raise refuse(f"no pretrained '{self.source}' checkpoint at {entry.path}; run: {entry.command}")
        run = self._xfer_run
        try:  # tampered or stale entries too are refused before nnU-Net creates the fold folder
            meta = read_record(entry.path)
            check_entry(entry.path, meta, run.dataset, self._xfer_plans, run.configuration,
                        fold=entry.fold)
            self._check_images_seen(entry, meta)
        except UserError as e:
            raise refuse(e) from None

    def _check_images_seen(self, entry, meta: dict) -> None:
        """Refuse an entry whose pretraining saw an image it must not have seen, by content
        (``pretraining.identity``): any image of the dataset for an entry shared by all folds,
        the fold's validation images for a per-fold entry; ``--scope all`` says it saw them."""
        run = self._xfer_run
        if entry.scope == SCOPE_ALL:
            return
        external = entry.scope == SCOPE_EXTERNAL
        if FINGERPRINTS_KEY not in meta:
            if external and meta.get("data") and not meta.get("weights_file"):
                raise UserError(f"pretrained checkpoint {entry.path} does not list the images it "
                                f"was trained on (written by an older nnunet-xfer), so it cannot "
                                f"be checked against {run.dataset}'s images; recreate it with: "
                                f"{recreate_command(entry.path, meta, run.dataset, self._xfer_plans, run.configuration)}")
            return
        chosen = self._xfer_chosen
        forbidden = None if external or chosen is None else chosen.val
        shared = shared_images(meta, run.dataset, forbidden)
        if shared:
            what = (f"images of {run.dataset} itself" if external
                    else f"validation images of fold {entry.fold}")
            raise UserError(f"pretrained checkpoint {entry.path} was trained on {len(shared)} "
                            f"{what} ({', '.join(shared[:2])}{' …' if len(shared) > 2 else ''}), "
                            f"found by their voxel values; pretrain it again on data without "
                            f"them: {recreate_command(entry.path, meta, run.dataset, self._xfer_plans, run.configuration)}")

    def _torchvision_plans(self) -> bool:
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
        try:
            arch = PlansManager(self._xfer_plans).get_configuration(
                self._xfer_run.configuration).network_arch_class_name
        except Exception:  # an unknown configuration: nnU-Net reports it itself
            return False
        return bool(is_torchvision_network(arch))

    # ---------------------------------------------------------------- optimiser and schedule
    def configure_optimizers(self):
        """nnU-Net's own optimiser and poly schedule, unless an explicit option asks for per-part groups."""
        if not self.xfer_schedule.explicit:
            return super().configure_optimizers()
        net = self._bare_network()
        optimizer = torch.optim.SGD(part_param_groups(net, network_parts(net)), self.initial_lr,
                                    weight_decay=self.weight_decay, momentum=0.99, nesterov=True)
        return optimizer, PartPolyLRScheduler(optimizer, self.initial_lr, self.num_epochs)

    def on_train_epoch_start(self):
        if not self.xfer_schedule.explicit:
            return super().on_train_epoch_start()
        # frozen parameters get no gradient at all, so no momentum builds up while frozen
        # (under DDP the LR of 0 alone keeps them fixed: DDP needs a fixed set of trainable tensors)
        for group in self.optimizer.param_groups:
            frozen = is_frozen(group, self.current_epoch)
            if not self.is_ddp:
                for p in group["params"]:
                    p.requires_grad_(not frozen)
        super().on_train_epoch_start()
        lrs = ", ".join(f"{g['xfer_part']} {g['lr']:.3g}" + (" (frozen)" if is_frozen(g, self.current_epoch) else "")
                        for g in self.optimizer.param_groups)
        self.print_to_log_file(f"nnunet_xfer learning rates: {lrs}")

    # ---------------------------------------------------------------- source checkpoint
    def on_train_start(self):
        if not self.was_initialized:
            self.initialize()
        if self._xfer_resumed or self.current_epoch > 0:
            self._note_resumed()
        else:
            self._load_source()
        super().on_train_start()

    def _note_resumed(self) -> None:
        previous = {}
        debug = Path(self.output_folder) / DEBUG_JSON
        if debug.is_file():
            previous = (load_json(str(debug)).get("xfer_info") or {})
            previous = previous.get("transfer", {}) if isinstance(previous, dict) else {}
        self.xfer_info["transfer"] = {**previous, "reloaded": False,
                                      "note": f"continued at epoch {self.current_epoch}; source not reloaded"}
        self.print_to_log_file(f"nnunet_xfer: continuing at epoch {self.current_epoch}; "
                               f"the {self.source} checkpoint is not reloaded")

    def _load_source(self) -> None:
        """Load this fold's store entry into the network, after checking its provenance.

        Sources that read the target's images load the entry of their own fold (or, with
        ``nnUNet_xfer_pretrain_scope=all``, the entry pretrained on every case); others the
        shared entry. A missing, tampered or stale entry is refused with the pretrain command.
        """
        dataset_name = self.plans_manager.dataset_name
        plans_name, configuration = self.plans_manager.plans_name, self.configuration_name
        try:
            entry = trainer_entry(dataset_name, self.source, plans_name, configuration, self.fold,
                                  torchvision=is_torchvision_network(
                                      self.configuration_manager.network_arch_class_name))
        except UserError as e:
            raise refuse(e) from None
        pth, fold, scope = entry.path, entry.fold, entry.scope
        if not pth.is_file():
            raise refuse(f"no pretrained '{self.source}' checkpoint at {pth}; run: {entry.command}")
        net = self._bare_network()
        meta: dict = {}
        try:
            meta = read_record(pth)
            # before unpickling anything: the file is the one recorded, for these very plans
            check_entry(pth, meta, dataset_name, self.plans_manager.plans, configuration, fold=fold)
            if fold is not None:
                _, val = self.do_split()
                seen = sorted(set(map(str, meta.get("case_ids") or [])) & set(map(str, val)))
                if seen:
                    raise UserError(
                        f"pretrained checkpoint {pth} saw {len(seen)} validation case(s) of fold "
                        f"{fold} ({', '.join(seen[:3])}{' …' if len(seen) > 3 else ''}): the folds "
                        f"changed since it was pretrained; recreate it with: "
                        f"{pretrain_command(dataset_name, self.source, plans_name, configuration, fold=fold, overwrite=True)}")
            state, _head, meta = load_entry(pth)  # torch.load(weights_only=True); the head is never used
            parts = network_parts(net)
            transfer_parts = parts_from_prefixes(meta.get("trained_prefixes"), parts, self.source)
            report = transfer_weights(net, state, parts, transfer_parts)
        except UserError as e:
            raise refuse(f"{e}" if str(pth) in str(e) else f"{pth}: {e}; recreate it with: "
                         f"{recreate_command(pth, meta, dataset_name, self.plans_manager.plans, configuration)}") from None
        sha256 = file_sha256(pth)
        fingerprint = architecture_fingerprint(net)
        mark_transferred(self.optimizer, transfer_parts, self.xfer_schedule, self.num_epochs)
        # what evaluate marks with † (cases of this dataset the entry saw): read from here, the
        # entry this very run loaded, never from whatever the store holds at evaluation time
        seen = sorted(map(str, meta.get("case_ids") or []))
        self.xfer_info["transfer"] = {
            "reloaded": True, "checkpoint": str(pth), "entry": str(pth), "scope": scope,
            "fold": fold, "dataset": meta.get("dataset"), "data": meta.get("data"),
            "data_kind": meta.get("data_kind"), "data_label": meta.get("data_label"),
            "case_ids": seen, "n_pretraining_cases": len(seen), "sha256": sha256,
            "sha256_recorded": meta.get("sha256"), "source_task": meta.get("source", self.source),
            "trained_prefixes": meta.get("trained_prefixes"),
            "fingerprint_checkpoint": meta.get("architecture_fingerprint"),
            "fingerprint_network": fingerprint, **report.summary()}
        self.print_to_log_file(
            f"nnunet_xfer: loaded source '{self.source}' from {pth} (sha256 {sha256}); transferred "
            f"{len(report.transferred)} tensors of parts {transfer_parts}, "
            f"{len(report.not_transferred)} not transferred: {shorten_keys(report.not_transferred)}")
        if report.adapted:
            self.print_to_log_file(f"nnunet_xfer: adapted input channels: {report.adapted}")
        if settings.flag("nnUNet_xfer_save_initial"):
            torch.save({"network_weights": net.state_dict(), "trainer_name": type(self).__name__,
                        "transfer": self.xfer_info["transfer"]}, join(self.output_folder, INITIAL_CHECKPOINT))
            self.print_to_log_file(f"nnunet_xfer: weights after transfer saved to {INITIAL_CHECKPOINT}")
