"""The source registry: everything that distinguishes one source task from another.

One :class:`SourceSpec` per source. ``scratch`` is a spec without a pretraining task. Every other
module asks the registry (``spec(name)``) instead of comparing source names. Adding a source means
adding a spec here (and, for a new kind of task, its task class in ``pretraining/tasks.py``).

The registry also holds the *reference rows* of every evaluation (``reference=True``): no-learning
baselines such as ``threshold`` that ``evaluate`` scores on every validation case beside the
models. They are not sources: no trainer, never in a grid, never a "best source".
"""
from __future__ import annotations

from dataclasses import dataclass, field

from nnunet_xfer.errors import UserError

#: Where a source's pretraining images come from.
DATA_NONE = "none"  # scratch: no pretraining
DATA_TARGET = "target"  # the target dataset's own (preprocessed) images, never its labels
DATA_NATURAL_CLASSES = "natural-classes"  # an ImageFolder root (one sub-folder per class)
DATA_NATURAL_SEGMENTATION = "natural-segmentation"  # Pascal VOC or a 2D nnU-Net raw dataset

#: What the images of a ``--data`` segmentation dataset are, as the store records it
#: (``data_kind``), and how a report names them.
DATA_KIND_NATURAL = "natural"
DATA_KIND_MEDICAL = "medical"
DATA_KIND_SYNTHETIC_MEDICAL = "synthetic-medical"
DATA_KINDS = {
    DATA_KIND_NATURAL: "natural images",
    DATA_KIND_MEDICAL: "medical images (nnU-Net raw dataset)",
    DATA_KIND_SYNTHETIC_MEDICAL: "synthetic medical images (nnunet-xfer phantom --source-task)",
}
#: Key of the ``nnunet_xfer`` block of a dataset.json that declares its data kind.
DATA_KIND_KEY = "data_kind"


@dataclass(frozen=True)
class SourceSpec:
    """What one source task is and how every stage treats it."""

    #: short name used everywhere: CLI, trainer names, file names, CSV columns
    name: str
    #: label in figures and reports
    label: str
    #: what it is, one line (``--help`` and docs)
    description: str
    #: pretraining task name in ``pretraining/tasks.py`` (None: no pretraining)
    task: str | None
    #: where its pretraining images come from (``DATA_*``)
    data: str
    #: environment variable the experiment runner reads ``--data`` from (None: no user data)
    data_env: str | None = None
    #: what ``--data`` must be, for error messages
    data_hint: str = ""
    #: parts transferred when the checkpoint does not say which prefixes it trained
    default_parts: tuple[str, ...] = ("encoder",)
    #: torchvision weights tag of the published checkpoint (None: not a torchvision source)
    weights_tag: str | None = None
    #: the pretraining task's own quality measure, as the store records it
    metric_name: str | None = None
    #: extra keys recorded in the store's json (e.g. number of classes)
    extra_metadata: tuple[str, ...] = field(default=())
    #: a no-learning reference row of every evaluation (``threshold``), not a source: no
    #: trainer, no grid, never a best-source choice; ``evaluate`` computes its masks
    reference: bool = False

    @property
    def pretrained(self) -> bool:
        """True when fine-tuning starts from a store entry."""
        return self.task is not None

    @property
    def reads_target_images(self) -> bool:
        """True when pretraining reads the target dataset's images: it must then be per fold."""
        return self.data == DATA_TARGET

    @property
    def needs_user_data(self) -> bool:
        """True when pretraining needs ``--data`` from the user (unless torchvision weights apply)."""
        return self.data in (DATA_NATURAL_CLASSES, DATA_NATURAL_SEGMENTATION)

    @property
    def trainer_stem(self) -> str:
        """``Rec`` in ``XferRecTrainer_n10``."""
        return self.name.capitalize()


REGISTRY: dict[str, SourceSpec] = {s.name: s for s in (
    SourceSpec("scratch", "scratch", "random initialisation (nnU-Net's own)", task=None, data=DATA_NONE,
               default_parts=()),
    SourceSpec("cls", "classification", "natural-image classification (ImageNet)", task="cls",
               data=DATA_NATURAL_CLASSES, data_env="NNUNET_XFER_CLS_DATA",
               data_hint="an ImageFolder root of natural images (one sub-folder per class)",
               default_parts=("encoder",), weights_tag="IMAGENET1K_V1",
               metric_name="classification_accuracy", extra_metadata=("num_classes", "classes")),
    SourceSpec("seg", "segmentation", "segmentation: natural images (COCO/VOC) or a medical "
               "nnU-Net raw dataset such as the phantom's --source-task", task="seg",
               data=DATA_NATURAL_SEGMENTATION, data_env="NNUNET_XFER_SEG_DATA",
               data_hint="a Pascal VOC folder (JPEGImages + SegmentationClass) or a 2D nnU-Net raw "
                         "dataset (e.g. `nnunet-xfer phantom OUT --source-task DIR`)",
               default_parts=("encoder", "decoder"), weights_tag="COCO_WITH_VOC_LABELS_V1",
               metric_name="segmentation_dice",
               extra_metadata=("num_classes", "classes", "data_kind", "data_label")),
    SourceSpec("rec", "reconstruction", "unsupervised reconstruction (Models Genesis)", task="rec",
               data=DATA_TARGET, default_parts=("encoder",), metric_name="reconstruction_mse"),
    SourceSpec("jigsaw", "jigsaw", "self-supervised jigsaw puzzles", task="jigsaw",
               data=DATA_TARGET, default_parts=("encoder",), metric_name="jigsaw_accuracy",
               extra_metadata=("permutations", "min_hamming_distance")),
    SourceSpec("threshold", "threshold (no learning)", "muscle HU range (−29…+150 HU) inside the "
               "body, no learning (docs/definitions.md#the-threshold-baseline)", task=None,
               data=DATA_NONE, default_parts=(), reference=True),
)}

#: Source names in the order the study reports them (the trainer family's sources).
SOURCES: tuple[str, ...] = tuple(n for n, s in REGISTRY.items() if not s.reference)
#: Reference rows every evaluation scores beside the models (no learning).
REFERENCES: tuple[str, ...] = tuple(n for n, s in REGISTRY.items() if s.reference)
#: Sources that fine-tune from a store entry.
PRETRAINED_SOURCES: tuple[str, ...] = tuple(n for n, s in REGISTRY.items() if s.pretrained)
#: Label of nnU-Net's own default trainer when a report shows it beside ours.
NNUNET_DEFAULT_LABEL = "nnU-Net default"


def is_reference(name: str) -> bool:
    """True for a reference row of the evaluation (``threshold``), False for a model's source."""
    return name in REGISTRY and REGISTRY[name].reference


def spec(name: str) -> SourceSpec:
    """The spec of ``name``; one-line :class:`UserError` for an unknown source."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UserError(f"unknown source task {name!r}; choose one of {', '.join(SOURCES)}") from None


def pretrained_spec(name: str) -> SourceSpec:
    """The spec of a source that has a pretraining task (not scratch)."""
    s = spec(name)
    if not s.pretrained:
        raise UserError(f"source {name!r} has no pretraining; choose one of {', '.join(PRETRAINED_SOURCES)}")
    return s


def label(name: str) -> str:
    """Figure label of a source (its name when unknown, e.g. ``nnunet``)."""
    if name == "nnunet":
        return NNUNET_DEFAULT_LABEL
    return REGISTRY[name].label if name in REGISTRY else name


def check_names(names) -> list[str]:
    """The names as a list, each validated."""
    names = list(names)
    if not names:
        raise UserError(f"no source task given; choose from {','.join(SOURCES)}")
    for n in names:
        if spec(n).reference:
            raise UserError(f"{n!r} is a no-learning reference that evaluate scores by itself, not "
                            f"a source to train; choose from {','.join(SOURCES)}")
    return names
