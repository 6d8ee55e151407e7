"""What ``diverse`` measures distances on: intensity histograms, or a store entry's encoder features.

* ``histogram`` (no model needed): the area (cm²) of each 10 HU bin from −250 to 250 HU — the range
  that holds fat (−190…−30 HU) and muscle (−29…150 HU) — square-rooted, so that two slices differ
  by body size and composition alike and the large fat bins do not drown the muscle bins (the
  square root makes the Euclidean distance a Hellinger-type distance between the area profiles).
* a source name (``rec``, ``seg``, …): the image preprocessed exactly as nnU-Net does for these
  plans (its own preprocessor), centred in the plans' patch, through the encoder of that source's
  store entry (the entry the fold's trainer would load, checked the same way); the deepest feature
  map averaged over space and scaled to unit length.

Images are read with the package's slice reader.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from nnunet_xfer.errors import UserError
from nnunet_xfer.imaging import load_slice

#: The histogram's HU range and bin width (docs/conversion.md#choosing-the-slices-to-annotate-nnunet-xfer-select).
HISTOGRAM_HU = (-250.0, 250.0)
HISTOGRAM_BIN_HU = 10.0
#: ``features`` value of the histograms (any other value names a store entry's source).
HISTOGRAM = "histogram"


def intensity_histogram(array: np.ndarray, spacing: tuple[float, float]) -> np.ndarray:
    """Square root of the area (cm²) in each 10 HU bin of −250…250 HU of one slice."""
    lo, hi = HISTOGRAM_HU
    edges = np.arange(lo, hi + HISTOGRAM_BIN_HU / 2, HISTOGRAM_BIN_HU)
    counts, _ = np.histogram(np.asarray(array, dtype=np.float64), bins=edges)
    return np.sqrt(counts * float(spacing[0]) * float(spacing[1]) / 100.0)


def histogram_features(images: Mapping[str, Path]) -> np.ndarray:
    """One :func:`intensity_histogram` row per image, in the mapping's order."""
    rows = []
    for case, path in images.items():
        array, geometry = load_slice(path)
        rows.append(intensity_histogram(array, geometry.spacing))
    return np.vstack(rows) if rows else np.zeros((0, 0))


def _centred(data: np.ndarray, patch: tuple[int, int]) -> np.ndarray:
    """(C, H, W) cut or zero-padded (as nnU-Net pads) around its centre to ``patch``."""
    c, h, w = data.shape
    out = np.zeros((c, *patch), dtype=np.float32)
    sy, sx = max(0, (h - patch[0]) // 2), max(0, (w - patch[1]) // 2)
    src = data[:, sy:sy + patch[0], sx:sx + patch[1]]
    oy, ox = max(0, (patch[0] - h) // 2), max(0, (patch[1] - w) // 2)
    out[:, oy:oy + src.shape[1], ox:ox + src.shape[2]] = src
    return out


def encoder_features(images: Mapping[str, Path], dataset: str, source: str, plans: str,
                     configuration: str, fold: int, device: str | None = None) -> np.ndarray:
    """One unit-length row of ``source``'s encoder features per image (order of ``images``).

    The entry is the one fold ``fold``'s trainer loads (``pretraining.store.trainer_entry``),
    checked against these plans before it is opened with ``torch.load(weights_only=True)``;
    only its encoder is used. One-line :class:`UserError` when it is missing or stale.
    """
    import SimpleITK as sitk
    import torch

    from nnunet_xfer.architectures import is_torchvision_network
    from nnunet_xfer.architectures.parts import network_parts
    from nnunet_xfer.clinical.predict import SlicePredictor, resolve_device
    from nnunet_xfer.layout import DatasetLayout
    from nnunet_xfer.pretraining.network import build_network, deepest_features, load_planned
    from nnunet_xfer.pretraining.store import check_entry, load_entry, read_record, trainer_entry
    from nnunet_xfer.sources import spec
    from nnunet_xfer.trainers.xfer_weight_transfer import transfer_weights

    if not spec(source).pretrained:
        raise UserError(f"--features {source}: that source has no pretrained encoder; use "
                        f"{HISTOGRAM} or a pretrained source")
    planned = load_planned(dataset, plans, configuration)
    entry = trainer_entry(dataset, source, plans, configuration, fold,
                          torchvision=bool(is_torchvision_network(planned.class_name)))
    if not entry.path.is_file():
        raise UserError(f"no pretrained '{source}' entry at {entry.path} for --features; run: "
                        f"{entry.command}")
    plans_dict = json.loads(DatasetLayout(dataset).plans_json(plans).read_text(encoding="utf-8"))
    check_entry(entry.path, read_record(entry.path), dataset, plans_dict, configuration,
                fold=entry.fold)
    state, _head, _meta = load_entry(entry.path)
    network = build_network(planned)
    transfer_weights(network, state, network_parts(network), ["encoder"])
    dev = resolve_device(device)
    network.to(dev).eval()
    preprocessor = planned.configuration_manager.preprocessor_class(verbose=False)
    patch = planned.patch_size
    rows = []
    with torch.inference_mode():
        for case, path in images.items():
            array, geometry = load_slice(path, canonical=True)  # as the network sees it
            spacing = geometry.spacing
            image = sitk.GetImageFromArray(array)
            image.SetSpacing((float(spacing[1]), float(spacing[0])))
            data, props = SlicePredictor.nnunet_input(image)
            data, _seg, _props = preprocessor.run_case_npy(
                data, None, props, planned.plans_manager, planned.configuration_manager,
                planned.dataset_json)
            x = torch.from_numpy(_centred(np.asarray(data[:, 0], np.float32), patch))[None]
            pooled = deepest_features(network, x.to(dev)).float().mean(dim=(2, 3))[0].cpu()
            rows.append((pooled / pooled.norm().clamp_min(1e-12)).numpy())
    return np.vstack(rows) if rows else np.zeros((0, 0))
