"""The four source tasks as objects the one training loop is parameterised by.

A task supplies the batch transform (:meth:`Task.prepare`), its head (outside the network, saved
separately), the forward pass through the network parts it trains, the loss and the task metric.
``parts`` says which network parts the task really trains (recorded as ``trained_prefixes``).
:data:`TASKS` maps a source spec's ``task`` (``nnunet_xfer.sources``) to its class and
:func:`make_task` builds it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nnunet_xfer.pretraining import corruptions, jigsaw
from nnunet_xfer.pretraining.network import DecoderFeatures, deepest_features
from nnunet_xfer.pretraining.datasets import IGNORE


@torch.no_grad()
def _probe(fn, network: nn.Module, channels: int, patch: tuple[int, int],
           device: torch.device) -> torch.Tensor:
    """Output of ``fn(network, x)`` on a zero batch of one patch (to size the head)."""
    was = network.training
    network.eval()
    out = fn(network, torch.zeros((1, channels, *patch), device=device))
    network.train(was)
    return out


class Task(nn.Module):
    """Base class: holds the head (an ``nn.Module``) and the task's random generator."""

    name = ""
    metric_name = ""
    parts: tuple[str, ...] = ("encoder",)

    def __init__(self, device: torch.device, seed: int = 0):
        super().__init__()
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def prepare(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(network input, target) on the device from a loader batch."""
        raise NotImplementedError

    def forward(self, network: nn.Module, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def metric(self, out: torch.Tensor, target: torch.Tensor) -> float:
        raise NotImplementedError

    @classmethod
    def build(cls, network: nn.Module, channels: int, patch: tuple[int, int], device, *,
              seed: int, permutations: int, num_classes: int | None) -> "Task":
        """The task for a pretraining run (each class takes the options it needs)."""
        return cls(network, channels, patch, device, seed=seed)


class EncoderClassificationTask(Task):
    """A class label from the encoder's deepest features (jigsaw permutation, natural-image class)."""

    def forward(self, network, x):
        return self.head(deepest_features(network, x))

    def loss(self, out, target):
        return F.cross_entropy(out.float(), target)

    def metric(self, out, target):
        return float((out.argmax(1) == target).float().mean())


class JigsawTask(EncoderClassificationTask):
    """Classify which of K permutations shuffled the 3×3 tiles, from the deepest encoder features."""

    name, metric_name, parts = "jigsaw", "jigsaw_accuracy", ("encoder",)

    def __init__(self, network: nn.Module, channels: int, patch: tuple[int, int],
                 device: torch.device, permutations: int = 100, seed: int = 0,
                 hidden: int = 512):
        super().__init__(device, seed)
        self.patch = tuple(patch)
        self.tile = jigsaw.tile_size(self.patch)
        self.register_buffer("perms", torch.tensor(jigsaw.permutation_set(permutations, seed)))
        c = _probe(deepest_features, network, channels, self.patch, self.device).shape[1]
        # 3×3 pooling keeps the tiles' layout, which a global pool would throw away.
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(jigsaw.GRID), nn.Flatten(),
                                  nn.Linear(c * jigsaw.N_TILES, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, permutations))

    @classmethod
    def build(cls, network, channels, patch, device, *, seed, permutations, num_classes):
        return cls(network, channels, patch, device, permutations=permutations, seed=seed)

    @property
    def permutations(self) -> int:
        """K, the number of permutation classes."""
        return int(self.perms.shape[0])

    @property
    def min_hamming_distance(self) -> int:
        """Smallest Hamming distance between two of the K permutations."""
        return jigsaw.min_hamming_distance(self.perms.cpu().numpy())

    def prepare(self, batch):
        x = batch["image"].to(self.device, non_blocking=True)
        return jigsaw.make_puzzles(x, self.perms, self.tile, self.generator)


class _DecoderTask(Task):
    """Tasks through the whole U-Net: a 1×1 head on the features the network's own head sees."""

    parts = ("encoder", "decoder")

    def _build_head(self, network, channels, patch, out_channels):
        self._features = DecoderFeatures(network)
        c = _probe(lambda n, x: self._features(x), network, channels, patch, self.device).shape[1]
        self.head = nn.Conv2d(c, out_channels, 1)

    def forward(self, network, x):
        out = self.head(self._features(x))
        if out.shape[-2:] != x.shape[-2:]:  # networks whose head works at a lower resolution
            out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return out


class RecTask(_DecoderTask):
    """Restore the (possibly flipped) slice from its Models Genesis corruption (L2 loss)."""

    name, metric_name = "rec", "reconstruction_mse"

    def __init__(self, network, channels, patch, device, seed=0):
        super().__init__(device, seed)
        self._build_head(network, channels, patch, channels)

    def prepare(self, batch):
        x = batch["image"].to(self.device, non_blocking=True)
        inp, target, _ = corruptions.corrupt_pair(x, self.generator)
        return inp, target

    def loss(self, out, target):
        return F.mse_loss(out.float(), target)

    def metric(self, out, target):
        return float(F.mse_loss(out.float(), target))


class SegTask(_DecoderTask):
    """Natural-image segmentation with nnU-Net's Dice + CE loss (255 = ignore)."""

    name, metric_name = "seg", "segmentation_dice"

    def __init__(self, network, channels, patch, device, num_classes: int, seed=0):
        super().__init__(device, seed)
        from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
        from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
        self.num_classes = num_classes
        self._build_head(network, channels, patch, num_classes)
        self.criterion = DC_and_CE_loss({"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}, {},
                                        weight_ce=1, weight_dice=1, ignore_label=IGNORE,
                                        dice_class=MemoryEfficientSoftDiceLoss)

    @classmethod
    def build(cls, network, channels, patch, device, *, seed, permutations, num_classes):
        return cls(network, channels, patch, device, num_classes=num_classes, seed=seed)

    def prepare(self, batch):
        return (batch["image"].to(self.device, non_blocking=True),
                batch["mask"].to(self.device, non_blocking=True)[:, None])

    def loss(self, out, target):
        return self.criterion(out.float(), target)

    def metric(self, out, target):
        """Mean hard Dice over the foreground classes present in prediction or target."""
        t = target[:, 0]
        valid = t != IGNORE
        pred, t = out.argmax(1)[valid], t[valid]
        n = self.num_classes
        inter = torch.bincount(t[pred == t], minlength=n)[1:n]
        denom = (torch.bincount(pred, minlength=n) + torch.bincount(t, minlength=n))[1:n]
        present = denom > 0
        if not bool(present.any()):
            return 1.0
        return float((2 * inter[present] / denom[present]).mean())


class ClsTask(EncoderClassificationTask):
    """Natural-image classification: deepest encoder features, global average pool, linear head."""

    name, metric_name, parts = "cls", "classification_accuracy", ("encoder",)

    def __init__(self, network, channels, patch, device, num_classes: int, seed=0):
        super().__init__(device, seed)
        self.num_classes = num_classes
        c = _probe(deepest_features, network, channels, patch, self.device).shape[1]
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))

    @classmethod
    def build(cls, network, channels, patch, device, *, seed, permutations, num_classes):
        return cls(network, channels, patch, device, num_classes=num_classes, seed=seed)

    def prepare(self, batch):
        return (batch["image"].to(self.device, non_blocking=True),
                batch["label"].to(self.device, non_blocking=True))


#: Task class of each ``SourceSpec.task``.
TASKS: dict[str, type[Task]] = {"jigsaw": JigsawTask, "rec": RecTask, "seg": SegTask, "cls": ClsTask}


def make_task(task: str, network: nn.Module, channels: int, patch: tuple[int, int], device, *,
              seed: int = 0, permutations: int = 100, num_classes: int | None = None) -> Task:
    """The task ``task`` (a spec's ``task`` name) for ``network``."""
    try:
        cls = TASKS[task]
    except KeyError:
        raise KeyError(f"no task class for {task!r}; add it to pretraining.tasks.TASKS") from None
    return cls.build(network, channels, patch, device, seed=seed, permutations=permutations,
                     num_classes=num_classes)
