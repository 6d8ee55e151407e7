"""The source registry: everything that distinguishes one source task from another.

One :class:`SourceSpec` per source. ``scratch`` is a spec without a pretraining task; ``nnunet``
is nnU-Net's own trainer, reported beside ours (no trainer family, never in a grid). Every other
module asks the registry (``spec(name)``) instead of comparing source names. Adding a source means
adding a spec here (and, for a new kind of task, its task class in ``pretraining/tasks.py``, or
for a new checkpoint layout its reader in ``pretraining/external_weights.py``).

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
DATA_PUBLISHED = "published"  # a published checkpoint given with --weights FILE; no images here

#: Layouts of published checkpoints that ``pretrain --weights FILE`` reads
#: (``pretraining/external_weights.py``).
LAYOUT_RESNET50 = "resnet50"  # a torchvision-shaped ResNet-50 (RadImageNet)
LAYOUT_VIT = "vit"  # a ViT-B in timm's key layout (DINOv2, DINOv3/MedDINOv3)

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
    #: extra keys recorded in the store's json (e.g. number of classes)
    extra_metadata: tuple[str, ...] = field(default=())
    #: colour of its curves and boxes in every figure (a matplotlib colour)
    color: str = "0.3"
    #: layout of the published checkpoint it imports from ``--weights FILE`` instead of
    #: pretraining (``LAYOUT_*``); None for sources that pretrain
    layout: str | None = None
    #: where its published checkpoint comes from and under which licence (errors, docs)
    weights_hint: str = ""
    #: what the images of its published checkpoint were (``DATA_KIND_*``, the store's data_kind)
    data_kind: str | None = None
    #: environment variable the experiment runner reads ``--weights FILE`` from
    weights_env: str | None = None
    #: ``--arch`` plans variants whose network takes its checkpoint (empty: any network)
    architectures: tuple[str, ...] = ()
    #: in the default grid (the paper's sources); the others are asked for with ``--sources``
    in_study: bool = True
    #: the nnU-Net trainer it is trained with when it has no ``Xfer`` family (nnU-Net's own)
    trainer: str | None = None

    #: a no-learning reference row of every evaluation (``threshold``), not a source: no
    #: trainer, no grid, never a best-source choice; ``evaluate`` computes its masks
    reference: bool = False

    @property
    def imports_weights(self) -> bool:
        """True when ``pretrain`` imports a published checkpoint (``--weights FILE``) for it."""
        return self.layout is not None

    @property
    def pretrained(self) -> bool:
        """True when fine-tuning starts from a store entry."""
        return self.task is not None or self.imports_weights

    @property
    def has_family(self) -> bool:
        """True when it is trained by ``Xfer<Source>Trainer_n<N>`` classes (all but nnU-Net's own
        and the no-learning references)."""
        return self.trainer is None and not self.reference

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
               default_parts=(), color="tab:blue"),
    SourceSpec("cls", "classification", "natural-image classification (ImageNet)", task="cls",
               data=DATA_NATURAL_CLASSES, data_env="NNUNET_XFER_CLS_DATA",
               data_hint="an ImageFolder root of natural images (one sub-folder per class)",
               default_parts=("encoder",), weights_tag="IMAGENET1K_V1",
               extra_metadata=("num_classes", "classes"), color="tab:orange"),
    SourceSpec("seg", "segmentation", "segmentation: natural images (COCO/VOC) or a medical "
               "nnU-Net raw dataset such as the phantom's --source-task", task="seg",
               data=DATA_NATURAL_SEGMENTATION, data_env="NNUNET_XFER_SEG_DATA",
               data_hint="a Pascal VOC folder (JPEGImages + SegmentationClass) or a 2D nnU-Net raw "
                         "dataset (e.g. `nnunet-xfer phantom OUT --source-task DIR`)",
               default_parts=("encoder", "decoder"), weights_tag="COCO_WITH_VOC_LABELS_V1",
               extra_metadata=("num_classes", "classes", "data_kind", "data_label"),
               color="tab:green"),
    SourceSpec("rec", "reconstruction", "unsupervised reconstruction (Models Genesis)", task="rec",
               data=DATA_TARGET, default_parts=("encoder",), color="tab:red"),
    SourceSpec("jigsaw", "jigsaw", "self-supervised jigsaw puzzles", task="jigsaw",
               data=DATA_TARGET, default_parts=("encoder",),
               extra_metadata=("permutations", "min_hamming_distance"), color="tab:purple"),
    SourceSpec("radimagenet", "RadImageNet", "medical-image classification (RadImageNet ResNet-50)",
               task=None, data=DATA_PUBLISHED, layout=LAYOUT_RESNET50, color="tab:pink",
               data_kind=DATA_KIND_MEDICAL,
               weights_env="NNUNET_XFER_RADIMAGENET_WEIGHTS",
               weights_hint="RadImageNet's PyTorch ResNet-50 (linked from "
                            "github.com/BMEII-AI/RadImageNet; MIT)",
               architectures=("unet_resnet50", "fcn_resnet50", "deeplabv3_resnet50"),
               in_study=False),
    SourceSpec("dinov2", "DINOv2", "self-supervised natural-image ViT (DINOv2 ViT-B/14)",
               task=None, data=DATA_PUBLISHED, layout=LAYOUT_VIT, color="tab:olive",
               data_kind=DATA_KIND_NATURAL,
               weights_env="NNUNET_XFER_DINOV2_WEIGHTS",
               weights_hint="DINOv2's ViT-B/14 (dinov2_vitb14_pretrain.pth, linked from "
                            "github.com/facebookresearch/dinov2; Apache-2.0)",
               architectures=("unetr_vit_b14",), in_study=False),
    SourceSpec("meddino", "MedDINOv3", "self-supervised CT ViT (MedDINOv3 ViT-B/16, CT-3M)",
               task=None, data=DATA_PUBLISHED, layout=LAYOUT_VIT, color="tab:cyan",
               data_kind=DATA_KIND_MEDICAL,
               weights_env="NNUNET_XFER_MEDDINO_WEIGHTS",
               weights_hint="MedDINOv3's ViT-B/16 CT-3M checkpoint (huggingface.co/ricklisz123/"
                            "MedDINOv3-ViTB-16-CT-3M; Apache-2.0 model card, adapted from DINOv3 "
                            "weights)",
               architectures=("unetr_vit_b16",), in_study=False),
    SourceSpec("nnunet", "nnU-Net default", "nnU-Net's own trainer and network (nnUNetTrainer)",
               task=None, data=DATA_NONE, default_parts=(), color="tab:brown", in_study=False,
               trainer="nnUNetTrainer"),
    SourceSpec("threshold", "threshold (no learning)", "muscle HU range (−29…+150 HU) inside the "
               "body, no learning (docs/definitions.md#the-threshold-baseline)", task=None,
               data=DATA_NONE, default_parts=(), color="black", in_study=False, reference=True),
)}

#: Sources of the ``Xfer<Source>Trainer_n<N>`` family, in the order the study reports them.
SOURCES: tuple[str, ...] = tuple(n for n, s in REGISTRY.items() if s.has_family)
#: The paper's sources: the default grid of ``experiment``.
STUDY_SOURCES: tuple[str, ...] = tuple(n for n in SOURCES if REGISTRY[n].in_study)
#: Reference rows every evaluation scores beside the models (no learning).
REFERENCES: tuple[str, ...] = tuple(n for n, s in REGISTRY.items() if s.reference)
#: Sources that fine-tune from a store entry.
PRETRAINED_SOURCES: tuple[str, ...] = tuple(n for n, s in REGISTRY.items() if s.pretrained)
#: Sources whose store entry is a published checkpoint imported with ``--weights FILE``.
IMPORTED_SOURCES: tuple[str, ...] = tuple(n for n, s in REGISTRY.items() if s.imports_weights)


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
    """Figure label of a source (its name when unknown)."""
    return REGISTRY[name].label if name in REGISTRY else name


def color(name: str):
    """Figure colour of a source, the same in every figure (grey when unknown)."""
    return REGISTRY[name].color if name in REGISTRY else "0.3"


def rank(name: str) -> int:
    """Position of a source in the study's report order (unknown names last)."""
    return list(REGISTRY).index(name) if name in REGISTRY else len(REGISTRY)


def source_of_trainer(trainer: str) -> str | None:
    """The source whose own nnU-Net trainer is ``trainer`` (``nnUNetTrainer`` → ``nnunet``)."""
    return next((n for n, s in REGISTRY.items() if s.trainer == trainer), None)


def check_names(names) -> list[str]:
    """The names as a list, each a source of the trainer family (what a grid can train)."""
    names = list(names)
    if not names:
        raise UserError(f"no source task given; choose from {','.join(SOURCES)}")
    for n in names:
        if spec(n).reference:
            raise UserError(f"{n!r} is a no-learning reference that evaluate scores by itself, not "
                            f"a source to train; choose from {','.join(SOURCES)}")
        if not spec(n).has_family:
            raise UserError(f"source {n!r} is trained with nnU-Net's own {spec(n).trainer}, not "
                            f"by a grid; choose from {','.join(SOURCES)}")
    return names
