"""The planned network, built exactly as nnU-Net's trainer builds it, and views into its features.

Pretraining must train the very network the ``Xfer*`` trainers later build, so the state dict is
congruent key for key. The network therefore comes from nnU-Net's own plans handling and
``nnUNetTrainer.build_network_architecture`` (deep supervision off); task heads stay outside it.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from nnunet_xfer import settings
from nnunet_xfer.architectures.parts import network_parts
from nnunet_xfer.errors import UserError
from nnunet_xfer.layout import DEFAULT_PLANS, DatasetLayout


@dataclass
class Planned:
    """What the plans say about one configuration of a dataset (everything pretraining needs)."""

    dataset_name: str
    plans: str
    configuration: str
    plans_manager: object
    configuration_manager: object
    dataset_json: dict
    num_input_channels: int
    num_outputs: int

    @property
    def patch_size(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.configuration_manager.patch_size)

    @property
    def batch_size(self) -> int:
        return int(self.configuration_manager.batch_size)

    @property
    def class_name(self) -> str:
        return self.configuration_manager.network_arch_class_name

    @property
    def data_folder(self) -> Path:
        """``$nnUNet_preprocessed/<Dataset>/<data identifier>``: the preprocessed cases."""
        return DatasetLayout(self.dataset_name).preprocessed / self.configuration_manager.data_identifier

    def intensity_properties(self) -> list[dict]:
        """Per input channel: the CT intensity properties nnU-Net's CTNormalization uses."""
        props = self.plans_manager.foreground_intensity_properties_per_channel
        return [props[str(c)] if str(c) in props else props[c]
                for c in range(self.num_input_channels)]


def load_planned(dataset_name: str, plans: str = "nnUNetPlans",
                 configuration: str = "2d") -> Planned:
    """Read ``$nnUNet_preprocessed/<Dataset>/<plans>.json`` and ``dataset.json`` as the trainer does."""
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    layout = DatasetLayout(dataset_name)
    plans_file = layout.plans_json(plans)
    ds_file = layout.preprocessed_dataset_json()
    if not plans_file.is_file() or not ds_file.is_file():
        did = dataset_name[len("Dataset"):].split("_", 1)[0]
        raise UserError(f"{plans_file} not found: dataset {dataset_name} has not been planned and "
                        f"preprocessed; run `nnUNetv2_plan_and_preprocess -d {did} -c {configuration}`"
                        + ("" if plans == DEFAULT_PLANS else f" (and `nnunet-xfer plan` for {plans})"))
    pm = PlansManager(str(plans_file))
    if configuration not in pm.available_configurations:
        raise UserError(f"configuration {configuration!r} is not in {plans_file} "
                        f"(available: {', '.join(pm.available_configurations)})")
    cm = pm.get_configuration(configuration)
    dataset_json = json.loads(ds_file.read_text())
    return Planned(dataset_name, plans, configuration, pm, cm, dataset_json,
                   determine_num_input_channels(pm, cm, dataset_json),
                   pm.get_label_manager(dataset_json).num_segmentation_heads)


def build_network(planned: Planned) -> nn.Module:
    """The trainer's network for these plans (deep supervision off), freshly initialised."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    return nnUNetTrainer.build_network_architecture(
        planned.plans_manager, planned.configuration_manager, planned.num_input_channels,
        planned.num_outputs, enable_deep_supervision=False)


def deepest_features(network: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The encoder's deepest feature map (``encode(x)`` of torchvision networks, else the skips)."""
    encode = getattr(network, "encode", None) or network.encoder
    feats = encode(x)
    return feats[-1] if isinstance(feats, (list, tuple)) else feats


def head_layers(network: nn.Module) -> list[nn.Module]:
    """Leaf modules with parameters under the network's head prefixes (the final 1×1 convs)."""
    prefixes = network_parts(network)["head"]
    return [m for name, m in network.named_modules()
            if any((name + ".").startswith(p) for p in prefixes)
            and not list(m.children()) and any(True for _ in m.parameters(recurse=False))]


class DecoderFeatures:
    """Forward the whole network and return the features its final head layer receives.

    A forward pre-hook on the head's leaf layers captures their input; the last one to fire is the
    full-resolution decoder output (nnU-Net without deep supervision fires only the last one).
    """

    def __init__(self, network: nn.Module):
        self.network = network
        self._captured: torch.Tensor | None = None
        layers = head_layers(network)
        if not layers:
            raise UserError(f"{type(network).__name__}: no head layer found under "
                            f"{network_parts(network)['head']}; cannot pretrain its decoder")
        self._handles = [m.register_forward_pre_hook(self._hook) for m in layers]

    def _hook(self, module, args):
        self._captured = args[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self._captured = None
        self.network(x)
        assert self._captured is not None
        return self._captured

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


def trained_prefixes(network: nn.Module, parts: tuple[str, ...]) -> list[str]:
    """The key prefixes of the network parts a task trained (never the head)."""
    p = network_parts(network)
    return [prefix for part in parts for prefix in p[part]]


def default_num_workers() -> int:
    """Data-loading processes: nnU-Net's ``nnUNet_n_proc_DA`` when set, else up to 4."""
    value = settings.other("nnUNet_n_proc_DA")
    if value is None:
        return min(4, os.cpu_count() or 1)
    try:
        return max(0, int(value))
    except ValueError:
        raise UserError(f"nnUNet_n_proc_DA={value!r} is not an integer") from None
